//! Re-learning accepted capacity after (re)initialisation: the LIST walk (SPEC.md [T-LIST-2]).

use super::*;

impl<T: Transport, D: DmaMemory> TagMemDriver<T, D> {
    /// Walks LIST from the first extent id to the end and exposes what it lists, grouped into
    /// devices as an accepted chain would be; records that fail the driver's checks are logged
    /// and not exposed.
    pub(super) fn relearn(&mut self) -> Result<(), DriverError> {
        let expected = self.tagged_config.map_or(0, |c| c.accepted_extents.get());
        // A device that keeps listing past what it reported is cut off after one spare page.
        let max_pages = expected / LIST_PAGE + 2;
        let mut records: Vec<ExtentRecord> = Vec::new();
        let mut from = 0u64;
        for _ in 0..max_pages {
            let page = self.list_page(from)?;
            let n = page.len();
            let ordered = page
                .iter()
                .map(|r| r.extent_id.get())
                .try_fold(from, |prev, id| (id >= prev).then_some(id.saturating_add(1)));
            let Some(next) = ordered else {
                return Err(DriverError::BadList { from });
            };
            records.extend(page);
            if n < LIST_PAGE as usize {
                return self.expose_listed(&records);
            }
            from = next;
        }
        Err(DriverError::BadList { from })
    }

    /// One LIST page from extent id `from` on.
    fn list_page(&mut self, from: u64) -> Result<Vec<ExtentRecord>, DriverError> {
        let hdr = TaggedReq::new(VIRTIO_MEM_REQ_LIST, from, [0; 16], LIST_PAGE);
        self.dma.write(self.req_buf, hdr.as_bytes());
        let req = Buf {
            addr: self.req_buf,
            len: TAGGED_REQ_LEN,
        };
        let resp = Buf {
            addr: self.list_buf,
            len: LIST_BUF_LEN,
        };
        let len = self.submit(&[req], resp, TAGGED_RESP_LEN)?;
        let mut b = [0u8; VIRTIO_MEM_TAGGED_RESP_SIZE];
        self.dma.read(self.list_buf, &mut b);
        let answer = TaggedResponse::from_wire(Response::from(
            &TaggedResp::read_from_bytes(&b[..]).unwrap_or_default(),
        ))?;
        if answer.resp != MemResponse::Ack {
            return Err(DriverError::Refused(answer));
        }
        let n = answer.value;
        if n > LIST_PAGE || len != TAGGED_RESP_LEN + RECORD_LEN * n {
            return Err(DriverError::ResponseLength {
                need: TAGGED_RESP_LEN + RECORD_LEN * n.min(LIST_PAGE),
                got: len,
            });
        }
        let mut page = Vec::with_capacity(n as usize);
        for i in 0..u64::from(n) {
            let mut rb = [0u8; VIRTIO_MEM_EXTENT_RECORD_SIZE];
            self.dma.read(
                self.list_buf + u64::from(TAGGED_RESP_LEN) + u64::from(RECORD_LEN) * i,
                &mut rb,
            );
            page.push(ExtentRecord::read_from_bytes(&rb[..]).unwrap_or_default());
        }
        Ok(page)
    }

    /// Checks listed records as offered ones are checked ([T-SEC-7]) and creates their devices.
    fn expose_listed(&mut self, records: &[ExtentRecord]) -> Result<(), DriverError> {
        let window = self.tagged_config.map_or(Window::default(), |c| Window {
            addr: c.tagged_addr.get(),
            size: c.tagged_size.get(),
        });
        let s = screen(records, window, &self.registry);
        for (extent_id, reason) in s.rejected {
            self.push_log(DriverEvent::Protocol(DriverError::BadListedRecord {
                extent_id,
                reason,
            }));
        }
        let extents: Vec<u64> = s.candidates.iter().map(|e| e.id).collect();
        self.create_devices(s.candidates);
        self.push_log(DriverEvent::Relearned { extents });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::fake_device::*;

    /// Answers LIST from `records` (ascending ids), the rest as [`ack_all`] does.
    fn lister(records: Vec<ExtentRecord>) -> Responder {
        let mut base = ack_all();
        Box::new(move |req, ids| match *req {
            Request::List { first_id, count } => {
                let page: Vec<&ExtentRecord> = records
                    .iter()
                    .filter(|r| r.extent_id.get() >= first_id)
                    .take(count as usize)
                    .collect();
                let n = u32::try_from(page.len()).unwrap();
                let mut out = TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, n).as_bytes().to_vec();
                for r in page {
                    out.extend_from_slice(r.as_bytes());
                }
                Some(out)
            }
            _ => base(req, ids),
        })
    }

    /// A driver whose device holds `records` accepted (window of 128 slots).
    fn holding(records: Vec<ExtentRecord>) -> Drv {
        let mut d = driver_with(ALL_FEATURES);
        let dev = d.transport_mut();
        dev.config[64..72].copy_from_slice(&(128 * VIRTIO_MEM_EXTENT_ALIGN).to_le_bytes());
        let n = u32::try_from(records.len()).unwrap();
        dev.config[80..84].copy_from_slice(&n.to_le_bytes());
        dev.responder = lister(records);
        d
    }

    fn lists(d: &Drv) -> Vec<u64> {
        d.transport()
            .tagged_requests()
            .into_iter()
            .filter_map(|(r, _)| match r {
                Request::List { first_id, count } => {
                    assert_eq!(count, LIST_PAGE);
                    Some(first_id)
                }
                _ => None,
            })
            .collect()
    }

    /// [T-LIST-2] (item A2): init walks LIST page by page before it handles any event and
    /// exposes every listed extent as the accepted chain would have; after a reset it does so
    /// again.
    #[test]
    fn init_relearns_accepted_extents_through_list() {
        let mut records: Vec<ExtentRecord> = (1..=68).map(|i| rec(i, i, 0, 0, 0)).collect();
        records.push(rec(69, 80, 7, VIRTIO_MEM_EXTENT_F_SHARABLE, 1));
        records.push(rec(70, 81, 7, VIRTIO_MEM_EXTENT_F_SHARABLE, 0));
        records.push(rec(75, 90, 8, 0, 0));
        let mut d = holding(records);
        d.init().unwrap();
        assert_eq!(lists(&d), [0, 65], "pages from id 0, then from the last id + 1");
        assert_eq!(d.devices().len(), 68 + 2);
        let g = d.lookup(&[7; 16]).unwrap();
        assert_eq!(
            g.extents.iter().map(|e| e.id).collect::<Vec<_>>(),
            [70, 69],
            "seq order"
        );
        assert_eq!(d.lookup(&[8; 16]).unwrap().size, VIRTIO_MEM_EXTENT_ALIGN);
        let log = d.drain_log();
        assert!(matches!(log.last(), Some(DriverEvent::Relearned { extents }) if extents.len() == 71));
        // The device keeps the capacity across a reset; the driver forgets and lists it again.
        d.reset();
        assert!(d.devices().is_empty());
        d.init().unwrap();
        assert_eq!(d.devices().len(), 70);
        assert_eq!(lists(&d), [0, 65, 0, 65]);
        // And the capacity is usable as before: a release names the listed group.
        assert_eq!(d.release([7; 16]), Ok(0));
        assert!(d.lookup(&[7; 16]).is_none());
    }

    /// [T-SEC-7]: a listed record that fails the driver's checks is not exposed (and takes its
    /// tag group with it); a LIST out of order, or one that never ends, fails init.
    #[test]
    fn hostile_lists_are_refused() {
        let mut outside = rec(2, 0, 3, 0, 0);
        outside.addr.set(0);
        let mut d = holding(vec![rec(1, 1, 3, 0, 0), outside, rec(3, 2, 0, 0, 0)]);
        d.init().unwrap();
        assert_eq!(d.devices().len(), 1, "only the untagged extent 3");
        assert!(
            protocol_errors(&d.drain_log()).contains(&DriverError::BadListedRecord {
                extent_id: 2,
                reason: RejectReason::OutsideWindow
            })
        );

        let mut d = holding(Vec::new());
        d.transport_mut().responder = Box::new(|req, _| match *req {
            Request::List { .. } => {
                let mut out = TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, 2).as_bytes().to_vec();
                out.extend_from_slice(rec(5, 1, 0, 0, 0).as_bytes());
                out.extend_from_slice(rec(4, 2, 0, 0, 0).as_bytes());
                Some(out)
            }
            _ => None,
        });
        assert_eq!(d.init(), Err(DriverError::BadList { from: 0 }));
        assert_ne!(d.transport_mut().status() & status::FAILED, 0);

        // A device that lists full pages forever is cut off.
        let mut d = holding(Vec::new());
        let mut next = 1u64;
        d.transport_mut().responder = Box::new(move |req, _| match *req {
            Request::List { count, .. } => {
                let mut out = TaggedResp::new(VIRTIO_MEM_RESP_ACK, 0, count).as_bytes().to_vec();
                for _ in 0..count {
                    out.extend_from_slice(rec(next, 1, 0, 0, 0).as_bytes());
                    next += 1;
                }
                Some(out)
            }
            _ => None,
        });
        assert!(matches!(d.init(), Err(DriverError::BadList { .. })));
        assert!(
            lists(&d).len() <= 2,
            "accepted_extents 0: at most two pages asked"
        );

        // A LIST refused by the device fails init.
        let mut d = holding(Vec::new());
        d.transport_mut().responder = Box::new(|req, _| match *req {
            Request::List { .. } => Some(
                TaggedResp::new(VIRTIO_MEM_RESP_ERROR, VIRTIO_MEM_REASON_BAD_LENGTH, 0)
                    .as_bytes()
                    .to_vec(),
            ),
            _ => None,
        });
        assert!(matches!(d.init(), Err(DriverError::Refused(_))));
    }
}
