#![no_main]
//! Requests, events and configuration space from any bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tagmem_fuzz::wire::check(data));
