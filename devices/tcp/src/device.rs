//! The TCP device: connection state machine on top of `proto` (decisions) and `io` (bytes).

use std::ffi::CStr;
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::proto::PayloadAlloc;
use mio::{Events, Interest, Poll, Token};
use rustix::io::Errno;
use vmi_device::Status;
use vmi_device::abi::{recv_flags, wire_flags};
use vmi_device::deliver;
use vmi_device::held::HeldBuffers;
use vmi_device::lent_stream::{LentStreams, Rest, StreamBuffer, StreamLoan, StreamRest};
use vmi_device::signature::Signature;
use vmi_device::{
    Capabilities, CompletingIrb, Config, ConnMap, Device, DeviceKind, Disposition, Host, Irb, Op,
};

use crate::config::{PARAMS, STRIPE_PART_MIN, TcpConfig};
use crate::io::{Sending, connect, listen, tune_local, write_gather};
use crate::proto::stripe::{part_len, part_range};
use crate::proto::{Connection, Dial, Local, Output, State, probe_ports, split_host_port};
use crate::sendq::{self, MAX_IOV, SendQueue, StripedSends, Tx};
use crate::wire::{
    AnswerRepr, AnswerStatus, FrameRepr, HelloRepr, LANE_ANSWER_LEN, StripeRepr, TOKEN_LEN,
    emit_lane_answer, emit_lane_hello, emit_lane_offer, emit_piece, lane_answer_attached,
};

const LISTENER: Token = Token(usize::MAX);
/// A lane's token carries its number (1 to 3) in the top bits above its connection's index.
const LANE_SHIFT: u32 = usize::BITS - 4;

/// The epoll token of lane `lane` (1-based; 0 is the connection's own socket) of `idx`.
fn lane_token(idx: usize, lane: usize) -> Token {
    Token(idx | (lane << LANE_SHIFT))
}

/// A token's connection index and lane (0: the connection's own socket).
fn split_token(t: Token) -> (usize, usize) {
    (t.0 & ((1 << LANE_SHIFT) - 1), t.0 >> LANE_SHIFT)
}

/// An extra socket of a connection, carrying parts of large fragments (`proto::stripe`).
struct Lane {
    sock: mio::net::TcpStream,
    /// Its lane hello or answer, then the parts queued on it.
    tx: SendQueue,
    /// The TCP connect finished (at once for a lane the listener attached).
    connected: bool,
    /// Connector: the listener's lane answer as it arrives; `None` once it said "attached"
    /// (and always on the listener's side).
    answer: Option<([u8; LANE_ANSWER_LEN], usize)>,
    /// The socket's receive low-water mark as last set: 1 except while a large part of a
    /// striped frame streams in on it (`TcpDevice::sync_lowat`).
    lowat: usize,
}

impl Lane {
    /// This side may send parts on it.
    fn ready(&self) -> bool {
        self.connected && self.answer.is_none()
    }
}

/// What a read of a connector's lane answer came to.
enum LaneAnswer {
    /// The listener attached the lane.
    Attached,
    /// Not all of it is here yet.
    Wait,
    /// The lane is gone (refused, closed or failed before its answer).
    Gone,
}
/// Up to this many connections, a busy poll reads the sockets directly instead of asking
/// epoll first.
const DIRECT_MAX_CONNS: usize = 4;
/// A busy poll that reads directly still asks epoll once in this many polls.
const DIRECT_EPOLL_EVERY: u64 = 16;
/// While the sockets are lent, the host calls this device's poll (which then asks epoll) once
/// in this many of its polls, unless the device has work sooner (a multiple of
/// `DIRECT_EPOLL_EVERY`): for accepts, and the liveness ticks.
const LENT_POLL_EVERY: u64 = 64;
const STAGING: usize = 64 * 1024;

/// A connect in progress: the dial (which ports are left) and the connect IRB.
struct Attempt {
    irb: Option<Irb>,
    dial: Dial,
    hello: Vec<u8>,
}

struct Conn {
    sock: mio::net::TcpStream,
    vmi: u64,
    proto: Connection,
    tx: SendQueue,
    /// True while counted in `TcpDevice::timed` (the protocol has a deadline).
    timed: bool,
    attempt: Option<Attempt>,
    /// The poll turn in which a send was last written at once (see `submit`).
    last_write_turn: u64,
    /// Listed in `TcpDevice::dirty` (sends queued for the next poll's flush).
    dirty: bool,
    /// Listed in `TcpDevice::again` (waiting for the budget to be read again).
    waiting: bool,
    /// Bytes read but not yet fed to the protocol, because the poll's budget or the host's
    /// receive IRBs ran out; they go first on the next turn, before the socket is read again.
    parked: Vec<u8>,
    parked_off: usize,
    /// A local disconnect written out, completed when the peer closes too.
    closing: Option<Irb>,
    /// The peer closed its sending side while the connection was open.
    peer_done: bool,
    /// What the host's read of this socket left to this device while it was lent.
    rest: StreamRest,
    /// Its lanes, lane 1 first (see `proto::stripe`).
    lanes: Vec<Lane>,
    /// The socket's receive low-water mark as last set: 1 (the kernel's own) except while a
    /// large payload streams in (`TcpDevice::sync_lowat`).
    lowat: usize,
    /// The lanes offered (at most) and their token: the listener's offer, or the one the
    /// connector took.
    lane_offer: Option<(u8, [u8; TOKEN_LEN])>,
}

impl Conn {
    /// A connection on `sock` (vmi handle 0 until the application knows it).
    fn new(
        sock: mio::net::TcpStream,
        vmi: u64,
        proto: Connection,
        attempt: Option<Attempt>,
    ) -> Conn {
        Conn {
            sock,
            vmi,
            proto,
            tx: SendQueue::default(),
            timed: false,
            attempt,
            last_write_turn: 0,
            dirty: false,
            waiting: false,
            parked: Vec::new(),
            parked_off: 0,
            closing: None,
            peer_done: false,
            rest: StreamRest::default(),
            lanes: Vec::new(),
            lowat: 1,
            lane_offer: None,
        }
    }

    /// Nothing waits to be written on its lanes, and none waits for its answer.
    fn lanes_idle(&self) -> bool {
        self.lanes
            .iter()
            .all(|l| l.tx.is_empty() && l.answer.is_none())
    }

    /// A receive low-water mark is raised on its socket or one of its lanes': a large
    /// payload or striped part streams in, read when epoll reports enough of it there.
    fn marked(&self) -> bool {
        self.lowat > 1 || self.lanes.iter().any(|l| l.lowat > 1)
    }
}

/// Per-IRB frame: the received payload a RECV IRB points at (index + 1; 0 for none).
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct TcpFrame {
    held: u32,
}

/// The TCP transport.
pub struct TcpDevice {
    host: Host,
    cfg: TcpConfig,
    /// This process's key and signature, as the protocol checks hellos against them.
    local: Local,
    signature_text: String,
    poll: Poll,
    events: Events,
    ready: Vec<(Token, bool, bool, bool)>,
    listener: Option<mio::net::TcpListener>,
    listen_port: u16,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    by_vmi: ConnMap<usize>,
    again: Vec<usize>,
    /// `again`'s kept twin (see `read_again`).
    again_spare: Vec<usize>,
    /// A written byte entry's buffer, kept for the next (see `SendQueue::credit`).
    tx_spare: Vec<u8>,
    /// Bytes queued as bytes on all connections together (see `sendq::QUEUED_TOTAL_MAX`).
    queued_total: usize,
    /// The connection a direct poll reads first (see `poll`).
    rx_first: usize,
    /// Connections with sends queued since the last flush; `poll` writes them first.
    dirty: Vec<usize>,
    /// Counts polls: a connection written at once in this turn queues further sends.
    turn: u64,
    /// IRBs this poll may still hand up: the host's budget, capped at its free receive IRBs.
    budget_left: usize,
    /// Bytes of the fragments handed up as IRBs in this poll (see `may_deliver`).
    held_bytes: usize,
    timed: usize,
    pool: HeldBuffers,
    staging: StreamBuffer,
    /// The listener's backlog may hold connections that no event will announce again.
    accept_retry: bool,
    /// Connections whose peer finished sending, to close at the next poll.
    finishing: Vec<usize>,
    /// Polls since the clock was last read for liveness ticks.
    tick_polls: u32,
    /// The next liveness tick.
    next_tick: Instant,
    /// `wait_fd` was called (a sleep may follow): read the clock at the next poll.
    waited: std::cell::Cell<bool>,
    /// `wait_fd` was called: the next poll asks epoll (edges may have been slept through).
    epoll_due: std::cell::Cell<bool>,
    /// See [`spare_fd`].
    spare: Option<std::fs::File>,
    /// The key's abstract socket, reserving the key on this host while this process runs.
    _key_lock: Option<std::sync::Arc<std::os::unix::net::UnixListener>>,
    /// Messages written by `send_inline` with no IRB (the `inline_sends` attribute).
    inline_sends: u64,
    /// Fragments the host took with no IRB (`direct_receives`).
    direct_receives: u64,
    /// The sockets lent to the host (ABI 1.8), and the connections listed, in order.
    lent: LentStreams,
    lent_conns: Vec<usize>,
    /// The table or a connection's handle changed since the sockets were last listed.
    lent_stale: bool,
    /// Flushes that stopped at `write_turn` with more queued (the `write_turns` attribute).
    write_turns: u64,
    /// Striped sends being written.
    striped: StripedSends,
    /// Listener: the connections whose lanes may still join, by token.
    lane_tokens: std::collections::HashMap<[u8; TOKEN_LEN], usize>,
    /// Fragments sent striped over lanes (the `striped_sends` attribute).
    striped_sends: u64,
    /// Payloads and striped parts read under a receive low-water mark (the
    /// `marked_payloads` attribute).
    marked_payloads: u64,
    /// Sockets given `local_congestion` (the `local_congestion_sockets` attribute).
    local_tuned: u64,
}

/// One `read(2)` of a socket. Through rustix, not `std::io::Read`: a poll that finds the
/// socket empty (every idle busy poll) gets a plain `Errno` back, where std builds, decodes
/// and drops an `io::Error` (about 30 instructions, and the C library's wrapper).
#[inline]
fn read_socket(sock: &mio::net::TcpStream, buf: &mut [u8]) -> Result<usize, Errno> {
    rustix::io::read(sock, buf)
}

/// A payload gets a receive low-water mark only when it is at least this many marks long
/// (256 KiB at the default `recv_lowat`): raising and lowering the mark are two system calls
/// a payload, and the epoll a marked socket waits for one more a poll, which smaller
/// payloads do not repay (measured, streaming 16 and 64 KiB fragments: 10-20 % slower with
/// a mark on every payload).
const LOWAT_PAYLOAD_MARKS: usize = 2;

/// `setsockopt(SO_RCVLOWAT)`: neither rustix nor socket2 has it.
#[allow(unsafe_code)]
fn set_recv_lowat(sock: &mio::net::TcpStream, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a live socket descriptor, and a pointer to an `int` with its size, which the
    // kernel only reads during the call.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The receive low-water mark for a socket with `left` bytes of a large payload or part still
/// to come (`Decoder::streaming_left`): `cap` or `left`, whichever is less; 1 for none.
#[inline]
fn mark_for(left: Option<usize>, cap: usize) -> usize {
    left.map_or(1, |left| left.min(cap))
}

/// Sets `sock`'s receive low-water mark to `want`, recording it in `lowat`; returns 1 when
/// that raised it from 1 (a payload or part now read under a mark), else 0.
#[cold]
#[inline(never)]
fn set_mark(sock: &mio::net::TcpStream, lowat: &mut usize, want: usize) -> u64 {
    match set_recv_lowat(sock, want) {
        Ok(()) => {
            let raised = u64::from(*lowat == 1);
            *lowat = want;
            raised
        }
        Err(e) => {
            // A live TCP socket does not refuse it. Should it, the mark stays as it was: not
            // raised (reads at every arrival, as with recv_lowat = 1), or not yet lowered (the
            // next read, or the liveness tick's, tries again).
            log::warn!("tcp: cannot set SO_RCVLOWAT to {want}: {e}");
            0
        }
    }
}

/// Gives a connection's socket congestion control `name` when both its ends are on this
/// host (`io::tune_local`; empty: nothing to set): 1 when it did, else 0. A refusal (the name
/// was checked at start, so rare) leaves the system's and is logged.
fn tuned(sock: &mio::net::TcpStream, name: &str) -> u64 {
    if name.is_empty() {
        return 0;
    }
    match tune_local(sock, name) {
        Ok(set) => u64::from(set),
        Err(e) => {
            log::warn!(
                "tcp: cannot set congestion control '{name}' on a same-host connection: {e}"
            );
            0
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// EMFILE (this process) or ENFILE (the system) is out of descriptors.
fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24) | Some(23))
}

/// A descriptor kept in reserve, released to accept (and refuse) one connection when the
/// process runs out of descriptors.
fn spare_fd() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// Hands the whole small data frames at the start of `input` straight to the host (in a
/// direct poll, while the budget lasts and `may_hold`: the poll's held bytes are under their
/// cap): no payload buffer, no decoder state, no clock. Counts each in `budget_left` (down)
/// and `offered` (up). Returns the bytes they took; the rest is for
/// [`TcpDevice::feed_from`].
#[inline(always)]
fn offer_whole_frames(
    c: &mut Conn,
    input: &[u8],
    budget_left: &mut usize,
    may_hold: bool,
    offered: &mut u64,
) -> usize {
    let mut off = 0;
    if !may_hold || !deliver::active() {
        return off;
    }
    while off < input.len() && *budget_left > 0 {
        let Some((end, filter_flags, payload, used)) = c.proto.whole_frame(&input[off..]) else {
            break;
        };
        if !deliver::offer(c.vmi, recv_flags(end, filter_flags), payload) {
            break;
        }
        *offered += 1;
        *budget_left -= 1;
        off += used;
    }
    off
}

impl TcpDevice {
    /// Closes the connections whose peer finished sending, once what was sent since is
    /// written (see `poll`).
    #[inline(never)]
    fn finish_closes(&mut self) {
        for idx in std::mem::take(&mut self.finishing) {
            if let Some(c) = self.conns[idx].as_mut().filter(|c| c.peer_done) {
                c.tx.push_close(None);
                self.flush(idx);
            }
        }
    }

    /// The port this device listens on (0 when not listening).
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    fn insert(&mut self, mut conn: Conn) -> io::Result<usize> {
        self.lent_stale = true;
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        self.poll.registry().register(
            &mut conn.sock,
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        if conn.vmi != 0 {
            self.by_vmi.insert(conn.vmi, idx);
        }
        self.conns[idx] = Some(conn);
        self.settle(idx);
        Ok(idx)
    }

    /// Brings the device's view of a connection in line with its protocol state: handshake
    /// bytes to write, a close after them, whether its deadline is counted.
    fn settle(&mut self, idx: usize) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        let queued = c.tx.len();
        while let Some(data) = c.proto.poll_transmit() {
            self.queued_total += c.tx.queue_owned(data);
        }
        if c.proto.take_close() {
            c.tx.push_close(None);
        }
        // What the protocol queued (a handshake message, a heartbeat, a close) is written at
        // the next poll at the latest, whoever settled it: no send marks the connection for
        // it, and an idle socket raises no new writable edge.
        if c.tx.len() > queued {
            mark_dirty(&mut self.dirty, &self.lent, c, idx);
        }
        let timed = c.proto.deadline().is_some();
        if timed != c.timed {
            c.timed = timed;
            if timed {
                self.timed += 1;
            } else {
                self.timed -= 1;
            }
        }
    }

    /// Removes a connection without telling anyone; returns it for the caller to settle.
    fn take(&mut self, idx: usize) -> Option<Conn> {
        // Its socket closes: the host reads no socket until the next poll lists them again.
        self.lent.set_busy();
        self.lent_stale = true;
        let mut c = self.conns.get_mut(idx)?.take()?;
        self.queued_total -= c.tx.bytes();
        let _ = self.poll.registry().deregister(&mut c.sock);
        for l in &mut c.lanes {
            let _ = self.poll.registry().deregister(&mut l.sock);
        }
        if let Some((_, token)) = c.lane_offer
            && self.lane_tokens.get(&token) == Some(&idx)
        {
            self.lane_tokens.remove(&token);
        }
        if c.timed {
            self.timed -= 1;
        }
        if c.vmi != 0 && self.by_vmi.get(&c.vmi) == Some(&idx) {
            self.by_vmi.remove(&c.vmi);
        }
        self.free.push(idx);
        Some(c)
    }

    /// Carries out what the protocol decided.
    fn apply(&mut self, idx: usize, out: Output) {
        match out {
            Output::Request { from_key, data } => self.on_request(idx, from_key, data),
            Output::Accepted { reply } => {
                let Some(c) = self.conns[idx].as_mut() else {
                    return;
                };
                if let Some(mut a) = c.attempt.take() {
                    log::debug!("tcp: connected to '{}' at {}", a.dial.key(), c.proto.peer());
                    if let Some(mut irb) = a.irb.take() {
                        irb.clear_segments();
                        if irb.attach(&reply).is_err() {
                            log::error!("tcp: could not attach reply data");
                        }
                        irb.complete(Status::Ok);
                    }
                }
                self.settle(idx);
                self.flush(idx);
            }
            Output::Refused {
                status,
                detail,
                reply,
            } => {
                if let Some(mut c) = self.take(idx)
                    && let Some(mut irb) = c.attempt.take().and_then(|mut a| a.irb.take())
                {
                    irb.clear_segments();
                    if irb.attach(&reply).is_err() {
                        log::error!("tcp: could not attach reply data");
                    }
                    irb.set_detail(&detail);
                    irb.complete(status);
                }
            }
            Output::TryNext {
                why,
                refused,
                wrong_key,
            } => self.next_attempt(idx, &why, refused, wrong_key),
            Output::Frame {
                end,
                filter_flags,
                payload,
                at,
            } => self.deliver(idx, end, filter_flags, payload, at),
            Output::Failed {
                status: Status::Ok,
                detail,
                tell: true,
            } if self.conns[idx].as_ref().is_some_and(|c| c.proto.is_open()) => {
                // The peer finished sending, cleanly: the application hears of it, and this
                // side's host may still send what the fragments before the close call for (a
                // notice that a message failed). The host hears of those fragments first and
                // may take more than one poll for them (it delivers a bounded number of
                // outcomes per poll), so the connection is closed once the host has released
                // this report (`peer_close_released`), which comes after them; then at the
                // next poll.
                if let Some(c) = self.conns[idx].as_mut() {
                    c.peer_done = true;
                    c.proto.peer_finished();
                    let vmi = c.vmi;
                    self.budget_left = self.budget_left.saturating_sub(1);
                    if !self.host.report_peer_disconnect(vmi, Status::Ok, &detail) {
                        self.finishing.push(idx);
                    }
                }
            }
            Output::Failed {
                status,
                detail,
                tell,
            } => self.fail(idx, status, &detail, tell),
            Output::Dropped { why } => {
                log::warn!("tcp: dropped connection: {why}");
                self.take(idx);
            }
            Output::Authenticated => {}
            Output::Lane { lane, token } => self.attach_lane(idx, lane, token),
            Output::LaneOffer { lanes, token } => {
                let Some(c) = self.conns[idx].as_mut() else {
                    return;
                };
                if self.cfg.lanes < 2 || c.lane_offer.is_some() {
                    let detail = format!(
                        "protocol violation by {}: lanes offered unasked or twice",
                        c.proto.peer()
                    );
                    return self.fail(idx, Status::Protocol, &detail, true);
                }
                c.lane_offer = Some((lanes.min(self.cfg.lanes as u8 - 1), token));
                self.open_lane(idx);
            }
            Output::Closed => {
                if let Some(mut c) = self.take(idx)
                    && let Some(irb) = c.closing.take()
                {
                    irb.complete(Status::Ok);
                }
            }
        }
    }

    /// Ends a connection: pending sends fail, the application hears why when `tell`.
    fn fail(&mut self, idx: usize, status: Status, detail: &str, tell: bool) {
        self.end(idx, status, detail, tell, None);
    }

    /// Ends connection `idx`. Its held IRBs complete with `aborted` when the application
    /// aborted it (`Op::Abort`: sends and the close alike), else sends with
    /// `ConnectionLost` and a close with success.
    fn end(
        &mut self,
        idx: usize,
        status: Status,
        detail: &str,
        tell: bool,
        aborted: Option<Status>,
    ) {
        let Some(mut c) = self.take(idx) else { return };
        if aborted.is_some() {
            // A reset, not a FIN: this transport's orderly close is a FIN at a frame
            // boundary, so a FIN would let the peer take an aborted stream for a complete
            // one. The reset makes it see the connection lost (what the kernel still held
            // for it is dropped, as when a process dies; a frame cut short is never
            // delivered). The reset goes when the socket closes, at the end of this call.
            let _ = socket2::SockRef::from(&c.sock).set_linger(Some(Duration::ZERO));
        } else {
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
        }
        let close_status = aborted.unwrap_or(Status::Ok);
        let mut local_close = false;
        for l in &mut c.lanes {
            if aborted.is_some() {
                let _ = socket2::SockRef::from(&l.sock).set_linger(Some(Duration::ZERO));
            } else {
                let _ = l.sock.shutdown(std::net::Shutdown::Both);
            }
            for tx in l.tx.drain() {
                if let Tx::Part { send, .. } = tx
                    && let Some(mut irb) = self.striped.fail(send)
                {
                    irb.set_detail(detail);
                    irb.complete(aborted.unwrap_or(Status::ConnectionLost));
                }
            }
        }
        for tx in c.tx.drain() {
            match tx {
                Tx::Frame { mut irb, .. } => {
                    irb.set_detail(detail);
                    irb.complete(aborted.unwrap_or(Status::ConnectionLost));
                }
                Tx::Part { send, .. } => {
                    if let Some(mut irb) = self.striped.fail(send) {
                        irb.set_detail(detail);
                        irb.complete(aborted.unwrap_or(Status::ConnectionLost));
                    }
                }
                Tx::Close { irb: Some(mut irb) } => {
                    local_close = true;
                    if aborted.is_some() {
                        irb.set_detail(detail);
                    }
                    irb.complete(close_status);
                }
                _ => {}
            }
        }
        // The close after the sends it followed: the application hears of them first.
        if let Some(mut irb) = c.closing.take() {
            local_close = true;
            if aborted.is_some() {
                irb.set_detail(detail);
            }
            irb.complete(close_status);
        }
        if let Some(mut a) = c.attempt.take() {
            if let Some(mut irb) = a.irb.take() {
                irb.set_detail(detail);
                irb.complete(status);
            }
            return;
        }
        if tell && c.vmi != 0 && !local_close {
            if status == Status::Ok {
                log::debug!(
                    "tcp: peer {} closed connection {:#x}",
                    c.proto.peer(),
                    c.vmi
                );
            } else {
                log::info!(
                    "tcp: connection {:#x} to {} ended: {detail}",
                    c.vmi,
                    c.proto.peer()
                );
            }
            self.budget_left = self.budget_left.saturating_sub(1);
            self.host.report_peer_disconnect(c.vmi, status, detail);
        }
    }

    /// Opens a socket to the next address of a dial, or completes the connect when the dial
    /// is over.
    fn start_attempt(&mut self, mut attempt: Attempt, vmi: u64) {
        loop {
            let now = Instant::now();
            let addr = match attempt.dial.next_addr(now) {
                Ok(a) => a,
                Err((status, detail)) => {
                    if let Some(mut irb) = attempt.irb.take() {
                        irb.set_detail(&detail);
                        irb.complete(status);
                    }
                    return;
                }
            };
            match connect(addr, self.cfg.nodelay) {
                Ok(sock) => {
                    let deadline = (now + self.cfg.handshake_timeout).min(attempt.dial.give_up());
                    let proto = Connection::connector(
                        &addr.to_string(),
                        attempt.dial.key(),
                        self.cfg.max_fragment,
                        self.cfg.max_connect_data,
                        deadline,
                        self.cfg.handshake_timeout,
                    )
                    .with_peer_timeout(self.cfg.peer_timeout);
                    let conn = Conn::new(sock, vmi, proto, Some(attempt));
                    if let Err(e) = self.insert(conn) {
                        log::error!("tcp: cannot register a socket: {e}");
                    }
                    return;
                }
                Err(e) => attempt
                    .dial
                    .failed(&addr.to_string(), &e.to_string(), false, false),
            }
        }
    }

    /// The current address failed; try the next one.
    fn next_attempt(&mut self, idx: usize, why: &str, refused: bool, wrong_key: bool) {
        let Some(mut c) = self.take(idx) else { return };
        let Some(mut a) = c.attempt.take() else {
            return;
        };
        log::debug!("tcp: connect to {} failed: {why}", c.proto.peer());
        a.dial.failed(c.proto.peer(), why, refused, wrong_key);
        self.start_attempt(a, c.vmi);
    }

    fn on_writable(&mut self, idx: usize) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        if c.proto.state() == State::Connecting {
            let err = match c.sock.take_error() {
                Ok(Some(e)) => Some(e),
                Ok(None) => c.sock.peer_addr().err(),
                Err(e) => Some(e),
            };
            match err {
                Some(e) if e.kind() == io::ErrorKind::NotConnected => return, // not finished yet
                Some(e) => {
                    let refused = e.kind() == io::ErrorKind::ConnectionRefused;
                    let out = c.proto.read_error(&e.to_string(), refused);
                    return self.apply(idx, out);
                }
                None => {
                    self.local_tuned += tuned(&c.sock, &self.cfg.local_congestion);
                    let hello = c
                        .attempt
                        .as_ref()
                        .map(|a| a.hello.clone())
                        .unwrap_or_default();
                    c.proto.connected(hello);
                    self.settle(idx);
                }
            }
        }
        self.flush(idx);
    }

    /// Writes queued bytes until the socket would block, or `write_turn` bytes went in this
    /// call (the entry that reaches it whole): then the connection stays listed (`dirty`) and
    /// the next poll writes on. A sender that wrote its whole backlog in one go held the
    /// socket for all of it, and the acknowledgements that move the data on queued behind it
    /// on this core; a turn's pause lets them run (measured on loopback, 1 MiB streaming:
    /// about 5 to 8 GB/s).
    fn flush(&mut self, idx: usize) {
        self.flush_up_to(idx, self.cfg.write_turn);
    }

    /// [`TcpDevice::flush`] with a limit of `limit` bytes (`usize::MAX`: none).
    fn flush_up_to(&mut self, idx: usize, limit: usize) {
        let mut left = limit;
        loop {
            let Some(c) = self.conns[idx].as_mut() else {
                return;
            };
            if c.tx.is_empty() {
                return self.flush_lanes(idx, limit);
            }
            if c.tx.close_is_next() && !c.lanes.iter().all(|l| l.tx.is_empty()) {
                // The parts on the lanes belong to frames ahead of the close: they go first
                // (a lane's writable event flushes again).
                self.flush_lanes(idx, usize::MAX);
                if self.conns[idx]
                    .as_ref()
                    .is_none_or(|c| !c.lanes.iter().all(|l| l.tx.is_empty()))
                {
                    return;
                }
                continue;
            }
            if let Some(irb) = c.tx.take_close() {
                // Everything ahead of the close is written.
                let _ = c.sock.flush();
                let _ = c.sock.shutdown(std::net::Shutdown::Write);
                for l in &c.lanes {
                    let _ = l.sock.shutdown(std::net::Shutdown::Write);
                }
                match irb {
                    // A local disconnect: read on until the peer closes too (its last data
                    // and notices arrive), then complete.
                    Some(irb) if !c.peer_done => c.closing = Some(irb),
                    irb => {
                        let mut conn = self.take(idx);
                        if let Some(irb) = irb {
                            irb.complete(Status::Ok);
                        }
                        if let Some(conn) = conn.as_mut() {
                            let _ = conn.sock.shutdown(std::net::Shutdown::Both);
                        }
                    }
                }
                return;
            }
            if left == 0 {
                // This poll's turn is spent: the next poll writes on.
                self.write_turns += 1;
                mark_dirty(&mut self.dirty, &self.lent, c, idx);
                return self.flush_lanes(idx, limit);
            }
            // Everything queued ahead of a close goes out in one writev (up to MAX_IOV
            // pieces and about `left` bytes): a backlog of small sends costs one system
            // call, not one each.
            match write_queued(
                &c.sock,
                &mut c.tx,
                left,
                &mut self.striped,
                &mut self.tx_spare,
            ) {
                // Nothing taken (no piece to write, or a socket that took none): wait for
                // the next writable event rather than spin.
                Ok((0, _)) => return self.flush_lanes(idx, limit),
                Ok((w, from_bytes)) => {
                    self.queued_total -= from_bytes;
                    left -= w.min(left);
                }
                Err(e) if would_block(&e) => return self.flush_lanes(idx, limit),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let out = c.proto.write_error(&e.to_string());
                    return self.apply(idx, out);
                }
            }
        }
    }

    /// Writes what is queued on each lane of connection `idx` (as `flush_up_to` does on the
    /// connection's own socket, `limit` bytes per lane at most). A connection with no lanes
    /// (every one unless `lanes` > 1) costs a look at the list's length.
    #[inline(always)]
    fn flush_lanes(&mut self, idx: usize, limit: usize) {
        if self.conns[idx]
            .as_ref()
            .is_some_and(|c| !c.lanes.is_empty())
        {
            self.flush_lanes_of(idx, limit);
        }
    }

    /// [`TcpDevice::flush_lanes`] of a connection that has lanes.
    #[inline(never)]
    fn flush_lanes_of(&mut self, idx: usize, limit: usize) {
        let n = self.conns[idx].as_ref().map_or(0, |c| c.lanes.len());
        for li in 0..n {
            let mut left = limit;
            loop {
                let Some(c) = self.conns[idx].as_mut() else {
                    return;
                };
                let Some(l) = c.lanes.get_mut(li) else {
                    return;
                };
                if !l.connected || l.tx.is_empty() {
                    break;
                }
                if left == 0 {
                    self.write_turns += 1;
                    mark_dirty(&mut self.dirty, &self.lent, c, idx);
                    break;
                }
                match write_queued(
                    &l.sock,
                    &mut l.tx,
                    left,
                    &mut self.striped,
                    &mut self.tx_spare,
                ) {
                    Ok((0, _)) => break,
                    Ok((w, _)) => {
                        c.proto.note_sent();
                        left -= w.min(left);
                    }
                    Err(e) if would_block(&e) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let detail =
                            format!("write to lane {} of {} failed: {e}", li + 1, c.proto.peer());
                        return self.fail(idx, Status::ConnectionLost, &detail, true);
                    }
                }
            }
        }
    }

    /// Connector: opens the next lane the listener offered (one at a time, in order: lane
    /// `n + 1` once lane `n` is attached), to the address the connection reached.
    fn open_lane(&mut self, idx: usize) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        let Some((offered, token)) = c.lane_offer else {
            return;
        };
        let lane = c.lanes.len() + 1;
        if lane > offered as usize || !c.proto.is_open() {
            return;
        }
        let addr = match c.sock.peer_addr() {
            Ok(a) => a,
            Err(e) => return log::warn!("tcp: no lane for {}: {e}", c.proto.peer()),
        };
        let mut sock = match connect(addr, self.cfg.nodelay) {
            Ok(s) => s,
            Err(e) => return log::warn!("tcp: cannot open lane {lane} to {addr}: {e}"),
        };
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            lane_token(idx, lane),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return log::warn!("tcp: cannot register lane {lane} to {addr}: {e}");
        }
        let mut tx = SendQueue::default();
        tx.queue_owned(emit_lane_hello(lane as u8, &token).to_vec());
        c.lanes.push(Lane {
            sock,
            tx,
            connected: false,
            answer: Some(([0; LANE_ANSWER_LEN], 0)),
            lowat: 1,
        });
        c.proto.decoder().set_lanes(c.lanes.len());
        log::debug!("tcp: opening lane {lane} to {addr}");
    }

    /// Connector: drops its last lane, which the listener never attached (refused, or its
    /// connect or answer failed); the connection goes on with the lanes before it.
    fn drop_lane(&mut self, idx: usize, why: &str) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        if let Some(mut l) = c.lanes.pop() {
            let _ = self.poll.registry().deregister(&mut l.sock);
            log::warn!(
                "tcp: lane {} to {} not attached: {why}; the connection goes on with {} lane(s)",
                c.lanes.len() + 1,
                c.proto.peer(),
                c.lanes.len()
            );
        }
        c.proto.decoder().set_lanes(c.lanes.len());
        // No more lanes are opened for this connection.
        c.lane_offer = None;
    }

    /// Listener: the socket of handshake slot `idx` asks to join the connection of `token`
    /// as lane `lane`. It must come from the connection's peer address, for a connection
    /// that offered lanes, as its next lane; else it is refused and closed.
    fn attach_lane(&mut self, idx: usize, lane: u8, token: [u8; TOKEN_LEN]) {
        let Some(h) = self.take(idx) else { return };
        let from = h.sock.peer_addr().ok().map(|a| a.ip());
        let target = self.lane_tokens.get(&token).copied();
        let fits = target
            .and_then(|t| self.conns.get(t)?.as_ref())
            .is_some_and(|c| {
                c.proto.is_open()
                    && c.lane_offer
                        .is_some_and(|(n, _)| lane <= n && lane as usize == c.lanes.len() + 1)
                    && c.sock.peer_addr().ok().map(|a| a.ip()) == from
            });
        let (Some(t), true) = (target, fits) else {
            log::warn!(
                "tcp: refused a lane from {}: no connection offered lane {lane} with its token from that address",
                h.proto.peer()
            );
            let _ = Sending(&h.sock).write(&emit_lane_answer(false));
            return;
        };
        let mut sock = h.sock;
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            lane_token(t, lane as usize),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return log::warn!("tcp: cannot register a lane: {e}");
        }
        let Some(c) = self.conns[t].as_mut() else {
            return;
        };
        let mut tx = SendQueue::default();
        tx.queue_owned(emit_lane_answer(true).to_vec());
        c.lanes.push(Lane {
            sock,
            tx,
            connected: true,
            answer: None,
            lowat: 1,
        });
        c.proto.decoder().set_lanes(c.lanes.len());
        if c.lane_offer
            .is_some_and(|(n, _)| c.lanes.len() == n as usize)
        {
            self.lane_tokens.remove(&token);
        }
        log::debug!("tcp: lane {lane} of {} attached", c.proto.peer());
        self.lent_stale = true;
        self.flush(t);
    }

    /// A lane's socket is writable: its connect finished (or failed), or it takes more.
    fn on_lane_writable(&mut self, idx: usize, lane: usize) {
        let Some(l) = self.conns[idx]
            .as_mut()
            .and_then(|c| c.lanes.get_mut(lane - 1))
        else {
            return;
        };
        if !l.connected {
            let err = match l.sock.take_error() {
                Ok(Some(e)) => Some(e),
                Ok(None) => l.sock.peer_addr().err(),
                Err(e) => Some(e),
            };
            match err {
                Some(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Some(e) => return self.drop_lane(idx, &format!("connect failed: {e}")),
                None => {
                    l.connected = true;
                    self.local_tuned += tuned(&l.sock, &self.cfg.local_congestion);
                }
            }
        }
        self.flush(idx);
    }

    /// A lane's socket is readable: the connector's lane answer, or parts of the striped
    /// frame being read.
    fn on_lane_readable(&mut self, idx: usize, lane: usize) {
        if matches!(self.read_lane_answer(idx, lane), LaneAnswer::Gone) {
            return;
        }
        if self.conns[idx]
            .as_mut()
            .is_some_and(|c| c.proto.decoder().striped_sockets() > lane)
        {
            self.on_readable(idx, false);
        }
    }

    /// Connector: reads the listener's answer on lane `lane`, if it is still due. Attached:
    /// the lane takes parts, and the next lane opens.
    fn read_lane_answer(&mut self, idx: usize, lane: usize) -> LaneAnswer {
        let Some(l) = self.conns[idx]
            .as_mut()
            .and_then(|c| c.lanes.get_mut(lane - 1))
        else {
            return LaneAnswer::Gone;
        };
        let Some((buf, got)) = l.answer.as_mut() else {
            return LaneAnswer::Attached;
        };
        let why = loop {
            match read_socket(&l.sock, &mut buf[*got..]) {
                Ok(0) => break "closed before answering".to_string(),
                Ok(n) => {
                    *got += n;
                    if *got < LANE_ANSWER_LEN {
                        continue;
                    }
                    if !lane_answer_attached(buf) {
                        break "the listener refused it".to_string();
                    }
                    l.answer = None;
                    log::debug!("tcp: lane {lane} attached");
                    self.lent_stale = true;
                    self.open_lane(idx);
                    return LaneAnswer::Attached;
                }
                Err(Errno::AGAIN) => return LaneAnswer::Wait,
                Err(Errno::INTR) => {}
                Err(e) => break io::Error::from(e).to_string(),
            }
        };
        // Not attached, so the listener never sent a part on it: a striped frame that
        // names it is the peer's fault, and fails when it finds the lane gone.
        self.drop_lane(idx, &why);
        LaneAnswer::Gone
    }

    /// Reads the lanes' parts of the striped frame being read on connection `idx`, each until
    /// its part is in or its socket is empty; the frame goes up once whole.
    fn read_lanes(&mut self, idx: usize) {
        let sockets = match self.conns[idx].as_mut() {
            Some(c) => c.proto.decoder().striped_sockets(),
            None => return,
        };
        for lane in 1..sockets {
            loop {
                let Some(c) = self.conns[idx].as_mut() else {
                    return;
                };
                if c.proto.decoder().striped_sockets() == 0 {
                    return; // whole: delivered
                }
                if c.lanes.get(lane - 1).is_none() {
                    let detail = format!(
                        "protocol violation by {}: a striped fragment names lane {lane}, which it never attached",
                        c.proto.peer()
                    );
                    return self.fail(idx, Status::Protocol, &detail, true);
                }
                match self.read_lane_answer(idx, lane) {
                    LaneAnswer::Attached => {}
                    LaneAnswer::Wait => break,
                    LaneAnswer::Gone => continue,
                }
                let Some(c) = self.conns[idx].as_mut() else {
                    return;
                };
                let Conn { lanes, proto, .. } = c;
                let l = &lanes[lane - 1];
                let Some(target) = proto.decoder().lane_target(lane) else {
                    break;
                };
                match read_socket(&l.sock, target) {
                    Ok(0) => {
                        let detail = format!(
                            "lane {lane} of {} closed in the middle of a fragment",
                            proto.peer()
                        );
                        return self.fail(idx, Status::ConnectionLost, &detail, true);
                    }
                    Ok(n) => {
                        if let Some(out) = proto.lane_done(lane, n, &self.local, Instant::now()) {
                            self.apply(idx, out);
                        }
                    }
                    Err(Errno::AGAIN) => break,
                    Err(Errno::INTR) => {}
                    Err(e) => {
                        let detail = format!(
                            "lane {lane} of {} failed: {}",
                            proto.peer(),
                            io::Error::from(e)
                        );
                        return self.fail(idx, Status::ConnectionLost, &detail, true);
                    }
                }
            }
        }
    }

    /// Sends `irb` striped over the connection's socket and `sockets - 1` lanes (each part
    /// queued on its socket, the IRB completed when all are written).
    fn send_striped(&mut self, idx: usize, irb: Irb, sockets: usize) -> Disposition {
        let len = irb.data_len();
        let Some(part) = part_len(len, sockets) else {
            return Disposition::Complete(irb, Status::Invalid);
        };
        let header = StripeRepr {
            end: irb.is_end(),
            filter_flags: wire_flags(irb.flags()),
            sockets: sockets as u8,
            len: len as u32,
        }
        .emit();
        let send = self.striped.insert(irb, sockets as u8);
        let Some(c) = self.conns[idx].as_mut() else {
            if let Some(irb) = self.striped.fail(send) {
                irb.complete(Status::ConnectionLost);
            }
            return Disposition::Pending;
        };
        let r = part_range(len, part, 0);
        c.tx.push_part(send, header, r.start, r.end);
        for (i, l) in c.lanes.iter_mut().enumerate().take(sockets - 1) {
            let r = part_range(len, part, i + 1);
            l.tx.push_part(
                send,
                emit_piece(i as u8 + 1, r.len() as u32),
                r.start,
                r.end,
            );
        }
        self.striped_sends += 1;
        self.flush(idx);
        Disposition::Pending
    }

    /// Whether this poll may hand up another fragment: its credit (the budget, capped at the
    /// host's free receive IRBs when the poll began) is not spent, and the fragments handed
    /// up as IRBs hold less than `recv_poll_bytes`. Each holds a pooled buffer until the host
    /// has delivered it, so a poll that read 1 MiB fragments up to the IRB budget cycled
    /// megabytes of buffers through the cache; a small batch reuses warm ones (measured on 16
    /// cores: 1 MiB streaming about +30 %, 4.7 to 6.1 GB/s). When false, reading stops and
    /// the data waits in the socket (TCP's flow control then pushes back on the sender).
    fn may_deliver(&self) -> bool {
        self.budget_left > 0 && self.held_bytes < self.cfg.recv_poll_bytes
    }

    /// Reads the connections that waited for receive IRBs (`again`), in their turn; returns
    /// how many. When the budget runs out on one of them (or ran out earlier in this poll on
    /// `used_up_by`), the list is turned so that the ones after it come first at the next
    /// poll: a connection that keeps its socket full cannot starve the others.
    fn read_again(&mut self, mut used_up_by: Option<usize>) -> usize {
        // The list is swapped with a kept one: both keep their capacity.
        let spare = std::mem::take(&mut self.again_spare);
        let mut again = std::mem::replace(&mut self.again, spare);
        let n = again.len();
        for &idx in &again {
            if let Some(c) = self.conns[idx].as_mut() {
                c.waiting = false;
            }
            let could = self.may_deliver();
            self.on_readable(idx, true);
            if could && !self.may_deliver() && used_up_by.is_none() {
                used_up_by = Some(idx);
            }
        }
        again.clear();
        self.again_spare = again;
        if let Some(idx) = used_up_by
            && let Some(at) = self.again.iter().position(|&i| i == idx)
        {
            self.again.rotate_left(at + 1);
        }
        n
    }

    /// A busy poll's direct read of connection `idx`, if it is open and nothing of it is
    /// parked.
    ///
    /// The common cases take no call: an open connection between frames, with nothing parked
    /// and the budget not spent, is read here once, into the staging buffer. Finding nothing
    /// (the idle busy poll) returns at once; whole small frames go straight to the host
    /// (`offer_whole_frames`). A full buffer, an end of stream, an error and every other state
    /// go on in `on_readable`.
    #[inline(always)]
    fn read_direct(&mut self, idx: usize) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        if !c.proto.is_open() {
            return;
        }
        if !c.parked.is_empty() {
            // Bytes parked behind a striped frame's first part wait for its lanes: read them
            // (a frame in progress is never at a boundary, so the general read below would
            // come to them too, were it not for the parked bytes).
            if c.proto.decoder().striped_sockets() > 0 {
                if c.marked() {
                    // The lanes' parts stream in under marks: epoll says when (below).
                    self.epoll_due.set(true);
                } else {
                    self.on_readable(idx, false);
                }
            }
            return;
        }
        // `may_deliver`, spelled out: `c` borrows the table.
        let may_deliver = self.budget_left > 0 && self.held_bytes < self.cfg.recv_poll_bytes;
        if c.peer_done || !c.proto.at_boundary() || !may_deliver {
            if may_deliver && !c.peer_done && c.marked() {
                // A large payload (or striped part) streams in under a mark: its socket is
                // read when epoll says enough of it is there (`sync_lowat`), which the next
                // poll asks. A read here would take whatever arrived, a segment or two at a
                // time.
                self.epoll_due.set(true);
                return;
            }
            return self.on_readable(idx, false);
        }
        let n = match read_socket(&c.sock, &mut self.staging) {
            Err(Errno::AGAIN) => return,
            Ok(n) if n > 0 => n,
            other => return self.read_ended(idx, other),
        };
        let off = offer_whole_frames(
            c,
            &self.staging[..n],
            &mut self.budget_left,
            true,
            &mut self.direct_receives,
        );
        let full = n == self.staging.len();
        if off < n {
            let staging = std::mem::take(&mut self.staging);
            let go_on = self.feed_from(idx, &staging[..n], off);
            self.staging = staging;
            if !go_on {
                return;
            }
        }
        // A short read drained the socket (see `on_readable`); a full one may have left more.
        if full {
            self.on_readable(idx, false);
        }
    }

    /// A read of connection `idx` into the staging buffer returned no bytes: the end of the
    /// stream, or an error (`EINTR`: read again).
    #[cold]
    #[inline(never)]
    fn read_ended(&mut self, idx: usize, r: Result<usize, Errno>) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        let out = match r {
            Ok(0) => c.proto.eof(),
            Ok(_) | Err(Errno::INTR) | Err(Errno::AGAIN) => return self.on_readable(idx, false),
            Err(e) => {
                let refused = e == Errno::CONNREFUSED;
                c.proto.read_error(&io::Error::from(e).to_string(), refused)
            }
        };
        self.apply(idx, out);
    }

    /// Marks a connection to be read again at the next poll (once: its `waiting` flag says
    /// it is listed, so marking costs no search of the list).
    fn read_later(&mut self, idx: usize) {
        if let Some(c) = self.conns[idx].as_mut()
            && !c.waiting
        {
            c.waiting = true;
            self.again.push(idx);
        }
    }

    /// Feeds `input` to the connection's protocol until it is used up, or delivery must wait
    /// (the rest is parked). Returns false when reading must stop (parked, or gone).
    #[inline(always)]
    fn feed_bytes(&mut self, idx: usize, input: &[u8]) -> bool {
        let may_hold = self.held_bytes < self.cfg.recv_poll_bytes;
        let off = match self.conns[idx].as_mut() {
            Some(c) => offer_whole_frames(
                c,
                input,
                &mut self.budget_left,
                may_hold,
                &mut self.direct_receives,
            ),
            None => 0,
        };
        if off == input.len() {
            return true;
        }
        self.feed_from(idx, input, off)
    }

    /// [`TcpDevice::feed_bytes`] from `input[off..]` on, through the decoder: partial frames,
    /// large payloads, control frames, and frames the host declined.
    #[inline(never)]
    fn feed_from(&mut self, idx: usize, input: &[u8], mut off: usize) -> bool {
        // Read once, and only for what the decoder takes: a whole small frame handed
        // straight to the host needs no clock.
        let mut now = None;
        while off < input.len() {
            if !self.may_deliver() {
                if let Some(c) = self.conns[idx].as_mut() {
                    c.parked.extend_from_slice(&input[off..]);
                }
                self.read_later(idx);
                return false;
            }
            // Small frames whole in the input (again, after the decoder's last frame) go
            // straight to the host; the rest goes through the decoder.
            let Some(c) = self.conns[idx].as_mut() else {
                return false;
            };
            let took = offer_whole_frames(
                c,
                &input[off..],
                &mut self.budget_left,
                true,
                &mut self.direct_receives,
            );
            if took > 0 {
                off += took;
                continue;
            }
            let (used, out) = {
                let Some(c) = self.conns[idx].as_mut() else {
                    return false;
                };
                c.proto.feed(
                    &input[off..],
                    &self.local,
                    *now.get_or_insert_with(Instant::now),
                    &mut Payloads(&mut self.pool),
                )
            };
            off += used;
            if let Some(out) = out {
                let terminal = out.is_terminal();
                self.apply(idx, out);
                if terminal || self.conns[idx].is_none() {
                    return false;
                }
            } else if self.conns[idx]
                .as_mut()
                .is_some_and(|c| c.proto.decoder().striped_sockets() > 0)
            {
                // A striped frame began or goes on: its lanes may hold their parts already.
                self.read_lanes(idx);
                let Some(c) = self.conns[idx].as_mut() else {
                    return false;
                };
                if c.proto.decoder().waits_for_lanes() {
                    // What follows its part here waits for the lanes.
                    c.parked.extend_from_slice(&input[off..]);
                    return false;
                }
            }
            self.settle(idx);
            if self.conns[idx].as_ref().is_some_and(|c| !c.tx.is_empty()) {
                self.flush(idx);
            }
            if self.conns[idx].is_none() {
                return false;
            }
        }
        true
    }

    /// Feeds parked bytes first. Returns false while some are still parked.
    fn feed_parked(&mut self, idx: usize) -> bool {
        let Some(c) = self.conns[idx].as_mut() else {
            return false;
        };
        if c.parked.is_empty() {
            return true;
        }
        let parked = std::mem::take(&mut c.parked);
        let from = std::mem::take(&mut c.parked_off);
        // What cannot be fed now is parked again (appended to the emptied vector).
        let done = self.feed_bytes(idx, &parked[from..]);
        if let Some(c) = self.conns[idx].as_mut()
            && c.parked.is_empty()
        {
            // Keep the allocation for the next time.
            let mut v = parked;
            v.clear();
            c.parked = v;
        }
        done
    }

    /// Reads until the socket would block, or delivery must wait, then sets the socket's
    /// receive low-water mark for what the decoder waits for (`sync_lowat`).
    /// `hup`: the event also reported the peer's close (or an error); then reads go on until
    /// they return end of stream, since no further edge will announce it.
    fn on_readable(&mut self, idx: usize, hup: bool) {
        self.read_socket_of(idx, hup);
        self.sync_lowat(idx);
    }

    /// Sets connection `idx`'s socket's receive low-water mark (`SO_RCVLOWAT`), and each of
    /// its lanes', for what its decoder waits for on that socket: while a payload (or a
    /// striped frame's part) of at least `LOWAT_PAYLOAD_MARKS` times `recv_lowat` streams in,
    /// `recv_lowat` bytes or what is left of it, whichever is less; otherwise 1, so that any
    /// byte wakes the poll. Nothing when it is set already (a few loads).
    ///
    /// With a mark, epoll reports the socket readable (and the kernel wakes a sleeping host)
    /// only once that many bytes are there, and the busy poll reads a streaming socket only
    /// then (`read_direct`): a 1 MiB payload comes in some eight reads instead of one per
    /// segment or two, and the sending core's network processing (which runs the receive
    /// side's wakeups on loopback) is not interrupted by each. The mark is raised only here,
    /// after a read by `on_readable`, and every later read of a streaming socket goes
    /// through `on_readable` too, so it is back at 1 by the time the decoder is between
    /// frames. A peer that sends a payload slower than the mark fills is still heard: the
    /// liveness tick reads such a socket whatever the mark (`check_liveness`).
    #[inline]
    fn sync_lowat(&mut self, idx: usize) {
        let cap = self.cfg.recv_lowat;
        if cap <= 1 {
            return;
        }
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        let min_len = cap.saturating_mul(LOWAT_PAYLOAD_MARKS);
        let Conn {
            sock,
            proto,
            lowat,
            lanes,
            ..
        } = c;
        let want = mark_for(proto.decoder().streaming_left(0, min_len), cap);
        if want != *lowat {
            self.marked_payloads += set_mark(sock, lowat, want);
        }
        // Each lane's part of a striped frame likewise (none without lanes). A lane's mark
        // is set only here, after `read_lanes` read it (every `on_readable` does), and is
        // back at 1 once its part is in.
        for (i, l) in lanes.iter_mut().enumerate() {
            let want = mark_for(proto.decoder().streaming_left(i + 1, min_len), cap);
            if want != l.lowat {
                self.marked_payloads += set_mark(&l.sock, &mut l.lowat, want);
            }
        }
    }

    /// [`TcpDevice::on_readable`]'s reads.
    fn read_socket_of(&mut self, idx: usize, hup: bool) {
        if self.conns[idx]
            .as_mut()
            .is_some_and(|c| c.proto.decoder().striped_sockets() > 0)
        {
            self.read_lanes(idx);
        }
        if !self.feed_parked(idx) {
            return;
        }
        loop {
            if !self.may_deliver() {
                self.read_later(idx);
                return;
            }
            let Some(c) = self.conns[idx].as_mut() else {
                return;
            };
            if c.peer_done {
                // The peer's end of stream was read already, and the connection closes once
                // the host has answered it: reading it again must not end it first.
                return;
            }
            if c.proto.decoder().waits_for_lanes() {
                // A striped frame's part on this socket is in: the next bytes here belong to
                // the next frame, read once the lanes' parts are in (a lane's event, or the
                // next busy poll, comes back here).
                self.read_lanes(idx);
                if self.conns[idx]
                    .as_mut()
                    .is_none_or(|c| c.proto.decoder().waits_for_lanes())
                {
                    return;
                }
                continue;
            }
            if let Some(target) = c.proto.decoder().direct_target() {
                let want = target.len();
                match read_socket(&c.sock, target) {
                    Ok(0) => {
                        let out = c.proto.eof();
                        return self.apply(idx, out);
                    }
                    Ok(n) => {
                        if let Some(out) = c.proto.direct_done(n, &self.local, Instant::now()) {
                            self.apply(idx, out);
                        }
                        if n < want && !hup {
                            return; // drained: see the short-read note below
                        }
                    }
                    Err(Errno::AGAIN) => return,
                    Err(Errno::INTR) => {}
                    Err(e) => {
                        let out = c.proto.read_error(&io::Error::from(e).to_string(), false);
                        return self.apply(idx, out);
                    }
                }
                continue;
            }
            let n = match read_socket(&c.sock, &mut self.staging) {
                Ok(n) if n > 0 => n,
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR) => continue,
                ended => return self.read_ended(idx, ended),
            };
            let staging = std::mem::take(&mut self.staging);
            let go_on = self.feed_bytes(idx, &staging[..n]);
            self.staging = staging;
            if !go_on {
                return;
            }
            // A short read means the socket's receive queue was empty at that instant; on
            // Linux any later arrival raises a new edge, so the extra read that would only
            // return EAGAIN is skipped (one syscall less per message). Not when the event
            // also carried the peer's close: that close is already queued, and only a further
            // read returns it.
            if n < self.staging.len() && !hup {
                return;
            }
        }
    }

    /// A data frame arrived, its payload in `payload[at..]`: hand it up as a received IRB.
    fn deliver(&mut self, idx: usize, end: bool, filter_flags: u16, payload: Vec<u8>, at: usize) {
        let Some(c) = self.conns[idx].as_ref() else {
            self.pool.give(payload);
            return;
        };
        let flags = recv_flags(end, filter_flags);
        let at = at.min(payload.len());
        // Straight to the host with no IRB when it polls us directly (ABI 1.2).
        if deliver::offer(c.vmi, flags, &payload[at..]) {
            self.pool.give(payload);
            self.direct_receives += 1;
            self.budget_left = self.budget_left.saturating_sub(1);
            return;
        }
        let Some(mut irb) = self.host.alloc_irb(Op::Recv, c.vmi) else {
            // `may_deliver` said there was an IRB: a fragment cannot be dropped without
            // splicing the stream, so the connection ends instead.
            self.pool.give(payload);
            log::error!(
                "tcp: the host refused a receive IRB it had offered; closing the connection"
            );
            return self.fail(
                idx,
                Status::NoResources,
                "the host had no receive IRB for a fragment",
                true,
            );
        };
        irb.set_flags(flags);
        let (ptr, len) = {
            let p = &payload[at..];
            (p.as_ptr() as *mut u8, p.len())
        };
        let slot = self.pool.hold(payload);
        irb.frame::<TcpFrame>().held = slot;
        push_segment(&mut irb, ptr, len);
        irb.pass();
        self.budget_left = self.budget_left.saturating_sub(1);
        self.held_bytes += len;
    }

    /// Listener: after an accepting answer, offers the connector lanes when both sides want
    /// them (its hello said it can open them; this side's `lanes` is over 1).
    fn offer_lanes(&mut self, idx: usize, accept: bool) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        if !accept || self.cfg.lanes < 2 || !c.proto.peer_lanes() || c.lane_offer.is_some() {
            return;
        }
        let mut token = [0u8; TOKEN_LEN];
        if let Err(e) = getrandom::fill(&mut token) {
            return log::warn!("tcp: no lanes offered: the random source failed ({e})");
        }
        let lanes = (self.cfg.lanes - 1) as u8;
        c.lane_offer = Some((lanes, token));
        self.queued_total += c.tx.queue_owned(emit_lane_offer(lanes, &token));
        self.lane_tokens.insert(token, idx);
    }

    /// A valid hello: a connect request for the application.
    fn on_request(&mut self, idx: usize, from_key: String, data: Vec<u8>) {
        let vmi = self.host.conn_new();
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        c.vmi = vmi;
        self.lent_stale = true;
        let peer = c.proto.peer().to_string();
        self.by_vmi.insert(vmi, idx);
        self.settle(idx);
        self.budget_left = self.budget_left.saturating_sub(1);
        let Some(mut irb) = self.host.alloc_irb(Op::ConnectRequest, vmi) else {
            return self.fail(idx, Status::NoResources, "out of IRBs", false);
        };
        let host = peer
            .rsplit_once(':')
            .map_or(peer.as_str(), |(h, _)| h)
            .to_string();
        irb.set_peer(&host, &from_key);
        if irb.attach(&data).is_err() {
            log::error!("tcp: could not attach connect data");
        }
        log::debug!(
            "tcp: connect request from '{from_key}' at {peer}, {} bytes of connect data",
            data.len()
        );
        irb.pass();
    }

    /// Liveness ticks: every third of the peer timeout, each open connection checks that
    /// its peer was heard and sends a heartbeat if it sent nothing. The clock is read once
    /// every 64 polls (or after a sleep), not per message.
    #[inline(never)]
    fn check_liveness(&mut self) {
        self.waited.set(false);
        self.tick_polls = 0;
        let now = Instant::now();
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + self.tick_period();
        for idx in 0..self.conns.len() {
            if self.conns[idx].as_ref().is_some_and(Conn::marked) {
                // Bytes below the low-water mark wake nothing: read what came (a read takes
                // it whatever the mark), so a peer that streams slowly is heard.
                self.on_readable(idx, false);
            }
            let Some(c) = self.conns[idx].as_mut() else {
                continue;
            };
            let paused = !c.parked.is_empty() || c.waiting;
            match c.proto.tick(now, paused) {
                Some(out) => self.apply(idx, out),
                None => self.settle(idx),
            }
        }
    }

    /// How often liveness is checked.
    fn tick_period(&self) -> Duration {
        (self.cfg.peer_timeout / 3).max(Duration::from_millis(50))
    }

    /// The checks inline (a busy poll passes them in a few instructions); the work out of line.
    #[inline]
    fn check_deadlines(&mut self) {
        if !self.cfg.peer_timeout.is_zero() {
            self.tick_polls += 1;
            if self.tick_polls >= 64 || self.waited.get() {
                self.check_liveness();
            }
        }
        if self.timed != 0 {
            self.check_timeouts();
        }
    }

    #[inline(never)]
    fn check_timeouts(&mut self) {
        let now = Instant::now();
        for idx in 0..self.conns.len() {
            let Some(c) = self.conns[idx].as_mut() else {
                continue;
            };
            if let Some(out) = c.proto.timeout(now) {
                self.apply(idx, out);
            }
            self.settle(idx);
        }
    }

    /// Connections open now.
    fn open_conns(&self) -> usize {
        self.conns.len() - self.free.len()
    }

    /// Tells a connector at once that this process cannot take it, then closes.
    fn refuse_busy(sock: mio::net::TcpStream, addr: SocketAddr, reason: &str) {
        let mut sock = sock;
        let _ = Sending(&sock).write(&AnswerRepr::emit(AnswerStatus::Busy, reason, &[]));
        let _ = sock.shutdown(std::net::Shutdown::Write);
        // Read what the peer already sent, so closing does not turn into a reset that
        // could discard the answer before the peer reads it.
        let mut sink = [0u8; 4096];
        while matches!(sock.read(&mut sink), Ok(n) if n > 0) {}
        log::warn!("tcp: refused a connection from {addr}: {reason}");
    }

    fn accept_all(&mut self) {
        self.accept_retry = false;
        loop {
            let Some(l) = self.listener.as_ref() else {
                return;
            };
            match l.accept() {
                Ok((sock, addr)) if self.open_conns() >= self.cfg.max_connections => {
                    let reason = format!(
                        "at its limit of {} connections (tcp parameter max_connections)",
                        self.cfg.max_connections
                    );
                    Self::refuse_busy(sock, addr, &reason);
                }
                Ok((sock, addr)) => {
                    let _ = sock.set_nodelay(self.cfg.nodelay);
                    self.local_tuned += tuned(&sock, &self.cfg.local_congestion);
                    let proto = Connection::listener(
                        &addr.to_string(),
                        self.cfg.max_fragment,
                        self.cfg.max_connect_data,
                        Instant::now(),
                        self.cfg.handshake_timeout,
                    )
                    .with_peer_timeout(self.cfg.peer_timeout);
                    let conn = Conn::new(sock, 0, proto, None);
                    if let Err(e) = self.insert(conn) {
                        log::error!("tcp: cannot register an accepted socket: {e}");
                    }
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_out_of_fds(&e) => {
                    // The listener is edge-triggered: connections left in the backlog would
                    // never be announced again. Use the spare descriptor to accept one and
                    // tell it why, and keep trying on every poll until the backlog is empty.
                    self.accept_retry = true;
                    if self.spare.take().is_none() {
                        self.spare = spare_fd();
                        log::warn!("tcp: cannot accept connections: {e}; retrying on every poll");
                        return;
                    }
                    let got = self.listener.as_ref().map(|l| l.accept());
                    self.spare = spare_fd();
                    match got {
                        Some(Ok((sock, addr))) => {
                            let reason = format!(
                                "out of file descriptors ({e}); raise its limit (ulimit -n) or close connections"
                            );
                            Self::refuse_busy(sock, addr, &reason);
                            continue;
                        }
                        // The backlog is empty after all.
                        Some(Err(e2)) if would_block(&e2) => {
                            self.accept_retry = false;
                            return;
                        }
                        _ => {}
                    }
                    log::warn!("tcp: cannot accept connections: {e}; retrying on every poll");
                    return;
                }
                Err(e) => {
                    self.accept_retry = true;
                    log::warn!("tcp: accept failed: {e}; retrying on the next poll");
                    return;
                }
            }
        }
    }

    fn resolve(host: &str) -> Result<IpAddr, String> {
        if host.is_empty() || host == "localhost" {
            return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(ip);
        }
        let addrs: Vec<SocketAddr> = (host, 0)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve host '{host}': {e}"))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .map(|a| a.ip())
            .ok_or_else(|| format!("host '{host}' has no address"))
    }
}

/// Reserves `key` on this host: two processes listening with one key would split its
/// traffic (the second finds the key's first port taken and listens on the next), so the
/// second refuses to start. An abstract Unix socket, gone with the process. Several TCP
/// instances of one process (rails over different interfaces) share the reservation.
fn lock_key(key: &str) -> Result<std::sync::Arc<std::os::unix::net::UnixListener>, String> {
    use std::collections::HashMap;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex, Weak};
    static HELD: Mutex<Option<HashMap<String, Weak<UnixListener>>>> = Mutex::new(None);
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    let held = held.get_or_insert_with(HashMap::new);
    if let Some(l) = held.get(key).and_then(Weak::upgrade) {
        return Ok(l);
    }
    let name = vmi_device::socketname::socket_name("vmi-tcp-key.", key);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .map_err(|e| format!("key '{key}' cannot name a socket: {e}"))?;
    let l = Arc::new(UnixListener::bind_addr(&addr).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            format!("another process on this host already listens with key '{key}' (TCP); give each process its own key")
        } else {
            format!("cannot reserve key '{key}' (abstract socket @{name}): {e}")
        }
    })?);
    held.retain(|_, w| w.strong_count() > 0);
    held.insert(key.to_string(), Arc::downgrade(&l));
    Ok(l)
}

#[allow(unsafe_code)]
fn push_segment(irb: &mut Irb, ptr: *mut u8, len: usize) {
    // SAFETY: the payload stays in the device's `held` table (its heap buffer does not move)
    // until the IRB's completion step gives it back.
    let _ = unsafe { irb.push_segment(ptr, len) };
}

impl Device for TcpDevice {
    const NAME: &'static CStr = c"tcp";
    const VERSION: &'static CStr = c"0.1.0";
    const DESCRIPTION: &'static CStr =
        c"TCP transport: non-blocking sockets, writev framing, peers found by host and key";
    const KIND: DeviceKind = DeviceKind::Transport;
    const PARAMS: &'static [vmi_device::abi::VmiParamSpec] = PARAMS;
    type Frame = TcpFrame;
    const SEND_INLINE: bool = true;
    const RECEIVE_DIRECT: bool = true;

    fn create(host: Host, config: &Config) -> Result<Self, String> {
        let cfg = TcpConfig::from_config(config)?;
        let auth = vmi_device::auth::AuthKey::resolve(&cfg.auth_key_file)?;
        if let Some(k) = &auth {
            log::info!(
                "tcp: authentication on (key from {}): peers must prove they hold it",
                k.source
            );
        }
        let key = host.local_key();
        let signature_text = host.signature();
        let signature = Signature::parse(&signature_text).unwrap_or_default();
        let poll = Poll::new().map_err(|e| format!("cannot create an epoll instance: {e}"))?;
        let mut dev = TcpDevice {
            host,
            cfg,
            local: Local {
                key,
                signature,
                auth,
            },
            signature_text,
            poll,
            events: Events::with_capacity(256),
            ready: Vec::with_capacity(256),
            listener: None,
            listen_port: 0,
            conns: Vec::new(),
            free: Vec::new(),
            by_vmi: ConnMap::new(),
            again: Vec::new(),
            again_spare: Vec::new(),
            tx_spare: Vec::new(),
            queued_total: 0,
            rx_first: 0,
            dirty: Vec::new(),
            turn: 1,
            budget_left: usize::MAX,
            held_bytes: 0,
            inline_sends: 0,
            direct_receives: 0,
            timed: 0,
            pool: HeldBuffers::default(),
            staging: StreamBuffer::new(STAGING),
            accept_retry: false,
            finishing: Vec::new(),
            tick_polls: 0,
            next_tick: Instant::now(),
            waited: std::cell::Cell::new(false),
            epoll_due: std::cell::Cell::new(true),
            spare: spare_fd(),
            _key_lock: None,
            lent: LentStreams::default(),
            lent_conns: Vec::new(),
            lent_stale: true,
            write_turns: 0,
            striped: StripedSends::default(),
            lane_tokens: std::collections::HashMap::new(),
            striped_sends: 0,
            marked_payloads: 0,
            local_tuned: 0,
        };
        // Lent busy and empty; `relend` lists the sockets once connections open.
        if dev.cfg.lend_streams && dev.lent.lend(&dev.host) {
            log::debug!(
                "tcp: sockets lent to the host (its busy poll reads small messages itself)"
            );
        }
        if dev.cfg.listen {
            dev._key_lock = Some(lock_key(&dev.local.key)?);
            let ip: IpAddr = dev.cfg.listen_addr.parse().map_err(|_| {
                format!(
                    "parameter 'listen_addr' = \"{}\" is not an IP address",
                    dev.cfg.listen_addr
                )
            })?;
            let ports = if dev.cfg.port != 0 {
                vec![dev.cfg.port]
            } else {
                probe_ports(
                    &dev.local.key,
                    dev.cfg.port_base,
                    dev.cfg.port_span,
                    dev.cfg.probe_count,
                )
            };
            let mut last = String::new();
            for &p in &ports {
                match listen(SocketAddr::new(ip, p)) {
                    Ok(mut l) => {
                        dev.poll
                            .registry()
                            .register(&mut l, LISTENER, Interest::READABLE)
                            .map_err(|e| format!("cannot register the listener: {e}"))?;
                        dev.listener = Some(l);
                        dev.listen_port = p;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                        last = format!("port {p} in use")
                    }
                    Err(e) => return Err(format!("cannot listen on {ip}:{p}: {e}")),
                }
            }
            if dev.listener.is_none() {
                return Err(format!(
                    "cannot listen for key '{}': all {} ports tried are taken ({last}); another process may use this key — pick another key, or set the 'port' parameter",
                    dev.local.key,
                    ports.len()
                ));
            }
            log::info!(
                "tcp: key '{}' listening on {ip}:{}",
                dev.local.key,
                dev.listen_port
            );
        }
        log::debug!("tcp: filter signature {}", dev.signature_text);
        Ok(dev)
    }

    fn get_attr(&self, name: &str) -> Option<String> {
        match name {
            "authentication" => Some(match &self.local.auth {
                Some(k) => format!("on (key from {})", k.source),
                None => "off".into(),
            }),
            "inline_sends" => Some(self.inline_sends.to_string()),
            // Flushes that stopped at `write_turn` bytes with more queued.
            "write_turns" => Some(self.write_turns.to_string()),
            // Fragments sent striped over lanes, and the lanes attached now.
            "striped_sends" => Some(self.striped_sends.to_string()),
            // Payloads and striped parts read under a receive low-water mark (`recv_lowat`).
            "marked_payloads" => Some(self.marked_payloads.to_string()),
            // Sockets of same-host connections given `local_congestion`.
            "local_congestion_sockets" => Some(self.local_tuned.to_string()),
            "lanes" => Some(
                self.conns
                    .iter()
                    .flatten()
                    .map(|c| c.lanes.iter().filter(|l| l.ready()).count())
                    .sum::<usize>()
                    .to_string(),
            ),
            // As vmi-info shows it.
            "protocols" => {
                Some("eager for every size: the bytes stream on the socket, no rendezvous".into())
            }
            // Taken by the host from the lent sockets, or handed to it by this device.
            "direct_receives" => Some((self.direct_receives + self.lent.taken()).to_string()),
            // Of those, the frames the host took from the lent sockets itself.
            "lent_taken" => Some(self.lent.taken().to_string()),
            // Where a rail of a multi-rail connection reaches this instance: its address and
            // port, or the port alone when it listens on every interface.
            "rail_address" => Some(
                match (&self.listener, self.cfg.listen_addr.parse::<IpAddr>()) {
                    (Some(_), Ok(ip)) if !ip.is_unspecified() => {
                        SocketAddr::new(ip, self.listen_port).to_string()
                    }
                    (Some(_), _) => format!(":{}", self.listen_port),
                    (None, _) => "none".into(),
                },
            ),
            _ => None,
        }
    }

    /// `abort` = `all`: ends every connection of this instance at once, as a failed link
    /// would (the peers see the connection lost); for draining an interface and for tests
    /// of failover.
    fn set_attr(&mut self, name: &str, value: &str) -> Result<(), String> {
        // It may end connections: the host reads no socket until the next poll.
        self.lent.set_busy();
        match (name, value) {
            ("abort", "all") => {
                let open: Vec<usize> = (0..self.conns.len())
                    .filter(|&i| self.conns[i].as_ref().is_some_and(|c| c.vmi != 0))
                    .collect();
                log::warn!(
                    "tcp: aborting {} connection(s) (attribute 'abort')",
                    open.len()
                );
                for i in open {
                    self.fail(
                        i,
                        Status::ConnectionLost,
                        "aborted (attribute 'abort')",
                        true,
                    );
                }
                Ok(())
            }
            ("abort", v) => Err(format!(
                "attribute 'abort' takes the value \"all\", not \"{v}\""
            )),
            _ => Err(format!("no attribute '{name}' (tcp has 'abort'=all)")),
        }
    }

    /// A small whole message written to the socket at once, with no IRB, when it would be
    /// written at once anyway (the first send of this poll turn on an empty queue) and the
    /// socket takes it; else the IRB path (batched, queued, or reporting the error).
    fn send_inline(&mut self, conn: u64, flags: u32, data: &[u8]) -> bool {
        let Some(&idx) = self.by_vmi.get(&conn) else {
            return false;
        };
        if data.len() as u64 > self.cfg.max_fragment {
            return false;
        }
        let Some(c) = self.conns[idx].as_mut() else {
            return false;
        };
        if !c.proto.is_open() {
            return false;
        }
        if !c.lanes.is_empty() && data.len() >= self.cfg.stripe_min && c.lanes[0].ready() {
            // Striped over the lanes: the IRB path writes its parts from its segments.
            return false;
        }
        let header = FrameRepr {
            end: flags & vmi_device::abi::VMI_FLAG_END != 0,
            filter_flags: wire_flags(flags),
            len: data.len() as u32,
        }
        .emit();
        let total = header.len() + data.len();
        // The host's polls that skipped this device's count as turns too (asked only when
        // nothing waits ahead: a stream's later sends in a turn need not; the write below
        // happens only then).
        let queued_ahead = !c.tx.is_empty();
        let turn = if queued_ahead {
            0
        } else {
            self.turn + u64::from(self.lent.skipped())
        };
        if queued_ahead || c.last_write_turn == turn {
            // Not the first send of this poll turn, or data waits ahead: the frame joins the
            // connection's queued bytes (in order, one write for the batch at the next poll),
            // unless that queue is full: then the IRB path takes it and pushes back.
            if c.tx.bytes() + total > sendq::QUEUED_MAX
                || self.queued_total + total > sendq::QUEUED_TOTAL_MAX
            {
                return false;
            }
            self.queued_total += c.tx.queue_frame(&mut self.tx_spare, &header, data);
            c.proto.note_sent();
            self.inline_sends += 1;
            mark_dirty(&mut self.dirty, &self.lent, c, idx);
            if c.tx.bytes() >= sendq::FLUSH_AT {
                self.flush(idx);
            }
            return true;
        }
        let mut off = 0;
        let failed = loop {
            match write_gather(&mut Sending(&c.sock), &header, &[data], off) {
                Ok(w) => {
                    off += w;
                    if off == total || w == 0 {
                        break None;
                    }
                }
                Err(e) if would_block(&e) => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        if off == 0 {
            // Nothing went: the IRB path queues it or reports the error, exactly as before.
            return false;
        }
        c.last_write_turn = turn;
        c.proto.note_sent();
        self.inline_sends += 1;
        if off < total {
            // The socket took part of it: the rest is queued, as bytes, ahead of any later send.
            self.queued_total += c.tx.queue_parts(&mut self.tx_spare, &[&header, data], off);
            mark_dirty(&mut self.dirty, &self.lent, c, idx);
        }
        if let Some(e) = failed {
            let out = c.proto.write_error(&e.to_string());
            self.apply(idx, out);
        }
        true
    }

    fn capabilities(&self, _below: Capabilities) -> Capabilities {
        Capabilities {
            max_fragment: self.cfg.max_fragment,
            headroom: crate::wire::FRAME_LEN as u32,
            tailroom: 0,
            max_connect_data: self.cfg.max_connect_data,
        }
    }

    fn reach(&mut self, host: &str, _key: &str) -> Result<(), String> {
        vmi_device::dial::check_host(host)
    }

    fn submit(&mut self, mut irb: Irb) -> Disposition {
        // Any operation may queue sends, or open or end a connection: the host reads no
        // socket until the next poll has listed them again.
        self.lent.set_busy();
        let conn = irb.conn();
        match irb.op() {
            Op::Send => {
                let Some(&idx) = self.by_vmi.get(&conn) else {
                    irb.set_detail("the connection is closed");
                    return Disposition::Complete(irb, Status::ConnectionLost);
                };
                let total_data = irb.data_len();
                if total_data as u64 > self.cfg.max_fragment {
                    irb.set_detail(&format!(
                        "fragment of {total_data} bytes is over max_fragment {}",
                        self.cfg.max_fragment
                    ));
                    return Disposition::Complete(irb, Status::TooLarge);
                }
                let header = FrameRepr {
                    end: irb.is_end(),
                    filter_flags: wire_flags(irb.flags()),
                    len: total_data as u32,
                }
                .emit();
                let total = header.len() + total_data;
                let Some(c) = self.conns[idx].as_mut() else {
                    irb.set_detail("the connection is closed");
                    return Disposition::Complete(irb, Status::ConnectionLost);
                };
                // After the peer finished sending, this side may still send until the
                // connection is closed at the next poll (the host's last notices).
                if !(c.proto.is_open() || (c.peer_done && c.closing.is_none())) {
                    irb.set_detail("the connection is not open");
                    return Disposition::Complete(irb, Status::ConnectionLost);
                }
                c.proto.note_sent();
                if !c.lanes.is_empty() && total_data >= self.cfg.stripe_min {
                    let ready = c.lanes.iter().take_while(|l| l.ready()).count();
                    let mut sockets = (1 + ready).min(total_data / STRIPE_PART_MIN);
                    while sockets >= 2 && part_len(total_data, sockets).is_none() {
                        sockets -= 1;
                    }
                    if sockets >= 2 {
                        return self.send_striped(idx, irb, sockets);
                    }
                }
                // The first send on a connection in each poll turn is written at once
                // (latency); further sends in the same turn are queued and written together
                // at the next poll, or as soon as a batch is full: a stream of small sends
                // costs one writev per batch, not one per message.
                if c.tx.is_empty() && c.last_write_turn != self.turn {
                    c.last_write_turn = self.turn;
                    let mut segs: [&[u8]; 16] = [&[]; 16];
                    let n = irb.segments().len().min(16);
                    for (i, s) in segs.iter_mut().enumerate().take(n) {
                        *s = irb.segment(i);
                    }
                    let mut off = 0;
                    loop {
                        match write_gather(&mut Sending(&c.sock), &header, &segs[..n], off) {
                            Ok(w) => {
                                off += w;
                                if off == total {
                                    return Disposition::Complete(irb, Status::Ok);
                                }
                                if w == 0 {
                                    break;
                                }
                            }
                            Err(e) if would_block(&e) => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                let out = c.proto.write_error(&e.to_string());
                                c.tx.push_frame(irb, header, off, total);
                                self.apply(idx, out);
                                return Disposition::Pending;
                            }
                        }
                    }
                    // The socket took part of it: the rest waits for a writable event.
                    c.tx.push_frame(irb, header, off, total);
                    return Disposition::Pending;
                }
                c.tx.push_frame(irb, header, 0, total);
                let full = c.tx.len() >= MAX_IOV / 2;
                mark_dirty(&mut self.dirty, &self.lent, c, idx);
                if full {
                    self.flush(idx);
                }
                Disposition::Pending
            }
            Op::Connect => {
                let (host, key) = irb.peer();
                let (h, port) = match split_host_port(&host) {
                    Ok(x) => x,
                    Err(e) => {
                        irb.set_detail(&e);
                        return Disposition::Complete(irb, Status::Invalid);
                    }
                };
                let ip = match Self::resolve(&h) {
                    Ok(ip) => ip,
                    Err(e) => {
                        irb.set_detail(&e);
                        return Disposition::Complete(irb, Status::Unreachable);
                    }
                };
                let ports = match port {
                    Some(p) => vec![p],
                    None => probe_ports(
                        &key,
                        self.cfg.port_base,
                        self.cfg.port_span,
                        self.cfg.probe_count,
                    ),
                };
                let data: Vec<u8> = (0..irb.segments().len())
                    .flat_map(|i| irb.segment(i).to_vec())
                    .collect();
                let addrs = ports.into_iter().map(|p| SocketAddr::new(ip, p)).collect();
                let attempt = Attempt {
                    hello: HelloRepr::emit_with(
                        &self.local.key,
                        &key,
                        &self.signature_text,
                        &data,
                        self.local
                            .auth
                            .as_ref()
                            .map(|_| vmi_device::auth::nonce())
                            .as_ref(),
                        self.cfg.lanes > 1,
                    ),
                    dial: Dial::new(&key, &host, addrs, Instant::now(), self.cfg.connect_timeout),
                    irb: Some(irb),
                };
                self.start_attempt(attempt, conn);
                Disposition::Pending
            }
            Op::Accept | Op::Reject => {
                let Some(&idx) = self.by_vmi.get(&conn) else {
                    irb.set_detail("the connecting peer went away");
                    return Disposition::Complete(irb, Status::ConnectionLost);
                };
                let reply: Vec<u8> = (0..irb.segments().len())
                    .flat_map(|i| irb.segment(i).to_vec())
                    .collect();
                let accept = irb.op() == Op::Accept;
                let Some(c) = self.conns[idx].as_mut() else {
                    irb.set_detail("the connecting peer went away");
                    return Disposition::Complete(irb, Status::ConnectionLost);
                };
                if !c.proto.answer(accept, &reply, Instant::now()) {
                    irb.set_detail("the connection is not waiting for an answer");
                    return Disposition::Complete(irb, Status::Invalid);
                }
                if !accept {
                    // The application is done with it: closing after the answer is flushed.
                    self.by_vmi.remove(&conn);
                    c.vmi = 0;
                    self.lent_stale = true;
                }
                self.settle(idx);
                self.offer_lanes(idx, accept);
                self.flush(idx);
                Disposition::Complete(irb, Status::Ok)
            }
            Op::Abort => {
                if let Some(&idx) = self.by_vmi.get(&conn) {
                    let (status, why) = irb.abort_reason();
                    self.end(idx, status, &why, false, Some(status));
                }
                // The host completes it after what it ended (queued in this call), so the
                // application hears of those sends first, then of the end.
                Disposition::Complete(irb, Status::Ok)
            }
            Op::Disconnect => {
                let Some(&idx) = self.by_vmi.get(&conn) else {
                    return Disposition::Complete(irb, Status::Ok);
                };
                let Some(c) = self.conns[idx].as_mut() else {
                    return Disposition::Complete(irb, Status::Ok);
                };
                if c.attempt.is_some() {
                    // Still dialling: the connect ends cancelled, and so does the connection
                    // (the host completes the disconnect after the connect's outcome).
                    self.fail(
                        idx,
                        Status::Cancelled,
                        "disconnected while connecting",
                        false,
                    );
                    return Disposition::Complete(irb, Status::Ok);
                }
                c.proto.close(Instant::now());
                c.tx.push_close(Some(irb));
                self.flush(idx);
                Disposition::Pending
            }
            other => {
                irb.set_detail(&format!("tcp does not handle {other:?}"));
                Disposition::Complete(irb, Status::Invalid)
            }
        }
    }

    fn complete(&mut self, irb: &mut CompletingIrb) {
        let held = std::mem::take(&mut irb.frame::<TcpFrame>().held);
        self.pool.release(held);
    }

    fn peer_close_released(&mut self, conn: u64) {
        self.lent.set_busy();
        // What the host sent in answer to the peer's last fragments has reached this
        // device: the connection closes at the next poll.
        if let Some(&idx) = self.by_vmi.get(&conn)
            && self.conns[idx].as_ref().is_some_and(|c| c.peer_done)
        {
            self.finishing.push(idx);
        }
    }

    fn poll(&mut self, budget: usize) -> usize {
        if !self.lent.is_lent() {
            return self.poll_sockets(budget);
        }
        self.poll_lent(budget)
    }

    fn wait_fd(&self) -> (Option<RawFd>, Option<Duration>) {
        let mut next: Option<Duration> = if !self.dirty.is_empty() || !self.finishing.is_empty() {
            // Sends wait to be written: do not sleep.
            Some(Duration::ZERO)
        } else if self.again.is_empty() {
            None
        } else if self.host.irbs_available() > 0 {
            Some(Duration::ZERO)
        } else {
            // Waiting for the application to release received IRBs: a release wakes the host.
            None
        };
        self.waited.set(true);
        self.epoll_due.set(true);
        // The next poll asks epoll and ends the sleep: the host must call it.
        self.lent.set_busy();
        if !self.cfg.peer_timeout.is_zero() && self.open_conns() > 0 {
            // Wake for the next liveness tick.
            let left = self.next_tick.saturating_duration_since(Instant::now());
            next = Some(next.map_or(left, |n| n.min(left)));
        }
        if self.accept_retry {
            // Connections may wait in the backlog with no event to come: look again soon.
            let retry = Duration::from_millis(50);
            next = Some(next.map_or(retry, |n| n.min(retry)));
        }
        if self.timed > 0 {
            let now = Instant::now();
            for c in self.conns.iter().flatten() {
                if let Some(d) = c.proto.deadline() {
                    let left = d.saturating_duration_since(now);
                    next = Some(next.map_or(left, |n| n.min(left)));
                }
            }
        }
        (
            Some(self.poll.as_raw_fd()),
            // Deadlines round up by a millisecond (poll(2) counts whole ones); "now" stays now.
            next.map(|d| {
                if d.is_zero() {
                    d
                } else {
                    d + Duration::from_millis(1)
                }
            }),
        )
    }
}

impl TcpDevice {
    /// [`Device::poll`] with the sockets lent to the host: the polls it skipped count as
    /// this device's, what its reads left is taken first, and the sockets are listed again
    /// at the end when nothing but whole frames can wait in them.
    #[inline(never)]
    fn poll_lent(&mut self, budget: usize) -> usize {
        let skipped = u64::from(self.lent.take_skipped());
        self.turn += skipped;
        self.tick_polls = self.tick_polls.saturating_add(skipped as u32);
        // This poll may change any connection: nothing is read by the host until `relend`.
        self.lent.set_busy();
        self.budget_left = self.host.receive_credit(budget);
        self.held_bytes = 0;
        self.take_rests();
        let n = self.poll_sockets_from();
        self.relend();
        n
    }

    /// Takes what the host's reads of the lent sockets left (bytes not taken, an end of
    /// stream, an error) and notes the peers it heard from, before anything else reads into
    /// the staging buffer those bytes lie in. (A rest is left only while the sockets are
    /// lent, and the host calls this poll at once after it; the peers heard from are noted
    /// at every poll, so a busy spell loses none for the liveness ticks.)
    fn take_rests(&mut self) {
        for i in 0..self.lent_conns.len() {
            let idx = self.lent_conns[i];
            let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            if c.rest.take_heard() {
                c.proto.note_heard();
            }
            let Some(rest) = c.rest.take(self.staging.len()) else {
                continue;
            };
            match rest {
                Rest::Bytes { off, len } => {
                    let staging = std::mem::take(&mut self.staging);
                    let go_on = off == len || self.feed_from(idx, &staging[..len], off);
                    self.staging = staging;
                    // A read that filled the buffer may have left more: it is read again in
                    // its turn, after the connections the host did not get to.
                    if go_on && len == self.staging.len() {
                        self.read_later(idx);
                    }
                }
                Rest::End => self.read_ended(idx, Ok(0)),
                Rest::Error(e) => self.read_ended(idx, Err(Errno::from_raw_os_error(e))),
            }
            // The host read this one this poll: this device's own round starts after it.
            self.rx_first = idx + 1;
        }
    }

    /// Lists the sockets for the host again when every connection is open, between frames,
    /// with nothing parked, queued or due, and there are few of them; otherwise leaves them
    /// busy. The host may skip this device's polls until its next look at epoll (one in
    /// `LENT_POLL_EVERY` of the host's polls).
    #[allow(unsafe_code)]
    fn relend(&mut self) {
        let lendable = self.open_conns() <= DIRECT_MAX_CONNS
            && self.dirty.is_empty()
            && self.finishing.is_empty()
            && self.again.is_empty()
            && !self.accept_retry
            && !self.epoll_due.get()
            && self.conns.iter().flatten().all(|c| {
                c.proto.is_open()
                    && c.vmi != 0
                    && c.proto.at_boundary()
                    && c.parked.is_empty()
                    && !c.waiting
                    && !c.peer_done
                    && !c.timed
                    && c.closing.is_none()
                    && c.attempt.is_none()
                    && c.tx.is_empty()
                    && c.lanes_idle()
            });
        if !lendable {
            return;
        }
        let skips = (LENT_POLL_EVERY - 1 - self.turn % LENT_POLL_EVERY) as u32;
        if !self.lent_stale {
            // SAFETY: the same sockets as the last publish (no connection was added or taken
            // and no handle changed since: `lent_stale`), each in the state checked above,
            // with the same buffer; see the publish below.
            unsafe { self.lent.resume(skips) };
            return;
        }
        self.lent_stale = false;
        self.lent_conns.clear();
        self.lent_conns
            .extend((0..self.conns.len()).filter(|&i| self.conns[i].is_some()));
        let max_len = self.cfg.max_fragment;
        let streams = self.conns.iter().flatten().map(|c| StreamLoan {
            conn: c.vmi,
            fd: c.sock.as_raw_fd(),
            max_len,
            rest: &c.rest,
        });
        // SAFETY: every listed socket belongs to a connection in the table, which closes
        // only when `take` removes it, and `take` sets the set busy first (as do `submit`,
        // `send_inline` queueing, `wait_fd`, `peer_close_released` and every poll, and
        // `Drop` through `take`). Each listed connection is open and between frames with
        // nothing parked (checked above), its rest was taken at this poll's start (or it was
        // not listed then, and nothing writes a rest of an unlisted stream). The staging
        // buffer is a boxed slice whose address never changes (taken and put back whole),
        // and the device uses it only inside its own calls.
        unsafe { self.lent.publish(streams, &self.staging, skips) };
    }

    /// The body of [`Device::poll`]: reads the sockets and flushes queued sends.
    #[inline(always)]
    fn poll_sockets(&mut self, budget: usize) -> usize {
        self.budget_left = self.host.receive_credit(budget);
        self.held_bytes = 0;
        self.poll_sockets_from()
    }

    /// [`TcpDevice::poll_sockets`] once the poll's budget is set.
    #[inline(always)]
    fn poll_sockets_from(&mut self) -> usize {
        // The budget was asked once for this poll (and not at all from a host of ABI 1.6 on,
        // which bounds it itself): during this poll only this device takes receive IRBs, and
        // it counts each one down (`deliver`, connect requests, peer ends).
        self.turn += 1;
        // Queued sends first: one writev per connection for everything sent since.
        // A flush whose turn ran out lists its connection again (after these): kept for the
        // next poll.
        let listed = self.dirty.len();
        for i in 0..listed {
            let idx = self.dirty[i];
            if let Some(c) = self.conns[idx].as_mut() {
                c.dirty = false;
            }
            self.flush(idx);
        }
        self.dirty.drain(..listed);
        // Connections whose peer finished sending: what was sent since is written; close.
        if !self.finishing.is_empty() {
            self.finish_closes();
        }
        // With a few connections and no sleep since the last look at epoll, read their
        // sockets directly (one `read` per message instead of `epoll_wait` + `read`); epoll is
        // still asked every DIRECT_EPOLL_EVERY polls and after every sleep, for accepts,
        // writability and connections in their handshake.
        if self.open_conns() <= DIRECT_MAX_CONNS
            && !self.epoll_due.replace(false)
            && !self.turn.is_multiple_of(DIRECT_EPOLL_EVERY)
        {
            let before = self.budget_left;
            // From `rx_first` on, round the table. When the budget runs out, the connections
            // it left unread wait in `again`, the first of them first: the next poll starts
            // there, so a busy peer cannot starve the others.
            let start = self.rx_first.min(self.conns.len());
            for idx in start..self.conns.len() {
                self.read_direct(idx);
            }
            for idx in 0..start {
                self.read_direct(idx);
            }
            if !self.may_deliver() {
                self.rx_first = self.again.first().copied().unwrap_or(0);
            }
            let mut n = before - self.budget_left;
            if !self.again.is_empty() {
                n += self.read_again(None);
            }
            self.check_deadlines();
            return n;
        }
        if let Err(e) = self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("tcp: epoll failed: {e}");
            }
            return 0;
        }
        self.ready.clear();
        for ev in self.events.iter() {
            let hup = ev.is_read_closed() || ev.is_error();
            let r = ev.is_readable() || hup;
            let w = ev.is_writable() || ev.is_error();
            self.ready.push((ev.token(), r, w, hup));
        }
        let mut n = self.ready.len();
        let mut used_up_by = None;
        for i in 0..self.ready.len() {
            let (token, r, w, hup) = self.ready[i];
            if token == LISTENER {
                self.accept_all();
                continue;
            }
            if self.accept_retry {
                self.accept_all();
            }
            let (idx, lane) = split_token(token);
            if lane > 0 {
                if w {
                    self.on_lane_writable(idx, lane);
                }
                if r {
                    self.on_lane_readable(idx, lane);
                }
                continue;
            }
            if w {
                self.on_writable(token.0);
            }
            // A connection waiting its turn for receive IRBs is read in that turn, below
            // (which reads it as if it had hung up, so a close is not missed).
            let waiting = self
                .conns
                .get(token.0)
                .and_then(Option::as_ref)
                .is_some_and(|c| c.waiting);
            if r && !waiting {
                let could = self.may_deliver();
                self.on_readable(token.0, hup);
                if could && !self.may_deliver() {
                    used_up_by = Some(token.0);
                }
            }
        }
        if !self.again.is_empty() {
            n += self.read_again(used_up_by);
        }
        if self.accept_retry {
            self.accept_all();
        }
        self.check_deadlines();
        n
    }
}

impl Drop for TcpDevice {
    fn drop(&mut self) {
        // What was sent but not yet written goes out if the socket takes it now (the last
        // notices to a peer that already said goodbye among it).
        for idx in std::mem::take(&mut self.dirty) {
            self.flush_up_to(idx, usize::MAX);
        }
        for idx in std::mem::take(&mut self.finishing) {
            if let Some(c) = self.conns[idx].as_mut().filter(|c| c.peer_done) {
                c.tx.push_close(None);
                self.flush_up_to(idx, usize::MAX);
            }
        }
        for idx in 0..self.conns.len() {
            if let Some(mut c) = self.take(idx) {
                let lanes = c.lanes.iter_mut().flat_map(|l| l.tx.drain());
                for tx in lanes.chain(c.tx.drain()) {
                    match tx {
                        Tx::Frame { irb, .. } => irb.complete(Status::Cancelled),
                        Tx::Part { send, .. } => {
                            if let Some(irb) = self.striped.fail(send) {
                                irb.complete(Status::Cancelled);
                            }
                        }
                        Tx::Close { irb: Some(irb) } => irb.complete(Status::Ok),
                        _ => {}
                    }
                }
                if let Some(mut a) = c.attempt.take()
                    && let Some(irb) = a.irb.take()
                {
                    irb.complete(Status::Cancelled);
                }
            }
        }
    }
}

/// The device's pool as the decoder's source of payload buffers.
struct Payloads<'a>(&'a mut HeldBuffers);

impl PayloadAlloc for Payloads<'_> {
    fn take(&mut self, len: usize) -> Vec<u8> {
        self.0.take(len)
    }

    fn take_idle(&mut self, len: usize) -> Option<Vec<u8>> {
        self.0.take_pooled(len)
    }
}

/// One `writev` to `sock` of what `tx` holds ahead of a close (about `left` bytes, see
/// `SendQueue::gather`), credited to the queue: the bytes written, and of those the bytes
/// credited to byte entries.
fn write_queued(
    sock: &mio::net::TcpStream,
    tx: &mut SendQueue,
    left: usize,
    striped: &mut StripedSends,
    spare: &mut Vec<u8>,
) -> io::Result<(usize, usize)> {
    let written = {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let n = tx.gather(&mut slices, left, striped);
        Sending(sock).write_vectored(&slices[..n])?
    };
    let from_bytes = tx.credit(written, spare, striped);
    Ok((written, from_bytes))
}

/// Lists connection `idx` for the next poll's flush (once); the host then calls that poll
/// (the lent sockets are busy).
fn mark_dirty(dirty: &mut Vec<usize>, lent: &LentStreams, c: &mut Conn, idx: usize) {
    if !c.dirty {
        // Busy until the flush: no publish lists the sockets while `dirty` is not empty.
        lent.set_busy();
        c.dirty = true;
        dirty.push(idx);
    }
}
