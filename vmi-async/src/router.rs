//! The callbacks of the facade's `Vmi`: each event goes to the future waiting for it
//! (connects, sends and requests by token) or into a queue a future reads (received
//! messages per connection, accepted connections, requests to serve, pulses).
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};

use tokio::sync::oneshot;
use vmi_core::GrabbedSlab;
use vmi_core::prelude::*;

use crate::error::Error;

/// A received fragment: held where vmi lends it (so unread messages count against the
/// process's receive limit, which pushes back on the sender), or copied when it cannot be.
pub(crate) enum Piece {
    Held(Box<GrabbedSlab>),
    Copied(Vec<u8>),
}

impl Piece {
    /// The fragment's bytes (a held copy of lent bytes handed over, not copied again).
    fn into_vec(self) -> Vec<u8> {
        match self {
            Piece::Held(g) => g.into_vec(),
            Piece::Copied(v) => v,
        }
    }

    fn append_to(self, out: &mut Vec<u8>) {
        match self {
            Piece::Held(g) => {
                let mut view = g.slab();
                view.read_into(out);
            }
            Piece::Copied(mut v) => out.append(&mut v),
        }
    }
}

/// A whole received message, still in its fragments: most are one fragment, kept without a
/// list.
pub(crate) enum Message {
    One(Piece),
    Many(Vec<Piece>),
}

impl Message {
    /// The message's bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Message::One(p) => p.into_vec(),
            Message::Many(pieces) => {
                let mut out = Vec::new();
                for p in pieces {
                    p.append_to(&mut out);
                }
                out
            }
        }
    }
}

/// What the facade keeps per connection.
#[derive(Default)]
pub(crate) struct ConnQueue {
    partial: Vec<Piece>,
    pub messages: VecDeque<Message>,
    /// Why it ended, once it has.
    pub closed: Option<Disconnect>,
}

/// The per-connection queues, by the handle's index (no hashing per message); a slot
/// reused by a later connection starts afresh.
#[derive(Default)]
pub(crate) struct Conns(Vec<Option<(ConnId, ConnQueue)>>);

impl Conns {
    fn index(conn: ConnId) -> usize {
        (conn.raw() & 0xffff_ffff) as usize
    }

    /// The queue of `conn`, if it has one.
    pub fn get(&self, conn: &ConnId) -> Option<&ConnQueue> {
        match self.0.get(Self::index(*conn)) {
            Some(Some((c, q))) if c == conn => Some(q),
            _ => None,
        }
    }

    /// The queue of `conn`, to change.
    pub fn get_mut(&mut self, conn: &ConnId) -> Option<&mut ConnQueue> {
        match self.0.get_mut(Self::index(*conn)) {
            Some(Some((c, q))) if c == conn => Some(q),
            _ => None,
        }
    }

    /// A fresh queue for `conn`.
    pub fn insert(&mut self, conn: ConnId) {
        let i = Self::index(conn);
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some((conn, ConnQueue::default()));
    }

    /// The queue of `conn`, made if it has none.
    pub fn entry(&mut self, conn: ConnId) -> &mut ConnQueue {
        if self.get(&conn).is_none() {
            self.insert(conn);
        }
        self.get_mut(&conn).expect("made above")
    }
}

/// A request received, for [`crate::AsyncVmi::next_request`].
pub type IncomingRequest = vmi_core::msgpass::OwnedRequest;

/// The facade's handler.
#[derive(Default)]
pub(crate) struct Router {
    next_token: u64,
    pub connects: HashMap<u64, oneshot::Sender<Result<ConnId, Error>>>,
    pub sends: HashMap<u64, oneshot::Sender<Result<(), Error>>>,
    pub requests: HashMap<u64, oneshot::Sender<Result<Answer, Error>>>,
    pub conns: Conns,
    pub accepted: VecDeque<ConnId>,
    pub served: VecDeque<IncomingRequest>,
    pub pulses: VecDeque<(ConnId, Pulse)>,
    /// Something a waiting future may want happened in this poll.
    pub changed: bool,
}

impl Router {
    /// A fresh token for a connect, send or request.
    pub fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }
}

impl Handler for Router {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, request: &mut ConnectRequest<'_>) -> Decision {
        self.conns.insert(request.conn);
        self.accepted.push_back(request.conn);
        self.changed = true;
        Decision::Accept(Vec::new())
    }

    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, token: u64) {
        let result = match o {
            ConnectOutcome::Accepted(_) => {
                self.conns.insert(conn);
                Ok(conn)
            }
            ConnectOutcome::Rejected(mut why) => Err(Error::Rejected(
                String::from_utf8_lossy(&why.read_to_vec()).into_owned(),
            )),
            ConnectOutcome::Failed { status, detail } => Err(Error::Failed {
                status,
                detail: detail.to_string(),
            }),
        };
        if let Some(tx) = self.connects.remove(&token) {
            let _ = tx.send(result);
        }
    }

    fn receive(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        let piece = match slab.grab() {
            Some(g) => Piece::Held(Box::new(g)),
            None => Piece::Copied(slab.read_to_vec()),
        };
        let q = self.conns.entry(conn);
        if cmd == Recv::End {
            let m = if q.partial.is_empty() {
                Message::One(piece)
            } else {
                q.partial.push(piece);
                Message::Many(std::mem::take(&mut q.partial))
            };
            q.messages.push_back(m);
            self.changed = true;
        } else {
            q.partial.push(piece);
        }
    }

    fn receive_failed(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, status: Status, detail: &str) {
        log::warn!("{conn}: a received message failed and was discarded: {status}: {detail}");
        if let Some(q) = self.conns.get_mut(&conn) {
            q.partial.clear();
        }
    }

    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, done: &mut SendCompletion<'_>) {
        if let Some(tx) = self.sends.remove(&done.token) {
            let r = if done.status.is_ok() {
                Ok(())
            } else {
                Err(Error::Failed {
                    status: done.status,
                    detail: done.detail.to_string(),
                })
            };
            let _ = tx.send(r);
        }
    }

    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, reason: Disconnect) {
        self.conns.entry(conn).closed = Some(reason);
        self.changed = true;
    }

    fn request(&mut self, _ctx: &mut Ctx<'_>, r: &mut Request<'_>) {
        self.served.push_back(IncomingRequest::from(r));
        self.changed = true;
    }

    fn replied(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, token: u64, reply: Reply<'_>) {
        let Some(tx) = self.requests.remove(&token) else {
            return;
        };
        let r = match reply {
            Reply::Data { status, mut data } => Ok(Answer::Reply {
                status,
                data: data.read_to_vec(),
            }),
            Reply::Error { code } => Ok(Answer::Error(code)),
            Reply::Failed { status, detail } => Err(Error::Failed {
                status,
                detail: detail.to_string(),
            }),
        };
        let _ = tx.send(r);
    }

    fn pulse(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, pulse: Pulse) {
        self.pulses.push_back((conn, pulse));
        self.changed = true;
    }

    fn request_gone(&mut self, _ctx: &mut Ctx<'_>, id: ReceiveId, status: Status) {
        // A request not taken yet by next_request is dropped from the queue; one taken is
        // the application's (its reply will be refused with UnknownRequest).
        let before = self.served.len();
        self.served.retain(|r| r.id != id);
        if self.served.len() != before {
            log::debug!("{id} was withdrawn by its client ({status}) before it was served");
        }
    }
}
