//! [`TaggedMemoryControl`]: the API's backend on a running [`Vmm`]. It opens and registers the
//! backings of a chain (closed again once the device reports them unused), offers it, names its
//! extents, and keeps a tag unique per VM.

use super::{AddReply, AddedExtent, ApiBackend, ApiError, ExtentRow, PingInfo};
use crate::config::{
    group_chains, ConfigError, OptionError, Resolver, TaggedMemoryConfig, GENERATED_ID_PREFIX,
};
use crate::hotplug::BaseMemory;
use crate::runtime::{BackingLifetime, Vmm, VmmError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tagmem_device::{ControlError, ExtentInfo, ExtentState, SourceId, Target};
use tagmem_host::PreparedChain;
use uuid::Uuid;

/// An extent of one of the VM's tagged devices that carries a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagHolder {
    /// Index of the tagged device.
    pub device: usize,
    /// The extent's id on that device.
    pub extent: u64,
    /// Its tag.
    pub tag: Uuid,
    /// Its state (any state: offered or accepted).
    pub state: ExtentState,
}

impl TagHolder {
    /// The tagged extents of every device's extent table, device by device.
    pub fn of_devices(devices: &[Vec<ExtentInfo>]) -> Vec<TagHolder> {
        devices
            .iter()
            .enumerate()
            .flat_map(|(device, extents)| {
                extents
                    .iter()
                    .filter(|e| !e.tag.is_nil())
                    .map(move |e| TagHolder {
                        device,
                        extent: e.id,
                        tag: e.tag,
                        state: e.state,
                    })
            })
            .collect()
    }
}

/// The VM's tag rule: a tag names one group per VM, so no extent of a new chain may carry a tag
/// that an extent of any tagged device of the VM carries, offered or accepted. `tags` are the
/// chain's tags by position, `held` the tagged extents of every device ([`TagHolder::of_devices`]).
/// The error names the position, the tag and the extent that holds it.
pub fn check_tags_free(tags: impl IntoIterator<Item = Uuid>, held: &[TagHolder]) -> Result<(), ApiError> {
    for (i, tag) in tags.into_iter().enumerate() {
        if tag.is_nil() {
            continue;
        }
        if let Some(h) = held.iter().find(|h| h.tag == tag) {
            let state = serde_json::to_value(h.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            return Err(ApiError::Conflict(format!(
                "extents[{i}]: tag={tag}: already present on this VM (extent {} on tagged device {} \
                 is {state}); a tag names one group per VM, release it first",
                h.extent, h.device
            )));
        }
    }
    Ok(())
}

/// Name and backing of an extent the control offered.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Named {
    name: String,
    path: String,
}

#[derive(Debug, Default)]
struct ControlState {
    names: BTreeMap<u64, Named>,
    next_name: u64,
}

/// Adds and releases tagged capacity on a running [`Vmm`] as the API and the command line ask:
/// resolves, opens and registers backings (closed again once their extents are gone), offers the
/// chains, and remembers each extent's name.
pub struct TaggedMemoryControl {
    vmm: Arc<Vmm>,
    resolver: Resolver,
    state: Mutex<ControlState>,
}

impl std::fmt::Debug for TaggedMemoryControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaggedMemoryControl")
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

impl TaggedMemoryControl {
    /// Controls `vmm`, resolving tags through `resolver`.
    pub fn new(vmm: Arc<Vmm>, resolver: Resolver) -> Self {
        TaggedMemoryControl {
            vmm,
            resolver,
            state: Mutex::new(ControlState::default()),
        }
    }

    /// The VMM.
    pub fn vmm(&self) -> &Arc<Vmm> {
        &self.vmm
    }

    fn state(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The name of extent `extent_id`, if the control offered it.
    pub fn name_of(&self, extent_id: u64) -> Option<String> {
        self.state().names.get(&extent_id).map(|n| n.name.clone())
    }

    /// The extent tables of the VM's tagged devices (the reference VMM has one).
    fn tagged_devices(&self) -> Vec<Vec<ExtentInfo>> {
        vec![self.vmm.extents()]
    }

    /// The tagged extents of all of the VM's tagged devices.
    fn tag_holders(&self) -> Vec<TagHolder> {
        TagHolder::of_devices(&self.tagged_devices())
    }

    /// Registers the backings of `chain`, offers it, and names its extents. A tag already
    /// present on the VM is refused ([`check_tags_free`]) before anything is registered.
    pub fn offer(&self, chain: PreparedChain) -> Result<AddReply, ApiError> {
        let mut state = self.state();
        let devices = self.tagged_devices();
        // Under the state lock: two offers of one tag cannot both pass.
        check_tags_free(
            chain.plans().map(|plan| plan.tag),
            &TagHolder::of_devices(&devices),
        )?;
        let live: Vec<u64> = devices.iter().flatten().map(|e| e.id).collect();
        state.names.retain(|id, _| live.contains(id));
        for plan in chain.plans() {
            if let Some(id) = &plan.id {
                if state.names.values().any(|n| &n.name == id) {
                    return Err(ApiError::BadRequest(
                        ConfigError::DuplicateId { id: id.clone() }.to_string(),
                    ));
                }
            }
        }
        let mut registered: Vec<SourceId> = Vec::new();
        let mut specs = Vec::new();
        let mut named = Vec::new();
        let unregister = |ids: &[SourceId]| {
            for id in ids {
                let _ = self.vmm.unregister_backing(*id);
            }
        };
        for (plan, backing) in chain.into_extents() {
            let id = match self.vmm.add_backing(backing, BackingLifetime::PerExtent) {
                Ok(id) => id,
                Err(source) => {
                    unregister(&registered);
                    return Err(ApiError::Vmm {
                        what: "registering the backing",
                        source,
                    });
                }
            };
            registered.push(id);
            specs.push(plan.spec(id));
            named.push((plan.id.clone(), plan.backing_name(), plan.length));
        }
        let receipt = match self.vmm.offer(&specs) {
            Ok(r) => r,
            Err(e) => {
                unregister(&registered);
                return Err(e.into());
            }
        };
        let mut extents = Vec::new();
        for ((extent_id, gpa), (id, path, size)) in receipt.extents.into_iter().zip(named) {
            let name = id.unwrap_or_else(|| {
                let n = format!("{GENERATED_ID_PREFIX}{}", state.next_name);
                state.next_name += 1;
                n
            });
            state.names.insert(
                extent_id,
                Named {
                    name: name.clone(),
                    path,
                },
            );
            extents.push(AddedExtent {
                id: name,
                extent_id,
                gpa,
                size,
            });
        }
        Ok(AddReply {
            chain_id: receipt.chain_id,
            extents,
        })
    }
}

impl ApiBackend for TaggedMemoryControl {
    fn ping(&self) -> PingInfo {
        PingInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            device_ready: self.vmm.device_ready(),
        }
    }

    fn add_tagged_memory(&self, extents: &[TaggedMemoryConfig]) -> Result<AddReply, ApiError> {
        group_chains(extents).map_err(|e| ApiError::Extent(OptionError::new("extents", e.error)))?;
        // Before any backing is opened; checked again under the lock when offering.
        check_tags_free(extents.iter().map(TaggedMemoryConfig::tag), &self.tag_holders())?;
        let chain = PreparedChain::prepare(&self.resolver, extents, "extents")?;
        self.offer(chain)
    }

    fn release_tagged_memory(&self, target: Target) -> Result<(), ApiError> {
        let field = match target {
            Target::Tag(_) => "tag",
            Target::Extent(_) => "extent_id",
        };
        self.vmm
            .request_release(target)
            .map(|_| ())
            .map_err(|source| match source {
                ControlError::NotReady => ApiError::from(source),
                source => ApiError::Device {
                    field: Some(field),
                    source,
                },
            })
    }

    fn resize(&self, desired_ram: u64) -> Result<(), ApiError> {
        self.vmm.resize_ram(desired_ram).map_err(|e| match e {
            VmmError::Resize(m) => ApiError::BadRequest(format!("desired_ram: {m}")),
            source => ApiError::Vmm {
                what: "resizing the base region",
                source,
            },
        })
    }

    fn memory(&self) -> Result<BaseMemory, ApiError> {
        Ok(self.vmm.base_memory())
    }

    fn tagged_memory(&self) -> Vec<ExtentRow> {
        let state = self.state();
        self.vmm
            .extents()
            .into_iter()
            .map(|info| {
                let (name, path) = match state.names.get(&info.id) {
                    Some(n) => (n.name.clone(), n.path.clone()),
                    None => (String::new(), String::new()),
                };
                ExtentRow { name, path, info }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";

    #[test]
    fn b8_a_tag_present_on_any_tagged_device_of_the_vm_is_refused() {
        let tag: Uuid = TAG.parse().unwrap();
        let other = Uuid::from_u128(7);
        let holder = |device, extent, tag, state| TagHolder {
            device,
            extent,
            tag,
            state,
        };
        // Two tagged devices: the tag is pending on the second one.
        let held = [
            holder(0, 1, other, ExtentState::Accepted),
            holder(1, 4, tag, ExtentState::Pending),
        ];
        let e = check_tags_free([Uuid::nil(), tag], &held).unwrap_err();
        assert_eq!(e.status(), 409);
        assert_eq!(
            e.to_string(),
            format!(
                "extents[1]: tag={tag}: already present on this VM (extent 4 on tagged device 1 \
                 is pending); a tag names one group per VM, release it first"
            )
        );
        let e = check_tags_free([other], &held).unwrap_err();
        assert!(
            e.to_string().contains("extent 1 on tagged device 0 is accepted"),
            "{e}"
        );
        // Untagged capacity and new tags pass; so does everything on an empty VM.
        check_tags_free([Uuid::nil(), Uuid::from_u128(8)], &held).unwrap();
        check_tags_free([tag], &[]).unwrap();
    }
}
