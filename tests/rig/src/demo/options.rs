//! The extents the demo hot-adds: a built-in set on memfd, or `--tagged-memory` values.

use tagmem_vmm::api::PreparedChain;
use tagmem_vmm::config::{self, OptionError, Resolver, TaggedMemoryConfig};
use uuid::Uuid;

/// Tag of the built-in group with HMAT-like metadata ("fast memory").
pub const HBM_TAG: Uuid = Uuid::from_u128(0x6f1c2a9e_0d3b_4c55_9a7e_3b1f00c0ffee);
/// Tag of the built-in sharable group.
pub const SHARED_TAG: Uuid = Uuid::from_u128(0x0b7e8c1d_2f3a_4b5c_8d9e_0f1a2b3c4d5e);
/// Tag of the built-in read-only extent.
pub const READONLY_TAG: Uuid = Uuid::from_u128(0x3c9d5e7f_8a1b_4c2d_9e0f_a1b2c3d4e5f6);

/// The extents the demo uses and which groups it updates, poisons and releases.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub(super) configs: Vec<TaggedMemoryConfig>,
    pub(super) chains: Vec<Vec<usize>>,
    pub(super) metadata_target: Option<Uuid>,
    pub(super) release_target: Option<Uuid>,
}

fn builtin_options() -> Vec<String> {
    let hmat = "read_latency=80,write_latency=95,read_bandwidth=409600,write_bandwidth=307200";
    vec![
        "path=memfd,size=2M,id=scratch".to_string(),
        format!("tag={HBM_TAG},path=memfd,size=4M,{hmat},node=1,id=hbm0"),
        format!("tag={HBM_TAG},path=memfd,size=2M,{hmat},node=1,id=hbm1"),
        format!(
            "tag={SHARED_TAG},path=memfd,size=2M,shared=on,read_latency=250,write_latency=300,node=2,id=shm0"
        ),
        format!(
            "tag={SHARED_TAG},path=memfd,size=2M,shared=on,read_latency=250,write_latency=300,node=2,id=shm1"
        ),
        format!("tag={READONLY_TAG},path=memfd,size=2M,readonly=on,id=ro0"),
    ]
}

impl DemoOptions {
    /// The built-in set: an untagged extent, a two-extent group with HMAT-like metadata, a
    /// sharable two-extent group and a read-only extent, all on memfd.
    pub fn builtin() -> Self {
        let (configs, chains) =
            config::parse_options(&builtin_options()).expect("the built-in demo options are valid");
        DemoOptions {
            configs,
            chains,
            metadata_target: Some(HBM_TAG),
            release_target: Some(SHARED_TAG),
        }
    }

    /// Extents from `--tagged-memory` values: the first tag group gets the metadata update, the
    /// last one is released.
    pub fn from_options(values: &[String]) -> Result<Self, OptionError> {
        let (configs, chains) = config::parse_options(values)?;
        let tags: Vec<Uuid> = chains
            .iter()
            .map(|c| configs[c[0]].tag())
            .filter(|t| !t.is_nil())
            .collect();
        Ok(DemoOptions {
            metadata_target: tags.first().copied(),
            release_target: tags.last().copied(),
            configs,
            chains,
        })
    }

    /// The option strings, one per extent, in the `--tagged-memory` syntax.
    pub fn option_strings(&self) -> Vec<String> {
        self.configs.iter().map(|c| c.to_option_string()).collect()
    }

    /// Plans every chain and opens its backings (before the VM starts).
    pub fn prepare(&self, resolver: &Resolver) -> Result<Vec<PreparedChain>, OptionError> {
        tagmem_host::prepare_chains(resolver, &self.configs, &self.chains, config::OPTION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_options_form_four_groups() {
        let o = DemoOptions::builtin();
        assert_eq!(o.chains, vec![vec![0], vec![1, 2], vec![3, 4], vec![5]]);
        assert!(o.configs[3].shared && o.configs[5].readonly);
        let p = o.prepare(&Resolver::new("/nonexistent")).unwrap();
        assert_eq!(
            p.iter().map(PreparedChain::len).collect::<Vec<_>>(),
            vec![1, 2, 2, 1]
        );
    }

    #[test]
    fn user_options_pick_first_and_last_tag_groups() {
        let a = "6f1c2a9e-0d3b-4c55-9a7e-3b1f00c0ffee";
        let b = "0b7e8c1d-2f3a-4b5c-8d9e-0f1a2b3c4d5e";
        let o = DemoOptions::from_options(&[
            "size=2M".into(),
            format!("tag={a},path=memfd,size=2M"),
            format!("tag={b},path=memfd,size=2M"),
        ])
        .unwrap();
        assert_eq!(o.metadata_target, Some(a.parse().unwrap()));
        assert_eq!(o.release_target, Some(b.parse().unwrap()));
        assert!(DemoOptions::from_options(&["size=3M".into()]).is_err());
    }
}
