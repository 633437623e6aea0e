//! Grouping extents into offer chains, and their sequence numbers within a group: the one
//! place every VMM takes both from.

use crate::error::{ConfigError, OptionError};
use crate::tagged::{TaggedMemoryConfig, OPTION};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Groups extents into offer chains: every extent of one tag forms one chain, in the order given;
/// each untagged extent is a chain of its own. Chains come in the order of their first extent.
/// Fails if extents of one tag disagree on `shared=` or two extents share an id.
pub fn group_chains(configs: &[TaggedMemoryConfig]) -> Result<Vec<Vec<usize>>, OptionError> {
    let mut chains: Vec<Vec<usize>> = Vec::new();
    for (i, c) in configs.iter().enumerate() {
        if let Some(id) = &c.id {
            if configs[..i].iter().any(|o| o.id.as_ref() == Some(id)) {
                return Err(OptionError::new(
                    OPTION,
                    ConfigError::DuplicateId { id: id.clone() },
                ));
            }
        }
        let tag = c.tag();
        let group = (!tag.is_nil())
            .then(|| chains.iter_mut().find(|ch| configs[ch[0]].tag() == tag))
            .flatten();
        match group {
            Some(chain) => {
                if configs[chain[0]].shared != c.shared {
                    return Err(OptionError::new(OPTION, ConfigError::MixedSharing { tag }));
                }
                if chain.len() > usize::from(u16::MAX) {
                    return Err(OptionError::new(OPTION, ConfigError::GroupTooLarge { tag }));
                }
                chain.push(i);
            }
            None => chains.push(vec![i]),
        }
    }
    Ok(chains)
}

/// The sequence number of each extent of `configs` (one chain, in order): a sharable extent's
/// position among the sharable extents of its tag before it, 0 for the rest. Fails, with the
/// extent's position, when one tag has more extents than 16-bit sequence numbers count.
pub fn sequence_numbers(configs: &[TaggedMemoryConfig]) -> Result<Vec<u16>, (usize, ConfigError)> {
    let mut next: BTreeMap<Uuid, u16> = BTreeMap::new();
    configs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if !c.shared {
                return Ok(0);
            }
            let n = next.entry(c.tag()).or_insert(0);
            let seq = *n;
            *n = n
                .checked_add(1)
                .ok_or((i, ConfigError::GroupTooLarge { tag: c.tag() }))?;
            Ok(seq)
        })
        .collect()
}

/// Parses every `--tagged-memory` value and groups them into chains (see [`group_chains`]).
pub fn parse_options<S: AsRef<str>>(
    values: &[S],
) -> Result<(Vec<TaggedMemoryConfig>, Vec<Vec<usize>>), OptionError> {
    let configs = values
        .iter()
        .map(|v| TaggedMemoryConfig::parse(v.as_ref()).map_err(|e| OptionError::new(OPTION, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let chains = group_chains(&configs)?;
    Ok((configs, chains))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use crate::{prepare_chains, Resolver};

    #[test]
    fn same_tag_forms_one_chain_in_order() {
        let other = "0b7e8c1d-2f3a-4b5c-8d9e-0f1a2b3c4d5e";
        let opts = [
            format!("tag={TAG},path=memfd,size=2M,shared=on,id=a"),
            "size=2M".to_string(),
            format!("tag={other},path=memfd,size=2M"),
            format!("tag={TAG},path=memfd,size=4M,shared=on,id=b"),
            "size=4M".to_string(),
        ];
        let (configs, chains) = parse_options(&opts).unwrap();
        assert_eq!(configs.len(), 5);
        assert_eq!(chains, vec![vec![0, 3], vec![1], vec![2], vec![4]]);
        let plans = prepare_chains(&Resolver::new("/nonexistent"), &configs, &chains, OPTION).unwrap();
        let seqs: Vec<Vec<u16>> = plans.iter().map(|c| c.plans().map(|p| p.seq).collect()).collect();
        assert_eq!(seqs, vec![vec![0, 1], vec![0], vec![0], vec![0]]);
        assert_eq!(plans[0].plans().nth(1).unwrap().id.as_deref(), Some("b"));
    }

    #[test]
    fn grouping_errors() {
        let mixed = [
            format!("tag={TAG},path=memfd,size=2M,shared=on"),
            format!("tag={TAG},path=memfd,size=2M"),
        ];
        assert_eq!(
            parse_options(&mixed).unwrap_err().to_string(),
            format!("--tagged-memory: tag={TAG}: shared= differs between extents of the same tag")
        );
        let dup = ["size=2M,id=x", "size=2M,id=x"];
        assert_eq!(
            parse_options(&dup).unwrap_err().to_string(),
            "--tagged-memory: id=x: used by more than one extent"
        );
        let bad = ["size=2M", "size=1M"];
        assert_eq!(
            parse_options(&bad).unwrap_err().to_string(),
            "--tagged-memory: size=1M: not a multiple of 2 MiB"
        );
    }
}
