//! The host control API: offers, release requests, metadata, poison, the base region's requested
//! size, and the offer timer.

use super::*;

impl<M: GuestAddressSpace> TaggedMemDevice<M> {
    /// Offers a chain of extents to the driver ([T-OFFER-*]).
    pub fn offer(&mut self, chain: &[ExtentSpec]) -> Result<OfferReceipt, ControlError> {
        if !self.is_active() || !self.tagged_negotiated() {
            return Err(ControlError::NotReady);
        }
        let receipt = self.table.offer(chain, self.clock.now_ms())?;
        self.metrics.chains_offered.inc();
        self.metrics.extents_offered.add(chain.len() as u64);
        self.deliver_events();
        Ok(receipt)
    }

    /// Asks the driver to release a tag group or an untagged extent ([T-REL-*]).
    pub fn request_release(&mut self, target: Target) -> Result<Vec<u64>, ControlError> {
        let group = self.table.request_release(target)?;
        self.deliver_events();
        Ok(group)
    }

    /// Updates performance metadata of accepted capacity and tells the driver ([T-META-*]).
    pub fn update_metadata(&mut self, target: Target, perf: Perf) -> Result<Vec<u64>, ControlError> {
        let ids = self.table.update_metadata(target, perf)?;
        self.deliver_events();
        Ok(ids)
    }

    /// Reports poison in an accepted extent to the driver ([T-POISON-*]).
    pub fn inject_poison(&mut self, extent_id: u64, offset: u64, length: u64) -> Result<(), ControlError> {
        self.table.poison(extent_id, offset, length)?;
        self.deliver_events();
        Ok(())
    }

    /// Changes the base region's requested size and raises a config-change interrupt.
    pub fn set_requested_size(&mut self, size: u64) -> Result<(), ControlError> {
        if size % self.cfg.block_size != 0 {
            return Err(ControlError::BadRequestedSize {
                size,
                reason: "not a multiple of the block size",
            });
        }
        if size > self.cfg.region_size {
            return Err(ControlError::BadRequestedSize {
                size,
                reason: "larger than the region",
            });
        }
        self.blocks.requested_size = size;
        self.bump_config();
        self.metrics.config_interrupts.inc();
        self.notifier.signal_config_change();
        Ok(())
    }

    /// The extent table: pending and accepted extents, by id.
    pub fn extents(&self) -> Vec<ExtentInfo> {
        self.table.infos()
    }

    /// True while a pending or accepted extent is backed by `source` (O(log n)); a VMM closes a
    /// per-extent backing once this turns false.
    pub fn source_in_use(&self, source: crate::mapper::SourceId) -> bool {
        self.table.uses_source(source)
    }

    /// Drains the host's source events: each backing whose last extent (pending or accepted) left
    /// the table since the last call, because it was released, rejected or abandoned. A VMM
    /// closes a per-extent backing on it instead of tracking which extent uses which source.
    /// Drain it as often as [`TaggedMemDevice::take_host_events`].
    pub fn take_unused_sources(&mut self) -> Vec<crate::mapper::SourceId> {
        self.table.take_unused_sources()
    }

    /// Bytes of the base region currently plugged.
    pub fn plugged_size(&self) -> u64 {
        self.blocks.plugged_size()
    }

    /// Drains what happened since the last call.
    pub fn take_host_events(&mut self) -> Vec<HostEvent> {
        std::mem::take(&mut self.host_events)
    }

    /// Abandons chains whose offer timed out ([T-TIMEOUT-*]); call it periodically.
    pub fn poll_timers(&mut self) {
        self.expire_chains();
        self.deliver_events();
    }

    /// Drops the chains whose offer timed out, queueing CHAIN_ABANDONED for each.
    pub(super) fn expire_chains(&mut self) {
        let now = self.clock.now_ms();
        for chain_id in self.table.expired(now) {
            let extents = self.table.drop_chain(chain_id, true);
            self.metrics.chains_abandoned.inc();
            self.host_events.push(HostEvent::ChainDropped {
                chain_id,
                extents,
                reason: "offer timed out".into(),
            });
        }
    }
}
