#![no_main]
//! Snapshot restore from any JSON.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tagmem_fuzz::restore::restore_json(data));
