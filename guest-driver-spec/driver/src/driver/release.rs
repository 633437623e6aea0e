//! Giving capacity back: release requests from the device (answered at once or deferred while
//! busy), releases the driver starts, and the busy marks that defer them ([T-REL-*]).

use super::*;

impl<T: Transport, D: DmaMemory> TagMemDriver<T, D> {
    pub(super) fn on_release_request(&mut self, r: &ExtentRecord) {
        let Some(slot) = self.device_for_record(r) else {
            return;
        };
        let extent_id = r.extent_id.get();
        let Some(dev) = self.registry.group_mut(slot) else {
            return;
        };
        dev.release_requested = true;
        // Unclaimed capacity is never busy: nothing can use it, so it goes back at once.
        let (name, uuid, busy) = (dev.label(), dev.uuid, dev.busy);
        self.push_log(DriverEvent::ReleaseRequested {
            name: name.clone(),
            extent_id,
        });
        let Slot::Device(i) = slot else {
            let _ = self.release_slot(slot);
            return;
        };
        if !busy {
            let _ = self.release_slot(slot);
            return;
        }
        match self.tagged_request(
            TaggedReq::new(VIRTIO_MEM_REQ_RELEASE_BUSY, extent_id, uuid, 0),
            &[],
        ) {
            Ok(resp) if resp.resp == MemResponse::Ack => {
                if let Some(dev) = self.registry.get_mut(i) {
                    dev.deferred = true;
                    self.any_deferred = true;
                }
                self.push_log(DriverEvent::ReleaseDeferred { name, extent_id });
            }
            Ok(resp) => self.push_log(DriverEvent::ReleaseFailed {
                name,
                error: DriverError::Refused(resp),
            }),
            Err(error) => self.push_log(DriverEvent::ReleaseFailed { name, error }),
        }
    }

    /// Releases deferred devices no longer busy, and sends answers that could not be sent before.
    pub(super) fn retry_deferred(&mut self) {
        if self.stale.is_some() && self.guestq_stuck() {
            return;
        }
        let unsent: Vec<u64> = self
            .chains
            .iter()
            .filter(|(_, c)| c.closed && c.decision.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in unsent {
            self.answer_chain(id);
        }
        if !self.any_deferred {
            return;
        }
        while let Some(i) = self.registry.devices().iter().position(|d| d.deferred && !d.busy) {
            if let Some(d) = self.registry.get_mut(i) {
                d.deferred = false;
            }
            let _ = self.release_slot(Slot::Device(i));
        }
        self.any_deferred = self.registry.devices().iter().any(|d| d.deferred);
    }

    /// True while a timed-out request is still held by the device (reclaims it if it came back).
    pub(super) fn guestq_stuck(&mut self) -> bool {
        let (Some(q), Some(stale)) = (self.guestq.as_mut(), self.stale) else {
            return false;
        };
        match q.pop_used(&self.dma) {
            Ok(Some(u)) if u.head == stale => {
                self.stale = None;
                false
            }
            _ => true,
        }
    }

    pub(super) fn resolve(&self, target: Target) -> Option<Slot> {
        match target {
            Target::Tag(t) => self.registry.group_of_tag(&t),
            Target::Extent(id) => self.registry.group_of(id),
        }
    }

    /// Releases the capacity `target` names (a whole tag group, or one untagged extent), claimed
    /// or not.
    ///
    /// Returns the number of extents the device released. After `Ok` the guest must not touch
    /// the memory any more (it is gone from [`TagMemDriver::devices`] and
    /// [`TagMemDriver::unclaimed`]).
    pub fn release(&mut self, target: impl Into<Target>) -> Result<u32, DriverError> {
        let slot = self.resolve(target.into()).ok_or(DriverError::UnknownTarget)?;
        self.release_slot(slot)
    }

    pub(super) fn release_slot(&mut self, slot: Slot) -> Result<u32, DriverError> {
        let Some(dev) = self.registry.group(slot) else {
            return Err(DriverError::UnknownTarget);
        };
        let (name, uuid) = (dev.label(), dev.uuid);
        let lead = dev.lead_extent_id().unwrap_or(0);
        let n = u32::try_from(dev.extents.len()).unwrap_or(u32::MAX);
        match self.tagged_request(TaggedReq::new(VIRTIO_MEM_REQ_RELEASE, lead, uuid, 0), &[]) {
            Ok(r) if r.resp == MemResponse::Ack => {
                if r.value != n {
                    self.push_log(DriverEvent::Protocol(DriverError::CountMismatch {
                        expected: n,
                        got: r.value,
                    }));
                }
                let extent_ids = self
                    .registry
                    .remove_group(slot)
                    .map(|d| d.extents.iter().map(|e| e.id).collect())
                    .unwrap_or_default();
                self.busy_tags.remove(&uuid);
                self.push_log(DriverEvent::Released {
                    name,
                    uuid,
                    extent_ids,
                });
                Ok(r.value)
            }
            Ok(r) => {
                let error = DriverError::Refused(r);
                self.push_log(DriverEvent::ReleaseFailed { name, error });
                Err(error)
            }
            Err(error) => {
                self.push_log(DriverEvent::ReleaseFailed { name, error });
                Err(error)
            }
        }
    }

    /// Marks the device `target` names busy or idle. While busy, host release requests are
    /// answered RELEASE_BUSY; once idle again, the next [`TagMemDriver::poll`] releases a device
    /// whose release was deferred. A tag may be marked before its device exists. Returns false if
    /// `target` names nothing (the nil tag, or an extent that is not accepted).
    pub fn set_busy(&mut self, target: impl Into<Target>, busy: bool) -> bool {
        let target = target.into();
        // Only a claimed device can be in use; a tag still unclaimed is marked for its claim.
        let i = match self.resolve(target) {
            Some(Slot::Device(i)) => Some(i),
            _ => None,
        };
        let tag = match (target, i) {
            (Target::Tag(t), _) if !is_null_tag(&t) => t,
            (Target::Extent(_), Some(i)) => self.registry.devices()[i].uuid,
            _ => return false,
        };
        if !is_null_tag(&tag) {
            if busy {
                self.busy_tags.insert(tag);
            } else {
                self.busy_tags.remove(&tag);
            }
        }
        if let Some(d) = i.and_then(|i| self.registry.get_mut(i)) {
            d.busy = busy;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::fake_device::*;

    #[test]
    fn release_request_when_idle_releases() {
        let mut d = ready();
        offer(&mut d, 1, &[rec(1, 0, 4, 0, 0), rec(2, 1, 4, 0, 1)]);
        d.poll().unwrap();
        d.transport_mut().responder =
            Box::new(|_, _| Some(TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, 2).as_bytes().to_vec()));
        d.drain_log();
        d.transport_mut().push_event(&Event::ReleaseRequest {
            record: rec(1, 0, 4, 0, 0),
        });
        d.poll().unwrap();
        assert_eq!(
            d.transport().last_request().0,
            Request::Release {
                extent_id: 1,
                tag: [4; 16]
            }
        );
        assert!(d.devices().is_empty());
        assert_eq!(
            d.drain_log(),
            [
                DriverEvent::ReleaseRequested {
                    name: "dax0.0".to_string(),
                    extent_id: 1
                },
                DriverEvent::Released {
                    name: "dax0.0".to_string(),
                    uuid: [4; 16],
                    extent_ids: vec![1, 2]
                }
            ]
        );
    }

    #[test]
    fn release_request_while_busy_is_deferred_until_idle() {
        let mut d = ready();
        assert!(d.set_busy([4; 16], true), "a tag can be marked before it arrives");
        assert!(!d.set_busy([0; 16], true));
        assert!(!d.set_busy(99u64, true));
        offer(&mut d, 1, &[rec(1, 0, 4, 0, 0), rec(2, 1, 0, 0, 0)]);
        d.poll().unwrap();
        assert!(d.lookup(&[4; 16]).unwrap().busy);
        assert!(d.set_busy(2u64, true));
        d.transport_mut().responder = Box::new(|req, _| {
            let n = if matches!(req, Request::Release { .. }) {
                1
            } else {
                0
            };
            Some(TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, n).as_bytes().to_vec())
        });
        d.transport_mut().push_event(&Event::ReleaseRequest {
            record: rec(1, 0, 4, 0, 0),
        });
        d.transport_mut().push_event(&Event::ReleaseRequest {
            record: rec(2, 1, 0, 0, 0),
        });
        d.poll().unwrap();
        let reqs = d.transport().tagged_requests();
        assert_eq!(
            reqs[1..],
            [
                (
                    Request::ReleaseBusy {
                        extent_id: 1,
                        tag: [4; 16]
                    },
                    vec![]
                ),
                (
                    Request::ReleaseBusy {
                        extent_id: 2,
                        tag: [0; 16]
                    },
                    vec![]
                )
            ]
        );
        assert_eq!(d.devices().len(), 2);
        assert!(d.devices().iter().all(|x| x.release_requested));
        // Still busy: polling changes nothing.
        d.poll().unwrap();
        assert_eq!(d.transport().tagged_requests().len(), 3);
        // Let go of the tagged one: the next poll releases it.
        assert!(d.set_busy(1u64, false));
        d.poll().unwrap();
        assert_eq!(
            d.transport().last_request().0,
            Request::Release {
                extent_id: 1,
                tag: [4; 16]
            }
        );
        assert!(d.lookup(&[4; 16]).is_none());
        assert_eq!(d.devices().len(), 1);
        d.set_busy(2u64, false);
        d.poll().unwrap();
        assert!(d.devices().is_empty());
        assert_eq!(d.transport().tagged_requests().len(), 5);
    }

    #[test]
    fn driver_initiated_release() {
        let mut d = ready();
        offer(
            &mut d,
            1,
            &[rec(1, 0, 4, 0, 1), rec(2, 1, 4, 0, 0), rec(3, 2, 0, 0, 0)],
        );
        d.poll().unwrap();
        assert_eq!(d.release([9; 16]), Err(DriverError::UnknownTarget));
        assert_eq!(d.release([0; 16]), Err(DriverError::UnknownTarget));
        d.transport_mut().responder = Box::new(|_, _| {
            Some(
                TaggedResp::new(VIRTIO_MEM_RESP_ERROR, reason::TAG_MISMATCH, 0)
                    .as_bytes()
                    .to_vec(),
            )
        });
        let refused = TaggedResponse {
            resp: MemResponse::Error,
            reason: reason::TAG_MISMATCH,
            value: 0,
        };
        assert_eq!(d.release(2u64), Err(DriverError::Refused(refused)));
        assert_eq!(d.devices().len(), 2, "a refused release keeps the device");
        d.transport_mut().responder =
            Box::new(|_, _| Some(TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, 2).as_bytes().to_vec()));
        // By extent id: the group's lowest id and its tag go on the wire.
        assert_eq!(d.release(2u64), Ok(2));
        assert_eq!(
            d.transport().last_request().0,
            Request::Release {
                extent_id: 1,
                tag: [4; 16]
            }
        );
        d.transport_mut().responder =
            Box::new(|_, _| Some(TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, 1).as_bytes().to_vec()));
        assert_eq!(d.release(3u64), Ok(1));
        assert!(d.devices().is_empty());
    }
}
