//! The records that travel on a rail: every message on a rail connection is one of these
//! 32-byte headers, followed by the chunk's bytes for `Data`. Little-endian, explicit widths,
//! a version byte; every field is checked by the receiver (`receiver`) before it is used.

use thiserror::Error;

/// Header length in bytes.
pub const HEADER: usize = 32;
/// First byte of every record.
const MAGIC: u8 = b'R';
/// Wire version.
const VERSION: u8 = 1;

const KIND_DATA: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_FAIL: u8 = 3;
const FLAG_END: u8 = 1;

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// Bytes `offset..offset+len` of fragment `seq`, `total` bytes long; `end` when the
    /// fragment ends its message (the application's `Recv::End`). The chunk's bytes follow.
    Data {
        /// Fragment sequence number on the bonded connection.
        seq: u64,
        /// Where the chunk goes in the fragment.
        offset: u64,
        /// The fragment's whole length.
        total: u64,
        /// The fragment ends a message.
        end: bool,
    },
    /// Every fragment before `next` was delivered (or failed) at the receiver.
    Ack {
        /// The first fragment not yet delivered.
        next: u64,
    },
    /// Fragment `seq` cannot be delivered (a chunk of it failed too often): the receiver
    /// fails its message at its turn.
    Fail {
        /// The fragment.
        seq: u64,
    },
}

/// A record that breaks the rules.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than a header.
    #[error("a rail record of {0} bytes is shorter than its 32-byte header")]
    Short(usize),
    /// Not a rail record, or another version.
    #[error("not a rail record of version {VERSION} (magic {magic:#04x}, version {version})")]
    Version {
        /// The first byte.
        magic: u8,
        /// The second byte.
        version: u8,
    },
    /// An unknown kind.
    #[error("unknown rail record kind {0}")]
    Kind(u8),
}

fn header(kind: u8, flags: u8, a: u64, b: u64, c: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0] = MAGIC;
    h[1] = VERSION;
    h[2] = kind;
    h[3] = flags;
    h[8..16].copy_from_slice(&a.to_le_bytes());
    h[16..24].copy_from_slice(&b.to_le_bytes());
    h[24..32].copy_from_slice(&c.to_le_bytes());
    h
}

impl Record {
    /// The 32-byte header.
    pub fn encode(&self) -> [u8; HEADER] {
        match *self {
            Record::Data {
                seq,
                offset,
                total,
                end,
            } => header(
                KIND_DATA,
                if end { FLAG_END } else { 0 },
                seq,
                offset,
                total,
            ),
            Record::Ack { next } => header(KIND_ACK, 0, next, 0, 0),
            Record::Fail { seq } => header(KIND_FAIL, 0, seq, 0, 0),
        }
    }

    /// Reads a header from the first 32 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<Record, WireError> {
        if b.len() < HEADER {
            return Err(WireError::Short(b.len()));
        }
        if b[0] != MAGIC || b[1] != VERSION {
            return Err(WireError::Version {
                magic: b[0],
                version: b[1],
            });
        }
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        match b[2] {
            KIND_DATA => Ok(Record::Data {
                seq: word(8),
                offset: word(16),
                total: word(24),
                end: b[3] & FLAG_END != 0,
            }),
            KIND_ACK => Ok(Record::Ack { next: word(8) }),
            KIND_FAIL => Ok(Record::Fail { seq: word(8) }),
            k => Err(WireError::Kind(k)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for r in [
            Record::Data {
                seq: 7,
                offset: 1 << 40,
                total: u64::MAX,
                end: true,
            },
            Record::Data {
                seq: 0,
                offset: 0,
                total: 0,
                end: false,
            },
            Record::Ack { next: 99 },
            Record::Fail { seq: 3 },
        ] {
            assert_eq!(Record::decode(&r.encode()), Ok(r));
        }
    }

    #[test]
    fn bad_records_are_refused() {
        assert_eq!(Record::decode(&[0; 31]), Err(WireError::Short(31)));
        let mut h = Record::Ack { next: 1 }.encode();
        h[1] = 2;
        assert!(matches!(Record::decode(&h), Err(WireError::Version { .. })));
        h[1] = VERSION;
        h[2] = 9;
        assert_eq!(Record::decode(&h), Err(WireError::Kind(9)));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_without_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = Record::decode(&b);
        }
    }
}
