//! Turning a guest descriptor chain into bytes the device can trust: direction, length and
//! address checks happen here, before any request is interpreted (SPEC.md [T-Q-*]).

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// Why a chain was refused outright (it is returned with used length 0).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A device-readable descriptor followed a device-writable one (VIRTIO §2.7.4.2).
    #[error("guest gave us a readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// A descriptor lies outside guest memory, or its address overflows.
    #[error("guest gave us a descriptor outside guest memory: {addr:#x}+{len:#x}")]
    OutsideMemory {
        /// Descriptor address.
        addr: u64,
        /// Descriptor length.
        len: u32,
    },
    /// The chain loops, is longer than the queue, or has a bad indirect table.
    #[error("guest gave us a looping, overlong or malformed descriptor chain")]
    Malformed,
    /// The chain has no descriptor at all.
    #[error("guest gave us an empty descriptor chain")]
    Empty,
    /// The chain, or an indirect table in it, holds more descriptors than the queue size
    /// (VIRTIO §2.7.5.3.1).
    #[error("guest gave us a chain or indirect table longer than the queue ({max} descriptors)")]
    TooLong {
        /// The queue size.
        max: u16,
    },
}

/// A chain's contents copied out of guest memory.
#[derive(Debug, Default)]
pub(crate) struct ParsedChain {
    /// Bytes of the device-readable part, at most the cap given to [`parse_chain`].
    pub readable: Vec<u8>,
    /// Number of device-readable descriptors (zero-length ones included).
    pub readable_descs: usize,
    /// Total length of the device-readable part (may exceed `readable.len()`).
    pub readable_len: u64,
    /// Device-writable descriptors in order.
    pub writable: Vec<(GuestAddress, u32)>,
    /// Their total length.
    pub writable_len: u64,
}

/// Copies a chain out of guest memory, reading at most `cap` readable bytes. A chain of more than
/// `queue_size` descriptors is refused.
pub(crate) fn parse_chain<M, T>(
    mem: &T,
    chain: DescriptorChain<M>,
    cap: usize,
    queue_size: u16,
) -> Result<ParsedChain, ChainError>
where
    M: std::ops::Deref<Target = T>,
    T: GuestMemory,
{
    let mut out = ParsedChain::default();
    let mut last_has_next = false;
    let mut any = false;
    let mut count = 0usize;
    // `DescriptorChain` bounds the walk by the queue size (ttl), rejects nested indirect
    // tables and caps the total at 2^32 bytes; it ends the iteration early on any of those,
    // which shows up here as a last descriptor that still claims a successor.
    for desc in chain {
        any = true;
        count += 1;
        if count > usize::from(queue_size) {
            return Err(ChainError::TooLong { max: queue_size });
        }
        last_has_next = desc.has_next();
        let (addr, len) = (desc.addr(), desc.len());
        let access = if desc.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let in_bounds = addr.checked_add(u64::from(len)).is_some()
            && (len == 0 || mem.check_range(addr, usize::try_from(len).unwrap_or(usize::MAX), access));
        if !in_bounds {
            return Err(ChainError::OutsideMemory {
                addr: addr.raw_value(),
                len,
            });
        }
        if desc.is_write_only() {
            out.writable.push((addr, len));
            out.writable_len += u64::from(len);
        } else {
            if !out.writable.is_empty() {
                return Err(ChainError::ReadableAfterWritable);
            }
            out.readable_descs += 1;
            out.readable_len += u64::from(len);
            let room = cap.saturating_sub(out.readable.len());
            let take = usize::try_from(len).unwrap_or(usize::MAX).min(room);
            if take > 0 {
                let start = out.readable.len();
                out.readable.resize(start + take, 0);
                mem.read_slice(&mut out.readable[start..], addr)
                    .map_err(|_| ChainError::OutsideMemory {
                        addr: addr.raw_value(),
                        len,
                    })?;
            }
        }
    }
    if !any {
        return Err(ChainError::Empty);
    }
    if last_has_next {
        return Err(ChainError::Malformed);
    }
    Ok(out)
}

/// VIRTIO §2.7.5.3.1: an indirect table holds no more descriptors than the queue size. Walks the
/// direct part of the chain at `head` in the descriptor table (at most `queue_size` steps) and
/// checks the length of the indirect table it ends in, if any. `DescriptorChain` itself accepts
/// tables of up to 65535 entries, whatever the queue size.
pub(crate) fn indirect_tables_fit<T: GuestMemory>(
    mem: &T,
    desc_table: GuestAddress,
    queue_size: u16,
    head: u16,
) -> bool {
    let mut index = head;
    for _ in 0..queue_size {
        if index >= queue_size {
            // Not a descriptor: the chain walk refuses it.
            return true;
        }
        let mut raw = [0u8; 16];
        let Some(at) = desc_table.checked_add(16 * u64::from(index)) else {
            return true;
        };
        if mem.read_slice(&mut raw, at).is_err() {
            return true;
        }
        let len = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
        let flags = u16::from_le_bytes([raw[12], raw[13]]);
        let next = u16::from_le_bytes([raw[14], raw[15]]);
        if u32::from(flags) & VRING_DESC_F_INDIRECT != 0 {
            return len / 16 <= u32::from(queue_size);
        }
        if u32::from(flags) & VRING_DESC_F_NEXT == 0 {
            return true;
        }
        index = next;
    }
    true
}

/// Writes `bytes` across the chain's writable descriptors; returns the bytes written, or `None`
/// if they do not fit or guest memory refuses the write.
pub(crate) fn write_response<T: GuestMemory>(mem: &T, chain: &ParsedChain, bytes: &[u8]) -> Option<u32> {
    if chain.writable_len < bytes.len() as u64 {
        return None;
    }
    let mut rest = bytes;
    for &(addr, len) in &chain.writable {
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(usize::try_from(len).unwrap_or(usize::MAX));
        mem.write_slice(&rest[..n], addr).ok()?;
        rest = &rest[n..];
    }
    u32::try_from(bytes.len()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn run(descs: &[(u64, u32, u32, u16)]) -> Result<ParsedChain, ChainError> {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(a, l, f, n)| {
                RawDescriptor::from(SplitDescriptor::new(a, l, u16::try_from(f).unwrap(), n))
            })
            .collect();
        vq.build_desc_chain(&raw).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(&m).unwrap().next().unwrap();
        parse_chain(&m, chain, 64, 16)
    }

    #[test]
    fn readable_then_writable() {
        let c = run(&[
            (0x1000, 24, VRING_DESC_F_NEXT, 1),
            (0x2000, 10, VRING_DESC_F_WRITE, 0),
        ])
        .unwrap();
        assert_eq!(c.readable_len, 24);
        assert_eq!(c.readable.len(), 24);
        assert_eq!(c.writable, vec![(GuestAddress(0x2000), 10)]);
    }

    #[test]
    fn cap_limits_copy_not_length() {
        let c = run(&[
            (0x1000, 1000, VRING_DESC_F_NEXT, 1),
            (0x2000, 10, VRING_DESC_F_WRITE, 0),
        ])
        .unwrap();
        assert_eq!(c.readable_len, 1000);
        assert_eq!(c.readable.len(), 64);
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let e = run(&[
            (0x2000, 10, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
            (0x1000, 24, 0, 0),
        ]);
        assert_eq!(e.unwrap_err(), ChainError::ReadableAfterWritable);
    }

    #[test]
    fn outside_memory_is_refused() {
        let e = run(&[(0xff_fff0, 24, 0, 0)]);
        assert!(matches!(e, Err(ChainError::OutsideMemory { .. })));
        let e = run(&[(u64::MAX - 4, 24, 0, 0)]);
        assert!(matches!(e, Err(ChainError::OutsideMemory { .. })));
    }
}
