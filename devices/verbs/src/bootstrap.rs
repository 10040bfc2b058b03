//! Connection bootstrap: what two sides tell each other over a TCP side channel before their
//! RC queue pairs can talk (the queue pair numbers and addresses, the starting packet
//! sequence numbers, receive buffers and eager limits), together with vmi's own connect
//! handshake (keys, the filter signature, connect data). No I/O: bytes in, checked values
//! out, and the agreement both sides reach.
//!
//! ```text
//! hello (56 bytes, then the nonce when flag bit 0 is set, from_key, to_key, signature,
//! connect data):
//!   0 "VMIV" | 4 version u8 | 5 flags u8 | 6 from_len u8 | 7 to_len u8 | 8 qpn u32 | 12 psn u32
//!   16 lid u16 | 18 mtu u8 | 19 0 | 20 credits u32 | 24 eager_max u32 | 28 sig_len u16
//!   30 0 u16 | 32 data_len u32 | 36 gid [16] | 52 0 u32
//! answer (52 bytes, then reason, reply data):
//!   0 "VMIW" | 4 version u8 | 5 accept u8 | 6 reason_len u16 | 8 qpn u32 | 12 psn u32
//!   16 lid u16 | 18 mtu u8 | 19 0 | 20 credits u32 | 24 eager_max u32 | 28 data_len u32
//!   32 gid [16] | 48 0 u32
//! control (8 bytes, after the answer, either way):
//!   0 "V" | 1 kind u8 (1 ready, 2 bye) | 2 0 u16 | 4 frames u32 (bye only)
//! ```
//!
//! Authentication (both sides hold a pre-shared key, `vmi_device::auth`): the hello carries
//! the connector's 32-byte nonce (flag bit 0); the listener answers first with
//! `vmi_device::auth`'s challenge record (its nonce and its proof), the connector with its
//! proof record, and only then does the listener take the hello further (the connect request,
//! the answer). The proofs cover both nonces, both keys and the filter signature.
//!
//! After the answer the side channel stays open and carries control messages: the connector
//! says `ready` once its queue pair can receive (the acceptor sends nothing on its queue pair
//! before), and a side that closes says `bye` with the number of frames it sent on its queue
//! pair, so the peer hands up every one of them before it reports the close. The channel's
//! end without a `bye` means the peer is gone.
//!
//! Every length is checked against its limit before anything is allocated, every reserved
//! byte must be zero, the packet sequence numbers and queue pair numbers must fit 24 bits,
//! the MTU must be one ibverbs defines (1–5), and the receive buffers and eager limit must be
//! within this side's bounds; an answer that refuses carries no queue pair.
#![forbid(unsafe_code)]

/// The protocol version this side speaks.
pub const VERSION: u8 = 1;
/// Bytes of a hello before its variable part.
pub const HELLO_FIXED: usize = 56;
/// Bytes of an answer before its variable part.
pub const ANSWER_FIXED: usize = 52;
/// Longest key.
pub const MAX_KEY: usize = 255;
/// Longest filter signature.
pub const MAX_SIGNATURE: usize = 4096;
/// Longest connect or reply data.
pub const MAX_DATA: usize = 64 * 1024;
/// Longest refusal reason.
pub const MAX_REASON: usize = 4096;
/// Most receive buffers a side may say it posts.
pub const MAX_CREDITS: u32 = 4096;
/// Largest eager limit a side may announce.
pub const MAX_EAGER: u32 = 1 << 20;

/// One side's queue pair, as the other needs it to connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpInfo {
    /// Queue pair number (24 bits).
    pub qpn: u32,
    /// Starting packet sequence number (24 bits).
    pub psn: u32,
    /// Local identifier (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Path MTU as ibverbs numbers it (1 = 256 bytes … 5 = 4096).
    pub mtu: u8,
    /// Global identifier (RoCE, or InfiniBand across subnets).
    pub gid: [u8; 16],
    /// Receive buffers posted for the other side.
    pub credits: u32,
    /// Largest fragment sent in a SEND (larger ones by RDMA READ).
    pub eager_max: u32,
}

/// The connector's first words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The connector's key.
    pub from_key: String,
    /// The key it wants.
    pub to_key: String,
    /// Its chain's filter signature.
    pub signature: String,
    /// Its connect data.
    pub data: Vec<u8>,
    /// Its queue pair.
    pub qp: QpInfo,
    /// The connector's nonce, when it authenticates (`vmi_device::auth`).
    pub nonce: Option<[u8; vmi_device::auth::NONCE_LEN]>,
}

/// The acceptor's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Accepted (else refused with `reason`).
    pub accept: bool,
    /// Why not, in words (empty when accepted).
    pub reason: String,
    /// Reply data.
    pub data: Vec<u8>,
    /// Its queue pair (zeros when refused).
    pub qp: QpInfo,
}

/// What both sides use once connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The smaller of the two receive buffer counts: each side's credits for the other (a
    /// side that posted more leaves the rest unused).
    pub credits: u32,
    /// The smaller of the two eager limits: both send eagerly up to it.
    pub eager_max: u32,
    /// The smaller of the two MTUs.
    pub mtu: u8,
}

/// Why bytes are not a bootstrap message, or the two sides cannot agree.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootstrapError {
    /// Not this protocol.
    #[error("the peer does not speak vmi's verbs bootstrap (magic {0:02x?})")]
    Magic([u8; 4]),
    /// Another version.
    #[error(
        "the peer speaks verbs bootstrap version {0}, this side {VERSION}; run the same vmi on both"
    )]
    Version(u8),
    /// A reserved byte is set.
    #[error("a bootstrap message with a reserved byte set")]
    Reserved,
    /// A length over its limit.
    #[error("a bootstrap {what} of {len} bytes, over the limit of {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value out of its range.
    #[error("a bootstrap {what} of {value}, out of range")]
    Range {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// Text that is not UTF-8.
    #[error("a bootstrap {0} that is not UTF-8")]
    Text(&'static str),
    /// The filter signatures differ.
    #[error(
        "filter signatures differ: this side {local:?}, the peer {remote:?}; use the same filters on both chains"
    )]
    Signature {
        /// This side's.
        local: String,
        /// The peer's.
        remote: String,
    },
}

/// More bytes are needed before a message can be parsed: how many in all.
#[derive(Debug, PartialEq, Eq)]
pub struct Need(pub usize);

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), BootstrapError> {
    if len > max {
        Err(BootstrapError::TooLong { what, len, max })
    } else {
        Ok(())
    }
}

impl QpInfo {
    fn check(&self) -> Result<(), BootstrapError> {
        let range = |what, value: u64| Err(BootstrapError::Range { what, value });
        if self.qpn >= 1 << 24 {
            return range("queue pair number", self.qpn.into());
        }
        if self.psn >= 1 << 24 {
            return range("packet sequence number", self.psn.into());
        }
        if !(1..=5).contains(&self.mtu) {
            return range("MTU", self.mtu.into());
        }
        if !(crate::proto::MIN_CREDITS..=MAX_CREDITS).contains(&self.credits) {
            return range("receive buffer count", self.credits.into());
        }
        if self.eager_max == 0 || self.eager_max > MAX_EAGER {
            return range("eager limit", self.eager_max.into());
        }
        Ok(())
    }
}

fn text(what: &'static str, b: &[u8]) -> Result<String, BootstrapError> {
    String::from_utf8(b.to_vec()).map_err(|_| BootstrapError::Text(what))
}

fn put_qp(b: &mut Vec<u8>, qp: &QpInfo) {
    b.extend_from_slice(&qp.qpn.to_le_bytes());
    b.extend_from_slice(&qp.psn.to_le_bytes());
    b.extend_from_slice(&qp.lid.to_le_bytes());
    b.push(qp.mtu);
    b.push(0);
    b.extend_from_slice(&qp.credits.to_le_bytes());
    b.extend_from_slice(&qp.eager_max.to_le_bytes());
}

/// The queue pair fields at 8..28 (the same place in both messages) and the gid at `gid_at`.
fn get_qp(b: &[u8], gid_at: usize) -> Result<QpInfo, BootstrapError> {
    if b[19] != 0 {
        return Err(BootstrapError::Reserved);
    }
    let mut gid = [0u8; 16];
    gid.copy_from_slice(&b[gid_at..gid_at + 16]);
    Ok(QpInfo {
        qpn: u32_at(b, 8),
        psn: u32_at(b, 12),
        lid: u16_at(b, 16),
        mtu: b[18],
        gid,
        credits: u32_at(b, 20),
        eager_max: u32_at(b, 24),
    })
}

impl Hello {
    /// Its bytes.
    pub fn emit(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(
            HELLO_FIXED
                + self.from_key.len()
                + self.to_key.len()
                + self.signature.len()
                + self.data.len(),
        );
        b.extend_from_slice(b"VMIV");
        b.push(VERSION);
        b.push(u8::from(self.nonce.is_some()));
        b.push(self.from_key.len() as u8);
        b.push(self.to_key.len() as u8);
        put_qp(&mut b, &self.qp);
        b.extend_from_slice(&(self.signature.len() as u16).to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.qp.gid);
        b.extend_from_slice(&[0; 4]);
        if let Some(n) = &self.nonce {
            b.extend_from_slice(n);
        }
        b.extend_from_slice(self.from_key.as_bytes());
        b.extend_from_slice(self.to_key.as_bytes());
        b.extend_from_slice(self.signature.as_bytes());
        b.extend_from_slice(&self.data);
        b
    }

    /// Parses a hello from the start of `b`: the hello and the bytes it took, or how many
    /// bytes are needed in all (a stream delivers them in pieces).
    pub fn parse(b: &[u8]) -> Result<Result<(Hello, usize), Need>, BootstrapError> {
        if b.len() < 5 {
            return Ok(Err(Need(HELLO_FIXED)));
        }
        let magic = [b[0], b[1], b[2], b[3]];
        if &magic != b"VMIV" {
            return Err(BootstrapError::Magic(magic));
        }
        if b[4] != VERSION {
            return Err(BootstrapError::Version(b[4]));
        }
        if b.len() < HELLO_FIXED {
            return Ok(Err(Need(HELLO_FIXED)));
        }
        if b[5] > 1 || b[30] != 0 || b[31] != 0 || b[52..56] != [0; 4] {
            return Err(BootstrapError::Reserved);
        }
        let nonce_len = if b[5] == 1 {
            vmi_device::auth::NONCE_LEN
        } else {
            0
        };
        let (from_len, to_len) = (b[6] as usize, b[7] as usize);
        let sig_len = u16_at(b, 28) as usize;
        let data_len = u32_at(b, 32) as usize;
        check_len("signature", sig_len, MAX_SIGNATURE)?;
        check_len("connect data", data_len, MAX_DATA)?;
        let qp = get_qp(b, 36)?;
        qp.check()?;
        let total = HELLO_FIXED + nonce_len + from_len + to_len + sig_len + data_len;
        if b.len() < total {
            return Ok(Err(Need(total)));
        }
        let mut at = HELLO_FIXED;
        let mut take = |n: usize| {
            let part = &b[at..at + n];
            at += n;
            part
        };
        let nonce = (nonce_len > 0).then(|| {
            let mut n = [0u8; vmi_device::auth::NONCE_LEN];
            n.copy_from_slice(take(nonce_len));
            n
        });
        let from_key = text("key", take(from_len))?;
        let to_key = text("key", take(to_len))?;
        let signature = text("signature", take(sig_len))?;
        let data = take(data_len).to_vec();
        Ok(Ok((
            Hello {
                from_key,
                to_key,
                signature,
                data,
                qp,
                nonce,
            },
            total,
        )))
    }
}

impl Answer {
    /// Its bytes.
    pub fn emit(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(ANSWER_FIXED + self.reason.len() + self.data.len());
        b.extend_from_slice(b"VMIW");
        b.push(VERSION);
        b.push(u8::from(self.accept));
        b.extend_from_slice(&(self.reason.len().min(MAX_REASON) as u16).to_le_bytes());
        put_qp(&mut b, &self.qp);
        b.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.qp.gid);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&self.reason.as_bytes()[..self.reason.len().min(MAX_REASON)]);
        b.extend_from_slice(&self.data);
        b
    }

    /// Parses an answer from the start of `b`, as [`Hello::parse`].
    pub fn parse(b: &[u8]) -> Result<Result<(Answer, usize), Need>, BootstrapError> {
        if b.len() < 5 {
            return Ok(Err(Need(ANSWER_FIXED)));
        }
        let magic = [b[0], b[1], b[2], b[3]];
        if &magic != b"VMIW" {
            return Err(BootstrapError::Magic(magic));
        }
        if b[4] != VERSION {
            return Err(BootstrapError::Version(b[4]));
        }
        if b.len() < ANSWER_FIXED {
            return Ok(Err(Need(ANSWER_FIXED)));
        }
        if b[5] > 1 || b[48..52] != [0; 4] {
            return Err(BootstrapError::Reserved);
        }
        let accept = b[5] == 1;
        let reason_len = u16_at(b, 6) as usize;
        let data_len = u32_at(b, 28) as usize;
        check_len("reason", reason_len, MAX_REASON)?;
        check_len("reply data", data_len, MAX_DATA)?;
        let qp = get_qp(b, 32)?;
        if accept {
            qp.check()?;
        } else if qp
            != (QpInfo {
                gid: [0; 16],
                ..QpInfo::none()
            })
        {
            // A refusal names no queue pair: nothing of this side's may be smuggled in it.
            return Err(BootstrapError::Reserved);
        }
        let total = ANSWER_FIXED + reason_len + data_len;
        if b.len() < total {
            return Ok(Err(Need(total)));
        }
        let reason = text("reason", &b[ANSWER_FIXED..ANSWER_FIXED + reason_len])?;
        let data = b[ANSWER_FIXED + reason_len..total].to_vec();
        Ok(Ok((
            Answer {
                accept,
                reason,
                data,
                qp,
            },
            total,
        )))
    }
}

impl QpInfo {
    /// No queue pair (a refusal's).
    pub fn none() -> QpInfo {
        QpInfo {
            qpn: 0,
            psn: 0,
            lid: 0,
            mtu: 0,
            gid: [0; 16],
            credits: 0,
            eager_max: 0,
        }
    }
}

/// A message on the side channel after the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// The connector's queue pair can receive: the acceptor may send.
    Ready,
    /// The sender closes after `frames` frames on its queue pair.
    Bye {
        /// Frames it sent in all.
        frames: u32,
    },
}

/// Bytes of a control message.
pub const CONTROL: usize = 8;

impl Control {
    /// Its bytes.
    pub fn emit(&self) -> [u8; CONTROL] {
        let (kind, frames) = match *self {
            Control::Ready => (1, 0),
            Control::Bye { frames } => (2, frames),
        };
        let mut b = [0u8; CONTROL];
        b[0] = b'V';
        b[1] = kind;
        b[4..8].copy_from_slice(&frames.to_le_bytes());
        b
    }

    /// Parses a control message from the start of `b`, or `None` when fewer than
    /// [`CONTROL`] bytes are there.
    pub fn parse(b: &[u8]) -> Result<Option<Control>, BootstrapError> {
        if b.len() < CONTROL {
            return Ok(None);
        }
        if b[0] != b'V' || b[2] != 0 || b[3] != 0 {
            return Err(BootstrapError::Reserved);
        }
        match (b[1], u32_at(b, 4)) {
            (1, 0) => Ok(Some(Control::Ready)),
            (2, frames) => Ok(Some(Control::Bye { frames })),
            _ => Err(BootstrapError::Reserved),
        }
    }
}

/// What the acceptor decides from a hello and its own side: the agreement, or why not (to be
/// answered as a refusal with that reason). The connector checks the answer the same way.
pub fn agree(
    local: &QpInfo,
    local_signature: &str,
    hello: &Hello,
) -> Result<Agreed, BootstrapError> {
    if hello.signature != local_signature {
        return Err(BootstrapError::Signature {
            local: local_signature.to_string(),
            remote: hello.signature.clone(),
        });
    }
    Ok(Agreed {
        credits: local.credits.min(hello.qp.credits),
        eager_max: local.eager_max.min(hello.qp.eager_max),
        mtu: local.mtu.min(hello.qp.mtu),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_messages_round_trip_and_refuse_garbage() {
        for c in [
            Control::Ready,
            Control::Bye { frames: 0 },
            Control::Bye { frames: 77 },
        ] {
            assert_eq!(Control::parse(&c.emit()), Ok(Some(c)));
        }
        assert_eq!(Control::parse(&Control::Ready.emit()[..7]), Ok(None));
        let mut b = Control::Ready.emit();
        b[4] = 1;
        assert_eq!(
            Control::parse(&b),
            Err(BootstrapError::Reserved),
            "a ready with frames"
        );
        let mut b = Control::Ready.emit();
        b[1] = 3;
        assert_eq!(
            Control::parse(&b),
            Err(BootstrapError::Reserved),
            "an unknown kind"
        );
        let mut b = Control::Ready.emit();
        b[0] = b'W';
        assert_eq!(
            Control::parse(&b),
            Err(BootstrapError::Reserved),
            "a bad magic"
        );
    }

    fn qp(n: u32) -> QpInfo {
        QpInfo {
            qpn: 0x12 + n,
            psn: 0xabcdef,
            lid: 7,
            mtu: 5,
            gid: [n as u8; 16],
            credits: 64,
            eager_max: 8192,
        }
    }

    fn hello() -> Hello {
        Hello {
            from_key: "alice".into(),
            to_key: "bob".into(),
            signature: "send=crc;recv=crc".into(),
            data: b"connect".to_vec(),
            qp: qp(1),
            nonce: None,
        }
    }

    #[test]
    fn a_hello_and_an_answer_round_trip_and_arrive_in_pieces() {
        let h = hello();
        let b = h.emit();
        for cut in [0, 4, 20, HELLO_FIXED, b.len() - 1] {
            assert!(
                matches!(Hello::parse(&b[..cut]), Ok(Err(Need(_)))),
                "cut at {cut}"
            );
        }
        let (back, used) = Hello::parse(&b).unwrap().unwrap();
        assert_eq!((back, used), (h.clone(), b.len()));
        // With a nonce (authentication): it travels after the fixed part.
        let h = Hello {
            nonce: Some([7; 32]),
            ..h
        };
        let b = h.emit();
        assert!(matches!(
            Hello::parse(&b[..HELLO_FIXED + 31]),
            Ok(Err(Need(_)))
        ));
        assert_eq!(Hello::parse(&b).unwrap().unwrap(), (h, b.len()));
        let a = Answer {
            accept: true,
            reason: String::new(),
            data: b"welcome".to_vec(),
            qp: qp(2),
        };
        let b = a.emit();
        assert_eq!(Answer::parse(&b).unwrap().unwrap(), (a, b.len()));
        let no = Answer {
            accept: false,
            reason: "no such key".into(),
            data: Vec::new(),
            qp: QpInfo::none(),
        };
        let b = no.emit();
        assert_eq!(Answer::parse(&b).unwrap().unwrap().0, no);
    }

    #[test]
    fn bad_fields_are_refused_with_the_reason() {
        let mut b = hello().emit();
        b[0] = b'X';
        assert!(matches!(Hello::parse(&b), Err(BootstrapError::Magic(_))));
        let mut b = hello().emit();
        b[4] = 9;
        assert_eq!(Hello::parse(&b), Err(BootstrapError::Version(9)));
        let mut b = hello().emit();
        b[19] = 1;
        assert_eq!(Hello::parse(&b), Err(BootstrapError::Reserved));
        let mut b = hello().emit();
        b[32..36].copy_from_slice(&(MAX_DATA as u32 + 1).to_le_bytes());
        assert!(matches!(
            Hello::parse(&b),
            Err(BootstrapError::TooLong { .. })
        ));
        let mut h = hello();
        h.qp.mtu = 6;
        assert!(matches!(
            Hello::parse(&h.emit()),
            Err(BootstrapError::Range { what: "MTU", .. })
        ));
        h.qp.mtu = 5;
        h.qp.qpn = 1 << 24;
        assert!(matches!(
            Hello::parse(&h.emit()),
            Err(BootstrapError::Range { .. })
        ));
        h.qp.qpn = 1;
        h.qp.credits = 2;
        assert!(matches!(
            Hello::parse(&h.emit()),
            Err(BootstrapError::Range { .. })
        ));
        let mut h = hello();
        h.from_key = "\u{0}".into();
        let mut b = h.emit();
        b[HELLO_FIXED] = 0xff;
        assert_eq!(Hello::parse(&b), Err(BootstrapError::Text("key")));
        // A refusal that names a queue pair smuggles something: refused.
        let mut bad = Answer {
            accept: false,
            reason: String::new(),
            data: Vec::new(),
            qp: QpInfo::none(),
        };
        bad.qp.qpn = 5;
        assert_eq!(Answer::parse(&bad.emit()), Err(BootstrapError::Reserved));
    }

    #[test]
    fn the_sides_agree_on_the_smaller_limits_or_refuse_another_signature() {
        let mut local = qp(3);
        local.eager_max = 4096;
        local.mtu = 3;
        let a = agree(&local, "send=crc;recv=crc", &hello()).unwrap();
        assert_eq!((a.eager_max, a.mtu), (4096, 3));
        let e = agree(&local, "send=;recv=", &hello()).unwrap_err();
        assert!(e.to_string().contains("send=crc;recv=crc"), "{e}");
    }

    proptest! {
        /// Any bytes: parsing never panics, never asks for more than the limits allow, and
        /// what parses emits back to the same bytes.
        #[test]
        fn fuzz_any_bytes_parse_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            match Hello::parse(&b) {
                Ok(Ok((h, used))) => prop_assert_eq!(&h.emit()[..], &b[..used]),
                Ok(Err(Need(n))) => prop_assert!(n <= HELLO_FIXED + 2 * MAX_KEY + MAX_SIGNATURE + MAX_DATA),
                Err(_) => {}
            }
            match Answer::parse(&b) {
                Ok(Ok((a, used))) => prop_assert_eq!(&a.emit()[..], &b[..used]),
                Ok(Err(Need(n))) => prop_assert!(n <= ANSWER_FIXED + MAX_REASON + MAX_DATA),
                Err(_) => {}
            }
        }
    }
}
