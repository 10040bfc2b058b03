//! The server side of send/receive/reply: requests received and not yet answered, the
//! queue of requests and pulses waiting to be delivered (highest priority first, in arrival
//! order within a priority). No I/O.
#![forbid(unsafe_code)]

use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::table::Table;

use crate::conn::ConnId;
use crate::status::Status;

/// Limits on what clients may leave waiting in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Requests waiting for an answer per connection.
    pub per_conn: usize,
    /// Bytes of requests waiting for an answer in the whole process.
    pub bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            per_conn: 256,
            bytes: 64 << 20,
        }
    }
}

/// A request received and not yet answered.
#[derive(Debug)]
pub struct Held {
    /// The connection it came on.
    pub conn: ConnId,
    /// The client's id for it.
    pub client_id: u64,
    /// Its priority.
    pub priority: u8,
    /// The most reply bytes the client takes.
    pub reply_max: usize,
    /// The request's bytes (shared with the slab the handler is given); `None` while a
    /// request delivered at once is in its callback, which reads them where they arrived
    /// (see [`Server::request_now`]).
    pub data: Option<Arc<[u8]>>,
    /// How many bytes the request has.
    pub len: usize,
    /// Reply bytes written ahead of the reply (QNX `MsgWrite`), at their offsets.
    pub reply: Vec<u8>,
    /// Delivered to the application's `request` callback already.
    pub delivered: bool,
}

/// Something waiting to be delivered.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A held request, by receive id.
    Request(u64),
    /// A pulse.
    Pulse {
        /// Its connection.
        conn: ConnId,
        /// Its code.
        code: i32,
        /// Its value.
        value: u32,
    },
}

#[derive(Debug, PartialEq, Eq)]
struct Queued {
    priority: u8,
    seq: u64,
    what: Incoming,
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Highest priority first; within one, the earliest (smallest seq) first.
        self.priority
            .cmp(&other.priority)
            .then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Why a request is not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotTaken {
    /// The connection already has the most requests waiting.
    TooMany,
    /// The process holds the most request bytes already.
    TooManyBytes,
    /// The connection has a request with that id waiting already.
    Duplicate,
}

impl NotTaken {
    /// The status the client is told.
    pub fn status(self) -> Status {
        match self {
            NotTaken::TooMany | NotTaken::TooManyBytes => Status::NoResources,
            NotTaken::Duplicate => Status::Protocol,
        }
    }
}

/// What the server keeps per connection (indexed by the handle's dense index).
#[derive(Default)]
struct PerConn {
    /// The connection it belongs to (a slot is reused by later connections).
    conn: Option<ConnId>,
    /// Its held requests' receive ids.
    held: Vec<u64>,
}

/// The server side's state.
#[derive(Default)]
pub struct Server {
    limits: ServerLimits,
    seq: u64,
    held: Table<Held>,
    conns: Vec<PerConn>,
    bytes: usize,
    queue: BinaryHeap<Queued>,
}

impl Server {
    /// A server side with these limits.
    pub fn new(limits: ServerLimits) -> Server {
        Server {
            limits,
            ..Server::default()
        }
    }

    /// The held requests' receive ids of `conn` (an empty list for a new connection).
    fn per_conn(&mut self, conn: ConnId) -> &mut Vec<u64> {
        let i = conn.index();
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, PerConn::default);
        }
        let pc = &mut self.conns[i];
        if pc.conn != Some(conn) {
            // A later connection in the slot: the earlier one's entries went with it.
            pc.conn = Some(conn);
            pc.held.clear();
        }
        &mut pc.held
    }

    /// A request arrived: holds it and queues it for delivery, or says why not.
    pub fn request(
        &mut self,
        conn: ConnId,
        client_id: u64,
        priority: u8,
        reply_max: usize,
        data: &[u8],
    ) -> Result<u64, NotTaken> {
        let rcvid = self.hold(conn, client_id, priority, reply_max, data.len())?;
        self.keep(rcvid, data);
        self.push(priority, Incoming::Request(rcvid));
        Ok(rcvid)
    }

    /// A request arrived that is delivered at once, nothing being queued ahead of it: holds
    /// it, marked delivered, with no copy of its bytes; the caller gives them to the
    /// handler where they arrived and then, if the request is still held, keeps them with
    /// [`Server::keep`].
    #[inline(always)]
    pub fn request_now(
        &mut self,
        conn: ConnId,
        client_id: u64,
        priority: u8,
        reply_max: usize,
        len: usize,
    ) -> Result<u64, NotTaken> {
        let rcvid = self.hold(conn, client_id, priority, reply_max, len)?;
        if let Some(h) = self.held.get_mut(rcvid) {
            h.delivered = true;
        }
        Ok(rcvid)
    }

    /// Keeps the bytes of a request delivered at once that its handler did not answer in
    /// its callback (nothing when it was answered, or already has its bytes).
    #[inline(always)]
    pub fn keep(&mut self, rcvid: u64, data: &[u8]) {
        if let Some(h) = self.held.get_mut(rcvid)
            && h.data.is_none()
        {
            h.data = Some(Arc::from(data));
        }
    }

    /// Holds a request of `len` bytes (no bytes yet), or says why not.
    #[inline(always)]
    fn hold(
        &mut self,
        conn: ConnId,
        client_id: u64,
        priority: u8,
        reply_max: usize,
        len: usize,
    ) -> Result<u64, NotTaken> {
        let list = self.per_conn(conn);
        if list.len() >= self.limits.per_conn {
            return Err(NotTaken::TooMany);
        }
        if self.bytes + len > self.limits.bytes {
            return Err(NotTaken::TooManyBytes);
        }
        let held = &self.held;
        let duplicate = self.conns[conn.index()]
            .held
            .iter()
            .any(|&r| held.get(r).is_some_and(|h| h.client_id == client_id));
        if duplicate {
            return Err(NotTaken::Duplicate);
        }
        let rcvid = self.held.insert(Held {
            conn,
            client_id,
            priority,
            reply_max,
            data: None,
            len,
            reply: Vec::new(),
            delivered: false,
        });
        self.conns[conn.index()].held.push(rcvid);
        self.bytes += len;
        Ok(rcvid)
    }

    /// A pulse arrived: queues it.
    pub fn pulse(&mut self, conn: ConnId, code: i32, value: u32, priority: u8) {
        self.push(priority, Incoming::Pulse { conn, code, value });
    }

    fn push(&mut self, priority: u8, what: Incoming) {
        self.seq += 1;
        self.queue.push(Queued {
            priority,
            seq: self.seq,
            what,
        });
    }

    /// True when something waits to be delivered.
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// The next thing to deliver whose priority is at least `min`. A request dropped
    /// meanwhile (its client cancelled it, its connection closed) is skipped.
    pub fn next(&mut self, min: u8) -> Option<(u8, Incoming)> {
        loop {
            if self.queue.peek()?.priority < min {
                return None;
            }
            let q = self.queue.pop()?;
            if let Incoming::Request(rcvid) = q.what {
                let Some(h) = self.held.get_mut(rcvid) else {
                    continue;
                };
                h.delivered = true;
            }
            return Some((q.priority, q.what));
        }
    }

    /// A held request.
    pub fn get(&self, rcvid: u64) -> Option<&Held> {
        self.held.get(rcvid)
    }

    /// A held request, to write reply bytes into.
    pub fn get_mut(&mut self, rcvid: u64) -> Option<&mut Held> {
        self.held.get_mut(rcvid)
    }

    /// Removes a held request (answered, cancelled by its client, or its connection
    /// closed).
    #[inline(always)]
    pub fn take(&mut self, rcvid: u64) -> Option<Held> {
        let h = self.held.remove(rcvid)?;
        self.bytes -= h.len;
        let list = self.per_conn(h.conn);
        if let Some(i) = list.iter().position(|&r| r == rcvid) {
            list.swap_remove(i);
        }
        Some(h)
    }

    /// The receive id of the request `client_id` from `conn`.
    pub fn find(&mut self, conn: ConnId, client_id: u64) -> Option<u64> {
        let held = &self.held;
        let i = conn.index();
        let pc = self.conns.get(i).filter(|pc| pc.conn == Some(conn))?;
        pc.held
            .iter()
            .copied()
            .find(|&r| held.get(r).is_some_and(|h| h.client_id == client_id))
    }

    /// Drops everything of a closed connection; returns the receive ids of the requests
    /// the application had been given (it may still hold them), oldest first.
    pub fn conn_closed(&mut self, conn: ConnId) -> Vec<u64> {
        let mut ids = std::mem::take(self.per_conn(conn));
        // Keys grow with their generation: this is arrival order.
        ids.sort_unstable();
        let mut delivered = Vec::new();
        for r in ids {
            if let Some(h) = self.held.remove(r) {
                self.bytes -= h.len;
                if h.delivered {
                    delivered.push(r);
                }
            }
        }
        delivered
    }

    /// Requests waiting for an answer.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_is_by_priority_then_arrival() {
        let mut s = Server::default();
        let c = ConnId(1);
        let a = s.request(c, 1, 0, 8, b"a").unwrap();
        s.pulse(c, 7, 70, 5);
        let b = s.request(c, 2, 5, 8, b"b").unwrap();
        let d = s.request(c, 3, 9, 8, b"d").unwrap();
        assert_eq!(s.next(1), Some((9, Incoming::Request(d))));
        assert_eq!(
            s.next(1),
            Some((
                5,
                Incoming::Pulse {
                    conn: c,
                    code: 7,
                    value: 70
                }
            ))
        );
        assert_eq!(s.next(1), Some((5, Incoming::Request(b))));
        assert_eq!(s.next(1), None, "priority 0 waits for the stream data");
        assert_eq!(s.next(0), Some((0, Incoming::Request(a))));
        assert!(!s.has_queued());
    }

    #[test]
    fn limits_refuse_and_answers_free_room() {
        let mut s = Server::new(ServerLimits {
            per_conn: 2,
            bytes: 10,
        });
        let c = ConnId(1);
        let r1 = s.request(c, 1, 0, 8, b"12345").unwrap();
        s.request(c, 2, 0, 8, b"1234").unwrap();
        assert_eq!(s.request(c, 3, 0, 8, b""), Err(NotTaken::TooMany));
        assert!(
            s.request(ConnId(2), 1, 0, 8, b"").is_ok(),
            "ids are the client's: another connection may reuse one"
        );
        assert_eq!(s.request(ConnId(2), 1, 0, 8, b""), Err(NotTaken::Duplicate));
        assert_eq!(
            s.request(ConnId(2), 4, 0, 8, b"12"),
            Err(NotTaken::TooManyBytes)
        );
        assert_eq!(s.take(r1).map(|h| h.client_id), Some(1));
        s.request(c, 3, 0, 8, b"12345").unwrap();
        assert_eq!(s.held(), 3);
    }

    #[test]
    fn a_cancelled_request_is_skipped_and_a_closed_connection_forgotten() {
        let mut s = Server::default();
        let r1 = s.request(ConnId(1), 1, 0, 8, b"x").unwrap();
        let r2 = s.request(ConnId(1), 2, 0, 8, b"y").unwrap();
        let r3 = s.request(ConnId(2), 3, 0, 8, b"z").unwrap();
        assert_eq!(s.find(ConnId(1), 1), Some(r1));
        s.take(r1);
        assert_eq!(s.next(0), Some((0, Incoming::Request(r2))));
        assert_eq!(s.conn_closed(ConnId(1)), vec![r2]);
        assert_eq!(s.next(0), Some((0, Incoming::Request(r3))));
        assert_eq!(s.held(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Request {
            conn: u8,
            id: u8,
            priority: u8,
            len: u8,
        },
        Pulse {
            conn: u8,
            priority: u8,
        },
        Take(u8),
        Cancel {
            conn: u8,
            id: u8,
        },
        Close(u8),
        Next(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..4u8, 0..16u8, 0..64u8, 0..40u8).prop_map(|(conn, id, priority, len)| Op::Request {
                conn,
                id,
                priority,
                len
            }),
            (0..4u8, 0..64u8).prop_map(|(conn, priority)| Op::Pulse { conn, priority }),
            any::<u8>().prop_map(Op::Take),
            (0..4u8, 0..16u8).prop_map(|(conn, id)| Op::Cancel { conn, id }),
            (0..4u8).prop_map(Op::Close),
            (0..64u8).prop_map(Op::Next),
        ]
    }

    proptest::proptest! {
        /// Any sequence of what peers and the application do keeps the limits and the
        /// byte count, never panics, and delivers each drain in priority order.
        #[test]
        fn any_sequence_keeps_the_limits(ops in proptest::collection::vec(op(), 0..200)) {
            let limits = ServerLimits { per_conn: 5, bytes: 100 };
            let mut s = Server::new(limits);
            let mut rcvids: Vec<u64> = Vec::new();
            for o in ops {
                match o {
                    Op::Request { conn, id, priority, len } => {
                        let data = vec![7u8; len as usize];
                        if let Ok(r) = s.request(ConnId(conn as u64), id as u64, priority, 8, &data) {
                            rcvids.push(r);
                        }
                    }
                    Op::Pulse { conn, priority } => s.pulse(ConnId(conn as u64), 1, 2, priority),
                    Op::Take(i) => {
                        if !rcvids.is_empty() {
                            let r = rcvids[i as usize % rcvids.len()];
                            s.take(r);
                        }
                    }
                    Op::Cancel { conn, id } => {
                        if let Some(r) = s.find(ConnId(conn as u64), id as u64) {
                            s.take(r);
                        }
                    }
                    Op::Close(c) => {
                        s.conn_closed(ConnId(c as u64));
                    }
                    Op::Next(min) => {
                        let mut last = u8::MAX;
                        while let Some((p, _)) = s.next(min) {
                            proptest::prop_assert!(p <= last && p >= min);
                            last = p;
                        }
                    }
                }
                let live: Vec<&Held> = rcvids.iter().filter_map(|&r| s.get(r)).collect();
                proptest::prop_assert_eq!(live.len(), s.held());
                let bytes: usize = live.iter().map(|h| h.len).sum();
                proptest::prop_assert_eq!(bytes, s.bytes);
                proptest::prop_assert!(s.bytes <= limits.bytes);
                for c in 0..4u64 {
                    let n = live.iter().filter(|h| h.conn == ConnId(c)).count();
                    proptest::prop_assert!(n <= limits.per_conn);
                }
            }
        }
    }
}
