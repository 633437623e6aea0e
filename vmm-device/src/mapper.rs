//! The narrow traits a VMM implements to host the device: a memory mapper and an interrupt hook
//! (the clock is in [`crate::clock`]). The device core never touches a hypervisor handle; it
//! calls these.

use serde::{Deserialize, Serialize};

/// Opaque id of a host backing (devdax, file, memfd) the VMM registered with its mapper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceId(pub u64);

/// A range of a host backing: where an extent's bytes live on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// The backing.
    pub id: SourceId,
    /// Byte offset within the backing.
    pub offset: u64,
}

/// One request to make `len` bytes of a backing visible to the guest at `gpa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// Guest-physical start address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where the bytes come from.
    pub source: SourceRef,
    /// Map read-only (guest writes must not reach the backing).
    pub readonly: bool,
}

impl Mapping {
    /// The mapping's last guest-physical address plus one, if it does not overflow.
    pub fn end(&self) -> Option<u64> {
        self.gpa.checked_add(self.len)
    }
}

/// Error a mapper reports; the device turns it into a protocol-level failure.
#[derive(Debug, thiserror::Error)]
#[error("mapping {gpa:#x}+{len:#x} failed: {reason}")]
pub struct MapperError {
    /// Guest-physical start of the failed operation.
    pub gpa: u64,
    /// Its length.
    pub len: u64,
    /// What went wrong, in the mapper's words.
    pub reason: String,
}

/// Makes host memory reachable (or unreachable) by the guest: KVM memslots in a real VMM.
///
/// Contract the device keeps: `map` is only called for ranges that overlap nothing currently
/// mapped; `unmap` only for ranges that are wholly mapped (possibly a sub-range of one earlier
/// `map`, or spanning several). After `unmap` returns `Ok`, the guest must no longer reach the
/// bytes. The device changes its own state only after the call succeeded.
///
/// The device hands over related ranges together: the accepted extents of a chain in one
/// [`MemoryMapper::map_batch`], a released group in one [`MemoryMapper::unmap_batch`]. A mapper
/// that can do better than one range at a time (merge neighbours into one KVM memslot, delete a
/// slot once) overrides them; the defaults call `map` and `unmap` per range.
pub trait MemoryMapper: Send {
    /// Maps `m`; on error nothing of `m` may stay mapped.
    fn map(&mut self, m: &Mapping) -> Result<(), MapperError>;
    /// Unmaps `m`.
    fn unmap(&mut self, m: &Mapping) -> Result<(), MapperError>;

    /// Maps every range of `maps` (disjoint, in any order) or none: on error nothing of them may
    /// stay mapped. The default maps them one by one and unmaps what it mapped if one fails.
    fn map_batch(&mut self, maps: &[Mapping]) -> Result<(), MapperError> {
        for (i, m) in maps.iter().enumerate() {
            if let Err(e) = self.map(m) {
                for done in &maps[..i] {
                    let _ = self.unmap(done);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unmaps every range of `maps` (disjoint, each wholly mapped) or, on error, as many as it
    /// can restore none of: after `Ok` the guest reaches none of them. The default unmaps them
    /// one by one and maps back what it unmapped if one fails.
    fn unmap_batch(&mut self, maps: &[Mapping]) -> Result<(), MapperError> {
        for (i, m) in maps.iter().enumerate() {
            if let Err(e) = self.unmap(m) {
                for done in &maps[..i] {
                    let _ = self.map(done);
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Raises the device's interrupts on whatever transport hosts it.
pub trait Notifier: Send + Sync {
    /// The device put buffers into the used ring of queue `queue`.
    fn signal_used_queue(&self, queue: u16);
    /// The device configuration changed.
    fn signal_config_change(&self);
}

/// A notifier that does nothing, for polled transports.
#[derive(Debug, Default)]
pub struct NoopNotifier;

impl Notifier for NoopNotifier {
    fn signal_used_queue(&self, _queue: u16) {}
    fn signal_config_change(&self) {}
}
