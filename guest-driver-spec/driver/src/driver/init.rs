//! Bringing the device up: reset, feature negotiation, queues, configuration reads (VIRTIO 1.2
//! §3.1.1), and forgetting it all on reset.

use super::*;

impl<T: Transport, D: DmaMemory> TagMemDriver<T, D> {
    /// Resets and initializes the device (VIRTIO 1.2 §3.1.1), then reads its configuration.
    ///
    /// Accepts VERSION_1, TAGGED_EXTENTS, ACPI_PXM and UNPLUGGED_INACCESSIBLE when offered (the
    /// driver never touches unplugged memory). Any earlier driver state is forgotten; with tagged
    /// extents the driver then lists what the device holds accepted (a reset keeps it) and
    /// exposes it again before it handles any event ([T-LIST-2]).
    pub fn init(&mut self) -> Result<(), DriverError> {
        self.forget_state();
        self.alloc.reset();
        self.transport.set_status(0);
        let mut spins = 0;
        while self.transport.status() != 0 {
            spins += 1;
            if spins >= self.spin_limit {
                return Err(DriverError::ResetTimeout);
            }
            self.transport.wait();
        }
        let mut st = status::ACKNOWLEDGE;
        self.transport.set_status(st);
        st |= status::DRIVER;
        self.transport.set_status(st);

        let offered = self.transport.device_features();
        if offered & bit(VIRTIO_F_VERSION_1) == 0 {
            return Err(self.fail(DriverError::MissingVersion1));
        }
        let wanted = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_MEM_F_TAGGED_EXTENTS)
            | bit(VIRTIO_MEM_F_ACPI_PXM)
            | bit(VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE);
        let accepted = offered & wanted;
        self.transport.set_driver_features(accepted);
        st |= status::FEATURES_OK;
        self.transport.set_status(st);
        if self.transport.status() & status::FEATURES_OK == 0 {
            return Err(self.fail(DriverError::FeaturesRejected));
        }
        self.features = accepted;

        if let Err(e) = self.setup() {
            return Err(self.fail(e));
        }
        st |= status::DRIVER_OK;
        self.transport.set_status(st);
        let now = self.transport.status();
        if now & status::DRIVER_OK == 0 || now & status::DEVICE_NEEDS_RESET != 0 {
            return Err(self.fail(DriverError::ActivationFailed));
        }
        self.initialized = true;
        if self.tagged() {
            // [T-LIST-2]: learn what the device holds accepted for this driver (a reset keeps
            // it) before any event is processed.
            if let Err(e) = self.relearn() {
                return Err(self.fail(e));
            }
        }
        if self.eventq.is_some() {
            self.transport.notify(VIRTIO_MEM_EVENTQ);
        }
        Ok(())
    }

    pub(super) fn fail(&mut self, e: DriverError) -> DriverError {
        let st = self.transport.status();
        self.transport.set_status(st | status::FAILED);
        self.forget_state();
        e
    }

    /// Reads the configuration, sets up the queues and posts the event buffers.
    pub(super) fn setup(&mut self) -> Result<(), DriverError> {
        self.refresh_config()?;
        let pending = self
            .tagged_config
            .map_or(0, |c| c.max_pending.get())
            .min(MAX_PENDING_CAP);
        self.pending_limit = usize::try_from(pending).unwrap_or(0);

        let ids_bytes = 8 * u64::from(pending.max(1));
        self.req_buf = self
            .alloc
            .alloc(u64::from(TAGGED_REQ_LEN) + ids_bytes, 16)
            .ok_or(DriverError::OutOfDmaMemory)?;
        self.resp_buf = self
            .alloc
            .alloc(u64::from(RESP_BUF_LEN), 16)
            .ok_or(DriverError::OutOfDmaMemory)?;
        if self.tagged() {
            self.list_buf = self
                .alloc
                .alloc(u64::from(LIST_BUF_LEN), 16)
                .ok_or(DriverError::OutOfDmaMemory)?;
        }
        self.guestq = Some(self.setup_queue(VIRTIO_MEM_GUESTQ, GUESTQ_SIZE)?);
        if self.tagged() {
            // Room for a whole chain of `max_pending` offers plus a few other events.
            let want = u16::try_from((pending + 8).next_power_of_two()).unwrap_or(EVENTQ_SIZE);
            let mut q = self.setup_queue(VIRTIO_MEM_EVENTQ, want.min(EVENTQ_SIZE))?;
            self.event_bufs = vec![None; usize::from(q.size())];
            for _ in 0..q.size() {
                let buf = self
                    .alloc
                    .alloc(u64::from(EVENT_LEN), 16)
                    .ok_or(DriverError::OutOfDmaMemory)?;
                let head = q.add(&self.dma, &[], &[event_buf(buf)])?;
                self.event_bufs[usize::from(head)] = Some(buf);
            }
            self.eventq = Some(q);
        }
        Ok(())
    }

    pub(super) fn setup_queue(&mut self, index: u16, want: u16) -> Result<VirtQueue, DriverError> {
        let max = self.transport.queue_max_size(index);
        let size = max.min(want);
        if size == 0 {
            return Err(DriverError::QueueUnavailable(index));
        }
        // Largest power of two not above `size`.
        let size = 1u16 << (15 - size.leading_zeros());
        let layout = QueueLayout::alloc(&mut self.alloc, size).ok_or(DriverError::OutOfDmaMemory)?;
        let q = VirtQueue::new(&self.dma, layout)?;
        q.set_no_interrupt(&self.dma, true);
        self.transport
            .setup_queue(index, size, layout.desc, layout.avail, layout.used);
        self.transport.set_queue_ready(index);
        Ok(q)
    }

    /// Re-reads the configuration space (e.g. after `requested_size` changed).
    pub fn refresh_config(&mut self) -> Result<(), DriverError> {
        let len = if self.tagged() {
            VIRTIO_MEM_TAGGED_CONFIG_SIZE
        } else {
            VIRTIO_MEM_CONFIG_SIZE
        };
        let mut buf = [0u8; VIRTIO_MEM_TAGGED_CONFIG_SIZE];
        for _ in 0..CONFIG_RETRIES {
            let before = self.transport.config_generation();
            self.transport.read_config(0, &mut buf[..len]);
            if self.transport.config_generation() == before {
                let cfg = TaggedConfig::read_from_bytes(&buf[..]).unwrap_or_default();
                self.config = cfg.base;
                self.tagged_config = self.tagged().then_some(cfg);
                return Ok(());
            }
        }
        Err(DriverError::ConfigUnstable)
    }

    /// Re-reads only what a configuration change can move (`plugged_size`,
    /// `usable_region_size`, `requested_size`), each field under its own generation check, as
    /// Linux's `virtio_mem_refresh_config` does on a config-change interrupt: a dozen register
    /// reads instead of the whole configuration space.
    pub fn refresh_sizes(&mut self) -> Result<(), DriverError> {
        let plugged = self.read_config_le64(core::mem::offset_of!(VirtioMemConfig, plugged_size))?;
        let usable = self.read_config_le64(core::mem::offset_of!(VirtioMemConfig, usable_region_size))?;
        let requested = self.read_config_le64(core::mem::offset_of!(VirtioMemConfig, requested_size))?;
        for c in core::iter::once(&mut self.config).chain(self.tagged_config.as_mut().map(|t| &mut t.base)) {
            c.plugged_size = Le64::new(plugged);
            c.usable_region_size = Le64::new(usable);
            c.requested_size = Le64::new(requested);
        }
        Ok(())
    }

    /// One little-endian 64-bit configuration field, read between two equal generations.
    pub(super) fn read_config_le64(&mut self, offset: usize) -> Result<u64, DriverError> {
        for _ in 0..CONFIG_RETRIES {
            let before = self.transport.config_generation();
            let mut b = [0u8; 8];
            self.transport.read_config(offset, &mut b);
            if self.transport.config_generation() == before {
                return Ok(u64::from_le_bytes(b));
            }
        }
        Err(DriverError::ConfigUnstable)
    }

    /// Forgets queues, chains and devices (the device side was or is about to be reset).
    pub(super) fn forget_state(&mut self) {
        self.initialized = false;
        self.features = 0;
        self.tagged_config = None;
        self.guestq = None;
        self.eventq = None;
        self.event_bufs.clear();
        self.stale = None;
        self.chains.clear();
        self.any_deferred = false;
        for d in self.registry.clear().into_iter().filter(DaxDevice::is_claimed) {
            self.push_log(DriverEvent::DeviceRemoved {
                name: d.name,
                uuid: d.uuid,
            });
        }
    }

    /// Resets the device (status 0). The device keeps plugged blocks and accepted extents
    /// ([T-RESET-1]); the driver forgets its devices (logging [`DriverEvent::DeviceRemoved`]) and
    /// lists them again at the next [`TagMemDriver::init`].
    pub fn reset(&mut self) {
        self.transport.set_status(0);
        self.forget_state();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::fake_device::*;

    #[test]
    fn init_negotiates_and_fills_eventq() {
        let mut d = ready();
        let want =
            (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_MEM_F_TAGGED_EXTENTS) | (1 << VIRTIO_MEM_F_ACPI_PXM);
        assert_eq!(d.features(), want);
        assert_eq!(d.transport().driver_features, want);
        let st = d.transport_mut().status();
        assert_eq!(
            st,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK
        );
        assert!(d.tagged());
        assert_eq!(d.config().block_size.get(), VIRTIO_MEM_EXTENT_ALIGN);
        assert_eq!(d.tagged_config().unwrap().tagged_addr.get(), WIN);
        // max_pending + 8 rounded up to a power of two (within the device's queue size) 128-byte
        // device-writable buffers are posted on eventq.
        let pending = d.tagged_config().unwrap().max_pending.get();
        let want = u16::try_from((pending + 8).next_power_of_two()).unwrap();
        let q = d.transport().queues[1].as_ref().unwrap().layout;
        assert!(q.size >= 16);
        assert!(q.size <= want);
        assert_eq!(d.dma().read_le16(q.avail + 2), q.size);
        assert_eq!(
            d.dma().read_le16(q.avail),
            crate::virtqueue::VIRTQ_AVAIL_F_NO_INTERRUPT
        );
        let mut dq = DeviceQueue::new(q);
        let (_, descs) = dq.pop_avail(&**d.dma()).unwrap();
        assert_eq!(
            descs,
            [Desc {
                addr: descs[0].addr,
                len: 128,
                writable: true
            }]
        );
        assert_eq!(d.poll(), Ok(0));
    }

    #[test]
    fn refresh_sizes_reads_the_three_fields_a_change_moves() {
        let mut d = ready();
        let off = core::mem::offset_of!(VirtioMemConfig, requested_size);
        d.transport_mut().config[off..off + 8].copy_from_slice(&(64u64 << 20).to_le_bytes());
        let off = core::mem::offset_of!(VirtioMemConfig, plugged_size);
        d.transport_mut().config[off..off + 8].copy_from_slice(&(2u64 << 20).to_le_bytes());
        d.refresh_sizes().unwrap();
        assert_eq!(d.config().requested_size.get(), 64 << 20);
        assert_eq!(d.config().plugged_size.get(), 2 << 20);
        assert_eq!(d.tagged_config().unwrap().base.requested_size.get(), 64 << 20);
        assert_eq!(d.config().block_size.get(), VIRTIO_MEM_EXTENT_ALIGN);
    }

    #[test]
    fn init_without_tagged_feature_is_plain_virtio_mem() {
        let mut d = driver_with(1 << VIRTIO_F_VERSION_1);
        d.init().unwrap();
        assert!(!d.tagged());
        assert!(d.tagged_config().is_none());
        assert!(d.transport().queues[1].is_none());
        assert_eq!(d.poll(), Ok(0));
        assert_eq!(d.release([1; 16]), Err(DriverError::UnknownTarget));
        assert_eq!(d.plug(0x8000_0000, 1), Ok(MemResponse::Ack));
    }

    #[test]
    fn init_failures() {
        let mut d = driver_with(1 << VIRTIO_MEM_F_TAGGED_EXTENTS);
        assert_eq!(d.init(), Err(DriverError::MissingVersion1));
        assert_ne!(d.transport_mut().status() & status::FAILED, 0);

        let mut d = driver_with(ALL_FEATURES);
        d.transport_mut().refuse_features_ok = true;
        assert_eq!(d.init(), Err(DriverError::FeaturesRejected));
        assert_ne!(d.transport_mut().status() & status::FAILED, 0);
        assert_eq!(d.plug(0, 1), Err(DriverError::NotInitialized));

        let mut d = driver_with(ALL_FEATURES);
        d.transport_mut().max_sizes = [16, 0];
        assert_eq!(d.init(), Err(DriverError::QueueUnavailable(VIRTIO_MEM_EVENTQ)));

        let mem = Rc::new(VecMemory::new(MEM_BASE, MEM_LEN));
        let mut d = TagMemDriver::new(FakeDevice::new(mem.clone(), ALL_FEATURES), mem, MEM_BASE, 4096);
        assert_eq!(d.init(), Err(DriverError::OutOfDmaMemory));
    }

    #[test]
    fn sixty_four_kib_of_dma_always_suffice() {
        let mem = Rc::new(VecMemory::new(MEM_BASE, MEM_LEN));
        let mut dev = FakeDevice::new(mem.clone(), ALL_FEATURES);
        dev.config[72..76].copy_from_slice(&u32::MAX.to_le_bytes());
        dev.max_sizes = [u16::MAX, u16::MAX];
        let mut d = TagMemDriver::new(dev, mem, MEM_BASE + 8, 64 * 1024);
        d.init().unwrap();
        offer(&mut d, 1, &[rec(1, 0, 0, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(d.accepted().count(), 1);
    }

    #[test]
    fn odd_queue_sizes_round_down_to_a_power_of_two() {
        let mut d = driver_with(ALL_FEATURES);
        d.transport_mut().max_sizes = [3, 12];
        d.init().unwrap();
        assert_eq!(d.transport().queues[0].as_ref().unwrap().layout.size, 2);
        assert_eq!(d.transport().queues[1].as_ref().unwrap().layout.size, 8);
        assert_eq!(d.plug(0x8000_0000, 1), Ok(MemResponse::Ack));
    }

    #[test]
    fn reset_forgets_everything_and_init_starts_over() {
        let mut d = ready();
        offer(&mut d, 1, &[rec(1, 0, 4, 0, 0)]);
        d.poll().unwrap();
        d.drain_log();
        d.reset();
        assert!(d.devices().is_empty());
        assert_eq!(
            d.drain_log(),
            [DriverEvent::DeviceRemoved {
                name: "dax0.0".to_string(),
                uuid: [4; 16]
            }]
        );
        assert_eq!(d.plug(0, 1), Err(DriverError::NotInitialized));
        d.init().unwrap();
        offer(&mut d, 2, &[rec(2, 0, 4, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(d.lookup(&[4; 16]).unwrap().name, "dax0.1");
    }
}
