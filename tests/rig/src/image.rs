//! The test guest's flat image and where it goes, as the build script read them from its ELF.

use tagmem_vmm::boot::FlatImage;
use tagmem_vmm::layout;

include!(concat!(env!("OUT_DIR"), "/test_guest_layout.rs"));

/// The flat image, to be loaded at [`LOAD_ADDR`].
pub static BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/test-guest.bin"));

// The image (including its zero-initialised data) must lie between the boot stack and the page
// tables, and start with its entry point.
const _: () =
    assert!(LOAD_ADDR >= layout::BOOT_STACK_TOP && MEM_END <= layout::PAGE_TABLES_ADDR && ENTRY == LOAD_ADDR);

/// The image as the VMM boots it ([`tagmem_vmm::GuestKind::Flat`]).
pub fn flat_image() -> FlatImage {
    FlatImage::new(BYTES, LOAD_ADDR, ENTRY, MEM_END - LOAD_ADDR)
        .expect("the build script checked the image against the layout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_embedded() {
        assert!(!BYTES.is_empty());
    }
}
