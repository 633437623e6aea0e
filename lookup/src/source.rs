//! Where devices come from, and the one lookup rule every source shares.

use uuid::Uuid;

use crate::error::LookupError;
use crate::model::DaxDevice;

/// Something that can list the dax devices it sees: a sysfs tree, the guest driver's registry.
pub trait CapacitySource {
    /// Every dax device, in a stable order (by name for sysfs).
    fn devices(&self) -> Result<Vec<DaxDevice>, LookupError>;
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

/// The devices of `source` that carry `tag`.
///
/// Tagged capacity forms one device per tag, so the answer has at most one device when the
/// source is consistent; all matches are returned so that an inconsistency stays visible. The
/// nil tag matches no device (untagged capacity is found by listing), without reading the
/// source.
pub fn lookup<S: CapacitySource + ?Sized>(source: &S, tag: &Uuid) -> Result<Vec<DaxDevice>, LookupError> {
    if tag.is_nil() {
        return Ok(Vec::new());
    }
    Ok(source.devices()?.into_iter().filter(|d| d.has_tag(tag)).collect())
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
        assert_eq!(found[0].chardev, "dax0.1");
        assert!(lookup(&list, &Uuid::nil()).unwrap().is_empty());
        assert!(lookup(&list[..], &Uuid::from_u128(9)).unwrap().is_empty());
    }

    #[test]
    fn lookup_propagates_source_errors_but_not_for_nil() {
        assert!(lookup(&Failing, &Uuid::from_u128(1)).is_err());
        assert!(lookup(&Failing, &Uuid::nil()).unwrap().is_empty());
    }
}
