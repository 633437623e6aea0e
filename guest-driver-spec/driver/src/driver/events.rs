//! Events from eventq: offers collected into chains and answered with one ACCEPT, metadata
//! updates and poison ([T-OFFER-*], [T-META-*], [T-POISON-*]).

use super::*;

impl<T: Transport, D: DmaMemory> TagMemDriver<T, D> {
    /// Drains eventq and handles each event (answering offers and release requests on guestq);
    /// then releases deferred devices that are no longer busy and retries unsent answers.
    ///
    /// Returns the number of event buffers consumed (at most [`MAX_EVENTS_PER_POLL`]). Bad events
    /// are logged as [`DriverEvent::Protocol`]; only a broken eventq is an error.
    pub fn poll(&mut self) -> Result<usize, DriverError> {
        let mut handled = 0;
        let mut reposted = false;
        let r = self.drain_eventq(&mut handled, &mut reposted);
        // One notification for every buffer given back in this poll (a whole chain's), not one
        // per event: the device finds them in the avail ring either way.
        if reposted {
            self.transport.notify(VIRTIO_MEM_EVENTQ);
        }
        r?;
        self.retry_deferred();
        Ok(handled)
    }

    /// The event loop of [`TagMemDriver::poll`]: takes used event buffers, gives each back to
    /// the device (`reposted` set once one was) and handles its event.
    pub(super) fn drain_eventq(
        &mut self,
        handled: &mut usize,
        reposted: &mut bool,
    ) -> Result<(), DriverError> {
        while *handled < MAX_EVENTS_PER_POLL {
            let Some(q) = self.eventq.as_mut() else { break };
            let used = match q.pop_used(&self.dma) {
                Ok(Some(u)) => u,
                Ok(None) => break,
                Err(QueueError::BadUsedId(id)) => {
                    self.push_log(DriverEvent::Protocol(QueueError::BadUsedId(id).into()));
                    *handled += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            *handled += 1;
            let Some(buf) = self
                .event_bufs
                .get_mut(usize::from(used.head))
                .and_then(Option::take)
            else {
                continue;
            };
            let mut bytes = [0u8; VIRTIO_MEM_EVENT_SIZE];
            self.dma.read(buf, &mut bytes);
            let head = q.add(&self.dma, &[], &[event_buf(buf)])?;
            self.event_bufs[usize::from(head)] = Some(buf);
            *reposted = true;
            if usize::try_from(used.len).ok() != Some(VIRTIO_MEM_EVENT_SIZE) {
                self.push_log(DriverEvent::Protocol(DriverError::EventLength(used.len)));
                continue;
            }
            match Event::try_from(&bytes[..]) {
                Ok(e) => self.handle_event(e),
                Err(w) => self.push_log(DriverEvent::Protocol(DriverError::BadEvent(w))),
            }
        }
        Ok(())
    }

    pub(super) fn handle_event(&mut self, e: Event) {
        match e {
            Event::Offer {
                chain_id,
                more,
                record,
            } => self.on_offer(chain_id, more, record),
            Event::ChainAbandoned { chain_id } => {
                let dropped = self.chains.remove(&chain_id).map_or(0, |c| c.records.len());
                self.push_log(DriverEvent::ChainAbandoned { chain_id, dropped });
            }
            Event::ReleaseRequest { record } => self.on_release_request(&record),
            Event::Metadata { record } => self.on_metadata(&record),
            Event::Poison {
                record,
                offset,
                length,
            } => self.on_poison(&record, offset, length),
        }
    }

    pub(super) fn on_offer(&mut self, chain_id: u64, more: bool, record: ExtentRecord) {
        let collected: usize = self.chains.values().map(|c| c.records.len()).sum();
        let limit = self.pending_limit;
        let chain = self.chains.entry(chain_id).or_default();
        if chain.closed {
            self.push_log(DriverEvent::Protocol(DriverError::OfferAfterClose(chain_id)));
            return;
        }
        if collected >= limit {
            chain.overflow = chain.overflow.saturating_add(1);
        } else {
            chain.records.push(record);
        }
        if !more {
            chain.closed = true;
            self.answer_chain(chain_id);
        }
    }

    /// Decides (once) and sends the single ACCEPT for a closed chain.
    pub(super) fn answer_chain(&mut self, chain_id: u64) {
        let Some(mut chain) = self.chains.remove(&chain_id) else {
            return;
        };
        if chain.decision.is_none() {
            let mut rejected: Vec<(u64, RejectReason)> = Vec::new();
            let accept = if chain.overflow > 0 {
                self.push_log(DriverEvent::Protocol(DriverError::ChainOverflow {
                    chain_id,
                    dropped: chain.overflow,
                }));
                rejected.extend(
                    chain
                        .records
                        .iter()
                        .map(|r| (r.extent_id.get(), RejectReason::ChainOverflow)),
                );
                Vec::new()
            } else {
                let window = self.tagged_config.map_or(Window::default(), |c| Window {
                    addr: c.tagged_addr.get(),
                    size: c.tagged_size.get(),
                });
                let s = screen(&chain.records, window, &self.registry);
                rejected = s.rejected;
                let chosen = if s.candidates.is_empty() {
                    Vec::new()
                } else {
                    self.policy.choose(chain_id, &s.candidates)
                };
                let (accept, dropped) = enforce(&s.candidates, &chosen);
                rejected.extend(dropped);
                accept
            };
            for (extent_id, reason) in rejected {
                self.push_log(DriverEvent::Rejected {
                    chain_id,
                    extent_id,
                    reason,
                });
            }
            chain.decision = Some(accept);
        }
        let accept = chain.decision.clone().unwrap_or_default();
        let ids: Vec<u64> = accept.iter().map(|e| e.id).collect();
        let count = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        let hdr = TaggedReq::new(VIRTIO_MEM_REQ_ACCEPT, chain_id, [0; 16], count);
        match self.tagged_request(hdr, &ids) {
            Ok(r) if r.resp == MemResponse::Ack => {
                if r.value != count {
                    self.push_log(DriverEvent::Protocol(DriverError::CountMismatch {
                        expected: count,
                        got: r.value,
                    }));
                }
                self.create_devices(accept);
                self.push_log(DriverEvent::Answered {
                    chain_id,
                    accepted: ids,
                });
            }
            Ok(r) => self.push_log(DriverEvent::AcceptFailed {
                chain_id,
                error: DriverError::Refused(r),
            }),
            Err(DriverError::Stuck) => {
                // Never sent: keep the decision and send it on a later poll.
                self.chains.insert(chain_id, chain);
                self.push_log(DriverEvent::AcceptFailed {
                    chain_id,
                    error: DriverError::Stuck,
                });
            }
            Err(error) => self.push_log(DriverEvent::AcceptFailed { chain_id, error }),
        }
    }

    /// Hands freshly accepted extents to the region: unclaimed until claimed by tag, or (with
    /// [`ClaimMode::OnAccept`]) one device per tag and per untagged extent at once.
    pub(super) fn create_devices(&mut self, accepted: Vec<Extent>) {
        for i in self.registry.add_accepted(accepted, &self.busy_tags) {
            let d = &self.registry.devices()[i];
            let (name, uuid) = (d.name.clone(), d.uuid);
            self.push_log(DriverEvent::DeviceCreated { name, uuid });
        }
    }

    /// The accepted group (claimed or not) an event's record names, if the record's tag matches.
    pub(super) fn device_for_record(&mut self, r: &ExtentRecord) -> Option<Slot> {
        let id = r.extent_id.get();
        let Some(slot) = self.registry.group_of(id) else {
            self.push_log(DriverEvent::Protocol(DriverError::UnknownExtent(id)));
            return None;
        };
        if self.registry.group(slot).map(|g| g.uuid) != Some(r.tag) {
            self.push_log(DriverEvent::Protocol(DriverError::TagMismatch(id)));
            return None;
        }
        Some(slot)
    }

    /// The group and the extent a METADATA or POISON record names (checked as in
    /// [`Self::device_for_record`]).
    pub(super) fn extent_for_record(&mut self, r: &ExtentRecord) -> Option<(&mut DaxDevice, usize)> {
        let slot = self.device_for_record(r)?;
        let id = r.extent_id.get();
        let dev = self.registry.group_mut(slot)?;
        let e = dev.extents.iter().position(|e| e.id == id)?;
        Some((dev, e))
    }

    pub(super) fn on_metadata(&mut self, r: &ExtentRecord) {
        let id = r.extent_id.get();
        let Some((dev, e)) = self.extent_for_record(r) else {
            return;
        };
        let ext = &mut dev.extents[e];
        if ext.gpa != r.addr.get() || ext.len != r.length.get() {
            self.push_log(DriverEvent::Protocol(DriverError::ExtentMoved(id)));
            return;
        }
        let fresh = Extent::from_record(r);
        ext.perf = fresh.perf;
        ext.node = fresh.node;
        ext.source = fresh.source;
        dev.refresh();
        let name = dev.label();
        self.push_log(DriverEvent::MetadataUpdated { name, extent_id: id });
    }

    pub(super) fn on_poison(&mut self, r: &ExtentRecord, offset: u64, length: u64) {
        let id = r.extent_id.get();
        let Some((dev, e)) = self.extent_for_record(r) else {
            return;
        };
        let ext = &mut dev.extents[e];
        if length == 0 || offset.checked_add(length).is_none_or(|end| end > ext.len) {
            self.push_log(DriverEvent::Protocol(DriverError::PoisonOutOfRange {
                extent_id: id,
                offset,
                length,
            }));
            return;
        }
        ext.poison.push(PoisonRange { offset, length });
        let name = dev.label();
        self.push_log(DriverEvent::Poisoned {
            name,
            extent_id: id,
            offset,
            length,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::fake_device::*;

    /// A chain is one eventq notification (all its buffers given back at once) and one ACCEPT,
    /// however many extents it has.
    #[test]
    fn a_chain_costs_one_eventq_notification_and_one_accept() {
        let mut d = ready();
        let recs: Vec<ExtentRecord> = (0..5u16)
            .map(|i| rec(u64::from(i) + 1, u64::from(i), 0, 0, 0))
            .collect();
        offer(&mut d, 1, &recs);
        let before = d.transport().notifies;
        d.poll().unwrap();
        let after = d.transport().notifies;
        assert_eq!(after[1] - before[1], 1, "eventq notifications for a chain of 5");
        assert_eq!(after[0] - before[0], 1, "guestq notifications (the one ACCEPT)");
        assert_eq!(accepts(&d), vec![(1, vec![1, 2, 3, 4, 5])]);
    }

    #[test]
    fn nothing_surfaces_before_the_chain_closes() {
        let mut d = ready();
        let recs = [rec(1, 0, 0xa, 0, 0), rec(2, 1, 0xa, 0, 1), rec(3, 2, 0, 0, 0)];
        offer_part(&mut d, 1, &recs[..2], false);
        assert_eq!(d.poll(), Ok(2));
        assert!(d.devices().is_empty());
        assert!(accepts(&d).is_empty());
        assert_eq!(d.pending_chains(), 1);
        offer(&mut d, 1, &recs[2..]);
        assert_eq!(d.poll(), Ok(1));
        assert_eq!(accepts(&d), [(1, vec![1, 2, 3])]);
        assert_eq!(d.pending_chains(), 0);
        // ACCEPT: 40-byte header and the ids in readable descriptors, 16 writable bytes.
        let descs = &d.transport().requests.last().unwrap().2;
        let shape: Vec<_> = descs.iter().map(|x| (x.len, x.writable)).collect();
        assert_eq!(shape, [(40, false), (24, false), (16, true)]);
        assert_eq!(
            d.transport().last_request().0,
            Request::Accept {
                chain_id: 1,
                count: 3
            }
        );
        let log = d.drain_log();
        assert!(log.contains(&DriverEvent::Answered {
            chain_id: 1,
            accepted: vec![1, 2, 3]
        }));
        let names: Vec<_> = d.devices().iter().map(|x| (x.name.as_str(), x.uuid)).collect();
        assert_eq!(names, [("dax0.0", [0xa; 16]), ("dax0.1", [0; 16])]);
        // Event buffers were re-posted: the eventq never runs dry.
        for i in 0..40u64 {
            offer(&mut d, 10 + i, &[rec(100 + i, 10, 0, 0, 0)]);
            d.poll().unwrap();
            d.release(100 + i).unwrap();
        }
        assert_eq!(accepts(&d).len(), 41);
    }

    #[test]
    fn policy_takes_every_tag_group_all_or_nothing() {
        let mut d = ready();
        d.set_policy(|_c: u64, o: &[Extent]| o.iter().map(|e| e.id).filter(|i| i % 2 == 1).collect());
        let recs = [
            rec(1, 0, 1, VIRTIO_MEM_EXTENT_F_SHARABLE, 0),
            rec(2, 1, 1, VIRTIO_MEM_EXTENT_F_SHARABLE, 1),
            rec(3, 2, 2, 0, 0),
            rec(4, 3, 2, 0, 1),
            rec(5, 4, 0, 0, 0),
        ];
        offer(&mut d, 3, &recs);
        d.poll().unwrap();
        // [T-ACCEPT-2] (item B8): groups 1 (sharable) and 2 (not) chosen in part -> both dropped.
        assert_eq!(accepts(&d), [(3, vec![5])]);
        assert!(d.lookup(&[1; 16]).is_none());
        assert!(d.lookup(&[2; 16]).is_none());
        let rejected: Vec<_> = d
            .drain_log()
            .into_iter()
            .filter_map(|e| match e {
                DriverEvent::Rejected {
                    extent_id, reason, ..
                } => Some((extent_id, reason)),
                _ => None,
            })
            .collect();
        assert_eq!(
            rejected,
            [
                (1, RejectReason::PartialGroup),
                (2, RejectReason::Policy),
                (3, RejectReason::PartialGroup),
                (4, RejectReason::Policy)
            ]
        );
        // RejectAll answers with count 0: the chain is still answered exactly once.
        d.set_policy(crate::offer::RejectAll);
        offer(&mut d, 4, &[rec(9, 9, 0, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(accepts(&d)[1], (4, vec![]));
    }

    #[test]
    fn hostile_offers_are_left_out() {
        let mut d = ready();
        let mut misaligned = rec(2, 1, 0, 0, 0);
        misaligned.addr.set(WIN + 4096);
        let outside = rec(3, 200, 0, 0, 0);
        let bad_flags = rec(4, 3, 0, 0x80, 0);
        offer(
            &mut d,
            1,
            &[
                rec(1, 0, 0, 0, 0),
                misaligned,
                outside,
                bad_flags,
                rec(5, 0, 0, 0, 0),
            ],
        );
        d.poll().unwrap();
        // Extent 5 overlaps extent 1 in the same chain: both go.
        assert_eq!(accepts(&d), [(1, vec![])]);
        offer(&mut d, 2, &[rec(6, 0, 9, 0, 0)]);
        d.poll().unwrap();
        // A second chain re-using a tag, an accepted id, or accepted memory is refused.
        offer(
            &mut d,
            3,
            &[rec(7, 1, 9, 0, 0), rec(6, 2, 0, 0, 0), rec(8, 0, 0, 0, 0)],
        );
        d.poll().unwrap();
        assert_eq!(accepts(&d)[2], (3, vec![]));
        assert_eq!(d.devices().len(), 1);
    }

    #[test]
    fn chain_abandoned_drops_the_collecting_chain() {
        let mut d = ready();
        offer_part(&mut d, 5, &[rec(1, 0, 0, 0, 0), rec(2, 1, 0, 0, 0)], false);
        d.transport_mut()
            .push_event(&Event::ChainAbandoned { chain_id: 5 });
        d.poll().unwrap();
        assert_eq!(d.pending_chains(), 0);
        assert!(accepts(&d).is_empty());
        assert!(d.drain_log().contains(&DriverEvent::ChainAbandoned {
            chain_id: 5,
            dropped: 2
        }));
    }

    #[test]
    fn accept_errors_and_count_mismatch() {
        let mut d = ready();
        d.transport_mut().responder = Box::new(|_, _| {
            Some(
                TaggedResp::new(VIRTIO_MEM_RESP_ERROR, reason::MAP_FAILED, 0)
                    .as_bytes()
                    .to_vec(),
            )
        });
        offer(&mut d, 1, &[rec(1, 0, 0, 0, 0)]);
        d.poll().unwrap();
        assert!(d.devices().is_empty());
        let log = d.drain_log();
        assert!(log.iter().any(|e| matches!(
            e,
            DriverEvent::AcceptFailed {
                chain_id: 1,
                error: DriverError::Refused(TaggedResponse {
                    resp: MemResponse::Error,
                    reason: reason::MAP_FAILED,
                    ..
                })
            }
        )));
        d.transport_mut().responder =
            Box::new(|_, _| Some(TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, 7).as_bytes().to_vec()));
        offer(&mut d, 2, &[rec(2, 0, 0, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(d.devices().len(), 1);
        assert_eq!(
            protocol_errors(&d.drain_log()),
            [DriverError::CountMismatch { expected: 1, got: 7 }]
        );
        // A base-sized answer to a tagged request is too short.
        d.transport_mut().responder =
            Box::new(|_, _| Some(VirtioMemResp::new(VIRTIO_MEM_RESP_ACK, 0).as_bytes().to_vec()));
        offer(&mut d, 3, &[rec(3, 1, 0, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(d.devices().len(), 1);
        assert!(d.drain_log().contains(&DriverEvent::AcceptFailed {
            chain_id: 3,
            error: DriverError::ResponseLength { need: 16, got: 10 }
        }));
    }

    #[test]
    fn unsent_answer_is_retried_once_the_queue_frees() {
        let mut d = ready();
        d.transport_mut().responder = Box::new(|_, _| None);
        assert_eq!(d.plug(0, 1), Err(DriverError::Timeout));
        d.transport_mut().responder = ack_all();
        offer(&mut d, 1, &[rec(1, 0, 0, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(d.pending_chains(), 1);
        assert!(accepts(&d).is_empty());
        d.transport_mut().complete_held();
        d.poll().unwrap();
        assert_eq!(accepts(&d), [(1, vec![1])]);
        assert_eq!(d.devices().len(), 1);
    }

    #[test]
    fn metadata_and_poison() {
        let mut d = ready();
        offer(&mut d, 1, &[rec(1, 0, 4, 0, 0), rec(2, 1, 4, 0, 1)]);
        d.poll().unwrap();
        d.drain_log();
        let mut upd = rec(1, 0, 4, 0, 0);
        upd.read_latency_ns.set(90);
        upd.write_bandwidth_mbps.set(30_000);
        upd.node_id.set(3);
        d.transport_mut().push_event(&Event::Metadata { record: upd });
        d.transport_mut().push_event(&Event::Poison {
            record: rec(2, 1, 4, 0, 1),
            offset: 0x1000,
            length: 0x1000,
        });
        d.poll().unwrap();
        let dev = d.lookup(&[4; 16]).unwrap();
        assert_eq!(dev.perf.read_latency_ns, 90);
        assert_eq!(dev.perf.write_bandwidth_mbps, 30_000);
        assert_eq!(dev.node, 3);
        assert_eq!(
            dev.extents[1].poison,
            [PoisonRange {
                offset: 0x1000,
                length: 0x1000
            }]
        );
        assert_eq!(
            dev.poison().collect::<Vec<_>>(),
            [(WIN + VIRTIO_MEM_EXTENT_ALIGN + 0x1000, 0x1000)]
        );
        assert_eq!(d.drain_log().len(), 2);
    }

    #[test]
    fn hostile_events_are_reported_and_ignored() {
        let mut d = ready();
        offer(&mut d, 1, &[rec(1, 0, 4, 0, 0)]);
        d.poll().unwrap();
        d.drain_log();
        let t = d.transport_mut();
        t.push_raw(vec![0xff; 128], 128); // unknown type
        t.push_raw(vec![0; 128], 64); // short used length
        t.push_raw(vec![0; 128], 0); // nothing written
        t.push_event(&Event::Metadata {
            record: rec(9, 0, 4, 0, 0),
        });
        t.push_event(&Event::Metadata {
            record: rec(1, 0, 5, 0, 0),
        });
        t.push_event(&Event::Metadata {
            record: rec(1, 3, 4, 0, 0),
        });
        t.push_event(&Event::Poison {
            record: rec(1, 0, 4, 0, 0),
            offset: VIRTIO_MEM_EXTENT_ALIGN - 4096,
            length: 8192,
        });
        t.push_event(&Event::Poison {
            record: rec(1, 0, 4, 0, 0),
            offset: u64::MAX,
            length: 2,
        });
        t.push_event(&Event::ReleaseRequest {
            record: rec(7, 0, 0, 0, 0),
        });
        assert_eq!(d.poll(), Ok(9));
        use DriverError::*;
        assert_eq!(
            protocol_errors(&d.drain_log()),
            [
                BadEvent(WireError::UnknownType(0xffff)),
                EventLength(64),
                EventLength(0),
                UnknownExtent(9),
                TagMismatch(1),
                ExtentMoved(1),
                PoisonOutOfRange {
                    extent_id: 1,
                    offset: VIRTIO_MEM_EXTENT_ALIGN - 4096,
                    length: 8192
                },
                PoisonOutOfRange {
                    extent_id: 1,
                    offset: u64::MAX,
                    length: 2
                },
                UnknownExtent(7),
            ]
        );
        let dev = d.lookup(&[4; 16]).unwrap();
        assert!(dev.extents[0].poison.is_empty());
        assert_eq!(dev.perf.read_latency_ns, 200);
        assert_eq!(d.transport().tagged_requests().len(), 1, "no request was sent");
    }

    #[test]
    fn overflowing_chain_is_rejected_whole() {
        let mut d = ready();
        // The device claims max_pending 2, then offers three extents in one chain.
        d.transport_mut().config[72..76].copy_from_slice(&2u32.to_le_bytes());
        d.init().unwrap();
        let recs = [rec(1, 0, 0, 0, 0), rec(2, 1, 0, 0, 0), rec(3, 2, 0, 0, 0)];
        offer(&mut d, 7, &recs);
        d.poll().unwrap();
        assert_eq!(accepts(&d), [(7, vec![])]);
        let log = d.drain_log();
        let overflow = DriverError::ChainOverflow {
            chain_id: 7,
            dropped: 1,
        };
        assert_eq!(protocol_errors(&log), [overflow]);
        let rejected = log
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    DriverEvent::Rejected {
                        reason: RejectReason::ChainOverflow,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(rejected, 2);
    }

    #[test]
    fn offer_for_a_closed_unanswered_chain_is_ignored() {
        let mut d = ready();
        // Wedge guestq so the closed chain cannot be answered yet.
        d.transport_mut().responder = Box::new(|_, _| None);
        assert_eq!(d.plug(0, 1), Err(DriverError::Timeout));
        d.transport_mut().responder = ack_all();
        offer(&mut d, 1, &[rec(1, 0, 0, 0, 0)]);
        offer(&mut d, 1, &[rec(2, 1, 0, 0, 0)]);
        d.poll().unwrap();
        assert!(protocol_errors(&d.drain_log()).contains(&DriverError::OfferAfterClose(1)));
        d.transport_mut().complete_held();
        d.poll().unwrap();
        assert_eq!(accepts(&d), [(1, vec![1])]);
        // After the answer the chain id is free again; a new chain under it is screened afresh.
        offer(&mut d, 1, &[rec(1, 5, 0, 0, 0)]);
        d.poll().unwrap();
        assert_eq!(accepts(&d)[1], (1, vec![]), "extent 1 is already accepted");
    }

    #[test]
    fn hostile_used_ring_on_eventq() {
        let mut d = ready();
        let layout = d.transport().queues[1].as_ref().unwrap().layout;
        // A used element naming a head that does not exist.
        let mem = d.dma().clone();
        mem.write(layout.used + 4, &99u32.to_le_bytes());
        mem.write(layout.used + 8, &128u32.to_le_bytes());
        mem.write_le16(layout.used + 2, 1);
        assert_eq!(d.poll(), Ok(1));
        assert_eq!(
            protocol_errors(&d.drain_log()),
            [DriverError::Queue(QueueError::BadUsedId(99))]
        );
        mem.write_le16(layout.used + 2, 500);
        assert!(matches!(
            d.poll(),
            Err(DriverError::Queue(QueueError::BadUsedIndex { .. }))
        ));
    }
}
