//! Commands for the test guest and how they are encoded for the test-control device.

use crate::protocol::*;
use tagmem_device::Target;
use uuid::Uuid;

/// The offer policy the guest's driver applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Accept every valid offer (the driver's default).
    AcceptAll,
    /// Reject every offer.
    RejectAll,
    /// Accept exactly these extent ids.
    AcceptIds(Vec<u64>),
    /// Reject extents carrying this tag, accept the rest.
    RejectTag(Uuid),
}

/// A command for the test guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Read `len` bytes at `gpa`.
    Read {
        /// Guest-physical address.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// Fill `len` bytes at `gpa` with `byte`.
    Write {
        /// Guest-physical address.
        gpa: u64,
        /// Length.
        len: u64,
        /// Fill value.
        byte: u8,
    },
    /// Allocate, fill and free `len` bytes of guest heap.
    Alloc {
        /// Bytes.
        len: u64,
    },
    /// Print `STOP` and halt for good.
    Stop,
    /// Set the driver's offer policy.
    Policy(Policy),
    /// Poll the driver until it has nothing left to do.
    Poll,
    /// Poll the driver on every loop iteration (`true`) or only on [`Command::Poll`].
    AutoPoll(bool),
    /// Print the driver's dax devices.
    View,
    /// Release the device a target names.
    Release(Target),
    /// Mark the device a target names busy or idle.
    Busy {
        /// The device.
        target: Target,
        /// Busy (`true`) or idle.
        busy: bool,
    },
    /// Print driver log lines as they happen (`true`) or only count them.
    Verbose(bool),
    /// Print every accepted extent with its record fields (`EXT` lines).
    Extents,
    /// Claim accepted capacity by tag into the region's seed, as
    /// `daxctl create-device -r region0 --uuid <tag>` does (the nil tag: one untagged extent).
    Claim(Uuid),
    /// Make every accepted group a device at once (`true`) or leave it unclaimed until a
    /// [`Command::Claim`] (`false`, the driver's default, as CXL DCD).
    ClaimMode(bool),
    /// Reset the device and initialise the driver again (it lists what it still holds).
    Reinit,
    /// Read `len` bytes at `gpa` (8-byte aligned) `reps` times with 8-byte loads.
    ReadLoop {
        /// Guest-physical address.
        gpa: u64,
        /// Length.
        len: u64,
        /// Passes over the range.
        reps: u64,
    },
    /// Fill `len` bytes at `gpa` (8-byte aligned) `reps` times with 8-byte stores of `byte`.
    WriteLoop {
        /// Guest-physical address.
        gpa: u64,
        /// Length.
        len: u64,
        /// Passes over the range.
        reps: u64,
        /// Fill value.
        byte: u8,
    },
    /// Plug `requests` consecutive ranges of `blocks` base blocks from `addr` on through the base
    /// virtio-mem path, then read the first byte.
    BasePlug {
        /// Guest-physical start of the first range.
        addr: u64,
        /// PLUG requests to send.
        requests: u64,
        /// Blocks per request.
        blocks: u64,
    },
    /// Send a base virtio-mem UNPLUG_ALL request.
    BaseUnplugAll,
}

fn tag_halves(tag: &Uuid) -> [u64; 2] {
    let b = tag.as_bytes();
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&b[..8]);
    hi.copy_from_slice(&b[8..]);
    [u64::from_le_bytes(lo), u64::from_le_bytes(hi)]
}

fn target_args(t: &Target) -> Vec<u64> {
    match t {
        Target::Extent(id) => vec![TARGET_EXTENT, *id],
        Target::Tag(tag) => {
            let [lo, hi] = tag_halves(tag);
            vec![TARGET_TAG, lo, hi]
        }
    }
}

impl Command {
    /// The command code and arguments as the guest reads them.
    pub fn encode(&self) -> (u64, Vec<u64>) {
        match self {
            Command::Read { gpa, len } => (CMD_READ, vec![*gpa, *len]),
            Command::Write { gpa, len, byte } => (CMD_WRITE, vec![*gpa, *len, u64::from(*byte)]),
            Command::Alloc { len } => (CMD_ALLOC, vec![*len]),
            Command::Stop => (CMD_STOP, Vec::new()),
            Command::Policy(p) => {
                let args = match p {
                    Policy::AcceptAll => vec![POLICY_ACCEPT_ALL],
                    Policy::RejectAll => vec![POLICY_REJECT_ALL],
                    Policy::AcceptIds(ids) => std::iter::once(POLICY_ACCEPT_IDS)
                        .chain(ids.iter().copied())
                        .collect(),
                    Policy::RejectTag(tag) => {
                        let [lo, hi] = tag_halves(tag);
                        vec![POLICY_REJECT_TAG, lo, hi]
                    }
                };
                (CMD_POLICY, args)
            }
            Command::Poll => (CMD_POLL, Vec::new()),
            Command::AutoPoll(on) => (CMD_AUTOPOLL, vec![u64::from(*on)]),
            Command::View => (CMD_VIEW, Vec::new()),
            Command::Release(t) => (CMD_RELEASE, target_args(t)),
            Command::Busy { target, busy } => {
                let mut args = vec![u64::from(*busy)];
                args.extend(target_args(target));
                (CMD_BUSY, args)
            }
            Command::Verbose(on) => (CMD_VERBOSE, vec![u64::from(*on)]),
            Command::Extents => (CMD_EXTENTS, Vec::new()),
            Command::Claim(tag) => (CMD_CLAIM, tag_halves(tag).to_vec()),
            Command::ClaimMode(auto) => (CMD_CLAIM_MODE, vec![u64::from(*auto)]),
            Command::Reinit => (CMD_REINIT, Vec::new()),
            Command::ReadLoop { gpa, len, reps } => (CMD_READ_LOOP, vec![*gpa, *len, *reps]),
            Command::WriteLoop { gpa, len, reps, byte } => {
                (CMD_WRITE_LOOP, vec![*gpa, *len, *reps, u64::from(*byte)])
            }
            Command::BasePlug {
                addr,
                requests,
                blocks,
            } => (CMD_BASE_PLUG, vec![*addr, *requests, *blocks]),
            Command::BaseUnplugAll => (CMD_BASE_UNPLUG_ALL, Vec::new()),
        }
    }
}

/// Why a command cannot be queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// More arguments than the protocol carries.
    #[error("command carries {0} arguments, at most {MAX_ARGS} fit")]
    TooManyArgs(usize),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;

    #[test]
    fn claim_commands_encode_and_parse() {
        let tag = Uuid::from_u128(0x0102);
        assert_eq!(Command::Claim(tag).encode(), (CMD_CLAIM, vec![0, 0x0201 << 48]));
        assert_eq!(Command::Claim(Uuid::nil()).encode(), (CMD_CLAIM, vec![0, 0]));
        assert_eq!(Command::ClaimMode(true).encode(), (CMD_CLAIM_MODE, vec![1]));
        assert_eq!(
            Report::parse(
                "CLAIMED name=dax0.3 uuid=00000000-0000-0000-0000-000000000102 size=0x400000 extents=2"
            ),
            Some(Report::Claimed {
                name: "dax0.3".into(),
                size: 0x40_0000,
            })
        );
        assert!(matches!(
            Report::parse("CLAIM error=no unclaimed capacity carries this tag"),
            Some(Report::ClaimFailed(_))
        ));
        assert_eq!(
            Report::parse("CLAIMMODE auto=0"),
            Some(Report::ClaimMode { auto: false })
        );
    }

    #[test]
    fn benchmark_commands_encode_and_parse() {
        assert_eq!(
            Command::ReadLoop {
                gpa: 8,
                len: 16,
                reps: 2
            }
            .encode(),
            (CMD_READ_LOOP, vec![8, 16, 2])
        );
        assert_eq!(
            Command::WriteLoop {
                gpa: 8,
                len: 16,
                reps: 2,
                byte: 0xab
            }
            .encode(),
            (CMD_WRITE_LOOP, vec![8, 16, 2, 0xab])
        );
        assert_eq!(
            Command::BasePlug {
                addr: 1 << 40,
                requests: 3,
                blocks: 64
            }
            .encode(),
            (CMD_BASE_PLUG, vec![1 << 40, 3, 64])
        );
        assert_eq!(Command::BaseUnplugAll.encode(), (CMD_BASE_UNPLUG_ALL, Vec::new()));
        assert_eq!(
            Report::parse("READLOOP gpa=0x8 len=16 reps=2 acc=0x2a"),
            Some(Report::ReadLoop {
                gpa: 8,
                len: 16,
                reps: 2,
                acc: 42
            })
        );
        assert_eq!(
            Report::parse("WROTELOOP gpa=0x8 len=16 reps=2"),
            Some(Report::WroteLoop {
                gpa: 8,
                len: 16,
                reps: 2
            })
        );
        assert_eq!(
            Report::parse("PLUGGED addr=0x10000000000 requests=3 acked=2 resp=1 first=5a"),
            Some(Report::Plugged {
                addr: 1 << 40,
                requests: 3,
                acked: 2,
                resp: 1,
                first: vec![0x5a]
            })
        );
        assert_eq!(
            Report::parse("PLUGGED addr=0x0 requests=1 acked=0 resp=3 first="),
            Some(Report::Plugged {
                addr: 0,
                requests: 1,
                acked: 0,
                resp: 3,
                first: Vec::new()
            })
        );
        assert_eq!(
            Report::parse("UNPLUGGED resp=0"),
            Some(Report::Unplugged { resp: 0 })
        );
        assert_eq!(Command::Reinit.encode(), (CMD_REINIT, Vec::new()));
        assert_eq!(
            Report::parse("REINIT ok=1 devices=2 extents=3"),
            Some(Report::Reinit {
                devices: 2,
                extents: 3
            })
        );
        assert!(matches!(
            Report::parse("REINIT ok=0 error=device refused DRIVER_OK"),
            Some(Report::ReinitFailed(_))
        ));
    }
}
