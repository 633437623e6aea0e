//! Inputs and checks of tagmem's fuzz targets (`fuzz_targets/`), kept in a library so that the
//! decoders, encoders and seed generator are unit-tested and shared.
//!
//! | target | input | module |
//! | --- | --- | --- |
//! | `wire` | raw bytes as requests, events, config | [`wire`] |
//! | `device` | a program of guest requests, host commands, resets, snapshots | [`device`] |
//! | `queue` | a program of raw descriptors and ring pokes | [`device`] |
//! | `restore_json` | a snapshot as JSON | [`restore`] |
//! | `restore_state` | a program, then changes to the state it left | [`restore`] |
//! | `http` | bytes as they arrive on the API socket | [`http`] |
//! | `option` | `--tagged-memory` (and `--memory`, `--api-socket`) values, one a line | [`option`] |
//! | `sysfs` | a sysfs tree of directories, attributes, links and special files | [`sysfs`] |

pub mod bytes;
pub mod device;
pub mod http;
pub mod option;
pub mod proto;
pub mod restore;
pub mod seeds;
pub mod sysfs;
pub mod wire;
