//! The test rig of the reference VMM: the bare-metal test guest (`tests/guest`, built by this
//! crate's build script into a flat image) and everything that drives it.
//!
//! - [`image`]: the guest's flat image, the boot source the VMM is given
//!   ([`tagmem_vmm::GuestKind::Flat`]);
//! - [`protocol`], [`Command`], [`TestControl`]: the test-control protocol and the MMIO device
//!   the guest pops its commands from, attached as an extra device
//!   ([`tagmem_vmm::Vmm::with_devices`]);
//! - [`Report`], [`GuestView`], [`ExtentDetail`]: the guest's result lines, parsed;
//! - [`TestGuestVm`]: a [`tagmem_vmm::Vmm`] running the test guest, with a method per command;
//!   [`TestGuest`]: the guest on a bare VM without the tagged device, run on the calling thread;
//! - [`nested`]: the nested pass-through harness (SPEC.md T-NEST) over two such VMs;
//! - [`demo`]: the life cycle in one run, as `tagmem-vmm demo` prints it;
//! - [`linux`]: a Linux guest with the tagged series, driven from user space over its console.
//!
//! The VMM knows none of this: it boots the image it is given, attaches the devices it is given,
//! and rings its doorbell when asked. This crate depends on the VMM, never the other way round.

pub mod bare;
pub mod command;
pub mod control;
pub mod demo;
pub mod guest;
pub mod image;
pub mod linux;
pub mod nested;
pub mod protocol;
pub mod report;
pub mod view;

pub use bare::{TestGuest, TestGuestError};
pub use command::{Command, CommandError, Policy};
pub use control::TestControl;
pub use guest::{GuestError, TestGuestSnapshot, TestGuestVm, DEFAULT_COMMAND_TIMEOUT};
pub use report::{byte_sum, Report};
pub use view::{DevView, ExtentDetail, ExtentView, GuestView, PoisonView};
