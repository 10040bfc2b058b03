//! Shared-memory wire formats, little-endian with explicit widths.
//!
//! ```text
//! Control socket (abstract Unix socket), connector -> listener: Hello, 40-byte header, then
//!   from_key | to_key | signature | connect data, with SCM_RIGHTS [ring memfd, doorbell eventfd]
//!   0 "VMIS" | 4 version u8 | 5 0 | 6 from_key_len u16 | 8 to_key_len u16 | 10 sig_len u16
//!   12 data_len u32 | 16 ring_size u32 | 20 flags u32 | 24 probe_addr u64 | 32 probe_len u32 | 36 0
//!   flags bit 0: the connector authenticates; a 32-byte nonce ends the body.
//!   flags bit 1: the connector registered for membarrier barriers (`crate::barrier`).
//!   flags bit 2: the connector shares single copies (`crate::coop`).
//! With authentication, before the answer: the listener sends a challenge (80 bytes,
//!   "VMIC" | version | 11 zero bytes | nonce (32) | proof (32)), the connector its proof (48
//!   bytes, "VMIP" | version | 11 zero bytes | proof (32)); proofs as in `vmi_device::auth`.
//! Listener -> connector: Answer, 24-byte header, then reason | reply data,
//!   with SCM_RIGHTS [doorbell eventfd] when accepted
//!   0 "VMIR" | 4 version | 5 status | 6 reason_len u16 | 8 reply_len u32 | 12 can_read_you u8
//!   13 barrier u8 (0 or 1: the listener registered for membarrier barriers)
//!   14 coop u8 (0 or 1: the listener shares single copies) | 15 0
//!   16 probe_addr u64
//! Afterwards single bytes: 'C'/'N' (connector can / cannot read the listener's memory),
//! 'B' (orderly close). The socket closing without 'B' means the peer died.
//!
//! Ring records, 16-byte header (the data records are the format the host reads and writes
//! in lent rings, `vmi_device::lent`, so the shared constants come from there):
//!   0 kind u8 | 1 0 | 2 filter flags u16 | 4 len u32 | 8 id u64
//!   DATA / DATA_END: len payload bytes follow.
//!   RDV / RDV_END: count u32, 0 u32, then count x (addr u64, len u64) in the sender's memory;
//!   the receiver reads them with process_vm_readv and answers ACK (or NACK: send it inline).
//! ```

use vmi_device::auth::{NONCE_LEN, PROOF_LEN};

/// Hello magic.
pub const HELLO_MAGIC: [u8; 4] = *b"VMIS";
/// Answer magic.
pub const ANSWER_MAGIC: [u8; 4] = *b"VMIR";
/// Control protocol version (2: both sides say whether they registered for membarrier
/// barriers, which lets a connection's sends skip the doorbell's fence; 3: and whether they
/// share single copies, `crate::coop`, in the ring header's fourth cache line).
pub const VERSION: u8 = 3;
/// Hello header length.
pub const HELLO_LEN: usize = 40;
/// Answer header length.
pub const ANSWER_LEN: usize = 24;
/// Ring record header length.
pub const RECORD_LEN: usize = vmi_device::abi::VMI_RING_RECORD_LEN;
/// Largest key.
pub const MAX_KEY: usize = 255;
/// Largest signature.
pub const MAX_SIGNATURE: usize = 4096;
/// Largest reason text.
pub const MAX_REASON: usize = 4096;

/// Record kinds.
pub const DATA: u8 = vmi_device::abi::VMI_RING_DATA;
/// Last fragment, data inline.
pub const DATA_END: u8 = vmi_device::abi::VMI_RING_DATA_END;
/// Fragment to read from the sender's memory.
pub const RDV: u8 = 3;
/// Last fragment, to read from the sender's memory.
pub const RDV_END: u8 = 4;
/// The receiver read an RDV fragment.
pub const ACK: u8 = 5;
/// The receiver could not read an RDV fragment.
pub const NACK: u8 = 6;

/// Answer statuses.
pub const ACCEPT: u8 = 0;
/// Rejected by the application.
pub const REJECT: u8 = 1;
/// Filter chains differ.
pub const MISMATCH: u8 = 2;
/// Malformed or wrong key.
pub const INVALID: u8 = 3;

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

/// A hello's fixed part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Lengths of the variable parts.
    pub from_key_len: u16,
    /// Wanted key length.
    pub to_key_len: u16,
    /// Signature length.
    pub sig_len: u16,
    /// Connect data length.
    pub data_len: u32,
    /// Ring bytes per direction.
    pub ring_size: u32,
    /// Address of the connector's probe bytes.
    pub probe_addr: u64,
    /// Their length.
    pub probe_len: u32,
    /// A nonce ends the body (the connector authenticates).
    pub auth: bool,
    /// The connector registered for membarrier barriers.
    pub barrier: bool,
    /// The connector shares single copies (`crate::coop`).
    pub coop: bool,
}

/// What a side offers in its hello or answer besides the single-copy probe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// It registered for membarrier barriers (`crate::barrier`).
    pub barrier: bool,
    /// It shares single copies (`crate::coop`): opens shares as a receiver, helps as a sender.
    pub coop: bool,
}

impl Hello {
    /// Bytes after the header.
    pub fn body_len(&self) -> usize {
        self.from_key_len as usize
            + self.to_key_len as usize
            + self.sig_len as usize
            + self.data_len as usize
            + if self.auth { NONCE_LEN } else { 0 }
    }

    /// Parses and checks the header.
    pub fn parse(b: &[u8], max_data: u32) -> Result<Hello, String> {
        if b.len() < HELLO_LEN {
            return Err("short hello".into());
        }
        if b[..4] != HELLO_MAGIC {
            return Err(format!("bad magic {:02x?}", &b[..4]));
        }
        if b[4] != VERSION {
            return Err(format!(
                "control version {}, this side speaks {VERSION}",
                b[4]
            ));
        }
        let h = Hello {
            from_key_len: u16_at(b, 6),
            to_key_len: u16_at(b, 8),
            sig_len: u16_at(b, 10),
            data_len: u32_at(b, 12),
            ring_size: u32_at(b, 16),
            probe_addr: u64_at(b, 24),
            probe_len: u32_at(b, 32),
            auth: u32_at(b, 20) & HELLO_FLAG_AUTH != 0,
            barrier: u32_at(b, 20) & HELLO_FLAG_BARRIER != 0,
            coop: u32_at(b, 20) & HELLO_FLAG_COOP != 0,
        };
        if u32_at(b, 20) & !(HELLO_FLAG_AUTH | HELLO_FLAG_BARRIER | HELLO_FLAG_COOP) != 0 {
            return Err("unknown hello flags".into());
        }
        if h.from_key_len as usize > MAX_KEY || h.to_key_len as usize > MAX_KEY {
            return Err("key over 255 bytes".into());
        }
        if h.sig_len as usize > MAX_SIGNATURE {
            return Err("signature over 4 KiB".into());
        }
        if h.data_len > max_data {
            return Err(format!(
                "connect data of {} bytes is over the limit of {max_data}",
                h.data_len
            ));
        }
        if !h.ring_size.is_power_of_two()
            || !(4096..=64 << 20).contains(&h.ring_size)
            || h.probe_len > 64
        {
            return Err(format!(
                "ring size {} is not a power of two from 4k to 64m",
                h.ring_size
            ));
        }
        Ok(h)
    }

    /// Writes a whole hello.
    pub fn emit(
        from: &str,
        to: &str,
        sig: &str,
        data: &[u8],
        ring_size: u32,
        probe: &[u8],
    ) -> Vec<u8> {
        Self::emit_with(from, to, sig, data, ring_size, probe, None, Caps::default())
    }

    /// Writes a whole hello, with the connector's nonce when it authenticates, and what it
    /// offers (`caps`).
    #[allow(clippy::too_many_arguments)]
    pub fn emit_with(
        from: &str,
        to: &str,
        sig: &str,
        data: &[u8],
        ring_size: u32,
        probe: &[u8],
        nonce: Option<&[u8; NONCE_LEN]>,
        caps: Caps,
    ) -> Vec<u8> {
        let mut v = Vec::with_capacity(HELLO_LEN + from.len() + to.len() + sig.len() + data.len());
        v.extend_from_slice(&HELLO_MAGIC);
        v.extend_from_slice(&[VERSION, 0]);
        v.extend_from_slice(&(from.len() as u16).to_le_bytes());
        v.extend_from_slice(&(to.len() as u16).to_le_bytes());
        v.extend_from_slice(&(sig.len() as u16).to_le_bytes());
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(&ring_size.to_le_bytes());
        let flags = if nonce.is_some() { HELLO_FLAG_AUTH } else { 0 }
            | if caps.barrier { HELLO_FLAG_BARRIER } else { 0 }
            | if caps.coop { HELLO_FLAG_COOP } else { 0 };
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(&(probe.as_ptr() as u64).to_le_bytes());
        v.extend_from_slice(&(probe.len() as u32).to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(from.as_bytes());
        v.extend_from_slice(to.as_bytes());
        v.extend_from_slice(sig.as_bytes());
        v.extend_from_slice(data);
        if let Some(n) = nonce {
            v.extend_from_slice(n);
        }
        v
    }
}

/// Bytes a peer reads to find out whether single copy works: their address travels in the
/// hello and the answer, and the peer reads them with `process_vm_readv`. A static, so the
/// address stays valid for the process's life.
pub static PROBE: [u8; 16] = *b"vmi-shmem-probe!";

/// Hello flag: authentication.
pub const HELLO_FLAG_AUTH: u32 = 1;
/// Hello flag: the connector registered for membarrier barriers (see `crate::barrier`).
pub const HELLO_FLAG_BARRIER: u32 = 2;
/// Hello flag: the connector shares single copies (see `crate::coop`).
pub const HELLO_FLAG_COOP: u32 = 4;
pub use vmi_device::auth::{CHALLENGE_LEN, CHALLENGE_MAGIC, PROOF_MAGIC, PROOF_RECORD_LEN};

/// Writes a challenge.
pub fn emit_challenge(nonce: &[u8; NONCE_LEN], proof: &[u8; PROOF_LEN]) -> Vec<u8> {
    vmi_device::auth::challenge_record(VERSION, nonce, proof)
}

/// Writes a proof record.
pub fn emit_proof(proof: &[u8; PROOF_LEN]) -> Vec<u8> {
    vmi_device::auth::proof_record(VERSION, proof)
}

/// A challenge's nonce and proof, when `b` starts with a whole, well-formed one.
pub fn parse_challenge(b: &[u8]) -> Option<([u8; NONCE_LEN], [u8; PROOF_LEN])> {
    vmi_device::auth::parse_challenge(b, VERSION)
}

/// A proof record's proof, when `b` starts with a whole, well-formed one.
pub fn parse_proof(b: &[u8]) -> Option<[u8; PROOF_LEN]> {
    vmi_device::auth::parse_proof(b, VERSION)
}

/// An answer's fixed part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Status.
    pub status: u8,
    /// Reason length.
    pub reason_len: u16,
    /// Reply data length.
    pub reply_len: u32,
    /// The listener can read the connector's memory.
    pub can_read_you: bool,
    /// Address of the listener's probe bytes.
    pub probe_addr: u64,
    /// The listener registered for membarrier barriers.
    pub barrier: bool,
    /// The listener shares single copies (`crate::coop`).
    pub coop: bool,
}

impl Answer {
    /// Bytes after the header.
    pub fn body_len(&self) -> usize {
        self.reason_len as usize + self.reply_len as usize
    }

    /// Parses and checks the header.
    pub fn parse(b: &[u8], max_data: u32) -> Result<Answer, String> {
        if b.len() < ANSWER_LEN || b[..4] != ANSWER_MAGIC || b[4] != VERSION {
            return Err("not a vmi shared-memory answer".into());
        }
        let a = Answer {
            status: b[5],
            reason_len: u16_at(b, 6),
            reply_len: u32_at(b, 8),
            can_read_you: b[12] != 0,
            probe_addr: u64_at(b, 16),
            barrier: b[13] == 1,
            coop: b[14] == 1,
        };
        if a.status > INVALID
            || a.reason_len as usize > MAX_REASON
            || a.reply_len > max_data
            || b[13] > 1
            || b[14] > 1
        {
            return Err("answer over its limits".into());
        }
        Ok(a)
    }

    /// Writes a whole answer.
    pub fn emit(
        status: u8,
        reason: &str,
        reply: &[u8],
        can_read_you: bool,
        caps: Caps,
        probe: &[u8],
    ) -> Vec<u8> {
        let reason = &reason.as_bytes()[..reason.len().min(MAX_REASON)];
        let mut v = Vec::with_capacity(ANSWER_LEN + reason.len() + reply.len());
        v.extend_from_slice(&ANSWER_MAGIC);
        v.extend_from_slice(&[VERSION, status]);
        v.extend_from_slice(&(reason.len() as u16).to_le_bytes());
        v.extend_from_slice(&(reply.len() as u32).to_le_bytes());
        v.extend_from_slice(&[
            u8::from(can_read_you),
            u8::from(caps.barrier),
            u8::from(caps.coop),
            0,
        ]);
        v.extend_from_slice(&(probe.as_ptr() as u64).to_le_bytes());
        v.extend_from_slice(reason);
        v.extend_from_slice(reply);
        v
    }
}

/// A ring record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Kind.
    pub kind: u8,
    /// Filter flag bits.
    pub flags: u16,
    /// Payload length (for RDV: the fragment's length).
    pub len: u32,
    /// RDV / ACK / NACK id.
    pub id: u64,
}

impl Record {
    /// Parses a header.
    pub fn parse(b: &[u8; RECORD_LEN]) -> Result<Record, String> {
        let r = Record {
            kind: b[0],
            flags: u16_at(b, 2),
            len: u32_at(b, 4),
            id: u64_at(b, 8),
        };
        if !(DATA..=NACK).contains(&r.kind) {
            return Err(format!("unknown record kind {}", r.kind));
        }
        Ok(r)
    }

    /// Writes a header.
    pub fn emit(&self) -> [u8; RECORD_LEN] {
        let mut h = [0u8; RECORD_LEN];
        h[0] = self.kind;
        h[2..4].copy_from_slice(&self.flags.to_le_bytes());
        h[4..8].copy_from_slice(&self.len.to_le_bytes());
        h[8..16].copy_from_slice(&self.id.to_le_bytes());
        h
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Parsers see bytes from another process: any input is refused or accepted, never a
        /// panic, and accepted lengths are within the limits.
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(h) = Hello::parse(&bytes, 1000) {
                prop_assert!(h.data_len <= 1000 && (h.from_key_len as usize) <= MAX_KEY);
            }
            if let Ok(a) = Answer::parse(&bytes, 1000) {
                prop_assert!(a.reply_len <= 1000 && (a.reason_len as usize) <= MAX_REASON);
            }
            if bytes.len() >= RECORD_LEN {
                let head: [u8; RECORD_LEN] = bytes[..RECORD_LEN].try_into().unwrap();
                if let Ok(r) = Record::parse(&head) {
                    prop_assert_eq!(Record::parse(&r.emit()), Ok(r));
                }
            }
        }
    }

    #[test]
    fn record_bytes() {
        let r = Record {
            kind: RDV_END,
            flags: 0x0201,
            len: 7,
            id: 0x0807060504030201,
        };
        assert_eq!(r.emit(), [4, 0, 1, 2, 7, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Record::parse(&r.emit()), Ok(r));
        assert!(Record::parse(&[9; 16]).is_err());
    }

    #[test]
    fn hello_and_answer_round_trip_and_limits() {
        let probe = [1u8; 16];
        let v = Hello::emit("a", "bb", "send=;recv=", b"cookie", 65536, &probe);
        let h = Hello::parse(&v, 1024).unwrap();
        assert_eq!(
            (
                h.from_key_len,
                h.to_key_len,
                h.data_len,
                h.ring_size,
                h.probe_len
            ),
            (1, 2, 6, 65536, 16)
        );
        assert_eq!(h.body_len(), v.len() - HELLO_LEN);
        assert!(Hello::parse(&v, 3).unwrap_err().contains("over the limit"));
        let mut bad = v.clone();
        bad[16..20].copy_from_slice(&1000u32.to_le_bytes());
        assert!(
            Hello::parse(&bad, 1024).is_err(),
            "ring size must be a power of two"
        );
        assert!(Hello::parse(b"GET / HTTP/1.1\r\n\r\n......................", 10).is_err());
        let a = Answer::emit(REJECT, "no", b"xy", true, Caps::default(), &probe);
        let p = Answer::parse(&a, 10).unwrap();
        assert_eq!(
            (
                p.status,
                p.reason_len,
                p.reply_len,
                p.can_read_you,
                p.barrier
            ),
            (REJECT, 2, 2, true, false)
        );
        assert!(Answer::parse(&a, 1).is_err());
    }

    /// The membarrier registration and the shared copy travel both ways; a hello with a
    /// flag this side does not know, or an answer whose barrier or coop byte is neither 0 nor
    /// 1, is refused.
    #[test]
    fn the_capability_flags_round_trip_and_unknown_ones_are_refused() {
        let probe = [1u8; 16];
        for barrier in [false, true] {
            for coop in [false, true] {
                let caps = Caps { barrier, coop };
                let v = Hello::emit_with("a", "b", "", b"", 65536, &probe, None, caps);
                let h = Hello::parse(&v, 16).unwrap();
                assert_eq!((h.barrier, h.coop, h.auth), (barrier, coop, false));
                let a = Answer::emit(ACCEPT, "", b"", false, caps, &probe);
                let a = Answer::parse(&a, 16).unwrap();
                assert_eq!((a.barrier, a.coop), (barrier, coop));
            }
        }
        let all = Caps {
            barrier: true,
            coop: true,
        };
        let mut v = Hello::emit_with("a", "b", "", b"", 65536, &probe, None, all);
        v[20] |= 8;
        assert!(
            Hello::parse(&v, 16)
                .unwrap_err()
                .contains("unknown hello flags")
        );
        for byte in [13, 14] {
            let mut a = Answer::emit(ACCEPT, "", b"", false, all, &probe);
            a[byte] = 2;
            assert!(Answer::parse(&a, 16).is_err(), "byte {byte}");
        }
        // A peer of the first control version is told which version this side speaks.
        let mut old = Hello::emit("a", "b", "", b"", 65536, &probe);
        old[4] = 1;
        assert!(
            Hello::parse(&old, 16)
                .unwrap_err()
                .contains("this side speaks 3")
        );
    }
}

/// Fuzz targets for the control messages a peer sends (proptest; a short run in every
/// `cargo test`, `PROPTEST_CASES=100000` for a long one).
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn hellos_and_answers_from_arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            valid_magic in any::<bool>(),
        ) {
            let mut b = bytes;
            if valid_magic && b.len() >= 4 {
                b[..4].copy_from_slice(&HELLO_MAGIC);
            }
            if let Ok(h) = Hello::parse(&b, 1 << 16) {
                // Whatever parses has lengths within the limits.
                prop_assert!(h.body_len() <= 3 * 4096 + (1 << 16));
                prop_assert!(h.ring_size.is_power_of_two());
            }
            if valid_magic && b.len() >= 4 {
                b[..4].copy_from_slice(&ANSWER_MAGIC);
            }
            if let Ok(a) = Answer::parse(&b, 1 << 16) {
                prop_assert!(a.body_len() <= MAX_REASON + (1 << 16));
            }
            if b.len() >= RECORD_LEN {
                let _ = Record::parse(b[..RECORD_LEN].try_into().unwrap());
            }
        }
    }
}
