//! Typed views of the wire structs: what a request, response or event *means*.
//!
//! Parsing is total: every byte string maps to a value or a [`WireError`], never a panic.

use crate::*;

/// Why bytes could not be parsed as a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the message's fixed part needs.
    TooShort {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        got: usize,
    },
    /// The type field holds a value this revision does not define.
    UnknownType(u16),
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::TooShort { need, got } => write!(f, "message too short: need {need} bytes, got {got}"),
            WireError::UnknownType(t) => write!(f, "unknown message type {t:#x}"),
        }
    }
}

/// A driver request, base or tagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// VIRTIO_MEM_REQ_PLUG.
    Plug {
        /// First block address.
        addr: u64,
        /// Block count.
        nb_blocks: u16,
    },
    /// VIRTIO_MEM_REQ_UNPLUG.
    Unplug {
        /// First block address.
        addr: u64,
        /// Block count.
        nb_blocks: u16,
    },
    /// VIRTIO_MEM_REQ_UNPLUG_ALL.
    UnplugAll,
    /// VIRTIO_MEM_REQ_STATE.
    State {
        /// First block address.
        addr: u64,
        /// Block count.
        nb_blocks: u16,
    },
    /// VIRTIO_MEM_REQ_ACCEPT: `count` extent ids follow the header.
    Accept {
        /// The chain being answered.
        chain_id: u64,
        /// Number of `le64` ids after the header.
        count: u32,
    },
    /// VIRTIO_MEM_REQ_RELEASE.
    Release {
        /// An extent of the group.
        extent_id: u64,
        /// The group's tag.
        tag: [u8; 16],
    },
    /// VIRTIO_MEM_REQ_RELEASE_BUSY.
    ReleaseBusy {
        /// An extent of the group.
        extent_id: u64,
        /// The group's tag.
        tag: [u8; 16],
    },
    /// VIRTIO_MEM_REQ_LIST: accepted extents with an id of at least `first_id`, ascending.
    List {
        /// First extent id to list (0: from the start).
        first_id: u64,
        /// Most records wanted.
        count: u32,
    },
}

impl Request {
    /// Parses the fixed part of a request; returns it and how many bytes it took.
    pub fn parse(bytes: &[u8]) -> Result<(Request, usize), WireError> {
        let ty = match bytes.get(0..2) {
            Some(b) => u16::from_le_bytes([b[0], b[1]]),
            None => {
                return Err(WireError::TooShort {
                    need: 2,
                    got: bytes.len(),
                })
            }
        };
        match ty {
            VIRTIO_MEM_REQ_PLUG
            | VIRTIO_MEM_REQ_UNPLUG
            | VIRTIO_MEM_REQ_UNPLUG_ALL
            | VIRTIO_MEM_REQ_STATE => {
                let (r, _) = VirtioMemReq::read_from_prefix(bytes).map_err(|_| WireError::TooShort {
                    need: VIRTIO_MEM_REQ_SIZE,
                    got: bytes.len(),
                })?;
                let (addr, nb_blocks) = (r.addr.get(), r.nb_blocks.get());
                let req = match ty {
                    VIRTIO_MEM_REQ_PLUG => Request::Plug { addr, nb_blocks },
                    VIRTIO_MEM_REQ_UNPLUG => Request::Unplug { addr, nb_blocks },
                    VIRTIO_MEM_REQ_UNPLUG_ALL => Request::UnplugAll,
                    _ => Request::State { addr, nb_blocks },
                };
                Ok((req, VIRTIO_MEM_REQ_SIZE))
            }
            t if is_tagged_request(t) => {
                let (r, _) = TaggedReq::read_from_prefix(bytes).map_err(|_| WireError::TooShort {
                    need: VIRTIO_MEM_TAGGED_REQ_SIZE,
                    got: bytes.len(),
                })?;
                let req = match ty {
                    VIRTIO_MEM_REQ_ACCEPT => Request::Accept {
                        chain_id: r.id.get(),
                        count: r.count.get(),
                    },
                    VIRTIO_MEM_REQ_RELEASE => Request::Release {
                        extent_id: r.id.get(),
                        tag: r.tag,
                    },
                    VIRTIO_MEM_REQ_LIST => Request::List {
                        first_id: r.id.get(),
                        count: r.count.get(),
                    },
                    _ => Request::ReleaseBusy {
                        extent_id: r.id.get(),
                        tag: r.tag,
                    },
                };
                Ok((req, VIRTIO_MEM_TAGGED_REQ_SIZE))
            }
            other => Err(WireError::UnknownType(other)),
        }
    }

    /// True for the requests the tagged extension adds.
    pub fn is_tagged(&self) -> bool {
        matches!(
            self,
            Request::Accept { .. }
                | Request::Release { .. }
                | Request::ReleaseBusy { .. }
                | Request::List { .. }
        )
    }

    /// Size of the fixed response the device writes for this request (a LIST response carries
    /// its extent records after it).
    pub fn response_size(&self) -> usize {
        if self.is_tagged() {
            VIRTIO_MEM_TAGGED_RESP_SIZE
        } else {
            VIRTIO_MEM_RESP_SIZE
        }
    }
}

impl VirtioMemReq {
    /// Builds a base request.
    pub fn new(req_type: u16, addr: u64, nb_blocks: u16) -> Self {
        VirtioMemReq {
            req_type: Le16::new(req_type),
            addr: Le64::new(addr),
            nb_blocks: Le16::new(nb_blocks),
            ..Default::default()
        }
    }
}

impl VirtioMemResp {
    /// Builds a base response.
    pub fn new(resp_type: u16, state: u16) -> Self {
        VirtioMemResp {
            resp_type: Le16::new(resp_type),
            state: Le16::new(state),
            ..Default::default()
        }
    }
}

impl TaggedReq {
    /// Builds a tagged request header.
    pub fn new(req_type: u16, id: u64, tag: [u8; 16], count: u32) -> Self {
        TaggedReq {
            req_type: Le16::new(req_type),
            id: Le64::new(id),
            tag,
            count: Le32::new(count),
            ..Default::default()
        }
    }
}

impl TaggedResp {
    /// Builds a tagged response.
    pub fn new(resp_type: u16, reason: u16, value: u32) -> Self {
        TaggedResp {
            resp_type: Le16::new(resp_type),
            reason: Le16::new(reason),
            value: Le32::new(value),
            ..Default::default()
        }
    }
}

/// A device event, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// One extent of an offer chain; `more` is set on every event of the chain but the last.
    Offer {
        /// The chain.
        chain_id: u64,
        /// More events of this chain follow.
        more: bool,
        /// The offered extent.
        record: ExtentRecord,
    },
    /// The device asks the driver to release the group `record` belongs to.
    ReleaseRequest {
        /// An extent of the group (the lowest id).
        record: ExtentRecord,
    },
    /// New metadata for an accepted extent.
    Metadata {
        /// The extent with its updated fields.
        record: ExtentRecord,
    },
    /// Part of an accepted extent is poisoned.
    Poison {
        /// The extent.
        record: ExtentRecord,
        /// Offset of the poisoned range within the extent.
        offset: u64,
        /// Length of the poisoned range.
        length: u64,
    },
    /// An offer chain was abandoned; none of its extents can be accepted any more.
    ChainAbandoned {
        /// The chain.
        chain_id: u64,
    },
}

impl TryFrom<&EventMsg> for Event {
    type Error = WireError;

    fn try_from(m: &EventMsg) -> Result<Self, WireError> {
        let record = m.record;
        Ok(match m.event_type.get() {
            VIRTIO_MEM_EVT_OFFER => Event::Offer {
                chain_id: m.chain_id.get(),
                more: m.flags.get() & VIRTIO_MEM_EVT_F_MORE != 0,
                record,
            },
            VIRTIO_MEM_EVT_RELEASE_REQUEST => Event::ReleaseRequest { record },
            VIRTIO_MEM_EVT_METADATA => Event::Metadata { record },
            VIRTIO_MEM_EVT_POISON => Event::Poison {
                record,
                offset: m.arg0.get(),
                length: m.arg1.get(),
            },
            VIRTIO_MEM_EVT_CHAIN_ABANDONED => Event::ChainAbandoned {
                chain_id: m.chain_id.get(),
            },
            other => return Err(WireError::UnknownType(other)),
        })
    }
}

impl TryFrom<&[u8]> for Event {
    type Error = WireError;

    fn try_from(bytes: &[u8]) -> Result<Self, WireError> {
        let (m, _) = EventMsg::read_from_prefix(bytes).map_err(|_| WireError::TooShort {
            need: VIRTIO_MEM_EVENT_SIZE,
            got: bytes.len(),
        })?;
        Event::try_from(&m)
    }
}

impl From<&Event> for EventMsg {
    fn from(e: &Event) -> Self {
        let mut m = EventMsg::default();
        let (ty, flags) = match *e {
            Event::Offer {
                chain_id,
                more,
                record,
            } => {
                m.chain_id = Le64::new(chain_id);
                m.record = record;
                (VIRTIO_MEM_EVT_OFFER, if more { VIRTIO_MEM_EVT_F_MORE } else { 0 })
            }
            Event::ReleaseRequest { record } => {
                m.record = record;
                (VIRTIO_MEM_EVT_RELEASE_REQUEST, 0)
            }
            Event::Metadata { record } => {
                m.record = record;
                (VIRTIO_MEM_EVT_METADATA, 0)
            }
            Event::Poison {
                record,
                offset,
                length,
            } => {
                m.record = record;
                m.arg0 = Le64::new(offset);
                m.arg1 = Le64::new(length);
                (VIRTIO_MEM_EVT_POISON, 0)
            }
            Event::ChainAbandoned { chain_id } => {
                m.chain_id = Le64::new(chain_id);
                (VIRTIO_MEM_EVT_CHAIN_ABANDONED, 0)
            }
        };
        m.event_type = Le16::new(ty);
        m.flags = Le16::new(flags);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_requests_parse() {
        let r = VirtioMemReq::new(VIRTIO_MEM_REQ_PLUG, 0x4000_0000, 7);
        assert_eq!(
            Request::parse(r.as_bytes()),
            Ok((
                Request::Plug {
                    addr: 0x4000_0000,
                    nb_blocks: 7
                },
                24
            ))
        );
        let r = VirtioMemReq::new(VIRTIO_MEM_REQ_UNPLUG_ALL, 0, 0);
        assert_eq!(Request::parse(r.as_bytes()), Ok((Request::UnplugAll, 24)));
    }

    #[test]
    fn short_and_unknown_requests_are_errors() {
        assert_eq!(Request::parse(&[]), Err(WireError::TooShort { need: 2, got: 0 }));
        assert_eq!(
            Request::parse(&[0, 0, 0]),
            Err(WireError::TooShort { need: 24, got: 3 })
        );
        assert_eq!(
            Request::parse(&[4, 0, 0, 0]),
            Err(WireError::TooShort { need: 40, got: 4 })
        );
        assert_eq!(Request::parse(&[9, 0, 0, 0]), Err(WireError::UnknownType(9)));
        assert_eq!(
            Request::parse(&[0, 1, 0, 0]),
            Err(WireError::UnknownType(0x100)),
            "the old proposal's 0x100 is no request type"
        );
    }

    #[test]
    fn tagged_requests_parse() {
        let r = TaggedReq::new(VIRTIO_MEM_REQ_ACCEPT, 5, [0; 16], 3);
        assert_eq!(
            Request::parse(r.as_bytes()),
            Ok((
                Request::Accept {
                    chain_id: 5,
                    count: 3
                },
                40
            ))
        );
        let r = TaggedReq::new(VIRTIO_MEM_REQ_RELEASE, 9, [7; 16], 0);
        let (req, _) = Request::parse(r.as_bytes()).unwrap();
        assert_eq!(
            req,
            Request::Release {
                extent_id: 9,
                tag: [7; 16]
            }
        );
        assert_eq!(req.response_size(), VIRTIO_MEM_TAGGED_RESP_SIZE);
        let r = TaggedReq::new(VIRTIO_MEM_REQ_LIST, 17, [0; 16], 64);
        assert_eq!(
            Request::parse(r.as_bytes()),
            Ok((
                Request::List {
                    first_id: 17,
                    count: 64
                },
                40
            ))
        );
    }

    /// [T-REQ-1]: the tagged request types continue the base numbering, 4 to 7.
    #[test]
    fn tagged_request_types_continue_the_base_numbering() {
        let types = [
            VIRTIO_MEM_REQ_ACCEPT,
            VIRTIO_MEM_REQ_RELEASE,
            VIRTIO_MEM_REQ_RELEASE_BUSY,
            VIRTIO_MEM_REQ_LIST,
        ];
        assert_eq!(types, [4, 5, 6, 7]);
        assert!(types.iter().all(|t| is_tagged_request(*t)));
        assert!((0..4).chain(8..=u16::MAX).all(|t| !is_tagged_request(t)));
        assert_eq!(VIRTIO_MEM_REQ_STATE + 1, VIRTIO_MEM_REQ_ACCEPT);
    }

    #[test]
    fn events_round_trip() {
        let record = ExtentRecord {
            extent_id: Le64::new(4),
            length: Le64::new(VIRTIO_MEM_EXTENT_ALIGN),
            ..Default::default()
        };
        for e in [
            Event::Offer {
                chain_id: 2,
                more: true,
                record,
            },
            Event::Offer {
                chain_id: 2,
                more: false,
                record,
            },
            Event::ReleaseRequest { record },
            Event::Metadata { record },
            Event::Poison {
                record,
                offset: 4096,
                length: 4096,
            },
            Event::ChainAbandoned { chain_id: 3 },
        ] {
            let m = EventMsg::from(&e);
            assert_eq!(Event::try_from(m.as_bytes()), Ok(e));
        }
        assert_eq!(
            Event::try_from(&[0u8; 10][..]),
            Err(WireError::TooShort { need: 128, got: 10 })
        );
        assert_eq!(Event::try_from(&[0u8; 128][..]), Err(WireError::UnknownType(0)));
    }
}
