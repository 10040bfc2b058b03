//! Messages between the two hosts (engines) of a connection, carried as one-fragment
//! messages with [`VMI_FLAG_HOST`](crate::abi::VMI_FLAG_HOST) by the transports and never
//! shown to the application. The host sends them past every filter, both ways, so a filter
//! never sees one (and a fault injector's notice survives the filters between it and the
//! transport); their contents are checked field by field instead:
//!
//! - "your message N failed here": lets a sender's application learn that a message it
//!   sent was not delivered whole (VMI 2.1 had no such notice);
//! - "a fragment was lost here": written by a filter in place of a fragment it drops on the
//!   send side (the fault injector), so the receiving host fails the message as a whole
//!   instead of splicing the fragments around the gap. It keeps the lost fragment's
//!   `VMI_FLAG_END`.
//!
//! - "ping" and "pong": a round trip between the two engines, which measures the
//!   connection's one-way latency (VMI 2.1's `VMI_CONNECT_ONE_WAY_LATENCY`); the pong echoes
//!   the ping's stamp, a time on the pinging side's own clock.
//!
//! ```text
//! 0 kind u8 (1: message failed, 2: fragment lost, 3: ping, 4: pong) | 1 status u8
//! 2 detail_len u16 | 4 0 u32 | 8 message u64 (ping, pong: the stamp)
//! 16 detail (UTF-8, at most MAX_DETAIL bytes; none for ping and pong)
//! ```
//! Every field comes from the peer and is checked; an unknown kind is refused.
#![forbid(unsafe_code)]

use crate::status::Status;

/// Kind: the receiver could not deliver a message whole.
const MESSAGE_FAILED: u8 = 1;
/// Kind: a fragment was lost in its sender's chain.
const FRAGMENT_LOST: u8 = 2;
/// Kind: asks the peer's engine to echo the stamp.
const PING: u8 = 3;
/// Kind: the echo of a ping's stamp.
const PONG: u8 = 4;
/// Fixed part.
const HEADER: usize = 16;
/// Longest detail text carried.
pub const MAX_DETAIL: usize = 512;

/// A message from the peer's engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMsg {
    /// The peer's receive side failed this side's message `message` (0-based, counting the
    /// messages this side began on the connection).
    MessageFailed {
        /// Which message.
        message: u64,
        /// Why, as a status.
        status: Status,
        /// Why, in words.
        detail: String,
    },
    /// A fragment of the current message was lost on the sending side (its `END` flag is
    /// on this message's IRB).
    FragmentLost {
        /// Why, in words.
        detail: String,
    },
    /// Echo `stamp` back in a pong.
    Ping {
        /// A time on the sender's clock (meaningful to it only).
        stamp: u64,
    },
    /// The echo of a ping.
    Pong {
        /// The ping's stamp.
        stamp: u64,
    },
}

impl HostMsg {
    /// Wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, message, status, detail) = match self {
            HostMsg::MessageFailed {
                message,
                status,
                detail,
            } => (MESSAGE_FAILED, *message, *status, detail),
            HostMsg::FragmentLost { detail } => (FRAGMENT_LOST, 0, Status::Lost, detail),
            HostMsg::Ping { stamp } => (PING, *stamp, Status::Ok, &String::new()),
            HostMsg::Pong { stamp } => (PONG, *stamp, Status::Ok, &String::new()),
        };
        let mut cut = detail.len().min(MAX_DETAIL);
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        let detail = &detail.as_bytes()[..cut];
        let mut v = Vec::with_capacity(HEADER + detail.len());
        v.push(kind);
        v.push(status.code() as u8);
        v.extend_from_slice(&(detail.len() as u16).to_le_bytes());
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&message.to_le_bytes());
        v.extend_from_slice(detail);
        v
    }

    /// Parses and checks bytes from the peer.
    pub fn decode(b: &[u8]) -> Result<HostMsg, String> {
        if b.len() < HEADER {
            return Err(format!(
                "a host message of {} bytes (at least {HEADER})",
                b.len()
            ));
        }
        if !(MESSAGE_FAILED..=PONG).contains(&b[0]) {
            return Err(format!("an unknown host message kind {}", b[0]));
        }
        let len = u16::from_le_bytes([b[2], b[3]]) as usize;
        if len > MAX_DETAIL || b.len() != HEADER + len {
            return Err(format!(
                "a host message whose detail length {len} does not match its {} bytes",
                b.len()
            ));
        }
        let mut m = [0u8; 8];
        m.copy_from_slice(&b[8..16]);
        let status = match Status::from_code(i32::from(b[1])) {
            Status::Ok => Status::Internal,
            s => s,
        };
        let detail = String::from_utf8_lossy(&b[HEADER..]).into_owned();
        let stamp = u64::from_le_bytes(m);
        Ok(match b[0] {
            FRAGMENT_LOST => HostMsg::FragmentLost { detail },
            PING | PONG if len != 0 => {
                return Err("a ping or pong with a detail text".into());
            }
            PING => HostMsg::Ping { stamp },
            PONG => HostMsg::Pong { stamp },
            _ => HostMsg::MessageFailed {
                message: stamp,
                status,
                detail,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hostile_bytes() {
        let m = HostMsg::MessageFailed {
            message: 41,
            status: Status::Corrupt,
            detail: "crc: mismatch".into(),
        };
        assert_eq!(HostMsg::decode(&m.encode()), Ok(m));
        let long = HostMsg::MessageFailed {
            message: 1,
            status: Status::Lost,
            detail: "é".repeat(1000),
        };
        match HostMsg::decode(&long.encode()).unwrap() {
            HostMsg::MessageFailed { detail, .. } => assert!(detail.len() <= MAX_DETAIL),
            other => panic!("{other:?}"),
        }
        let lost = HostMsg::FragmentLost {
            detail: "dropped".into(),
        };
        assert_eq!(HostMsg::decode(&lost.encode()), Ok(lost));
        for m in [
            HostMsg::Ping { stamp: 7 },
            HostMsg::Pong { stamp: u64::MAX },
        ] {
            assert_eq!(HostMsg::decode(&m.encode()), Ok(m));
        }
        let mut pong_with_text = HostMsg::Pong { stamp: 1 }.encode();
        pong_with_text[2] = 1;
        pong_with_text.push(b'x');
        assert!(HostMsg::decode(&pong_with_text).is_err());
        for bad in [
            &[][..],
            &[1; 15][..],
            &[9; 16][..],
            &[1, 7, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
        ] {
            assert!(HostMsg::decode(bad).is_err(), "{bad:?}");
        }
        // Every byte string decodes or is refused; none panics.
        let mut x = 1u64;
        for n in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v: Vec<u8> = (0..(n % 40)).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            let _ = HostMsg::decode(&v);
        }
    }
}
