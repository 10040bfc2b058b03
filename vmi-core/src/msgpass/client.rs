//! The client side of send/receive/reply: the requests this process sent that wait for an
//! answer. No I/O and no clock of its own: the caller passes the time.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::conn::ConnId;
use crate::table::Table;

/// A request that waits for its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Its id (on the wire and in [`crate::RequestId`]); set by [`Client::issue`].
    pub id: u64,
    /// The connection it went on (the real one, not an alias).
    pub conn: ConnId,
    /// The handle the application knows the connection by.
    pub app_conn: ConnId,
    /// The application's token, given back with the answer.
    pub token: u64,
    /// The most reply bytes it takes.
    pub reply_max: usize,
    /// When it fails with a timeout, if ever.
    pub deadline: Option<Instant>,
    /// The index of its message on the connection (for the peer's "message N failed").
    pub message: u64,
    /// Its answer is kept for a blocking caller instead of delivered to the handler.
    pub parked: bool,
}

/// The requests waiting for answers.
#[derive(Default)]
pub struct Client {
    pending: Table<Pending>,
    /// Deadlines, soonest first (entries of requests answered meanwhile are skipped).
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// How many pending requests have a deadline (none: no clock reads in `poll`).
    timed: usize,
}

impl Client {
    /// Records a request about to go out; returns its id (never 0, and never the id of a
    /// later request once this one is gone).
    #[inline(always)]
    pub fn issue(&mut self, p: Pending) -> u64 {
        let deadline = p.deadline;
        let id = self.pending.insert_with(|id| Pending { id, ..p });
        if let Some(d) = deadline {
            self.timed += 1;
            self.deadlines.push(Reverse((d, id)));
        }
        id
    }

    /// The number of requests waiting.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// True when some waiting request has a deadline.
    pub fn timed(&self) -> bool {
        self.timed > 0
    }

    /// An answer for request `id` arrived on `conn`: the request, if it waits there (an
    /// answer on another connection, or for a request that timed out or was cancelled, is
    /// not one).
    #[inline(always)]
    pub fn answered(&mut self, conn: ConnId, id: u64) -> Option<Pending> {
        if self.pending.get(id)?.conn != conn {
            return None;
        }
        self.take(id)
    }

    /// The deadline of waiting request `id`, if it has one.
    pub fn deadline(&self, id: u64) -> Option<Instant> {
        self.pending.get(id)?.deadline
    }

    /// The soonest deadline of a waiting request (perhaps of one answered since: a
    /// wake-up too early, never too late).
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.timed == 0 {
            return None;
        }
        self.deadlines.peek().map(|r| r.0.0)
    }

    /// Removes request `id` (cancelled, or its message could not be sent).
    #[inline(always)]
    pub fn take(&mut self, id: u64) -> Option<Pending> {
        let p = self.pending.remove(id)?;
        if p.deadline.is_some() {
            self.timed -= 1;
            if self.deadlines.len() > 2 * self.timed + 64 {
                // Mostly deadlines of answered requests: rebuild from the waiting ones, so
                // the heap stays within a constant factor of them (amortised O(1)).
                self.deadlines = self
                    .pending
                    .iter()
                    .filter_map(|(id, p)| p.deadline.map(|d| Reverse((d, id))))
                    .collect();
            }
        }
        Some(p)
    }

    /// The request whose message had index `message` on `conn`.
    pub fn by_message(&mut self, conn: ConnId, message: u64) -> Option<Pending> {
        let id = self
            .pending
            .iter()
            .find(|(_, p)| p.conn == conn && p.message == message)?
            .0;
        self.take(id)
    }

    /// Removes and returns the requests whose deadline passed, soonest deadline first.
    pub fn expired(&mut self, now: Instant) -> Vec<Pending> {
        let mut gone = Vec::new();
        while let Some(&Reverse((d, id))) = self.deadlines.peek() {
            if d > now {
                break;
            }
            self.deadlines.pop();
            if let Some(p) = self.take(id) {
                gone.push(p);
            }
        }
        gone
    }

    /// Removes and returns the requests that went on `conn` (it closed), oldest first.
    pub fn conn_closed(&mut self, conn: ConnId) -> Vec<Pending> {
        let mut ids: Vec<(u64, u64)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.conn == conn)
            .map(|(id, p)| (p.message, id))
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|(_, id)| self.take(id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn p(conn: u64, deadline: Option<Instant>, message: u64) -> Pending {
        Pending {
            id: 0,
            conn: ConnId(conn),
            app_conn: ConnId(conn),
            token: message * 10,
            reply_max: 64,
            deadline,
            message,
            parked: false,
        }
    }

    #[test]
    fn an_answer_is_taken_once_and_only_on_its_connection() {
        let mut c = Client::default();
        let id = c.issue(p(1, None, 1));
        assert_ne!(id, 0);
        assert_eq!(c.answered(ConnId(2), id), None);
        assert_eq!(
            c.answered(ConnId(1), id).map(|p| (p.id, p.token)),
            Some((id, 10))
        );
        assert_eq!(c.answered(ConnId(1), id), None);
        assert_eq!(c.waiting(), 0);
        let again = c.issue(p(1, None, 2));
        assert_ne!(again, id, "a new request never takes an old id");
        assert_eq!(c.answered(ConnId(1), id), None);
    }

    #[test]
    fn deadlines_expire_soonest_first_and_stop_clock_reads_when_gone() {
        let mut c = Client::default();
        let t0 = Instant::now();
        let late = c.issue(p(1, Some(t0 + Duration::from_millis(5)), 0));
        let early = c.issue(p(1, Some(t0), 1));
        let answered = c.issue(p(1, Some(t0), 3));
        c.issue(p(1, None, 2));
        assert!(c.answered(ConnId(1), answered).is_some());
        assert!(c.timed());
        assert!(c.expired(t0 - Duration::from_millis(1)).is_empty());
        let gone: Vec<u64> = c
            .expired(t0 + Duration::from_millis(10))
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(gone, vec![early, late]);
        assert!(!c.timed());
        assert_eq!(c.waiting(), 1);
    }

    #[test]
    fn deadlines_of_answered_requests_do_not_pile_up() {
        let mut c = Client::default();
        let far = Instant::now() + Duration::from_secs(60);
        let keep = c.issue(p(1, Some(far), 0));
        for m in 1..10_000 {
            let id = c.issue(p(1, Some(far), m));
            c.answered(ConnId(1), id).unwrap();
            assert!(c.deadlines.len() <= 2 * c.timed + 65);
        }
        assert_eq!(
            c.expired(far).iter().map(|p| p.id).collect::<Vec<_>>(),
            vec![keep]
        );
    }

    #[test]
    fn a_closed_connection_fails_its_requests_only() {
        let mut c = Client::default();
        let a = c.issue(p(1, None, 0));
        let b = c.issue(p(2, None, 0));
        let d = c.issue(p(1, None, 1));
        let gone: Vec<u64> = c.conn_closed(ConnId(1)).iter().map(|p| p.id).collect();
        assert_eq!(gone, vec![a, d]);
        assert_eq!(c.by_message(ConnId(2), 0).map(|p| p.id), Some(b));
    }
}
