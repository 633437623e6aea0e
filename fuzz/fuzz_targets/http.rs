#![no_main]
//! The HTTP API's request path from any bytes on the socket.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tagmem_fuzz::http::check(data));
