//! What a lookup finds: claimed dax devices and capacity a region holds unclaimed.
//!
//! With CXL Dynamic Capacity (DCD v11) accepted extents are not devices yet: a dynamic-capacity
//! dax region lists them (`/sys/bus/cxl/devices/dax_regionX/extentX.Y/{offset,length,uuid}`) and
//! starts with a size-0 seed device; writing a tag to the seed's `uuid`
//! (`daxctl create-device -r regionX --uuid <tag>`) claims every extent with that tag into it, and
//! writing `0` claims one untagged extent. A guest of the tagged virtio-mem driver behaves the same
//! (SPEC.md T.8). [`Unclaimed`] is one tag group (or one untagged extent) that no device holds yet.

use uuid::Uuid;

use crate::error::LookupError;
use crate::model::{DaxDevice, Extent, Flags, Perf, SourceClass};

/// Capacity a dynamic-capacity dax region holds that no dax device has claimed: every unclaimed
/// extent of one tag, or one untagged extent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unclaimed {
    /// The dax region, as daxctl names it (`region2` for dax region id 2).
    pub region: String,
    /// The tag; nil for an untagged extent.
    pub uuid: Uuid,
    /// Sum of the extents' lengths, bytes: the size a claim gives the device.
    pub size: u64,
    /// NUMA node a claimed device would report as `target_node`, when known.
    pub target_node: Option<i32>,
    /// The extents, in the order a claim lays them out.
    pub extents: Vec<Extent>,
    /// Performance the capacity reports (CPU access, `access1`), when reported.
    pub perf: Option<Perf>,
    /// Source class, when known.
    pub source_class: Option<SourceClass>,
    /// Sharable/read-only flags, when known.
    pub flags: Option<Flags>,
}

impl Unclaimed {
    /// Unclaimed capacity of `region` made of `extents` (in claim order); the size is their sum.
    pub fn new(
        region: impl Into<String>,
        uuid: Uuid,
        extents: Vec<Extent>,
    ) -> Result<Unclaimed, LookupError> {
        let region = region.into();
        let size = extents
            .iter()
            .try_fold(0u64, |s, e| s.checked_add(e.length))
            .ok_or_else(|| LookupError::InvalidDevice {
                chardev: format!("{region} (unclaimed {uuid})"),
                reason: "the extents' total length overflows".to_owned(),
            })?;
        Ok(Unclaimed {
            region,
            uuid,
            size,
            target_node: None,
            extents,
            perf: None,
            source_class: None,
            flags: None,
        })
    }

    /// True if `tag` is non-nil and is this capacity's tag.
    pub fn has_tag(&self, tag: &Uuid) -> bool {
        !tag.is_nil() && self.uuid == *tag
    }

    /// The command that claims this capacity on Linux (DCD v11 `daxctl`): the tag, or `0` for an
    /// untagged extent.
    pub fn claim_command(&self) -> String {
        let what = if self.uuid.is_nil() {
            "0".to_owned()
        } else {
            self.uuid.hyphenated().to_string()
        };
        format!("daxctl create-device -r {} --uuid {what}", self.region)
    }
}

/// The answer of a lookup or a listing: dax devices, then unclaimed capacity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Claimed dax devices (and, in a listing, seeds and other dax devices).
    pub devices: Vec<DaxDevice>,
    /// Capacity no device has claimed yet.
    pub unclaimed: Vec<Unclaimed>,
}

impl Found {
    /// True if nothing was found.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.unclaimed.is_empty()
    }

    /// Number of entries (devices plus unclaimed groups).
    pub fn len(&self) -> usize {
        self.devices.len() + self.unclaimed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_commands_follow_daxctl() {
        let tag = Uuid::from_u128(0x6f1c2a9e_0d3b_4c55_9a7e_3b1f00c0ffee);
        let u = Unclaimed::new("region2", tag, vec![Extent::at(0, 4096), Extent::at(8192, 4096)]).unwrap();
        assert_eq!(u.size, 8192);
        assert_eq!(
            u.claim_command(),
            "daxctl create-device -r region2 --uuid 6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee"
        );
        assert!(u.has_tag(&tag) && !u.has_tag(&Uuid::nil()));
        let n = Unclaimed::new("region0", Uuid::nil(), vec![Extent::at(0, 4096)]).unwrap();
        assert_eq!(n.claim_command(), "daxctl create-device -r region0 --uuid 0");
        assert!(!n.has_tag(&Uuid::nil()));
    }

    #[test]
    fn overflowing_total_is_refused() {
        let e = Unclaimed::new(
            "region1",
            Uuid::nil(),
            vec![Extent::at(0, u64::MAX), Extent::at(0, 1)],
        )
        .unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
    }

    #[test]
    fn found_counts_both_kinds() {
        let mut f = Found::default();
        assert!(f.is_empty());
        f.unclaimed
            .push(Unclaimed::new("region0", Uuid::nil(), vec![Extent::at(0, 4096)]).unwrap());
        assert_eq!((f.len(), f.is_empty()), (1, false));
    }
}
