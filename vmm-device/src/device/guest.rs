//! The guest side: requests on guestq decoded once and answered with a [`Response`], and events
//! written into eventq buffers.

use super::*;

impl<M: GuestAddressSpace> TaggedMemDevice<M> {
    pub(super) fn process_guestq(&mut self) {
        let Some(mem) = self.mem.clone() else { return };
        let m = mem.memory();
        let cap = wire::VIRTIO_MEM_TAGGED_REQ_SIZE + 8 * self.cfg.max_pending as usize;
        let mut used = false;
        loop {
            let Some(q) = self.queues.get_mut(usize::from(wire::VIRTIO_MEM_GUESTQ)) else {
                return;
            };
            let Some(chain) = q.pop_descriptor_chain(&*m) else {
                break;
            };
            let head = chain.head_index();
            let (table, size) = (GuestAddress(q.desc_table()), q.size());
            self.metrics.requests.inc();
            let parsed = if indirect_tables_fit(&*m, table, size, head) {
                parse_chain(&*m, chain, cap, size)
            } else {
                Err(ChainError::TooLong { max: size })
            };
            let len = match parsed {
                Ok(parsed) => self.handle_request(&*m, &parsed),
                Err(_) => {
                    self.metrics.bad_chains.inc();
                    0
                }
            };
            if self.queues[0].add_used(&*m, head, len).is_err() {
                self.metrics.bad_chains.inc();
            }
            used = true;
        }
        if used && self.queues[0].needs_notification(&*m).unwrap_or(true) {
            self.metrics.guestq_interrupts.inc();
            self.notifier.signal_used_queue(wire::VIRTIO_MEM_GUESTQ);
        }
    }

    /// Handles one request; returns the used length (0 when no response could be written). The
    /// request is decoded once; its kind decides the response's wire form and the room it needs.
    pub(super) fn handle_request<G: GuestMemory>(&mut self, mem: &G, p: &ParsedChain) -> u32 {
        let parsed = Request::parse(&p.readable);
        let room = match &parsed {
            Ok((req, _)) => req.response_size(),
            Err(e) => e.response_size(),
        };
        if p.writable_len < room as u64 {
            // [T-Q-3]: no room for the response: no action.
            self.metrics.bad_chains.inc();
            return 0;
        }
        let resp: Vec<u8> = match parsed {
            Ok((Request::List { first_id, count }, _)) if self.tagged_negotiated() => {
                self.list(first_id, count, p)
            }
            Ok((req, _)) if req.is_tagged() => {
                let r = self.handle_tagged(req, p);
                if !r.is_ack() {
                    self.metrics.tagged_errors.inc();
                }
                r.to_tagged().as_bytes().to_vec()
            }
            Ok((req, _)) => {
                let r = self.handle_base(req);
                if !r.is_ack() {
                    self.metrics.base_errors.inc();
                }
                r.to_base().as_bytes().to_vec()
            }
            Err(e) if e.response_size() == wire::VIRTIO_MEM_TAGGED_RESP_SIZE => {
                self.metrics.tagged_errors.inc();
                Response::error(reason::BAD_LENGTH)
                    .to_tagged()
                    .as_bytes()
                    .to_vec()
            }
            Err(_) => {
                self.metrics.base_errors.inc();
                Response::error(reason::NONE).to_base().as_bytes().to_vec()
            }
        };
        write_response(mem, p, &resp).unwrap_or(0)
    }

    pub(super) fn base_mapping(&self, first_block: usize, count: usize) -> Option<Mapping> {
        let src = self.cfg.region_source?;
        let off = first_block as u64 * self.cfg.block_size;
        Some(Mapping {
            gpa: self.blocks.block_addr(first_block),
            len: count as u64 * self.cfg.block_size,
            source: SourceRef {
                id: src.id,
                offset: src.offset + off,
            },
            readonly: false,
        })
    }

    /// Base virtio-mem request; the payload of an ACK to STATE is the state. A mapper failure
    /// answers BUSY with the state unchanged ([T-BASE-3], [T-BASE-4]): Linux retries BUSY later,
    /// while ERROR marks the device broken for good.
    pub(super) fn handle_base(&mut self, req: Request) -> Response {
        const ACK: Response = Response::ack(0);
        const BUSY: Response = Response::status(wire::VIRTIO_MEM_RESP_BUSY);
        const ERR: Response = Response::error(reason::NONE);
        match req {
            Request::Plug { addr, nb_blocks } => {
                let Some(r) = self.blocks.check(addr, nb_blocks) else {
                    return ERR;
                };
                if let Err(t) = self.blocks.plan_plug(r) {
                    return Response::status(t);
                }
                let Some(m) = self.base_mapping(r.first, r.count) else {
                    return ERR;
                };
                if self.map_counted(&m).is_err() {
                    self.metrics.map_failures.inc();
                    return BUSY;
                }
                self.blocks.set(r, true);
                self.bump_config();
                ACK
            }
            Request::Unplug { addr, nb_blocks } => {
                let Some(r) = self.blocks.check(addr, nb_blocks) else {
                    return ERR;
                };
                if let Err(t) = self.blocks.plan_unplug(r) {
                    return Response::status(t);
                }
                let Some(m) = self.base_mapping(r.first, r.count) else {
                    return ERR;
                };
                if self.unmap_counted(&m).is_err() {
                    self.metrics.map_failures.inc();
                    return BUSY;
                }
                self.blocks.set(r, false);
                self.bump_config();
                ACK
            }
            // UNPLUG_ALL answers only ACK or BUSY: a run that could not be unmapped stays plugged.
            Request::UnplugAll => {
                if self.unplug_all() {
                    ACK
                } else {
                    BUSY
                }
            }
            Request::State { addr, nb_blocks } => match self.blocks.check(addr, nb_blocks) {
                Some(r) => Response::ack(u32::from(self.blocks.state(r))),
                None => ERR,
            },
            _ => ERR,
        }
    }

    /// Unplugs every plugged run; false if a run could not be unmapped (it stays plugged).
    pub(super) fn unplug_all(&mut self) -> bool {
        let mut ok = true;
        for r in self.blocks.plugged_runs() {
            let Some(m) = self.base_mapping(r.first, r.count) else {
                continue;
            };
            if self.unmap_counted(&m).is_ok() {
                self.blocks.set(r, false);
            } else {
                self.metrics.map_failures.inc();
                ok = false;
            }
        }
        self.bump_config();
        ok
    }

    /// Tagged request other than LIST.
    pub(super) fn handle_tagged(&mut self, req: Request, p: &ParsedChain) -> Response {
        if !self.tagged_negotiated() {
            return Response::error(reason::NOT_NEGOTIATED);
        }
        match req {
            Request::Accept { chain_id, count } => {
                let n = count as usize;
                let expect = wire::VIRTIO_MEM_TAGGED_REQ_SIZE as u64 + 8 * u64::from(count);
                if n > self.cfg.max_pending as usize || p.readable_len != expect {
                    return Response::error(reason::BAD_LENGTH);
                }
                let ids: Vec<u64> = p.readable[wire::VIRTIO_MEM_TAGGED_REQ_SIZE..]
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect();
                if ids.len() != n {
                    return Response::error(reason::BAD_LENGTH);
                }
                self.accept(chain_id, &ids)
            }
            Request::Release { extent_id, tag } => {
                let group = match self.table.plan_release(extent_id, &tag) {
                    Ok(g) => g,
                    Err(r) => return Response::error(r),
                };
                match self.release_group(&group) {
                    Ok(n) => Response::ack(n),
                    Err(()) => Response::error(reason::MAP_FAILED),
                }
            }
            Request::ReleaseBusy { extent_id, tag } => match self.table.defer_release(extent_id, &tag) {
                Ok(group) => {
                    self.host_events
                        .push(HostEvent::ReleaseDeferred { extents: group });
                    Response::ack(0)
                }
                Err(r) => Response::error(r),
            },
            _ => Response::error(reason::WRONG_STATE),
        }
    }

    /// LIST ([T-LIST-1]): the response and up to `count` records of accepted extents from
    /// `first_id` on, or a BAD_LENGTH response.
    pub(super) fn list(&mut self, first_id: u64, count: u32, p: &ParsedChain) -> Vec<u8> {
        let room = wire::VIRTIO_MEM_TAGGED_RESP_SIZE as u64
            + wire::VIRTIO_MEM_EXTENT_RECORD_SIZE as u64 * u64::from(count);
        if count == 0 || count > wire::VIRTIO_MEM_LIST_MAX || p.writable_len < room {
            self.metrics.tagged_errors.inc();
            return Response::error(reason::BAD_LENGTH)
                .to_tagged()
                .as_bytes()
                .to_vec();
        }
        let records = self.table.list(first_id, count as usize);
        let n = u32::try_from(records.len()).unwrap_or(u32::MAX);
        let mut out = Response::ack(n).to_tagged().as_bytes().to_vec();
        for r in &records {
            out.extend_from_slice(r.as_bytes());
        }
        out
    }

    pub(super) fn accept(&mut self, chain_id: u64, ids: &[u64]) -> Response {
        let plan = match self.table.plan_accept(chain_id, ids) {
            Ok(p) => p,
            Err(r) => return Response::error(r),
        };
        // One mapper call for the whole chain: the mapper merges neighbours before it creates
        // memslots, and on error leaves nothing of the chain mapped ([T-ACCEPT-5]).
        let maps: Vec<Mapping> = plan.accepted.iter().map(|(_, m)| *m).collect();
        if let Err(e) = self.map_batch_counted(&maps) {
            self.metrics.map_failures.inc();
            let extents = self.table.drop_chain(chain_id, false);
            self.host_events.push(HostEvent::ChainDropped {
                chain_id,
                extents,
                reason: format!("mapping failed: {}", e.chain()),
            });
            return Response::error(reason::MAP_FAILED);
        }
        self.table.commit_accept(&plan);
        let accepted: Vec<u64> = plan.accepted.iter().map(|(id, _)| *id).collect();
        self.metrics.extents_accepted.add(accepted.len() as u64);
        self.metrics.extents_rejected.add(plan.rejected.len() as u64);
        let n = u32::try_from(accepted.len()).unwrap_or(u32::MAX);
        self.host_events.push(HostEvent::ChainAnswered {
            chain_id,
            accepted,
            rejected: plan.rejected,
        });
        self.bump_config();
        Response::ack(n)
    }

    /// Unmaps and forgets a group; on an unmap failure restores what it unmapped and keeps it.
    pub(super) fn release_group(&mut self, group: &[u64]) -> Result<u32, ()> {
        let maps: Vec<Mapping> = group.iter().filter_map(|id| self.table.mapping(*id)).collect();
        // One mapper call for the whole group; on error it stays mapped and accepted.
        if self.unmap_batch_counted(&maps).is_err() {
            self.metrics.map_failures.inc();
            return Err(());
        }
        let removed = self.table.commit_release(group);
        self.metrics.extents_released.add(removed.len() as u64);
        let n = u32::try_from(removed.len()).unwrap_or(u32::MAX);
        self.host_events.push(HostEvent::Released {
            extents: removed.iter().map(|e| (e.id, e.source)).collect(),
        });
        self.bump_config();
        Ok(n)
    }

    /// Writes queued events into eventq buffers while both exist ([T-Q-5]).
    pub(super) fn deliver_events(&mut self) {
        if !self.tagged_negotiated() {
            return;
        }
        let Some(mem) = self.mem.clone() else { return };
        let m = mem.memory();
        let mut used = false;
        while let Some(ev) = self.table.peek_event() {
            let msg = EventMsg::from(ev);
            let Some(q) = self.queues.get_mut(usize::from(wire::VIRTIO_MEM_EVENTQ)) else {
                return;
            };
            let Some(chain) = q.pop_descriptor_chain(&*m) else {
                break;
            };
            let head = chain.head_index();
            let fits = indirect_tables_fit(&*m, GuestAddress(q.desc_table()), q.size(), head);
            // [T-Q-5]: any device-readable descriptor, even an empty one, disqualifies the buffer.
            let len = match parse_chain(&*m, chain, 0, q.size()) {
                Ok(p) if fits && p.readable_descs == 0 => {
                    write_response(&*m, &p, msg.as_bytes()).unwrap_or(0)
                }
                _ => 0,
            };
            if len > 0 {
                self.table.commit_event();
                self.metrics.events_delivered.inc();
            } else {
                self.metrics.bad_event_buffers.inc();
            }
            if self.queues[1].add_used(&*m, head, len).is_err() {
                self.metrics.bad_event_buffers.inc();
            }
            used = true;
        }
        if used && self.queues[1].needs_notification(&*m).unwrap_or(true) {
            self.metrics.eventq_interrupts.inc();
            self.notifier.signal_used_queue(wire::VIRTIO_MEM_EVENTQ);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_utils::Harness;
    use tagmem_wire::*;

    #[test]
    fn a_request_cut_short_is_answered_in_its_own_kind() {
        let mut h = Harness::tagged();
        // A tagged type with a short header: the tagged response, BAD_LENGTH.
        let (n, b) = h.request(&VIRTIO_MEM_REQ_ACCEPT.to_le_bytes(), 16);
        assert_eq!(n as usize, VIRTIO_MEM_TAGGED_RESP_SIZE);
        let r = Response::from(&TaggedResp::read_from_bytes(&b[..]).unwrap());
        assert_eq!(r, Response::error(reason::BAD_LENGTH));
        // A base type with a short header: the base response, ERROR.
        let (n, b) = h.request(&VIRTIO_MEM_REQ_PLUG.to_le_bytes(), 16);
        assert_eq!(n as usize, VIRTIO_MEM_RESP_SIZE);
        let r = Response::from(&VirtioMemResp::read_from_bytes(&b[..]).unwrap());
        assert_eq!(r.status, VIRTIO_MEM_RESP_ERROR);
        // Room for a base response only: a tagged request is not acted on.
        let req = TaggedReq::new(VIRTIO_MEM_REQ_LIST, 0, [0; 16], 1);
        let (n, _) = h.request(req.as_bytes(), 10);
        assert_eq!(n, 0);
    }

    #[test]
    fn state_answers_carry_the_state_as_payload() {
        let mut h = Harness::tagged();
        let cfg = Harness::config();
        let plug = VirtioMemReq::new(VIRTIO_MEM_REQ_PLUG, cfg.region_addr, 2);
        let (_, b) = h.request(plug.as_bytes(), 10);
        assert!(Response::from(&VirtioMemResp::read_from_bytes(&b[..]).unwrap()).is_ack());
        let state = |h: &mut Harness, n| {
            let req = VirtioMemReq::new(VIRTIO_MEM_REQ_STATE, cfg.region_addr, n);
            let (_, b) = h.request(req.as_bytes(), 10);
            Response::from(&VirtioMemResp::read_from_bytes(&b[..]).unwrap())
        };
        assert_eq!(
            state(&mut h, 2),
            Response::ack(u32::from(VIRTIO_MEM_STATE_PLUGGED))
        );
        assert_eq!(state(&mut h, 4), Response::ack(u32::from(VIRTIO_MEM_STATE_MIXED)));
    }
}
