//! The header of every SEND on a verbs connection. No I/O: bytes in, checked values out.
//!
//! ```text
//! 0 kind u8 | 1 end u8 | 2 filter flags u16 | 4 seq u32 | 8 credits u32 | 12 len u32
//! 16 msg u64 | 24 addr u64 | 32 rkey u32 | 36 len_hi u32 (rts only) | 40 payload (eager only)
//! ```
//!
//! `end` (0 or 1) and the filter flags describe the fragment an eager or rts frame carries
//! (the host's last-fragment mark and what the sender's filters did); both are 0 in fin and
//! credit frames.
//!
//! - eager (1): a whole fragment of `len` bytes follows (at most the eager limit).
//! - rts (2): "read `len` bytes at `addr` with `rkey`, then tell me `msg` is done" (a
//!   rendezvous request for a large fragment).
//! - fin (3): the reader finished reading `msg`: the sender may release its memory.
//! - credit (4): only returns credits.
//!
//! Every frame carries `seq` (consecutive per direction from 0: RC delivers in order, so a gap
//! or a repeat is a protocol error) and `credits` (receive buffers the sender of the frame
//! reposted since its last frame, handed back to the reader).
#![forbid(unsafe_code)]

/// Bytes of the header.
pub const HEADER: usize = 40;

const EAGER: u8 = 1;
const RTS: u8 = 2;
const FIN: u8 = 3;
const CREDIT: u8 = 4;

/// What the host says about a fragment: its last-fragment mark and its filter flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// The last fragment of a stream.
    pub end: bool,
    /// The sender's filter flags (the high half of the IRB flags).
    pub filter: u16,
}

/// What a frame says (besides `seq` and `credits`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// A whole fragment of `len` bytes follows.
    Eager {
        /// Payload bytes.
        len: u32,
        /// The fragment's marks.
        meta: Meta,
    },
    /// Read `len` bytes at `addr` with `rkey`; then answer [`Body::Fin`] with `msg`.
    Rts {
        /// The sender's id for the fragment.
        msg: u64,
        /// Where it lies in the sender's registered memory.
        addr: u64,
        /// The memory region's remote key.
        rkey: u32,
        /// Its length.
        len: u64,
        /// The fragment's marks.
        meta: Meta,
    },
    /// The reader finished reading `msg`.
    Fin {
        /// The id from the [`Body::Rts`].
        msg: u64,
    },
    /// Credits only.
    Credit,
}

/// A frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Its number in this direction.
    pub seq: u32,
    /// Receive buffers handed back.
    pub credits: u32,
    /// What it says.
    pub body: Body,
}

/// Why bytes from the peer are not a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than a header.
    #[error("a verbs frame of {0} bytes, shorter than its {HEADER}-byte header")]
    Short(usize),
    /// An unknown kind.
    #[error("an unknown verbs frame kind {0}")]
    Kind(u8),
    /// A reserved or unused field is set.
    #[error("a verbs frame with a reserved or unused field set")]
    Reserved,
    /// The payload is not what the header says, or a kind without one has one.
    #[error("a verbs frame with {got} bytes of payload where its header says {want}")]
    Payload {
        /// Payload bytes.
        got: usize,
        /// What the header says.
        want: usize,
    },
}

impl Frame {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER] {
        let none = Meta::default();
        let (kind, len, msg, addr, rkey, meta) = match self.body {
            Body::Eager { len, meta } => (EAGER, len, 0, 0, 0, meta),
            Body::Rts {
                msg,
                addr,
                rkey,
                meta,
                ..
            } => (RTS, 0, msg, addr, rkey, meta),
            Body::Fin { msg } => (FIN, 0, msg, 0, 0, none),
            Body::Credit => (CREDIT, 0, 0, 0, 0, none),
        };
        let mut h = [0u8; HEADER];
        h[0] = kind;
        h[1] = u8::from(meta.end);
        h[2..4].copy_from_slice(&meta.filter.to_le_bytes());
        h[4..8].copy_from_slice(&self.seq.to_le_bytes());
        h[8..12].copy_from_slice(&self.credits.to_le_bytes());
        h[12..16].copy_from_slice(&len.to_le_bytes());
        h[16..24].copy_from_slice(&msg.to_le_bytes());
        h[24..32].copy_from_slice(&addr.to_le_bytes());
        h[32..36].copy_from_slice(&rkey.to_le_bytes());
        if let Body::Rts { len, .. } = self.body {
            // A rendezvous length may exceed 32 bits: its high half goes at 36.
            h[36..40].copy_from_slice(&((len >> 32) as u32).to_le_bytes());
            h[12..16].copy_from_slice(&(len as u32).to_le_bytes());
        }
        h
    }

    /// Parses and checks a received SEND; returns the frame and its payload.
    pub fn decode(b: &[u8]) -> Result<(Frame, &[u8]), WireError> {
        if b.len() < HEADER {
            return Err(WireError::Short(b.len()));
        }
        let (h, payload) = b.split_at(HEADER);
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(v)
        };
        if h[1] > 1 {
            return Err(WireError::Reserved);
        }
        let meta = Meta {
            end: h[1] == 1,
            filter: u16::from_le_bytes([h[2], h[3]]),
        };
        let plain = meta == Meta::default();
        let (seq, credits, len32, msg, addr, rkey, hi) = (
            u32_at(4),
            u32_at(8),
            u32_at(12),
            u64_at(16),
            u64_at(24),
            u32_at(32),
            u32_at(36),
        );
        let body = match h[0] {
            EAGER if msg == 0 && addr == 0 && rkey == 0 && hi == 0 => {
                Body::Eager { len: len32, meta }
            }
            RTS => Body::Rts {
                msg,
                addr,
                rkey,
                len: (u64::from(hi) << 32) | u64::from(len32),
                meta,
            },
            FIN if plain && len32 == 0 && addr == 0 && rkey == 0 && hi == 0 => Body::Fin { msg },
            CREDIT if plain && len32 == 0 && msg == 0 && addr == 0 && rkey == 0 && hi == 0 => {
                Body::Credit
            }
            EAGER | FIN | CREDIT => return Err(WireError::Reserved),
            k => return Err(WireError::Kind(k)),
        };
        let want = match body {
            Body::Eager { len, .. } => len as usize,
            _ => 0,
        };
        if payload.len() != want {
            return Err(WireError::Payload {
                got: payload.len(),
                want,
            });
        }
        Ok((Frame { seq, credits, body }, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_kind_round_trips() {
        for body in [
            Body::Eager {
                len: 3,
                meta: Meta {
                    end: true,
                    filter: 0xc001,
                },
            },
            Body::Rts {
                msg: 9,
                addr: 0x7f00_0000_0000,
                rkey: 77,
                len: 5 << 32 | 12,
                meta: Meta {
                    end: false,
                    filter: 2,
                },
            },
            Body::Fin { msg: 9 },
            Body::Credit,
        ] {
            let f = Frame {
                seq: 4,
                credits: 2,
                body,
            };
            let mut b = f.encode().to_vec();
            if let Body::Eager { len, .. } = body {
                b.extend(std::iter::repeat_n(1, len as usize));
            }
            let (back, payload) = Frame::decode(&b).unwrap();
            assert_eq!(back, f);
            assert_eq!(
                payload.len(),
                if let Body::Eager { len, .. } = body {
                    len as usize
                } else {
                    0
                }
            );
        }
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert_eq!(Frame::decode(&[1; 5]), Err(WireError::Short(5)));
        let mut b = Frame {
            seq: 0,
            credits: 0,
            body: Body::Credit,
        }
        .encode();
        b[0] = 9;
        assert_eq!(Frame::decode(&b), Err(WireError::Kind(9)));
        b[0] = CREDIT;
        b[20] = 1;
        assert_eq!(Frame::decode(&b), Err(WireError::Reserved));
        b[20] = 0;
        b[1] = 1;
        assert_eq!(
            Frame::decode(&b),
            Err(WireError::Reserved),
            "a credit with an end mark"
        );
        b[1] = 2;
        b[0] = EAGER;
        assert_eq!(
            Frame::decode(&b),
            Err(WireError::Reserved),
            "an end mark of 2"
        );
        let e = Frame {
            seq: 0,
            credits: 0,
            body: Body::Eager {
                len: 10,
                meta: Meta::default(),
            },
        }
        .encode();
        assert!(matches!(
            Frame::decode(&e),
            Err(WireError::Payload { got: 0, want: 10 })
        ));
    }

    proptest! {
        /// Any bytes: decoding never panics, and what decodes encodes back to the same header.
        #[test]
        fn fuzz_any_bytes_decode_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..96)) {
            if let Ok((f, _)) = Frame::decode(&b) {
                prop_assert_eq!(&f.encode()[..], &b[..HEADER]);
            }
        }
    }
}
