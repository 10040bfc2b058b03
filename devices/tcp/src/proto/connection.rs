//! One TCP connection's protocol state, without I/O: what the handshake and each event mean
//! in each state, and which bytes must go out. The device feeds it what the socket said
//! (bytes, end of stream, errors, the clock) and carries out its [`Output`]s.
//!
//! ```text
//!  connector: Connecting ─tcp up─► HelloSent ─accept─► Open ─disconnect─► Closing
//!                  │                   ├─wrong key / no vmi peer──► TryNext (next port)
//!                  └─refused──► TryNext└─reject / mismatch──► Refused
//!  listener:  AwaitHello ─valid hello─► AwaitDecision ─accept─► Open
//!                  └─bad hello: answer + close──► Closing   └─reject: answer + close─► Closing
//! ```
//!
//! With authentication (both sides hold a key, `vmi_device::auth`), the listener answers an
//! authenticating hello with a challenge (its nonce and proof) and stays in `AwaitHello`
//! until the connector's proof arrives; only then is the hello checked (keys, filters) and
//! handed to the application. A connector checks the listener's proof before sending its
//! own, and takes no answer from a listener that has not proved itself.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use vmi_device::Status;
use vmi_device::auth::{self, AuthKey, NONCE_LEN, Role, Transcript};
use vmi_device::signature::Signature;

use crate::proto::decoder::{Decoder, Event, check_hello};
use crate::wire::{
    AnswerRepr, AnswerStatus, HEARTBEAT, HELLO_FLAG_AUTH, HELLO_LEN, HelloRepr, WireError,
    emit_challenge, emit_proof,
};

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// TCP connect in progress (connector).
    Connecting,
    /// Hello sent, waiting for the answer (connector).
    HelloSent,
    /// Waiting for the peer's hello (listener).
    AwaitHello,
    /// Connect request handed to the application (listener).
    AwaitDecision,
    /// Carrying frames.
    Open,
    /// Flushing what is queued, then closing.
    Closing,
}

/// What this process is, as the listener checks a hello.
#[derive(Clone, Debug)]
pub struct Local {
    /// This process's key.
    pub key: String,
    /// Its chains' filter signature.
    pub signature: Signature,
    /// The pre-shared key, when this process authenticates its peers.
    pub auth: Option<AuthKey>,
}

/// A hello that waits for its sender's proof (listener, authentication).
#[derive(Debug)]
struct PendingHello {
    from_key: String,
    to_key: String,
    signature: String,
    data: Vec<u8>,
    connector_nonce: [u8; NONCE_LEN],
    listener_nonce: [u8; NONCE_LEN],
}

/// The connector's side of authentication: what its hello said.
#[derive(Debug)]
struct SentHello {
    from_key: String,
    to_key: String,
    signature: String,
    nonce: [u8; NONCE_LEN],
    /// The listener proved itself.
    verified: bool,
}

/// What the device must do after an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Listener: a valid hello; hand a connect request to the application.
    Request {
        /// The connector's key.
        from_key: String,
        /// Its connect data.
        data: Vec<u8>,
    },
    /// Connector: accepted; the connect completes with the peer's reply data.
    Accepted {
        /// Reply data.
        reply: Vec<u8>,
    },
    /// Connector: refused for good (rejected by the application, filter or version mismatch,
    /// or our hello found invalid). The connect completes with this status.
    Refused {
        /// Status for the connect.
        status: Status,
        /// What happened, for the application.
        detail: String,
        /// The peer's reply data.
        reply: Vec<u8>,
    },
    /// Connector: this address was not the peer; try the next port.
    TryNext {
        /// Why.
        why: String,
        /// Nothing listened there.
        refused: bool,
        /// A vmi process with another key listened there.
        wrong_key: bool,
    },
    /// A data fragment.
    Frame {
        /// Last fragment of a stream.
        end: bool,
        /// Filter flag bits.
        filter_flags: u16,
        /// The buffer holding the payload, which is `payload[at..]`.
        payload: Vec<u8>,
        /// Where the payload starts in `payload` (see `decoder::payload_lead`).
        at: usize,
    },
    /// The connection is over; `tell`: the application knows it and must hear why (status
    /// `Ok` means the peer closed it in order).
    Failed {
        /// Why, as a status.
        status: Status,
        /// Why, in words.
        detail: String,
        /// The application knows this connection.
        tell: bool,
    },
    /// The connection ended before the application knew of it; close it quietly (logged).
    Dropped {
        /// Why.
        why: String,
    },
    /// Closed as planned (after a refusal, or after a local disconnect).
    Closed,
    /// Connector: the listener proved it holds the key; this side's proof is queued.
    Authenticated,
    /// Listener: this socket asks to join the connection of `token` as lane `lane` (the
    /// device moves it there, or drops it).
    Lane {
        /// Which lane.
        lane: u8,
        /// The connection's token.
        token: [u8; crate::wire::TOKEN_LEN],
    },
    /// Connector: the listener offers `lanes` lanes, joined with `token`.
    LaneOffer {
        /// Lanes offered.
        lanes: u8,
        /// The token.
        token: [u8; crate::wire::TOKEN_LEN],
    },
}

impl Output {
    /// True when the connection is over after this output.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Output::Refused { .. }
                | Output::TryNext { .. }
                | Output::Failed { .. }
                | Output::Dropped { .. }
                | Output::Closed
        )
    }
}

/// One connection's protocol state.
pub struct Connection {
    state: State,
    decoder: Decoder,
    peer: String,
    /// The key dialed (connector), for messages.
    dialed: Option<String>,
    deadline: Option<Instant>,
    handshake_timeout: Duration,
    transmit: VecDeque<Vec<u8>>,
    close_after_transmit: bool,
    /// Peer-loss detection (see [`Connection::tick`]).
    live: Liveness,
    /// Listener: an authenticating hello waiting for its proof.
    pending: Option<PendingHello>,
    /// Connector: the authenticating hello it sent.
    sent: Option<SentHello>,
    /// Listener: the connector's hello said it can open lanes.
    peer_lanes: bool,
}

/// What a connection knows of its peer's liveness, updated without reading the clock on the
/// data path: flags set as bytes move, looked at by a coarse periodic [`Connection::tick`].
#[derive(Debug)]
struct Liveness {
    /// Silence after which the peer is declared lost (zero: never).
    timeout: Duration,
    /// When the peer was last heard at a tick.
    last_heard: Option<Instant>,
    /// Bytes arrived since the last tick.
    heard: bool,
    /// Bytes were written since the last tick.
    sent: bool,
}

impl Liveness {
    /// No peer timeout (until `with_peer_timeout`).
    const OFF: Liveness = Liveness {
        timeout: Duration::ZERO,
        last_heard: None,
        heard: false,
        sent: false,
    };
}

impl Connection {
    /// A connection being opened to `peer` for `key`; the handshake must finish by `deadline`.
    pub fn connector(
        peer: &str,
        key: &str,
        max_fragment: u64,
        max_data: u32,
        deadline: Instant,
        handshake_timeout: Duration,
    ) -> Connection {
        Connection {
            state: State::Connecting,
            decoder: Decoder::connector(max_fragment, max_data),
            peer: peer.into(),
            dialed: Some(key.into()),
            deadline: Some(deadline),
            handshake_timeout,
            transmit: VecDeque::new(),
            close_after_transmit: false,
            live: Liveness::OFF,
            pending: None,
            sent: None,
            peer_lanes: false,
        }
    }

    /// A connection accepted from `peer` at `now`; its hello must arrive within
    /// `handshake_timeout`.
    pub fn listener(
        peer: &str,
        max_fragment: u64,
        max_data: u32,
        now: Instant,
        handshake_timeout: Duration,
    ) -> Connection {
        Connection {
            state: State::AwaitHello,
            decoder: Decoder::listener(max_fragment, max_data),
            peer: peer.into(),
            dialed: None,
            deadline: Some(now + handshake_timeout),
            handshake_timeout,
            transmit: VecDeque::new(),
            close_after_transmit: false,
            live: Liveness::OFF,
            pending: None,
            sent: None,
            peer_lanes: false,
        }
    }

    /// Declares the peer lost after `timeout` without a byte from it (zero: never); a side
    /// that has sent nothing for a third of it sends a heartbeat.
    pub fn with_peer_timeout(mut self, timeout: Duration) -> Connection {
        self.live.timeout = timeout;
        self
    }

    /// Listener: the connector can open lanes (its hello said so).
    pub fn peer_lanes(&self) -> bool {
        self.peer_lanes
    }

    /// A lane's part of a striped frame got `n` bytes (`Decoder::lane_target`); the frame,
    /// once whole, as an output. A bad piece header ends the connection.
    pub fn lane_done(
        &mut self,
        lane: usize,
        n: usize,
        local: &Local,
        now: Instant,
    ) -> Option<Output> {
        self.live.heard |= n > 0;
        if n > 0 {
            self.closing_progress(now);
        }
        match self.decoder.lane_done(lane, n) {
            Ok(Some(ev)) => self.on_event(ev, local, now),
            Ok(None) => None,
            Err(e) => self.on_wire_error(e, now),
        }
    }

    /// This side wrote bytes to the peer.
    pub fn note_sent(&mut self) {
        self.live.sent = true;
    }

    /// The periodic liveness check, every third of the peer timeout. `paused`:
    /// this side is not reading now (no receive buffers), so silence proves nothing. Returns
    /// the end of the connection when the peer has been silent for the whole timeout; queues
    /// a heartbeat when this side has been.
    pub fn tick(&mut self, now: Instant, paused: bool) -> Option<Output> {
        let live = &mut self.live;
        if live.timeout.is_zero() || self.state != State::Open {
            live.last_heard = None;
            return None;
        }
        let heard = std::mem::take(&mut live.heard) || paused;
        let last = *live.last_heard.get_or_insert(now);
        // Bytes seen at a tick arrived up to one period before it: the peer is lost once
        // `timeout - period` has passed since that tick, so within `timeout` of its last byte.
        let period = live.timeout / 3;
        if heard {
            live.last_heard = Some(now);
        } else if now.saturating_duration_since(last) >= live.timeout - period {
            return Some(Output::Failed {
                status: Status::ConnectionLost,
                detail: format!(
                    "heard nothing from {} for {} ms, not even a heartbeat: the peer or the network is gone (tcp parameter peer_timeout_ms)",
                    self.peer,
                    live.timeout.as_millis()
                ),
                tell: true,
            });
        }
        if !std::mem::take(&mut live.sent) {
            self.transmit.push_back(HEARTBEAT.to_vec());
        }
        None
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The peer's address, for messages.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// When the current phase times out, if it can.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// True when data frames may be sent.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Bytes to write next (handshake messages), in order.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// True once, when the connection must close after what was transmitted.
    pub fn take_close(&mut self) -> bool {
        std::mem::take(&mut self.close_after_transmit)
    }

    /// The decoder, for reads straight into a large payload's buffer.
    pub fn decoder(&mut self) -> &mut Decoder {
        &mut self.decoder
    }

    /// The decoder is between frames: the next byte read starts a frame header.
    #[inline]
    pub fn at_boundary(&self) -> bool {
        self.decoder.at_boundary()
    }

    // ---- what the socket said ----

    /// Connector: the TCP connect finished; send `hello`.
    pub fn connected(&mut self, hello: Vec<u8>) {
        // An authenticating hello: keep what the proofs cover, as it was sent.
        if hello.len() >= HELLO_LEN + NONCE_LEN && hello[5] & HELLO_FLAG_AUTH != 0 {
            let header: &[u8; HELLO_LEN] = hello[..HELLO_LEN].try_into().expect("24 bytes");
            if let Ok(h) = HelloRepr::parse(header, u32::MAX) {
                let body = &hello[HELLO_LEN..];
                let (f, r) = body.split_at(h.from_key_len as usize);
                let (t, r) = r.split_at(h.to_key_len as usize);
                let (sig, _) = r.split_at(h.signature_len as usize);
                let mut nonce = [0u8; NONCE_LEN];
                nonce.copy_from_slice(&hello[hello.len() - NONCE_LEN..]);
                self.sent = Some(SentHello {
                    from_key: String::from_utf8_lossy(f).into_owned(),
                    to_key: String::from_utf8_lossy(t).into_owned(),
                    signature: String::from_utf8_lossy(sig).into_owned(),
                    nonce,
                    verified: false,
                });
            }
        }
        if self.state == State::Connecting {
            self.transmit.push_back(hello);
            self.state = State::HelloSent;
        }
    }

    /// Notes that the peer was heard from (bytes read from it outside [`Connection::feed`]:
    /// whole frames the host took from a lent socket).
    pub fn note_heard(&mut self) {
        self.live.heard = true;
    }

    /// A data frame whole at the start of `input` that this connection would deliver now
    /// (open, between frames): its end bit, filter flags, payload and the bytes it takes. The
    /// caller hands the payload over from `input` and skips those bytes; `None`: [`feed`].
    ///
    /// [`feed`]: Connection::feed
    pub fn whole_frame<'a>(&mut self, input: &'a [u8]) -> Option<(bool, u16, &'a [u8], usize)> {
        if self.state != State::Open {
            return None;
        }
        let (f, used) = self.decoder.whole_frame(input)?;
        self.live.heard = true;
        Some((
            f.end,
            f.filter_flags,
            &input[crate::wire::FRAME_LEN..used],
            used,
        ))
    }

    /// Consumes bytes from `input` until one output is ready or the input is used up;
    /// returns how many bytes were used. `alloc` gives payload buffers (from a pool).
    pub fn feed(
        &mut self,
        input: &[u8],
        local: &Local,
        now: Instant,
        alloc: &mut dyn super::decoder::PayloadAlloc,
    ) -> (usize, Option<Output>) {
        if self.state == State::Closing && self.close_after_transmit {
            // Refused: the answer is on its way out; whatever else the peer sends is ignored.
            return (input.len(), None);
        }
        self.live.heard |= !input.is_empty();
        if !input.is_empty() {
            self.closing_progress(now);
        }
        match self.decoder.feed(input, alloc) {
            Ok((used, None)) => (used, None),
            Ok((used, Some(ev))) => (used, self.on_event(ev, local, now)),
            Err(e) => (input.len(), self.on_wire_error(e, now)),
        }
    }

    /// A large payload read straight into its buffer is complete.
    pub fn direct_done(&mut self, n: usize, local: &Local, now: Instant) -> Option<Output> {
        self.live.heard |= n > 0;
        if n > 0 {
            self.closing_progress(now);
        }
        let ev = self.decoder.direct_done(n)?;
        self.on_event(ev, local, now)
    }

    /// Bytes arrived while this side waits for the peer to close after its own close: the
    /// wait is for the peer's silence, not for its whole backlog, so it starts again. A peer
    /// that still sends what it owes (its last data, the notices of failed messages) is never
    /// cut off while it makes progress.
    fn closing_progress(&mut self, now: Instant) {
        if self.state == State::Closing && !self.close_after_transmit && self.deadline.is_some() {
            self.deadline = Some(now + self.handshake_timeout);
        }
    }

    /// The peer closed its side.
    pub fn eof(&mut self) -> Output {
        match self.state {
            State::Connecting | State::HelloSent => Output::TryNext {
                why: "closed by the peer before answering".into(),
                refused: false,
                wrong_key: false,
            },
            State::AwaitHello => Output::Dropped {
                why: format!(
                    "{} closed before finishing its hello (truncated handshake)",
                    self.peer
                ),
            },
            State::Closing => Output::Closed,
            _ if self.decoder.at_boundary() => Output::Failed {
                status: Status::Ok,
                detail: "the peer closed the connection".into(),
                tell: true,
            },
            _ => Output::Failed {
                status: Status::ConnectionLost,
                detail: format!(
                    "{} closed the connection in the middle of a fragment",
                    self.peer
                ),
                tell: true,
            },
        }
    }

    /// Reading (or connecting) failed; `refused`: the connect was refused.
    pub fn read_error(&mut self, error: &str, refused: bool) -> Output {
        match self.state {
            State::Connecting | State::HelloSent => Output::TryNext {
                why: error.into(),
                refused,
                wrong_key: false,
            },
            State::AwaitHello => Output::Dropped {
                why: format!("{} failed during its handshake: {error}", self.peer),
            },
            s => Output::Failed {
                status: Status::ConnectionLost,
                detail: format!("connection to {} failed: {error}", self.peer),
                tell: matches!(s, State::Open | State::AwaitDecision),
            },
        }
    }

    /// Writing failed.
    pub fn write_error(&mut self, error: &str) -> Output {
        let detail = format!("write to {} failed: {error}", self.peer);
        match self.state {
            State::Connecting | State::HelloSent => Output::TryNext {
                why: detail,
                refused: false,
                wrong_key: false,
            },
            s => Output::Failed {
                status: Status::ConnectionLost,
                detail,
                tell: matches!(s, State::Open | State::AwaitDecision),
            },
        }
    }

    /// The clock moved to `now`: the phase's deadline may have passed.
    pub fn timeout(&mut self, now: Instant) -> Option<Output> {
        if self.deadline.is_none_or(|d| d > now) {
            return None;
        }
        self.deadline = None;
        Some(match self.state {
            State::Connecting | State::HelloSent => Output::TryNext {
                why: "timed out".into(),
                refused: false,
                wrong_key: false,
            },
            State::AwaitHello => Output::Dropped {
                why: format!(
                    "{} sent no complete hello within {} ms (truncated or idle handshake)",
                    self.peer,
                    self.handshake_timeout.as_millis()
                ),
            },
            _ => Output::Closed,
        })
    }

    // ---- what the application said ----

    /// Listener: the application's answer to the connect request. Returns false when the
    /// connection is not waiting for one.
    pub fn answer(&mut self, accept: bool, reply: &[u8], now: Instant) -> bool {
        if self.state != State::AwaitDecision {
            return false;
        }
        let status = if accept {
            AnswerStatus::Accept
        } else {
            AnswerStatus::Reject
        };
        self.transmit.push_back(AnswerRepr::emit(status, "", reply));
        if accept {
            self.state = State::Open;
        } else {
            self.closing_after_transmit(now);
        }
        true
    }

    /// The application disconnects: nothing more is sent. What the peer still sends (its
    /// last fragments, its host's notices) is read until it closes too, for at most the
    /// handshake timeout.
    pub fn close(&mut self, now: Instant) {
        self.state = State::Closing;
        self.deadline = Some(now + self.handshake_timeout);
    }

    /// The peer finished sending (end of stream) while the connection was open: the answer
    /// is to finish sending too; the connection ends when that is written.
    pub fn peer_finished(&mut self) {
        self.state = State::Closing;
    }

    // ---- events ----

    fn closing_after_transmit(&mut self, now: Instant) {
        self.state = State::Closing;
        self.close_after_transmit = true;
        self.deadline = Some(now + self.handshake_timeout);
    }

    fn on_event(&mut self, ev: Event, local: &Local, now: Instant) -> Option<Output> {
        match ev {
            Event::Hello {
                from_key,
                to_key,
                signature,
                data,
                nonce,
                lanes,
            } => {
                self.peer_lanes = lanes;
                self.on_hello(from_key, to_key, signature, data, nonce, local, now)
            }
            Event::LaneHello { lane, token } => Some(if self.state == State::AwaitHello {
                Output::Lane { lane, token }
            } else {
                self.violation(format!("{} sent a lane hello on a connection", self.peer))
            }),
            Event::LaneOffer { lanes, token } => {
                Some(if self.state == State::Open && self.dialed.is_some() {
                    Output::LaneOffer { lanes, token }
                } else {
                    self.violation(format!("{} offered lanes out of turn", self.peer))
                })
            }
            Event::Proof(proof) => self.on_proof(&proof, local, now),
            Event::Challenge { nonce, proof } => Some(self.on_challenge(&nonce, &proof, local)),
            Event::Heartbeat => None,
            Event::Answer {
                status,
                reason,
                reply,
            } => Some(self.on_answer(status, reason, reply)),
            Event::Frame {
                end,
                filter_flags,
                payload,
                at,
            } => Some(
                if self.state == State::Open
                    || (self.state == State::Closing && !self.close_after_transmit)
                {
                    Output::Frame {
                        end,
                        filter_flags,
                        payload,
                        at,
                    }
                } else {
                    self.violation(format!(
                        "{} sent data before the connection was accepted",
                        self.peer
                    ))
                },
            ),
        }
    }

    fn violation(&self, detail: String) -> Output {
        Output::Failed {
            status: Status::Protocol,
            detail,
            tell: matches!(self.state, State::Open | State::AwaitDecision),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_hello(
        &mut self,
        from_key: String,
        to_key: String,
        signature: String,
        data: Vec<u8>,
        nonce: Option<[u8; NONCE_LEN]>,
        local: &Local,
        now: Instant,
    ) -> Option<Output> {
        if self.state != State::AwaitHello || self.pending.is_some() {
            return Some(self.violation(format!("{} sent a second hello", self.peer)));
        }
        match (&local.auth, nonce) {
            (Some(key), Some(connector_nonce)) => {
                let listener_nonce = auth::nonce();
                let proof = key.prove(
                    Role::Listener,
                    &Transcript {
                        connector_nonce: &connector_nonce,
                        listener_nonce: &listener_nonce,
                        from_key: &from_key,
                        to_key: &to_key,
                        signature: &signature,
                    },
                );
                self.transmit
                    .push_back(emit_challenge(&listener_nonce, &proof));
                self.pending = Some(PendingHello {
                    from_key,
                    to_key,
                    signature,
                    data,
                    connector_nonce,
                    listener_nonce,
                });
                return None;
            }
            (Some(_), None) => {
                log::warn!(
                    "tcp: refusing connection from {}: it does not authenticate, and this process requires it",
                    self.peer
                );
                return self.refuse(
                    AnswerStatus::Invalid,
                    "this process requires authentication with a shared key; give the connecting process the same key (tcp parameter auth_key_file or VMI_AUTH_KEY_FILE)",
                    now,
                );
            }
            (None, Some(_)) => {
                log::warn!(
                    "tcp: refusing connection from {}: it authenticates, and this process has no key",
                    self.peer
                );
                return self.refuse(
                    AnswerStatus::Invalid,
                    "this process does not use authentication; give it the same key as the connecting process, or remove the key there",
                    now,
                );
            }
            (None, None) => {}
        }
        self.check_and_request(from_key, to_key, signature, data, local, now)
    }

    fn refuse(&mut self, status: AnswerStatus, reason: &str, now: Instant) -> Option<Output> {
        self.transmit
            .push_back(AnswerRepr::emit(status, reason, &[]));
        self.closing_after_transmit(now);
        None
    }

    /// Listener: the connector's proof of the key.
    fn on_proof(&mut self, proof: &[u8], local: &Local, now: Instant) -> Option<Output> {
        let (Some(p), Some(key)) = (self.pending.take(), local.auth.as_ref()) else {
            return Some(Output::Dropped {
                why: format!("{} sent a proof it was not asked for", self.peer),
            });
        };
        let t = Transcript {
            connector_nonce: &p.connector_nonce,
            listener_nonce: &p.listener_nonce,
            from_key: &p.from_key,
            to_key: &p.to_key,
            signature: &p.signature,
        };
        if !key.verify(Role::Connector, &t, proof) {
            return Some(Output::Dropped {
                why: format!(
                    "{} failed authentication (it does not hold this process's key)",
                    self.peer
                ),
            });
        }
        self.check_and_request(p.from_key, p.to_key, p.signature, p.data, local, now)
    }

    /// Connector: the listener's nonce and proof.
    fn on_challenge(&mut self, nonce: &[u8; NONCE_LEN], proof: &[u8], local: &Local) -> Output {
        let key_name = self.dialed.clone().unwrap_or_default();
        let refused = |status, detail| Output::Refused {
            status,
            detail,
            reply: Vec::new(),
        };
        if self.state != State::HelloSent {
            return self.violation(format!("{} sent an unexpected challenge", self.peer));
        }
        let (Some(sent), Some(key)) = (self.sent.as_mut(), local.auth.as_ref()) else {
            return refused(
                Status::Mismatch,
                format!(
                    "'{key_name}' at {} requires authentication; give this process the same key (tcp parameter auth_key_file or VMI_AUTH_KEY_FILE)",
                    self.peer
                ),
            );
        };
        let t = Transcript {
            connector_nonce: &sent.nonce,
            listener_nonce: nonce,
            from_key: &sent.from_key,
            to_key: &sent.to_key,
            signature: &sent.signature,
        };
        if !key.verify(Role::Listener, &t, proof) {
            return refused(
                Status::Mismatch,
                format!(
                    "the process at {} could not prove it holds the authentication key (another key, or an impostor)",
                    self.peer
                ),
            );
        }
        sent.verified = true;
        let mine = key.prove(Role::Connector, &t);
        self.transmit.push_back(emit_proof(&mine));
        // Nothing to hand the device: the answer follows.
        Output::Authenticated
    }

    fn check_and_request(
        &mut self,
        from_key: String,
        to_key: String,
        signature: String,
        data: Vec<u8>,
        local: &Local,
        now: Instant,
    ) -> Option<Output> {
        match check_hello(&local.key, &local.signature, &from_key, &to_key, &signature) {
            Err((status, reason)) => {
                if status == AnswerStatus::WrongKey {
                    log::debug!(
                        "tcp: {} looked for key '{to_key}' here: {reason}",
                        self.peer
                    );
                } else {
                    log::warn!(
                        "tcp: refusing connection from '{from_key}' at {}: {reason}",
                        self.peer
                    );
                }
                self.transmit
                    .push_back(AnswerRepr::emit(status, &reason, &[]));
                self.closing_after_transmit(now);
                None
            }
            Ok(()) => {
                self.state = State::AwaitDecision;
                self.deadline = None;
                Some(Output::Request { from_key, data })
            }
        }
    }

    fn on_answer(&mut self, status: AnswerStatus, reason: String, reply: Vec<u8>) -> Output {
        if self.state != State::HelloSent {
            return self.violation(format!("{} sent an unexpected answer", self.peer));
        }
        let key = self.dialed.clone().unwrap_or_default();
        let refused = |status, detail| Output::Refused {
            status,
            detail,
            reply: reply.clone(),
        };
        if status != AnswerStatus::WrongKey && self.sent.as_ref().is_some_and(|s| !s.verified) {
            return refused(
                Status::Mismatch,
                format!(
                    "the process at {} answered without proving it holds the authentication key; this process requires authentication",
                    self.peer
                ),
            );
        }
        match status {
            AnswerStatus::WrongKey => Output::TryNext {
                why: reason,
                refused: false,
                wrong_key: true,
            },
            AnswerStatus::Accept => {
                self.state = State::Open;
                self.deadline = None;
                Output::Accepted { reply }
            }
            AnswerStatus::Reject => refused(
                Status::Rejected,
                format!("'{key}' at {} rejected the connection", self.peer),
            ),
            AnswerStatus::SignatureMismatch => refused(
                Status::Mismatch,
                format!("'{key}' refused the connection: {reason}"),
            ),
            AnswerStatus::VersionMismatch => refused(
                Status::Mismatch,
                format!("'{key}' speaks another wire version: {reason}"),
            ),
            AnswerStatus::Invalid => refused(
                Status::Protocol,
                format!("'{key}' found our hello invalid: {reason}"),
            ),
            AnswerStatus::Busy => refused(
                Status::NoResources,
                format!(
                    "the process at {} cannot take the connection: {reason}",
                    self.peer
                ),
            ),
        }
    }

    fn on_wire_error(&mut self, e: WireError, now: Instant) -> Option<Output> {
        Some(match self.state {
            // A vmi peer (its magic is right) whose hello this side cannot take is told why,
            // so it does not report "nobody listens"; anything else is dropped silently.
            State::AwaitHello if !matches!(e, WireError::BadMagic(_)) => {
                let status = if matches!(e, WireError::Version(_)) {
                    AnswerStatus::VersionMismatch
                } else {
                    AnswerStatus::Invalid
                };
                let reason = e.to_string();
                log::warn!("tcp: refusing the hello from {}: {reason}", self.peer);
                self.transmit
                    .push_back(AnswerRepr::emit(status, &reason, &[]));
                self.closing_after_transmit(now);
                return None;
            }
            State::AwaitHello => Output::Dropped {
                why: format!("{} sent an invalid handshake: {e}", self.peer),
            },
            State::Connecting | State::HelloSent => Output::TryNext {
                why: format!("not a vmi peer: {e}"),
                refused: false,
                wrong_key: false,
            },
            _ => {
                log::warn!(
                    "tcp: protocol violation by {}: {e}; closing the connection",
                    self.peer
                );
                self.violation(format!("protocol violation by {}: {e}", self.peer))
            }
        })
    }
}
