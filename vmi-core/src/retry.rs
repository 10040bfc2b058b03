//! Connect retry: a connect to a peer that is not there yet (no transport can reach it, or
//! the transport found nobody listening or timed out) is tried again, with backoff, until it
//! succeeds, fails for another reason (rejected, mismatched filters, authentication), or the
//! process's connect deadline passes ([`crate::Options::connect_wait`], `VMI_CONNECT_TIMEOUT`).
//! The application hears of the connect once, as without retries; start-up order then does
//! not matter. With a deadline of zero (the default) nothing is tracked and a connect fails
//! at once, as before.
//!
//! This module is the bookkeeping only (no I/O, no clock of its own: time is an argument);
//! `ops` and `dispatch` act on its verdicts.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use crate::conn::ConnId;
use crate::status::Status;

/// First pause between attempts.
const FIRST_DELAY: Duration = Duration::from_millis(10);
/// Longest pause between attempts.
const MAX_DELAY: Duration = Duration::from_millis(500);

/// What a connect that is retried needs to be issued again.
#[derive(Debug)]
pub(crate) struct Pending {
    pub conn: ConnId,
    pub host: String,
    pub key: String,
    pub data: Vec<u8>,
    pub token: u64,
    /// How long this connect may wait for its peer.
    wait: Duration,
    /// When the application gives up on the peer.
    deadline: Instant,
    started: Instant,
    /// When the next attempt is due (meaningful while not in flight).
    next: Instant,
    delay: Duration,
    /// An attempt is with a transport now.
    in_flight: bool,
    attempts: u32,
}

/// What to do with a finished connect attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Tell the application (the connect is no longer tracked); the text, when there is
    /// one, is added to the failure's detail.
    Deliver(Option<String>),
    /// Say nothing: another attempt is scheduled.
    Again,
}

/// The connects being retried.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    wait: Duration,
    list: Vec<Pending>,
    /// Entries not in flight (waiting for their next attempt).
    waiting: usize,
}

/// Whether a failure means "the peer is not (yet) there".
pub(crate) fn retryable(status: Status) -> bool {
    matches!(status, Status::Unreachable | Status::Timeout)
}

impl Retries {
    /// Retries for up to `wait` after each connect is issued (zero: none).
    pub fn new(wait: Duration) -> Retries {
        Retries {
            wait,
            ..Retries::default()
        }
    }

    /// How long a connect may wait for its peer.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Nothing tracked.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Connects waiting for their next attempt (the poll's inline check).
    #[inline]
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Starts tracking a connect issued now that may wait `wait` for its peer: with a
    /// transport (`in_flight`), or waiting for one that can reach the peer.
    #[allow(clippy::too_many_arguments)]
    pub fn track(
        &mut self,
        conn: ConnId,
        host: &str,
        key: &str,
        data: &[u8],
        token: u64,
        (now, wait): (Instant, Duration),
        in_flight: bool,
    ) {
        self.list.push(Pending {
            conn,
            host: host.to_string(),
            key: key.to_string(),
            data: data.to_vec(),
            token,
            wait,
            deadline: now + wait,
            started: now,
            next: now + FIRST_DELAY,
            delay: FIRST_DELAY,
            in_flight,
            attempts: 1,
        });
        if !in_flight {
            self.waiting += 1;
        }
    }

    fn find(&self, conn: ConnId) -> Option<usize> {
        self.list.iter().position(|p| p.conn == conn)
    }

    /// Stops tracking `conn` (the application disconnected it); returns its record and
    /// whether it was waiting (no attempt with a transport).
    pub fn remove(&mut self, conn: ConnId) -> Option<(Pending, bool)> {
        let i = self.find(conn)?;
        let p = self.list.swap_remove(i);
        let waiting = !p.in_flight;
        if waiting {
            self.waiting -= 1;
        }
        Some((p, waiting))
    }

    /// An attempt for `conn` finished with `status` (`detail` from the transport): try again
    /// later, or tell the application.
    pub fn finished(
        &mut self,
        conn: ConnId,
        status: Status,
        detail: &str,
        now: Instant,
    ) -> Verdict {
        let Some(i) = self.find(conn) else {
            return Verdict::Deliver(None);
        };
        if !retryable(status) {
            self.list.swap_remove(i);
            return Verdict::Deliver(None);
        }
        let p = &self.list[i];
        if p.attempts == 1 {
            log::info!(
                "connect to '{}' at {}: {detail}; trying again until {:.1} s have passed (connect wait)",
                p.key,
                p.host,
                p.wait.as_secs_f64()
            );
        } else {
            log::debug!(
                "connect to '{}' at {}, attempt {}: {detail}",
                p.key,
                p.host,
                p.attempts
            );
        }
        match self.again_or_give_up(i, now) {
            Some(note) => Verdict::Deliver(Some(note)),
            None => Verdict::Again,
        }
    }

    /// A waiting connect found no transport again (`reasons`): when its deadline has
    /// passed, the text for its failure; otherwise `None` (rescheduled).
    pub fn unreachable(&mut self, conn: ConnId, reasons: &str, now: Instant) -> Option<String> {
        let i = self.find(conn)?;
        let p = &self.list[i];
        let head = format!(
            "no transport can reach key '{}' at '{}': {reasons}",
            p.key, p.host
        );
        log::debug!("connect: {head}");
        self.again_or_give_up(i, now).map(|note| head + &note)
    }

    /// Schedules entry `i`'s next attempt, or, past its deadline, stops tracking it and
    /// returns the note for its failure.
    fn again_or_give_up(&mut self, i: usize, now: Instant) -> Option<String> {
        if now >= self.list[i].deadline {
            return Some(self.gave_up(i, now));
        }
        self.schedule(i, now);
        None
    }

    fn schedule(&mut self, i: usize, now: Instant) {
        let p = &mut self.list[i];
        // The last attempt is made at the deadline, not a pause before it.
        p.next = (now + p.delay).min(p.deadline);
        p.delay = (p.delay * 2).min(MAX_DELAY);
        if p.in_flight {
            p.in_flight = false;
            self.waiting += 1;
        }
    }

    fn gave_up(&mut self, i: usize, now: Instant) -> String {
        let p = self.list.swap_remove(i);
        if !p.in_flight {
            self.waiting -= 1;
        }
        format!(
            " (tried {} time(s) over {:.1} s, the connect wait; a longer one: connect_with, Options::connect_wait or VMI_CONNECT_TIMEOUT)",
            p.attempts,
            now.saturating_duration_since(p.started).as_secs_f64()
        )
    }

    /// The connects due for another attempt at `now`, marked in flight.
    pub fn due(&mut self, now: Instant) -> Vec<(ConnId, String, String, Vec<u8>, u64)> {
        let mut out = Vec::new();
        for p in &mut self.list {
            if !p.in_flight && p.next <= now {
                p.in_flight = true;
                p.attempts += 1;
                self.waiting -= 1;
                out.push((
                    p.conn,
                    p.host.clone(),
                    p.key.clone(),
                    p.data.clone(),
                    p.token,
                ));
            }
        }
        out
    }

    /// When the next waiting connect is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.list
            .iter()
            .filter(|p| !p.in_flight)
            .map(|p| p.next)
            .min()
    }
}

/// Reads `VMI_CONNECT_TIMEOUT` (seconds, decimals allowed) through `env`.
pub(crate) fn wait_from_env(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Duration>, String> {
    let Some(v) = env("VMI_CONNECT_TIMEOUT") else {
        return Ok(None);
    };
    let secs = crate::params::parse_seconds(&v)?;
    Ok(Some(Duration::from_secs_f64(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> ConnId {
        ConnId(n << 32 | 1)
    }

    #[test]
    fn a_missing_peer_is_tried_again_with_backoff_until_the_deadline() {
        let t0 = Instant::now();
        let mut r = Retries::new(Duration::from_millis(200));
        r.track(id(1), "localhost", "k", b"data", 7, (t0, r.wait()), true);
        assert_eq!(r.waiting(), 0);
        assert_eq!(
            r.finished(id(1), Status::Unreachable, "nobody", t0),
            Verdict::Again
        );
        assert_eq!(r.waiting(), 1);
        assert!(r.due(t0).is_empty(), "not before its pause");
        let due = r.due(t0 + Duration::from_millis(10));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].3, b"data");
        assert_eq!(due[0].4, 7);
        assert_eq!(r.waiting(), 0);
        // The pause doubles: 20 ms after the second failure.
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(
            r.finished(id(1), Status::Timeout, "slow", t1),
            Verdict::Again
        );
        assert_eq!(r.next_due(), Some(t1 + Duration::from_millis(20)));
        // Past the deadline: the application hears why, and how long it waited.
        let late = t0 + Duration::from_millis(200);
        let _ = r.due(late);
        match r.finished(id(1), Status::Unreachable, "nobody", late) {
            Verdict::Deliver(Some(note)) => assert!(note.contains("tried 3 time(s)"), "{note}"),
            v => panic!("{v:?}"),
        }
        assert!(r.is_empty());
        assert_eq!(r.waiting(), 0);
    }

    #[test]
    fn other_failures_and_successes_are_delivered_at_once() {
        let t0 = Instant::now();
        let mut r = Retries::new(Duration::from_secs(10));
        for (n, st) in [
            (1, Status::Rejected),
            (2, Status::Mismatch),
            (3, Status::Ok),
        ] {
            r.track(id(n), "h", "k", b"", 0, (t0, r.wait()), true);
            assert_eq!(r.finished(id(n), st, "", t0), Verdict::Deliver(None));
        }
        assert!(r.is_empty());
        assert_eq!(
            r.finished(id(9), Status::Unreachable, "", t0),
            Verdict::Deliver(None),
            "an untracked connect is the application's at once"
        );
    }

    #[test]
    fn a_connect_with_no_transport_waits_and_can_be_cancelled() {
        let t0 = Instant::now();
        let mut r = Retries::new(Duration::from_millis(100));
        r.track(id(1), "h", "k", b"", 0, (t0, r.wait()), false);
        assert_eq!(r.waiting(), 1);
        let _ = r.due(t0 + Duration::from_millis(10));
        assert_eq!(
            r.unreachable(id(1), "no shm", t0 + Duration::from_millis(10)),
            None
        );
        assert_eq!(r.waiting(), 1);
        let text = r
            .unreachable(id(1), "no shm", t0 + Duration::from_millis(100))
            .expect("past the deadline");
        assert!(text.contains("no transport can reach key 'k'"), "{text}");
        assert_eq!(r.waiting(), 0);
        r.track(id(2), "h", "k", b"", 0, (t0, r.wait()), false);
        let (p, waiting) = r.remove(id(2)).expect("tracked");
        assert!(waiting && p.conn == id(2));
        assert_eq!(r.waiting(), 0);
        assert!(r.remove(id(2)).is_none());
    }

    #[test]
    fn the_variable_is_checked() {
        let env =
            |v: &'static str| move |k: &str| (k == "VMI_CONNECT_TIMEOUT").then(|| v.to_string());
        assert_eq!(
            wait_from_env(&env("2.5")),
            Ok(Some(Duration::from_millis(2500)))
        );
        assert_eq!(wait_from_env(&env("0")), Ok(Some(Duration::ZERO)));
        assert!(
            wait_from_env(&env("ten"))
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            wait_from_env(&env("-1"))
                .unwrap_err()
                .contains("not a number")
        );
        assert!(wait_from_env(&env("inf")).is_err());
        assert_eq!(wait_from_env(&|_: &str| None), Ok(None));
    }
}
