//! The guest driver's view of its dax region (`DEV`, `FREE` and `VIEW` lines) and of its accepted
//! extents (`EXT` and `EXTENTS` lines), parsed.

use crate::report::{field, num, Report};
use uuid::Uuid;

/// One extent of a [`DevView`]: id, guest-physical address, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentView {
    /// Extent id.
    pub id: u64,
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A poisoned range the guest knows of: extent id, offset, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoisonView {
    /// Extent id.
    pub id: u64,
    /// Offset in the extent.
    pub offset: u64,
    /// Length.
    pub len: u64,
}

/// One dax device as the guest's driver reports it (a `DEV` line), or one group of capacity its
/// region holds unclaimed (a `FREE` line: `name` empty, never busy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevView {
    /// Device name (`dax0.N`); empty for unclaimed capacity.
    pub name: String,
    /// Tag (nil for untagged capacity).
    pub uuid: Uuid,
    /// Total size in bytes.
    pub size: u64,
    /// NUMA node.
    pub node: u64,
    /// `VIRTIO_MEM_EXTENT_F_*` flags.
    pub flags: u64,
    /// Read latency, ns.
    pub read_latency_ns: u64,
    /// Write latency, ns.
    pub write_latency_ns: u64,
    /// Read bandwidth, MB/s.
    pub read_bandwidth_mbps: u64,
    /// Write bandwidth, MB/s.
    pub write_bandwidth_mbps: u64,
    /// `SOURCE_*` class.
    pub class: u64,
    /// Marked busy by the guest.
    pub busy: bool,
    /// Extents in sequence order.
    pub extents: Vec<ExtentView>,
    /// Poisoned ranges.
    pub poison: Vec<PoisonView>,
}

/// Parses `id@gpa+len,...` (or `-` for none).
fn triples(s: &str) -> Option<Vec<(u64, u64, u64)>> {
    if s == "-" {
        return Some(Vec::new());
    }
    s.split(',')
        .map(|t| {
            let (id, rest) = t.split_once('@')?;
            let (a, l) = rest.split_once('+')?;
            Some((num(id)?, num(a)?, num(l)?))
        })
        .collect()
}

impl DevView {
    /// Parses a `DEV ...` line (a device) or a `FREE ...` line (unclaimed capacity).
    pub fn parse(line: &str) -> Option<DevView> {
        let name = match line.split_whitespace().next()? {
            "DEV" => field(line, "name")?.to_string(),
            "FREE" => String::new(),
            _ => return None,
        };
        let n = |k| field(line, k).and_then(num);
        Some(DevView {
            name,
            uuid: Uuid::parse_str(field(line, "uuid")?).ok()?,
            size: n("size")?,
            node: n("node")?,
            flags: n("flags")?,
            read_latency_ns: n("rl")?,
            write_latency_ns: n("wl")?,
            read_bandwidth_mbps: n("rb")?,
            write_bandwidth_mbps: n("wb")?,
            class: n("class")?,
            busy: n("busy")? != 0,
            extents: triples(field(line, "extents")?)?
                .into_iter()
                .map(|(id, gpa, len)| ExtentView { id, gpa, len })
                .collect(),
            poison: triples(field(line, "poison")?)?
                .into_iter()
                .map(|(id, offset, len)| PoisonView { id, offset, len })
                .collect(),
        })
    }

    /// True if the device holds extent `id`.
    pub fn has_extent(&self, id: u64) -> bool {
        self.extents.iter().any(|e| e.id == id)
    }
}

/// The guest's view of its dax region, from one [`crate::Command::View`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestView {
    /// Devices in claim order.
    pub devices: Vec<DevView>,
    /// Offer chains the driver collected but has not answered.
    pub pending_chains: u64,
    /// Accepted capacity the region holds unclaimed, in acceptance order.
    pub unclaimed: Vec<DevView>,
    /// The region's seed, the device the next claim fills.
    pub seed: String,
}

impl GuestView {
    /// Builds the view from the console lines a `View` command printed (its `DEV` and `FREE`
    /// lines and the closing `VIEW` line); `None` if the closing line is missing.
    pub fn parse(lines: &[String]) -> Option<GuestView> {
        let (devices, unclaimed) = lines
            .iter()
            .filter_map(|l| DevView::parse(l))
            .partition(|d| !d.name.is_empty());
        let (pending, seed) = lines.iter().rev().find_map(|l| match Report::parse(l) {
            Some(Report::View { pending, .. }) => Some((pending, field(l, "seed").unwrap_or("").to_string())),
            _ => None,
        })?;
        Some(GuestView {
            devices,
            pending_chains: pending,
            unclaimed,
            seed,
        })
    }

    /// The device carrying `tag`.
    pub fn by_tag(&self, tag: &Uuid) -> Option<&DevView> {
        self.devices.iter().find(|d| d.uuid == *tag && !tag.is_nil())
    }

    /// The unclaimed group carrying `tag`.
    pub fn unclaimed_by_tag(&self, tag: &Uuid) -> Option<&DevView> {
        self.unclaimed.iter().find(|d| d.uuid == *tag && !tag.is_nil())
    }

    /// The device, or else the unclaimed group, holding extent `id`.
    pub fn by_extent(&self, id: u64) -> Option<&DevView> {
        self.devices
            .iter()
            .chain(&self.unclaimed)
            .find(|d| d.has_extent(id))
    }
}

/// One accepted extent as the guest's driver holds it (an `EXT` line of
/// [`crate::Command::Extents`]): the record fields SPEC.md T-NEST-1 has a nested VMM copy, and its
/// device's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentDetail {
    /// Name of the device holding it (`dax0.N`); `None` while unclaimed (`dev=-`).
    pub device: Option<String>,
    /// Tag (nil for untagged capacity).
    pub uuid: Uuid,
    /// The device is marked busy in the guest.
    pub busy: bool,
    /// The host asked for the device back and the guest has not released it yet.
    pub release_requested: bool,
    /// Extent id.
    pub id: u64,
    /// Guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// `VIRTIO_MEM_EXTENT_F_*` flags.
    pub flags: u32,
    /// Sequence number within its tag group.
    pub seq: u16,
    /// NUMA node.
    pub node: u16,
    /// `SOURCE_*` class.
    pub class: u8,
    /// Read latency, ns.
    pub read_latency_ns: u32,
    /// Write latency, ns.
    pub write_latency_ns: u32,
    /// Read bandwidth, MB/s.
    pub read_bandwidth_mbps: u32,
    /// Write bandwidth, MB/s.
    pub write_bandwidth_mbps: u32,
    /// Poisoned ranges as (offset in the extent, length).
    pub poison: Vec<(u64, u64)>,
}

impl ExtentDetail {
    /// Parses an `EXT ...` line.
    pub fn parse(line: &str) -> Option<ExtentDetail> {
        if line.split_whitespace().next()? != "EXT" {
            return None;
        }
        let n = |k| field(line, k).and_then(num);
        let n32 = |k| n(k).and_then(|v| u32::try_from(v).ok());
        let n16 = |k| n(k).and_then(|v| u16::try_from(v).ok());
        Some(ExtentDetail {
            device: Some(field(line, "dev")?)
                .filter(|d| *d != "-")
                .map(str::to_string),
            uuid: Uuid::parse_str(field(line, "uuid")?).ok()?,
            busy: n("busy")? != 0,
            release_requested: n("rr")? != 0,
            id: n("id")?,
            gpa: n("gpa")?,
            len: n("len")?,
            flags: n32("flags")?,
            seq: n16("seq")?,
            node: n16("node")?,
            class: n("class").and_then(|v| u8::try_from(v).ok())?,
            read_latency_ns: n32("rl")?,
            write_latency_ns: n32("wl")?,
            read_bandwidth_mbps: n32("rb")?,
            write_bandwidth_mbps: n32("wb")?,
            poison: triples(field(line, "poison")?)?
                .into_iter()
                .map(|(_, offset, len)| (offset, len))
                .collect(),
        })
    }

    /// Parses the console lines of one [`crate::Command::Extents`]; `None` without the closing
    /// `EXTENTS` line or if its count disagrees with the `EXT` lines.
    pub fn parse_all(lines: &[String]) -> Option<Vec<ExtentDetail>> {
        let all: Vec<ExtentDetail> = lines.iter().filter_map(|l| ExtentDetail::parse(l)).collect();
        let count = lines.iter().rev().find_map(|l| match Report::parse(l) {
            Some(Report::Extents { count }) => Some(count),
            _ => None,
        })?;
        (u64::try_from(all.len()).ok()? == count).then_some(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::protocol::CMD_EXTENTS;

    #[test]
    fn parse_driver_reports() {
        assert_eq!(
            Report::parse("POLLED events=3"),
            Some(Report::Polled { events: 3 })
        );
        assert_eq!(
            Report::parse("VIEW devices=2 pending=0"),
            Some(Report::View {
                devices: 2,
                pending: 0
            })
        );
        assert_eq!(
            Report::parse("RELEASED count=2"),
            Some(Report::Released { count: 2 })
        );
        assert!(matches!(
            Report::parse("RELEASE error=unknown"),
            Some(Report::ReleaseFailed(_))
        ));
        assert_eq!(Report::parse("BUSY ok=1"), Some(Report::Busy { ok: true }));
        assert_eq!(Report::parse("EVT dax0.0: created"), None);
        let line = "DEV name=dax0.1 uuid=00000000-0000-0000-0000-000000000005 size=0x400000 node=1 \
                    flags=0x3 rl=10 wl=20 rb=30 wb=40 class=4 busy=0 \
                    extents=3@0x100000000+0x200000,4@0x100200000+0x200000 poison=3@0x1000+0x1000";
        let d = DevView::parse(line).unwrap();
        assert_eq!(d.uuid, Uuid::from_u128(5));
        assert_eq!(d.extents.len(), 2);
        assert_eq!(
            d.extents[1],
            ExtentView {
                id: 4,
                gpa: 0x1_0020_0000,
                len: 0x20_0000
            }
        );
        assert_eq!(
            d.poison,
            vec![PoisonView {
                id: 3,
                offset: 0x1000,
                len: 0x1000
            }]
        );
        let free = "FREE region=region0 uuid=00000000-0000-0000-0000-000000000006 size=0x200000 node=1 \
                    flags=0x0 rl=0 wl=0 rb=0 wb=0 class=1 busy=0 extents=9@0x100400000+0x200000 poison=-";
        let lines = vec![
            line.to_string(),
            free.to_string(),
            "VIEW devices=1 pending=2 unclaimed=1 seed=dax0.2".to_string(),
        ];
        let v = GuestView::parse(&lines).unwrap();
        assert_eq!((v.pending_chains, v.seed.as_str()), (2, "dax0.2"));
        assert_eq!(v.by_tag(&Uuid::from_u128(5)).unwrap().name, "dax0.1");
        assert!(v.by_extent(4).is_some());
        assert_eq!(v.unclaimed.len(), 1);
        let u = v.unclaimed_by_tag(&Uuid::from_u128(6)).unwrap();
        assert_eq!((u.name.as_str(), u.extents[0].id), ("", 9));
        assert!(v.by_tag(&Uuid::from_u128(6)).is_none(), "unclaimed is no device");
        assert_eq!(v.by_extent(9), Some(u));
        assert!(GuestView::parse(&lines[..2]).is_none());
    }

    #[test]
    fn parse_extent_details() {
        let line = "EXT dev=dax0.1 uuid=00000000-0000-0000-0000-000000000005 busy=1 rr=0 id=7 \
                    gpa=0x4000000000 len=0x200000 flags=0x1 seq=1 node=2 class=1 rl=250 wl=300 \
                    rb=25000 wb=12000 poison=7@0x1000+0x1000";
        let e = ExtentDetail::parse(line).unwrap();
        assert_eq!(
            (e.device.as_deref(), e.id, e.gpa, e.seq, e.class),
            (Some("dax0.1"), 7, 0x40_0000_0000, 1, 1)
        );
        let free = ExtentDetail::parse(&line.replace("dev=dax0.1", "dev=-")).unwrap();
        assert_eq!(free.device, None, "unclaimed");
        assert!(e.busy && !e.release_requested);
        assert_eq!((e.read_latency_ns, e.write_bandwidth_mbps), (250, 12_000));
        assert_eq!(e.poison, vec![(0x1000, 0x1000)]);
        let lines = vec![line.to_string(), "EXTENTS count=1".to_string()];
        assert_eq!(ExtentDetail::parse_all(&lines).unwrap(), vec![e]);
        assert!(ExtentDetail::parse_all(&lines[..1]).is_none());
        let wrong = vec![line.to_string(), "EXTENTS count=2".to_string()];
        assert!(ExtentDetail::parse_all(&wrong).is_none());
        assert_eq!(Command::Extents.encode(), (CMD_EXTENTS, Vec::new()));
    }
}
