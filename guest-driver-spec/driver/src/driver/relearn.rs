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
        let r = TaggedResp::read_from_bytes(&b[..]).unwrap_or_default();
        let answer = TaggedResponse {
            resp: MemResponse::from_wire(r.resp_type.get())?,
            reason: r.reason.get(),
            value: r.value.get(),
        };
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
