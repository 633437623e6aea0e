//! The wire format: requests, events and configuration space parsed from any bytes. Parsing is
//! total; what parses re-encodes to a message that parses to the same value.

use crate::proto::*;
use tagmem_wire::WireError;

/// The bytes a driver would send for `req` (reserved fields zero).
pub fn encode_request(req: &Request) -> Vec<u8> {
    match *req {
        Request::Plug { addr, nb_blocks } => VirtioMemReq::new(REQ_PLUG, addr, nb_blocks).as_bytes().to_vec(),
        Request::Unplug { addr, nb_blocks } => {
            VirtioMemReq::new(REQ_UNPLUG, addr, nb_blocks).as_bytes().to_vec()
        }
        Request::UnplugAll => VirtioMemReq::new(REQ_UNPLUG_ALL, 0, 0).as_bytes().to_vec(),
        Request::State { addr, nb_blocks } => {
            VirtioMemReq::new(REQ_STATE, addr, nb_blocks).as_bytes().to_vec()
        }
        Request::Accept { chain_id, count } => TaggedReq::new(REQ_ACCEPT, chain_id, [0; 16], count)
            .as_bytes()
            .to_vec(),
        Request::Release { extent_id, tag } => {
            TaggedReq::new(REQ_RELEASE, extent_id, tag, 0).as_bytes().to_vec()
        }
        Request::ReleaseBusy { extent_id, tag } => TaggedReq::new(REQ_RELEASE_BUSY, extent_id, tag, 0)
            .as_bytes()
            .to_vec(),
        Request::List { first_id, count } => TaggedReq::new(REQ_LIST, first_id, [0; 16], count)
            .as_bytes()
            .to_vec(),
    }
}

/// Parses `data` as a request, an event and the configuration structures; panics on any
/// inconsistency.
pub fn check(data: &[u8]) {
    match Request::parse(data) {
        Ok((req, n)) => {
            assert!(n <= data.len(), "parse claims more bytes than it was given");
            let again = encode_request(&req);
            assert_eq!(again.len(), n, "the parsed size is the message's size");
            assert_eq!(
                Request::parse(&again),
                Ok((req, n)),
                "re-encoded request parses alike"
            );
            assert_eq!(req.response_size() > BASE_RESP_SIZE, req.is_tagged());
            // The type and fields sit where the parse read them.
            assert_eq!(&again[..2], &data[..2]);
        }
        Err(WireError::TooShort { need, got }) => {
            assert_eq!(got, data.len());
            assert!(need > got);
        }
        Err(WireError::UnknownType(t)) => {
            assert_eq!(t.to_le_bytes(), [data[0], data[1]]);
        }
    }
    match Event::try_from(data) {
        Ok(ev) => {
            let m = EventMsg::from(&ev);
            assert_eq!(
                Event::try_from(m.as_bytes()),
                Ok(ev),
                "re-encoded event parses alike"
            );
            assert_eq!(&m.as_bytes()[..2], &data[..2], "event type");
        }
        Err(WireError::TooShort { need, got }) => assert!(need == EVENT_SIZE && got < need),
        Err(WireError::UnknownType(t)) => assert_eq!(t.to_le_bytes(), [data[0], data[1]]),
    }
    if let Ok((c, _)) = TaggedConfig::read_from_prefix(data) {
        assert_eq!(c.as_bytes(), &data[..c.as_bytes().len()]);
        assert_eq!(c.base.as_bytes(), &data[..56]);
    }
    if let Ok((r, _)) = ExtentRecord::read_from_prefix(data) {
        assert_eq!(r.as_bytes(), &data[..EXTENT_RECORD_SIZE]);
        let flags = tagmem_device::ExtentFlags::from_bits(r.flags.get());
        assert_eq!(
            flags.bits(),
            r.flags.get() & 3,
            "known flag bits survive a round trip"
        );
        let class = tagmem_device::SourceClass::decode(r.source);
        let back = tagmem_device::SourceClass::decode(class.to_wire());
        assert_eq!(back, class);
    }
    if let Ok((r, _)) = TaggedResp::read_from_prefix(data) {
        assert_eq!(r.as_bytes(), &data[..TAGGED_RESP_SIZE]);
    }
}
