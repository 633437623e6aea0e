#![no_main]
//! Sysfs parsing from any tree of attributes, links and special files.
libfuzzer_sys::fuzz_target!(|data: &[u8]| tagmem_fuzz::sysfs::check(data));
