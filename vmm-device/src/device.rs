//! The device: construction, config space, the [`VirtioDevice`] face a transport drives, and the
//! counted mapper calls. The host control API is in `device/host.rs`, the guest side (guestq
//! requests, eventq delivery) in `device/guest.rs`; the configuration and its validation in
//! [`crate::config`] (re-exported here).

mod guest;
mod host;

use crate::blocks::Blocks;
use crate::clock::Clock;
pub use crate::config::{DeviceConfig, TaggedWindow, MINIMAL_BASE_REGION_SIZE};
use crate::control::*;
use crate::error::DeviceError;
use crate::mapper::{Mapping, MemoryMapper, Notifier, SourceRef};
use crate::metrics::DeviceMetrics;
use crate::request::{indirect_tables_fit, parse_chain, write_response, ChainError, ParsedChain};
use crate::state::ExtentTable;
use crate::virtio::VirtioDevice;
use std::sync::Arc;
use tagmem_wire::{
    self as wire, reason, EventMsg, IntoBytes, Le16, Le32, Le64, Request, Response, TaggedConfig,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemory};

/// The tagged-capacity virtio-mem device.
pub struct TaggedMemDevice<M: GuestAddressSpace> {
    pub(crate) cfg: DeviceConfig,
    pub(crate) acked_features: u64,
    pub(crate) queue_sizes: Vec<u16>,
    /// The driver reset the device since its last activation with tagged extents.
    pub(crate) replay_pending: bool,
    pub(crate) mem: Option<M>,
    pub(crate) queues: Vec<Queue>,
    pub(crate) blocks: Blocks,
    pub(crate) table: ExtentTable,
    host_events: Vec<HostEvent>,
    pub(crate) config_generation: u32,
    mapper: Box<dyn MemoryMapper>,
    notifier: Arc<dyn Notifier>,
    pub(crate) clock: Arc<dyn Clock>,
    metrics: Arc<DeviceMetrics>,
}

impl<M: GuestAddressSpace> std::fmt::Debug for TaggedMemDevice<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaggedMemDevice")
            .field("cfg", &self.cfg)
            .field("acked_features", &self.acked_features)
            .field("active", &self.mem.is_some())
            .field("extents", &self.table.len())
            .finish()
    }
}

fn empty_table(cfg: &DeviceConfig) -> ExtentTable {
    let (addr, size) = cfg.tagged.map_or((0, 0), |w| (w.addr, w.size));
    ExtentTable::new(
        addr,
        size,
        cfg.max_pending as usize,
        u64::from(cfg.offer_timeout_ms),
    )
}

fn empty_blocks(cfg: &DeviceConfig) -> Blocks {
    Blocks::new(
        cfg.region_addr,
        cfg.region_size,
        cfg.block_size,
        cfg.requested_size,
    )
}

impl<M: GuestAddressSpace> TaggedMemDevice<M> {
    /// Creates the device; the configuration is validated first.
    pub fn new(
        cfg: DeviceConfig,
        mapper: Box<dyn MemoryMapper>,
        notifier: Arc<dyn Notifier>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, DeviceError> {
        cfg.validate()?;
        let nq = if cfg.tagged.is_some() { 2 } else { 1 };
        Ok(TaggedMemDevice {
            queue_sizes: vec![cfg.queue_size; nq],
            blocks: empty_blocks(&cfg),
            table: empty_table(&cfg),
            cfg,
            acked_features: 0,
            replay_pending: false,
            mem: None,
            queues: Vec::new(),
            host_events: Vec::new(),
            config_generation: 0,
            mapper,
            notifier,
            clock,
            metrics: Arc::new(DeviceMetrics::default()),
        })
    }

    /// The configuration the device was built with.
    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    /// Counters of what the device did, shareable with a metrics endpoint.
    pub fn metrics(&self) -> Arc<DeviceMetrics> {
        self.metrics.clone()
    }

    /// True once the driver activated the device.
    pub fn is_active(&self) -> bool {
        self.mem.is_some()
    }

    /// True when the driver negotiated tagged extents.
    pub fn tagged_negotiated(&self) -> bool {
        self.acked_features & (1 << wire::VIRTIO_MEM_F_TAGGED_EXTENTS) != 0
    }

    /// Whether the features the driver accepted are enough to run: it must accept
    /// `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`, as QEMU's `virtio_mem_validate_features` requires.
    pub(crate) fn features_acceptable(&self) -> bool {
        self.acked_features & (1 << wire::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE) != 0
    }

    fn bump_config(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    fn tagged_config(&self) -> TaggedConfig {
        let mut c = TaggedConfig::default();
        c.base.block_size = Le64::new(self.cfg.block_size);
        c.base.node_id = Le16::new(self.cfg.node_id.unwrap_or(0));
        c.base.addr = Le64::new(self.cfg.region_addr);
        c.base.region_size = Le64::new(self.cfg.region_size);
        c.base.usable_region_size = Le64::new(self.cfg.region_size);
        c.base.plugged_size = Le64::new(self.blocks.plugged_size());
        c.base.requested_size = Le64::new(self.blocks.requested_size);
        if let Some(w) = self.cfg.tagged {
            c.tagged_addr = Le64::new(w.addr);
            c.tagged_size = Le64::new(w.size);
            c.max_pending = Le32::new(self.cfg.max_pending);
            c.offer_timeout_ms = Le32::new(self.cfg.offer_timeout_ms);
            c.accepted_extents = Le32::new(u32::try_from(self.table.accepted_count()).unwrap_or(u32::MAX));
        }
        c
    }

    fn map_counted(&mut self, m: &Mapping) -> Result<(), crate::mapper::MapperError> {
        self.metrics.map_calls.inc();
        self.mapper.map(m)
    }

    fn unmap_counted(&mut self, m: &Mapping) -> Result<(), crate::mapper::MapperError> {
        self.metrics.unmap_calls.inc();
        self.mapper.unmap(m)
    }

    fn map_batch_counted(&mut self, maps: &[Mapping]) -> Result<(), crate::mapper::MapperError> {
        self.metrics.map_calls.inc();
        self.mapper.map_batch(maps)
    }

    fn unmap_batch_counted(&mut self, maps: &[Mapping]) -> Result<(), crate::mapper::MapperError> {
        self.metrics.unmap_calls.inc();
        self.mapper.unmap_batch(maps)
    }

    /// Maps every range or none of them.
    pub(crate) fn map_all(&mut self, maps: &[Mapping]) -> Result<(), DeviceError> {
        self.map_batch_counted(maps).map_err(DeviceError::RestoreMap)
    }

    /// Takes the queues the driver set up, checked against guest memory; no replay, no events
    /// (restore uses it to resume a live device).
    pub(crate) fn activate_queues(&mut self, mem: M, queues: Vec<Queue>) -> Result<(), DeviceError> {
        if self.is_active() {
            return Err(DeviceError::AlreadyActive);
        }
        let need = if self.tagged_negotiated() { 2 } else { 1 };
        if queues.len() < need {
            return Err(DeviceError::QueueCount {
                need,
                got: queues.len(),
            });
        }
        {
            let m = mem.memory();
            for (i, q) in queues.iter().take(need).enumerate() {
                if !q.is_valid(&*m) {
                    return Err(DeviceError::QueueInvalid(u16::try_from(i).unwrap_or(u16::MAX)));
                }
            }
        }
        self.queues = queues;
        self.mem = Some(mem);
        Ok(())
    }
}

impl<M: GuestAddressSpace> VirtioDevice for TaggedMemDevice<M> {
    type Memory = M;
    type Error = DeviceError;

    fn device_type(&self) -> u32 {
        wire::VIRTIO_ID_MEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.cfg.features()
    }

    fn set_driver_features(&mut self, features: u64) {
        if self.is_active() {
            return;
        }
        self.acked_features = features & self.cfg.features();
    }

    fn features_ok(&self) -> bool {
        self.features_acceptable()
    }

    fn driver_features(&self) -> u64 {
        self.acked_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let cfg = self.tagged_config();
        let bytes = cfg.as_bytes();
        let len = if self.cfg.tagged.is_some() {
            wire::VIRTIO_MEM_TAGGED_CONFIG_SIZE
        } else {
            wire::VIRTIO_MEM_CONFIG_SIZE
        };
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start >= len {
            return;
        }
        let n = data.len().min(len - start);
        data[..n].copy_from_slice(&bytes[start..start + n]);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // virtio-mem's configuration is read-only for the driver (§5.15.4).
    }

    fn activate(&mut self, mem: M, queues: Vec<Queue>) -> Result<(), DeviceError> {
        if !self.features_acceptable() {
            return Err(DeviceError::FeatureRequired {
                bit: wire::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
                name: "VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE",
            });
        }
        self.activate_queues(mem, queues)?;
        if self.replay_pending && self.tagged_negotiated() {
            // [T-RESET-1]: a driver back after a reset hears of pending chains, release requests
            // and poison again; what it holds accepted it learns with LIST.
            self.table.replay(self.clock.now_ms());
            self.replay_pending = false;
        }
        self.deliver_events();
        Ok(())
    }

    /// Device reset (status 0): forgets the queues, the negotiated features and the undelivered
    /// events, and nothing else ([T-RESET-1], VIRTIO §5.15.5). Plugged blocks stay plugged and
    /// mapped, accepted extents stay accepted and mapped, pending chains stay pending (they are
    /// offered again at the next activation with tagged extents), poison records stay.
    fn reset(&mut self) {
        self.table.forget_events();
        self.replay_pending = true;
        self.queues.clear();
        self.mem = None;
        self.acked_features = 0;
        self.host_events.push(HostEvent::DeviceReset {
            pending_chains: self.table.chains().map(|(id, _)| id).collect(),
        });
        self.bump_config();
    }

    fn queue_notify(&mut self, index: u16) {
        if !self.is_active() {
            return;
        }
        self.expire_chains();
        match index {
            wire::VIRTIO_MEM_GUESTQ => {
                self.metrics.guestq_notifies.inc();
                self.process_guestq()
            }
            wire::VIRTIO_MEM_EVENTQ => self.metrics.eventq_notifies.inc(),
            _ => return,
        }
        self.deliver_events();
    }

    fn config_generation(&self) -> u32 {
        self.config_generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::Harness;
    use tagmem_wire::FromBytes;

    fn config_bytes(h: &Harness, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0xaa; len];
        h.dev.read_config(offset, &mut b);
        b
    }

    #[test]
    fn config_space_is_the_tagged_layout_and_zero_past_its_end() {
        let h = Harness::tagged();
        let b = config_bytes(&h, 0, wire::VIRTIO_MEM_TAGGED_CONFIG_SIZE);
        let c = TaggedConfig::read_from_bytes(&b[..]).unwrap();
        let cfg = Harness::config();
        assert_eq!(c.base.block_size.get(), cfg.block_size);
        assert_eq!(c.base.node_id.get(), 1);
        assert_eq!(c.base.addr.get(), cfg.region_addr);
        assert_eq!(c.base.region_size.get(), cfg.region_size);
        assert_eq!(c.base.requested_size.get(), cfg.requested_size);
        assert_eq!(c.base.plugged_size.get(), 0);
        assert_eq!(c.tagged_addr.get(), 4 << 30);
        assert_eq!(c.tagged_size.get(), 1 << 30);
        assert_eq!(c.max_pending.get(), cfg.max_pending);
        // A read straddling the end is cut there; one past it reads zeros.
        let end = wire::VIRTIO_MEM_TAGGED_CONFIG_SIZE as u64;
        assert_eq!(config_bytes(&h, end - 4, 8)[4..], [0; 4]);
        assert_eq!(config_bytes(&h, end, 8), [0; 8]);
        assert_eq!(config_bytes(&h, u64::MAX, 8), [0; 8]);
    }

    #[test]
    fn a_device_without_a_window_has_the_base_layout_and_no_tagged_feature() {
        let mut cfg = Harness::config();
        cfg.tagged = None;
        assert_eq!(cfg.features() & (1 << wire::VIRTIO_MEM_F_TAGGED_EXTENTS), 0);
        let h = Harness::new(cfg.clone(), cfg.features());
        assert_eq!(h.dev.queue_max_sizes().len(), 1);
        let base = wire::VIRTIO_MEM_CONFIG_SIZE as u64;
        assert_eq!(config_bytes(&h, base, 8), [0; 8]);
    }

    #[test]
    fn driver_features_are_masked_to_the_offer_and_frozen_while_active() {
        let mut h = Harness::tagged();
        let offered = h.dev.device_features();
        assert_eq!(h.dev.driver_features(), offered);
        // Active: a late write changes nothing.
        h.dev.set_driver_features(0);
        assert_eq!(h.dev.driver_features(), offered);
        h.dev.reset();
        assert_eq!(h.dev.driver_features(), 0);
        h.dev.set_driver_features(u64::MAX);
        assert_eq!(h.dev.driver_features(), offered);
        assert!(h.dev.features_ok());
        h.dev
            .set_driver_features(offered & !(1 << wire::VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE));
        assert!(!h.dev.features_ok());
    }

    #[test]
    fn reset_forgets_queues_and_features_and_bumps_the_generation() {
        let mut h = Harness::tagged();
        let gen = h.dev.config_generation();
        h.dev.reset();
        assert!(!h.dev.is_active());
        assert!(!h.dev.tagged_negotiated());
        assert_ne!(h.dev.config_generation(), gen);
        assert!(matches!(
            h.dev.take_host_events().last(),
            Some(HostEvent::DeviceReset { .. })
        ));
        // Activation needs the required feature, then enough queues.
        let queues = |h: &Harness| vec![h.reqq.queue(), h.evq.queue()];
        assert!(matches!(
            h.dev.activate(h.mem.clone(), queues(&h)),
            Err(DeviceError::FeatureRequired { .. })
        ));
        h.dev.set_driver_features(h.dev.device_features());
        assert!(matches!(
            h.dev.activate(h.mem.clone(), vec![h.reqq.queue()]),
            Err(DeviceError::QueueCount { need: 2, got: 1 })
        ));
        h.dev.activate(h.mem.clone(), queues(&h)).unwrap();
        assert!(matches!(
            h.dev.activate(h.mem.clone(), queues(&h)),
            Err(DeviceError::AlreadyActive)
        ));
    }
}
