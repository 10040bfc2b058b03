//! The decoder: turns a byte stream into handshake and frame events, checking every length
//! against its limit before anything is allocated; and the listener's checks of a hello.

use vmi_device::signature::Signature;

use vmi_device::auth::{NONCE_LEN, PROOF_LEN};

use super::stripe::Assembly;
use crate::wire::*;

/// Where a decoder is.
#[derive(Debug)]
enum Phase {
    Hello,
    HelloBody(HelloRepr),
    /// Listener, after an authenticating hello: the connector's proof record.
    Proof,
    Answer,
    /// Connector: the rest of a challenge (its 16-byte header was read as an answer's).
    ChallengeBody,
    AnswerBody(AnswerRepr),
    FrameHeader,
    /// A payload being read. `buf` holds the bytes committed so far (`got` of them read);
    /// it grows as bytes arrive, never ahead of them by more than it holds already (or
    /// [`COMMIT_AHEAD`]), so a header alone cannot make this process allocate its length.
    Payload {
        repr: FrameRepr,
        buf: Vec<u8>,
        got: usize,
        /// Where in `buf` the payload starts (see [`payload_lead`]).
        at: usize,
    },
    /// A striped frame: the connection's part and the lanes' parts being read.
    Striped(Box<Assembly>),
    /// Connector: a lane offer's token (the offer's lane count).
    LaneOffer(u8),
}

/// Bytes a payload buffer is committed ahead of the bytes received: a frame header promising
/// up to `max_fragment` bytes costs at most this much until the bytes actually arrive.
pub const COMMIT_AHEAD: usize = 256 * 1024;

/// The committed length for a payload of `total` bytes with `got` received: doubles, so the
/// copies of growing stay linear in the payload.
fn commit_len(total: usize, got: usize) -> usize {
    total.min(got.saturating_mul(2).max(COMMIT_AHEAD))
}

/// Where to start a payload of `len` bytes in a recycled buffer at address `base` with room
/// for `cap` bytes: at the address modulo 64 it has in its frame when the frame starts at a
/// multiple of 64 (`vmi_device::copy::aligned_lead`, which says why). In a ping-pong the
/// sender's socket buffer starts each message at the start of a page, so a payload read into
/// a buffer of the usual alignment (16 modulo 64) lay 8 bytes past its source: a 1 MiB + 8 B
/// ping-pong took four times a 1 MiB one (which happened to miss).
pub fn payload_lead(base: usize, len: usize, cap: usize) -> usize {
    vmi_device::copy::aligned_lead(base, FRAME_LEN, len, cap)
}

/// An idle pooled buffer of a payload of `len` bytes, and where the payload starts in it
/// ([`payload_lead`]: where the kernel's copy into it is fast); `None` when the pool has none
/// without allocating.
pub fn recycled(alloc: &mut dyn PayloadAlloc, len: usize) -> Option<(Vec<u8>, usize)> {
    let mut b = alloc.take_idle(len).filter(|b| b.len() == len)?;
    let at = payload_lead(b.as_ptr() as usize, len, b.capacity());
    if at > 0 {
        b.resize(at + len, 0);
    }
    Some((b, at))
}

/// Grows `buf` when all of it is read and more bytes are due.
fn grow(buf: &mut Vec<u8>, total: usize, got: usize) {
    if got == buf.len() && got < total {
        buf.resize(commit_len(total, got), 0);
    }
}

/// Where the decoder gets payload buffers (a device's pool; any `FnMut(usize) -> Vec<u8>`
/// in tests).
pub trait PayloadAlloc {
    /// A zeroed (or overwritten-before-read) buffer of exactly `len` bytes.
    fn take(&mut self, len: usize) -> Vec<u8>;
    /// A buffer of exactly `len` bytes if one is at hand without committing new memory (a
    /// recycled buffer of a payload this large); `None` otherwise. A header alone may take an
    /// idle buffer, never make the process allocate one.
    fn take_idle(&mut self, len: usize) -> Option<Vec<u8>> {
        let _ = len;
        None
    }
}

impl<F: FnMut(usize) -> Vec<u8>> PayloadAlloc for F {
    fn take(&mut self, len: usize) -> Vec<u8> {
        self(len)
    }
}

/// What the decoder produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A connector's hello.
    Hello {
        /// Connector's key.
        from_key: String,
        /// Key it wants.
        to_key: String,
        /// Its filter signature.
        signature: String,
        /// Connect data.
        data: Vec<u8>,
        /// The connector's nonce when it authenticates.
        nonce: Option<[u8; NONCE_LEN]>,
        /// The connector can open lanes.
        lanes: bool,
    },
    /// Listener: the connector's proof (authentication).
    Proof([u8; PROOF_LEN]),
    /// Connector: the listener's nonce and proof (authentication).
    Challenge {
        /// Listener nonce.
        nonce: [u8; NONCE_LEN],
        /// Listener proof.
        proof: [u8; PROOF_LEN],
    },
    /// The listener's answer.
    Answer {
        /// Status.
        status: AnswerStatus,
        /// Reason text.
        reason: String,
        /// Reply data.
        reply: Vec<u8>,
    },
    /// A heartbeat: the peer is alive and has nothing to send.
    Heartbeat,
    /// Listener: this socket asks to join a connection as one of its lanes.
    LaneHello {
        /// Which lane (1 to `MAX_LANES`).
        lane: u8,
        /// The token the connection's offer gave.
        token: [u8; TOKEN_LEN],
    },
    /// Connector: the listener offers lanes.
    LaneOffer {
        /// Lanes offered (1 to `MAX_LANES`).
        lanes: u8,
        /// The token each lane's hello carries.
        token: [u8; TOKEN_LEN],
    },
    /// A data frame.
    Frame {
        /// Last fragment.
        end: bool,
        /// Filter flag bits.
        filter_flags: u16,
        /// The buffer holding the payload, which is `payload[at..]`.
        payload: Vec<u8>,
        /// Where the payload starts in `payload` (see [`payload_lead`]).
        at: usize,
    },
}

/// Turns a byte stream into events, checking every length before allocating.
pub struct Decoder {
    phase: Phase,
    hdr: [u8; HELLO_LEN],
    hdr_got: usize,
    body: Vec<u8>,
    max_fragment: u64,
    max_data: u32,
    /// Lanes this side has for the connection: a striped frame may use no more.
    lanes: usize,
}

/// Payloads at least this large are read straight into their buffer, skipping the staging copy.
pub const DIRECT_READ_MIN: usize = 16 * 1024;

impl Decoder {
    /// A decoder for the listening side (expects a hello first).
    pub fn listener(max_fragment: u64, max_data: u32) -> Decoder {
        Decoder::new(Phase::Hello, max_fragment, max_data)
    }

    /// A decoder for the connecting side (expects an answer first).
    pub fn connector(max_fragment: u64, max_data: u32) -> Decoder {
        Decoder::new(Phase::Answer, max_fragment, max_data)
    }

    fn new(phase: Phase, max_fragment: u64, max_data: u32) -> Decoder {
        Decoder {
            phase,
            hdr: [0; HELLO_LEN],
            hdr_got: 0,
            body: Vec::new(),
            max_fragment,
            max_data,
            lanes: 0,
        }
    }

    /// The connection has `lanes` lanes (striped frames may use that many).
    pub fn set_lanes(&mut self, lanes: usize) {
        self.lanes = lanes;
    }

    /// Sockets carrying the striped frame being read (the connection's and lanes
    /// `1..sockets`); 0 when none is.
    pub fn striped_sockets(&self) -> usize {
        match &self.phase {
            Phase::Striped(a) => a.sockets(),
            _ => 0,
        }
    }

    /// True when a striped frame's part on the connection is in but a lane's is not: the
    /// connection's next bytes belong to the next frame and wait.
    pub fn waits_for_lanes(&self) -> bool {
        matches!(&self.phase, Phase::Striped(a) if a.part_done(0) && !a.is_complete())
    }

    /// Where lane `lane`'s next bytes go (its piece header, then its part), while a striped
    /// frame is read; `None` when the lane has nothing more to bring for it.
    pub fn lane_target(&mut self, lane: usize) -> Option<&mut [u8]> {
        match &mut self.phase {
            Phase::Striped(a) if lane > 0 => a.target(lane),
            _ => None,
        }
    }

    /// Records `n` bytes read into `lane_target`; returns the frame once every part is in.
    pub fn lane_done(&mut self, lane: usize, n: usize) -> Result<Option<Event>, WireError> {
        if let Phase::Striped(a) = &mut self.phase
            && lane > 0
        {
            a.advance(lane, n)?;
            if a.is_complete() {
                return Ok(self.finish_stripe());
            }
        }
        Ok(None)
    }

    fn finish_stripe(&mut self) -> Option<Event> {
        match std::mem::replace(&mut self.phase, Phase::FrameHeader) {
            Phase::Striped(a) => Some(a.into_event()),
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// True between frames (an EOF here is an orderly close).
    pub fn at_boundary(&self) -> bool {
        matches!(self.phase, Phase::FrameHeader) && self.hdr_got == 0
    }

    /// True while the handshake is not finished.
    pub fn in_handshake(&self) -> bool {
        matches!(
            self.phase,
            Phase::Hello
                | Phase::HelloBody(_)
                | Phase::Proof
                | Phase::Answer
                | Phase::ChallengeBody
                | Phase::AnswerBody(_)
        )
    }

    /// A data frame whole at the start of `input` while the decoder is between frames: its
    /// header and the bytes it takes (header and payload), so a small payload can be handed
    /// over from `input` itself with no buffer. `None` for anything else (a partial frame,
    /// another kind, a malformed or oversized header): [`Decoder::feed`] reports what is wrong.
    pub fn whole_frame(&self, input: &[u8]) -> Option<(FrameRepr, usize)> {
        if !self.at_boundary() {
            return None;
        }
        let h: &[u8; FRAME_LEN] = input.get(..FRAME_LEN)?.try_into().ok()?;
        if !matches!(h[0], KIND_FRAGMENT | KIND_END) {
            return None;
        }
        let f = FrameRepr::parse(h, self.max_fragment).ok()?;
        let used = FRAME_LEN + f.len as usize;
        (input.len() >= used).then_some((f, used))
    }

    /// Of a payload of at least `min_len` bytes that streams in on socket `socket` (read
    /// straight into its place: [`Decoder::direct_target`] and [`Decoder::lane_target`]), the
    /// bytes still to come on that socket. Socket 0 is the connection's own, carrying a whole
    /// payload or a striped frame's first part; socket `i` > 0 is lane `i`, carrying part `i`
    /// (its piece header counts). `None` between frames, in other phases, for a smaller
    /// payload or part, for a socket with no part in the frame, and once fewer than
    /// `DIRECT_READ_MIN` bytes are left.
    #[inline]
    pub fn streaming_left(&self, socket: usize, min_len: usize) -> Option<usize> {
        let (len, left) = match &self.phase {
            Phase::Payload { repr, got, .. } if socket == 0 => {
                (repr.len as usize, repr.len as usize - *got)
            }
            Phase::Striped(a) => (a.part_size(socket), a.left(socket)),
            _ => return None,
        };
        (len >= min_len && left >= DIRECT_READ_MIN).then_some(left)
    }

    /// The rest of a large payload, to read into directly; `None` unless reading directly pays.
    #[inline]
    pub fn direct_target(&mut self) -> Option<&mut [u8]> {
        match &mut self.phase {
            Phase::Payload {
                repr, buf, got, at, ..
            } if repr.len as usize - *got >= DIRECT_READ_MIN => {
                grow(buf, *at + repr.len as usize, *at + *got);
                Some(&mut buf[*at + *got..])
            }
            Phase::Striped(a) => a.target(0).filter(|t| t.len() >= DIRECT_READ_MIN),
            _ => None,
        }
    }

    /// Records `n` bytes read into `direct_target`; returns the finished frame, if any.
    pub fn direct_done(&mut self, n: usize) -> Option<Event> {
        if let Phase::Payload { repr, buf, got, at } = &mut self.phase {
            *got = (*got + n).min(buf.len() - *at);
            if *got == repr.len as usize {
                return self.finish_payload();
            }
        } else if let Phase::Striped(a) = &mut self.phase {
            // The connection's part has no header: advancing it cannot fail.
            let _ = a.advance(0, n);
            if a.is_complete() {
                return self.finish_stripe();
            }
        }
        None
    }

    fn finish_payload(&mut self) -> Option<Event> {
        match std::mem::replace(&mut self.phase, Phase::FrameHeader) {
            Phase::Payload { repr, buf, at, .. } => Some(Event::Frame {
                end: repr.end,
                filter_flags: repr.filter_flags,
                payload: buf,
                at,
            }),
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// Consumes bytes from `input` until one event is complete or the input is used up.
    /// Returns how many bytes were used and the event. `alloc` gives payload buffers (from a
    /// pool): an idle one of the whole payload's length when it has one (so a large payload
    /// neither grows nor copies), else one of the committed length, grown as bytes arrive.
    pub fn feed(
        &mut self,
        input: &[u8],
        alloc: &mut dyn PayloadAlloc,
    ) -> Result<(usize, Option<Event>), WireError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match &mut self.phase {
                Phase::Hello | Phase::Answer | Phase::FrameHeader => {
                    let need = match self.phase {
                        Phase::Hello => HELLO_LEN,
                        Phase::Answer => ANSWER_LEN,
                        _ => FRAME_LEN,
                    };
                    let take = (need - self.hdr_got).min(rest.len());
                    self.hdr[self.hdr_got..self.hdr_got + take].copy_from_slice(&rest[..take]);
                    self.hdr_got += take;
                    used += take;
                    if self.hdr_got < need {
                        return Ok((used, None));
                    }
                    self.hdr_got = 0;
                    match self.phase {
                        Phase::Hello if self.hdr[..4] == LANE_MAGIC => {
                            let (lane, token) = parse_lane_hello(&self.hdr)?;
                            return Ok((used, Some(Event::LaneHello { lane, token })));
                        }
                        Phase::Hello => {
                            let h = HelloRepr::parse(&self.hdr, self.max_data)?;
                            self.body.clear();
                            self.body.reserve(h.body_len());
                            self.phase = Phase::HelloBody(h);
                        }
                        Phase::Answer if self.hdr[..4] == CHALLENGE_MAGIC => {
                            if self.hdr[4] != WIRE_VERSION {
                                return Err(WireError::Version(self.hdr[4]));
                            }
                            self.body.clear();
                            self.phase = Phase::ChallengeBody;
                        }
                        Phase::Answer => {
                            let a = AnswerRepr::parse(
                                self.hdr[..ANSWER_LEN].try_into().expect("16 bytes"),
                                self.max_data,
                            )?;
                            self.body.clear();
                            self.body
                                .reserve(a.reason_len as usize + a.reply_len as usize);
                            self.phase = Phase::AnswerBody(a);
                        }
                        _ if self.hdr[..FRAME_LEN] == HEARTBEAT => {
                            return Ok((used, Some(Event::Heartbeat)));
                        }
                        _ if let Some(repr) = StripeRepr::parse(
                            self.hdr[..FRAME_LEN].try_into().expect("8 bytes"),
                        ) =>
                        {
                            let a = Assembly::new(repr, self.lanes, self.max_fragment, alloc)?;
                            self.phase = Phase::Striped(Box::new(a));
                        }
                        _ if self.hdr[0] == KIND_LANES => {
                            let lanes = self.hdr[1];
                            let len =
                                u32::from_le_bytes(self.hdr[4..8].try_into().expect("4 bytes"));
                            if lanes == 0 || lanes as usize > MAX_LANES || self.hdr[2..4] != [0, 0]
                            {
                                return Err(WireError::BadField {
                                    field: "lanes offered",
                                    value: lanes as u64,
                                });
                            }
                            if len as usize != TOKEN_LEN {
                                return Err(WireError::BadField {
                                    field: "lane offer length",
                                    value: len as u64,
                                });
                            }
                            self.body.clear();
                            self.phase = Phase::LaneOffer(lanes);
                        }
                        _ => {
                            let f = FrameRepr::parse(
                                self.hdr[..FRAME_LEN].try_into().expect("8 bytes"),
                                self.max_fragment,
                            )?;
                            if f.len == 0 {
                                return Ok((
                                    used,
                                    Some(Event::Frame {
                                        end: f.end,
                                        filter_flags: f.filter_flags,
                                        payload: alloc.take(0),
                                        at: 0,
                                    }),
                                ));
                            }
                            let len = f.len as usize;
                            // A recycled buffer of the whole length starts the payload where
                            // the kernel's copy into it is fast (`payload_lead`); a new one
                            // grows from the start as the bytes arrive.
                            let (buf, at) = recycled(alloc, len)
                                .unwrap_or_else(|| (alloc.take(commit_len(len, 0)), 0));
                            self.phase = Phase::Payload {
                                repr: f,
                                buf,
                                got: 0,
                                at,
                            };
                        }
                    }
                }
                Phase::HelloBody(h) => {
                    let h = *h;
                    let take = (h.body_len() - self.body.len()).min(rest.len());
                    self.body.extend_from_slice(&rest[..take]);
                    used += take;
                    if self.body.len() < h.body_len() {
                        return Ok((used, None));
                    }
                    let b = std::mem::take(&mut self.body);
                    let (fk, r) = b.split_at(h.from_key_len as usize);
                    let (tk, r) = r.split_at(h.to_key_len as usize);
                    let (sig, r) = r.split_at(h.signature_len as usize);
                    let (data, nonce) = r.split_at(h.data_len as usize);
                    self.phase = if h.auth {
                        Phase::Proof
                    } else {
                        Phase::FrameHeader
                    };
                    return Ok((
                        used,
                        Some(Event::Hello {
                            from_key: String::from_utf8_lossy(fk).into_owned(),
                            to_key: String::from_utf8_lossy(tk).into_owned(),
                            signature: String::from_utf8_lossy(sig).into_owned(),
                            data: data.to_vec(),
                            nonce: nonce.try_into().ok(),
                            lanes: h.lanes,
                        }),
                    ));
                }
                Phase::Proof | Phase::ChallengeBody => {
                    let proof = matches!(self.phase, Phase::Proof);
                    let need = if proof {
                        PROOF_RECORD_LEN
                    } else {
                        CHALLENGE_LEN - 16
                    };
                    let take = (need - self.body.len()).min(rest.len());
                    self.body.extend_from_slice(&rest[..take]);
                    used += take;
                    if self.body.len() < need {
                        return Ok((used, None));
                    }
                    let b = std::mem::take(&mut self.body);
                    if proof {
                        if b[..4] != PROOF_MAGIC {
                            return Err(WireError::BadMagic([b[0], b[1], b[2], b[3]]));
                        }
                        if b[4] != WIRE_VERSION {
                            return Err(WireError::Version(b[4]));
                        }
                        self.phase = Phase::FrameHeader;
                        let mut p = [0u8; PROOF_LEN];
                        p.copy_from_slice(&b[16..]);
                        return Ok((used, Some(Event::Proof(p))));
                    }
                    self.phase = Phase::Answer;
                    let mut nonce = [0u8; NONCE_LEN];
                    let mut p = [0u8; PROOF_LEN];
                    nonce.copy_from_slice(&b[..NONCE_LEN]);
                    p.copy_from_slice(&b[NONCE_LEN..]);
                    return Ok((used, Some(Event::Challenge { nonce, proof: p })));
                }
                Phase::AnswerBody(a) => {
                    let a = *a;
                    let total = a.reason_len as usize + a.reply_len as usize;
                    let take = (total - self.body.len()).min(rest.len());
                    self.body.extend_from_slice(&rest[..take]);
                    used += take;
                    if self.body.len() < total {
                        return Ok((used, None));
                    }
                    let b = std::mem::take(&mut self.body);
                    let (reason, reply) = b.split_at(a.reason_len as usize);
                    self.phase = Phase::FrameHeader;
                    return Ok((
                        used,
                        Some(Event::Answer {
                            status: a.status,
                            reason: String::from_utf8_lossy(reason).into_owned(),
                            reply: reply.to_vec(),
                        }),
                    ));
                }
                Phase::Striped(a) => {
                    used += a.absorb(rest);
                    if a.is_complete() {
                        return Ok((used, self.finish_stripe()));
                    }
                    return Ok((used, None));
                }
                Phase::LaneOffer(lanes) => {
                    let lanes = *lanes;
                    let take = (TOKEN_LEN - self.body.len()).min(rest.len());
                    self.body.extend_from_slice(&rest[..take]);
                    used += take;
                    if self.body.len() < TOKEN_LEN {
                        return Ok((used, None));
                    }
                    let mut token = [0u8; TOKEN_LEN];
                    token.copy_from_slice(&self.body);
                    self.body.clear();
                    self.phase = Phase::FrameHeader;
                    return Ok((used, Some(Event::LaneOffer { lanes, token })));
                }
                Phase::Payload { repr, buf, got, at } => {
                    let total = repr.len as usize;
                    while *got < total && used < input.len() {
                        grow(buf, *at + total, *at + *got);
                        let take = (buf.len() - *at - *got).min(input.len() - used);
                        let to = *at + *got;
                        buf[to..to + take].copy_from_slice(&input[used..used + take]);
                        *got += take;
                        used += take;
                    }
                    if *got == total {
                        return Ok((used, self.finish_payload()));
                    }
                    return Ok((used, None));
                }
            }
            if used == input.len()
                && !matches!(
                    self.phase,
                    Phase::HelloBody(_)
                        | Phase::AnswerBody(_)
                        | Phase::Proof
                        | Phase::ChallengeBody
                )
            {
                return Ok((used, None));
            }
        }
    }
}

/// At most 64 characters of `s` (a peer's text echoed in an answer or a log line).
pub fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// How the listener answers a hello, before the application sees it.
pub fn check_hello(
    local_key: &str,
    local: &Signature,
    from_key: &str,
    to_key: &str,
    signature: &str,
) -> Result<(), (AnswerStatus, String)> {
    if to_key != local_key {
        return Err((
            AnswerStatus::WrongKey,
            // Never name the key that is here: a scanner would learn it.
            format!(
                "no process with key '{}' listens on this port",
                shorten(to_key)
            ),
        ));
    }
    let peer = Signature::parse(signature).ok_or_else(|| {
        (
            AnswerStatus::Invalid,
            format!("malformed filter signature '{signature}'"),
        )
    })?;
    local
        .check_peer(local_key, &peer, from_key)
        .map_err(|why| (AnswerStatus::SignatureMismatch, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Vec<u8> {
        vec![0; n]
    }

    fn feed_all(d: &mut Decoder, mut input: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let (n, ev) = d.feed(input, &mut pool).unwrap();
            input = &input[n..];
            out.extend(ev);
            assert!(n > 0 || !out.is_empty() || input.is_empty(), "no progress");
        }
        out
    }

    #[test]
    fn whole_frame_takes_only_whole_data_frames_between_frames() {
        let mut d = Decoder::connector(100, 100);
        let answer = AnswerRepr::emit(AnswerStatus::Accept, "", b"");
        assert_eq!(d.whole_frame(&answer), None, "in the handshake: never");
        let (n, ev) = d.feed(&answer, &mut |n| vec![0; n]).unwrap();
        assert_eq!(n, answer.len());
        assert!(matches!(ev, Some(Event::Answer { .. })));
        let frame = |end: bool, payload: &[u8]| {
            let mut v = FrameRepr {
                end,
                filter_flags: 9,
                len: payload.len() as u32,
            }
            .emit()
            .to_vec();
            v.extend_from_slice(payload);
            v
        };
        let f = frame(true, b"abc");
        let (repr, used) = d.whole_frame(&f).expect("whole");
        assert_eq!(
            (repr.end, repr.filter_flags, repr.len, used),
            (true, 9, 3, 11)
        );
        for cut in 0..f.len() {
            assert_eq!(d.whole_frame(&f[..cut]), None, "cut at {cut}");
        }
        assert_eq!(d.whole_frame(&HEARTBEAT), None);
        assert_eq!(d.whole_frame(&frame(false, &[0; 101])), None, "over max");
        let mut bad = f.clone();
        bad[0] = 77;
        assert_eq!(d.whole_frame(&bad), None);
        // In the middle of a payload: nothing is whole.
        let long = frame(true, &[1; 50]);
        let (n, ev) = d.feed(&long[..20], &mut |n| vec![0; n]).unwrap();
        assert_eq!((n, ev), (20, None));
        assert_eq!(d.whole_frame(&f), None);
    }

    #[test]
    fn hello_then_frames_in_any_split() {
        let mut stream = HelloRepr::emit("client", "server", "send=;recv=", b"cookie");
        stream.extend_from_slice(
            &FrameRepr {
                end: false,
                filter_flags: 3,
                len: 5,
            }
            .emit(),
        );
        stream.extend_from_slice(b"hello");
        stream.extend_from_slice(
            &FrameRepr {
                end: true,
                filter_flags: 0,
                len: 0,
            }
            .emit(),
        );
        let expect = vec![
            Event::Hello {
                nonce: None,
                lanes: false,
                from_key: "client".into(),
                to_key: "server".into(),
                signature: "send=;recv=".into(),
                data: b"cookie".to_vec(),
            },
            Event::Frame {
                end: false,
                filter_flags: 3,
                payload: b"hello".to_vec(),
                at: 0,
            },
            Event::Frame {
                end: true,
                filter_flags: 0,
                payload: vec![],
                at: 0,
            },
        ];
        for chunk in [1, 2, 3, 7, 1000] {
            let mut d = Decoder::listener(1 << 20, 1024);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                got.extend(feed_all(&mut d, piece));
            }
            assert_eq!(got, expect, "chunk size {chunk}");
            assert!(d.at_boundary());
        }
    }

    #[test]
    fn answer_then_frame() {
        let mut stream = AnswerRepr::emit(AnswerStatus::Accept, "", b"welcome");
        stream.extend_from_slice(
            &FrameRepr {
                end: true,
                filter_flags: 0,
                len: 2,
            }
            .emit(),
        );
        stream.extend_from_slice(b"ok");
        let mut d = Decoder::connector(100, 100);
        assert!(d.in_handshake());
        let got = feed_all(&mut d, &stream);
        assert_eq!(
            got[0],
            Event::Answer {
                status: AnswerStatus::Accept,
                reason: String::new(),
                reply: b"welcome".to_vec()
            }
        );
        assert_eq!(
            got[1],
            Event::Frame {
                end: true,
                filter_flags: 0,
                payload: b"ok".to_vec(),
                at: 0,
            }
        );
    }

    #[test]
    fn direct_reads_finish_large_payloads() {
        let mut d = Decoder::connector(1 << 20, 100);
        let mut head = AnswerRepr::emit(AnswerStatus::Accept, "", b"");
        head.extend_from_slice(
            &FrameRepr {
                end: true,
                filter_flags: 0,
                len: 40_000,
            }
            .emit(),
        );
        head.extend_from_slice(&[7; 100]);
        let evs = feed_all(&mut d, &head);
        assert_eq!(evs.len(), 1);
        let target = d.direct_target().expect("large payload read directly");
        assert_eq!(target.len(), 39_900);
        target.fill(7);
        match d.direct_done(39_900) {
            Some(Event::Frame { payload, .. }) => {
                assert!(payload.len() == 40_000 && payload.iter().all(|&b| b == 7))
            }
            other => panic!("{other:?}"),
        }
        assert!(d.at_boundary());
    }

    /// `streaming_left` counts down a large payload's bytes as they are read, plainly or
    /// directly, and is `None` between frames, in the handshake, for a payload below its
    /// minimum or below `DIRECT_READ_MIN`, and once fewer than `DIRECT_READ_MIN` bytes are
    /// left (what the receive low-water mark follows); for a striped frame, each socket's
    /// part likewise, a lane's with its piece header.
    #[test]
    fn streaming_left_follows_large_payloads_and_striped_parts() {
        let mut d = Decoder::connector(1 << 20, 100);
        let alloc = &mut |n| vec![0u8; n];
        assert_eq!(d.streaming_left(0, 0), None, "in the handshake");
        let answer = AnswerRepr::emit(AnswerStatus::Accept, "", b"");
        assert_eq!(d.feed(&answer, alloc).unwrap().0, answer.len());
        assert_eq!(d.streaming_left(0, 0), None, "between frames");
        let small = FrameRepr {
            end: true,
            filter_flags: 0,
            len: (DIRECT_READ_MIN - 1) as u32,
        };
        assert_eq!(d.feed(&small.emit(), alloc).unwrap().0, FRAME_LEN);
        assert_eq!(
            d.streaming_left(0, 0),
            None,
            "a payload below DIRECT_READ_MIN"
        );
        let rest = vec![0u8; DIRECT_READ_MIN - 1];
        assert!(d.feed(&rest, alloc).unwrap().1.is_some());
        let len = 100_000usize;
        let big = FrameRepr {
            end: true,
            filter_flags: 0,
            len: len as u32,
        };
        let mut input = big.emit().to_vec();
        input.extend_from_slice(&[7u8; 1000]);
        assert_eq!(d.feed(&input, alloc).unwrap(), (input.len(), None));
        assert_eq!(d.streaming_left(0, 0), Some(len - 1000));
        assert_eq!(d.streaming_left(0, len), Some(len - 1000), "at its minimum");
        assert_eq!(d.streaming_left(0, len + 1), None, "below its minimum");
        let t = d.direct_target().unwrap().len();
        assert_eq!(t, len - 1000);
        assert!(d.direct_done(50_000).is_none());
        assert_eq!(d.streaming_left(0, 0), Some(len - 51_000));
        // Below DIRECT_READ_MIN left: the tail comes through plain reads.
        let tail = len - 51_000 - (DIRECT_READ_MIN - 1);
        assert!(d.direct_done(tail).is_none());
        assert_eq!(d.streaming_left(0, 0), None);
        let (n, ev) = d.feed(&vec![0u8; DIRECT_READ_MIN - 1], alloc).unwrap();
        assert_eq!(n, DIRECT_READ_MIN - 1);
        assert!(matches!(ev, Some(Event::Frame { .. })));
        assert_eq!(d.streaming_left(0, 0), None, "between frames again");

        // A striped frame: each socket's part, a lane's with its piece header.
        d.set_lanes(1);
        let len = 1usize << 20;
        let striped = StripeRepr {
            end: true,
            filter_flags: 0,
            sockets: 2,
            len: len as u32,
        };
        let mut input = striped.emit().to_vec();
        input.extend_from_slice(&[1u8; 1000]);
        assert_eq!(d.feed(&input, alloc).unwrap(), (input.len(), None));
        let part = len / 2;
        assert_eq!(
            d.streaming_left(0, 0),
            Some(part - 1000),
            "the connection's part"
        );
        assert_eq!(
            d.streaming_left(1, 0),
            Some(FRAME_LEN + part),
            "lane 1's piece"
        );
        assert_eq!(d.streaming_left(2, 0), None, "a lane with no part");
        assert_eq!(
            d.streaming_left(1, part),
            Some(FRAME_LEN + part),
            "at its minimum"
        );
        assert_eq!(d.streaming_left(1, part + 1), None, "below its minimum");
        let piece = emit_piece(1, part as u32);
        d.lane_target(1).unwrap()[..FRAME_LEN].copy_from_slice(&piece);
        assert!(d.lane_done(1, FRAME_LEN).unwrap().is_none());
        assert_eq!(d.streaming_left(1, 0), Some(part), "the piece header is in");
        assert!(d.lane_done(1, part).unwrap().is_none());
        assert_eq!(d.streaming_left(1, 0), None, "lane 1's part is in");
        assert_eq!(
            d.streaming_left(0, 0),
            Some(part - 1000),
            "the connection's is not"
        );
    }

    /// A recycled buffer with room to spare holds the payload where the kernel's copy into
    /// it is fast: at the frame's own alignment modulo 64 (`payload_lead`), whole and in
    /// order, by plain feeding and by direct reads.
    #[test]
    fn a_recycled_buffer_holds_the_payload_at_the_frame_s_alignment() {
        struct Spare;
        impl PayloadAlloc for Spare {
            fn take(&mut self, len: usize) -> Vec<u8> {
                vec![0; len]
            }
            fn take_idle(&mut self, len: usize) -> Option<Vec<u8>> {
                let mut v = Vec::with_capacity(len + 64);
                v.resize(len, 0);
                Some(v)
            }
        }
        for direct in [false, true] {
            let len = 40_000usize;
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut stream = AnswerRepr::emit(AnswerStatus::Accept, "", b"");
            stream.extend_from_slice(
                &FrameRepr {
                    end: true,
                    filter_flags: 0,
                    len: len as u32,
                }
                .emit(),
            );
            let head = stream.len();
            stream.extend_from_slice(&payload);
            let mut d = Decoder::connector(1 << 20, 100);
            let mut evs = Vec::new();
            let mut used = 0;
            // The answer and the frame's header, and 1,000 bytes of payload fed.
            while used < head + 1000 {
                let (n, ev) = d.feed(&stream[used..head + 1000], &mut Spare).unwrap();
                used += n;
                evs.extend(ev);
            }
            if direct {
                let target = d.direct_target().expect("read directly");
                let n = target.len();
                target.copy_from_slice(&stream[used..used + n]);
                evs.extend(d.direct_done(n));
            } else {
                while used < stream.len() {
                    let (n, ev) = d.feed(&stream[used..], &mut Spare).unwrap();
                    used += n;
                    evs.extend(ev);
                }
            }
            match evs.last() {
                Some(Event::Frame {
                    payload: buf, at, ..
                }) => {
                    assert!(*at < 64 && *at > 0, "an offset was used: {at}");
                    assert_eq!((buf.as_ptr() as usize + at) % 64, FRAME_LEN);
                    assert!(buf[*at..] == payload[..], "the payload came out whole");
                }
                other => panic!("{other:?}"),
            }
        }
        // No room: no offset.
        assert_eq!(payload_lead(0x1010, 100, 100), 0);
        assert_eq!(payload_lead(0x1010, 100, 200), 56);
    }

    /// A header promising 256 MiB commits a bounded buffer; memory grows only with the bytes
    /// that arrive (by plain feeding and by direct reads alike), and the bytes come out whole.
    #[test]
    fn memory_is_committed_as_bytes_arrive() {
        let total = 3 * COMMIT_AHEAD + 12_345;
        for direct in [false, true] {
            let mut d = Decoder::connector(256 << 20, 100);
            let mut s = AnswerRepr::emit(AnswerStatus::Accept, "", b"");
            s.extend_from_slice(
                &FrameRepr {
                    end: true,
                    filter_flags: 0,
                    len: 256 << 20,
                }
                .emit(),
            );
            let mut asked = Vec::new();
            let mut alloc = |n: usize| {
                asked.push(n);
                vec![0; n]
            };
            let (n, _) = d.feed(&s, &mut alloc).unwrap();
            let (_, ev) = d.feed(&s[n..], &mut alloc).unwrap();
            assert!(ev.is_none());
            assert_eq!(
                asked,
                [COMMIT_AHEAD],
                "a header alone commits {COMMIT_AHEAD} bytes"
            );
            // With an idle buffer of the payload's length at hand (a pool's recycled one),
            // the payload takes it whole: no growth, no new memory.
            struct Idle(Option<Vec<u8>>, Vec<usize>);
            impl PayloadAlloc for Idle {
                fn take(&mut self, len: usize) -> Vec<u8> {
                    self.1.push(len);
                    vec![0; len]
                }
                fn take_idle(&mut self, len: usize) -> Option<Vec<u8>> {
                    self.0.take().filter(|b| b.len() == len)
                }
            }
            let mut d = Decoder::connector(256 << 20, 100);
            let mut idle = Idle(Some(vec![0; 256 << 20]), Vec::new());
            let (n, _) = d.feed(&s, &mut idle).unwrap();
            d.feed(&s[n..], &mut idle).unwrap();
            assert!(idle.0.is_none(), "the idle buffer was taken");
            assert!(idle.1.is_empty(), "nothing else was asked for");
            assert_eq!(d.direct_target().map(|t| t.len()), Some(256 << 20));
            // Now a well-behaved large frame, fed in odd pieces.
            let mut d = Decoder::connector(256 << 20, 100);
            let payload: Vec<u8> = (0..total).map(|i| (i * 7 / 3) as u8).collect();
            let mut stream = AnswerRepr::emit(AnswerStatus::Accept, "", b"");
            stream.extend_from_slice(
                &FrameRepr {
                    end: true,
                    filter_flags: 0,
                    len: total as u32,
                }
                .emit(),
            );
            let (n, _) = d.feed(&stream, &mut pool).unwrap();
            let (k, _) = d.feed(&stream[n..], &mut pool).unwrap();
            assert_eq!(n + k, stream.len());
            let mut at = 0;
            let mut out = None;
            while at < total {
                if direct {
                    let t = d.direct_target().expect("large payload");
                    assert!(
                        t.len() <= (at * 2).max(COMMIT_AHEAD),
                        "committed ahead of the bytes"
                    );
                    let k = t.len().min(70_001).min(total - at);
                    t[..k].copy_from_slice(&payload[at..at + k]);
                    at += k;
                    out = d.direct_done(k);
                } else {
                    let k = 65_537.min(total - at);
                    let (used, ev) = d.feed(&payload[at..at + k], &mut pool).unwrap();
                    assert_eq!(used, k);
                    at += k;
                    out = ev;
                }
            }
            match out {
                Some(Event::Frame { payload: got, .. }) => assert!(got == payload),
                other => panic!("direct={direct}: {other:?}"),
            }
            assert!(d.at_boundary());
        }
    }

    #[test]
    fn garbage_and_limits_are_refused_before_allocating() {
        let mut d = Decoder::listener(100, 100);
        let e = d
            .feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut pool)
            .unwrap_err();
        assert_eq!(e, WireError::BadMagic(*b"GET "));
        let mut d = Decoder::connector(100, 100);
        let mut s = AnswerRepr::emit(AnswerStatus::Accept, "", b"");
        s.extend_from_slice(&[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        let mut allocated = 0;
        let mut alloc = |n: usize| {
            allocated += n;
            vec![0; n]
        };
        let (n, ev) = d.feed(&s, &mut alloc).unwrap();
        assert!(matches!(ev, Some(Event::Answer { .. })));
        let err = d.feed(&s[n..], &mut alloc).unwrap_err();
        assert!(matches!(
            err,
            WireError::TooLong {
                field: "fragment",
                ..
            }
        ));
        assert_eq!(allocated, 0);
    }

    #[test]
    fn hello_checks() {
        let sig = Signature::default();
        assert!(check_hello("k", &sig, "c", "k", "send=;recv=").is_ok());
        assert_eq!(
            check_hello("k", &sig, "c", "other", "send=;recv=")
                .unwrap_err()
                .0,
            AnswerStatus::WrongKey
        );
        assert_eq!(
            check_hello("k", &sig, "c", "k", "send=crc@0;recv=crc@0")
                .unwrap_err()
                .0,
            AnswerStatus::SignatureMismatch
        );
        assert_eq!(
            check_hello("k", &sig, "c", "k", "nonsense").unwrap_err().0,
            AnswerStatus::Invalid
        );
    }
}
