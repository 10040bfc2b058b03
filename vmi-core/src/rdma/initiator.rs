//! The initiator's side of RDMA: the puts and gets this process issued that wait for their
//! chunks' answers. No I/O and no clock of its own: the caller passes the time.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::region::Region;
use crate::conn::ConnId;
use crate::table::Table;

/// Where a get's bytes land: `len` bytes at `offset` of `region`, in list order.
#[derive(Clone, Debug)]
pub struct Landing {
    /// The local memory.
    pub region: Region,
    /// Where in it.
    pub offset: usize,
    /// How many bytes.
    pub len: usize,
}

/// Put or get.
#[derive(Clone, Debug)]
pub enum OpKind {
    /// A put; nothing lands here.
    Put,
    /// A get; its bytes land in these segments.
    Get(Vec<Landing>),
}

/// A put or get that waits for answers.
#[derive(Clone, Debug)]
pub struct Op {
    /// Its id (on the wire and in [`super::RdmaOpId`]); set by [`Initiator::issue`].
    pub id: u64,
    /// The connection it went on (the real one).
    pub conn: ConnId,
    /// The handle the application knows the connection by.
    pub app_conn: ConnId,
    /// The application's token.
    pub token: u64,
    /// Put or get.
    pub kind: OpKind,
    /// The remote buffer.
    pub buffer: u64,
    /// The remote offset of its first byte.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// The remote offsets of the chunks not answered yet.
    pub chunks: Vec<u64>,
    /// Whether the target's application is told (after the last chunk).
    pub notify: bool,
    /// When it fails with a timeout, if ever.
    pub deadline: Option<Instant>,
    /// The indices of its messages on the connection (for the peer's "message N failed").
    pub messages: std::ops::Range<u64>,
}

/// What a chunk's answer did to its op.
#[derive(Debug, PartialEq, Eq)]
pub enum Answered {
    /// Chunks are still out.
    More,
    /// That was the last.
    Done,
    /// No op waits for that chunk on that connection (late, duplicated or forged).
    Stray,
}

/// The puts and gets waiting.
#[derive(Default)]
pub struct Initiator {
    ops: Table<Op>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    timed: usize,
}

impl Initiator {
    /// Records an op about to go out; returns its id (never 0).
    pub fn issue(&mut self, op: Op) -> u64 {
        let deadline = op.deadline;
        let id = self.ops.insert(op);
        if let Some(o) = self.ops.get_mut(id) {
            o.id = id;
        }
        if let Some(d) = deadline {
            self.timed += 1;
            self.deadlines.push(Reverse((d, id)));
        }
        id
    }

    /// The number of ops waiting.
    pub fn waiting(&self) -> usize {
        self.ops.len()
    }

    /// True when some waiting op has a deadline.
    pub fn timed(&self) -> bool {
        self.timed > 0
    }

    /// Op `id`, if it waits.
    pub fn get(&self, id: u64) -> Option<&Op> {
        self.ops.get(id)
    }

    /// Sets the messages op `id` went in.
    pub fn set_messages(&mut self, id: u64, messages: std::ops::Range<u64>) {
        if let Some(o) = self.ops.get_mut(id) {
            o.messages = messages;
        }
    }

    /// The answer to op `id`'s chunk at `offset` came on `conn`.
    pub fn answered(&mut self, conn: ConnId, id: u64, offset: u64) -> Answered {
        let Some(op) = self.ops.get_mut(id) else {
            return Answered::Stray;
        };
        if op.conn != conn {
            return Answered::Stray;
        }
        let Some(i) = op.chunks.iter().position(|&c| c == offset) else {
            return Answered::Stray;
        };
        op.chunks.swap_remove(i);
        if op.chunks.is_empty() {
            Answered::Done
        } else {
            Answered::More
        }
    }

    /// Removes op `id` (answered, failed or cancelled).
    pub fn take(&mut self, id: u64) -> Option<Op> {
        let op = self.ops.remove(id)?;
        if op.deadline.is_some() {
            self.timed -= 1;
        }
        Some(op)
    }

    /// The waiting op whose messages include message `message` on `conn`.
    pub fn by_message(&mut self, conn: ConnId, message: u64) -> Option<Op> {
        let id = self
            .ops
            .iter()
            .find(|(_, o)| o.conn == conn && o.messages.contains(&message))
            .map(|(k, _)| k)?;
        self.take(id)
    }

    /// The ops whose deadline passed by `now`, removed.
    pub fn expired(&mut self, now: Instant) -> Vec<Op> {
        let mut out = Vec::new();
        while let Some(Reverse((d, id))) = self.deadlines.peek().copied() {
            if d > now {
                break;
            }
            self.deadlines.pop();
            if let Some(o) = self.ops.get(id)
                && o.deadline == Some(d)
                && let Some(o) = self.take(id)
            {
                out.push(o);
            }
        }
        out
    }

    /// The soonest deadline of a waiting op.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((d, id))) = self.deadlines.peek().copied() {
            if self.ops.get(id).is_some_and(|o| o.deadline == Some(d)) {
                return Some(d);
            }
            self.deadlines.pop();
        }
        None
    }

    /// A connection closed: its ops, removed.
    pub fn conn_closed(&mut self, conn: ConnId) -> Vec<Op> {
        let ids: Vec<u64> = self
            .ops
            .iter()
            .filter(|(_, o)| o.conn == conn)
            .map(|(k, _)| k)
            .collect();
        ids.into_iter().filter_map(|id| self.take(id)).collect()
    }
}

/// Copies `data`, the get's bytes from position `at` of the whole get, into its landing
/// segments.
pub fn scatter(landings: &[Landing], mut at: usize, mut data: &[u8]) {
    for l in landings {
        if data.is_empty() {
            return;
        }
        if at >= l.len {
            at -= l.len;
            continue;
        }
        let n = (l.len - at).min(data.len());
        // The landing was range-checked when the get was issued.
        if let Err(e) = l.region.write(l.offset + at, &data[..n]) {
            log::error!("a get's landing segment is out of its region: {e}");
        }
        data = &data[n..];
        at = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(conn: u64, chunks: Vec<u64>) -> Op {
        Op {
            id: 0,
            conn: ConnId(conn),
            app_conn: ConnId(conn),
            token: 9,
            kind: OpKind::Put,
            buffer: 1,
            offset: 0,
            len: 10,
            chunks,
            notify: false,
            deadline: None,
            messages: 0..0,
        }
    }

    #[test]
    fn an_op_is_done_when_each_chunk_is_answered_once() {
        let mut i = Initiator::default();
        let id = i.issue(op(1, vec![0, 4]));
        assert_eq!(
            i.answered(ConnId(2), id, 0),
            Answered::Stray,
            "another conn"
        );
        assert_eq!(
            i.answered(ConnId(1), id, 7),
            Answered::Stray,
            "no such chunk"
        );
        assert_eq!(i.answered(ConnId(1), id, 4), Answered::More);
        assert_eq!(i.answered(ConnId(1), id, 4), Answered::Stray, "a duplicate");
        assert_eq!(i.answered(ConnId(1), id, 0), Answered::Done);
        assert!(i.take(id).is_some());
        assert_eq!(i.answered(ConnId(1), id, 0), Answered::Stray, "gone");
    }

    #[test]
    fn deadlines_expire_in_order_and_taken_ops_do_not() {
        let mut i = Initiator::default();
        let now = Instant::now();
        let mut a = op(1, vec![0]);
        a.deadline = Some(now);
        let mut b = op(1, vec![0]);
        b.deadline = Some(now + std::time::Duration::from_secs(60));
        let a = i.issue(a);
        let b = i.issue(b);
        let c = i.issue(op(1, vec![0]));
        assert!(i.timed());
        assert_eq!(i.next_deadline(), Some(now));
        let gone: Vec<u64> = i.expired(now).iter().map(|o| o.id).collect();
        assert_eq!(gone, vec![a]);
        i.take(b);
        assert!(!i.timed());
        assert_eq!(i.next_deadline(), None);
        assert_eq!(i.waiting(), 1);
        assert_eq!(i.conn_closed(ConnId(1)).len(), 1);
        assert!(i.get(c).is_none());
    }

    use proptest::prelude::*;

    proptest! {
        /// Any answers a peer sends (right or wrong connection, known or made-up ops and
        /// chunks, duplicates): each op ends once, after every one of its chunks was answered
        /// on its own connection.
        #[test]
        fn fuzz_each_op_ends_once_after_all_its_chunks(
            answers in proptest::collection::vec((1u64..3, 0usize..4, 0u64..5), 1..300)
        ) {
            let mut i = Initiator::default();
            let ids: Vec<u64> = (0..3).map(|k| i.issue(op(1 + k % 2, vec![0, 1, 2]))).collect();
            let mut ended = std::collections::HashMap::new();
            let mut seen: std::collections::HashSet<(u64, u64)> = Default::default();
            for (conn, pick, chunk) in answers {
                let id = ids.get(pick).copied().unwrap_or(ids[0] ^ (1 << 40));
                let own = i.get(id).map(|o| o.conn.raw());
                match i.answered(ConnId(conn), id, chunk) {
                    Answered::Stray => {}
                    a => {
                        prop_assert_eq!(own, Some(conn), "an answer on another connection counted");
                        prop_assert!(chunk < 3 && seen.insert((id, chunk)), "a chunk counted twice");
                        if a == Answered::Done {
                            prop_assert!(ended.insert(id, ()).is_none(), "an op ended twice");
                            prop_assert_eq!(seen.iter().filter(|s| s.0 == id).count(), 3);
                            i.take(id);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn scatter_spreads_a_chunk_over_segments_from_its_position() {
        let r = Region::new(16).unwrap();
        let land = vec![
            Landing {
                region: r.clone(),
                offset: 0,
                len: 3,
            },
            Landing {
                region: r.clone(),
                offset: 8,
                len: 4,
            },
        ];
        scatter(&land, 2, &[1, 2, 3, 4]);
        assert_eq!(
            r.to_vec(0, 16).unwrap()[..12],
            [0, 0, 1, 0, 0, 0, 0, 0, 2, 3, 4, 0]
        );
    }
}
