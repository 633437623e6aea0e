//! virtio-mmio transport, version 2 (VIRTIO 1.x §4.2.2), over any [`VirtioDevice`].
//!
//! The transport owns the register state (feature pages, per-queue setup, status, interrupt
//! status); the device only sees negotiated features, configuration-space accesses, `activate`
//! with the queues the driver set up, `queue_notify` and `reset`. Interrupts are raised through
//! [`MmioInterrupt`] (`mmio/interrupt.rs`), the device's [`Notifier`](tagmem_device::Notifier),
//! which sets interrupt-status bits and optionally signals an eventfd (an irqfd, for guests with
//! an interrupt controller). The register state a snapshot keeps is plain data in
//! `mmio/state.rs`.

mod interrupt;
mod state;

pub use interrupt::MmioInterrupt;
pub use state::{MmioRestoreError, MmioState, MmioTransportState, QueueRegs};

use crate::bus::BusDevice;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tagmem_device::VirtioDevice;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace};
use vmm_sys_util::eventfd::EventFd;

/// "virt" in little-endian: the value of the MagicValue register.
pub const MMIO_MAGIC: u32 = u32::from_le_bytes(*b"virt");
/// The transport version implemented (modern, non-legacy).
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported: "TGMM".
pub const MMIO_VENDOR_ID: u32 = u32::from_le_bytes(*b"TGMM");
/// Value of the shared-memory length/base registers when no region exists (§4.2.2.1).
const NO_SHM_REGION: u32 = u32::MAX;
/// Width of every register below the configuration space.
const REGISTER_WIDTH: usize = 4;

/// Why activation failed.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// A queue's setup is invalid.
    #[error("queue {index}: {reason}")]
    Queue {
        /// Queue index.
        index: usize,
        /// virtio-queue's complaint.
        reason: String,
    },
    /// The device refused activation.
    #[error("device activation failed: {0}")]
    Device(String),
}

/// A virtio-mmio transport in front of device `D`.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    mem: D::Memory,
    interrupt_status: Arc<AtomicU32>,
    state: MmioState,
    activated: bool,
    activation_error: Option<ActivateError>,
}

impl<D: VirtioDevice> std::fmt::Debug for MmioTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("state", &self.state)
            .field("activated", &self.activated)
            .field("activation_error", &self.activation_error)
            .finish_non_exhaustive()
    }
}

fn set_half(value: &mut u64, high: bool, half: u32) {
    if high {
        *value = (*value & 0xffff_ffff) | (u64::from(half) << 32);
    } else {
        *value = (*value & !0xffff_ffff) | u64::from(half);
    }
}

fn half(value: u64, high: bool) -> u32 {
    let v = if high { value >> 32 } else { value & 0xffff_ffff };
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl<D> MmioTransport<D>
where
    D: VirtioDevice,
    D::Memory: GuestAddressSpace,
{
    /// Wraps `device`, whose queues live in `mem`.
    pub fn new(device: D, mem: D::Memory) -> Self {
        let queues = vec![QueueRegs::default(); device.queue_max_sizes().len()];
        MmioTransport {
            device,
            mem,
            interrupt_status: Arc::new(AtomicU32::new(0)),
            state: MmioState {
                queues,
                ..Default::default()
            },
            activated: false,
            activation_error: None,
        }
    }

    /// Wraps `device`, whose notifier is `irq` (made with [`MmioInterrupt::new`]): the transport
    /// reads and acknowledges the interrupt bits `irq` raises.
    pub fn with_interrupt(device: D, mem: D::Memory, irq: &MmioInterrupt) -> Self {
        let mut t = Self::new(device, mem);
        t.interrupt_status = irq.status.clone();
        t
    }

    /// The transport's state for a snapshot (the device's own state is taken separately).
    pub fn transport_state(&self) -> MmioTransportState {
        MmioTransportState {
            regs: self.state.clone(),
            activated: self.activated,
            interrupt_status: self.interrupt_status.load(Ordering::SeqCst),
        }
    }

    /// Restores a snapshot's transport state over a device restored separately (active exactly
    /// when `state.activated`). Checked against the device first; nothing changes on error.
    pub fn restore_transport_state(&mut self, state: &MmioTransportState) -> Result<(), MmioRestoreError> {
        let maxes = self.device.queue_max_sizes();
        if state.regs.queues.len() != maxes.len() {
            return Err(MmioRestoreError::QueueCount {
                want: maxes.len(),
                got: state.regs.queues.len(),
            });
        }
        for (index, (q, &max)) in state.regs.queues.iter().zip(maxes).enumerate() {
            if q.size > max {
                return Err(MmioRestoreError::QueueSize {
                    index,
                    size: q.size,
                    max,
                });
            }
        }
        let driver_ok = state.regs.status & VIRTIO_CONFIG_S_DRIVER_OK != 0;
        if state.activated != driver_ok {
            return Err(MmioRestoreError::Activation {
                activated: state.activated,
                status: state.regs.status,
            });
        }
        self.state = state.regs.clone();
        self.activated = state.activated;
        self.activation_error = None;
        self.interrupt_status
            .store(state.interrupt_status, Ordering::SeqCst);
        Ok(())
    }

    /// A notifier for the device that raises this transport's interrupts; `event` is signalled
    /// on every interrupt if given.
    pub fn interrupt(&self, event: Option<EventFd>) -> MmioInterrupt {
        MmioInterrupt {
            status: self.interrupt_status.clone(),
            event,
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably (host control operations).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// The register state.
    pub fn state(&self) -> &MmioState {
        &self.state
    }

    /// Whether the device was activated (DRIVER_OK accepted).
    pub fn activated(&self) -> bool {
        self.activated
    }

    /// A queue notification that reached the VMM outside the register window (an ioeventfd on
    /// QueueNotify): handled as a guest write of `index` to QueueNotify.
    pub fn notify_queue(&mut self, index: u16) {
        if self.activated {
            self.device.queue_notify(index);
        }
    }

    /// Why the last activation failed, if it did.
    pub fn activation_error(&self) -> Option<&ActivateError> {
        self.activation_error.as_ref()
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegs> {
        let i = usize::try_from(self.state.queue_sel).ok()?;
        self.state.queues.get_mut(i)
    }

    fn queue_max(&self) -> u16 {
        usize::try_from(self.state.queue_sel)
            .ok()
            .and_then(|i| self.device.queue_max_sizes().get(i).copied())
            .unwrap_or(0)
    }

    fn has(&self, bits: u32) -> bool {
        self.state.status & bits == bits
    }

    fn read_register(&self, reg: u32) -> u32 {
        let s = &self.state;
        match reg {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => MMIO_VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match s.device_features_sel {
                0 | 1 => half(self.device.device_features(), s.device_features_sel == 1),
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => u32::from(self.queue_max()),
            VIRTIO_MMIO_QUEUE_READY => {
                let i = usize::try_from(s.queue_sel).ok();
                u32::from(i.and_then(|i| s.queues.get(i)).is_some_and(|q| q.ready))
            }
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            VIRTIO_MMIO_STATUS => s.status,
            VIRTIO_MMIO_SHM_LEN_LOW
            | VIRTIO_MMIO_SHM_LEN_HIGH
            | VIRTIO_MMIO_SHM_BASE_LOW
            | VIRTIO_MMIO_SHM_BASE_HIGH => NO_SHM_REGION,
            VIRTIO_MMIO_CONFIG_GENERATION => self.device.config_generation(),
            _ => 0,
        }
    }

    fn write_register(&mut self, reg: u32, v: u32) {
        let features_phase = self.has(VIRTIO_CONFIG_S_DRIVER) && !self.has(VIRTIO_CONFIG_S_FEATURES_OK);
        let queue_phase = self.has(VIRTIO_CONFIG_S_FEATURES_OK) && !self.has(VIRTIO_CONFIG_S_DRIVER_OK);
        match reg {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.state.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.state.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES if features_phase && self.state.driver_features_sel < 2 => {
                let high = self.state.driver_features_sel == 1;
                set_half(&mut self.state.driver_features, high, v);
            }
            VIRTIO_MMIO_QUEUE_SEL => self.state.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM if queue_phase => {
                if let Some(q) = self.selected_queue() {
                    q.size = u16::try_from(v).unwrap_or(u16::MAX);
                }
            }
            VIRTIO_MMIO_QUEUE_READY if queue_phase => {
                if let Some(q) = self.selected_queue() {
                    q.ready = v == 1;
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH if queue_phase => {
                if let Some(q) = self.selected_queue() {
                    set_half(&mut q.desc, reg == VIRTIO_MMIO_QUEUE_DESC_HIGH, v);
                }
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH if queue_phase => {
                if let Some(q) = self.selected_queue() {
                    set_half(&mut q.avail, reg == VIRTIO_MMIO_QUEUE_AVAIL_HIGH, v);
                }
            }
            VIRTIO_MMIO_QUEUE_USED_LOW | VIRTIO_MMIO_QUEUE_USED_HIGH if queue_phase => {
                if let Some(q) = self.selected_queue() {
                    set_half(&mut q.used, reg == VIRTIO_MMIO_QUEUE_USED_HIGH, v);
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY if self.activated => {
                if let Ok(index) = u16::try_from(v) {
                    self.device.queue_notify(index);
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
            }
            VIRTIO_MMIO_STATUS => self.set_status(v),
            VIRTIO_MMIO_SHM_SEL => self.state.shm_sel = v,
            // Read-only registers, and setup writes outside their phase (§4.2.3 leaves them to the
            // device): ignored.
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.state = MmioState {
            queues: vec![QueueRegs::default(); self.state.queues.len()],
            ..Default::default()
        };
        self.interrupt_status.store(0, Ordering::SeqCst);
        self.activated = false;
        self.activation_error = None;
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (§2.1.2); anything else but a reset is ignored.
        if v & self.state.status != self.state.status {
            return;
        }
        let new = v & !self.state.status;
        let mut status = v;
        if new & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let wanted = self.state.driver_features;
            self.device.set_driver_features(wanted);
            // §2.2.2: refuse FEATURES_OK if the driver accepted bits the device did not offer, or
            // (§3.1.1 step 5) a set the device cannot work with.
            if self.device.driver_features() != wanted
                || wanted & !self.device.device_features() != 0
                || !self.device.features_ok()
            {
                status &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        let ready_bits = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        if new & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            if status & ready_bits != ready_bits || status & VIRTIO_CONFIG_S_FAILED != 0 {
                status &= !VIRTIO_CONFIG_S_DRIVER_OK;
            } else {
                self.state.status = status;
                match self.activate() {
                    Ok(()) => self.activated = true,
                    Err(e) => {
                        self.activation_error = Some(e);
                        status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                        self.interrupt_status
                            .fetch_or(VIRTIO_MMIO_INT_CONFIG, Ordering::SeqCst);
                    }
                }
            }
        }
        self.state.status = status;
    }

    /// Builds the queues from the registers, validated against guest memory, and activates.
    fn activate(&mut self) -> Result<(), ActivateError> {
        let event_idx = self.state.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mem = self.mem.memory();
        let mut queues = Vec::with_capacity(self.state.queues.len());
        for (index, (regs, &max)) in self
            .state
            .queues
            .iter()
            .zip(self.device.queue_max_sizes())
            .enumerate()
        {
            let err = |reason: String| ActivateError::Queue { index, reason };
            let mut q = Queue::new(max).map_err(|e| err(e.to_string()))?;
            if regs.ready {
                q.try_set_size(regs.size).map_err(|e| err(e.to_string()))?;
                q.try_set_desc_table_address(GuestAddress(regs.desc))
                    .map_err(|e| err(e.to_string()))?;
                q.try_set_avail_ring_address(GuestAddress(regs.avail))
                    .map_err(|e| err(e.to_string()))?;
                q.try_set_used_ring_address(GuestAddress(regs.used))
                    .map_err(|e| err(e.to_string()))?;
                q.set_event_idx(event_idx);
                q.set_ready(true);
                if !q.is_valid(&*mem) {
                    return Err(err("rings lie outside guest memory".to_string()));
                }
            }
            queues.push(q);
        }
        self.device
            .activate(self.mem.clone(), queues)
            .map_err(|e| ActivateError::Device(e.to_string()))
    }
}

impl<D> BusDevice for MmioTransport<D>
where
    D: VirtioDevice + Send,
    D::Memory: GuestAddressSpace + Send,
{
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if let Some(config_offset) = offset.checked_sub(config) {
            self.device.read_config(config_offset, data);
            return;
        }
        data.fill(0);
        let Ok(reg) = u32::try_from(offset) else { return };
        if data.len() == REGISTER_WIDTH && reg % 4 == 0 {
            data.copy_from_slice(&self.read_register(reg).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if let Some(config_offset) = offset.checked_sub(config) {
            self.device.write_config(config_offset, data);
            return;
        }
        let Ok(reg) = u32::try_from(offset) else { return };
        if let Ok(bytes) = <[u8; REGISTER_WIDTH]>::try_from(data) {
            if reg % 4 == 0 {
                self.write_register(reg, u32::from_le_bytes(bytes));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tagmem_device::Notifier;
    use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

    type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

    #[derive(Debug, thiserror::Error)]
    #[error("fake device refused")]
    struct FakeError;

    /// Ready, size, descriptor, available and used ring address of an activated queue.
    type QueueSeen = (bool, u16, u64, u64, u64);

    /// Records what the transport asks of it.
    #[derive(Default)]
    struct FakeDevice {
        acked: u64,
        activated: Option<Vec<QueueSeen>>,
        notified: Vec<u16>,
        resets: usize,
        refuse: bool,
        /// Features the device requires (the `features_ok` hook).
        required: u64,
        config_writes: Vec<(u64, Vec<u8>)>,
    }

    const OFFERED: u64 = (1 << 32) | (1 << 3);

    impl VirtioDevice for FakeDevice {
        type Memory = Mem;
        type Error = FakeError;
        fn device_type(&self) -> u32 {
            24
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn device_features(&self) -> u64 {
            OFFERED
        }
        fn set_driver_features(&mut self, features: u64) {
            self.acked = features & OFFERED;
        }
        fn driver_features(&self) -> u64 {
            self.acked
        }
        fn features_ok(&self) -> bool {
            self.acked & self.required == self.required
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = u8::try_from((offset + u64::try_from(i).unwrap()) % 256).unwrap();
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.config_writes.push((offset, data.to_vec()));
        }
        fn activate(&mut self, _mem: Mem, queues: Vec<Queue>) -> Result<(), FakeError> {
            if self.refuse {
                return Err(FakeError);
            }
            self.activated = Some(
                queues
                    .iter()
                    .map(|q| (q.ready(), q.size(), q.desc_table(), q.avail_ring(), q.used_ring()))
                    .collect(),
            );
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.activated = None;
        }
        fn queue_notify(&mut self, index: u16) {
            self.notified.push(index);
        }
        fn config_generation(&self) -> u32 {
            7
        }
    }

    fn transport() -> MmioTransport<FakeDevice> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        MmioTransport::new(FakeDevice::default(), GuestMemoryAtomic::new(mem))
    }

    fn r(t: &mut MmioTransport<FakeDevice>, reg: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(u64::from(reg), &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport<FakeDevice>, reg: u32, v: u32) {
        t.write(u64::from(reg), &v.to_le_bytes());
    }

    /// Drives the handshake up to FEATURES_OK, accepting `features`.
    fn negotiate(t: &mut MmioTransport<FakeDevice>, features: u64) -> u32 {
        w(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        w(
            t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        for sel in 0..2 {
            w(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            w(t, VIRTIO_MMIO_DRIVER_FEATURES, half(features, sel == 1));
        }
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        w(t, VIRTIO_MMIO_STATUS, s);
        r(t, VIRTIO_MMIO_STATUS)
    }

    fn setup_queue(t: &mut MmioTransport<FakeDevice>, index: u32, size: u32, base: u64) {
        w(t, VIRTIO_MMIO_QUEUE_SEL, index);
        w(t, VIRTIO_MMIO_QUEUE_NUM, size);
        for (lo, hi, addr) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH, base),
            (
                VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                base + 0x1000,
            ),
            (
                VIRTIO_MMIO_QUEUE_USED_LOW,
                VIRTIO_MMIO_QUEUE_USED_HIGH,
                base + 0x2000,
            ),
        ] {
            w(t, lo, half(addr, false));
            w(t, hi, half(addr, true));
        }
        w(t, VIRTIO_MMIO_QUEUE_READY, 1);
    }

    const ALL_OK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
        | VIRTIO_CONFIG_S_DRIVER
        | VIRTIO_CONFIG_S_FEATURES_OK
        | VIRTIO_CONFIG_S_DRIVER_OK;

    #[test]
    fn identification_registers() {
        let mut t = transport();
        assert_eq!(r(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_ID), 24);
        assert_eq!(r(&mut t, VIRTIO_MMIO_VENDOR_ID), MMIO_VENDOR_ID);
        assert_eq!(r(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 7);
        assert_eq!(r(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
        // Narrow or misaligned register reads return zeros.
        let mut b = [0xffu8; 2];
        t.read(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn feature_pages_and_negotiation() {
        let mut t = transport();
        w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1 << 3);
        w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        w(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(r(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);
        let status = negotiate(&mut t, OFFERED);
        assert_ne!(status & VIRTIO_CONFIG_S_FEATURES_OK, 0);
        assert_eq!(t.device().driver_features(), OFFERED);
    }

    #[test]
    fn unoffered_features_refuse_features_ok() {
        let mut t = transport();
        let status = negotiate(&mut t, OFFERED | (1 << 5));
        assert_eq!(status & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    }

    /// The device's `features_ok` hook decides FEATURES_OK (item A3): a driver that does not
    /// accept a required feature cannot complete negotiation, nor set DRIVER_OK.
    #[test]
    fn features_ok_hook_refuses_features_ok() {
        let mut t = transport();
        t.device_mut().required = 1 << 3;
        let status = negotiate(&mut t, 1 << 32);
        assert_eq!(
            status & VIRTIO_CONFIG_S_FEATURES_OK,
            0,
            "the required bit was left out"
        );
        w(&mut t, VIRTIO_MMIO_STATUS, status | VIRTIO_CONFIG_S_DRIVER_OK);
        assert!(!t.activated());
        assert!(t.device().activated.is_none());
        w(&mut t, VIRTIO_MMIO_STATUS, 0);
        let status = negotiate(&mut t, OFFERED);
        assert_ne!(status & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    }

    #[test]
    fn driver_ok_activates_with_queue_registers_and_notify_reaches_device() {
        let mut t = transport();
        negotiate(&mut t, OFFERED);
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 5);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
        w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(
            t.device().notified.is_empty(),
            "notify before DRIVER_OK reached the device"
        );
        setup_queue(&mut t, 0, 8, 0x10000);
        assert_eq!(r(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(t.activated(), "{:?}", t.activation_error());
        let q = t.device().activated.clone().unwrap();
        assert_eq!(q[0], (true, 8, 0x10000, 0x11000, 0x12000));
        assert!(!q[1].0);
        // Queue setup is frozen after DRIVER_OK.
        w(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
        w(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        assert_eq!(t.state().queues[0].size, 8);
        w(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
        assert_eq!(t.device().notified, vec![1]);
    }

    #[test]
    fn bad_queue_sets_needs_reset() {
        let mut t = transport();
        negotiate(&mut t, OFFERED);
        setup_queue(&mut t, 0, 6, 0x10000);
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(!t.activated());
        assert!(matches!(
            t.activation_error(),
            Some(ActivateError::Queue { index: 0, .. })
        ));
        assert_ne!(r(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_ne!(
            r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_CONFIG,
            0
        );

        let mut t = transport();
        negotiate(&mut t, OFFERED);
        setup_queue(&mut t, 0, 8, 0xff000);
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(matches!(t.activation_error(), Some(ActivateError::Queue { .. })));

        let mut t = transport();
        t.device_mut().refuse = true;
        negotiate(&mut t, OFFERED);
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        assert!(matches!(t.activation_error(), Some(ActivateError::Device(_))));
    }

    #[test]
    fn driver_ok_needs_features_ok() {
        let mut t = transport();
        w(
            &mut t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        w(
            &mut t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK,
        );
        assert!(!t.activated());
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_DRIVER_OK, 0);
    }

    #[test]
    fn interrupts_and_ack() {
        let mut t = transport();
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = t.interrupt(Some(event.try_clone().unwrap()));
        irq.signal_used_queue(0);
        irq.signal_config_change();
        assert_eq!(
            r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
            VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG
        );
        assert_eq!(event.read().unwrap(), 2);
        w(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
        assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
    }

    #[test]
    fn status_zero_resets() {
        let mut t = transport();
        negotiate(&mut t, OFFERED);
        setup_queue(&mut t, 0, 8, 0x10000);
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        t.interrupt(None).signal_used_queue(0);
        w(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(t.device().resets, 1);
        assert!(!t.activated());
        assert_eq!(r(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(t.state().queues, vec![QueueRegs::default(); 2]);
        // Clearing bits other than by a reset is ignored.
        w(
            &mut t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        w(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        assert_eq!(
            r(&mut t, VIRTIO_MMIO_STATUS),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER
        );
    }

    #[test]
    fn transport_state_round_trips_and_is_checked() {
        let mut t = transport();
        negotiate(&mut t, OFFERED);
        setup_queue(&mut t, 0, 8, 0x10000);
        w(&mut t, VIRTIO_MMIO_STATUS, ALL_OK);
        let irq = t.interrupt(None);
        irq.signal_used_queue(0);
        let saved = t.transport_state();
        assert!(saved.activated);

        let mut fresh = transport();
        let mut bad = saved.clone();
        bad.regs.queues.pop();
        assert!(matches!(
            fresh.restore_transport_state(&bad),
            Err(MmioRestoreError::QueueCount { .. })
        ));
        let mut bad = saved.clone();
        bad.regs.queues[0].size = 32;
        assert!(matches!(
            fresh.restore_transport_state(&bad),
            Err(MmioRestoreError::QueueSize { .. })
        ));
        let mut bad = saved.clone();
        bad.activated = false;
        assert!(matches!(
            fresh.restore_transport_state(&bad),
            Err(MmioRestoreError::Activation { .. })
        ));
        assert_eq!(fresh.transport_state(), MmioTransportState::default_for(2));
        fresh.restore_transport_state(&saved).unwrap();
        assert_eq!(fresh.transport_state(), saved);
        assert_eq!(r(&mut fresh, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    }

    #[test]
    fn shared_interrupt_reaches_the_transport() {
        let irq = MmioInterrupt::new(None);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut t = MmioTransport::with_interrupt(FakeDevice::default(), GuestMemoryAtomic::new(mem), &irq);
        irq.signal_config_change();
        assert_eq!(r(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
    }

    impl MmioTransportState {
        fn default_for(queues: usize) -> Self {
            MmioTransportState {
                regs: MmioState {
                    queues: vec![QueueRegs::default(); queues],
                    ..Default::default()
                },
                ..Default::default()
            }
        }
    }

    #[test]
    fn config_space_is_forwarded() {
        let mut t = transport();
        let mut b = [0u8; 3];
        t.read(u64::from(VIRTIO_MMIO_CONFIG) + 5, &mut b);
        assert_eq!(b, [5, 6, 7]);
        t.write(u64::from(VIRTIO_MMIO_CONFIG) + 2, &[9]);
        assert_eq!(t.device().config_writes, vec![(2, vec![9])]);
    }

    #[test]
    fn works_on_the_bus() {
        let bus = crate::bus::MmioBus::default();
        let t = Arc::new(Mutex::new(transport()));
        bus.insert(0xd010_0000, 0x1000, t.clone()).unwrap();
        let mut b = [0u8; 4];
        assert!(bus.read(0xd010_0000 + u64::from(VIRTIO_MMIO_DEVICE_ID), &mut b));
        assert_eq!(u32::from_le_bytes(b), 24);
    }
}
