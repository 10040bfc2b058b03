//! The header of a message-passing message (a request, a reply, a pulse), as carried in a
//! one-fragment message with [`VMI_FLAG_MSG`](crate::abi::VMI_FLAG_MSG). No I/O: bytes in,
//! checked values out.
//!
//! ```text
//! 0 kind u8 | 1 priority u8 | 2 0 u16 | 4 code i32 | 8 id u64 | 16 reply_max u32 | 20 value u32
//! 24 payload (requests and replies; none for the other kinds)
//! ```
//!
//! - request (1): `id` is the client's request id, `reply_max` the most reply bytes it takes,
//!   `priority` the request's; the payload is the request.
//! - reply (2): `id` answers a request, `code` is the server's status value (QNX `MsgReply`'s
//!   `status`); the payload is the reply.
//! - error (3): `id` answers a request with the server's error `code` (QNX `MsgError`).
//! - refused (4): the server's vmi could not take or answer request `id`; `code` is a
//!   [`Status`] code (too large, too many waiting, the reply failed on the way).
//! - pulse (5): `code` (an application value; QNX pulse codes are 8-bit, this is 32) and
//!   `value`, at `priority`.
//! - cancel (6): the client gave up request `id` (cancelled, timed out): the server forgets it.
//!
//! Everything comes from the peer and is checked: the kind, the zero field, the priority's
//! range, that only requests and replies carry a payload, and the payload's length against
//! the limit for its kind.
#![forbid(unsafe_code)]

use crate::status::Status;

/// Bytes before the payload.
pub const HEADER: usize = 24;
/// Highest priority (QNX has 0–255 for threads; 64 levels are plenty for messages and keep
/// the queue small). Stream data counts as priority 0.
pub const MAX_PRIORITY: u8 = 63;

const REQUEST: u8 = 1;
const REPLY: u8 = 2;
const ERROR: u8 = 3;
const REFUSED: u8 = 4;
const PULSE: u8 = 5;
const CANCEL: u8 = 6;

/// What a message-passing message says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A request; the payload follows.
    Request {
        /// The client's id for it.
        id: u64,
        /// The most reply bytes the client takes.
        reply_max: u32,
        /// Its priority, 0 to [`MAX_PRIORITY`].
        priority: u8,
    },
    /// A reply to request `id`; the payload follows.
    Reply {
        /// The request answered.
        id: u64,
        /// The server's status value.
        status: i32,
    },
    /// An error answer to request `id`.
    Error {
        /// The request answered.
        id: u64,
        /// The server's error code.
        code: i32,
    },
    /// The server's vmi refused request `id`.
    Refused {
        /// The request.
        id: u64,
        /// Why.
        status: Status,
    },
    /// A pulse.
    Pulse {
        /// The application's code.
        code: i32,
        /// The application's value.
        value: u32,
        /// Its priority, 0 to [`MAX_PRIORITY`].
        priority: u8,
    },
    /// The client gave up request `id`.
    Cancel {
        /// The request.
        id: u64,
    },
}

/// Why bytes from the peer are not a message-passing message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the header.
    #[error("a message-passing message of {0} bytes, shorter than its {HEADER}-byte header")]
    Short(usize),
    /// The kind byte names no kind.
    #[error("an unknown message-passing kind {0}")]
    Kind(u8),
    /// A field that must be zero is not.
    #[error("a message-passing header with its reserved field set")]
    Reserved,
    /// The priority is over the highest.
    #[error("a message-passing priority of {0}, over the highest ({MAX_PRIORITY})")]
    Priority(u8),
    /// A kind that carries no payload came with one.
    #[error("a message-passing {kind} with {len} bytes of payload (it carries none)")]
    Payload {
        /// The kind, in words.
        kind: &'static str,
        /// Payload bytes.
        len: usize,
    },
    /// The payload is over the limit.
    #[error("a message-passing payload of {len} bytes, over the limit of {max}")]
    TooLarge {
        /// Payload bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A refusal's status code is not one vmi sends.
    #[error("a refusal with the status code {0}, which vmi does not send")]
    Status(i32),
}

impl Kind {
    /// The header's bytes.
    #[inline(always)]
    pub fn encode(&self) -> [u8; HEADER] {
        let (kind, priority, code, id, reply_max, value) = match *self {
            Kind::Request {
                id,
                reply_max,
                priority,
            } => (REQUEST, priority, 0, id, reply_max, 0),
            Kind::Reply { id, status } => (REPLY, 0, status, id, 0, 0),
            Kind::Error { id, code } => (ERROR, 0, code, id, 0, 0),
            Kind::Refused { id, status } => (REFUSED, 0, status.code(), id, 0, 0),
            Kind::Pulse {
                code,
                value,
                priority,
            } => (PULSE, priority, code, 0, 0, value),
            Kind::Cancel { id } => (CANCEL, 0, 0, id, 0, 0),
        };
        let mut h = [0u8; HEADER];
        h[0] = kind;
        h[1] = priority;
        h[4..8].copy_from_slice(&code.to_le_bytes());
        h[8..16].copy_from_slice(&id.to_le_bytes());
        h[16..20].copy_from_slice(&reply_max.to_le_bytes());
        h[20..24].copy_from_slice(&value.to_le_bytes());
        h
    }

    /// Parses and checks a whole message: its kind and its payload (after the header).
    /// `max_payload` bounds a request's or a reply's payload.
    #[inline(always)]
    pub fn decode(b: &[u8], max_payload: usize) -> Result<(Kind, &[u8]), WireError> {
        let Some((h, payload)) = b.split_first_chunk::<HEADER>() else {
            return Err(WireError::Short(b.len()));
        };
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(w)
        };
        // kind u8 | priority u8 | reserved u16 | code i32; id u64; reply_max u32 | value u32
        let (w0, id, w2) = (word(0), word(8), word(16));
        let (kind, priority) = (w0 as u8, (w0 >> 8) as u8);
        let code = (w0 >> 32) as u32 as i32;
        let (reply_max, value) = (w2 as u32, (w2 >> 32) as u32);
        if (w0 >> 16) as u16 != 0 {
            return Err(WireError::Reserved);
        }
        if priority > MAX_PRIORITY {
            return Err(WireError::Priority(priority));
        }
        // Fields a kind does not use must be zero, so a peer cannot smuggle meaning in them;
        // only requests and replies carry a payload.
        let (k, unused, carries) = match kind {
            REQUEST => (
                Kind::Request {
                    id,
                    reply_max,
                    priority,
                },
                code != 0 || value != 0,
                true,
            ),
            REPLY => (
                Kind::Reply { id, status: code },
                priority != 0 || w2 != 0,
                true,
            ),
            ERROR => (Kind::Error { id, code }, priority != 0 || w2 != 0, false),
            REFUSED => {
                let status = Status::from_code(code);
                if status == Status::Ok || status.code() != code {
                    return Err(WireError::Status(code));
                }
                (
                    Kind::Refused { id, status },
                    priority != 0 || w2 != 0,
                    false,
                )
            }
            PULSE => (
                Kind::Pulse {
                    code,
                    value,
                    priority,
                },
                id != 0 || reply_max != 0,
                false,
            ),
            CANCEL => (
                Kind::Cancel { id },
                priority != 0 || code != 0 || w2 != 0,
                false,
            ),
            k => return Err(WireError::Kind(k)),
        };
        if unused {
            return Err(WireError::Reserved);
        }
        if !carries && !payload.is_empty() {
            return Err(WireError::Payload {
                kind: k.words(),
                len: payload.len(),
            });
        }
        if payload.len() > max_payload {
            return Err(WireError::TooLarge {
                len: payload.len(),
                max: max_payload,
            });
        }
        Ok((k, payload))
    }

    /// The kind, in words.
    pub fn words(&self) -> &'static str {
        match self {
            Kind::Request { .. } => "request",
            Kind::Reply { .. } => "reply",
            Kind::Error { .. } => "error",
            Kind::Refused { .. } => "refusal",
            Kind::Pulse { .. } => "pulse",
            Kind::Cancel { .. } => "cancel",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(k: Kind, payload: &[u8]) {
        let mut b = k.encode().to_vec();
        b.extend_from_slice(payload);
        assert_eq!(Kind::decode(&b, 1024), Ok((k, payload)));
    }

    #[test]
    fn every_kind_round_trips() {
        round(
            Kind::Request {
                id: 7,
                reply_max: 4096,
                priority: 63,
            },
            b"hello",
        );
        round(Kind::Reply { id: 7, status: -3 }, b"world");
        round(Kind::Error { id: 9, code: 22 }, b"");
        round(
            Kind::Refused {
                id: 9,
                status: Status::TooLarge,
            },
            b"",
        );
        round(
            Kind::Pulse {
                code: -1,
                value: 0xdead_beef,
                priority: 5,
            },
            b"",
        );
        round(Kind::Cancel { id: u64::MAX }, b"");
    }

    #[test]
    fn a_request_in_literal_bytes() {
        let b = [
            1, 2, 0, 0, 0, 0, 0, 0, // kind, priority, reserved, code
            5, 0, 0, 0, 0, 0, 0, 0, // id
            0, 1, 0, 0, 0, 0, 0, 0, // reply_max 256, value
            b'x',
        ];
        assert_eq!(
            Kind::decode(&b, 16),
            Ok((
                Kind::Request {
                    id: 5,
                    reply_max: 256,
                    priority: 2
                },
                &b"x"[..]
            ))
        );
    }

    #[test]
    fn hostile_headers_are_refused() {
        let ok = Kind::Pulse {
            code: 1,
            value: 2,
            priority: 3,
        }
        .encode();
        assert_eq!(Kind::decode(&ok[..10], 16), Err(WireError::Short(10)));
        let mut b = ok;
        b[0] = 99;
        assert_eq!(Kind::decode(&b, 16), Err(WireError::Kind(99)));
        let mut b = ok;
        b[3] = 1;
        assert_eq!(Kind::decode(&b, 16), Err(WireError::Reserved));
        let mut b = ok;
        b[1] = 64;
        assert_eq!(Kind::decode(&b, 16), Err(WireError::Priority(64)));
        let mut b = ok;
        b[8] = 1; // a pulse has no id
        assert_eq!(Kind::decode(&b, 16), Err(WireError::Reserved));
        let mut b = Kind::Cancel { id: 3 }.encode();
        b[4] = 1; // a cancel has no code
        assert_eq!(Kind::decode(&b, 16), Err(WireError::Reserved));
        let mut b = ok.to_vec();
        b.push(0);
        assert!(matches!(
            Kind::decode(&b, 16),
            Err(WireError::Payload { .. })
        ));
        let mut b = Kind::Reply { id: 1, status: 0 }.encode().to_vec();
        b.extend_from_slice(&[0; 17]);
        assert_eq!(
            Kind::decode(&b, 16),
            Err(WireError::TooLarge { len: 17, max: 16 })
        );
        let mut b = Kind::Refused {
            id: 1,
            status: Status::Timeout,
        }
        .encode();
        b[4] = 0; // Ok is no refusal
        assert_eq!(Kind::decode(&b, 16), Err(WireError::Status(0)));
        b[4] = 200;
        assert_eq!(Kind::decode(&b, 16), Err(WireError::Status(200)));
    }

    #[test]
    fn any_bytes_decode_without_panic() {
        // Seeded, so a failure is reproducible.
        let seed = 0x5eed_u64;
        println!("seed {seed:#x}");
        let mut x = seed;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let mut b = vec![0u8; len];
            for (i, v) in b.iter_mut().enumerate() {
                *v = (x >> ((i % 8) * 8)) as u8 ^ i as u8;
            }
            if let Some(k) = b.first_mut() {
                *k %= 8;
            }
            let _ = Kind::decode(&b, 8);
        }
    }

    proptest::proptest! {
        /// Whatever a peer sends decodes without panic, and what decodes encodes back to
        /// the same header.
        #[test]
        fn any_bytes_decode_or_are_refused(b in proptest::collection::vec(proptest::num::u8::ANY, 0..48)) {
            if let Ok((k, payload)) = Kind::decode(&b, 16) {
                proptest::prop_assert_eq!(&k.encode()[..], &b[..HEADER]);
                proptest::prop_assert_eq!(payload, &b[HEADER..]);
            }
        }
    }
}
