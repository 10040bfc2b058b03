//! Send/receive/reply and pulses over any chain (QNX Neutrino's `MsgSend`, `MsgReceive`,
//! `MsgReply`, `MsgError`, `MsgRead`, `MsgWrite`, `MsgSendPulse`).
//!
//! A request, a reply and a pulse each travel as one-fragment messages marked with the
//! host's [`VMI_FLAG_MSG`] bit, on the same connections as streams and through the same
//! filters (so requests are compressed and checked like stream data); the receiving host
//! routes them to the request, reply and pulse callbacks instead of `receive`. The wire
//! header is in [`wire`]; the client's waiting requests in [`client`]; the server's held
//! requests and delivery queue in [`server`]. This module joins them to the engine.
//!
//! - A client sends a request made of parts with [`Operations::request`](crate::Operations)
//!   and hears the answer in [`Handler::replied`], or blocks in [`crate::Vmi::request_wait`].
//!   Every request has a deadline unless the client asks for none; a timeout, a cancel or a
//!   lost connection answers it with a failure (and tells the server to forget it), so no
//!   request waits for ever on a server that is gone.
//! - A server hears each request in [`Handler::request`] with the sender's identity, the
//!   request and the most reply bytes the client takes; it answers at once, or keeps the
//!   [`ReceiveId`] and answers later from anywhere it has a [`crate::Vmi`] or a
//!   [`crate::Ctx`]. It may read the request at an offset and write reply bytes ahead of the
//!   reply.
//! - Requests and pulses are delivered highest priority first, in arrival order within a
//!   priority. On the direct receive path, those of priority above 0 that arrive in the
//!   same poll as stream fragments are delivered before those fragments (stream data counts
//!   as priority 0).
#![forbid(unsafe_code)]

pub mod client;
mod pool;
mod request;
mod sent;
pub mod server;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::abi::{VMI_FLAG_END, VMI_FLAG_MSG};
use crate::buffer::Buffer;
use crate::conn::{ConnId, SendKind};
use crate::ctx::Ctx;
use crate::error::VmiError;
use crate::handler::Handler;
use crate::ops::{Core, Mode};
use crate::slab::Slab;
use crate::slot::Purpose;
use crate::status::Status;
use client::{Client, Pending};
use sent::{Sent, SentLog};
use server::{Incoming, Server};
use wire::{Kind, MAX_PRIORITY};

pub use pool::{ECANCELED, OwnedRequest, PoolAnswer, RequestPool};
pub use request::{Answer, Pulse, ReceiveId, Reply, Request, RequestId, RequestOptions, Sender};
pub use server::ServerLimits;

/// Largest request or reply, whatever the chain allows (one fragment carries it).
pub const MAX_MESSAGE: usize = 16 << 20;

/// QNX's `ENOSYS`: the answer of a server whose handler does not serve requests.
pub const ENOSYS: i32 = 38;

/// How a request ended, kept until delivered.
enum Outcome {
    Data(i32, Vec<u8>),
    Error(i32),
    Failed(Status, String),
}

/// The message-passing state of a process.
#[derive(Default)]
pub(crate) struct MsgPass {
    client: Client,
    server: Server,
    /// Answers to deliver at the next poll (cancels and timeouts found outside one).
    done: VecDeque<(Pending, Outcome)>,
    /// Answers of blocking requests, by request id.
    parked: HashMap<u64, Outcome>,
    /// Each connection's peer, looked up once (by the handle's dense index).
    peers: Vec<Option<(ConnId, std::sync::Arc<Sender>)>>,
    /// Replies, refusals, cancels and pulses sent recently, by connection and message index,
    /// so the peer's "message N failed" finds them (a request is found among the waiting).
    sent: SentLog,
    /// A buffer to build small messages in.
    scratch: Vec<u8>,
}

impl MsgPass {
    /// What the next poll must see to (timeouts to check, answers to deliver).
    pub(crate) fn waits(&self) -> usize {
        usize::from(self.client.timed()) + self.done.len()
    }

    /// True when requests or pulses wait to be delivered.
    #[inline]
    pub(crate) fn has_queued(&self) -> bool {
        self.server.has_queued()
    }
}

/// Sends one message-passing message; returns the index of its message on the connection.
#[inline(always)]
fn send(
    core: &mut Core,
    conn: ConnId,
    kind: Kind,
    parts: &[&[u8]],
    mode: Mode,
) -> Result<u64, VmiError> {
    let message = transmit(core, conn, &kind.encode(), parts, mode, WHAT)?;
    record_sent(core, conn, message, &kind);
    Ok(message)
}

/// What message passing is called in a refusal on a connection with rails.
const WHAT: &str = "send/receive/reply and pulses";

/// Remembers an answer or a notice once it went, so a refused send leaves no entry for a
/// later message.
#[inline(always)]
fn record_sent(core: &mut Core, conn: ConnId, message: u64, kind: &Kind) {
    if !matches!(kind, Kind::Request { .. }) {
        let what = match *kind {
            Kind::Reply { id, .. } | Kind::Error { id, .. } => Sent::Answer(id),
            _ => Sent::Notice,
        };
        core.msg.sent.record(conn, message, what);
    }
}

/// [`send`] with the payload given as buffers: up to [`GIVEN_COPY_MAX`] bytes it is
/// gathered and sent as lent slices are (a copy is cheaper than an IRB); larger, it goes as
/// an IRB whose segments are the header and the buffers themselves, and the transport sends
/// them from where they are (shared memory's single copy reads them in place). The buffers
/// are dropped once the message went.
#[inline(never)]
fn send_given(
    core: &mut Core,
    conn: ConnId,
    kind: Kind,
    bufs: Vec<Buffer>,
    mode: Mode,
) -> Result<u64, VmiError> {
    let mut parts = [&[][..]; crate::abi::VMI_IRB_MAX_SEGS];
    let parts = given_parts(&bufs, &mut parts)?;
    let payload: usize = parts.iter().map(|p| p.len()).sum();
    if payload <= GIVEN_COPY_MAX {
        return send_other(core, conn, kind, parts, mode);
    }
    send_buffers(core, conn, kind, bufs, payload, mode)
}

/// The large case of [`send_given`]: `bufs` (counted by [`given_parts`], `payload` bytes in
/// all) sent as an IRB whose segments are the header and the buffers.
fn send_buffers(
    core: &mut Core,
    conn: ConnId,
    kind: Kind,
    bufs: Vec<Buffer>,
    payload: usize,
    mode: Mode,
) -> Result<u64, VmiError> {
    let header = kind.encode();
    check_message(core, conn, payload, WHAT)?;
    check_fragment(core, header.len(), payload)?;
    let message = core.engine.conns().tx_messages(conn);
    issue_message(core, conn, mode, |s| {
        s.attach_vec(header.to_vec());
        for b in bufs {
            // Room checked by `given_parts`: the header and at most VMI_IRB_MAX_SEGS - 1.
            let _ = s.push_buffer(b);
        }
    })?;
    record_sent(core, conn, message, &kind);
    Ok(message)
}

/// The bytes of buffers given for a message, as slices in `parts`; refused when they and
/// the message's header need more segments than an IRB has.
fn given_parts<'a>(
    bufs: &'a [Buffer],
    parts: &'a mut [&'a [u8]; crate::abi::VMI_IRB_MAX_SEGS],
) -> Result<&'a [&'a [u8]], VmiError> {
    let max = crate::abi::VMI_IRB_MAX_SEGS - 1; // one for the header
    if bufs.len() > max {
        return Err(VmiError::TooManyBuffers {
            given: bufs.len(),
            max,
        });
    }
    for (p, b) in parts.iter_mut().zip(bufs) {
        *p = b;
    }
    Ok(&parts[..bufs.len()])
}

/// The largest payload given as buffers that is still copied (see [`send_given`]).
pub(crate) const GIVEN_COPY_MAX: usize = 4 * 1024;

/// [`send`] out of line, for the messages off the request/reply path.
#[inline(never)]
fn send_other(
    core: &mut Core,
    conn: ConnId,
    kind: Kind,
    parts: &[&[u8]],
    mode: Mode,
) -> Result<u64, VmiError> {
    send(core, conn, kind, parts, mode)
}

/// Sends `header` and `parts` as one host message (a [`VMI_FLAG_MSG`] message: message
/// passing, or RDMA); returns the index of its message on the connection. `what` names the
/// operation in the refusal for a connection with rails.
#[inline(always)]
pub(crate) fn transmit(
    core: &mut Core,
    conn: ConnId,
    header: &[u8],
    parts: &[&[u8]],
    mode: Mode,
    what: &'static str,
) -> Result<u64, VmiError> {
    // `check_message`'s checks, written out: through the helper (even always inlined) the
    // compiler stopped inlining the gather's copies below (+7 per request hop, callgrind).
    if core.rails.on() && (core.rails.is_bond(conn) || core.rails.is_rail(conn)) {
        return Err(VmiError::Unsupported {
            what,
            on: "a connection with rails",
        });
    }
    let payload: usize = parts.iter().map(|p| p.len()).sum();
    if payload > MAX_MESSAGE {
        return Err(VmiError::MessageTooLarge {
            len: payload,
            max: MAX_MESSAGE,
        });
    }
    let message = core.engine.conns().tx_messages(conn);
    let len = header.len() + payload;
    let direct = mode == Mode::Now || core.deferred.is_empty();
    let gathered = direct && len <= SCRATCH_KEPT;
    if gathered {
        // Gathered in the scratch buffer, and straight to the transport when it takes it.
        let bytes = &mut core.msg.scratch;
        bytes.clear();
        bytes.extend_from_slice(header);
        for p in parts {
            bytes.extend_from_slice(p);
        }
        if core
            .engine
            .send_whole_direct(conn, VMI_FLAG_END | VMI_FLAG_MSG, bytes)
        {
            return Ok(message);
        }
    }
    transmit_slow(core, conn, header, parts, mode, gathered)?;
    Ok(message)
}

/// [`transmit`] for a message the transport's `send_inline` did not take (or that waits
/// behind earlier operations, or is large): as an IRB. `gathered`: the message is in the
/// scratch buffer already.
#[inline(never)]
fn transmit_slow(
    core: &mut Core,
    conn: ConnId,
    header: &[u8],
    parts: &[&[u8]],
    mode: Mode,
    gathered: bool,
) -> Result<(), VmiError> {
    let payload: usize = parts.iter().map(|p| p.len()).sum();
    check_fragment(core, header.len(), payload)?;
    let mut bytes = std::mem::take(&mut core.msg.scratch);
    if !gathered {
        bytes.clear();
        bytes.extend_from_slice(header);
        for p in parts {
            bytes.extend_from_slice(p);
        }
    }
    issue_message(core, conn, mode, |s| {
        s.attach_vec(bytes);
    })
}

/// Checks that a message-passing message of `payload` bytes may go on `conn`: not on a
/// connection with rails (`what` names the operation), at most [`MAX_MESSAGE`]. ([`transmit`]
/// makes the same checks written out.)
fn check_message(
    core: &Core,
    conn: ConnId,
    payload: usize,
    what: &'static str,
) -> Result<(), VmiError> {
    if core.rails.on() && (core.rails.is_bond(conn) || core.rails.is_rail(conn)) {
        return Err(VmiError::Unsupported {
            what,
            on: "a connection with rails",
        });
    }
    if payload > MAX_MESSAGE {
        return Err(VmiError::MessageTooLarge {
            len: payload,
            max: MAX_MESSAGE,
        });
    }
    Ok(())
}

/// Checks that a message of a `header`-byte header and `payload` bytes fits the chain's
/// largest fragment (a message is one fragment).
fn check_fragment(core: &Core, header: usize, payload: usize) -> Result<(), VmiError> {
    let max = core.engine.top_caps().max_fragment;
    if max > 0 && (header + payload) as u64 > max {
        return Err(VmiError::MessageTooLarge {
            len: payload,
            max: (max as usize).saturating_sub(header),
        });
    }
    Ok(())
}

/// Issues a message-passing message as an IRB whose segments `attach` adds, the header's
/// first.
fn issue_message(
    core: &mut Core,
    conn: ConnId,
    mode: Mode,
    attach: impl FnOnce(&mut crate::slot::Slot),
) -> Result<(), VmiError> {
    let mut s = core.prepare_send(conn, 0, SendKind::Whole, |_, s, _| {
        attach(s);
        Ok(())
    })?;
    s.set_flags(VMI_FLAG_END | VMI_FLAG_MSG);
    s.set_purpose(Purpose::Internal);
    core.issue(s, mode);
    Ok(())
}

/// The largest message gathered in the scratch buffer to go straight to the transport (a
/// transport's `send_inline` takes small messages only; larger ones go as IRBs and are
/// gathered in a buffer of their own).
const SCRATCH_KEPT: usize = 64 * 1024;

/// Sends a request (see [`crate::Operations::request`]).
#[inline(always)]
pub(crate) fn request(
    core: &mut Core,
    app_conn: ConnId,
    parts: &[&[u8]],
    opts: &RequestOptions,
    token: u64,
    mode: Mode,
    parked: bool,
) -> Result<RequestId, VmiError> {
    request_with(core, app_conn, opts, (token, parked), |core, conn, kind| {
        send(core, conn, kind, parts, mode)
    })
}

/// Sends a request given as buffers (see [`crate::Operations::request_buffers`]).
pub(crate) fn request_given(
    core: &mut Core,
    app_conn: ConnId,
    bufs: Vec<Buffer>,
    opts: &RequestOptions,
    token: u64,
    mode: Mode,
) -> Result<RequestId, VmiError> {
    request_with(core, app_conn, opts, (token, false), |core, conn, kind| {
        send_given(core, conn, kind, bufs, mode)
    })
}

/// A request: checked, entered in the client's table, and sent by `send` (taken out of
/// the table again if that fails).
#[inline(always)]
fn request_with(
    core: &mut Core,
    app_conn: ConnId,
    opts: &RequestOptions,
    (token, parked): (u64, bool),
    send: impl FnOnce(&mut Core, ConnId, Kind) -> Result<u64, VmiError>,
) -> Result<RequestId, VmiError> {
    if opts.priority > MAX_PRIORITY {
        return Err(VmiError::Priority(opts.priority));
    }
    if opts.reply_max > MAX_MESSAGE {
        return Err(VmiError::MessageTooLarge {
            len: opts.reply_max,
            max: MAX_MESSAGE,
        });
    }
    let conn = core.cross.real(app_conn);
    let id = core.msg.client.issue(Pending {
        id: 0,
        conn,
        app_conn,
        token,
        reply_max: opts.reply_max,
        deadline: opts.timeout.map(|t| Instant::now() + t),
        message: core.engine.conns().tx_messages(conn),
        parked,
    });
    let kind = Kind::Request {
        id,
        reply_max: opts.reply_max as u32,
        priority: opts.priority,
    };
    if let Err(e) = send(core, conn, kind) {
        core.msg.client.take(id);
        return Err(e);
    }
    if opts.timeout.is_some() {
        // A deadline to watch in `poll` (an untimed request changes nothing it counts).
        core.refresh();
    }
    Ok(RequestId(id))
}

/// Cancels a waiting request: it ends with [`Status::Cancelled`] at the next poll and the
/// server is told to forget it. False when it is not waiting (answered already).
pub(crate) fn cancel(core: &mut Core, id: RequestId, mode: Mode) -> bool {
    let Some(p) = core.msg.client.take(id.0) else {
        return false;
    };
    tell_server_to_forget(core, &p, mode);
    let detail = "cancelled by this process".to_string();
    core.msg
        .done
        .push_back((p, Outcome::Failed(Status::Cancelled, detail)));
    core.refresh();
    true
}

/// The server forgets a request its client gave up (a lost cancel only leaves it waiting
/// for an answer nobody reads, within the server's limits).
fn tell_server_to_forget(core: &mut Core, p: &Pending, mode: Mode) {
    if let Err(e) = send_other(core, p.conn, Kind::Cancel { id: p.id }, &[], mode) {
        log::debug!(
            "{}: could not tell the server to forget a request: {e}",
            p.conn
        );
    }
}

/// Answers a held request with a reply or an error (see [`crate::Operations::reply`]).
pub(crate) fn answer(
    core: &mut Core,
    rcvid: ReceiveId,
    answer: Result<(i32, &[&[u8]]), i32>,
    mode: Mode,
) -> Result<(), VmiError> {
    let Some(h) = core.msg.server.get(rcvid.0) else {
        return Err(VmiError::UnknownRequest(rcvid));
    };
    let (conn, client_id, reply_max, written) = (h.conn, h.client_id, h.reply_max, h.reply.len());
    match answer {
        Ok((status, parts)) => {
            let len: usize = parts.iter().map(|p| p.len()).sum();
            if len.max(written) > reply_max {
                return Err(VmiError::ReplyTooLarge {
                    len: len.max(written),
                    max: reply_max,
                });
            }
            let kind = Kind::Reply {
                id: client_id,
                status,
            };
            if written > len {
                // Bytes written ahead of the reply (msg_write) past the reply's own: the
                // reply lands over the start of them, as QNX's MsgReply over MsgWrite.
                let mut all = h.reply.clone();
                let mut at = 0;
                for p in parts {
                    all[at..at + p.len()].copy_from_slice(p);
                    at += p.len();
                }
                send_other(core, conn, kind, &[&all], mode)?;
            } else {
                send(core, conn, kind, parts, mode)?;
            }
        }
        Err(code) => {
            send(
                core,
                conn,
                Kind::Error {
                    id: client_id,
                    code,
                },
                &[],
                mode,
            )?;
        }
    }
    core.msg.server.forget(rcvid.0);
    Ok(())
}

/// Answers a held request with a reply given as buffers (see
/// [`crate::Operations::reply_buffers`]): a large one is sent from the buffers; a small one,
/// or one that must land over bytes written ahead of it, as [`answer`] sends lent slices.
pub(crate) fn answer_given(
    core: &mut Core,
    rcvid: ReceiveId,
    status: i32,
    bufs: Vec<Buffer>,
    mode: Mode,
) -> Result<(), VmiError> {
    let mut parts = [&[][..]; crate::abi::VMI_IRB_MAX_SEGS];
    let parts = given_parts(&bufs, &mut parts)?;
    let Some(h) = core.msg.server.get(rcvid.0) else {
        return Err(VmiError::UnknownRequest(rcvid));
    };
    let (conn, client_id, reply_max, written) = (h.conn, h.client_id, h.reply_max, h.reply.len());
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len <= GIVEN_COPY_MAX || written > len || len > reply_max {
        // Copied, or refused, exactly as lent slices are.
        return answer(core, rcvid, Ok((status, parts)), mode);
    }
    let kind = Kind::Reply {
        id: client_id,
        status,
    };
    send_buffers(core, conn, kind, bufs, len, mode)?;
    core.msg.server.forget(rcvid.0);
    Ok(())
}

/// Reads a held request's bytes at `offset` (QNX `MsgRead`). `lent` is the request in the
/// callback running, if it was delivered at once: its bytes are still where they arrived.
pub(crate) fn read(
    core: &Core,
    lent: Option<(ReceiveId, &[u8])>,
    rcvid: ReceiveId,
    offset: usize,
    buf: &mut [u8],
) -> Result<usize, VmiError> {
    let h = core
        .msg
        .server
        .get(rcvid.0)
        .ok_or(VmiError::UnknownRequest(rcvid))?;
    let data: &[u8] = match (&h.data, lent) {
        (Some(d), _) => d,
        (None, Some((r, d))) if r == rcvid => d,
        // Only the request in the running callback has no bytes kept.
        (None, _) => &[],
    };
    let from = offset.min(data.len());
    let n = buf.len().min(data.len() - from);
    buf[..n].copy_from_slice(&data[from..from + n]);
    Ok(n)
}

/// Writes reply bytes at `offset` ahead of the reply (QNX `MsgWrite`); returns how many fit
/// in the client's reply size.
pub(crate) fn write(
    core: &mut Core,
    rcvid: ReceiveId,
    offset: usize,
    data: &[u8],
) -> Result<usize, VmiError> {
    let h = core
        .msg
        .server
        .get_mut(rcvid.0)
        .ok_or(VmiError::UnknownRequest(rcvid))?;
    if offset > h.reply_max {
        return Ok(0);
    }
    let n = data.len().min(h.reply_max - offset);
    if h.reply.len() < offset + n {
        h.reply.resize(offset + n, 0);
    }
    h.reply[offset..offset + n].copy_from_slice(&data[..n]);
    Ok(n)
}

/// Sends a pulse (see [`crate::Operations::pulse`]).
pub(crate) fn pulse(
    core: &mut Core,
    app_conn: ConnId,
    p: Pulse,
    mode: Mode,
) -> Result<(), VmiError> {
    if p.priority > MAX_PRIORITY {
        return Err(VmiError::Priority(p.priority));
    }
    let conn = core.cross.real(app_conn);
    let kind = Kind::Pulse {
        code: p.code,
        value: p.value,
        priority: p.priority,
    };
    send_other(core, conn, kind, &[], mode).map(|_| ())
}

/// A message-passing message arrived on `conn` (from either receive path). Answers are
/// delivered at once; requests and pulses are queued for [`deliver`], unless `now` says
/// nothing arrived with this one that could go ahead of it (the direct path's poll brought
/// only this fragment): then, with nothing queued either, they are delivered at once, a
/// request with its bytes where they arrived.
#[inline(always)]
pub(crate) fn received(
    core: &mut Core,
    handler: &mut dyn Handler,
    conn: ConnId,
    flags: u32,
    data: &[u8],
    now: bool,
) {
    let end = flags & VMI_FLAG_END != 0;
    let arrived = core.engine.conns_mut().rx_fragment(conn, end);
    match arrived {
        Some((true, _)) => handle(core, handler, conn, end, data, now),
        Some((false, _)) => {}
        None => log::debug!("{conn}: dropping a message that arrived after the connection closed"),
    }
}

/// [`received`] for a message that arrived alone (nothing that came with it could go ahead
/// of it): a request or pulse is delivered at once, where it lies, and then the queued ones
/// above the stream's priority, which go ahead of stream fragments that come after it.
#[inline(always)]
pub(crate) fn received_alone(
    core: &mut Core,
    handler: &mut dyn Handler,
    conn: ConnId,
    flags: u32,
    data: &[u8],
) {
    received(core, handler, conn, flags, data, true);
    core.run_deferred();
    if core.msg.has_queued() {
        deliver(core, handler, 1);
    }
}

/// As [`received`], for a message taken ahead of stream fragments that arrived before it
/// (see `direct`): the caller moves the connection's count of messages in arrival order.
pub(crate) fn received_early(
    core: &mut Core,
    handler: &mut dyn Handler,
    conn: ConnId,
    flags: u32,
    data: &[u8],
) {
    if core.engine.conns().is_live(conn) {
        handle(core, handler, conn, flags & VMI_FLAG_END != 0, data, false);
    }
}

/// Checks and acts on a message-passing message (`now`: see [`received`]).
#[inline(always)]
fn handle(
    core: &mut Core,
    handler: &mut dyn Handler,
    conn: ConnId,
    end: bool,
    data: &[u8],
    now: bool,
) {
    if !end {
        log::warn!(
            "{conn}: the peer sent a message-passing fragment that does not end its message; ignored"
        );
        return;
    }
    if core.rails.on() && core.rails.is_rail(conn) {
        log::warn!("{conn}: the peer sent a message-passing message on a rail; ignored");
        return;
    }
    if data
        .first()
        .is_some_and(|&k| k >= crate::rdma::wire::FIRST_KIND)
    {
        return crate::rdma::handle(core, handler, conn, data);
    }
    let (kind, payload) = match Kind::decode(data, MAX_MESSAGE) {
        Ok(k) => k,
        Err(e) => {
            log::warn!("{conn}: ignored a malformed message from the peer: {e}");
            return;
        }
    };
    match kind {
        Kind::Request {
            id,
            reply_max,
            priority,
        } => {
            let reply_max = (reply_max as usize).min(MAX_MESSAGE);
            let taken = if now && !core.msg.server.has_queued() {
                // A `match`, not `map` with a closure: the closure was not inlined (23
                // instructions per request, callgrind).
                match core
                    .msg
                    .server
                    .request_now(conn, id, priority, reply_max, payload.len())
                {
                    Ok(rcvid) => {
                        deliver_now(core, handler, rcvid, priority, payload);
                        Ok(())
                    }
                    Err(why) => Err(why),
                }
            } else {
                core.after = true;
                core.msg
                    .server
                    .request(conn, id, priority, reply_max, payload)
                    .map(|_| ())
            };
            if let Err(why) = taken {
                refuse(core, conn, id, why);
            }
        }
        Kind::Reply { id, status } => {
            let Some(p) = core.msg.client.answered(conn, id) else {
                log::debug!("{conn}: ignored an answer to no waiting request ({id})");
                return;
            };
            if payload.len() > p.reply_max {
                reply_too_large(core, handler, p, payload.len());
            } else {
                finish_data(core, handler, p, status, payload);
            }
        }
        other => handle_rare(core, handler, conn, other, now),
    }
}

/// Tells the client that its request was not taken.
#[cold]
fn refuse(core: &mut Core, conn: ConnId, id: u64, why: server::NotTaken) {
    log::warn!("{conn}: refused a request: {why:?}");
    let refusal = Kind::Refused {
        id,
        status: why.status(),
    };
    if let Err(e) = send_other(core, conn, refusal, &[], Mode::Deferred) {
        log::debug!("{conn}: could not send a refusal: {e}");
    }
}

/// A reply larger than its request takes: the request fails.
#[cold]
fn reply_too_large(core: &mut Core, handler: &mut dyn Handler, p: Pending, len: usize) {
    let detail = format!(
        "the server replied {len} bytes, more than the {} this request takes",
        p.reply_max
    );
    finish(core, handler, p, Outcome::Failed(Status::Protocol, detail));
}

/// [`handle`] for the kinds off the request/reply path: pulses, cancels, error answers and
/// refusals.
#[inline(never)]
fn handle_rare(core: &mut Core, handler: &mut dyn Handler, conn: ConnId, kind: Kind, now: bool) {
    match kind {
        Kind::Pulse {
            code,
            value,
            priority,
        } => {
            if now && !core.msg.server.has_queued() {
                let p = Pulse {
                    code,
                    value,
                    priority,
                };
                hand_pulse(core, handler, conn, p);
            } else {
                core.msg.server.pulse(conn, code, value, priority);
                core.after = true;
            }
        }
        Kind::Cancel { id } => {
            let Some(rcvid) = core.msg.server.find(conn, id) else {
                return;
            };
            if core.msg.server.take(rcvid).is_some_and(|h| h.delivered) {
                handler.request_gone(&mut Ctx::new(core), ReceiveId(rcvid), Status::Cancelled);
            }
        }
        Kind::Error { id, code } => {
            if let Some(p) = core.msg.client.answered(conn, id) {
                finish(core, handler, p, Outcome::Error(code));
            }
        }
        Kind::Refused { id, status } => {
            if let Some(p) = core.msg.client.answered(conn, id) {
                let detail = format!(
                    "the server's vmi did not take the request ({})",
                    status.describe()
                );
                finish(core, handler, p, Outcome::Failed(status, detail));
            }
        }
        Kind::Request { .. } | Kind::Reply { .. } => {}
    }
}

/// Delivers a reply with its bytes borrowed (no copy unless parked).
#[inline(always)]
fn finish_data(core: &mut Core, handler: &mut dyn Handler, p: Pending, status: i32, data: &[u8]) {
    if p.parked {
        core.msg
            .parked
            .insert(p.id, Outcome::Data(status, data.to_vec()));
    } else {
        let reply = Reply::Data {
            status,
            data: Slab::from_bytes(data),
        };
        let timed = p.deadline.is_some();
        handler.replied(&mut Ctx::new(core), p.app_conn, p.token, reply);
        if !timed {
            // Nothing `refresh` counts changed (operations the callback issued refresh
            // themselves).
            return;
        }
    }
    core.refresh();
}

/// Delivers how a request ended (or parks it for a blocking caller).
fn finish(core: &mut Core, handler: &mut dyn Handler, p: Pending, o: Outcome) {
    if p.parked {
        core.msg.parked.insert(p.id, o);
        core.refresh();
        return;
    }
    let reply = match &o {
        Outcome::Data(status, data) => Reply::Data {
            status: *status,
            data: Slab::from_bytes(data),
        },
        Outcome::Error(code) => Reply::Error { code: *code },
        Outcome::Failed(status, detail) => Reply::Failed {
            status: *status,
            detail,
        },
    };
    handler.replied(&mut Ctx::new(core), p.app_conn, p.token, reply);
    core.refresh();
}

/// The answer of a blocking request, once it is in.
pub(crate) fn take_parked(core: &mut Core, id: RequestId) -> Option<Result<Answer, VmiError>> {
    Some(match core.msg.parked.remove(&id.0)? {
        Outcome::Data(status, data) => Ok(Answer::Reply { status, data }),
        Outcome::Error(code) => Ok(Answer::Error(code)),
        Outcome::Failed(status, detail) => Err(VmiError::RequestFailed { status, detail }),
    })
}

/// The deadline of a waiting request, if it has one.
pub(crate) fn deadline(core: &Core, id: RequestId) -> Option<Instant> {
    core.msg.client.deadline(id.0)
}

/// The soonest deadline of a waiting request.
pub(crate) fn next_deadline(core: &Core) -> Option<Instant> {
    core.msg.client.next_deadline()
}

/// Delivers queued requests and pulses of priority `min` and above, highest first.
pub(crate) fn deliver(core: &mut Core, handler: &mut dyn Handler, min: u8) {
    while let Some((priority, what)) = core.msg.server.next(min) {
        match what {
            Incoming::Pulse { conn, code, value } => {
                let p = Pulse {
                    code,
                    value,
                    priority,
                };
                hand_pulse(core, handler, conn, p);
            }
            Incoming::Request(rcvid) => {
                let Some(h) = core.msg.server.get(rcvid) else {
                    continue;
                };
                // Shared with the held request, so the slab outlives a borrow of the core.
                let data = h
                    .data
                    .clone()
                    .unwrap_or_else(|| std::sync::Arc::from(&[][..]));
                hand_request(core, handler, rcvid, priority, &data, false);
            }
        }
        core.run_deferred();
    }
}

/// Delivers a request held by [`Server::request_now`] to the application with its bytes
/// where they arrived, and keeps a copy of them only if it was not answered in the callback.
#[inline(always)]
fn deliver_now(core: &mut Core, handler: &mut dyn Handler, rcvid: u64, priority: u8, data: &[u8]) {
    hand_request(core, handler, rcvid, priority, data, true);
    core.msg.server.keep(rcvid, data);
}

/// Gives held request `rcvid` to the application's `request` callback with its bytes,
/// `lent` when they are where they arrived (`msg_read` in the callback reads them there).
#[inline(always)]
fn hand_request(
    core: &mut Core,
    handler: &mut dyn Handler,
    rcvid: u64,
    priority: u8,
    data: &[u8],
    lent: bool,
) {
    let Some(h) = core.msg.server.get(rcvid) else {
        return;
    };
    let (conn, reply_max) = (h.conn, h.reply_max);
    let sender = peer(core, conn);
    let mut request = Request {
        id: ReceiveId(rcvid),
        conn: core.cross.app(conn),
        sender: &sender,
        priority,
        reply_max,
        data: Slab::from_bytes(data),
    };
    let lent = lent.then_some((ReceiveId(rcvid), data));
    handler.request(&mut Ctx::lending(core, lent), &mut request);
}

/// Gives a pulse from `conn` to the application's `pulse` callback.
fn hand_pulse(core: &mut Core, handler: &mut dyn Handler, conn: ConnId, p: Pulse) {
    let app = core.cross.app(conn);
    handler.pulse(&mut Ctx::new(core), app, p);
}

/// The peer of `conn` as a request's sender (looked up once per connection).
#[inline(always)]
fn peer(core: &mut Core, conn: ConnId) -> std::sync::Arc<Sender> {
    if let Some(Some((c, p))) = core.msg.peers.get(conn.index())
        && *c == conn
    {
        return p.clone();
    }
    look_up_peer(core, conn)
}

/// [`peer`] the first time: the sender's identity from the connection table and the
/// transport, kept by the handle's dense index.
#[inline(never)]
fn look_up_peer(core: &mut Core, conn: ConnId) -> std::sync::Arc<Sender> {
    let conns = core.engine.conns();
    let uid = conns
        .transport_of(conn)
        .and_then(|t| core.engine.get_attr(t as usize, "peer_uid"))
        .and_then(|v| v.parse().ok());
    let p = std::sync::Arc::new(Sender {
        key: conns.peer_key(conn).unwrap_or("").to_string(),
        host: conns.peer_host(conn).unwrap_or("").to_string(),
        uid,
    });
    let i = conn.index();
    if core.msg.peers.len() <= i {
        core.msg.peers.resize(i + 1, None);
    }
    core.msg.peers[i] = Some((conn, p.clone()));
    p
}

/// Timeouts and answers found outside a poll (cancels), run from `poll`.
pub(crate) fn background(core: &mut Core, handler: &mut dyn Handler) {
    if core.msg.client.timed() {
        for p in core.msg.client.expired(Instant::now()) {
            tell_server_to_forget(core, &p, Mode::Deferred);
            let detail = "the server did not answer in time".to_string();
            core.msg
                .done
                .push_back((p, Outcome::Failed(Status::Timeout, detail)));
        }
    }
    while let Some((p, o)) = core.msg.done.pop_front() {
        finish(core, handler, p, o);
        core.run_deferred();
    }
    core.refresh();
}

/// A connection closed: its waiting requests fail, and its held requests are forgotten
/// (the application hears of those it was given).
pub(crate) fn conn_closed(core: &mut Core, handler: &mut dyn Handler, conn: ConnId, local: bool) {
    if let Some(slot) = core.msg.peers.get_mut(conn.index()) {
        *slot = None;
    }
    let (status, detail) = if local {
        (
            Status::Cancelled,
            "the connection was closed by this process",
        )
    } else {
        (
            Status::ConnectionLost,
            "the connection closed before the server answered",
        )
    };
    for p in core.msg.client.conn_closed(conn) {
        finish(
            core,
            handler,
            p,
            Outcome::Failed(status, detail.to_string()),
        );
    }
    for rcvid in core.msg.server.conn_closed(conn) {
        handler.request_gone(&mut Ctx::new(core), ReceiveId(rcvid), status);
    }
}

/// The peer could not receive message `message` that this side sent on `conn`: if it was
/// a request, the request fails; if a reply, its client is told. True when it was one.
pub(crate) fn message_failed(
    core: &mut Core,
    handler: &mut dyn Handler,
    conn: ConnId,
    message: u64,
    status: Status,
    detail: &str,
) -> bool {
    if let Some(p) = core.msg.client.by_message(conn, message) {
        let detail = format!("the server could not receive the request: {detail}");
        finish(core, handler, p, Outcome::Failed(status, detail));
        return true;
    }
    let Some(what) = core.msg.sent.take(conn, message) else {
        return false;
    };
    match what {
        Sent::Answer(client_id) => {
            // The client waits for an answer that will not come whole: fail its request.
            let refusal = Kind::Refused {
                id: client_id,
                status,
            };
            if let Err(e) = send_other(core, conn, refusal, &[], Mode::Deferred) {
                log::debug!("{conn}: could not tell the client its reply failed: {e}");
            }
        }
        Sent::Notice | Sent::Taken => {
            log::warn!("{conn}: a pulse or notice to the peer failed on its way: {detail}");
        }
    }
    true
}
