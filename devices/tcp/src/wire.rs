//! TCP wire format: little-endian, explicit widths, a version byte; every length is checked
//! against a limit before anything is allocated.
//!
//! ```text
//! Hello (connector -> listener), 24-byte header then the variable parts in this order:
//!   0  magic  "VMIT"         4
//!   4  version u8 (= 1)       1
//!   5  flags   u8 (= 0)       1
//!   6  from_key_len  u16      2
//!   8  to_key_len    u16      2
//!  10  signature_len u16      2
//!  12  connect_data_len u32   4
//!  16  reserved u64 (= 0)     8
//!  24  from_key | to_key | signature | connect_data [| nonce, 32 bytes, when flags bit 0]
//!
//! With authentication (hello flags bit 0 = the connector holds a key and sent a nonce):
//!   Challenge (listener -> connector), 80 bytes:
//!     0 magic "VMIC" | 4 version u8 | 5..16 0 | 16 listener nonce (32) | 48 listener proof (32)
//!   Proof (connector -> listener), 48 bytes:
//!     0 magic "VMIP" | 4 version u8 | 5..16 0 | 16 connector proof (32)
//!   then the answer as below. Proofs are HMAC-SHA256 over both nonces, both keys and the
//!   signature (`vmi_device::auth`).
//!
//! Answer (listener -> connector), 16-byte header then reason | reply_data:
//!   0  magic "VMIA" 4 | 4 version u8 | 5 status u8 | 6 reason_len u16 | 8 reply_len u32 | 12 reserved u32
//!
//! Frame (either way, after an accepting Answer), 8-byte header then payload:
//!   0  kind u8 (1 = fragment) | 1 reserved u8 | 2 filter flags u16 | 4 payload_len u32
//!   The END bit of a stream travels in the kind byte (2 = last fragment). Kind 3 is a
//!   heartbeat (all other bytes 0), sent when a side has sent nothing for a while, so a peer
//!   that vanished without a word (a cut link, a frozen host) is noticed.
//!
//! Lanes (extra sockets of one connection that carry parts of large frames, see `stripe`):
//!   hello flags bit 1: the connector can open lanes.
//!   Lane offer (listener -> connector, on the connection, after an accepting answer):
//!     0 kind u8 (7) | 1 lanes offered u8 (1..=3) | 2 0 u16 | 4 length u32 (= 16) | token (16)
//!   Lane hello (connector -> listener, first on a new socket to the same port), 24 bytes:
//!     0 magic "VMIL" | 4 version u8 | 5 lane u8 (1..=3) | 6 0 u16 | 8 token (16)
//!   Lane answer (listener -> connector, first on the lane), 8 bytes:
//!     0 magic "VMIL" | 4 version u8 | 5 status u8 (0 = attached) | 6 0 u16
//!   Striped frame (on the connection): 0 kind u8 (4 = fragment, 5 = last) | 1 sockets u8
//!     (2..=4: the connection and lanes 1..sockets-1) | 2 filter flags u16 | 4 length u32,
//!     then the connection's part of the payload; each lane carries its part after a piece
//!     header: 0 kind u8 (6) | 1 lane u8 | 2 0 u16 | 4 part length u32.
//! ```

use vmi_device::auth::{NONCE_LEN, PROOF_LEN};

/// Hello magic.
pub const HELLO_MAGIC: [u8; 4] = *b"VMIT";
/// Answer magic.
pub const ANSWER_MAGIC: [u8; 4] = *b"VMIA";
pub use vmi_device::auth::{CHALLENGE_LEN, CHALLENGE_MAGIC, PROOF_MAGIC, PROOF_RECORD_LEN};
/// Hello flag: authentication (a nonce ends the body).
pub const HELLO_FLAG_AUTH: u8 = 1;
/// Hello flag: the connector can open lanes (the listener may offer them).
pub const HELLO_FLAG_LANES: u8 = 2;
/// Lane hello and lane answer magic.
pub const LANE_MAGIC: [u8; 4] = *b"VMIL";
/// Lane hello length (the same as a hello header's, so the listener reads either first).
pub const LANE_HELLO_LEN: usize = HELLO_LEN;
/// Lane answer length.
pub const LANE_ANSWER_LEN: usize = 8;
/// A lane token's length.
pub const TOKEN_LEN: usize = 16;
/// Most lanes of one connection (besides the connection's own socket).
pub const MAX_LANES: usize = 3;
/// Wire version (2: heartbeats).
pub const WIRE_VERSION: u8 = 2;
/// Hello header length.
pub const HELLO_LEN: usize = 24;
/// Answer header length.
pub const ANSWER_LEN: usize = 16;
/// Frame header length.
pub const FRAME_LEN: usize = 8;
/// Frame kind: fragment with more to come.
pub const KIND_FRAGMENT: u8 = 1;
/// Frame kind: last fragment of a stream.
pub const KIND_END: u8 = 2;
/// Frame kind: heartbeat (no payload).
pub const KIND_HEARTBEAT: u8 = 3;
/// A whole heartbeat frame.
pub const HEARTBEAT: [u8; FRAME_LEN] = [KIND_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0];
/// Frame kind: a striped fragment with more to come (its payload's parts travel on lanes).
pub const KIND_STRIPED: u8 = 4;
/// Frame kind: a striped last fragment.
pub const KIND_STRIPED_END: u8 = 5;
/// Lane header kind: a part of a striped frame.
pub const KIND_PIECE: u8 = 6;
/// Frame kind: a lane offer (listener to connector).
pub const KIND_LANES: u8 = 7;
/// Largest reason text in an answer.
pub const MAX_REASON: usize = 4096;
/// Largest key.
pub const MAX_KEY: usize = 255;
/// Largest signature.
pub const MAX_SIGNATURE: usize = 4096;

/// Answer statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AnswerStatus {
    /// Accepted.
    Accept = 0,
    /// The accept handler rejected.
    Reject = 1,
    /// The listener has another key; try the next port.
    WrongKey = 2,
    /// The filter chains differ.
    SignatureMismatch = 3,
    /// The wire version differs.
    VersionMismatch = 4,
    /// The hello was malformed or over a limit.
    Invalid = 5,
    /// The listener cannot take a connection now (out of descriptors, or at its
    /// `max_connections`); sent at once on accept, before the hello is read.
    Busy = 6,
}

impl AnswerStatus {
    fn from_u8(v: u8) -> Option<AnswerStatus> {
        Some(match v {
            0 => AnswerStatus::Accept,
            1 => AnswerStatus::Reject,
            2 => AnswerStatus::WrongKey,
            3 => AnswerStatus::SignatureMismatch,
            4 => AnswerStatus::VersionMismatch,
            5 => AnswerStatus::Invalid,
            6 => AnswerStatus::Busy,
            _ => return None,
        })
    }
}

/// A malformed or over-limit header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Not our magic: not a vmi peer.
    BadMagic([u8; 4]),
    /// Another wire version.
    Version(u8),
    /// A length over its limit.
    TooLong {
        /// Which field.
        field: &'static str,
        /// Value.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// An unknown frame kind or status.
    BadField {
        /// Which field.
        field: &'static str,
        /// Value.
        value: u64,
    },
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::BadMagic(m) => write!(f, "bad magic {:02x?} (not a vmi peer)", m),
            WireError::Version(v) => write!(f, "wire version {v}, this side speaks {WIRE_VERSION}"),
            WireError::TooLong { field, len, max } => {
                write!(f, "{field} of {len} bytes is over the limit of {max}")
            }
            WireError::BadField { field, value } => write!(f, "invalid {field} {value}"),
        }
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The fixed part of a hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloRepr {
    /// Connector's key length.
    pub from_key_len: u16,
    /// Wanted key length.
    pub to_key_len: u16,
    /// Signature length.
    pub signature_len: u16,
    /// Connect data length.
    pub data_len: u32,
    /// A nonce ends the body (the connector authenticates).
    pub auth: bool,
    /// The connector can open lanes.
    pub lanes: bool,
}

impl HelloRepr {
    /// Bytes after the header.
    pub fn body_len(&self) -> usize {
        self.from_key_len as usize
            + self.to_key_len as usize
            + self.signature_len as usize
            + self.data_len as usize
            + if self.auth { NONCE_LEN } else { 0 }
    }

    /// Parses and checks a hello header against the limits.
    pub fn parse(b: &[u8; HELLO_LEN], max_data: u32) -> Result<HelloRepr, WireError> {
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != HELLO_MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        if b[4] != WIRE_VERSION {
            return Err(WireError::Version(b[4]));
        }
        let r = HelloRepr {
            from_key_len: u16_at(b, 6),
            to_key_len: u16_at(b, 8),
            signature_len: u16_at(b, 10),
            data_len: u32_at(b, 12),
            auth: b[5] & HELLO_FLAG_AUTH != 0,
            lanes: b[5] & HELLO_FLAG_LANES != 0,
        };
        if b[5] & !(HELLO_FLAG_AUTH | HELLO_FLAG_LANES) != 0 {
            return Err(WireError::BadField {
                field: "hello flags",
                value: b[5] as u64,
            });
        }
        let check = |field, len: u64, max: u64| {
            if len > max {
                Err(WireError::TooLong { field, len, max })
            } else {
                Ok(())
            }
        };
        check("from key", r.from_key_len as u64, MAX_KEY as u64)?;
        check("to key", r.to_key_len as u64, MAX_KEY as u64)?;
        check("signature", r.signature_len as u64, MAX_SIGNATURE as u64)?;
        check("connect data", r.data_len as u64, max_data as u64)?;
        Ok(r)
    }

    /// Writes a whole hello.
    pub fn emit(from_key: &str, to_key: &str, signature: &str, data: &[u8]) -> Vec<u8> {
        Self::emit_with(from_key, to_key, signature, data, None, false)
    }

    /// Writes a whole hello, with the connector's nonce when it authenticates; `lanes`: the
    /// connector can open lanes.
    pub fn emit_with(
        from_key: &str,
        to_key: &str,
        signature: &str,
        data: &[u8],
        nonce: Option<&[u8; NONCE_LEN]>,
        lanes: bool,
    ) -> Vec<u8> {
        let mut v = Vec::with_capacity(
            HELLO_LEN + from_key.len() + to_key.len() + signature.len() + data.len() + NONCE_LEN,
        );
        v.extend_from_slice(&HELLO_MAGIC);
        v.push(WIRE_VERSION);
        v.push(
            if nonce.is_some() { HELLO_FLAG_AUTH } else { 0 }
                | if lanes { HELLO_FLAG_LANES } else { 0 },
        );
        v.extend_from_slice(&(from_key.len() as u16).to_le_bytes());
        v.extend_from_slice(&(to_key.len() as u16).to_le_bytes());
        v.extend_from_slice(&(signature.len() as u16).to_le_bytes());
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(from_key.as_bytes());
        v.extend_from_slice(to_key.as_bytes());
        v.extend_from_slice(signature.as_bytes());
        v.extend_from_slice(data);
        if let Some(n) = nonce {
            v.extend_from_slice(n);
        }
        v
    }
}

/// Writes a challenge (listener nonce and proof).
pub fn emit_challenge(nonce: &[u8; NONCE_LEN], proof: &[u8; PROOF_LEN]) -> Vec<u8> {
    vmi_device::auth::challenge_record(WIRE_VERSION, nonce, proof)
}

/// Writes a proof record (the connector's proof).
pub fn emit_proof(proof: &[u8; PROOF_LEN]) -> Vec<u8> {
    vmi_device::auth::proof_record(WIRE_VERSION, proof)
}

/// The fixed part of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerRepr {
    /// Status.
    pub status: AnswerStatus,
    /// Reason text length.
    pub reason_len: u16,
    /// Reply data length.
    pub reply_len: u32,
}

impl AnswerRepr {
    /// Parses and checks an answer header.
    pub fn parse(b: &[u8; ANSWER_LEN], max_data: u32) -> Result<AnswerRepr, WireError> {
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != ANSWER_MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        if b[4] != WIRE_VERSION {
            return Err(WireError::Version(b[4]));
        }
        let status = AnswerStatus::from_u8(b[5]).ok_or(WireError::BadField {
            field: "answer status",
            value: b[5] as u64,
        })?;
        let reason_len = u16_at(b, 6);
        let reply_len = u32_at(b, 8);
        if reason_len as usize > MAX_REASON {
            return Err(WireError::TooLong {
                field: "reason",
                len: reason_len as u64,
                max: MAX_REASON as u64,
            });
        }
        if reply_len > max_data {
            return Err(WireError::TooLong {
                field: "reply data",
                len: reply_len as u64,
                max: max_data as u64,
            });
        }
        Ok(AnswerRepr {
            status,
            reason_len,
            reply_len,
        })
    }

    /// Writes a whole answer.
    pub fn emit(status: AnswerStatus, reason: &str, reply: &[u8]) -> Vec<u8> {
        let reason = &reason.as_bytes()[..reason.len().min(MAX_REASON)];
        let mut v = Vec::with_capacity(ANSWER_LEN + reason.len() + reply.len());
        v.extend_from_slice(&ANSWER_MAGIC);
        v.push(WIRE_VERSION);
        v.push(status as u8);
        v.extend_from_slice(&(reason.len() as u16).to_le_bytes());
        v.extend_from_slice(&(reply.len() as u32).to_le_bytes());
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(reason);
        v.extend_from_slice(reply);
        v
    }
}

/// A data frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRepr {
    /// Last fragment of the stream.
    pub end: bool,
    /// Filter flag bits (the upper half of `VmiIrb::flags`).
    pub filter_flags: u16,
    /// Payload length.
    pub len: u32,
}

impl FrameRepr {
    /// Parses and checks a frame header.
    pub fn parse(b: &[u8; FRAME_LEN], max_len: u64) -> Result<FrameRepr, WireError> {
        let end = match b[0] {
            KIND_FRAGMENT => false,
            KIND_END => true,
            other => {
                return Err(WireError::BadField {
                    field: "frame kind",
                    value: other as u64,
                });
            }
        };
        let len = u32_at(b, 4);
        if len as u64 > max_len {
            return Err(WireError::TooLong {
                field: "fragment",
                len: len as u64,
                max: max_len,
            });
        }
        Ok(FrameRepr {
            end,
            filter_flags: u16_at(b, 2),
            len,
        })
    }

    /// Writes the header.
    pub fn emit(&self) -> [u8; FRAME_LEN] {
        let mut h = [0u8; FRAME_LEN];
        h[0] = if self.end { KIND_END } else { KIND_FRAGMENT };
        h[2..4].copy_from_slice(&self.filter_flags.to_le_bytes());
        h[4..8].copy_from_slice(&self.len.to_le_bytes());
        h
    }
}

/// A striped frame's header: the payload's length and the sockets that carry its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StripeRepr {
    /// Last fragment of the stream.
    pub end: bool,
    /// Filter flag bits.
    pub filter_flags: u16,
    /// Sockets carrying parts: the connection's and lanes `1..sockets`.
    pub sockets: u8,
    /// Payload length, all parts together.
    pub len: u32,
}

impl StripeRepr {
    /// Parses a striped frame header (kind 4 or 5); the caller checks `sockets` and `len`
    /// against the lanes it has and its limit.
    pub fn parse(b: &[u8; FRAME_LEN]) -> Option<StripeRepr> {
        let end = match b[0] {
            KIND_STRIPED => false,
            KIND_STRIPED_END => true,
            _ => return None,
        };
        Some(StripeRepr {
            end,
            filter_flags: u16_at(b, 2),
            sockets: b[1],
            len: u32_at(b, 4),
        })
    }

    /// Writes the header.
    pub fn emit(&self) -> [u8; FRAME_LEN] {
        let mut h = [0u8; FRAME_LEN];
        h[0] = if self.end {
            KIND_STRIPED_END
        } else {
            KIND_STRIPED
        };
        h[1] = self.sockets;
        h[2..4].copy_from_slice(&self.filter_flags.to_le_bytes());
        h[4..8].copy_from_slice(&self.len.to_le_bytes());
        h
    }
}

/// A piece header: lane `lane` carries `len` bytes of the striped frame in progress.
pub fn emit_piece(lane: u8, len: u32) -> [u8; FRAME_LEN] {
    let mut h = [KIND_PIECE, lane, 0, 0, 0, 0, 0, 0];
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h
}

/// A piece header's lane and length; `None` for another kind or a non-zero reserved field.
pub fn parse_piece(b: &[u8; FRAME_LEN]) -> Option<(u8, u32)> {
    (b[0] == KIND_PIECE && b[2] == 0 && b[3] == 0).then(|| (b[1], u32_at(b, 4)))
}

/// A whole lane offer frame: `lanes` lanes may join with `token`.
pub fn emit_lane_offer(lanes: u8, token: &[u8; TOKEN_LEN]) -> Vec<u8> {
    let mut v = vec![KIND_LANES, lanes, 0, 0];
    v.extend_from_slice(&(TOKEN_LEN as u32).to_le_bytes());
    v.extend_from_slice(token);
    v
}

/// A lane hello: this socket joins the connection of `token` as lane `lane`.
pub fn emit_lane_hello(lane: u8, token: &[u8; TOKEN_LEN]) -> [u8; LANE_HELLO_LEN] {
    let mut h = [0u8; LANE_HELLO_LEN];
    h[..4].copy_from_slice(&LANE_MAGIC);
    h[4] = WIRE_VERSION;
    h[5] = lane;
    h[8..].copy_from_slice(token);
    h
}

/// A lane hello's lane and token.
pub fn parse_lane_hello(b: &[u8; LANE_HELLO_LEN]) -> Result<(u8, [u8; TOKEN_LEN]), WireError> {
    let magic = [b[0], b[1], b[2], b[3]];
    if magic != LANE_MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if b[4] != WIRE_VERSION {
        return Err(WireError::Version(b[4]));
    }
    if b[5] == 0 || b[5] as usize > MAX_LANES || b[6] != 0 || b[7] != 0 {
        return Err(WireError::BadField {
            field: "lane",
            value: b[5] as u64,
        });
    }
    let mut token = [0u8; TOKEN_LEN];
    token.copy_from_slice(&b[8..]);
    Ok((b[5], token))
}

/// A lane answer: the lane was attached (`true`) or not.
pub fn emit_lane_answer(attached: bool) -> [u8; LANE_ANSWER_LEN] {
    let mut h = [0u8; LANE_ANSWER_LEN];
    h[..4].copy_from_slice(&LANE_MAGIC);
    h[4] = WIRE_VERSION;
    h[5] = u8::from(!attached);
    h
}

/// Whether a lane answer says the lane was attached; anything else (another magic or
/// version, a refusal, a listener's busy answer) says it was not.
pub fn lane_answer_attached(b: &[u8; LANE_ANSWER_LEN]) -> bool {
    b[..4] == LANE_MAGIC && b[4] == WIRE_VERSION && b[5..] == [0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_bytes() {
        let f = FrameRepr {
            end: true,
            filter_flags: 0x0102,
            len: 0x0a0b0c0d,
        };
        assert_eq!(f.emit(), [2, 0, 0x02, 0x01, 0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(FrameRepr::parse(&f.emit(), u32::MAX as u64), Ok(f));
        assert_eq!(
            FrameRepr::parse(&[1, 0, 0, 0, 0, 0, 0, 0x10], 1 << 20),
            Err(WireError::TooLong {
                field: "fragment",
                len: 0x1000_0000,
                max: 1 << 20
            })
        );
        assert!(matches!(
            FrameRepr::parse(&[9, 0, 0, 0, 0, 0, 0, 0], 10),
            Err(WireError::BadField { .. })
        ));
    }

    #[test]
    fn hello_bytes() {
        let v = HelloRepr::emit("a", "bc", "s", &[7, 8]);
        assert_eq!(
            &v[..HELLO_LEN],
            &[
                b'V', b'M', b'I', b'T', 2, 0, 1, 0, 2, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(&v[HELLO_LEN..], b"abcs\x07\x08");
        let h = HelloRepr::parse(v[..HELLO_LEN].try_into().unwrap(), 100).unwrap();
        assert_eq!(h.body_len(), 6);
        assert!(matches!(
            HelloRepr::parse(v[..HELLO_LEN].try_into().unwrap(), 1),
            Err(WireError::TooLong { .. })
        ));
        let mut bad = v.clone();
        bad[4] = 9;
        assert_eq!(
            HelloRepr::parse(bad[..HELLO_LEN].try_into().unwrap(), 100),
            Err(WireError::Version(9))
        );
        assert_eq!(
            HelloRepr::parse(
                &[
                    b'G', b'E', b'T', b' ', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0
                ],
                100
            ),
            Err(WireError::BadMagic(*b"GET "))
        );
        let mut long = v;
        long[6] = 0xff;
        long[7] = 0xff;
        assert!(matches!(
            HelloRepr::parse(long[..HELLO_LEN].try_into().unwrap(), 100),
            Err(WireError::TooLong {
                field: "from key",
                ..
            })
        ));
    }

    #[test]
    fn lane_bytes() {
        let t = [7u8; TOKEN_LEN];
        let h = emit_lane_hello(2, &t);
        assert_eq!(&h[..8], &[b'V', b'M', b'I', b'L', 2, 2, 0, 0]);
        assert_eq!(parse_lane_hello(&h), Ok((2, t)));
        for (i, v) in [(5, 0u8), (5, 4), (6, 1), (4, 1)] {
            let mut bad = h;
            bad[i] = v;
            assert!(parse_lane_hello(&bad).is_err(), "byte {i} = {v}");
        }
        assert!(lane_answer_attached(&emit_lane_answer(true)));
        assert!(!lane_answer_attached(&emit_lane_answer(false)));
        let busy = AnswerRepr::emit(AnswerStatus::Busy, "full", b"");
        assert!(!lane_answer_attached(busy[..8].try_into().unwrap()));
        assert_eq!(parse_piece(&emit_piece(3, 77)), Some((3, 77)));
        assert_eq!(parse_piece(&[KIND_PIECE, 1, 1, 0, 0, 0, 0, 0]), None);
        let s = StripeRepr {
            end: true,
            filter_flags: 9,
            sockets: 2,
            len: 1 << 20,
        };
        assert_eq!(StripeRepr::parse(&s.emit()), Some(s));
        assert!(FrameRepr::parse(&s.emit(), u32::MAX as u64).is_err());
        let o = emit_lane_offer(1, &t);
        assert_eq!(o.len(), FRAME_LEN + TOKEN_LEN);
        assert_eq!(o[..2], [KIND_LANES, 1]);
    }

    #[test]
    fn answer_bytes() {
        let v = AnswerRepr::emit(AnswerStatus::Reject, "no", b"xyz");
        assert_eq!(
            &v[..ANSWER_LEN],
            &[b'V', b'M', b'I', b'A', 2, 1, 2, 0, 3, 0, 0, 0, 0, 0, 0, 0]
        );
        let a = AnswerRepr::parse(v[..ANSWER_LEN].try_into().unwrap(), 10).unwrap();
        assert_eq!(
            a,
            AnswerRepr {
                status: AnswerStatus::Reject,
                reason_len: 2,
                reply_len: 3
            }
        );
        let mut bad = v;
        bad[5] = 77;
        assert!(AnswerRepr::parse(bad[..ANSWER_LEN].try_into().unwrap(), 10).is_err());
    }
}
