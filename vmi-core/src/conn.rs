//! Connections (VMI 2.1: `PVMI_CONNECT`): handles, states, and every state transition.
//!
//! The life of a connection, and the only places its state changes:
//!
//! ```text
//!  outgoing:  connect ──► Connecting ──accepted──► Open
//!                                    └─rejected/failed──► (released)
//!  incoming:  transport ──► Incoming ──answer accept sent──► Open
//!                                    └─rejected / answer failed──► (released)
//!  both:      Open ──disconnect──► Closing ──done──► (released)
//!             any ──peer gone──► (released)
//! ```
#![forbid(unsafe_code)]

use serde::Serialize;

use std::time::{Duration, Instant};

use crate::slot::DevIndex;
use crate::status::Status;
use crate::timeouts::ConnTimer;

/// A connection, as the application names it. Handles are never reused while a stale copy
/// could be mistaken for a new connection: each carries a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    /// The raw value devices see in `VmiIrb::conn`.
    pub fn raw(self) -> u64 {
        self.0
    }

    pub(crate) fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn#{}.{}", self.index(), self.generation())
    }
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// Connect issued, no answer yet.
    Connecting,
    /// A peer asked; the accept handler has not answered yet (or its answer is in flight).
    Incoming,
    /// Open for streams.
    Open,
    /// Disconnect issued.
    Closing,
}

impl ConnState {
    /// The state in words, for error messages.
    pub fn words(self) -> &'static str {
        match self {
            ConnState::Connecting => "still connecting",
            ConnState::Incoming => "waiting for the accept handler",
            ConnState::Open => "open",
            ConnState::Closing => "closing",
        }
    }
}

/// How a send relates to the connection's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SendKind {
    /// A one-fragment stream.
    Whole,
    /// A fragment of the open stream; more follow.
    Fragment,
    /// The last fragment of the open stream.
    End,
}

/// Why a connection refused an operation (turned into a `VmiError` by the caller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not a live connection.
    Unknown,
    /// Not in a state that allows it.
    NotOpen(ConnState),
    /// A stream is already open.
    StreamBusy,
    /// No stream is open.
    StreamClosed,
}

struct ConnEntry {
    generation: u32,
    live: bool,
    state: ConnState,
    transport: DevIndex,
    peer_host: String,
    peer_key: String,
    stream_open: bool,
    /// Messages begun on this connection by this side (the index of the next one).
    tx_messages: u64,
    /// Messages that ended (delivered or failed) on the receive side.
    rx_messages: u64,
    /// The message being received failed: its remaining fragments are discarded.
    rx_discarding: bool,
    /// Measured one-way latency, ns (0: not measured yet).
    latency_ns: u64,
    /// When the last ping went out (at most one per refresh period).
    pinged: Option<std::time::Instant>,
    /// The stamp of the ping waiting for its pong (0: none); only its pong is taken.
    ping_stamp: u64,
    /// The application's value for the connection (VMI 2.1's receive context).
    context: u64,
    /// The chain it uses: 0 the send and receive chains, 1.. the named chains.
    chain: u8,
    /// Its send timeout, close wait and abort (see `timeouts`), only while it has one.
    timer: Option<Box<ConnTimer>>,
}

/// All connections of one process.
#[derive(Default)]
pub(crate) struct ConnTable {
    entries: Vec<ConnEntry>,
    free: Vec<usize>,
    live: usize,
    /// Live connections with a timer.
    timers: usize,
    /// No timer expires before this (a lower bound: progress only moves deadlines later).
    due: Option<Instant>,
    /// The send timeout new connections start with.
    default_send_timeout: Option<Duration>,
}

impl ConnTable {
    fn alloc(&mut self, transport: DevIndex, state: ConnState) -> ConnId {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(ConnEntry {
                    generation: 0,
                    live: false,
                    state,
                    transport,
                    peer_host: String::new(),
                    peer_key: String::new(),
                    stream_open: false,
                    tx_messages: 0,
                    rx_messages: 0,
                    rx_discarding: false,
                    latency_ns: 0,
                    pinged: None,
                    ping_stamp: 0,
                    context: 0,
                    chain: 0,
                    timer: None,
                });
                self.entries.len() - 1
            }
        };
        let e = &mut self.entries[index];
        e.generation = e.generation.wrapping_add(1).max(1);
        e.tx_messages = 0;
        e.rx_messages = 0;
        e.rx_discarding = false;
        e.latency_ns = 0;
        e.pinged = None;
        e.ping_stamp = 0;
        e.context = 0;
        e.chain = 0;
        e.live = true;
        e.state = state;
        e.transport = transport;
        e.peer_host.clear();
        e.peer_key.clear();
        e.stream_open = false;
        self.live += 1;
        let id = ConnId(((e.generation as u64) << 32) | index as u64);
        if let Some(t) = self.default_send_timeout {
            self.timer_mut(id).send_timeout = Some(t);
        }
        id
    }

    fn get(&self, id: ConnId) -> Option<&ConnEntry> {
        self.entries
            .get(id.index())
            .filter(|e| e.live && e.generation == id.generation())
    }

    fn get_mut(&mut self, id: ConnId) -> Option<&mut ConnEntry> {
        self.entries
            .get_mut(id.index())
            .filter(|e| e.live && e.generation == id.generation())
    }

    fn release(&mut self, id: ConnId) -> bool {
        match self.get_mut(id) {
            Some(e) => {
                e.live = false;
                if e.timer.take().is_some() {
                    self.timers -= 1;
                }
                self.free.push(id.index());
                self.live -= 1;
                true
            }
            None => false,
        }
    }

    // ---- timers (see `timeouts`) ----

    /// The timer of a live connection, made on first use.
    fn timer_mut(&mut self, id: ConnId) -> &mut ConnTimer {
        let e = &mut self.entries[id.index()];
        if e.timer.is_none() {
            e.timer = Some(Box::new(ConnTimer::new(None, Instant::now())));
            self.timers += 1;
        }
        e.timer.as_deref_mut().expect("just made")
    }

    /// Live connections with a timer.
    #[inline]
    pub fn timers(&self) -> usize {
        self.timers
    }

    /// No timer expires before this.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    fn lower_due(&mut self, at: Instant) {
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
    }

    /// The send timeout connections opened from now on start with.
    pub fn set_default_send_timeout(&mut self, t: Option<Duration>) {
        self.default_send_timeout = t;
    }

    /// Sets or clears a live connection's send timeout; false when it is not live.
    pub fn set_send_timeout(&mut self, id: ConnId, t: Option<Duration>) -> bool {
        if self.get(id).is_none() {
            return false;
        }
        let timer = self.timer_mut(id);
        timer.send_timeout = t;
        if let Some(at) = timer.deadline() {
            self.lower_due(at);
        }
        true
    }

    /// A live connection's send timeout.
    pub fn send_timeout(&self, id: ConnId) -> Option<Duration> {
        self.get(id)?.timer.as_ref()?.send_timeout
    }

    /// A send on `id` is issued: true when its connection has a send timeout (the slot is
    /// then flagged, and its completion reported with `timed_send_done`).
    #[inline]
    pub fn timed_send(&mut self, id: ConnId) -> bool {
        let Some(t) = self
            .get_mut(id)
            .and_then(|e| e.timer.as_deref_mut())
            .filter(|t| t.send_timeout.is_some())
        else {
            return false;
        };
        t.pending += 1;
        if t.pending == 1 {
            t.progress_at = Instant::now();
            if let Some(at) = t.deadline() {
                self.lower_due(at);
            }
        }
        true
    }

    /// A flagged send of `id` completed (whatever its status): progress.
    pub fn timed_send_done(&mut self, id: ConnId) {
        if let Some(t) = self.get_mut(id).and_then(|e| e.timer.as_deref_mut()) {
            t.pending = t.pending.saturating_sub(1);
            t.progress_at = Instant::now();
        }
    }

    /// An orderly close of `id` must be over within `wait`.
    pub fn close_by(&mut self, id: ConnId, wait: Duration) {
        if self.get(id).is_none() {
            return;
        }
        let at = Instant::now() + wait;
        self.timer_mut(id).close = Some((at, wait));
        self.lower_due(at);
    }

    /// The connections whose timers expired at `now`, with the reason; recomputes `due`.
    pub fn expired(&mut self, now: Instant) -> Vec<(ConnId, String)> {
        let mut out = Vec::new();
        let mut due: Option<Instant> = None;
        for (i, e) in self.entries.iter().enumerate() {
            let Some(t) = e.timer.as_deref().filter(|_| e.live) else {
                continue;
            };
            if let Some(why) = t.expired(now) {
                out.push((ConnId(((e.generation as u64) << 32) | i as u64), why));
            } else if let Some(at) = t.deadline() {
                due = Some(due.map_or(at, |d| d.min(at)));
            }
        }
        self.due = due;
        out
    }

    /// The application (or a timer) aborts `id`: → Closing, ending as `status` with
    /// `detail`. Returns the owning transport. Refused for a connection already aborting.
    pub fn abort_issued(
        &mut self,
        id: ConnId,
        status: Status,
        detail: String,
    ) -> Result<DevIndex, Refusal> {
        let e = self.get_mut(id).ok_or(Refusal::Unknown)?;
        if e.timer.as_ref().is_some_and(|t| t.ending.is_some()) {
            return Err(Refusal::NotOpen(ConnState::Closing));
        }
        e.state = ConnState::Closing;
        let transport = e.transport;
        self.timer_mut(id).ending = Some((status, detail));
        Ok(transport)
    }

    /// How an aborting connection ends (taken once); None when it is not aborting.
    pub fn take_ending(&mut self, id: ConnId) -> Option<(Status, String)> {
        self.get_mut(id)?.timer.as_deref_mut()?.ending.take()
    }

    /// Number of live connections.
    pub fn live(&self) -> usize {
        self.live
    }

    /// True for a live handle.
    pub fn is_live(&self, id: ConnId) -> bool {
        self.get(id).is_some()
    }

    /// The chain a live connection uses (0: the send and receive chains).
    #[inline]
    pub fn chain(&self, id: ConnId) -> u8 {
        self.get(id).map_or(0, |e| e.chain)
    }

    /// Puts a live connection on chain `chain`.
    pub fn set_chain(&mut self, id: ConnId, chain: u8) {
        if let Some(e) = self.get_mut(id) {
            e.chain = chain;
        }
    }

    /// The application's value for a live connection (0 until set).
    pub fn context(&self, id: ConnId) -> Option<u64> {
        self.get(id).map(|e| e.context)
    }

    /// Sets the application's value for a live connection; false when it is not live.
    pub fn set_context(&mut self, id: ConnId, context: u64) -> bool {
        self.get_mut(id).map(|e| e.context = context).is_some()
    }

    /// The peer's key of a live connection.
    pub fn peer_key(&self, id: ConnId) -> Option<&str> {
        self.get(id).map(|e| e.peer_key.as_str())
    }

    /// A live connection's state.
    pub fn state(&self, id: ConnId) -> Option<ConnState> {
        self.get(id).map(|e| e.state)
    }

    /// The peer's host as the connect named it (or the transport saw it).
    pub fn peer_host(&self, id: ConnId) -> Option<&str> {
        self.get(id).map(|e| e.peer_host.as_str())
    }

    // ---- transitions ----

    /// The application connects to `key` at `host` over `transport`: → Connecting.
    pub fn connect_issued(&mut self, transport: DevIndex, host: &str, key: &str) -> ConnId {
        let id = self.alloc(transport, ConnState::Connecting);
        let e = self.get_mut(id).expect("just allocated");
        e.peer_host.push_str(host);
        e.peer_key.push_str(key);
        id
    }

    /// A connect that waited for its peer goes out over `transport` after all.
    pub fn set_transport(&mut self, id: ConnId, transport: DevIndex) {
        if let Some(e) = self.get_mut(id) {
            e.transport = transport;
        }
    }

    /// The connection's measured one-way latency, ns (0: none yet).
    pub fn latency_ns(&self, id: ConnId) -> u64 {
        self.get(id).map_or(0, |e| e.latency_ns)
    }

    /// Whether a ping should go out on an open connection now (at most one per `every`);
    /// when it should, `stamp` is recorded as the one whose pong is awaited.
    pub fn ping_due(
        &mut self,
        id: ConnId,
        now: std::time::Instant,
        every: std::time::Duration,
        stamp: u64,
    ) -> bool {
        let Some(e) = self.get_mut(id) else {
            return false;
        };
        if e.state != ConnState::Open || e.pinged.is_some_and(|t| now.duration_since(t) < every) {
            return false;
        }
        e.pinged = Some(now);
        e.ping_stamp = stamp.max(1);
        true
    }

    /// A pong arrived at `now_ns` (the stamps' clock): when it answers the ping awaited, its
    /// half round trip is folded into the latency (the first sample as it is, later ones an
    /// eighth of the way, as TCP smooths its RTT) and true is returned. Any other pong (late,
    /// repeated, or made up by the peer) changes nothing.
    pub fn pong(&mut self, id: ConnId, stamp: u64, now_ns: u64) -> bool {
        let Some(e) = self.get_mut(id) else {
            return false;
        };
        if e.ping_stamp == 0 || stamp != e.ping_stamp || now_ns < stamp {
            return false;
        }
        e.ping_stamp = 0;
        let one_way = ((now_ns - stamp) / 2).max(1);
        e.latency_ns = if e.latency_ns == 0 {
            one_way
        } else {
            (e.latency_ns - e.latency_ns / 8 + one_way / 8).max(1)
        };
        true
    }

    /// The connect finished: accepted → Open, anything else → released.
    pub fn connect_finished(&mut self, id: ConnId, accepted: bool) {
        if !accepted {
            self.release(id);
        } else if let Some(e) = self.get_mut(id) {
            e.state = ConnState::Open;
        }
    }

    /// A transport reports an incoming connection: → Incoming.
    pub fn incoming(&mut self, transport: DevIndex) -> ConnId {
        self.alloc(transport, ConnState::Incoming)
    }

    /// The connect request reached the application: remember who asks.
    pub fn request_seen(&mut self, id: ConnId, host: &str, key: &str) {
        if let Some(e) = self.get_mut(id) {
            e.peer_host.clear();
            e.peer_host.push_str(host);
            e.peer_key.clear();
            e.peer_key.push_str(key);
        }
    }

    /// The answer to a connect request went out: an accept sent → Open; a reject, or an
    /// answer that failed → released.
    pub fn answer_finished(&mut self, id: ConnId, accepted: bool) {
        self.connect_finished(id, accepted);
    }

    /// The application disconnects: Open/Connecting/Incoming → Closing. Returns the owning
    /// transport.
    pub fn disconnect_issued(&mut self, id: ConnId) -> Result<DevIndex, Refusal> {
        let e = self.get_mut(id).ok_or(Refusal::Unknown)?;
        if e.state == ConnState::Closing {
            return Err(Refusal::NotOpen(e.state));
        }
        e.state = ConnState::Closing;
        Ok(e.transport)
    }

    /// The connection ended (local disconnect done, or the peer went away): released.
    /// Returns whether it was live.
    pub fn closed(&mut self, id: ConnId) -> bool {
        self.release(id)
    }

    /// The application begins a stream.
    pub fn stream_begin(&mut self, id: ConnId) -> Result<(), Refusal> {
        let e = self.get_mut(id).ok_or(Refusal::Unknown)?;
        if e.state != ConnState::Open {
            return Err(Refusal::NotOpen(e.state));
        }
        if e.stream_open {
            return Err(Refusal::StreamBusy);
        }
        e.stream_open = true;
        e.tx_messages += 1;
        Ok(())
    }

    /// Checks that a send of this kind is allowed now; returns the owning transport. An
    /// `End` closes the stream.
    #[inline]
    pub fn send_checked(&mut self, id: ConnId, kind: SendKind) -> Result<DevIndex, Refusal> {
        let e = self.get_mut(id).ok_or(Refusal::Unknown)?;
        if e.state != ConnState::Open {
            return Err(Refusal::NotOpen(e.state));
        }
        match kind {
            SendKind::Whole if e.stream_open => return Err(Refusal::StreamBusy),
            SendKind::Whole => e.tx_messages += 1,
            SendKind::Fragment | SendKind::End if !e.stream_open => {
                return Err(Refusal::StreamClosed);
            }
            SendKind::End => e.stream_open = false,
            _ => {}
        }
        Ok(e.transport)
    }

    /// Undoes the stream change of a `send_checked` whose send was then refused.
    pub fn send_undone(&mut self, id: ConnId, kind: SendKind) {
        if let Some(e) = self.get_mut(id) {
            match kind {
                SendKind::End => e.stream_open = true,
                SendKind::Whole => e.tx_messages -= 1,
                SendKind::Fragment => {}
            }
        }
    }

    /// The transport of a live connection.
    pub fn transport_of(&self, id: ConnId) -> Option<DevIndex> {
        self.get(id).map(|e| e.transport)
    }

    /// Messages this side began on `id` (VMI 2.1 had no such count; it names a failed one).
    pub fn tx_messages(&self, id: ConnId) -> u64 {
        self.get(id).map_or(0, |e| e.tx_messages)
    }

    /// A received fragment of the application's stream arrived: whether to deliver it (false
    /// while the rest of a failed message is discarded), and the index of its message; `None`
    /// when the connection is not live (one look-up answers both).
    #[inline]
    pub fn rx_fragment(&mut self, id: ConnId, end: bool) -> Option<(bool, u64)> {
        let e = self.get_mut(id)?;
        let message = e.rx_messages;
        let deliver = !e.rx_discarding;
        if end {
            e.rx_messages += 1;
            e.rx_discarding = false;
        }
        Some((deliver, message))
    }

    /// A received fragment failed (integrity, decompression, loss): the message fails as a
    /// whole. Returns the index of the failed message when this is its first failure (the
    /// application and the sender are told once); `end` says the failed fragment was its last.
    pub fn rx_failed(&mut self, id: ConnId, end: bool) -> Option<u64> {
        let e = self.get_mut(id)?;
        let message = e.rx_messages;
        let first = !e.rx_discarding;
        if end {
            e.rx_messages += 1;
            e.rx_discarding = false;
        } else {
            e.rx_discarding = true;
        }
        first.then_some(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_awaited_pong_is_a_latency_sample() {
        use std::time::{Duration, Instant};
        let mut t = ConnTable::default();
        let a = t.incoming(0);
        let now = Instant::now();
        let every = Duration::from_secs(5);
        assert!(!t.ping_due(a, now, every, 100), "not open yet");
        t.answer_finished(a, true);
        assert!(
            !t.pong(a, 100, 200),
            "no ping out: a made-up pong is ignored"
        );
        assert!(t.ping_due(a, now, every, 100));
        assert!(!t.ping_due(a, now, every, 150), "one ping per period");
        assert!(!t.pong(a, 99, 300), "the wrong stamp");
        assert!(!t.pong(a, 100, 50), "a pong from before its ping");
        assert!(t.pong(a, 100, 300));
        assert_eq!(t.latency_ns(a), 100, "half the round trip");
        assert!(!t.pong(a, 100, 400), "a repeated pong");
        assert!(t.ping_due(a, now + every, every, 1000));
        assert!(t.pong(a, 1000, 1000 + 1800));
        assert_eq!(t.latency_ns(a), 100 - 100 / 8 + 900 / 8, "smoothed");
    }

    #[test]
    fn stale_handles_are_refused() {
        let mut t = ConnTable::default();
        let a = t.incoming(0);
        assert!(t.is_live(a));
        assert!(t.closed(a));
        assert!(!t.is_live(a));
        assert!(!t.closed(a), "a second close is a no-op");
        let b = t.incoming(0);
        assert_ne!(a, b, "the slot is reused under a new generation");
        assert!(!t.is_live(a));
        assert!(t.is_live(b));
        assert_eq!(t.live(), 1);
        assert!(!t.is_live(ConnId(0)));
    }

    #[test]
    fn streams_follow_the_state_machine() {
        let mut t = ConnTable::default();
        let c = t.connect_issued(3, "h", "k");
        assert_eq!(t.peer_key(c), Some("k"));
        assert_eq!(
            t.send_checked(c, SendKind::Whole),
            Err(Refusal::NotOpen(ConnState::Connecting))
        );
        t.connect_finished(c, true);
        assert_eq!(t.send_checked(c, SendKind::Whole), Ok(3));
        assert_eq!(
            t.send_checked(c, SendKind::Fragment),
            Err(Refusal::StreamClosed)
        );
        t.stream_begin(c).unwrap();
        assert_eq!(t.stream_begin(c), Err(Refusal::StreamBusy));
        assert_eq!(t.send_checked(c, SendKind::Whole), Err(Refusal::StreamBusy));
        assert_eq!(t.send_checked(c, SendKind::Fragment), Ok(3));
        assert_eq!(t.send_checked(c, SendKind::End), Ok(3));
        t.send_undone(c, SendKind::End);
        assert_eq!(t.send_checked(c, SendKind::End), Ok(3));
        assert_eq!(t.disconnect_issued(c), Ok(3));
        assert_eq!(
            t.disconnect_issued(c),
            Err(Refusal::NotOpen(ConnState::Closing))
        );
        assert!(t.closed(c));
        assert_eq!(t.disconnect_issued(c), Err(Refusal::Unknown));
        let r = t.connect_issued(0, "h", "k");
        t.connect_finished(r, false);
        assert!(!t.is_live(r), "a refused connect is released");
    }
}
