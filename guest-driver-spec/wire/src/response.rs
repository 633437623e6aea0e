//! The device's answer to a request, typed: one value for base and tagged responses, encoded to
//! the wire struct the request's kind calls for.

use crate::*;

/// A device response: its status (`VIRTIO_MEM_RESP_*`), a reason (`VIRTIO_MEM_REASON_*`, tagged
/// responses only) and a payload (the block state of a base STATE answer; the extent count of a
/// tagged ACCEPT, RELEASE or LIST answer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// One of the `VIRTIO_MEM_RESP_*` values.
    pub status: u16,
    /// One of the `VIRTIO_MEM_REASON_*` values; base responses carry none.
    pub reason: u16,
    /// Base: the `VIRTIO_MEM_STATE_*` of a STATE answer; tagged: the `value` field.
    pub payload: u32,
}

impl Response {
    /// ACK carrying `payload`.
    pub const fn ack(payload: u32) -> Self {
        Response {
            status: VIRTIO_MEM_RESP_ACK,
            reason: reason::NONE,
            payload,
        }
    }

    /// ERROR for `reason` (base responses pass [`reason::NONE`]).
    pub const fn error(reason: u16) -> Self {
        Response {
            status: VIRTIO_MEM_RESP_ERROR,
            reason,
            payload: 0,
        }
    }

    /// A response of `status` with no reason and no payload (NACK, BUSY).
    pub const fn status(status: u16) -> Self {
        Response {
            status,
            reason: reason::NONE,
            payload: 0,
        }
    }

    /// True for an ACK.
    pub const fn is_ack(&self) -> bool {
        self.status == VIRTIO_MEM_RESP_ACK
    }

    /// The base response struct (the payload's low 16 bits are the state; base responses carry
    /// no reason).
    pub fn to_base(&self) -> VirtioMemResp {
        VirtioMemResp::new(self.status, u16::try_from(self.payload).unwrap_or(u16::MAX))
    }

    /// The tagged response struct.
    pub fn to_tagged(&self) -> TaggedResp {
        TaggedResp::new(self.status, self.reason, self.payload)
    }
}

impl From<&VirtioMemResp> for Response {
    fn from(r: &VirtioMemResp) -> Self {
        Response {
            status: r.resp_type.get(),
            reason: reason::NONE,
            payload: u32::from(r.state.get()),
        }
    }
}

impl From<&TaggedResp> for Response {
    fn from(r: &TaggedResp) -> Self {
        Response {
            status: r.resp_type.get(),
            reason: r.reason.get(),
            payload: r.value.get(),
        }
    }
}

impl WireError {
    /// Size of the response a device writes for a request that failed to parse: the tagged size
    /// when the type was a tagged one cut short, the base size otherwise (an unknown type, or
    /// no type at all).
    pub fn response_size(&self) -> usize {
        match *self {
            WireError::TooShort { need, .. } if need == VIRTIO_MEM_TAGGED_REQ_SIZE => {
                VIRTIO_MEM_TAGGED_RESP_SIZE
            }
            _ => VIRTIO_MEM_RESP_SIZE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_round_trip_through_both_wire_forms() {
        let r = Response::ack(7);
        assert_eq!(Response::from(&r.to_tagged()), r);
        let t = r.to_tagged();
        assert_eq!(
            (t.resp_type.get(), t.reason.get(), t.value.get()),
            (VIRTIO_MEM_RESP_ACK, 0, 7)
        );
        let s = Response::ack(u32::from(VIRTIO_MEM_STATE_MIXED)).to_base();
        assert_eq!(
            (s.resp_type.get(), s.state.get()),
            (VIRTIO_MEM_RESP_ACK, VIRTIO_MEM_STATE_MIXED)
        );
        assert_eq!(
            Response::from(&s),
            Response::ack(u32::from(VIRTIO_MEM_STATE_MIXED))
        );
        let e = Response::error(reason::BAD_LENGTH);
        assert!(!e.is_ack());
        assert_eq!(Response::from(&e.to_tagged()), e);
        // A base response has no reason field: only the status survives.
        assert_eq!(
            Response::from(&e.to_base()),
            Response::status(VIRTIO_MEM_RESP_ERROR)
        );
        assert_eq!(
            Response::status(VIRTIO_MEM_RESP_BUSY).to_base().resp_type.get(),
            VIRTIO_MEM_RESP_BUSY
        );
    }

    #[test]
    fn a_request_that_fails_to_parse_is_answered_in_its_kind() {
        let short_tagged = Request::parse(&VIRTIO_MEM_REQ_ACCEPT.to_le_bytes()).unwrap_err();
        assert_eq!(short_tagged.response_size(), VIRTIO_MEM_TAGGED_RESP_SIZE);
        let short_base = Request::parse(&VIRTIO_MEM_REQ_PLUG.to_le_bytes()).unwrap_err();
        assert_eq!(short_base.response_size(), VIRTIO_MEM_RESP_SIZE);
        assert_eq!(
            Request::parse(&[]).unwrap_err().response_size(),
            VIRTIO_MEM_RESP_SIZE
        );
        let unknown = Request::parse(&0xffffu16.to_le_bytes()).unwrap_err();
        assert_eq!(unknown.response_size(), VIRTIO_MEM_RESP_SIZE);
    }
}
