//! Giving capacity back: the host's release request, the driver's RELEASE (plan, then commit once
//! unmapped) and RELEASE_BUSY ([T-REL-*]).

use super::*;

impl ExtentTable {
    /// Validates a driver RELEASE / RELEASE_BUSY; returns the group.
    pub fn plan_release(&self, extent_id: u64, tag: &[u8; 16]) -> Result<Vec<u64>, u16> {
        let e = self.extents.get(&extent_id).ok_or(reason::UNKNOWN_EXTENT)?;
        if e.state == ExtentState::Pending {
            return Err(reason::UNKNOWN_EXTENT);
        }
        if e.tag.as_bytes() != tag {
            return Err(reason::TAG_MISMATCH);
        }
        Ok(self.group_of(extent_id))
    }

    /// Removes a released group and the events still queued about it; returns the removed
    /// extents.
    pub fn commit_release(&mut self, group: &[u64]) -> Vec<ExtentInfo> {
        let removed: Vec<ExtentInfo> = group.iter().filter_map(|id| self.remove(*id)).collect();
        let ids: Vec<u64> = removed.iter().map(|e| e.id).collect();
        self.purge_events(&ids);
        removed
    }

    /// Host asks for a group's release; queues RELEASE_REQUEST.
    pub fn request_release(&mut self, target: Target) -> Result<Vec<u64>, ControlError> {
        let group = self.resolve(target)?;
        self.check_outbox(1)?;
        let first = group[0];
        for id in &group {
            if let Some(e) = self.extents.get_mut(id) {
                if e.state == ExtentState::Accepted {
                    e.state = ExtentState::ReleaseRequested;
                }
            }
        }
        self.outbox.push_back(Event::ReleaseRequest {
            record: record_of(first, &self.extents[&first]),
        });
        Ok(group)
    }

    /// Driver says a requested group is busy; defers it.
    pub fn defer_release(&mut self, extent_id: u64, tag: &[u8; 16]) -> Result<Vec<u64>, u16> {
        let group = self.plan_release(extent_id, tag)?;
        let asked = group.iter().all(|id| {
            matches!(
                self.extents[id].state,
                ExtentState::ReleaseRequested | ExtentState::ReleaseDeferred
            )
        });
        if !asked {
            return Err(reason::WRONG_STATE);
        }
        for id in &group {
            if let Some(e) = self.extents.get_mut(id) {
                e.state = ExtentState::ReleaseDeferred;
            }
        }
        Ok(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fixtures::*;

    #[test]
    fn release_and_defer() {
        let mut t = table();
        t.offer(&[spec(5, 1, 0, MB2), spec(5, 1, MB2, MB2)], 0).unwrap();
        close(&mut t);
        let p = t.plan_accept(1, &[1, 2]).unwrap();
        t.commit_accept(&p);
        let tag = *Uuid::from_u128(5).as_bytes();
        assert_eq!(t.plan_release(1, &[0; 16]), Err(reason::TAG_MISMATCH));
        assert_eq!(t.defer_release(2, &tag), Err(reason::WRONG_STATE));
        assert_eq!(
            t.request_release(Target::Tag(Uuid::from_u128(5))).unwrap(),
            vec![1, 2]
        );
        assert_eq!(t.defer_release(2, &tag).unwrap(), vec![1, 2]);
        assert_eq!(t.extents[&1].state, ExtentState::ReleaseDeferred);
        let g = t.plan_release(2, &tag).unwrap();
        assert_eq!(t.commit_release(&g).len(), 2);
        assert!(t.extents.is_empty());
        assert_eq!(t.plan_release(1, &tag), Err(reason::UNKNOWN_EXTENT));
    }
}
