#![no_main]
//! Snapshot restore from states the device produced, then changed field by field.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tagmem_fuzz::restore::restore_mutated(data));
