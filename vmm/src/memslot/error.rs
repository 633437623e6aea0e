//! What the memslot mapper refuses, and why.

use std::io;
use std::ops::Range;
use tagmem_device::SourceId;

/// Errors of the memslot mapper.
#[derive(Debug, thiserror::Error)]
pub enum MemslotError {
    /// Zero length, or the range wraps around the address space.
    #[error("empty or wrapping range {gpa:#x}+{len:#x}")]
    BadRange {
        /// Guest-physical start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// Address, length or offset not aligned to what the backing needs.
    #[error("range {gpa:#x}+{len:#x} at offset {offset:#x} is not aligned to {align:#x}")]
    Unaligned {
        /// Guest-physical start.
        gpa: u64,
        /// Length.
        len: u64,
        /// Backing offset.
        offset: u64,
        /// Required alignment.
        align: u64,
    },
    /// The backing is not registered.
    #[error("backing {0:?} is not registered")]
    UnknownBacking(SourceId),
    /// A backing with this id is registered already.
    #[error("backing {0:?} is registered already")]
    DuplicateBacking(SourceId),
    /// The backing is still mapped and cannot be unregistered.
    #[error("backing {0:?} is still mapped")]
    BackingInUse(SourceId),
    /// The range runs past the end of the backing.
    #[error("offset {offset:#x}+{len:#x} runs past the end of backing {id:?} ({size:#x} bytes)")]
    PastBackingEnd {
        /// The backing.
        id: SourceId,
        /// Backing offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Backing size.
        size: u64,
    },
    /// A writable mapping of a backing opened read-only.
    #[error("backing {0:?} was opened read-only; it can only be mapped read-only")]
    BackingReadOnly(SourceId),
    /// The range overlaps memory the mapper does not manage (boot RAM, device windows).
    #[error("range {gpa:#x}+{len:#x} overlaps reserved guest memory {reserved:#x?}")]
    Reserved {
        /// Guest-physical start.
        gpa: u64,
        /// Length.
        len: u64,
        /// The reserved range hit.
        reserved: Range<u64>,
    },
    /// The range overlaps an existing mapping.
    #[error("range {gpa:#x}+{len:#x} overlaps an existing mapping")]
    Overlap {
        /// Guest-physical start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// `unmap` of a range that is not wholly mapped.
    #[error("range {gpa:#x}+{len:#x} is not wholly mapped")]
    NotMapped {
        /// Guest-physical start.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// The operation would need more memslots than KVM (or the configured cap) allows.
    #[error("memslot limit reached: needs {needed} slots, at most {limit} available to the mapper")]
    SlotLimit {
        /// Slots the mapper would reserve afterwards: what its runs need if later unmaps split
        /// them as far as whole units allow.
        needed: usize,
        /// Slots it may use.
        limit: usize,
    },
    /// The host `mmap` of the backing range failed.
    #[error("mmap of backing {id:?} offset {offset:#x}+{len:#x} failed")]
    Mmap {
        /// The backing.
        id: SourceId,
        /// Backing offset.
        offset: u64,
        /// Length.
        len: u64,
        /// What vm-memory's `MmapRegion` reported.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The backing's descriptor could not be duplicated for its host mapping.
    #[error("duplicating the descriptor of backing {id:?} failed")]
    CloneFd {
        /// The backing.
        id: SourceId,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// A value does not fit the host's `usize`.
    #[error("{0:#x} does not fit in the host address space")]
    TooLarge(u64),
    /// KVM refused a memslot change.
    #[error("KVM_SET_USER_MEMORY_REGION slot {slot} ({gpa:#x}+{len:#x}) failed{rollback}")]
    Kvm {
        /// Slot number.
        slot: u32,
        /// Guest-physical start.
        gpa: u64,
        /// Length (0 for a deletion).
        len: u64,
        /// Outcome of undoing the partial change, when it also failed.
        rollback: String,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
}
