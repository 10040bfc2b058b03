//! Simultaneous connects: two processes that connect to each other at the same moment end
//! with one connection, the same on both sides, whatever order the messages cross in.
//!
//! Every connect's data starts with a 14-byte header (`VMIX`, version, kind 0, a connect id
//! unique in this process) and every answer's reply data with one (kind 0: nothing to say,
//! `CROSS`: "my connect `id` to you wins", `SUPERSEDED`: "I dropped my connect `id` to
//! you"); the application never sees them. The connect of the process with the smaller key
//! wins:
//!
//! - The winner W, asked by L while its own connect to L is pending, rejects L's request with
//!   `CROSS` and its own id; asked by L for a connect L said it dropped, rejects it quietly.
//! - The loser L, asked by W while its own connect X to W is pending, accepts W's request
//!   without asking its application (the reply says `SUPERSEDED` with X's id) and makes X an
//!   alias of the accepted connection: the application keeps using X, its `connected`
//!   arrives when the answer went out, and X's own outcome is never shown (if W accepted it
//!   after all, it is closed quietly). When X is rejected with `CROSS` before W's request
//!   arrives, L waits for that request (up to `EXPECT_WAIT`) instead of reporting the
//!   rejection.
//!
//! Without a header (a peer that speaks no vmi, a hand-made hello) the data passes unchanged.
//! Off when the specfile has rails (a bond's first connection is its own identity there).
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::conn::{ConnId, ConnState};
use crate::status::Status;

const MAGIC: &[u8; 5] = b"VMIX\x01";
/// Header length.
pub(crate) const HEADER: usize = 14;
/// Kinds of reply headers.
pub(crate) const PLAIN: u8 = 0;
pub(crate) const CROSS: u8 = 1;
pub(crate) const SUPERSEDED: u8 = 2;
/// Kind of a connect header: a named chain's header follows (see `chains`).
pub(crate) const NAMED: u8 = 3;
/// How long a loser whose connect was rejected as crossed waits for the winner's request.
pub(crate) const EXPECT_WAIT: Duration = Duration::from_secs(15);
/// Dropped connects remembered per process, at most.
const CANCELLED_MAX: usize = 1024;

/// A header followed by `data`.
pub(crate) fn wrap(kind: u8, id: u64, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER + data.len());
    v.extend_from_slice(MAGIC);
    v.push(kind);
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(data);
    v
}

/// The header's kind and id, and the application's bytes; `(PLAIN, 0, all)` without one.
pub(crate) fn split(b: &[u8]) -> (u8, u64, &[u8]) {
    if b.len() >= HEADER && b.starts_with(MAGIC) {
        let id = u64::from_le_bytes(b[6..14].try_into().expect("8 bytes"));
        (b[5], id, &b[HEADER..])
    } else {
        (PLAIN, 0, b)
    }
}

/// What the acceptor does with a request, decided here.
pub(crate) enum Answer {
    /// Ask the application.
    App,
    /// Accept without asking; the reply header's kind and id.
    Accept(u8, u64),
    /// Reject without asking; the reply header's kind and id, and a reason.
    Reject(u8, u64, &'static str),
}

/// What to do with a finished connect of this process.
pub(crate) enum Outcome {
    /// Tell the application.
    Deliver,
    /// Say nothing (an alias answers for it, or it waits for the winner's request).
    Quiet,
    /// Say nothing and close it (accepted after it was dropped).
    Close,
}

/// The state of simultaneous-connect resolution.
pub(crate) struct Crossings {
    enabled: bool,
    local_key: String,
    next_id: u64,
    /// Pending connects of the application: connection → (id, token).
    pending: HashMap<u64, (u64, u64)>,
    /// The application's connection → the connection that carries it.
    to_real: HashMap<u64, ConnId>,
    /// A carrying connection → the application's.
    to_app: HashMap<u64, ConnId>,
    /// Connects whose own outcome is never shown.
    superseded: HashSet<u64>,
    /// Accepted without asking: carrying connection → (application's connection, token),
    /// until the answer went out.
    answering: HashMap<u64, (ConnId, u64)>,
    /// A loser waiting for the winner's request: (peer key, its connect id) →
    /// (application's connection, token, deadline).
    expected: HashMap<(String, u64), (ConnId, u64, Instant)>,
    /// Connects the peers said they dropped: rejected quietly when they arrive.
    cancelled: VecDeque<(String, u64)>,
}

impl Crossings {
    pub(crate) fn new(enabled: bool, local_key: &str) -> Crossings {
        let seed = vmi_device::auth::nonce();
        Crossings {
            enabled,
            local_key: local_key.to_string(),
            next_id: u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")) | 1,
            pending: HashMap::new(),
            to_real: HashMap::new(),
            to_app: HashMap::new(),
            superseded: HashSet::new(),
            answering: HashMap::new(),
            expected: HashMap::new(),
            cancelled: VecDeque::new(),
        }
    }

    /// A new connect id (never 0).
    pub(crate) fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(2);
        id
    }

    /// The application issued connect `conn` with id `id`.
    pub(crate) fn issued(&mut self, conn: ConnId, id: u64, token: u64) {
        if self.enabled {
            self.pending.insert(conn.raw(), (id, token));
        }
    }

    /// The connection that carries the application's `conn`.
    #[inline]
    pub(crate) fn real(&self, conn: ConnId) -> ConnId {
        if self.to_real.is_empty() {
            return conn;
        }
        self.to_real.get(&conn.raw()).copied().unwrap_or(conn)
    }

    /// The application's name for connection `conn`.
    #[inline]
    pub(crate) fn app(&self, conn: ConnId) -> ConnId {
        if self.to_app.is_empty() {
            return conn;
        }
        self.to_app.get(&conn.raw()).copied().unwrap_or(conn)
    }

    /// Connects waiting for a crossing peer's request.
    pub(crate) fn waits(&self) -> usize {
        self.expected.len()
    }

    /// True when some handle stands for another connection.
    pub(crate) fn aliased(&self) -> bool {
        !self.to_real.is_empty()
    }

    /// True when no loser waits for a winner's request.
    #[inline]
    pub(crate) fn idle(&self) -> bool {
        self.expected.is_empty()
    }

    fn alias(&mut self, app: ConnId, real: ConnId, token: u64) {
        self.to_real.insert(app.raw(), real);
        self.to_app.insert(real.raw(), app);
        self.answering.insert(real.raw(), (app, token));
    }

    /// A connect request from `key` whose header carried `id`. `connecting` tells whether a
    /// connection of this process is still connecting.
    pub(crate) fn request(
        &mut self,
        real: ConnId,
        key: &str,
        id: u64,
        connecting: impl Fn(ConnId) -> Option<(ConnState, String)>,
    ) -> (Answer, Option<ConnId>) {
        if !self.enabled || id == 0 {
            return (Answer::App, None);
        }
        let k = (key.to_string(), id);
        if let Some(i) = self.cancelled.iter().position(|c| *c == k) {
            self.cancelled.remove(i);
            return (
                Answer::Reject(PLAIN, 0, "the peer dropped this connect"),
                None,
            );
        }
        if let Some((app, token, _)) = self.expected.remove(&k) {
            self.alias(app, real, token);
            return (Answer::Accept(PLAIN, 0), None);
        }
        // Our own pending connect to the same peer?
        let mine = self.pending.iter().find_map(|(&raw, &(my_id, token))| {
            let c = ConnId(raw);
            match connecting(c) {
                Some((ConnState::Connecting, peer)) if peer == key => Some((c, my_id, token)),
                _ => None,
            }
        });
        let Some((mine, my_id, token)) = mine else {
            return (Answer::App, None);
        };
        if self.local_key.as_str() < key {
            log::info!(
                "{mine}: '{key}' connected to this process at the same moment; this side's connect wins"
            );
            return (
                Answer::Reject(
                    CROSS,
                    my_id,
                    "both sides connected at once; the other connect wins",
                ),
                None,
            );
        }
        log::info!(
            "{mine}: '{key}' connected to this process at the same moment; its connect wins and carries this one"
        );
        self.pending.remove(&mine.raw());
        self.superseded.insert(mine.raw());
        self.alias(mine, real, token);
        (Answer::Accept(SUPERSEDED, my_id), Some(mine))
    }

    /// True when `real` was accepted without asking the application (its own connect
    /// reports the outcome).
    pub(crate) fn is_answering(&self, real: ConnId) -> bool {
        self.answering.contains_key(&real.raw())
    }

    /// The answer to request `real` went out: `Some((application's connection, token))`
    /// when the application is to hear of it as its connect.
    pub(crate) fn answered(&mut self, real: ConnId, accepted: bool) -> Option<(ConnId, u64)> {
        let (app, token) = self.answering.remove(&real.raw())?;
        if !accepted {
            self.to_real.remove(&app.raw());
            self.to_app.remove(&real.raw());
        }
        Some((app, token))
    }

    /// A connect of this process finished; `kind` and `id` from the reply's header.
    pub(crate) fn connected(
        &mut self,
        conn: ConnId,
        peer: &str,
        status: Status,
        (kind, id): (u8, u64),
        now: Instant,
    ) -> Outcome {
        let (ok, rejected) = (status == Status::Ok, status == Status::Rejected);
        if !self.enabled {
            return Outcome::Deliver;
        }
        let mine = self.pending.remove(&conn.raw());
        if self.superseded.remove(&conn.raw()) {
            return if ok { Outcome::Close } else { Outcome::Quiet };
        }
        if rejected
            && kind == CROSS
            && id != 0
            && let Some((_, token)) = mine
        {
            log::info!(
                "{conn}: '{peer}' connected to this process at the same moment; waiting for its connect"
            );
            self.expected
                .insert((peer.to_string(), id), (conn, token, now + EXPECT_WAIT));
            return Outcome::Quiet;
        }
        if ok && kind == SUPERSEDED && id != 0 {
            if self.cancelled.len() >= CANCELLED_MAX {
                self.cancelled.pop_front();
            }
            self.cancelled.push_back((peer.to_string(), id));
        }
        Outcome::Deliver
    }

    /// Waits that passed their deadline: (application's connection, token).
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<(ConnId, u64)> {
        let gone: Vec<(String, u64)> = self
            .expected
            .iter()
            .filter(|(_, (_, _, d))| *d <= now)
            .map(|(k, _)| k.clone())
            .collect();
        gone.into_iter()
            .filter_map(|k| self.expected.remove(&k))
            .map(|(c, t, _)| (c, t))
            .collect()
    }

    /// A connection closed: forget its alias.
    pub(crate) fn closed(&mut self, real: ConnId) {
        if let Some(app) = self.to_app.remove(&real.raw()) {
            self.to_real.remove(&app.raw());
        }
        self.pending.remove(&real.raw());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_plain_data_passes() {
        let w = wrap(CROSS, 77, b"data");
        assert_eq!(split(&w), (CROSS, 77, &b"data"[..]));
        assert_eq!(split(b"VMIX"), (PLAIN, 0, &b"VMIX"[..]));
        assert_eq!(split(b"hello"), (PLAIN, 0, &b"hello"[..]));
    }

    /// Both orders of crossing, driven by hand: the winner's rule and the loser's alone give
    /// one connection.
    #[test]
    fn the_smaller_key_wins_and_the_loser_carries_its_connect_on_the_winners() {
        let now = Instant::now();
        let mut w = Crossings::new(true, "a");
        let mut l = Crossings::new(true, "b");
        let (xw, xl) = (ConnId(1), ConnId(2));
        let (iw, il) = (w.new_id(), l.new_id());
        w.issued(xw, iw, 10);
        l.issued(xl, il, 20);
        let at_w = |_: ConnId| Some((ConnState::Connecting, "b".to_string()));
        let at_l = |_: ConnId| Some((ConnState::Connecting, "a".to_string()));
        // W sees L's request while its own connect is pending: CROSS.
        let (ans, _) = w.request(ConnId(3), "b", il, at_w);
        assert!(matches!(ans, Answer::Reject(CROSS, id, _) if id == iw));
        // L's connect comes back rejected with CROSS before W's request arrives: it waits.
        assert!(matches!(
            l.connected(xl, "a", Status::Rejected, (CROSS, iw), now),
            Outcome::Quiet
        ));
        // W's request arrives: accepted without asking, carried as xl.
        let (ans, _) = l.request(ConnId(4), "a", iw, at_l);
        assert!(matches!(ans, Answer::Accept(PLAIN, 0)));
        assert_eq!(l.real(xl), ConnId(4));
        assert_eq!(l.app(ConnId(4)), xl);
        assert_eq!(l.answered(ConnId(4), true), Some((xl, 20)));

        // The other order: L sees W's request first (its connect pending): it yields.
        let mut w = Crossings::new(true, "a");
        let mut l = Crossings::new(true, "b");
        let (iw, il) = (w.new_id(), l.new_id());
        w.issued(xw, iw, 10);
        l.issued(xl, il, 20);
        let (ans, superseded) = l.request(ConnId(4), "a", iw, at_l);
        assert!(matches!(ans, Answer::Accept(SUPERSEDED, id) if id == il));
        assert_eq!(superseded, Some(xl));
        // W's connect is accepted with SUPERSEDED: W remembers L's dropped connect...
        assert!(matches!(
            w.connected(xw, "b", Status::Ok, (SUPERSEDED, il), now),
            Outcome::Deliver
        ));
        // ...and rejects it quietly when it arrives after all.
        let (ans, _) = w.request(ConnId(5), "b", il, |_| None);
        assert!(matches!(ans, Answer::Reject(PLAIN, 0, _)));
        // L's own connect's outcome is never shown.
        assert!(matches!(
            l.connected(xl, "a", Status::Rejected, (PLAIN, 0), now),
            Outcome::Quiet
        ));
    }

    #[test]
    fn a_loser_stops_waiting_at_the_deadline() {
        let now = Instant::now();
        let mut l = Crossings::new(true, "b");
        let id = l.new_id();
        l.issued(ConnId(2), id, 5);
        assert!(matches!(
            l.connected(ConnId(2), "a", Status::Rejected, (CROSS, 9), now),
            Outcome::Quiet
        ));
        assert!(!l.idle());
        assert!(l.expired(now).is_empty());
        assert_eq!(l.expired(now + EXPECT_WAIT), vec![(ConnId(2), 5)]);
        assert!(l.idle());
    }
}
