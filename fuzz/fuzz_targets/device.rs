#![no_main]
//! The device over guest memory: guest requests, host commands, resets and snapshots.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tagmem_fuzz::device::run(data, &tagmem_fuzz::device::all_ops())
});
