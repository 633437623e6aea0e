//! The event outbox: what the driver is told next, its bound, and the host commands that only add
//! events (metadata updates, poison; [T-META-*], [T-POISON-*]).

use super::*;

impl ExtentTable {
    /// The next event to deliver, if any.
    pub fn peek_event(&self) -> Option<&Event> {
        self.outbox.front()
    }

    /// Marks the front event delivered.
    pub fn commit_event(&mut self) {
        if let Some(Event::Offer {
            chain_id,
            more: false,
            ..
        }) = self.outbox.pop_front()
        {
            if let Some(c) = self.chains.get_mut(&chain_id) {
                c.closed = true;
            }
        }
    }

    /// Drops undelivered events that name extents which no longer exist ([T-META-1]: nothing is
    /// said about capacity after its release).
    pub(super) fn purge_events(&mut self, gone: &[u64]) {
        if gone.is_empty() {
            return;
        }
        let gone: HashSet<u64> = gone.iter().copied().collect();
        self.outbox.retain(|e| match e {
            Event::Offer { record, .. }
            | Event::ReleaseRequest { record }
            | Event::Metadata { record }
            | Event::Poison { record, .. } => !gone.contains(&record.extent_id.get()),
            Event::ChainAbandoned { .. } => true,
        });
    }

    pub(super) fn check_outbox(&self, adding: usize) -> Result<(), ControlError> {
        if self.outbox.len() + adding > OUTBOX_LIMIT {
            return Err(ControlError::EventBacklog(self.outbox.len()));
        }
        Ok(())
    }

    /// Updates performance metadata; queues one METADATA event per extent.
    pub fn update_metadata(&mut self, target: Target, perf: Perf) -> Result<Vec<u64>, ControlError> {
        let ids = self.resolve(target)?;
        self.check_outbox(ids.len())?;
        for id in &ids {
            if let Some(e) = self.extents.get_mut(id) {
                e.perf = perf;
                let record = record_of(*id, e);
                self.outbox.push_back(Event::Metadata { record });
            }
        }
        Ok(ids)
    }

    /// Records poison in an accepted extent; queues a POISON event.
    pub fn poison(&mut self, id: u64, offset: u64, length: u64) -> Result<(), ControlError> {
        let ids = self.resolve(Target::Extent(id))?;
        debug_assert!(!ids.is_empty());
        self.check_outbox(1)?;
        let e = self
            .extents
            .get_mut(&id)
            .ok_or_else(|| ControlError::NotFound(format!("extent {id}")))?;
        let inside = length > 0 && offset.checked_add(length).is_some_and(|end| end <= e.length);
        if !inside {
            return Err(ControlError::PoisonOutOfRange {
                id,
                offset,
                length,
                extent_len: e.length,
            });
        }
        let record = record_of(id, e);
        self.poison.entry(id).or_default().push((offset, length));
        self.outbox.push_back(Event::Poison {
            record,
            offset,
            length,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fixtures::*;

    #[test]
    fn metadata_and_poison_need_accepted_extents() {
        let mut t = table();
        t.offer(&[spec(0, 1, 0, MB2)], 0).unwrap();
        assert!(matches!(
            t.update_metadata(Target::Extent(1), Perf::default()),
            Err(ControlError::WrongState { .. })
        ));
        close(&mut t);
        let p = t.plan_accept(1, &[1]).unwrap();
        t.commit_accept(&p);
        let perf = Perf {
            read_latency_ns: 300,
            ..Default::default()
        };
        t.update_metadata(Target::Extent(1), perf).unwrap();
        assert!(
            matches!(t.peek_event(), Some(Event::Metadata { record }) if record.read_latency_ns.get() == 300)
        );
        assert!(matches!(
            t.poison(1, MB2, 1),
            Err(ControlError::PoisonOutOfRange { .. })
        ));
        assert!(matches!(
            t.poison(1, 0, 0),
            Err(ControlError::PoisonOutOfRange { .. })
        ));
        t.poison(1, 4096, 4096).unwrap();
        assert_eq!(t.info(1).unwrap().poison, vec![(4096, 4096)]);
        assert!(matches!(
            t.update_metadata(Target::Tag(Uuid::from_u128(3)), perf),
            Err(ControlError::NotFound(_))
        ));
    }
}
