#![no_main]
//! Descriptor chains and rings as a hostile driver writes them.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tagmem_fuzz::device::run_raw(data));
