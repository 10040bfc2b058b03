//! Delivering outcomes to the application's [`Handler`]: every callback runs from here, from
//! inside `Vmi::poll`/`Vmi::wait`, never from inside a device.
#![forbid(unsafe_code)]

use std::cell::Cell;

use crate::abi::{
    VMI_FLAG_END, VMI_OP_ACCEPT, VMI_OP_CONNECT_REQUEST, VMI_OP_PEER_DISCONNECT, VMI_OP_RECV,
    VMI_OP_REJECT,
};
use crate::conn::ConnId;
use crate::ctx::Ctx;
use crate::handler::{
    ConnectOutcome, ConnectRequest, Decision, Disconnect, Handler, Recv, SendCompletion,
};
use crate::ops::{Core, MAX_CONNECT_DATA};
use crate::slab::Slab;
use crate::slot::{Purpose, Slot};
use crate::status::Status;

/// Delivers queued outcomes; returns how many. Bounded per call, so devices keep making
/// progress under a flood of events.
pub(crate) fn dispatch(core: &mut Core, handler: &mut dyn Handler) -> usize {
    if core.engine.outcomes() == 0 {
        return 0;
    }
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

fn deliver(core: &mut Core, handler: &mut dyn Handler, mut s: Slot) {
    let conn = ConnId(s.conn_raw());
    let status = s.status();
    match s.purpose() {
        Purpose::Send => {
            let detail = s.take_detail();
            let mut done = SendCompletion {
                status,
                token: s.token(),
                detail: &detail,
                bufs: s.buffers_mut(),
            };
            handler.send_complete(&mut Ctx::new(core), conn, &mut done);
            core.engine.free(s);
        }
        Purpose::Connect => {
            core.engine
                .conns_mut()
                .connect_finished(conn, status == Status::Ok);
            let reply = Slab::of_slot(&s);
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
            core.engine.free(s);
        }
        Purpose::Disconnect => {
            core.engine.conns_mut().closed(conn);
            let reason = if status == Status::Ok {
                Disconnect::Local
            } else {
                Disconnect::Error {
                    status,
                    detail: s.take_detail(),
                }
            };
            handler.disconnected(&mut Ctx::new(core), conn, reason);
            core.engine.free(s);
        }
        Purpose::Received => deliver_received(core, handler, s),
    }
}

fn deliver_received(core: &mut Core, handler: &mut dyn Handler, s: Slot) {
    let conn = ConnId(s.conn_raw());
    let status = s.status();
    if s.unwound() {
        // A device finished the IRB on its way up: with success it consumed it (a fault
        // injector dropping a fragment); otherwise it failed it (a CRC mismatch).
        if status != Status::Ok {
            handler.receive_failed(&mut Ctx::new(core), conn, status, s.detail());
        }
        core.engine.free(s);
        return;
    }
    match s.op() {
        VMI_OP_RECV => receive(core, handler, s, conn),
        VMI_OP_CONNECT_REQUEST => connect_request(core, handler, s, conn),
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
                handler.disconnected(&mut Ctx::new(core), conn, reason);
            }
            core.engine.release_received(s);
        }
        other => {
            log::error!("a transport handed up an IRB with unknown op {other}; dropped");
            core.engine.release_received(s);
        }
    }
}

fn receive(core: &mut Core, handler: &mut dyn Handler, s: Slot, conn: ConnId) {
    if !core.engine.conns().is_live(conn) {
        log::debug!("{conn}: dropping a fragment that arrived after the connection closed");
        core.engine.release_received(s);
        return;
    }
    let cmd = if s.flags() & VMI_FLAG_END != 0 {
        Recv::End
    } else {
        Recv::Fragment
    };
    let releases = core.engine.releases().clone();
    let grabbed = Cell::new(false);
    {
        let mut slab = Slab::received(&s, &releases, &grabbed);
        handler.receive(&mut Ctx::new(core), conn, cmd, &mut slab);
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
    let decision = {
        let mut req = ConnectRequest {
            conn,
            peer_key: s.peer_key(),
            peer_host: s.peer_host(),
            data: Slab::of_slot(&s),
        };
        handler.accept(&mut Ctx::new(core), &mut req)
    };
    let transport = s.transport();
    core.engine.release_received(s);
    let (op, reply) = match decision {
        Decision::Accept(r) => (VMI_OP_ACCEPT, r),
        Decision::Reject(r) => (VMI_OP_REJECT, r),
    };
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
    if !reply.is_empty() {
        a.attach_vec(reply);
    }
    core.deferred.push_back(a);
}
