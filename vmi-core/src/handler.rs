//! What the application implements: the callbacks (VMI 2.1's notification functions) and the
//! values they receive.
#![forbid(unsafe_code)]

use crate::buffer::Buffer;
use crate::conn::ConnId;
use crate::ctx::Ctx;
use crate::msgpass::{Pulse, ReceiveId, Reply, Request};
use crate::rdma::{PublishId, RdmaNotice, RemoteBuffer};
use crate::slab::Slab;
use crate::status::Status;

/// Received-fragment command (VMI 2.1: the stream notification's `VMI_STREAM_*` code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recv {
    /// A fragment; more follow.
    Fragment,
    /// The last fragment of the stream.
    End,
}

/// The accept handler's answer (VMI 2.1: `VMI_CONNECT_RESPONSE_ACCEPT` / `_REJECT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Accept, optionally with reply data for the connector.
    Accept(Vec<u8>),
    /// Reject, optionally with reply data saying why.
    Reject(Vec<u8>),
}

/// An incoming connection as the accept handler sees it.
pub struct ConnectRequest<'a> {
    /// The connection's handle (valid from now on if accepted).
    pub conn: ConnId,
    /// The peer's key.
    pub peer_key: &'a str,
    /// The peer's address as the transport saw it.
    pub peer_host: &'a str,
    /// The connect data.
    pub data: Slab<'a>,
    /// The named chain the connection runs on ("" for the send and receive chains).
    pub chain: &'a str,
}

/// How a connect ended (VMI 2.1: the `VMI_Connection_Issue` completion routine).
pub enum ConnectOutcome<'a> {
    /// Accepted; the peer's reply data.
    Accepted(Slab<'a>),
    /// Rejected by the peer's accept handler; its reply data.
    Rejected(Slab<'a>),
    /// Could not be established.
    Failed {
        /// Why.
        status: Status,
        /// Details from the transport.
        detail: &'a str,
    },
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// This process called `disconnect`.
    Local,
    /// The peer closed it in order.
    Peer,
    /// It failed.
    Error {
        /// Why.
        status: Status,
        /// Details from the transport.
        detail: String,
    },
}

/// A finished send (VMI 2.1: the send completion routine). The buffers come back here.
pub struct SendCompletion<'a> {
    /// How it went.
    pub status: Status,
    /// The token given with the send.
    pub token: u64,
    /// Details on failure.
    pub detail: &'a str,
    pub(crate) bufs: &'a mut Vec<Buffer>,
}

impl SendCompletion<'_> {
    /// Takes the send's buffers back for reuse.
    pub fn take_buffers(&mut self) -> std::vec::Drain<'_, Buffer> {
        self.bufs.drain(..)
    }
}

/// The application's callbacks. Every method has a default; implement what you need.
pub trait Handler {
    /// A peer asks to connect (VMI 2.1: `VMI_Connection_Accept_Fn`). The default accepts.
    fn accept(&mut self, _ctx: &mut Ctx<'_>, _request: &mut ConnectRequest<'_>) -> Decision {
        Decision::Accept(Vec::new())
    }

    /// A connect this process issued finished (VMI 2.1: `VMI_Connection_Issue` completion).
    fn connected(
        &mut self,
        _ctx: &mut Ctx<'_>,
        _conn: ConnId,
        _outcome: ConnectOutcome<'_>,
        _token: u64,
    ) {
    }

    /// A fragment arrived (VMI 2.1: `VMI_Stream_Notification_Fn`). The slab is released
    /// when this returns unless the handler keeps it with [`Slab::grab`].
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _cmd: Recv, _slab: &mut Slab<'_>) {}

    /// A received message failed (a fragment failed a check such as CRC or decompression,
    /// or was lost): it is not delivered whole. Fragments of it already delivered must be
    /// thrown away; its remaining fragments are discarded by vmi, and the next fragment
    /// received starts the next message. The sender is told (see
    /// [`Handler::message_failed`]).
    fn receive_failed(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, status: Status, detail: &str) {
        log::warn!("{conn}: a received message failed and was discarded: {status}: {detail}");
    }

    /// The receiver could not deliver message `message` that this process sent on `conn`
    /// (0-based, counting the messages begun on the connection): `status` and `detail` say
    /// why. Its sends completed successfully here: the failure happened at the receiver.
    fn message_failed(
        &mut self,
        _ctx: &mut Ctx<'_>,
        conn: ConnId,
        message: u64,
        status: Status,
        detail: &str,
    ) {
        log::warn!("{conn}: the receiver could not deliver message {message}: {status}: {detail}");
    }

    /// A send finished (VMI 2.1: the stream send completion routine). An inline send
    /// (`send_inline`) reaches it only when it fails, with `token` 0.
    fn send_complete(
        &mut self,
        _ctx: &mut Ctx<'_>,
        _conn: ConnId,
        _completion: &mut SendCompletion<'_>,
    ) {
    }

    /// A connection ended (VMI 2.1: `VMI_Connection_Disconnect_Fn`).
    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _reason: Disconnect) {}

    /// A client's request arrived (QNX: `MsgReceive` returned a message). Answer it with
    /// [`crate::Operations::reply`] or [`crate::Operations::reply_error`], now or later with
    /// `request.id`; until then it is held, and [`crate::Operations::msg_read`] reads it.
    /// The default answers with the error code [`crate::msgpass::ENOSYS`], so a client of a
    /// process that serves no requests is not left waiting.
    fn request(&mut self, ctx: &mut Ctx<'_>, request: &mut Request<'_>) {
        use crate::ops::Operations;
        if let Err(e) = ctx.reply_error(request.id, crate::msgpass::ENOSYS) {
            log::debug!("could not refuse {}: {e}", request.id);
        }
    }

    /// A request this process sent ended (QNX: `MsgSend` returned): the server's reply, its
    /// error code, or why there was no answer. `token` is the request's.
    fn replied(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, token: u64, reply: Reply<'_>) {
        if let Reply::Failed { status, detail } = reply {
            log::warn!("{conn}: request (token {token}) failed: {status}: {detail}");
        }
    }

    /// A pulse arrived (QNX: `MsgReceive` returned a pulse).
    fn pulse(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _pulse: Pulse) {}

    /// A request this process was given and has not answered will get no answer: its client
    /// cancelled it or timed out ([`Status::Cancelled`]), or its connection closed. Its
    /// receive id is no longer valid.
    fn request_gone(&mut self, _ctx: &mut Ctx<'_>, _id: ReceiveId, _status: Status) {}

    /// The peer on `conn` published a buffer to this process, with a payload (VMI 2.1: the
    /// callback of `VMI_RDMA_Set_Publish_Callback`). Put into it and get from it with
    /// [`crate::Operations::rdma_put`] and [`crate::Operations::rdma_get`]; release it with
    /// [`crate::Operations::rdma_release`] when done, so the publisher can free it. The
    /// default releases it at once (this process takes no published buffers).
    fn rdma_published(
        &mut self,
        ctx: &mut Ctx<'_>,
        conn: ConnId,
        remote: RemoteBuffer,
        _payload: &mut Slab<'_>,
    ) {
        use crate::ops::Operations;
        if let Err(e) = ctx.rdma_release(&remote) {
            log::debug!("{conn}: could not release a published buffer: {e}");
        }
    }

    /// A put or get this process issued ended (VMI 2.1: the `VMIRDMACompleteNotification`
    /// of `VMI_RDMA_Put` and `VMI_RDMA_Get`): [`Status::Ok`] when all of it landed (a get's
    /// bytes are in its segments), else why not. `token` is the op's.
    fn rdma_done(
        &mut self,
        _ctx: &mut Ctx<'_>,
        conn: ConnId,
        token: u64,
        status: Status,
        detail: &str,
    ) {
        if status != Status::Ok {
            log::warn!("{conn}: an RDMA op (token {token}) failed: {status}: {detail}");
        }
    }

    /// A peer's put with the notify option landed in a buffer this process published (VMI
    /// 2.1: the callback of `VMI_RDMA_Set_Put_Notification_Callback`).
    fn rdma_put_notify(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _notice: RdmaNotice) {}

    /// A peer's get with the notify option read a buffer this process published (VMI 2.1:
    /// the callback of `VMI_RDMA_Set_Get_Notification_Callback`).
    fn rdma_get_notify(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _notice: RdmaNotice) {}

    /// vmi let go of a buffer this process published: the peer released it
    /// ([`Status::Ok`]), or its connection closed. Nothing reaches it through that id any
    /// more; the region is the application's alone again.
    fn rdma_released(&mut self, _ctx: &mut Ctx<'_>, _id: PublishId, _status: Status) {}

    /// The peer on `conn` withdrew buffer `id` it had published to this process: puts and
    /// gets on it now fail. vmi releases it for the application.
    fn rdma_withdrawn(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _id: u64) {}
}
