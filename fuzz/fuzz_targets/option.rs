#![no_main]
//! The `--tagged-memory` option grammar from any text.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tagmem_fuzz::option::check(data));
