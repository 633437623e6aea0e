//! A flat 64-bit image: bytes copied into boot RAM at their load address and entered in long
//! mode on the identity page tables [`crate::Vm::new`] writes, with the stack at
//! [`layout::BOOT_STACK_TOP`]. Bare-metal programs (a test guest, a firmware stub) boot this way;
//! their `hlt` exits to the VMM, which runs the vCPU again when its doorbell rings
//! ([`crate::Vmm::ring_doorbell`]).

use crate::layout;
use std::sync::Arc;

/// Why a flat image cannot be booted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlatImageError {
    /// The image is empty.
    #[error("the flat image is empty")]
    Empty,
    /// The image, its zero-initialised data included, leaves the room between the boot stack and
    /// the page tables.
    #[error(
        "flat image at {load_addr:#x}..{end:#x} must lie within {lo:#x}..{hi:#x} (above the boot \
         stack, below the page tables)",
        lo = layout::BOOT_STACK_TOP,
        hi = layout::PAGE_TABLES_ADDR
    )]
    Placement {
        /// Load address.
        load_addr: u64,
        /// End of the image's memory.
        end: u64,
    },
    /// The entry point is not inside the image.
    #[error("entry point {entry:#x} is outside the flat image at {load_addr:#x}+{len:#x}")]
    Entry {
        /// Entry point.
        entry: u64,
        /// Load address.
        load_addr: u64,
        /// Bytes of the image.
        len: u64,
    },
}

/// A flat image and where it goes; see the module documentation.
#[derive(Clone, PartialEq, Eq)]
pub struct FlatImage {
    bytes: Arc<[u8]>,
    load_addr: u64,
    entry: u64,
    mem_size: u64,
}

impl std::fmt::Debug for FlatImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatImage")
            .field("len", &self.bytes.len())
            .field("load_addr", &format_args!("{:#x}", self.load_addr))
            .field("entry", &format_args!("{:#x}", self.entry))
            .field("mem_size", &format_args!("{:#x}", self.mem_size))
            .finish()
    }
}

impl FlatImage {
    /// An image of `bytes` loaded at `load_addr` and entered at `entry`; `mem_size` is the memory
    /// it occupies from `load_addr` on, zero-initialised data included (at least `bytes.len()`).
    /// The whole of it must lie between [`layout::BOOT_STACK_TOP`] and
    /// [`layout::PAGE_TABLES_ADDR`], and `entry` inside the bytes.
    pub fn new(
        bytes: impl Into<Arc<[u8]>>,
        load_addr: u64,
        entry: u64,
        mem_size: u64,
    ) -> Result<Self, FlatImageError> {
        let bytes = bytes.into();
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if len == 0 {
            return Err(FlatImageError::Empty);
        }
        let mem_size = mem_size.max(len);
        let end = load_addr.saturating_add(mem_size);
        if load_addr < layout::BOOT_STACK_TOP || end > layout::PAGE_TABLES_ADDR {
            return Err(FlatImageError::Placement { load_addr, end });
        }
        if entry < load_addr || entry - load_addr >= len {
            return Err(FlatImageError::Entry {
                entry,
                load_addr,
                len,
            });
        }
        Ok(FlatImage {
            bytes,
            load_addr,
            entry,
            mem_size,
        })
    }

    /// The image's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Guest-physical address the bytes are copied to.
    pub fn load_addr(&self) -> u64 {
        self.load_addr
    }

    /// Guest-physical address the vCPU starts at.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// Memory the image occupies from its load address on, zero-initialised data included.
    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: u64 = layout::BOOT_STACK_TOP;

    #[test]
    fn an_image_must_fit_between_stack_and_page_tables_and_contain_its_entry() {
        let ok = FlatImage::new(vec![0xf4; 16], AT, AT + 4, 4096).unwrap();
        assert_eq!((ok.load_addr(), ok.entry(), ok.mem_size()), (AT, AT + 4, 4096));
        assert_eq!(ok.bytes(), &[0xf4; 16]);
        assert_eq!(
            FlatImage::new(vec![0xf4; 16], AT, AT, 1).unwrap().mem_size(),
            16,
            "the bytes themselves count"
        );
        assert_eq!(FlatImage::new(Vec::new(), AT, AT, 0), Err(FlatImageError::Empty));
        assert!(matches!(
            FlatImage::new(vec![0; 16], AT - 4096, AT - 4096, 16),
            Err(FlatImageError::Placement { .. })
        ));
        let past = FlatImage::new(vec![0; 16], AT, AT, layout::PAGE_TABLES_ADDR);
        assert!(matches!(past, Err(FlatImageError::Placement { .. })), "{past:?}");
        assert!(matches!(
            FlatImage::new(vec![0; 16], AT, AT + 16, 16),
            Err(FlatImageError::Entry { .. })
        ));
        assert!(matches!(
            FlatImage::new(vec![0; 16], u64::MAX - 8, u64::MAX - 8, 16),
            Err(FlatImageError::Placement { .. })
        ));
        assert!(format!("{ok:?}").contains("len: 16"));
    }
}
