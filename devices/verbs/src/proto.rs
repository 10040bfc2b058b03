//! One side of a verbs connection, as a state machine with no I/O.
//!
//! - **Credits.** The peer posts `credits` receive buffers for this side at connect time;
//!   every frame this side sends consumes one. A frame hands back the receive buffers this
//!   side reposted since its last frame (`credits` in its header). Data frames keep one credit
//!   in reserve, which only a credit-return frame may use, so credits can always flow back
//!   and neither side waits for the other for ever. A side sends a credit return of its own
//!   once half of its buffers are used and no other frame carried them back.
//! - **Eager.** A fragment up to `eager_max` bytes travels in the SEND itself (copied into a
//!   registered send buffer by the device); it is done when the SEND completes locally.
//! - **Rendezvous.** A larger fragment stays in the sender's registered memory; the frame
//!   says where (`Rts`); the receiver reads it with RDMA READ into memory of its own and
//!   answers `Fin`, which ends the fragment at the sender.
//! - **Order.** Fragments are handed up in the order they were sent: an eager fragment that
//!   arrives while an earlier large one is still being read waits for it.
//!
//! Everything from the peer is checked: frames numbered consecutively (RC delivers in order:
//! a gap or a repeat is a protocol error), no more credits returned than were used, sizes
//! within the limits, a `Fin` only for a fragment this side offered, one `Rts` per id, a
//! bounded number of reads in flight. A protocol error ends the connection.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};

use crate::wire::{Body, Frame, HEADER, Meta, WireError};

/// The fewest receive buffers a side posts for the other. A credit return of its own is sent
/// once half of them are used, so it always hands back at least two: a side that spent its
/// reserve on a credit return gets credits back with the next one, and credit returns cannot
/// answer each other for ever (each needs two frames received to send one).
pub const MIN_CREDITS: u32 = 4;

/// Limits and sizes of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest fragment sent in the SEND itself; larger ones go by RDMA READ.
    pub eager_max: usize,
    /// Receive buffers each side posts for the other (at least [`MIN_CREDITS`]).
    pub credits: u32,
    /// Largest fragment accepted.
    pub max_fragment: u64,
    /// Fragments this side may queue while it waits for credits.
    pub max_queued: usize,
    /// Reads in flight the peer may ask of this side.
    pub max_reads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            eager_max: 8192,
            credits: 64,
            max_fragment: 256 << 20,
            max_queued: 4096,
            max_reads: 256,
        }
    }
}

/// A fragment the host gives to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Its bytes (at most `eager_max`), copied, and its marks.
    Eager(Vec<u8>, Meta),
    /// Registered memory the peer reads.
    Large {
        /// Address.
        addr: u64,
        /// Remote key of its memory region.
        rkey: u32,
        /// Length.
        len: u64,
        /// Its marks.
        meta: Meta,
    },
}

/// Work for the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Post a SEND of `bytes`; report its completion with [`Endpoint::send_done`]`(wr)`.
    Send {
        /// Work request id.
        wr: u64,
        /// Header and payload.
        bytes: Vec<u8>,
    },
    /// Post an RDMA READ of `len` bytes at the peer's `addr` with `rkey` into memory of this
    /// side; report its completion with [`Endpoint::read_done`]`(msg)`.
    Read {
        /// The fragment.
        msg: u64,
        /// Peer address.
        addr: u64,
        /// Remote key.
        rkey: u32,
        /// Length.
        len: u64,
    },
    /// Hand this received fragment, with its marks, to the host.
    Deliver(Vec<u8>, Meta),
    /// Hand the fragment read for `msg` (the READ's memory) to the host.
    DeliverRead {
        /// The fragment.
        msg: u64,
        /// Its marks.
        meta: Meta,
    },
    /// The host's fragment `token` is sent: its memory may be reused.
    Sent {
        /// The host's token.
        token: u64,
    },
}

/// Why a send is refused now.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// Too many fragments wait for credits: the peer is behind.
    #[error("{0} fragments wait for the peer to free receive buffers; poll and send again")]
    Busy(usize),
    /// Over a limit.
    #[error("a fragment of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Given.
        len: u64,
        /// Limit.
        max: u64,
    },
}

/// What the peer did wrong; the connection must end.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// Not a frame.
    #[error("malformed frame: {0}")]
    Wire(#[from] WireError),
    /// A frame out of order.
    #[error("frame {got} arrived where {want} was due")]
    Sequence {
        /// Due.
        want: u32,
        /// Arrived.
        got: u32,
    },
    /// More credits returned than this side used.
    #[error("{returned} credits returned where only {outstanding} were in use")]
    Credits {
        /// Returned.
        returned: u32,
        /// In use.
        outstanding: u32,
    },
    /// A fragment over a limit.
    #[error("a fragment of {len} bytes, over the limit of {max}")]
    TooLarge {
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A `Fin` for no fragment this side offered.
    #[error("a finish for fragment {0}, which this side did not offer")]
    UnknownFin(u64),
    /// A second `Rts` with an id already being read.
    #[error("fragment {0} offered twice")]
    DuplicateRts(u64),
    /// More reads asked than allowed.
    #[error("more than {0} reads asked at once")]
    TooManyReads(usize),
    /// The device reported a read this side did not post.
    #[error("a read completion for fragment {0}, which no read was posted for")]
    UnknownRead(u64),
}

/// A received fragment waiting for its turn to be handed up.
enum Incoming {
    Eager(Vec<u8>, Meta),
    /// A read in flight (false) or done (true).
    Read(u64, bool, Meta),
}

/// One side of a connection.
pub struct Endpoint {
    cfg: Config,
    tx_seq: u32,
    rx_seq: u32,
    /// Receive buffers the peer has posted for this side and this side has not used.
    tx_credits: u32,
    /// This side's receive buffers used (and reposted) since it last handed them back.
    rx_consumed: u32,
    /// Control frames to send ahead of data (finishes).
    control: VecDeque<Body>,
    /// Host fragments waiting for credits.
    queued: VecDeque<(u64, Fragment)>,
    /// Eager sends posted, by work request: the host's token.
    eager: HashMap<u64, u64>,
    /// Rendezvous offered, by fragment id: the host's token.
    offered: HashMap<u64, u64>,
    /// Received fragments in arrival order, until handed up.
    incoming: VecDeque<Incoming>,
    next_wr: u64,
    next_msg: u64,
    actions: VecDeque<Action>,
}

impl Endpoint {
    /// A side whose peer has posted `cfg.credits` receive buffers for it.
    pub fn new(cfg: Config) -> Endpoint {
        Endpoint {
            cfg,
            tx_seq: 0,
            rx_seq: 0,
            tx_credits: cfg.credits.max(MIN_CREDITS),
            rx_consumed: 0,
            control: VecDeque::new(),
            queued: VecDeque::new(),
            eager: HashMap::new(),
            offered: HashMap::new(),
            incoming: VecDeque::new(),
            next_wr: 1,
            next_msg: 1,
            actions: VecDeque::new(),
        }
    }

    /// Sends a fragment; [`Action::Sent`] with `token` tells when its memory may be reused.
    pub fn send(&mut self, token: u64, frag: Fragment) -> Result<(), SendError> {
        let (len, max) = match &frag {
            Fragment::Eager(b, _) => (b.len() as u64, self.cfg.eager_max as u64),
            Fragment::Large { len, .. } => (*len, self.cfg.max_fragment),
        };
        if len > max {
            return Err(SendError::TooLarge { len, max });
        }
        if self.queued.len() >= self.cfg.max_queued {
            return Err(SendError::Busy(self.queued.len()));
        }
        self.queued.push_back((token, frag));
        self.pump();
        Ok(())
    }

    /// The next piece of work for the device.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Receive buffers each side posts for the other (the configured number, at least
    /// [`MIN_CREDITS`]).
    pub fn credits(&self) -> u32 {
        self.cfg.credits.max(MIN_CREDITS)
    }

    /// Fragments waiting for credits.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Whether an eager fragment sent now goes out at once, in order: nothing queued ahead
    /// of it and a credit free beyond the reserve.
    pub fn can_send_now(&self) -> bool {
        self.queued.is_empty() && self.control.is_empty() && self.tx_credits >= 2
    }

    /// The eager limit both sides agreed on.
    pub fn eager_max(&self) -> usize {
        self.cfg.eager_max
    }

    /// Frames this side has sent (the peer's count of frames to expect before a close).
    pub fn frames_sent(&self) -> u32 {
        self.tx_seq
    }

    /// Frames this side has received from the peer.
    pub fn frames_received(&self) -> u32 {
        self.rx_seq
    }

    /// Whether everything this side was given to send is done: nothing queued, no SEND
    /// waiting for its completion, no large fragment waiting for the peer's read, no control
    /// frame unsent. A close may follow without losing data.
    pub fn is_idle(&self) -> bool {
        self.queued.is_empty()
            && self.eager.is_empty()
            && self.offered.is_empty()
            && self.control.is_empty()
    }

    /// Whether received fragments wait to be handed up (a read still in flight).
    pub fn is_receiving(&self) -> bool {
        !self.incoming.is_empty()
    }

    /// A SEND this side posted completed.
    pub fn send_done(&mut self, wr: u64) {
        if let Some(token) = self.eager.remove(&wr) {
            self.actions.push_back(Action::Sent { token });
        }
    }

    /// A READ this side posted for `msg` completed: the fragment can go up in its turn, and
    /// the peer is told to release its memory.
    pub fn read_done(&mut self, msg: u64) -> Result<(), ProtoError> {
        let Some(slot) = self.incoming.iter_mut().find_map(|i| match i {
            Incoming::Read(m, done, _) if *m == msg && !*done => Some(done),
            _ => None,
        }) else {
            return Err(ProtoError::UnknownRead(msg));
        };
        *slot = true;
        self.control.push_back(Body::Fin { msg });
        self.hand_up();
        self.pump();
        Ok(())
    }

    /// A SEND from the peer arrived (in one of this side's receive buffers, which the device
    /// reposts). An error means the peer broke the protocol: end the connection.
    pub fn received(&mut self, bytes: &[u8]) -> Result<(), ProtoError> {
        let (frame, payload) = Frame::decode(bytes)?;
        if frame.seq != self.rx_seq {
            return Err(ProtoError::Sequence {
                want: self.rx_seq,
                got: frame.seq,
            });
        }
        let outstanding = self.credits() - self.tx_credits;
        if frame.credits > outstanding {
            return Err(ProtoError::Credits {
                returned: frame.credits,
                outstanding,
            });
        }
        self.rx_seq = self.rx_seq.wrapping_add(1);
        self.tx_credits += frame.credits;
        self.rx_consumed += 1;
        match frame.body {
            Body::Eager { len, meta } => {
                if len as usize > self.cfg.eager_max {
                    return Err(ProtoError::TooLarge {
                        len: len.into(),
                        max: self.cfg.eager_max as u64,
                    });
                }
                self.incoming
                    .push_back(Incoming::Eager(payload.to_vec(), meta));
                self.hand_up();
            }
            Body::Rts {
                msg,
                addr,
                rkey,
                len,
                meta,
            } => {
                if len > self.cfg.max_fragment {
                    return Err(ProtoError::TooLarge {
                        len,
                        max: self.cfg.max_fragment,
                    });
                }
                let reads = self
                    .incoming
                    .iter()
                    .filter(|i| matches!(i, Incoming::Read(..)))
                    .count();
                if self
                    .incoming
                    .iter()
                    .any(|i| matches!(i, Incoming::Read(m, _, _) if *m == msg))
                {
                    return Err(ProtoError::DuplicateRts(msg));
                }
                if reads >= self.cfg.max_reads {
                    return Err(ProtoError::TooManyReads(self.cfg.max_reads));
                }
                self.incoming.push_back(Incoming::Read(msg, false, meta));
                self.actions.push_back(Action::Read {
                    msg,
                    addr,
                    rkey,
                    len,
                });
            }
            Body::Fin { msg } => {
                let token = self
                    .offered
                    .remove(&msg)
                    .ok_or(ProtoError::UnknownFin(msg))?;
                self.actions.push_back(Action::Sent { token });
            }
            Body::Credit => {}
        }
        self.pump();
        Ok(())
    }

    /// Hands up received fragments from the front while they are complete.
    fn hand_up(&mut self) {
        while let Some(front) = self.incoming.front() {
            match front {
                Incoming::Eager(..) => {
                    if let Some(Incoming::Eager(b, meta)) = self.incoming.pop_front() {
                        self.actions.push_back(Action::Deliver(b, meta));
                    }
                }
                Incoming::Read(msg, true, meta) => {
                    let (msg, meta) = (*msg, *meta);
                    self.incoming.pop_front();
                    self.actions.push_back(Action::DeliverRead { msg, meta });
                }
                Incoming::Read(_, false, _) => return,
            }
        }
    }

    /// Sends what credits allow: control frames first, then queued fragments (keeping one
    /// credit in reserve), then a credit return when half the buffers are used and nothing
    /// else carried them back.
    fn pump(&mut self) {
        while self.tx_credits >= 2 {
            if let Some(body) = self.control.pop_front() {
                self.emit(body, &[]);
                continue;
            }
            let Some((token, frag)) = self.queued.pop_front() else {
                break;
            };
            match frag {
                Fragment::Eager(bytes, meta) => {
                    let wr = self.emit(
                        Body::Eager {
                            len: bytes.len() as u32,
                            meta,
                        },
                        &bytes,
                    );
                    self.eager.insert(wr, token);
                }
                Fragment::Large {
                    addr,
                    rkey,
                    len,
                    meta,
                } => {
                    let msg = self.next_msg;
                    self.next_msg += 1;
                    self.offered.insert(msg, token);
                    self.emit(
                        Body::Rts {
                            msg,
                            addr,
                            rkey,
                            len,
                            meta,
                        },
                        &[],
                    );
                }
            }
        }
        if self.tx_credits >= 1 && self.rx_consumed >= self.credits() / 2 {
            self.emit(Body::Credit, &[]);
        }
    }

    /// Puts a frame on the wire (one credit), handing back what this side consumed.
    fn emit(&mut self, body: Body, payload: &[u8]) -> u64 {
        let frame = Frame {
            seq: self.tx_seq,
            credits: std::mem::take(&mut self.rx_consumed),
            body,
        };
        self.tx_seq = self.tx_seq.wrapping_add(1);
        self.tx_credits -= 1;
        let mut bytes = Vec::with_capacity(HEADER + payload.len());
        bytes.extend_from_slice(&frame.encode());
        bytes.extend_from_slice(payload);
        let wr = self.next_wr;
        self.next_wr += 1;
        self.actions.push_back(Action::Send { wr, bytes });
        wr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Two endpoints joined in memory: SENDs go to the other side's inbox, READs copy from
    /// the other side's "registered memory", completions come back at once.
    struct Pair {
        ends: [Endpoint; 2],
        /// Each side's registered memory: (addr, rkey) -> bytes.
        memory: [HashMap<(u64, u32), Vec<u8>>; 2],
        inbox: [VecDeque<Vec<u8>>; 2],
        /// Each side's reads: msg -> bytes read.
        read: [HashMap<u64, Vec<u8>>; 2],
        /// What each side handed up, in order.
        delivered: [Vec<Vec<u8>>; 2],
        /// The marks of what each side handed up, in order.
        marks: [Vec<Meta>; 2],
        sent: [Vec<u64>; 2],
    }

    impl Pair {
        fn new(cfg: Config) -> Pair {
            Pair {
                ends: [Endpoint::new(cfg), Endpoint::new(cfg)],
                memory: Default::default(),
                inbox: Default::default(),
                read: Default::default(),
                delivered: Default::default(),
                marks: Default::default(),
                sent: Default::default(),
            }
        }

        /// Runs both sides until nothing moves; a protocol error is returned.
        fn run(&mut self) -> Result<(), ProtoError> {
            loop {
                let mut moved = false;
                for s in 0..2 {
                    while let Some(a) = self.ends[s].poll_action() {
                        moved = true;
                        match a {
                            Action::Send { wr, bytes } => {
                                self.inbox[1 - s].push_back(bytes);
                                self.ends[s].send_done(wr);
                            }
                            Action::Read {
                                msg,
                                addr,
                                rkey,
                                len,
                            } => {
                                let src = self.memory[1 - s]
                                    .get(&(addr, rkey))
                                    .expect("a read of registered memory");
                                assert_eq!(src.len() as u64, len);
                                self.read[s].insert(msg, src.clone());
                                self.ends[s].read_done(msg)?;
                            }
                            Action::Deliver(b, meta) => {
                                self.marks[s].push(meta);
                                self.delivered[s].push(b)
                            }
                            Action::DeliverRead { msg, meta } => {
                                let b = self.read[s].remove(&msg).expect("read before delivered");
                                self.marks[s].push(meta);
                                self.delivered[s].push(b);
                            }
                            Action::Sent { token } => self.sent[s].push(token),
                        }
                    }
                    while let Some(b) = self.inbox[s].pop_front() {
                        moved = true;
                        self.ends[s].received(&b)?;
                    }
                }
                if !moved {
                    return Ok(());
                }
            }
        }

        /// Side `s` sends `bytes`, eager or by rendezvous by size.
        fn send(&mut self, s: usize, token: u64, bytes: Vec<u8>) -> Result<(), SendError> {
            let meta = mark(token);
            if bytes.len() <= self.ends[s].cfg.eager_max {
                self.ends[s].send(token, Fragment::Eager(bytes, meta))
            } else {
                let (addr, rkey) = (0x1000 * token + 0x10_0000, token as u32 ^ 0x5a5a);
                let len = bytes.len() as u64;
                self.memory[s].insert((addr, rkey), bytes);
                self.ends[s].send(
                    token,
                    Fragment::Large {
                        addr,
                        rkey,
                        len,
                        meta,
                    },
                )
            }
        }
    }

    /// The marks the harness gives the fragment sent with `token`.
    fn mark(token: u64) -> Meta {
        Meta {
            end: token.is_multiple_of(3),
            filter: (token as u16).wrapping_mul(0x9e37),
        }
    }

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        (0..n).map(|i| (i as u64 * 31 + seed) as u8).collect()
    }

    #[test]
    fn eager_and_large_fragments_arrive_in_order_and_end_at_the_sender() {
        let mut p = Pair::new(Config {
            eager_max: 64,
            credits: 4,
            ..Config::default()
        });
        let msgs: Vec<Vec<u8>> = (0..200)
            .map(|i| bytes(if i % 7 == 3 { 1000 + i } else { i % 60 }, i as u64))
            .collect();
        for (i, m) in msgs.iter().enumerate() {
            p.send(0, i as u64, m.clone()).unwrap();
            if i % 5 == 0 {
                p.run().unwrap();
            }
        }
        p.run().unwrap();
        assert_eq!(p.delivered[1], msgs, "every fragment, in order");
        assert_eq!(
            p.marks[1],
            (0..200).map(mark).collect::<Vec<_>>(),
            "each fragment with its own marks"
        );
        assert!(p.ends[0].is_idle() && p.ends[1].is_idle());
        assert_eq!(p.ends[0].frames_sent(), p.ends[1].frames_received());
        let mut sent = p.sent[0].clone();
        sent.sort_unstable();
        assert_eq!(
            sent,
            (0..200).collect::<Vec<u64>>(),
            "every fragment ended once"
        );
        assert_eq!(p.ends[0].queued(), 0);
    }

    #[test]
    fn a_side_out_of_credits_queues_and_resumes_when_they_come_back() {
        let mut p = Pair::new(Config {
            credits: 4,
            ..Config::default()
        });
        for i in 0..10 {
            p.send(0, i, vec![i as u8]).unwrap();
        }
        // Three credits usable (one in reserve): three frames out, seven waiting.
        assert_eq!(p.ends[0].queued(), 7);
        p.run().unwrap();
        assert_eq!(p.ends[0].queued(), 0);
        assert_eq!(p.delivered[1].len(), 10);
        // Bounded: a side that cannot send refuses beyond its queue.
        let mut q = Pair::new(Config {
            credits: 1, // raised to the minimum, 4
            max_queued: 3,
            ..Config::default()
        });
        for i in 0..6 {
            q.send(0, i, vec![1]).unwrap();
        }
        assert_eq!(q.send(0, 9, vec![1]), Err(SendError::Busy(3)));
        assert!(matches!(
            q.send(0, 9, vec![0; 9000]),
            Err(SendError::TooLarge { .. }) | Err(SendError::Busy(_))
        ));
    }

    #[test]
    fn a_hostile_peer_s_frames_end_the_connection_with_the_reason() {
        let f = |seq, credits, body: Body, payload: &[u8]| {
            let mut b = Frame { seq, credits, body }.encode().to_vec();
            b.extend_from_slice(payload);
            b
        };
        let cfg = Config {
            eager_max: 16,
            credits: 4,
            max_reads: 1,
            ..Config::default()
        };
        let mut e = Endpoint::new(cfg);
        assert_eq!(
            e.received(&f(1, 0, Body::Credit, &[])),
            Err(ProtoError::Sequence { want: 0, got: 1 })
        );
        let mut e = Endpoint::new(cfg);
        assert_eq!(
            e.received(&f(0, 1, Body::Credit, &[])),
            Err(ProtoError::Credits {
                returned: 1,
                outstanding: 0
            })
        );
        let mut e = Endpoint::new(cfg);
        assert!(matches!(
            e.received(&f(
                0,
                0,
                Body::Eager {
                    len: 17,
                    meta: Meta::default()
                },
                &[0; 17]
            )),
            Err(ProtoError::TooLarge { len: 17, max: 16 })
        ));
        let mut e = Endpoint::new(cfg);
        assert_eq!(
            e.received(&f(0, 0, Body::Fin { msg: 5 }, &[])),
            Err(ProtoError::UnknownFin(5))
        );
        let mut e = Endpoint::new(cfg);
        let rts = |msg| Body::Rts {
            msg,
            addr: 1,
            rkey: 2,
            len: 100,
            meta: Meta::default(),
        };
        e.received(&f(0, 0, rts(1), &[])).unwrap();
        assert_eq!(
            e.received(&f(1, 0, rts(1), &[])),
            Err(ProtoError::DuplicateRts(1))
        );
        let mut e = Endpoint::new(cfg);
        e.received(&f(0, 0, rts(1), &[])).unwrap();
        assert_eq!(
            e.received(&f(1, 0, rts(2), &[])),
            Err(ProtoError::TooManyReads(1))
        );
        assert_eq!(e.read_done(9), Err(ProtoError::UnknownRead(9)));
        assert!(matches!(e.received(&[1, 2, 3]), Err(ProtoError::Wire(_))));
    }

    proptest! {
        /// Any mix of sizes in both directions, with few credits and runs at random moments:
        /// every fragment arrives once and in order, every send ends, nobody waits for ever.
        #[test]
        fn fuzz_no_loss_no_reorder_no_deadlock(
            credits in 1u32..9,
            sends in proptest::collection::vec((0usize..2, 0usize..300, any::<bool>()), 1..150),
        ) {
            let mut p = Pair::new(Config { eager_max: 100, credits, ..Config::default() });
            let mut want: [Vec<Vec<u8>>; 2] = Default::default();
            for (i, (side, len, run)) in sends.into_iter().enumerate() {
                let b = bytes(len, i as u64);
                want[1 - side].push(b.clone());
                p.send(side, i as u64, b).unwrap();
                if run {
                    p.run().unwrap();
                }
            }
            p.run().unwrap();
            prop_assert_eq!(&p.delivered[0], &want[0]);
            prop_assert_eq!(&p.delivered[1], &want[1]);
            prop_assert_eq!(p.sent[0].len() + p.sent[1].len(), want[0].len() + want[1].len());
            prop_assert_eq!(p.ends[0].queued() + p.ends[1].queued(), 0);
        }

        /// Any bytes as a frame: an error or an accepted frame, never a panic.
        #[test]
        fn fuzz_any_frames_are_checked(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 1..20)) {
            let mut e = Endpoint::new(Config::default());
            for f in frames {
                if e.received(&f).is_err() {
                    break;
                }
            }
            while e.poll_action().is_some() {}
        }
    }
}
