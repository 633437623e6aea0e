//! Where devices come from, and the one lookup rule every source shares.

use uuid::Uuid;

use crate::capacity::{Found, Unclaimed};
use crate::error::LookupError;
use crate::model::DaxDevice;

/// Something that can list the dax devices it sees: a sysfs tree, the guest driver's registry.
pub trait CapacitySource {
    /// Every dax device, in a stable order (by name for sysfs).
    fn devices(&self) -> Result<Vec<DaxDevice>, LookupError>;

    /// Capacity dynamic-capacity regions hold that no device has claimed, one entry per tag group
    /// and per untagged extent; none by default (sources without dynamic capacity).
    fn unclaimed(&self) -> Result<Vec<Unclaimed>, LookupError> {
        Ok(Vec::new())
    }
}

/// A fixed list of devices, e.g. built from the reference driver's view with
/// [`DaxDevice::from_ranges`].
impl CapacitySource for [DaxDevice] {
    fn devices(&self) -> Result<Vec<DaxDevice>, LookupError> {
        Ok(self.to_vec())
    }
}

/// A fixed list of devices (see the slice implementation).
impl CapacitySource for Vec<DaxDevice> {
    fn devices(&self) -> Result<Vec<DaxDevice>, LookupError> {
        Ok(self.clone())
    }
}

/// A fixed answer (e.g. built from the reference driver's view) is a source too.
impl CapacitySource for Found {
    fn devices(&self) -> Result<Vec<DaxDevice>, LookupError> {
        Ok(self.devices.clone())
    }

    fn unclaimed(&self) -> Result<Vec<Unclaimed>, LookupError> {
        Ok(self.unclaimed.clone())
    }
}

/// The capacity of `source` that carries `tag`: the dax device that claimed it, or the tag group
/// a region holds unclaimed (SPEC.md T.8; a claim turns the second into the first).
///
/// Tagged capacity forms one device or one unclaimed group per tag, so the answer has at most one
/// entry when the source is consistent; all matches are returned so that an inconsistency stays
/// visible. The nil tag matches nothing (untagged capacity is found by listing), without reading
/// the source.
pub fn lookup<S: CapacitySource + ?Sized>(source: &S, tag: &Uuid) -> Result<Found, LookupError> {
    if tag.is_nil() {
        return Ok(Found::default());
    }
    Ok(Found {
        devices: source.devices()?.into_iter().filter(|d| d.has_tag(tag)).collect(),
        unclaimed: source
            .unclaimed()?
            .into_iter()
            .filter(|u| u.has_tag(tag))
            .collect(),
    })
}

/// Everything `source` holds: every dax device and every unclaimed group.
pub fn list<S: CapacitySource + ?Sized>(source: &S) -> Result<Found, LookupError> {
    Ok(Found {
        devices: source.devices()?,
        unclaimed: source.unclaimed()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing;

    impl CapacitySource for Failing {
        fn devices(&self) -> Result<Vec<DaxDevice>, LookupError> {
            Err(LookupError::Missing {
                path: "sys/bus/dax/devices".into(),
            })
        }
    }

    #[test]
    fn lookup_on_a_list() {
        let tag = Uuid::from_u128(7);
        let list = vec![
            DaxDevice::new("dax0.0", Uuid::nil()),
            DaxDevice::new("dax0.1", tag),
            DaxDevice::new("dax0.2", Uuid::from_u128(8)),
        ];
        let found = lookup(&list, &tag).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found.devices[0].chardev, "dax0.1");
        assert!(lookup(&list, &Uuid::nil()).unwrap().is_empty());
        assert!(lookup(&list[..], &Uuid::from_u128(9)).unwrap().is_empty());
    }

    #[test]
    fn lookup_finds_unclaimed_groups_by_tag() {
        let tag = Uuid::from_u128(7);
        let group = |t| Unclaimed::new("region0", t, vec![crate::model::Extent::at(0, 4096)]).unwrap();
        let source = Found {
            devices: vec![DaxDevice::new("dax0.0", Uuid::nil())],
            unclaimed: vec![group(tag), group(Uuid::nil())],
        };
        let found = lookup(&source, &tag).unwrap();
        assert_eq!((found.devices.len(), found.unclaimed.len()), (0, 1));
        assert_eq!(found.unclaimed[0].uuid, tag);
        assert!(lookup(&source, &Uuid::nil()).unwrap().is_empty());
        assert_eq!(list(&source).unwrap(), source);
    }

    #[test]
    fn lookup_propagates_source_errors_but_not_for_nil() {
        assert!(lookup(&Failing, &Uuid::from_u128(1)).is_err());
        assert!(lookup(&Failing, &Uuid::nil()).unwrap().is_empty());
    }
}
