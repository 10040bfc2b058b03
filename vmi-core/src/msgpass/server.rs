//! The server side of send/receive/reply: requests received and not yet answered, the
//! queue of requests and pulses waiting to be delivered (highest priority first, in arrival
//! order within a priority). No I/O.
#![forbid(unsafe_code)]

use std::collections::{BinaryHeap, HashMap};
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
    /// Its receive id, as the application knows it.
    pub id: u64,
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
    /// Its place in arrival order.
    arrival: u64,
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

/// The index part of the receive id of a request delivered at once (see
/// [`Server::request_now`]); the table's own keys never reach it (it would take 2^32 - 1
/// requests held at once, far over any [`ServerLimits`]).
const NOW_INDEX: u64 = 0xffff_ffff;

/// The server side's state.
///
/// A request delivered at once, whose callback usually answers it, is not put in the table:
/// it waits in `current` under a receive id of its own (`NOW_INDEX`) and goes into the
/// table only if the callback keeps it (`kept` then maps its receive id to its table key).
#[derive(Default)]
pub struct Server {
    limits: ServerLimits,
    seq: u64,
    held: Table<Held>,
    conns: Vec<PerConn>,
    bytes: usize,
    queue: BinaryHeap<Queued>,
    /// The request delivered at once whose callback runs.
    current: Option<Held>,
    /// Generation of the last receive id given to a request delivered at once.
    now_generation: u32,
    /// Requests delivered at once and kept past their callback: receive id → table key.
    kept: HashMap<u64, u64>,
    /// Requests arrived so far (arrival order across both kinds of receive id).
    arrived: u64,
}

impl Server {
    /// A server side with these limits.
    pub fn new(limits: ServerLimits) -> Server {
        Server {
            limits,
            ..Server::default()
        }
    }

    /// The held requests' table keys of `conn` (an empty list for a new connection).
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
        self.check(conn, client_id, data.len())?;
        let mut h = self.new_held(0, false, conn, client_id, priority, reply_max, data.len());
        h.data = Some(Arc::from(data));
        let rcvid = self.insert(h);
        self.push(priority, Incoming::Request(rcvid));
        Ok(rcvid)
    }

    /// A request arrived that is delivered at once, nothing being queued ahead of it: holds
    /// it, marked delivered, with no copy of its bytes and outside the table; the caller
    /// gives them to the handler where they arrived and then, if the request is still held,
    /// keeps them with [`Server::keep`].
    #[inline(always)]
    pub fn request_now(
        &mut self,
        conn: ConnId,
        client_id: u64,
        priority: u8,
        reply_max: usize,
        len: usize,
    ) -> Result<u64, NotTaken> {
        self.check(conn, client_id, len)?;
        if self.current.is_some() {
            // A callback delivering a request at once runs already (not done by vmi: a
            // request arrives in a poll, not in a callback): this one goes in the table.
            let h = self.new_held(0, true, conn, client_id, priority, reply_max, len);
            return Ok(self.insert(h));
        }
        let mut rcvid;
        loop {
            self.now_generation = self.now_generation.wrapping_add(1).max(1);
            rcvid = (u64::from(self.now_generation) << 32) | NOW_INDEX;
            // After 2^32 requests the generation comes round: never reuse a kept one's id.
            if self.kept.is_empty() || !self.kept.contains_key(&rcvid) {
                break;
            }
        }
        self.current = Some(self.new_held(rcvid, true, conn, client_id, priority, reply_max, len));
        Ok(rcvid)
    }

    /// Keeps the bytes of a request delivered at once that its handler did not answer in
    /// its callback (nothing when it was answered, or already has its bytes).
    #[inline(always)]
    pub fn keep(&mut self, rcvid: u64, data: &[u8]) {
        if self.current.as_ref().is_some_and(|h| h.id == rcvid) {
            self.keep_current(data);
        } else if rcvid & NOW_INDEX != NOW_INDEX {
            // Delivered at once from the table (see `request_now`).
            self.keep_held(rcvid, data);
        }
    }

    /// [`Server::keep`] for a request in the table.
    #[inline(never)]
    fn keep_held(&mut self, rcvid: u64, data: &[u8]) {
        if let Some(h) = self.get_mut(rcvid)
            && h.data.is_none()
        {
            h.data = Some(Arc::from(data));
        }
    }

    /// Moves the request delivered at once into the table, with a copy of its bytes.
    #[inline(never)]
    fn keep_current(&mut self, data: &[u8]) {
        let Some(mut h) = self.current.take() else {
            return;
        };
        let rcvid = h.id;
        h.data = Some(Arc::from(data));
        let key = self.insert(h);
        self.kept.insert(rcvid, key);
    }

    /// Says why a request of `len` bytes from `conn` with `client_id` is not taken, if not.
    #[inline(always)]
    fn check(&mut self, conn: ConnId, client_id: u64, len: usize) -> Result<(), NotTaken> {
        // The connection's held requests (none if its slot is another's or not made yet).
        let list: &[u64] = match self.conns.get(conn.index()) {
            Some(pc) if pc.conn == Some(conn) => &pc.held,
            _ => &[],
        };
        let current = self.current.as_ref().filter(|h| h.conn == conn);
        if list.len() + usize::from(current.is_some()) >= self.limits.per_conn {
            return Err(NotTaken::TooMany);
        }
        if self.bytes + len > self.limits.bytes {
            return Err(NotTaken::TooManyBytes);
        }
        let held = &self.held;
        let duplicate = current.is_some_and(|h| h.client_id == client_id)
            || list
                .iter()
                .any(|&r| held.get(r).is_some_and(|h| h.client_id == client_id));
        if duplicate {
            return Err(NotTaken::Duplicate);
        }
        self.bytes += len;
        Ok(())
    }

    /// A held request of `len` bytes (counted by `check`), no bytes kept yet, with receive id
    /// `id` (0: its table key, set by `insert`) and whether it is delivered.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn new_held(
        &mut self,
        id: u64,
        delivered: bool,
        conn: ConnId,
        client_id: u64,
        priority: u8,
        reply_max: usize,
        len: usize,
    ) -> Held {
        self.arrived += 1;
        Held {
            id,
            conn,
            client_id,
            priority,
            reply_max,
            data: None,
            len,
            reply: Vec::new(),
            delivered,
            arrival: self.arrived,
        }
    }

    /// Puts a held request in the table; returns its key. Its receive id is the key, unless
    /// it has one already (a request delivered at once and kept).
    fn insert(&mut self, h: Held) -> u64 {
        let conn = h.conn;
        let key = self.held.insert_with(|key| Held {
            id: if h.id == 0 { key } else { h.id },
            ..h
        });
        self.per_conn(conn).push(key);
        key
    }

    /// The table key of receive id `rcvid` (not the request delivered at once).
    #[inline(always)]
    fn key(&self, rcvid: u64) -> Option<u64> {
        if rcvid & NOW_INDEX == NOW_INDEX {
            return self.kept.get(&rcvid).copied();
        }
        Some(rcvid)
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
    #[inline(always)]
    pub fn get(&self, rcvid: u64) -> Option<&Held> {
        if let Some(h) = self.current.as_ref().filter(|h| h.id == rcvid) {
            return Some(h);
        }
        self.held.get(self.key(rcvid)?)
    }

    /// A held request, to write reply bytes into.
    pub fn get_mut(&mut self, rcvid: u64) -> Option<&mut Held> {
        if self.current.as_ref().is_some_and(|h| h.id == rcvid) {
            return self.current.as_mut();
        }
        let key = self.key(rcvid)?;
        self.held.get_mut(key)
    }

    /// Removes a held request (answered, cancelled by its client, or its connection
    /// closed).
    #[inline(always)]
    pub fn take(&mut self, rcvid: u64) -> Option<Held> {
        if self.current.as_ref().is_some_and(|h| h.id == rcvid) {
            let h = self.current.take()?;
            self.bytes -= h.len;
            return Some(h);
        }
        self.take_held(rcvid)
    }

    /// Removes a held request that was answered (as [`Server::take`], dropping it in place:
    /// moving the request out for a caller that drops it costs 17 instructions per request
    /// hop, callgrind).
    #[inline(always)]
    pub fn forget(&mut self, rcvid: u64) {
        if let Some(h) = self.current.as_ref().filter(|h| h.id == rcvid) {
            self.bytes -= h.len;
            self.current = None;
        } else {
            self.take_held(rcvid);
        }
    }

    /// [`Server::take`] for a request in the table.
    #[inline(never)]
    fn take_held(&mut self, rcvid: u64) -> Option<Held> {
        let key = self.key(rcvid)?;
        let h = self.held.remove(key)?;
        if key != rcvid {
            self.kept.remove(&rcvid);
        }
        self.bytes -= h.len;
        let list = self.per_conn(h.conn);
        if let Some(i) = list.iter().position(|&r| r == key) {
            list.swap_remove(i);
        }
        Some(h)
    }

    /// The receive id of the request `client_id` from `conn`.
    pub fn find(&mut self, conn: ConnId, client_id: u64) -> Option<u64> {
        if let Some(h) = self
            .current
            .as_ref()
            .filter(|h| h.conn == conn && h.client_id == client_id)
        {
            return Some(h.id);
        }
        let held = &self.held;
        let i = conn.index();
        let pc = self.conns.get(i).filter(|pc| pc.conn == Some(conn))?;
        pc.held
            .iter()
            .filter_map(|&r| held.get(r))
            .find(|h| h.client_id == client_id)
            .map(|h| h.id)
    }

    /// Drops everything of a closed connection; returns the receive ids of the requests
    /// the application had been given (it may still hold them), oldest first.
    pub fn conn_closed(&mut self, conn: ConnId) -> Vec<u64> {
        let keys = std::mem::take(self.per_conn(conn));
        let mut gone: Vec<Held> = keys
            .into_iter()
            .filter_map(|k| self.held.remove(k))
            .collect();
        if self.current.as_ref().is_some_and(|h| h.conn == conn) {
            gone.extend(self.current.take());
        }
        gone.sort_unstable_by_key(|h| h.arrival);
        let mut delivered = Vec::new();
        for h in gone {
            self.bytes -= h.len;
            self.kept.remove(&h.id);
            if h.delivered {
                delivered.push(h.id);
            }
        }
        delivered
    }

    /// Requests waiting for an answer.
    pub fn held(&self) -> usize {
        self.held.len() + usize::from(self.current.is_some())
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

    #[test]
    fn a_request_delivered_at_once_and_answered_never_enters_the_table() {
        let mut s = Server::new(ServerLimits {
            per_conn: 2,
            bytes: 10,
        });
        let c = ConnId(1);
        let r = s.request_now(c, 7, 3, 8, 5).unwrap();
        assert_eq!(s.held(), 1);
        assert_eq!(
            s.get(r).map(|h| (h.client_id, h.delivered)),
            Some((7, true))
        );
        assert_eq!(s.find(c, 7), Some(r));
        assert_eq!(s.request_now(c, 7, 0, 8, 1), Err(NotTaken::Duplicate));
        assert_eq!(
            s.request(c, 8, 0, 8, b"123456"),
            Err(NotTaken::TooManyBytes)
        );
        s.request(c, 8, 0, 8, b"1").unwrap();
        assert_eq!(
            s.request(c, 9, 0, 8, b""),
            Err(NotTaken::TooMany),
            "the request in its callback counts against the connection's limit"
        );
        s.forget(r);
        assert_eq!(s.get(r).map(|h| h.id), None);
        assert_eq!(s.held(), 1);
        assert_eq!(s.bytes, 1);
        s.keep(r, b"late");
        assert_eq!(s.held(), 1, "keeping an answered request keeps nothing");
    }

    #[test]
    fn a_kept_request_keeps_its_receive_id_and_its_bytes() {
        let mut s = Server::default();
        let c = ConnId(1);
        let early = s.request(c, 1, 0, 8, b"a").unwrap();
        let r = s.request_now(c, 2, 0, 8, 3).unwrap();
        s.keep(r, b"xyz");
        let later = s.request_now(c, 3, 0, 8, 0).unwrap();
        assert_ne!(later, r);
        s.keep(later, b"");
        let h = s.get(r).unwrap();
        assert_eq!(
            (h.id, h.client_id, h.data.as_deref()),
            (r, 2, Some(&b"xyz"[..]))
        );
        s.get_mut(r).unwrap().reply.push(1);
        assert_eq!(s.find(c, 2), Some(r));
        assert_eq!(s.take(r).map(|h| h.reply), Some(vec![1]));
        assert_eq!(s.get(r).map(|h| h.id), None, "a taken id finds nothing");
        assert!(!s.kept.contains_key(&r));
        let s2 = s.request_now(c, 4, 0, 8, 0).unwrap();
        assert_eq!(
            s.conn_closed(c),
            vec![later, s2],
            "the delivered ones, in arrival order ({early} was never delivered)"
        );
        assert_eq!((s.held(), s.bytes, s.kept.len()), (0, 0, 0));
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
        /// Delivered at once; kept past its callback or answered in it.
        Now {
            conn: u8,
            id: u8,
            len: u8,
            keep: bool,
        },
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
            (0..4u8, 0..16u8, 0..40u8, any::<bool>()).prop_map(|(conn, id, len, keep)| Op::Now {
                conn,
                id,
                len,
                keep
            }),
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
                    Op::Now { conn, id, len, keep } => {
                        let c = ConnId(conn as u64);
                        if let Ok(r) = s.request_now(c, id as u64, 0, 8, len as usize) {
                            proptest::prop_assert_eq!(s.find(c, id as u64), Some(r));
                            if keep {
                                s.keep(r, &vec![1u8; len as usize]);
                                rcvids.push(r);
                            } else {
                                s.forget(r);
                                s.keep(r, &[]);
                                proptest::prop_assert!(s.get(r).is_none());
                            }
                        }
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
