//! The test guest's result lines, parsed.

/// A parsed result line of the test guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// `READ gpa=.. len=.. sum=.. first=..`.
    Read {
        /// Address read.
        gpa: u64,
        /// Bytes read.
        len: u64,
        /// Wrapping sum of the bytes.
        sum: u64,
        /// First up-to-8 bytes.
        first: Vec<u8>,
    },
    /// `WROTE gpa=.. len=.. byte=..`.
    Wrote {
        /// Address written.
        gpa: u64,
        /// Bytes written.
        len: u64,
        /// Fill value.
        byte: u8,
    },
    /// `ALLOC len=.. sum=..`.
    Alloc {
        /// Bytes allocated.
        len: u64,
        /// Sum of the pattern written.
        sum: u64,
    },
    /// `STOP`.
    Stop,
    /// `POLICY kind=..`.
    Policy {
        /// The `POLICY_*` value now in force.
        kind: u64,
    },
    /// `POLLED events=..`: the driver polled until idle.
    Polled {
        /// Driver log entries produced by this poll.
        events: u64,
    },
    /// `AUTOPOLL on=..`.
    AutoPoll {
        /// Whether the guest now polls on every loop iteration.
        on: bool,
    },
    /// `VIEW devices=.. pending=.. unclaimed=.. seed=..`, after the `DEV` and `FREE` lines.
    View {
        /// Number of dax devices.
        devices: u64,
        /// Offer chains collected but not answered.
        pending: u64,
    },
    /// `RELEASED count=..`.
    Released {
        /// Extents the device released.
        count: u64,
    },
    /// `RELEASE error=..`: the driver could not release.
    ReleaseFailed(String),
    /// `CLAIMED name=.. uuid=.. size=.. extents=..`: a claim made a device (the `uuid` and
    /// `extents` fields are for people; the `VIEW` lines carry them for programs).
    Claimed {
        /// The device (the seed before the claim).
        name: String,
        /// Its size, bytes.
        size: u64,
    },
    /// `CLAIM error=..`: nothing unclaimed carries the tag.
    ClaimFailed(String),
    /// `CLAIMMODE auto=..`.
    ClaimMode {
        /// Whether accepted groups become devices at once.
        auto: bool,
    },
    /// `BUSY ok=..`.
    Busy {
        /// Whether the target named a device or tag.
        ok: bool,
    },
    /// `VERBOSE on=..`.
    Verbose {
        /// Whether `EVT` lines are printed.
        on: bool,
    },
    /// `FAULT ...`: the guest took an exception or refused a command.
    Fault(String),
    /// `EXTENTS count=..`, after the `EXT` lines.
    Extents {
        /// Number of accepted extents listed.
        count: u64,
    },
    /// `READLOOP gpa=.. len=.. reps=.. acc=..`.
    ReadLoop {
        /// Address read.
        gpa: u64,
        /// Bytes per pass.
        len: u64,
        /// Passes.
        reps: u64,
        /// Wrapping sum of the words loaded.
        acc: u64,
    },
    /// `WROTELOOP gpa=.. len=.. reps=..`.
    WroteLoop {
        /// Address written.
        gpa: u64,
        /// Bytes per pass.
        len: u64,
        /// Passes.
        reps: u64,
    },
    /// `PLUGGED addr=.. requests=.. acked=.. resp=.. first=..`.
    Plugged {
        /// Start of the first range.
        addr: u64,
        /// Requests asked for.
        requests: u64,
        /// Requests acknowledged (they come first).
        acked: u64,
        /// The first non-ACK response type (255: driver error), 0 if all were acknowledged.
        resp: u64,
        /// The byte at `addr` (empty if nothing was plugged).
        first: Vec<u8>,
    },
    /// `UNPLUGGED resp=..`.
    Unplugged {
        /// Response type (255: driver error).
        resp: u64,
    },
    /// `REINIT ok=1 devices=.. extents=..`: the driver was reset and initialised again.
    Reinit {
        /// Dax devices the driver exposes afterwards.
        devices: u64,
        /// Accepted extents it listed.
        extents: u64,
    },
    /// `REINIT ok=0 error=..`: initialising the driver again failed.
    ReinitFailed(String),
}

pub(crate) fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

pub(crate) fn num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

impl Report {
    /// Parses one console line; `None` for lines that are not results (e.g. `HELLO`, `EVT`).
    pub fn parse(line: &str) -> Option<Report> {
        let word = line.split_whitespace().next()?;
        let n = |k| field(line, k).and_then(num);
        let flag = |k| n(k).map(|v| v != 0);
        match word {
            "READ" => Some(Report::Read {
                gpa: n("gpa")?,
                len: n("len")?,
                sum: n("sum")?,
                first: hex_bytes(field(line, "first")?)?,
            }),
            "WROTE" => Some(Report::Wrote {
                gpa: n("gpa")?,
                len: n("len")?,
                byte: u8::try_from(n("byte")?).ok()?,
            }),
            "ALLOC" => Some(Report::Alloc {
                len: n("len")?,
                sum: n("sum")?,
            }),
            "STOP" => Some(Report::Stop),
            "POLICY" => Some(Report::Policy { kind: n("kind")? }),
            "POLLED" => Some(Report::Polled { events: n("events")? }),
            "AUTOPOLL" => Some(Report::AutoPoll { on: flag("on")? }),
            "VIEW" => Some(Report::View {
                devices: n("devices")?,
                pending: n("pending")?,
            }),
            "RELEASED" => Some(Report::Released { count: n("count")? }),
            "RELEASE" => Some(Report::ReleaseFailed(line.to_string())),
            "CLAIMED" => Some(Report::Claimed {
                name: field(line, "name")?.to_string(),
                size: n("size")?,
            }),
            "CLAIM" => Some(Report::ClaimFailed(line.to_string())),
            "CLAIMMODE" => Some(Report::ClaimMode { auto: flag("auto")? }),
            "BUSY" => Some(Report::Busy { ok: flag("ok")? }),
            "VERBOSE" => Some(Report::Verbose { on: flag("on")? }),
            "FAULT" => Some(Report::Fault(line.to_string())),
            "EXTENTS" => Some(Report::Extents { count: n("count")? }),
            "READLOOP" => Some(Report::ReadLoop {
                gpa: n("gpa")?,
                len: n("len")?,
                reps: n("reps")?,
                acc: n("acc")?,
            }),
            "WROTELOOP" => Some(Report::WroteLoop {
                gpa: n("gpa")?,
                len: n("len")?,
                reps: n("reps")?,
            }),
            "PLUGGED" => Some(Report::Plugged {
                addr: n("addr")?,
                requests: n("requests")?,
                acked: n("acked")?,
                resp: n("resp")?,
                first: hex_bytes(field(line, "first")?)?,
            }),
            "UNPLUGGED" => Some(Report::Unplugged { resp: n("resp")? }),
            "REINIT" if flag("ok")? => Some(Report::Reinit {
                devices: n("devices")?,
                extents: n("extents")?,
            }),
            "REINIT" => Some(Report::ReinitFailed(line.to_string())),
            _ => None,
        }
    }
}

/// Byte sum as the guest computes it, for comparing with [`Report::Read`].
pub fn byte_sum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |s, &b| s.wrapping_add(u64::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_memory_reports() {
        assert_eq!(
            Report::parse("READ gpa=0x100000000 len=16 sum=0x2a first=0102ff"),
            Some(Report::Read {
                gpa: 1 << 32,
                len: 16,
                sum: 42,
                first: vec![1, 2, 0xff]
            })
        );
        assert_eq!(
            Report::parse("WROTE gpa=0x10 len=4 byte=0x5a"),
            Some(Report::Wrote {
                gpa: 16,
                len: 4,
                byte: 0x5a
            })
        );
        assert_eq!(
            Report::parse("ALLOC len=10 sum=0x2d"),
            Some(Report::Alloc { len: 10, sum: 45 })
        );
        assert!(matches!(
            Report::parse("FAULT vector=14 rip=0x1 cr2=0x2"),
            Some(Report::Fault(_))
        ));
        assert_eq!(Report::parse("HELLO tagmem test guest"), None);
        assert_eq!(Report::parse("READ gpa=zz len=1 sum=0 first="), None);
    }
}
