//! Requests on guestq: publishing a request, spinning for its answer, and the base virtio-mem
//! requests (PLUG, UNPLUG, UNPLUG_ALL, STATE).

use super::*;

impl<T: Transport, D: DmaMemory> TagMemDriver<T, D> {
    /// Publishes one request (readable `readable`, writable `resp`) and spins for the answer;
    /// returns the used length, checked to lie in `need..=resp.len`.
    pub(super) fn submit(&mut self, readable: &[Buf], resp: Buf, need: u32) -> Result<u32, DriverError> {
        let q = self.guestq.as_mut().ok_or(DriverError::NotInitialized)?;
        if let Some(stale) = self.stale {
            match q.pop_used(&self.dma)? {
                Some(u) if u.head == stale => self.stale = None,
                // Only the stale chain is in flight, so `pop_used` cannot return another head.
                Some(_) => {}
                None => return Err(DriverError::Stuck),
            }
        }
        self.dma.zero(resp.addr, resp.len as usize);
        let head = q.add(&self.dma, readable, &[resp])?;
        self.transport.notify(VIRTIO_MEM_GUESTQ);
        let mut spins = 0u64;
        let len = loop {
            match q.pop_used(&self.dma) {
                Ok(Some(u)) if u.head == head => break u.len,
                Ok(_) => {}
                Err(QueueError::BadUsedId(id)) => {
                    let e = DriverError::Queue(QueueError::BadUsedId(id));
                    push_bounded(&mut self.log, &mut self.log_dropped, DriverEvent::Protocol(e));
                }
                Err(e) => {
                    self.stale = Some(head);
                    return Err(e.into());
                }
            }
            spins += 1;
            if spins >= self.spin_limit {
                self.stale = Some(head);
                return Err(DriverError::Timeout);
            }
            self.transport.wait();
        };
        if len < need || len > resp.len {
            return Err(DriverError::ResponseLength { need, got: len });
        }
        Ok(len)
    }

    /// The response buffer of base and tagged requests other than LIST.
    pub(super) fn resp(&self) -> Buf {
        Buf {
            addr: self.resp_buf,
            len: RESP_BUF_LEN,
        }
    }

    pub(super) fn base_request(&mut self, req: VirtioMemReq) -> Result<Response, DriverError> {
        if !self.initialized {
            return Err(DriverError::NotInitialized);
        }
        self.dma.write(self.req_buf, req.as_bytes());
        let req = Buf {
            addr: self.req_buf,
            len: BASE_REQ_LEN,
        };
        self.submit(&[req], self.resp(), BASE_RESP_LEN)?;
        let mut b = [0u8; VIRTIO_MEM_RESP_SIZE];
        self.dma.read(self.resp_buf, &mut b);
        Ok(Response::from(
            &VirtioMemResp::read_from_bytes(&b[..]).unwrap_or_default(),
        ))
    }

    /// Sends a tagged request: the 40-byte header in one readable descriptor, the `le64` ids (if
    /// any) in a second, and a 16-byte writable response buffer.
    pub(super) fn tagged_request(
        &mut self,
        hdr: TaggedReq,
        ids: &[u64],
    ) -> Result<TaggedResponse, DriverError> {
        if !self.initialized {
            return Err(DriverError::NotInitialized);
        }
        if !self.tagged() {
            return Err(DriverError::NotNegotiated);
        }
        if ids.len() > self.pending_limit.max(1) {
            return Err(DriverError::TooManyIds(ids.len()));
        }
        self.dma.write(self.req_buf, hdr.as_bytes());
        let ids_addr = self.req_buf + u64::from(TAGGED_REQ_LEN);
        for (i, id) in ids.iter().enumerate() {
            self.dma.write(ids_addr + 8 * i as u64, &id.to_le_bytes());
        }
        let mut bufs = vec![Buf {
            addr: self.req_buf,
            len: TAGGED_REQ_LEN,
        }];
        if !ids.is_empty() {
            let len = u32::try_from(8 * ids.len()).map_err(|_| DriverError::TooManyIds(ids.len()))?;
            bufs.push(Buf { addr: ids_addr, len });
        }
        self.submit(&bufs, self.resp(), TAGGED_RESP_LEN)?;
        let mut b = [0u8; VIRTIO_MEM_TAGGED_RESP_SIZE];
        self.dma.read(self.resp_buf, &mut b);
        TaggedResponse::from_wire(Response::from(
            &TaggedResp::read_from_bytes(&b[..]).unwrap_or_default(),
        ))
    }

    /// PLUG `nb_blocks` blocks at `addr`.
    pub fn plug(&mut self, addr: u64, nb_blocks: u16) -> Result<MemResponse, DriverError> {
        let r = self.base_request(VirtioMemReq::new(VIRTIO_MEM_REQ_PLUG, addr, nb_blocks))?;
        MemResponse::from_wire(r.status)
    }

    /// UNPLUG `nb_blocks` blocks at `addr`.
    pub fn unplug(&mut self, addr: u64, nb_blocks: u16) -> Result<MemResponse, DriverError> {
        let r = self.base_request(VirtioMemReq::new(VIRTIO_MEM_REQ_UNPLUG, addr, nb_blocks))?;
        MemResponse::from_wire(r.status)
    }

    /// UNPLUG_ALL.
    pub fn unplug_all(&mut self) -> Result<MemResponse, DriverError> {
        let r = self.base_request(VirtioMemReq::new(VIRTIO_MEM_REQ_UNPLUG_ALL, 0, 0))?;
        MemResponse::from_wire(r.status)
    }

    /// STATE of `nb_blocks` blocks at `addr`.
    pub fn state(&mut self, addr: u64, nb_blocks: u16) -> Result<StateResponse, DriverError> {
        let r = self.base_request(VirtioMemReq::new(VIRTIO_MEM_REQ_STATE, addr, nb_blocks))?;
        let resp = MemResponse::from_wire(r.status)?;
        // A base response's payload is its 16-bit state field.
        let state = match (resp, u16::try_from(r.payload).unwrap_or(u16::MAX)) {
            (MemResponse::Ack, VIRTIO_MEM_STATE_PLUGGED) => Some(BlockState::Plugged),
            (MemResponse::Ack, VIRTIO_MEM_STATE_UNPLUGGED) => Some(BlockState::Unplugged),
            (MemResponse::Ack, VIRTIO_MEM_STATE_MIXED) => Some(BlockState::Mixed),
            (MemResponse::Ack, other) => return Err(DriverError::UnknownState(other)),
            _ => None,
        };
        Ok(StateResponse { resp, state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::fake_device::*;

    #[test]
    fn base_requests_and_typed_responses() {
        let mut d = ready();
        assert_eq!(d.plug(0x8000_0000, 4), Ok(MemResponse::Ack));
        let (req, _, descs) = d.transport().requests[0].clone();
        assert_eq!(
            req,
            Request::Plug {
                addr: 0x8000_0000,
                nb_blocks: 4
            }
        );
        assert_eq!((descs[0].len, descs[0].writable), (24, false));
        assert_eq!((descs[1].len, descs[1].writable), (16, true));
        assert_eq!(d.unplug(0x8000_0000, 4), Ok(MemResponse::Ack));
        assert_eq!(d.unplug_all(), Ok(MemResponse::Ack));
        assert_eq!(
            d.state(0x8000_0000, 2),
            Ok(StateResponse {
                resp: MemResponse::Ack,
                state: Some(BlockState::Mixed)
            })
        );
        d.transport_mut().responder =
            Box::new(|_, _| Some(VirtioMemResp::new(VIRTIO_MEM_RESP_NACK, 9).as_bytes().to_vec()));
        assert_eq!(d.plug(0x8000_0000, 1), Ok(MemResponse::Nack));
        assert_eq!(
            d.state(0, 1),
            Ok(StateResponse {
                resp: MemResponse::Nack,
                state: None
            })
        );
    }

    #[test]
    fn hostile_base_responses() {
        let mut d = ready();
        d.transport_mut().responder = Box::new(|_, _| Some(VirtioMemResp::new(7, 0).as_bytes().to_vec()));
        assert_eq!(d.plug(0, 1), Err(DriverError::UnknownResponse(7)));
        d.transport_mut().responder = Box::new(|_, _| Some(VirtioMemResp::new(0, 5).as_bytes().to_vec()));
        assert_eq!(d.state(0, 1), Err(DriverError::UnknownState(5)));
        d.transport_mut().responder = Box::new(|_, _| Some(vec![0; 4]));
        assert_eq!(
            d.plug(0, 1),
            Err(DriverError::ResponseLength { need: 10, got: 4 })
        );
        d.transport_mut().responder = Box::new(|_, _| Some(vec![0; 64]));
        assert_eq!(
            d.plug(0, 1),
            Err(DriverError::ResponseLength { need: 10, got: 64 })
        );
        // The driver keeps working afterwards.
        d.transport_mut().responder = ack_all();
        assert_eq!(d.plug(0, 1), Ok(MemResponse::Ack));
    }

    #[test]
    fn timeout_then_stuck_until_the_device_returns_the_request() {
        let mut d = ready();
        d.transport_mut().responder = Box::new(|_, _| None);
        assert_eq!(d.plug(0, 1), Err(DriverError::Timeout));
        d.transport_mut().responder = ack_all();
        assert_eq!(d.plug(0, 1), Err(DriverError::Stuck));
        assert_eq!(d.transport().requests.len(), 1, "nothing is sent while stuck");
        d.transport_mut().complete_held();
        assert_eq!(d.plug(0, 1), Ok(MemResponse::Ack));
    }
}
