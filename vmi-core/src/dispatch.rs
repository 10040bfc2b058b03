//! Delivering outcomes to the application's [`Handler`]: every callback runs from here, from
//! inside `Vmi::poll`/`Vmi::wait`, never from inside a device.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::sync::Arc;

use crate::abi::{
    VMI_FLAG_END, VMI_FLAG_HOST, VMI_FLAG_MSG, VMI_OP_ACCEPT, VMI_OP_CONNECT_REQUEST,
    VMI_OP_PEER_DISCONNECT, VMI_OP_RECV, VMI_OP_REJECT, VMI_OP_SEND,
};
use crate::conn::ConnId;
use crate::ctx::Ctx;
use crate::handler::{
    ConnectOutcome, ConnectRequest, Decision, Disconnect, Handler, Recv, SendCompletion,
};
use crate::ops::{Core, MAX_CONNECT_DATA};
use crate::retry::Verdict;
use crate::slab::{Releases, Slab};
use crate::slot::{Purpose, Slot};
use crate::status::Status;
use vmi_device::hostmsg::HostMsg;

/// Delivers queued outcomes; returns how many. Bounded per call, so devices keep making
/// progress under a flood of events.
#[inline]
pub(crate) fn dispatch(core: &mut Core, handler: &mut dyn Handler) -> usize {
    if core.engine.outcomes() == 0 {
        return 0;
    }
    dispatch_queued(core, handler)
}

#[inline(never)]
fn dispatch_queued(core: &mut Core, handler: &mut dyn Handler) -> usize {
    let mut n = 0;
    let budget = core.engine.outcomes().max(1) * 4 + 64;
    while let Some(s) = core.engine.pop_outcome() {
        deliver(core, handler, s);
        core.run_deferred();
        n += 1;
        if n >= budget {
            break;
        }
    }
    n
}

fn deliver(core: &mut Core, handler: &mut dyn Handler, s: Slot) {
    let purpose = s.purpose();
    deliver_purpose(core, handler, s);
    if matches!(
        purpose,
        Purpose::Connect
            | Purpose::Answer
            | Purpose::Disconnect
            | Purpose::Abort
            | Purpose::Internal
    ) {
        // Retries, bonds and aliases change only on these (and connect requests and peer
        // closes): the fast paths' summary is brought up to date.
        core.refresh();
    }
}

fn deliver_purpose(core: &mut Core, handler: &mut dyn Handler, mut s: Slot) {
    let conn = ConnId(s.conn_raw());
    let status = s.status();
    match s.purpose() {
        Purpose::Send | Purpose::SendInline => {
            let detail = s.take_detail();
            let mut done = SendCompletion {
                status,
                token: s.token(),
                detail: &detail,
                bufs: s.buffers_mut(),
            };
            let app = core.cross.app(conn);
            handler.send_complete(&mut Ctx::new(core), app, &mut done);
            core.engine.free(s);
        }
        Purpose::Connect => {
            if !core.retries.is_empty() {
                match core
                    .retries
                    .finished(conn, status, s.detail(), std::time::Instant::now())
                {
                    // The peer is not there yet: another attempt later, nothing to say now.
                    Verdict::Again => {
                        core.engine.free(s);
                        return;
                    }
                    Verdict::Deliver(Some(note)) => {
                        let detail = format!("{}{note}", s.detail());
                        s.set_detail(detail);
                    }
                    Verdict::Deliver(None) => {}
                }
            }
            let peer = core.engine.conns().peer_key(conn).unwrap_or("").to_string();
            core.engine
                .conns_mut()
                .connect_finished(conn, status == Status::Ok);
            let raw = Slab::of_slot(&s).read_to_vec();
            let (kind, id, reply) = crate::cross::split(&raw);
            let ok = status == Status::Ok;
            let now = std::time::Instant::now();
            match core.cross.connected(conn, &peer, status, (kind, id), now) {
                crate::cross::Outcome::Quiet => {
                    core.engine.free(s);
                    return;
                }
                crate::cross::Outcome::Close => {
                    core.engine.free(s);
                    crate::rails::close_quietly(core, conn);
                    return;
                }
                crate::cross::Outcome::Deliver => {}
            }
            if ok {
                core.ping_if_due(conn);
            }
            let app;
            let reply = if core.rails.on() {
                match crate::rails::connected(core, handler, conn, status, reply) {
                    Some(a) => {
                        app = a;
                        &app[..]
                    }
                    None => {
                        core.engine.free(s);
                        return;
                    }
                }
            } else {
                reply
            };
            let reply = Slab::from_bytes(reply);
            let outcome = match status {
                Status::Ok => ConnectOutcome::Accepted(reply),
                Status::Rejected => ConnectOutcome::Rejected(reply),
                _ => ConnectOutcome::Failed {
                    status,
                    detail: s.detail(),
                },
            };
            handler.connected(&mut Ctx::new(core), conn, outcome, s.token());
            core.engine.free(s);
        }
        Purpose::Answer => {
            let accepted = s.op() == VMI_OP_ACCEPT && status == Status::Ok;
            if status != Status::Ok {
                log::warn!(
                    "{conn}: answering the connect request failed: {status}: {}",
                    s.detail()
                );
            }
            core.engine.conns_mut().answer_finished(conn, accepted);
            if s.op() == VMI_OP_ACCEPT && status != Status::Ok && !core.rails.is_rail(conn) {
                // The application accepted this connection and it never opened (the peer
                // gave up before the answer reached it): it hears that it ended.
                let reason = Disconnect::Error {
                    status,
                    detail: format!("the connection ended before it opened: {}", s.detail()),
                };
                if !core.cross.is_answering(conn) {
                    handler.disconnected(&mut Ctx::new(core), conn, reason);
                }
            }
            if accepted {
                core.ping_if_due(conn);
            }
            if core.rails.on() {
                crate::rails::answered(core, conn, accepted);
            }
            if let Some((mine, token)) = core.cross.answered(conn, accepted) {
                core.refresh();
                // This process's own connect, carried by the peer's (they crossed).
                let outcome = if accepted {
                    ConnectOutcome::Accepted(Slab::from_bytes(&[]))
                } else {
                    ConnectOutcome::Failed {
                        status,
                        detail: s.detail(),
                    }
                };
                handler.connected(&mut Ctx::new(core), mine, outcome, token);
            }
            core.engine.free(s);
        }
        Purpose::Disconnect => {
            // An abort may have ended the close: it says how the connection ended.
            let ending = core.engine.conns_mut().take_ending(conn);
            if !core.engine.conns_mut().closed(conn) {
                // Its end was reported already (an abort's completion came first).
                core.engine.free(s);
                return;
            }
            let reason = if status == Status::Ok {
                Disconnect::Local
            } else {
                Disconnect::Error {
                    status,
                    detail: s.take_detail(),
                }
            };
            core.engine.free(s);
            ended(core, handler, conn, crate::timeouts::reason(ending, reason));
        }
        Purpose::Abort => {
            core.engine.free(s);
            if !core.engine.conns().is_live(conn) {
                // Its close completed first and reported the end.
                return;
            }
            if status != Status::Ok {
                // A transport of device ABI < 1.5 cannot abort: it closes in order instead
                // (what it holds still completes, later).
                let transport = core.engine.conns().transport_of(conn);
                log::warn!(
                    "{conn}: the transport cannot abort a connection ({status}); it is closed in order instead"
                );
                if let Some(t) = transport {
                    let mut d = core.engine.new_slot();
                    d.set_op(crate::abi::VMI_OP_DISCONNECT);
                    d.set_conn_raw(conn.raw());
                    d.set_purpose(Purpose::Disconnect);
                    d.set_transport(t);
                    d.set_chain(core.engine.conns().chain(conn));
                    core.issue(d, crate::ops::Mode::Deferred);
                }
                return;
            }
            let ending = core.engine.conns_mut().take_ending(conn);
            core.engine.conns_mut().closed(conn);
            ended(
                core,
                handler,
                conn,
                crate::timeouts::reason(ending, Disconnect::Local),
            );
        }
        Purpose::Received => deliver_received(core, handler, s),
        Purpose::RailChunk => {
            crate::rails::chunk_sent(core, &s);
            core.engine.free(s);
        }
        Purpose::RailControl => {
            if status != Status::Ok {
                log::debug!("{conn}: a rail control record failed: {status}");
            }
            core.engine.free(s);
        }
        Purpose::Internal => {
            if s.op() == crate::abi::VMI_OP_DISCONNECT {
                // A connection closed with no callback (a rail, a dropped crossing connect).
                core.engine.conns_mut().closed(conn);
            }
            if status != Status::Ok {
                log::debug!("{conn}: a message to the peer's engine failed: {status}");
            }
            core.engine.free(s);
        }
    }
}

/// A connection ended: its bond hears of it if it is a rail, else the application (under
/// the handle it knows the connection by).
fn ended(core: &mut Core, handler: &mut dyn Handler, conn: ConnId, reason: Disconnect) {
    if core.rails.on() && core.rails.is_rail(conn) {
        return crate::rails::rail_closed(core, handler, conn, reason);
    }
    let app = core.cross.app(conn);
    core.cross.closed(conn);
    crate::msgpass::conn_closed(core, handler, conn, reason == Disconnect::Local);
    crate::rdma::conn_closed(core, handler, conn, reason == Disconnect::Local);
    core.refresh();
    handler.disconnected(&mut Ctx::new(core), app, reason);
}

/// Queues a message to the peer's engine on `conn`.
pub(crate) fn send_host_msg(core: &mut Core, conn: ConnId, msg: &HostMsg) {
    let Some(transport) = core.engine.conns().transport_of(conn) else {
        return;
    };
    let mut s = core.engine.new_slot();
    s.set_op(VMI_OP_SEND);
    s.set_conn_raw(conn.raw());
    s.set_flags(VMI_FLAG_END | VMI_FLAG_HOST);
    s.set_purpose(Purpose::Internal);
    s.set_transport(transport);
    s.attach_vec(msg.encode());
    core.deferred.push_back(s);
}

/// A received message failed: the application and the sender hear of it once, and the
/// rest of the message is discarded.
fn message_failed_here(
    core: &mut Core,
    handler: &mut dyn Handler,
    conn: ConnId,
    flags: u32,
    status: Status,
    detail: &str,
) {
    if flags & VMI_FLAG_HOST != 0 || !core.engine.conns().is_live(conn) {
        // A lost host message is not reported (no loops of notices).
        return;
    }
    let end = flags & VMI_FLAG_END != 0;
    let Some(message) = core.engine.conns_mut().rx_failed(conn, end) else {
        return;
    };
    // A rail's lost chunk is sent again by the peer (told below): the application hears
    // nothing unless it is lost on every try. A request, reply or pulse is not the
    // application's stream: the sender's host handles the notice (see `msgpass`).
    if flags & VMI_FLAG_MSG == 0 && !(core.rails.on() && core.rails.is_rail(conn)) {
        let app = core.cross.app(conn);
        handler.receive_failed(&mut Ctx::new(core), app, status, detail);
    }
    let notice = HostMsg::MessageFailed {
        message,
        status,
        detail: detail.to_string(),
    };
    send_host_msg(core, conn, &notice);
}

/// A message from the peer's engine.
fn host_message(core: &mut Core, handler: &mut dyn Handler, s: Slot, conn: ConnId) {
    let bytes = Slab::of_slot(&s).read_to_vec();
    let flags = s.flags();
    core.engine.release_received(s);
    match HostMsg::decode(&bytes) {
        Ok(HostMsg::MessageFailed {
            message,
            status,
            detail,
        }) => {
            if message >= core.engine.conns().tx_messages(conn) {
                log::warn!(
                    "{conn}: the peer reports a failure of message {message}, which this side never sent; ignored"
                );
                return;
            }
            if crate::msgpass::message_failed(core, handler, conn, message, status, &detail)
                || crate::rdma::message_failed(core, handler, conn, message, status, &detail)
            {
                return;
            }
            if core.rails.on() && core.rails.is_rail(conn) {
                crate::rails::chunk_lost(core, handler, conn, message);
                return;
            }
            let app = core.cross.app(conn);
            handler.message_failed(&mut Ctx::new(core), app, message, status, &detail);
        }
        Ok(HostMsg::Ping { stamp }) => send_host_msg(core, conn, &HostMsg::Pong { stamp }),
        Ok(HostMsg::Pong { stamp }) => {
            let now = core.clock_ns();
            if !core.engine.conns_mut().pong(conn, stamp, now) {
                log::debug!("{conn}: ignored a pong that answers no ping of this side");
            }
        }
        Ok(HostMsg::FragmentLost { detail }) => {
            let flags = flags & !VMI_FLAG_HOST;
            let detail = format!("a fragment was lost before it reached this process: {detail}");
            message_failed_here(core, handler, conn, flags, Status::Lost, &detail);
        }
        Err(e) => log::warn!("{conn}: ignored a malformed message from the peer's engine: {e}"),
    }
}

fn deliver_received(core: &mut Core, handler: &mut dyn Handler, s: Slot) {
    let conn = ConnId(s.conn_raw());
    let status = s.status();
    if s.unwound() {
        // A device finished the IRB on its way up: with success it consumed it (a filter's
        // own message); otherwise it failed it (a CRC mismatch, a lost fragment), and with it
        // the whole message.
        if status != Status::Ok && s.op() == VMI_OP_RECV {
            let (flags, detail) = (s.flags(), s.detail().to_string());
            core.engine.free(s);
            message_failed_here(core, handler, conn, flags, status, &detail);
        } else {
            core.engine.free(s);
        }
        return;
    }
    match s.op() {
        VMI_OP_RECV => receive(core, handler, s, conn),
        VMI_OP_CONNECT_REQUEST => {
            connect_request(core, handler, s, conn);
            // Aliases and bonds made here, and retries taken over, change the summary.
            core.refresh();
        }
        VMI_OP_PEER_DISCONNECT => {
            let was_live = core.engine.conns_mut().closed(conn);
            if was_live {
                let reason = if status == Status::Ok {
                    Disconnect::Peer
                } else {
                    Disconnect::Error {
                        status,
                        detail: s.detail().to_string(),
                    }
                };
                core.engine.release_received(s);
                return ended(core, handler, conn, reason);
            }
            core.engine.release_received(s);
        }
        other => {
            log::error!("a transport handed up an IRB with unknown op {other}; dropped");
            core.engine.release_received(s);
        }
    }
}

/// A fragment a transport handed over with no IRB (see `direct`), delivered to the
/// application as `receive` does for an IRB. `releases` and `held` are the engine's (kept by
/// the caller, so nothing is cloned per fragment): a grab of the slab counts in them.
/// Inlined into the direct path's loop (it was, until its size passed the heuristics').
#[inline(always)]
pub(crate) fn receive_lent(
    core: &mut Core,
    handler: &mut dyn Handler,
    lent: (u64, u32, &[u8]),
    releases: &Arc<Releases>,
    held: &crate::services::Count,
) {
    let (raw, flags, data) = lent;
    let conn = ConnId(raw);
    let end = flags & VMI_FLAG_END != 0;
    let Some((deliver, _)) = core.engine.conns_mut().rx_fragment(conn, end) else {
        log::debug!("{conn}: dropping a fragment that arrived after the connection closed");
        return;
    };
    if !deliver {
        // The rest of a failed message.
        return;
    }
    if core.routed {
        return receive_lent_routed(core, handler, (conn, end, data), releases, held);
    }
    let cmd = if end { Recv::End } else { Recv::Fragment };
    let grabbed = Cell::new(false);
    let mut slab = Slab::lent(data, releases, &grabbed, held);
    handler.receive(&mut Ctx::new(core), conn, cmd, &mut slab);
}

/// `receive_lent` for a connection that may be a rail or stand under another handle.
#[inline(never)]
fn receive_lent_routed(
    core: &mut Core,
    handler: &mut dyn Handler,
    (conn, end, data): (ConnId, bool, &[u8]),
    releases: &Arc<Releases>,
    held: &crate::services::Count,
) {
    if core.rails.on() && core.rails.is_rail(conn) {
        return crate::rails::received(core, handler, conn, data);
    }
    let cmd = if end { Recv::End } else { Recv::Fragment };
    let grabbed = Cell::new(false);
    let mut slab = Slab::lent(data, releases, &grabbed, held);
    let app = core.cross.app(conn);
    handler.receive(&mut Ctx::new(core), app, cmd, &mut slab);
}

/// A request, reply or pulse that came up the receive chain (see `msgpass`). Out of line,
/// so the stream's receive path stays as small as it was.
#[inline(never)]
fn receive_msg(core: &mut Core, handler: &mut dyn Handler, s: Slot, conn: ConnId) {
    // The last outcome of this dispatch: nothing that arrived with it could go ahead of it,
    // so a request (or pulse) is delivered at once, where it lies, as the direct path does
    // with a message alone in its poll; otherwise it is queued (with a copy of its bytes)
    // and delivered by priority. A large request delivered at once costs no copy and no
    // allocation of its size unless its callback keeps it.
    let now = core.engine.outcomes() == 0;
    let mut slab = Slab::of_slot(&s);
    let first = slab.read(usize::MAX);
    let gathered;
    let data = if slab.remaining() == 0 {
        first
    } else {
        gathered = Slab::of_slot(&s).read_to_vec();
        &gathered[..]
    };
    if now {
        crate::msgpass::received_alone(core, handler, conn, s.flags(), data);
    } else {
        crate::msgpass::received(core, handler, conn, s.flags(), data, false);
    }
    core.engine.release_received(s);
}

fn receive(core: &mut Core, handler: &mut dyn Handler, s: Slot, conn: ConnId) {
    if !core.engine.conns().is_live(conn) {
        log::debug!("{conn}: dropping a fragment that arrived after the connection closed");
        core.engine.release_received(s);
        return;
    }
    if s.flags() & VMI_FLAG_HOST != 0 {
        return host_message(core, handler, s, conn);
    }
    if s.flags() & VMI_FLAG_MSG != 0 {
        return receive_msg(core, handler, s, conn);
    }
    let end = s.flags() & VMI_FLAG_END != 0;
    let deliver = core.engine.conns_mut().rx_fragment(conn, end);
    if deliver.is_none_or(|(d, _)| !d) {
        // The rest of a failed message.
        core.engine.release_received(s);
        return;
    }
    if core.rails.on() && core.rails.is_rail(conn) {
        let mut slab = Slab::of_slot(&s);
        let first = slab.read(usize::MAX);
        if slab.remaining() == 0 {
            crate::rails::received(core, handler, conn, first);
        } else {
            let bytes = Slab::of_slot(&s).read_to_vec();
            crate::rails::received(core, handler, conn, &bytes);
        }
        core.engine.release_received(s);
        return;
    }
    let cmd = if end { Recv::End } else { Recv::Fragment };
    let releases = core.engine.releases().clone();
    let grabbed = Cell::new(false);
    {
        let mut slab = Slab::received(&s, &releases, &grabbed);
        let app = core.cross.app(conn);
        handler.receive(&mut Ctx::new(core), app, cmd, &mut slab);
    }
    if grabbed.get() {
        // The GrabbedSlab owns the slot now; it hands the address back when dropped.
        let _ = s.into_raw();
    } else {
        core.engine.release_received(s);
    }
}

fn connect_request(core: &mut Core, handler: &mut dyn Handler, s: Slot, conn: ConnId) {
    core.engine
        .conns_mut()
        .request_seen(conn, s.peer_host(), s.peer_key());
    let raw = Slab::of_slot(&s).read_to_vec();
    let transport = s.transport();
    let key = s.peer_key().to_string();
    let host = s.peer_host().to_string();
    core.engine.release_received(s);
    let (kind, id, data) = crate::cross::split(&raw);
    let (chain, data) = match core.chains.split(kind == crate::cross::NAMED, data) {
        crate::chains::Requested::Default(d) => (0, d),
        crate::chains::Requested::Chain(n, d) => (n, d),
        crate::chains::Requested::Refused(why) => {
            log::warn!("{conn}: refused '{key}' at {host}: {why}");
            let plain = (crate::cross::PLAIN, 0);
            return answer(
                core,
                conn,
                transport,
                VMI_OP_REJECT,
                plain,
                why.into_bytes(),
            );
        }
    };
    if chain != 0 {
        // A connect on a named chain is not a crossing candidate (see `Core::connect`).
        core.engine.conns_mut().set_chain(conn, chain);
        return accept_on_chain(core, handler, (conn, transport), (&key, &host), chain, data);
    }
    let (decided, superseded) = {
        let table = core.engine.conns();
        core.cross.request(conn, &key, id, |c| {
            Some((table.state(c)?, table.peer_key(c)?.to_string()))
        })
    };
    if let Some(mine) = superseded {
        // This process's own connect to the peer is carried by this one now.
        core.retries.remove(mine);
    }
    match decided {
        crate::cross::Answer::Accept(kind, id) => {
            return answer(core, conn, transport, VMI_OP_ACCEPT, (kind, id), Vec::new());
        }
        crate::cross::Answer::Reject(kind, id, why) => {
            let why = why.as_bytes().to_vec();
            return answer(core, conn, transport, VMI_OP_REJECT, (kind, id), why);
        }
        crate::cross::Answer::App => {}
    }
    if core.rails.on() {
        let peer = (key.as_str(), host.as_str());
        let (op, reply) = crate::rails::request(core, handler, conn, transport, peer, data);
        return answer(core, conn, transport, op, (crate::cross::PLAIN, 0), reply);
    }
    accept_on_chain(core, handler, (conn, transport), (&key, &host), 0, data);
}

/// Asks the application's accept handler about a connection on chain `chain` and answers.
fn accept_on_chain(
    core: &mut Core,
    handler: &mut dyn Handler,
    (conn, transport): (ConnId, crate::slot::DevIndex),
    (key, host): (&str, &str),
    chain: u8,
    data: &[u8],
) {
    let name = core.chains.name(chain).to_string();
    let decision = {
        let mut req = ConnectRequest {
            conn,
            peer_key: key,
            peer_host: host,
            data: Slab::from_bytes(data),
            chain: &name,
        };
        handler.accept(&mut Ctx::new(core), &mut req)
    };
    let (op, reply) = match decision {
        Decision::Accept(r) => (VMI_OP_ACCEPT, r),
        Decision::Reject(r) => (VMI_OP_REJECT, r),
    };
    answer(core, conn, transport, op, (crate::cross::PLAIN, 0), reply);
}

/// Queues the answer to a connect request.
fn answer(
    core: &mut Core,
    conn: ConnId,
    transport: crate::slot::DevIndex,
    op: u32,
    (kind, id): (u8, u64),
    reply: Vec<u8>,
) {
    let reply = if reply.len() > MAX_CONNECT_DATA {
        log::error!(
            "{conn}: accept handler's reply data of {} bytes is over the {MAX_CONNECT_DATA}-byte limit; sending none",
            reply.len()
        );
        Vec::new()
    } else {
        reply
    };
    let mut a = core.engine.new_slot();
    a.set_op(op);
    a.set_conn_raw(conn.raw());
    a.set_purpose(Purpose::Answer);
    a.set_transport(transport);
    a.set_chain(core.engine.conns().chain(conn));
    a.attach_vec(crate::cross::wrap(kind, id, &reply));
    core.deferred.push_back(a);
}

/// Connects that waited for a crossing peer's connect that never came: the application
/// hears that they failed.
pub(crate) fn cross_expired(core: &mut Core, handler: &mut dyn Handler) {
    for (conn, token) in core.cross.expired(std::time::Instant::now()) {
        let outcome = ConnectOutcome::Failed {
            status: Status::Timeout,
            detail: "the peer connected to this process at the same moment and its connect, which was to carry this one, did not arrive",
        };
        handler.connected(&mut Ctx::new(core), conn, outcome, token);
    }
}
