//! The tagged virtio-mem driver's own view (SPEC.md T-LOOKUP-4) as dax devices.
//!
//! A guest without the Linux sysfs layout (the bare-metal test guest), or a nested VMM reading
//! what its guest's driver accepted, has the driver's records rather than sysfs files. This
//! module turns those records into the same [`DaxDevice`] a Linux guest's sysfs gives
//! ([`crate::SysfsSource`] over the T-LOOKUP-5/6 layout), so one [`crate::lookup`] serves both.
//! Accepted capacity the guest has not claimed yet becomes [`Unclaimed`] capacity of the
//! device's region ([`DriverDevice::to_unclaimed`]), as a Linux guest's sysfs lists it.

use uuid::Uuid;

use crate::capacity::Unclaimed;
use crate::error::LookupError;
use crate::model::{DaxDevice, Extent, Flags, Perf, Poison, SourceClass};

/// `align` of every device a guest driver registers (SPEC.md T-LOOKUP-5: 2 MiB).
pub const DAX_ALIGN: u64 = tagmem_wire::VIRTIO_MEM_EXTENT_ALIGN;

/// One accepted extent as the driver holds it: the fields of its wire record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriverExtent {
    /// Extent id assigned by the device.
    pub id: u64,
    /// Guest-physical start address.
    pub start: u64,
    /// Length, bytes.
    pub length: u64,
    /// `VIRTIO_MEM_EXTENT_F_*` wire flags.
    pub flags: u32,
    /// Sequence number within its tag group.
    pub seq: u16,
    /// `node_id`: the node the capacity belongs to.
    pub node: u16,
    /// `source` wire class (`SOURCE_*`).
    pub source: u8,
    /// Performance fields; `None` when the record reports none (all zero).
    pub perf: Option<Perf>,
    /// Poisoned ranges reported so far.
    pub poison: Vec<Poison>,
}

/// One device of the driver's view: a tag group, or one untagged extent (claimed into a dax
/// device, or held unclaimed by the region).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverDevice {
    /// Device name (`dax0.N`); unused for unclaimed capacity.
    pub name: String,
    /// The tag; nil for an untagged extent.
    pub uuid: Uuid,
    /// The accepted extents, in any order ([`DriverDevice::to_dax`] orders them).
    pub extents: Vec<DriverExtent>,
}

impl DriverDevice {
    /// The extents in device order (SPEC.md T-LOOKUP-3): by `seq`, then by extent id.
    pub fn ordered_extents(&self) -> Vec<&DriverExtent> {
        let mut v: Vec<&DriverExtent> = self.extents.iter().collect();
        v.sort_by_key(|e| (e.seq, e.id));
        v
    }

    /// The device as a Linux guest's sysfs shows it (SPEC.md T-LOOKUP-3/5/6): mapping i covers
    /// extent i in device order, `align` is 2 MiB, `target_node`, performance and source class
    /// are those of the first extent, `flags` the union of the extents' flags, and `path` is
    /// `/dev/<name>`. `numa_node` is what the guest's dax bus would compute for the target node
    /// (the nearest online node); the driver does not know it, so the caller says.
    pub fn to_dax(&self, numa_node: Option<i32>) -> Result<DaxDevice, LookupError> {
        let ordered = self.ordered_extents();
        let first = ordered.first().ok_or_else(|| LookupError::InvalidDevice {
            chardev: self.name.clone(),
            reason: "the driver lists no extent for it".to_owned(),
        })?;
        let mut dev = DaxDevice::from_ranges(
            self.name.clone(),
            self.uuid,
            ordered.iter().map(|e| (e.start, e.length)),
        )?;
        dev.align = DAX_ALIGN;
        dev.target_node = Some(i32::from(first.node));
        dev.numa_node = numa_node;
        dev.perf = first.perf;
        dev.source_class = SourceClass::from_wire(first.source);
        dev.flags = Some(
            ordered
                .iter()
                .map(|e| Flags::from_bits(e.flags))
                .fold(Flags::default(), Flags::union),
        );
        for (extent, from) in dev.extents.iter_mut().zip(&ordered) {
            extent.poison.clone_from(&from.poison);
        }
        Ok(dev)
    }

    /// The group as unclaimed capacity of dax region `region` (e.g. `region0`), laid out as a
    /// claim would lay it out ([`DriverDevice::to_dax`]): extents in device order, node,
    /// performance and source class of the first extent, union of the flags.
    pub fn to_unclaimed(&self, region: &str) -> Result<Unclaimed, LookupError> {
        let dev = self.to_dax(None)?;
        let extents = dev
            .extents
            .into_iter()
            .map(|e| Extent {
                start: e.start,
                length: e.length,
                poison: e.poison,
                offset: None,
            })
            .collect();
        let mut u = Unclaimed::new(region, self.uuid, extents)?;
        u.target_node = dev.target_node;
        u.perf = dev.perf;
        u.source_class = dev.source_class;
        u.flags = dev.flags;
        Ok(u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mapping, PAGE_SIZE};

    fn ext(id: u64, seq: u16, start: u64, length: u64) -> DriverExtent {
        DriverExtent {
            id,
            start,
            length,
            flags: Flags::SHARABLE_BIT,
            seq,
            node: 2,
            source: 1,
            perf: Perf::from_record(250, 300, 25_000, 12_000),
            poison: Vec::new(),
        }
    }

    #[test]
    fn extents_are_laid_out_in_seq_order() {
        let tag = Uuid::from_u128(0xa);
        let mut second = ext(3, 1, 0x1_4000_0000, 2 * DAX_ALIGN);
        second.poison.push(Poison {
            offset: 0x1000,
            length: 0x1000,
        });
        second.flags |= Flags::READONLY_BIT;
        let d = DriverDevice {
            name: "dax0.1".into(),
            uuid: tag,
            extents: vec![second, ext(4, 0, 0x1_0000_0000, DAX_ALIGN)],
        }
        .to_dax(Some(0))
        .unwrap();
        assert_eq!(d.chardev, "dax0.1");
        assert_eq!(d.path.as_deref(), Some("/dev/dax0.1"));
        assert_eq!((d.size, d.align), (3 * DAX_ALIGN, DAX_ALIGN));
        assert_eq!((d.target_node, d.numa_node), (Some(2), Some(0)));
        assert_eq!(d.source_class, Some(SourceClass::CxlDc));
        assert_eq!(d.flags, Some(Flags::from_bits(3)));
        assert_eq!(d.perf.unwrap().read_latency_ns, 250);
        assert_eq!(
            d.mappings[1],
            Mapping::new(
                DAX_ALIGN / PAGE_SIZE,
                0x1_4000_0000,
                0x1_4000_0000 + 2 * DAX_ALIGN - 1
            )
            .unwrap()
        );
        assert_eq!(d.extents[0], Extent::at(0x1_0000_0000, DAX_ALIGN));
        assert_eq!(d.extents[1].poison.len(), 1);
    }

    #[test]
    fn unclaimed_groups_are_laid_out_as_a_claim_would() {
        let tag = Uuid::from_u128(0xa);
        let d = DriverDevice {
            name: String::new(),
            uuid: tag,
            extents: vec![
                ext(3, 1, 0x1_4000_0000, 2 * DAX_ALIGN),
                ext(4, 0, 0x1_0000_0000, DAX_ALIGN),
            ],
        };
        let u = d.to_unclaimed("region0").unwrap();
        assert_eq!(
            (u.region.as_str(), u.uuid, u.size),
            ("region0", tag, 3 * DAX_ALIGN)
        );
        assert_eq!(u.extents[0], Extent::at(0x1_0000_0000, DAX_ALIGN));
        assert_eq!(u.target_node, Some(2));
        assert_eq!(u.perf.unwrap().access_class, 1);
        assert_eq!(u.source_class, Some(SourceClass::CxlDc));
        assert_eq!(u.flags, Some(Flags::from_bits(Flags::SHARABLE_BIT)));
    }

    #[test]
    fn a_device_without_extents_is_named() {
        let e = DriverDevice {
            name: "dax0.3".into(),
            uuid: Uuid::nil(),
            extents: Vec::new(),
        }
        .to_dax(None)
        .unwrap_err();
        assert_eq!(e.to_string(), "device dax0.3: the driver lists no extent for it");
    }
}
