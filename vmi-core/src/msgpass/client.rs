//! The client side of send/receive/reply: the requests this process sent that wait for an
//! answer. No I/O and no clock of its own: the caller passes the time.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::time::Instant;

use crate::conn::ConnId;

/// A request that waits for its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Its id (on the wire and in [`crate::RequestId`]).
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
}

/// The requests waiting for answers.
#[derive(Default)]
pub struct Client {
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// How many pending requests have a deadline (none: no clock reads in `poll`).
    timed: usize,
}

impl Client {
    /// A fresh request id (never 0, never reused in the process's life).
    pub fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Records a request that went out.
    pub fn issued(&mut self, p: Pending) {
        self.timed += usize::from(p.deadline.is_some());
        self.pending.insert(p.id, p);
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
    pub fn answered(&mut self, conn: ConnId, id: u64) -> Option<Pending> {
        if self.pending.get(&id)?.conn != conn {
            return None;
        }
        self.take(id)
    }

    /// The deadline of waiting request `id`, if it has one.
    pub fn deadline(&self, id: u64) -> Option<Instant> {
        self.pending.get(&id)?.deadline
    }

    /// Removes request `id` (cancelled).
    pub fn take(&mut self, id: u64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        self.timed -= usize::from(p.deadline.is_some());
        Some(p)
    }

    /// The request whose message had index `message` on `conn`.
    pub fn by_message(&mut self, conn: ConnId, message: u64) -> Option<Pending> {
        let id = self
            .pending
            .values()
            .find(|p| p.conn == conn && p.message == message)?
            .id;
        self.take(id)
    }

    /// Removes and returns the requests whose deadline passed, oldest id first.
    pub fn expired(&mut self, now: Instant) -> Vec<Pending> {
        if self.timed == 0 {
            return Vec::new();
        }
        let mut ids: Vec<u64> = self
            .pending
            .values()
            .filter(|p| p.deadline.is_some_and(|d| d <= now))
            .map(|p| p.id)
            .collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.take(id)).collect()
    }

    /// Removes and returns the requests that went on `conn` (it closed), oldest id first.
    pub fn conn_closed(&mut self, conn: ConnId) -> Vec<Pending> {
        let mut ids: Vec<u64> = self
            .pending
            .values()
            .filter(|p| p.conn == conn)
            .map(|p| p.id)
            .collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.take(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn p(id: u64, conn: u64, deadline: Option<Instant>, message: u64) -> Pending {
        Pending {
            id,
            conn: ConnId(conn),
            app_conn: ConnId(conn),
            token: id * 10,
            reply_max: 64,
            deadline,
            message,
        }
    }

    #[test]
    fn an_answer_is_taken_once_and_only_on_its_connection() {
        let mut c = Client::default();
        let id = c.new_id();
        c.issued(p(id, 1, None, 0));
        assert_eq!(c.answered(ConnId(2), id), None);
        assert_eq!(c.answered(ConnId(1), id).map(|p| p.token), Some(10));
        assert_eq!(c.answered(ConnId(1), id), None);
        assert_eq!(c.waiting(), 0);
    }

    #[test]
    fn deadlines_expire_in_id_order_and_stop_clock_reads_when_gone() {
        let mut c = Client::default();
        let t0 = Instant::now();
        c.issued(p(3, 1, Some(t0 + Duration::from_millis(5)), 0));
        c.issued(p(1, 1, Some(t0), 1));
        c.issued(p(2, 1, None, 2));
        assert!(c.timed());
        let gone: Vec<u64> = c
            .expired(t0 + Duration::from_millis(10))
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(gone, vec![1, 3]);
        assert!(!c.timed());
        assert_eq!(c.waiting(), 1);
    }

    #[test]
    fn a_closed_connection_fails_its_requests_only() {
        let mut c = Client::default();
        c.issued(p(1, 1, None, 0));
        c.issued(p(2, 2, None, 0));
        c.issued(p(3, 1, None, 1));
        let gone: Vec<u64> = c.conn_closed(ConnId(1)).iter().map(|p| p.id).collect();
        assert_eq!(gone, vec![1, 3]);
        assert_eq!(c.by_message(ConnId(2), 0).map(|p| p.id), Some(2));
    }
}
