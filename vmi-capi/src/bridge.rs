//! The core's callbacks, turned into the application's C callbacks. Each C callback runs
//! inside `VMI_Poll` with no table borrowed, and the VMI calls it makes go through the
//! callback's `Ctx` (see `state`).

use vmi_core::{
    ConnId, ConnectOutcome, ConnectRequest, Ctx, Decision, Disconnect, Handler, Recv,
    SendCompletion, Slab, Status,
};

use crate::handle::{Handle, to_ptr};
use crate::state::{self, Conn, ConnState, Pending, SlabEntry, SlabView, as_callback};
use crate::status;
use crate::types::*;

/// The application's C callbacks as the core's [`Handler`].
pub(crate) struct Bridge;

/// Reply data a C connect callback can be shown (its size is a `USHORT`).
const MAX_C_REPLY: usize = u16::MAX as usize;

fn conn_handle(id: ConnId) -> Option<Handle> {
    state::tables(|t| t.by_id.get(&id).copied())
}

/// Lends the callback's slab to C for the duration of `f`.
fn lend_slab<R>(slab: &mut Slab<'_>, f: impl FnOnce(Handle) -> R) -> (R, Handle) {
    let p = std::ptr::from_mut(slab).cast::<Slab<'static>>();
    let h = state::tables(|t| {
        t.slabs.insert(SlabEntry {
            view: SlabView::Borrowed(p),
            copies: Vec::new(),
        })
    });
    (f(h), h)
}

impl Handler for Bridge {
    fn accept(&mut self, ctx: &mut Ctx<'_>, request: &mut ConnectRequest<'_>) -> Decision {
        let Some(f) = state::tables(|t| t.accept_fn) else {
            log::warn!(
                "refused a connection from key '{}' at {}: this process set no accept function (VMI_Connection_Accept_Fn)",
                request.peer_key,
                request.peer_host
            );
            return Decision::Reject(b"the process accepts no connections".to_vec());
        };
        let conn = state::tables(|t| {
            let mut c = Conn::new(ConnState::Accepted);
            c.id = Some(request.conn);
            c.remote = Some((request.peer_host.to_string(), request.peer_key.to_string()));
            let h = t.conns.insert(c);
            t.by_id.insert(request.conn, h);
            h
        });
        let size = request.data.len() as ULONG;
        let (answer, slab) = lend_slab(&mut request.data, |slab| {
            // SAFETY: `f` is the application's accept function, called with a live
            // connection handle and a slab handle valid until it returns.
            as_callback(ctx, || unsafe { f(to_ptr(conn), to_ptr(slab), size) })
        });
        state::tables(|t| t.slabs.remove(slab));
        if answer == VMI_CONNECT_RESPONSE_ACCEPT {
            return Decision::Accept(Vec::new());
        }
        if answer != VMI_CONNECT_RESPONSE_REJECT {
            log::info!(
                "the accept function answered {answer} (not ACCEPT) to key '{}'; refusing",
                request.peer_key
            );
        }
        state::tables(|t| {
            t.conns.remove(conn);
            t.by_id.remove(&request.conn);
        });
        Decision::Reject(Vec::new())
    }

    fn connected(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: ConnId,
        outcome: ConnectOutcome<'_>,
        token: u64,
    ) {
        let conn = token;
        let (answer, mut reply) = match outcome {
            ConnectOutcome::Accepted(mut s) => (VMI_CONNECT_RESPONSE_ACCEPT, s.read_to_vec()),
            ConnectOutcome::Rejected(mut s) => (VMI_CONNECT_RESPONSE_REJECT, s.read_to_vec()),
            ConnectOutcome::Failed { status, detail } => {
                status::set_last(
                    status::of(status),
                    &format!("VMI_Connection_Issue: {status}: {detail}"),
                );
                (VMI_CONNECT_RESPONSE_ERROR, Vec::new())
            }
        };
        if reply.len() > MAX_C_REPLY {
            log::warn!(
                "{id}: the peer's reply data of {} bytes is cut to the {MAX_C_REPLY} a C callback can be given",
                reply.len()
            );
            reply.truncate(MAX_C_REPLY);
        }
        let (issued, closing) = state::tables(|t| {
            let Some(c) = t.conns.get_mut(conn) else {
                return (None, None);
            };
            let issued = c.issued.take();
            let mut closing = None;
            if answer == VMI_CONNECT_RESPONSE_ACCEPT {
                c.state = ConnState::Open;
            } else {
                // A disconnect or abort issued while connecting ends here too: the
                // connection never opened, so no disconnect follows to run its callback.
                closing = c.closing.take();
                // The handle goes stale: using it again is a clean error.
                t.conns.remove(conn);
                t.by_id.remove(&id);
            }
            (issued, closing)
        });
        if let Some((Some(f), context)) = issued {
            let data = if reply.is_empty() {
                std::ptr::null_mut()
            } else {
                reply.as_mut_ptr().cast()
            };
            // SAFETY: the application's connect callback, with its own context, reply bytes
            // that live until it returns, and the connection's handle.
            as_callback(ctx, || unsafe {
                f(context, data, reply.len() as USHORT, to_ptr(conn), answer)
            });
        }
        if let Some((Some(done), context)) = closing {
            // SAFETY: the application's disconnect completion with its own context; the
            // handle is stale now and passed only as the name it knows the connection by.
            as_callback(ctx, || unsafe {
                done(to_ptr(conn), context, status::code::OK)
            });
        }
    }

    fn receive(&mut self, ctx: &mut Ctx<'_>, id: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        let found = state::tables(|t| {
            let h = *t.by_id.get(&id)?;
            let c = t.conns.get_mut(h)?;
            if c.state == ConnState::Accepted {
                c.state = ConnState::Open;
            }
            Some((h, c.recv_context, t.recv_fn))
        });
        let Some((conn, context, recv)) = found else {
            log::warn!("{id}: a fragment arrived on a connection libvmi does not know; dropped");
            return;
        };
        let Some(f) = recv else {
            log::warn!(
                "{id}: a fragment arrived but no receive function is set (VMI_STREAM_SET_RECV_FUNCTION); dropped"
            );
            return;
        };
        let command = match cmd {
            Recv::Fragment => VMI_STREAM_FRAGMENT,
            Recv::End => VMI_STREAM_END,
        };
        let (answer, h) = lend_slab(slab, |h| {
            // SAFETY: the application's receive function with live handles; the slab handle
            // is valid until it returns (or until VMI_Release_Slab if it grabs it).
            as_callback(ctx, || unsafe {
                f(to_ptr(conn), to_ptr(conn), command, context, to_ptr(h))
            })
        });
        if answer != VMI_SLAB_GRAB {
            state::tables(|t| t.slabs.remove(h));
            return;
        }
        // Keep the slab: rewind to take a cursor at the first byte, grab, and move back to
        // where the application was.
        let consumed = slab.len() - slab.remaining();
        slab.rewind();
        let Some(mut g) = slab.grab() else {
            log::error!("{id}: the slab could not be grabbed; it is released now");
            state::tables(|t| t.slabs.remove(h));
            return;
        };
        let origin = g.save();
        let mut left = consumed;
        while left > 0 {
            let n = g.read(left).len();
            if n == 0 {
                break;
            }
            left -= n;
        }
        state::tables(|t| {
            if let Some(e) = t.slabs.get_mut(h) {
                e.view = SlabView::Grabbed {
                    slab: Box::new(g),
                    origin,
                };
            }
        });
    }

    fn send_complete(&mut self, ctx: &mut Ctx<'_>, id: ConnId, done: &mut SendCompletion<'_>) {
        let code = status::of(done.status);
        let token = done.token;
        let notify = state::tables(|t| {
            for b in done.take_buffers() {
                let v = b.into_vec();
                if t.spare.len() < 64 && v.capacity() <= 1 << 20 {
                    t.spare.push(v);
                }
            }
            match t.pending.remove(token) {
                Some(Pending::Callback(f, c)) => Some((f, c, code)),
                Some(Pending::Stream(sh)) => {
                    let s = t.streams.get_mut(sh)?;
                    s.outstanding -= 1;
                    if s.status == status::code::OK {
                        s.status = code;
                    }
                    if s.stream.is_some() || s.outstanding > 0 {
                        return None;
                    }
                    let s = t.streams.remove(sh)?;
                    Some((s.done.0, s.done.1, s.status))
                }
                None => None,
            }
        });
        if token == 0 && code != status::code::OK {
            log::warn!(
                "{id}: an inline send failed: {}: {}",
                done.status,
                done.detail
            );
        }
        if let Some((Some(f), context, code)) = notify {
            if code != status::code::OK {
                status::set_last(code, &format!("send on {id} failed: {}", done.detail));
            }
            // SAFETY: the application's send completion with its own context.
            as_callback(ctx, || unsafe { f(context, code) });
        }
    }

    fn disconnected(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: Disconnect) {
        let Some(conn) = conn_handle(id) else {
            return;
        };
        let (closing, peer_fn) = state::tables(|t| {
            t.by_id.remove(&id);
            let closing = t.conns.get_mut(conn).and_then(|c| c.closing.take());
            (closing, t.peer_disconnect_fn)
        });
        let code = match &reason {
            Disconnect::Local | Disconnect::Peer => status::code::OK,
            Disconnect::Error { status, detail } => {
                let code = status::of(*status);
                status::set_last(code, &format!("{id} ended: {status}: {detail}"));
                code
            }
        };
        match (closing, reason) {
            (Some((Some(f), context)), _) => {
                // SAFETY: the application's disconnect completion with its own context.
                as_callback(ctx, || unsafe { f(to_ptr(conn), context, code) });
            }
            (Some((None, _)), _) | (None, Disconnect::Local) => {}
            (None, _) => {
                if let Some(f) = peer_fn {
                    // SAFETY: the application's peer-disconnect function, with the handle
                    // still live for its duration.
                    as_callback(ctx, || unsafe { f(to_ptr(conn)) });
                }
            }
        }
        state::tables(|t| t.conns.remove(conn));
    }

    fn rdma_published(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: ConnId,
        remote: vmi_core::RemoteBuffer,
        payload: &mut Slab<'_>,
    ) {
        let conn = conn_handle(id);
        let f = conn.and_then(|c| state::tables(|t| t.conns.get(c).and_then(|c| c.rdma.publish)));
        let (Some(conn), Some(f)) = (conn, f) else {
            log::warn!(
                "{id}: the peer published a buffer but no publish callback is set on the connection (VMI_RDMA_Set_Publish_Callback); released"
            );
            use vmi_core::Operations;
            if let Err(e) = ctx.rdma_release(&remote) {
                log::debug!("{id}: could not release it: {e}");
            }
            return;
        };
        let rb = crate::rdma::remote_buffer(conn, remote);
        let size = payload.len() as ULONG;
        let ((), h) = lend_slab(payload, |slab| {
            // SAFETY: the application's publish callback with a live connection, a remote
            // buffer libvmi made (freed by VMI_RDMA_Dealloc_Buffer) and a slab valid until it
            // returns.
            as_callback(ctx, || unsafe { f(to_ptr(conn), rb, to_ptr(slab), size) })
        });
        state::tables(|t| t.slabs.remove(h));
    }

    fn rdma_done(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: ConnId,
        token: u64,
        status: Status,
        detail: &str,
    ) {
        let Some(p) = state::tables(|t| t.rdma_pending.remove(token as Handle)) else {
            return;
        };
        let code = status::of(status);
        if status != Status::Ok {
            status::set_last(
                code,
                &format!("{id}: an RDMA op failed: {status}: {detail}"),
            );
        }
        if let Some(cb) = p.cb {
            // SAFETY: the application's completion with its own op and context.
            as_callback(ctx, || unsafe { cb(p.op, p.context, code) });
        }
    }

    fn rdma_put_notify(&mut self, ctx: &mut Ctx<'_>, id: ConnId, n: vmi_core::RdmaNotice) {
        let Some(conn) = conn_handle(id) else { return };
        if let Some(f) = state::tables(|t| t.conns.get(conn).and_then(|c| c.rdma.put)) {
            let size = UINT32::try_from(n.len).unwrap_or(UINT32::MAX);
            // SAFETY: the application's put notification with a live connection.
            as_callback(ctx, || unsafe {
                f(to_ptr(conn), size, n.ctx, status::code::OK)
            });
        }
    }

    fn rdma_get_notify(&mut self, ctx: &mut Ctx<'_>, id: ConnId, n: vmi_core::RdmaNotice) {
        let Some(conn) = conn_handle(id) else { return };
        if let Some(f) = state::tables(|t| t.conns.get(conn).and_then(|c| c.rdma.get)) {
            // SAFETY: the application's get notification with a live connection.
            as_callback(ctx, || unsafe { f(to_ptr(conn), n.ctx, status::code::OK) });
        }
    }
}
