//! The header of an RDMA message (a publish, a put or a get and their answers), carried in
//! a one-fragment message with [`VMI_FLAG_MSG`](crate::abi::VMI_FLAG_MSG) beside the
//! message-passing kinds (which use kind bytes 1–6; these use 16–24). No I/O: bytes in,
//! checked values out.
//!
//! ```text
//! 0 kind u8 | 1 flags u8 | 2 0 u16 | 4 status i32 | 8 op u64 | 16 buffer u64
//! 24 offset u64 | 32 len u64 | 40 ctx u32 | 44 0 u32 | 48 payload
//! ```
//!
//! - publish (16): `buffer` is the publisher's id for it, `len` its size, `ctx` the
//!   application's value, `offset` the publisher's 64-bit tag for it (VMI's `remoteCtx`), `op`
//!   its address in the publisher when the connection can reach it one-sided (0 otherwise); the payload is the application's payload. With flag bit 1
//!   the payload starts with a 24-byte attach block naming the memory object behind the
//!   address (`fd` u32, `key` u32, `inode` u64, `start` u64: the buffer's offset in it;
//!   `key` is the remote key the publisher's transport registered the buffer under, 0 when
//!   it registered none).
//! - put (17): op `op` writes its payload at `offset` of `buffer`; `len` is the payload's
//!   length; flag bit 0 asks the target to tell its application.
//! - put done (18): the target's answer to op `op`'s chunk at `offset`: `status`.
//! - get (19): op `op` reads `len` bytes at `offset` of `buffer`; flag bit 0 as for put.
//! - get data (20): the answer to op `op`'s chunk at `offset`: `status`, and on success
//!   `len` bytes of payload.
//! - release (21): the peer no longer uses `buffer` (VMI's `VMI_RDMA_Dealloc_Buffer`).
//! - withdraw (22): the publisher withdrew `buffer`; puts and gets on it now fail.
//! - put notice (23) and get notice (24): a put or get of `len` bytes at `offset` of
//!   `buffer` that took several chunks has ended; the target's application is told (a
//!   one-chunk put or get carries the notify flag itself).
//!
//! Everything comes from the peer and is checked: the kind, the reserved fields, the flags,
//! that only the kinds that carry a payload have one and that it matches `len`, the
//! payload's length against the limit, a status the kind may carry, and that `offset + len`
//! does not overflow.
#![forbid(unsafe_code)]

use crate::status::Status;

/// Bytes before the payload.
pub const HEADER: usize = 48;
/// The lowest RDMA kind byte (message-passing kinds are below it).
pub const FIRST_KIND: u8 = 16;

const PUBLISH: u8 = 16;
const PUT: u8 = 17;
const PUT_DONE: u8 = 18;
const GET: u8 = 19;
const GET_DATA: u8 = 20;
const RELEASE: u8 = 21;
const WITHDRAW: u8 = 22;
const PUT_NOTICE: u8 = 23;
const GET_NOTICE: u8 = 24;

/// Flag bit: tell the target's application (put and get).
const NOTIFY: u8 = 1;
/// Flag bit: a publish's payload starts with an attach block.
const ATTACH: u8 = 2;
/// Bytes of an attach block.
pub const ATTACH_LEN: usize = 24;

/// The memory object behind a published address, for a transport on the same host that
/// attaches it (see `VmiRdmaKey`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attach {
    /// The memfd's descriptor number in the publisher.
    pub fd: u32,
    /// The remote key the publisher's transport registered the buffer under (an RDMA NIC's
    /// rkey), 0 when none.
    pub key: u32,
    /// Its inode number.
    pub inode: u64,
    /// The buffer's offset in it.
    pub start: u64,
}

impl Attach {
    /// The block's bytes.
    pub fn encode(&self) -> [u8; ATTACH_LEN] {
        let mut b = [0u8; ATTACH_LEN];
        b[0..4].copy_from_slice(&self.fd.to_le_bytes());
        b[4..8].copy_from_slice(&self.key.to_le_bytes());
        b[8..16].copy_from_slice(&self.inode.to_le_bytes());
        b[16..24].copy_from_slice(&self.start.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Attach> {
        if b.len() < ATTACH_LEN {
            return None;
        }
        let u64_at = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(v)
        };
        Some(Attach {
            fd: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            key: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            inode: u64_at(8),
            start: u64_at(16),
        })
    }
}

/// What an RDMA message says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A buffer published to the peer; the application's payload follows.
    Publish {
        /// The publisher's id for it.
        buffer: u64,
        /// Its address in the publisher, for one-sided access (0: none).
        addr: u64,
        /// The memory object behind it, when the publisher offers it (the payload then
        /// starts with its block).
        attach: Option<Attach>,
        /// Its size in bytes.
        size: u64,
        /// The application's value (VMI's `ctx`).
        ctx: u32,
        /// The publisher's tag (VMI's `remoteCtx`).
        tag: u64,
    },
    /// A chunk of a put; its bytes follow.
    Put {
        /// The initiator's op.
        op: u64,
        /// The target buffer.
        buffer: u64,
        /// Where in it.
        offset: u64,
        /// Whether the target's application hears of it.
        notify: bool,
    },
    /// The target's answer to a put chunk.
    PutDone {
        /// The initiator's op.
        op: u64,
        /// The chunk's offset.
        offset: u64,
        /// How it went.
        status: Status,
    },
    /// A chunk of a get.
    Get {
        /// The initiator's op.
        op: u64,
        /// The buffer read.
        buffer: u64,
        /// Where in it.
        offset: u64,
        /// How many bytes.
        len: u64,
        /// Whether the target's application hears of it.
        notify: bool,
    },
    /// The target's answer to a get chunk; on success its bytes follow.
    GetData {
        /// The initiator's op.
        op: u64,
        /// The chunk's offset.
        offset: u64,
        /// How it went.
        status: Status,
    },
    /// The peer no longer uses a buffer published to it.
    Release {
        /// The publisher's id.
        buffer: u64,
    },
    /// The publisher withdrew a buffer.
    Withdraw {
        /// The publisher's id.
        buffer: u64,
    },
    /// A put or get over several chunks ended: tell the target's application.
    Notice {
        /// True for a get, false for a put.
        get: bool,
        /// The buffer.
        buffer: u64,
        /// The op's offset in it.
        offset: u64,
        /// The op's length.
        len: u64,
    },
}

/// Why bytes from the peer are not an RDMA message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the header.
    #[error("an RDMA message of {0} bytes, shorter than its {HEADER}-byte header")]
    Short(usize),
    /// The kind byte names no kind.
    #[error("an unknown RDMA message kind {0}")]
    Kind(u8),
    /// A field that must be zero is not.
    #[error("an RDMA {0} header with a field set that this kind does not use")]
    Reserved(&'static str),
    /// The payload's length is not what the header says.
    #[error("an RDMA {kind} with {len} bytes of payload where its header says {want}")]
    Payload {
        /// The kind, in words.
        kind: &'static str,
        /// Payload bytes.
        len: usize,
        /// What the header says.
        want: u64,
    },
    /// The payload is over the limit.
    #[error("an RDMA payload of {len} bytes, over the limit of {max}")]
    TooLarge {
        /// Payload bytes.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// `offset + len` overflows.
    #[error("an RDMA range at {offset} of {len} bytes that overflows")]
    Range {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// A status code vmi does not send.
    #[error("an RDMA answer with the status code {0}, which vmi does not send")]
    Status(i32),
}

/// The fields of a header, before they are checked against the kind.
#[derive(Default)]
struct Fields {
    kind: u8,
    flags: u8,
    status: i32,
    op: u64,
    buffer: u64,
    offset: u64,
    len: u64,
    ctx: u32,
}

impl Kind {
    /// The kind in words.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Publish { .. } => "publish",
            Kind::Put { .. } => "put",
            Kind::PutDone { .. } => "put answer",
            Kind::Get { .. } => "get",
            Kind::GetData { .. } => "get answer",
            Kind::Release { .. } => "release",
            Kind::Withdraw { .. } => "withdraw",
            Kind::Notice { get: false, .. } => "put notice",
            Kind::Notice { get: true, .. } => "get notice",
        }
    }

    /// The header's bytes, for a message whose payload is `payload` bytes long.
    pub fn encode(&self, payload: usize) -> [u8; HEADER] {
        let len = payload as u64;
        let f = match *self {
            Kind::Publish {
                buffer,
                addr,
                size,
                ctx,
                tag,
                attach,
            } => Fields {
                kind: PUBLISH,
                flags: if attach.is_some() { ATTACH } else { 0 },
                op: addr,
                offset: tag,
                buffer,
                len: size,
                ctx,
                ..Fields::default()
            },
            Kind::Put {
                op,
                buffer,
                offset,
                notify,
            } => Fields {
                kind: PUT,
                flags: if notify { NOTIFY } else { 0 },
                op,
                buffer,
                offset,
                len,
                ..Fields::default()
            },
            Kind::PutDone { op, offset, status } => Fields {
                kind: PUT_DONE,
                status: status.code(),
                op,
                offset,
                ..Fields::default()
            },
            Kind::Get {
                op,
                buffer,
                offset,
                len,
                notify,
            } => Fields {
                kind: GET,
                flags: if notify { NOTIFY } else { 0 },
                op,
                buffer,
                offset,
                len,
                ..Fields::default()
            },
            Kind::GetData { op, offset, status } => Fields {
                kind: GET_DATA,
                status: status.code(),
                op,
                offset,
                len,
                ..Fields::default()
            },
            Kind::Release { buffer } => Fields {
                kind: RELEASE,
                buffer,
                ..Fields::default()
            },
            Kind::Withdraw { buffer } => Fields {
                kind: WITHDRAW,
                buffer,
                ..Fields::default()
            },
            Kind::Notice {
                get,
                buffer,
                offset,
                len,
            } => Fields {
                kind: if get { GET_NOTICE } else { PUT_NOTICE },
                buffer,
                offset,
                len,
                ..Fields::default()
            },
        };
        let mut h = [0u8; HEADER];
        h[0] = f.kind;
        h[1] = f.flags;
        h[4..8].copy_from_slice(&f.status.to_le_bytes());
        h[8..16].copy_from_slice(&f.op.to_le_bytes());
        h[16..24].copy_from_slice(&f.buffer.to_le_bytes());
        h[24..32].copy_from_slice(&f.offset.to_le_bytes());
        h[32..40].copy_from_slice(&f.len.to_le_bytes());
        h[40..44].copy_from_slice(&f.ctx.to_le_bytes());
        h
    }

    /// Parses and checks a whole message; returns the kind and its payload. `max_payload`
    /// bounds a put's or a get answer's bytes and a publish's payload.
    pub fn decode(b: &[u8], max_payload: usize) -> Result<(Kind, &[u8]), WireError> {
        if b.len() < HEADER {
            return Err(WireError::Short(b.len()));
        }
        let (h, payload) = b.split_at(HEADER);
        let u64_at = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(v)
        };
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let f = Fields {
            kind: h[0],
            flags: h[1],
            status: u32_at(4) as i32,
            op: u64_at(8),
            buffer: u64_at(16),
            offset: u64_at(24),
            len: u64_at(32),
            ctx: u32_at(40),
        };
        if h[2] != 0 || h[3] != 0 || u32_at(44) != 0 {
            return Err(WireError::Reserved("message"));
        }
        let notify = f.flags == NOTIFY;
        let status = || {
            let s = Status::from_code(f.status);
            if s.code() == f.status {
                Ok(s)
            } else {
                Err(WireError::Status(f.status))
            }
        };
        // Per kind: the value, whether it carries a payload, and whether every field it
        // does not use is zero (so a peer cannot smuggle meaning into them).
        let (kind, carries, unused_clear) = match f.kind {
            PUBLISH => (
                Kind::Publish {
                    buffer: f.buffer,
                    addr: f.op,
                    size: f.len,
                    ctx: f.ctx,
                    tag: f.offset,
                    attach: if f.flags == ATTACH {
                        Some(Attach::decode(payload).ok_or(WireError::Reserved("publish"))?)
                    } else {
                        None
                    },
                },
                true,
                f.flags & !ATTACH == 0 && f.status == 0,
            ),
            PUT => (
                Kind::Put {
                    op: f.op,
                    buffer: f.buffer,
                    offset: f.offset,
                    notify,
                },
                true,
                f.flags & !NOTIFY == 0 && f.status == 0 && f.ctx == 0,
            ),
            PUT_DONE => (
                Kind::PutDone {
                    op: f.op,
                    offset: f.offset,
                    status: status()?,
                },
                false,
                f.flags == 0 && f.buffer == 0 && f.len == 0 && f.ctx == 0,
            ),
            GET => (
                Kind::Get {
                    op: f.op,
                    buffer: f.buffer,
                    offset: f.offset,
                    len: f.len,
                    notify,
                },
                false,
                f.flags & !NOTIFY == 0 && f.status == 0 && f.ctx == 0,
            ),
            GET_DATA => {
                let status = status()?;
                (
                    Kind::GetData {
                        op: f.op,
                        offset: f.offset,
                        status,
                    },
                    status == Status::Ok,
                    f.flags == 0 && f.buffer == 0 && f.ctx == 0,
                )
            }
            RELEASE | WITHDRAW => (
                if f.kind == RELEASE {
                    Kind::Release { buffer: f.buffer }
                } else {
                    Kind::Withdraw { buffer: f.buffer }
                },
                false,
                f.flags == 0
                    && f.status == 0
                    && f.op == 0
                    && f.offset == 0
                    && f.len == 0
                    && f.ctx == 0,
            ),
            PUT_NOTICE | GET_NOTICE => (
                Kind::Notice {
                    get: f.kind == GET_NOTICE,
                    buffer: f.buffer,
                    offset: f.offset,
                    len: f.len,
                },
                false,
                f.flags == 0 && f.status == 0 && f.op == 0 && f.ctx == 0,
            ),
            k => return Err(WireError::Kind(k)),
        };
        if !unused_clear {
            return Err(WireError::Reserved(kind.name()));
        }
        // How many payload bytes the header announces.
        let want = match kind {
            Kind::Put { .. } => f.len,
            Kind::GetData {
                status: Status::Ok, ..
            } => f.len,
            Kind::Publish { .. } => payload.len() as u64,
            _ => 0,
        };
        if want > max_payload as u64 {
            return Err(WireError::TooLarge {
                len: want,
                max: max_payload,
            });
        }
        if payload.len() as u64 != want || (!carries && !payload.is_empty()) {
            return Err(WireError::Payload {
                kind: kind.name(),
                len: payload.len(),
                want,
            });
        }
        // A publish's attach block is not the application's payload.
        let payload = match kind {
            Kind::Publish {
                attach: Some(_), ..
            } => &payload[ATTACH_LEN..],
            _ => payload,
        };
        let range_len = match kind {
            Kind::Put { .. } | Kind::Get { .. } | Kind::GetData { .. } | Kind::Notice { .. } => {
                f.len
            }
            _ => 0,
        };
        if f.offset.checked_add(range_len).is_none() {
            return Err(WireError::Range {
                offset: f.offset,
                len: range_len,
            });
        }
        Ok((kind, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all() -> Vec<(Kind, usize)> {
        vec![
            (
                Kind::Publish {
                    buffer: 7 << 32 | 1,
                    addr: 0x7f00_0000_1000,
                    size: 4096,
                    ctx: 9,
                    tag: u64::MAX - 3,
                    attach: None,
                },
                5,
            ),
            (
                Kind::Put {
                    op: 3,
                    buffer: 4,
                    offset: 100,
                    notify: true,
                },
                8,
            ),
            (
                Kind::PutDone {
                    op: 3,
                    offset: 100,
                    status: Status::Invalid,
                },
                0,
            ),
            (
                Kind::Get {
                    op: 5,
                    buffer: 4,
                    offset: 0,
                    len: 64,
                    notify: false,
                },
                0,
            ),
            (
                Kind::GetData {
                    op: 5,
                    offset: 0,
                    status: Status::Ok,
                },
                64,
            ),
            (
                Kind::GetData {
                    op: 5,
                    offset: 0,
                    status: Status::Rejected,
                },
                0,
            ),
            (Kind::Release { buffer: 4 }, 0),
            (Kind::Withdraw { buffer: 4 }, 0),
            (
                Kind::Notice {
                    get: true,
                    buffer: 4,
                    offset: 8,
                    len: 1 << 30,
                },
                0,
            ),
        ]
    }

    #[test]
    fn every_kind_round_trips_with_its_payload() {
        for (kind, n) in all() {
            let mut b = kind.encode(n).to_vec();
            b.extend(std::iter::repeat_n(0xAB, n));
            let (back, payload) = Kind::decode(&b, 1 << 20).unwrap();
            assert_eq!(back, kind);
            assert_eq!(payload.len(), n);
        }
    }

    #[test]
    fn a_publish_carries_its_attach_block_ahead_of_the_payload() {
        let attach = Attach {
            fd: 7,
            key: 0xfeed_beef,
            inode: 1234,
            start: 4096,
        };
        let kind = Kind::Publish {
            buffer: 1,
            addr: 0x1000,
            size: 10,
            ctx: 0,
            tag: 5,
            attach: Some(attach),
        };
        let mut b = kind.encode(0).to_vec();
        b.extend_from_slice(&attach.encode());
        b.extend_from_slice(b"app");
        let (back, payload) = Kind::decode(&b, 100).unwrap();
        assert_eq!(back, kind);
        assert_eq!(payload, b"app");
        // The flag without a whole block is refused.
        let short = &b[..HEADER + 10];
        assert!(Kind::decode(short, 100).is_err());
    }

    #[test]
    fn a_put_header_is_these_bytes() {
        let h = Kind::Put {
            op: 1,
            buffer: 2,
            offset: 3,
            notify: true,
        }
        .encode(4);
        let mut want = [0u8; HEADER];
        want[0] = 17;
        want[1] = 1;
        want[8] = 1;
        want[16] = 2;
        want[24] = 3;
        want[32] = 4;
        assert_eq!(h, want);
    }

    #[test]
    fn malformed_headers_are_refused_with_the_reason() {
        assert_eq!(Kind::decode(&[16; 10], 100), Err(WireError::Short(10)));
        let mut b = [0u8; HEADER];
        b[0] = 99;
        assert_eq!(Kind::decode(&b, 100), Err(WireError::Kind(99)));
        b[0] = RELEASE;
        b[44] = 1;
        assert_eq!(Kind::decode(&b, 100), Err(WireError::Reserved("message")));
        b[44] = 0;
        b[40] = 1;
        assert_eq!(Kind::decode(&b, 100), Err(WireError::Reserved("release")));
        // A put whose payload is not what its header says.
        let mut p = Kind::Put {
            op: 1,
            buffer: 1,
            offset: 0,
            notify: false,
        }
        .encode(8)
        .to_vec();
        p.extend([0; 4]);
        assert!(matches!(
            Kind::decode(&p, 100),
            Err(WireError::Payload {
                want: 8,
                len: 4,
                ..
            })
        ));
        // Over the limit, refused before the length is trusted.
        let big = Kind::Put {
            op: 1,
            buffer: 1,
            offset: 0,
            notify: false,
        }
        .encode(1 << 40);
        assert!(matches!(
            Kind::decode(&big, 100),
            Err(WireError::TooLarge { .. })
        ));
        // A get whose range overflows.
        let g = Kind::Get {
            op: 1,
            buffer: 1,
            offset: u64::MAX,
            len: 2,
            notify: false,
        }
        .encode(0);
        assert!(matches!(
            Kind::decode(&g, 100),
            Err(WireError::Range { .. })
        ));
        // An unknown status code, and a flag that is not notify.
        let mut d = Kind::PutDone {
            op: 1,
            offset: 0,
            status: Status::Ok,
        }
        .encode(0);
        d[4] = 200;
        assert_eq!(Kind::decode(&d, 100), Err(WireError::Status(200)));
        let mut f = Kind::Get {
            op: 1,
            buffer: 1,
            offset: 0,
            len: 1,
            notify: false,
        }
        .encode(0);
        f[1] = 2;
        assert_eq!(Kind::decode(&f, 100), Err(WireError::Reserved("get")));
    }

    proptest! {
        /// Any bytes: decoding never panics, and what decodes encodes back to the same
        /// header (nothing the peer sent is ignored).
        #[test]
        fn fuzz_any_bytes_decode_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok((kind, payload)) = Kind::decode(&b, 64) {
                let h = kind.encode(payload.len());
                prop_assert_eq!(&h[..], &b[..HEADER]);
            }
        }
    }
}
