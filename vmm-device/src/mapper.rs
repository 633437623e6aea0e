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

/// Error a mapper reports; the device turns it into a protocol-level failure. Its source is
/// the mapper's own error (a KVM or `mmap` failure, a slot limit), kept whole for the chain.
#[derive(Debug, thiserror::Error)]
#[error("mapping {gpa:#x}+{len:#x} failed")]
pub struct MapperError {
    /// Guest-physical start of the failed operation.
    pub gpa: u64,
    /// Its length.
    pub len: u64,
    /// What went wrong, as the mapper's error type says it.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl MapperError {
    /// A failure to map or unmap `[gpa, gpa + len)` caused by `source` (an error value, or a
    /// message).
    pub fn new(
        gpa: u64,
        len: u64,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        MapperError {
            gpa,
            len,
            source: source.into(),
        }
    }

    /// This error and each cause under it, joined by ": " (for logs and host events).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self.source.as_ref());
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("slot limit reached")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn a_mapper_error_keeps_its_source_chain() {
        let e = MapperError::new(0x20_0000, 0x1000, Inner(std::io::Error::other("no space")));
        assert_eq!(e.to_string(), "mapping 0x200000+0x1000 failed");
        let src = std::error::Error::source(&e).expect("a source");
        assert!(src.downcast_ref::<Inner>().is_some());
        assert_eq!(
            e.chain(),
            "mapping 0x200000+0x1000 failed: slot limit reached: no space"
        );
        assert_eq!(
            MapperError::new(0, 1, "refused").chain(),
            "mapping 0x0+0x1 failed: refused"
        );
    }
}
