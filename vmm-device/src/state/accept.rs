//! The driver's answer to a chain (plan, then commit once the mapping succeeded), and chains
//! that time out ([T-ACCEPT-*], [T-TIMEOUT-*]).

use super::*;

impl ExtentTable {
    /// Validates an ACCEPT; errors are wire reason codes.
    pub fn plan_accept(&self, chain_id: u64, ids: &[u64]) -> Result<AcceptPlan, u16> {
        let chain = self.chains.get(&chain_id).ok_or(reason::UNKNOWN_CHAIN)?;
        if !chain.closed {
            return Err(reason::CHAIN_OPEN);
        }
        // Sets, so an ACCEPT of `max_pending` ids costs O(k), not O(k^2).
        let in_chain: HashSet<u64> = chain.ids.iter().copied().collect();
        let mut chosen: HashSet<u64> = HashSet::with_capacity(ids.len());
        for &id in ids {
            if !in_chain.contains(&id) {
                return Err(reason::UNKNOWN_EXTENT);
            }
            if !chosen.insert(id) {
                return Err(reason::DUPLICATE_ID);
            }
        }
        // [T-ACCEPT-2]: every tag group is all-or-nothing, as DCD adds a tag group whole.
        let taken: HashSet<Uuid> = chosen
            .iter()
            .map(|id| self.extents[id].tag)
            .filter(|t| !t.is_nil())
            .collect();
        let partial = chain.ids.iter().any(|id| {
            let tag = self.extents[id].tag;
            !tag.is_nil() && !chosen.contains(id) && taken.contains(&tag)
        });
        if partial {
            return Err(reason::PARTIAL_GROUP);
        }
        let accepted = chain
            .ids
            .iter()
            .filter(|id| chosen.contains(id))
            .map(|id| (*id, mapping_of(&self.extents[id])))
            .collect();
        let rejected = chain
            .ids
            .iter()
            .filter(|id| !chosen.contains(id))
            .copied()
            .collect();
        Ok(AcceptPlan {
            chain_id,
            accepted,
            rejected,
        })
    }

    /// Applies a validated ACCEPT whose mappings all succeeded.
    pub fn commit_accept(&mut self, plan: &AcceptPlan) {
        self.chains.remove(&plan.chain_id);
        for (id, _) in &plan.accepted {
            if let Some(e) = self.extents.get_mut(id) {
                e.state = ExtentState::Accepted;
            }
        }
        for id in &plan.rejected {
            self.remove(*id);
        }
        self.purge_events(&plan.rejected);
    }

    /// Drops a pending chain: frees its extents and its undelivered offers. Returns its ids.
    pub fn drop_chain(&mut self, chain_id: u64, tell_driver: bool) -> Vec<u64> {
        let Some(chain) = self.chains.remove(&chain_id) else {
            return Vec::new();
        };
        self.outbox
            .retain(|e| !matches!(e, Event::Offer { chain_id: c, .. } if *c == chain_id));
        for id in &chain.ids {
            self.remove(*id);
        }
        if tell_driver {
            self.outbox.push_back(Event::ChainAbandoned { chain_id });
        }
        chain.ids
    }

    /// Chains whose deadline has passed.
    pub fn expired(&self, now_ms: u64) -> Vec<u64> {
        self.chains
            .iter()
            .filter(|(_, c)| now_ms >= c.deadline_ms)
            .map(|(id, _)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fixtures::*;

    #[test]
    fn accept_rules() {
        let mut t = table();
        let mut a = spec(5, 1, 0, MB2);
        a.flags.sharable = true;
        let mut b = spec(5, 1, MB2, MB2);
        b.flags.sharable = true;
        b.seq = 1;
        let r = t.offer(&[a, b, spec(0, 1, 2 * MB2, MB2)], 0).unwrap();
        assert_eq!(t.plan_accept(r.chain_id, &[1]), Err(reason::CHAIN_OPEN));
        close(&mut t);
        assert_eq!(t.plan_accept(99, &[1]), Err(reason::UNKNOWN_CHAIN));
        assert_eq!(t.plan_accept(1, &[42]), Err(reason::UNKNOWN_EXTENT));
        assert_eq!(t.plan_accept(1, &[3, 3]), Err(reason::DUPLICATE_ID));
        assert_eq!(t.plan_accept(1, &[1, 3]), Err(reason::PARTIAL_GROUP));
        let plan = t.plan_accept(1, &[2, 1]).unwrap();
        assert_eq!(plan.rejected, vec![3]);
        t.commit_accept(&plan);
        assert_eq!(t.accepted_count(), 2);
        assert!(!t.extents.contains_key(&3));
        assert_eq!(t.plan_accept(1, &[1, 2]), Err(reason::UNKNOWN_CHAIN));
        t.check_invariants().unwrap();
    }

    #[test]
    fn expiry_drops_chain_and_undelivered_offers() {
        let mut t = table();
        t.offer(&[spec(0, 1, 0, MB2), spec(0, 1, MB2, MB2)], 100).unwrap();
        t.commit_event();
        assert!(t.expired(20_099).is_empty());
        assert_eq!(t.expired(20_100), vec![1]);
        assert_eq!(t.drop_chain(1, true), vec![1, 2]);
        assert_eq!(t.outbox.len(), 1);
        assert!(matches!(
            t.peek_event(),
            Some(Event::ChainAbandoned { chain_id: 1 })
        ));
        assert!(t.extents.is_empty());
        assert_eq!(t.window.free_bytes(), 64 * MB2);
    }
}
