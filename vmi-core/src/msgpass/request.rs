//! The application's view of send/receive/reply: the handles of requests on both sides,
//! how a request is sent, what the server is given and what the client gets back.
#![forbid(unsafe_code)]

use std::time::Duration;

use crate::conn::ConnId;
use crate::slab::Slab;
use crate::status::Status;

/// A request this process sent and waits for (QNX: the blocked `MsgSend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    /// The id as a number (unique in the process's life).
    pub fn raw(self) -> u64 {
        self.0
    }
}

/// A request this process received and has not answered (QNX: the `rcvid` that
/// `MsgReceive` returns). Keep it to answer later (the server/subserver pattern).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReceiveId(pub(crate) u64);

impl ReceiveId {
    /// The id as a number (unique in the process's life).
    pub fn raw(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ReceiveId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request #{}", self.0)
    }
}

/// How a request is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestOptions {
    /// The most reply bytes this client takes (QNX: the reply buffer's size); the server
    /// sees it and cannot reply more. At most [`crate::MAX_MESSAGE`].
    pub reply_max: usize,
    /// How long the request may wait for its answer before it fails with
    /// [`Status::Timeout`]; `None` waits until the answer comes or the connection closes.
    pub timeout: Option<Duration>,
    /// Its priority, 0 (the stream's) to 63: the server is given waiting requests highest
    /// priority first.
    pub priority: u8,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            reply_max: 64 * 1024,
            timeout: Some(Duration::from_secs(30)),
            priority: 0,
        }
    }
}

/// Who sent a request, as the connection knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sender {
    /// The client's key.
    pub key: String,
    /// The client's host as the transport saw it.
    pub host: String,
    /// The client's user id, where the transport reports it (a transport's `peer_uid`
    /// attribute: shared memory checks it with `SO_PEERCRED`; TCP cannot know it).
    pub uid: Option<u32>,
}

/// A request as the server's handler sees it (QNX: what `MsgReceive` fills in, with
/// `_msg_info`'s sizes).
pub struct Request<'a> {
    /// Its receive id: answer with it, now or later.
    pub id: ReceiveId,
    /// The connection it came on.
    pub conn: ConnId,
    /// Who sent it.
    pub sender: &'a Sender,
    /// Its priority.
    pub priority: u8,
    /// The most reply bytes the client takes.
    pub reply_max: usize,
    /// The request's bytes (all of them; [`Operations::msg_read`](crate::Operations) reads
    /// them at an offset later, until the request is answered).
    pub data: Slab<'a>,
}

/// How a request ended, as the client's handler sees it.
pub enum Reply<'a> {
    /// The server replied (QNX `MsgReply`): its status value and the reply's bytes.
    Data {
        /// The server's status value.
        status: i32,
        /// The reply.
        data: Slab<'a>,
    },
    /// The server answered with an error code (QNX `MsgError`).
    Error {
        /// The code.
        code: i32,
    },
    /// No answer: it timed out, was cancelled, its connection closed, or the server's vmi
    /// refused it.
    Failed {
        /// Why, as a status.
        status: Status,
        /// Why, in words.
        detail: &'a str,
    },
}

/// A reply a blocking request ([`crate::Vmi::request_wait`]) returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The server replied with a status value and data.
    Reply {
        /// The server's status value.
        status: i32,
        /// The reply.
        data: Vec<u8>,
    },
    /// The server answered with an error code.
    Error(i32),
}

/// A pulse: a small notification with no reply (QNX `MsgSendPulse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pulse {
    /// The application's code.
    pub code: i32,
    /// The application's value.
    pub value: u32,
    /// Its priority, 0 to 63: delivered ahead of waiting requests and pulses of lower
    /// priority, and ahead of stream data (priority 0) read in the same poll.
    pub priority: u8,
}
