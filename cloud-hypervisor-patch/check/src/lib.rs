//! Test-only crate: `tests/patch_files.rs` parses the Cloud Hypervisor patch series in the parent
//! folder, and `tests/adapter_api.rs` exercises the device API its adapter uses, with the crate
//! versions and features Cloud Hypervisor builds it with. Nothing here is linked anywhere.
