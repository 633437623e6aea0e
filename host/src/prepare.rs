//! Chains whose backings are open: what a VMM registers and offers, once per chain.

use crate::backing::Backing;
use crate::chains::sequence_numbers;
use crate::error::OptionError;
use crate::resolve::{ExtentPlan, Resolver};
use crate::tagged::{TaggedMemoryConfig, GENERATED_ID_PREFIX};

/// A chain whose backings are open, ready to be offered once the VM runs.
#[derive(Debug)]
pub struct PreparedChain {
    extents: Vec<(ExtentPlan, Backing)>,
}

impl PreparedChain {
    /// Plans and opens the backings of `configs` as one chain. Sequence numbers of sharable
    /// groups follow the order within each tag ([`sequence_numbers`]). Errors are attributed to
    /// `label` (the option or API field), with the extent's position when there are several.
    pub fn prepare(
        resolver: &Resolver,
        configs: &[TaggedMemoryConfig],
        label: &str,
    ) -> Result<Self, OptionError> {
        let at = |i: usize| {
            if configs.len() > 1 {
                format!("{label}[{i}]")
            } else {
                label.into()
            }
        };
        let seqs = sequence_numbers(configs).map_err(|(i, e)| OptionError::new(at(i), e))?;
        let mut extents = Vec::with_capacity(configs.len());
        for (i, (c, seq)) in configs.iter().zip(seqs).enumerate() {
            let err = |e| OptionError::new(at(i), e);
            let plan = resolver.plan(c, seq).map_err(err)?;
            let name =
                c.id.clone()
                    .unwrap_or_else(|| format!("{}{}", GENERATED_ID_PREFIX, i));
            let backing = plan.open(&format!("tagmem:{name}")).map_err(err)?;
            extents.push((plan, backing));
        }
        Ok(PreparedChain { extents })
    }

    /// Number of extents.
    pub fn len(&self) -> usize {
        self.extents.len()
    }

    /// True if the chain has no extent.
    pub fn is_empty(&self) -> bool {
        self.extents.is_empty()
    }

    /// The extents' plans, in chain order.
    pub fn plans(&self) -> impl Iterator<Item = &ExtentPlan> {
        self.extents.iter().map(|(p, _)| p)
    }

    /// The plans with their open backings, in chain order, for registering and offering.
    pub fn into_extents(self) -> Vec<(ExtentPlan, Backing)> {
        self.extents
    }
}

/// Prepares every chain of `chains` (from [`crate::group_chains`]) over `configs`; errors name
/// `option`.
pub fn prepare_chains(
    resolver: &Resolver,
    configs: &[TaggedMemoryConfig],
    chains: &[Vec<usize>],
    option: &str,
) -> Result<Vec<PreparedChain>, OptionError> {
    chains
        .iter()
        .map(|chain| {
            let members: Vec<TaggedMemoryConfig> = chain.iter().map(|&i| configs[i].clone()).collect();
            PreparedChain::prepare(resolver, &members, option)
        })
        .collect()
}
