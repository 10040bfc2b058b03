//! Timeouts and aborts of connections (Globus XIO's timeouts and cancel): a send timeout, a
//! disconnect that gives up after a wait, and an abort that closes at once.
//!
//! - **Send timeout** (`set_send_timeout`, or [`crate::Options::send_timeout`] for every
//!   connection). A connection's sends complete in order, so a send that cannot finish holds
//!   up every send behind it; the timeout therefore watches progress: when sends are waiting
//!   and none has completed for the timeout, the connection is aborted with
//!   [`Status::Timeout`]. This is TCP's user timeout applied to vmi's sends, on every
//!   transport. Costs nothing on connections without one: a timed send is flagged in its
//!   slot when issued, and only flagged completions touch the table.
//! - **Disconnect with a wait** (`disconnect_with`): the orderly close of `disconnect`; if it
//!   has not finished by the wait (the peer does not read what is queued), the connection is
//!   aborted with [`Status::Timeout`].
//! - **Abort** (`abort`): closes at once. Every IRB the transport holds for the connection
//!   (sends queued or partly written, a close in progress) completes with
//!   [`Status::Cancelled`] (or [`Status::Timeout`] for the two above), nothing more of it goes
//!   to the peer, which sees the connection lost; a message cut short is never delivered as
//!   whole there. It travels the chain as a `VMI_OP_ABORT` IRB (device ABI 1.5).
//!
//! The checks run from `poll` only when some connection has a timer, and then only once the
//! earliest deadline (kept as a lower bound, `ConnTable::due`) has passed: one clock read
//! per poll. `Vmi::wait` and `Vmi::arm` wake for that deadline.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use crate::handler::Disconnect;
use crate::ops::{Core, Mode};
use crate::status::Status;

/// Longest send timeout or disconnect wait (a sanity bound on a value that may come from
/// configuration): one day.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// The timers of one connection (boxed in its entry only while it has one).
#[derive(Debug)]
pub(crate) struct ConnTimer {
    /// Abort when sends wait this long with none completing.
    pub send_timeout: Option<Duration>,
    /// Timed sends issued and not completed.
    pub pending: u32,
    /// When a timed send last completed, or the first of the waiting ones was issued.
    pub progress_at: Instant,
    /// An orderly close that must be over by the instant (and the wait it was given).
    pub close: Option<(Instant, Duration)>,
    /// An abort in progress: how the connection ends for the application.
    pub ending: Option<(Status, String)>,
}

impl ConnTimer {
    pub fn new(send_timeout: Option<Duration>, now: Instant) -> ConnTimer {
        ConnTimer {
            send_timeout,
            pending: 0,
            progress_at: now,
            close: None,
            ending: None,
        }
    }

    /// When this connection must be looked at next, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        if self.ending.is_some() {
            return None;
        }
        let send = self
            .send_timeout
            .filter(|_| self.pending > 0)
            .map(|t| self.progress_at + t);
        match (send, self.close.map(|(at, _)| at)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Why the connection must be aborted at `now`, if it must.
    pub fn expired(&self, now: Instant) -> Option<String> {
        if self.ending.is_some() {
            return None;
        }
        if let Some((at, wait)) = self.close
            && now >= at
        {
            return Some(format!(
                "the orderly close did not finish within {wait:?} (the peer does not take what is queued): aborted"
            ));
        }
        if let Some(t) = self.send_timeout
            && self.pending > 0
            && now >= self.progress_at + t
        {
            return Some(format!(
                "no send completed for {t:?} while {} waited (the peer does not read, or the path to it is down): aborted",
                self.pending
            ));
        }
        None
    }
}

/// How an aborted connection's end is reported: the application's own abort is a local
/// close; a timeout is an error with its reason.
pub(crate) fn reason(ending: Option<(Status, String)>, fallback: Disconnect) -> Disconnect {
    match ending {
        Some((Status::Cancelled, _)) => Disconnect::Local,
        Some((status, detail)) => Disconnect::Error { status, detail },
        None => fallback,
    }
}

/// Checks a timeout value given by the application.
pub(crate) fn checked(what: &'static str, t: Duration) -> Result<Duration, crate::VmiError> {
    if t.is_zero() || t > MAX_TIMEOUT {
        return Err(crate::VmiError::BadTimeout {
            what,
            given: t,
            max: MAX_TIMEOUT,
        });
    }
    Ok(t)
}

/// Aborts the connections whose timers expired (from `poll`, when the earliest deadline
/// passed).
pub(crate) fn check(core: &mut Core, now: Instant) {
    let expired = core.engine.conns_mut().expired(now);
    for (conn, detail) in expired {
        log::info!("{conn}: {detail}");
        match core.abort(conn, Status::Timeout, detail) {
            Ok(Some(s)) => core.issue(s, Mode::Deferred),
            Ok(None) => {}
            Err(e) => log::debug!("{conn}: the timeout's abort was refused: {e}"),
        }
    }
    core.run_deferred();
}

/// The earliest instant a timer may expire (for `wait` and `arm`).
pub(crate) fn next_deadline(core: &Core) -> Option<Instant> {
    let conns = core.engine.conns();
    (conns.timers() > 0).then(|| conns.due()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_timeout_watches_progress_not_each_send() {
        let t0 = Instant::now();
        let mut t = ConnTimer::new(Some(Duration::from_secs(2)), t0);
        assert_eq!(t.deadline(), None, "nothing waits");
        t.pending = 3;
        t.progress_at = t0;
        assert_eq!(t.deadline(), Some(t0 + Duration::from_secs(2)));
        assert!(t.expired(t0 + Duration::from_secs(1)).is_none());
        // A completion one second in restarts the clock for the rest.
        t.pending = 2;
        t.progress_at = t0 + Duration::from_secs(1);
        assert!(t.expired(t0 + Duration::from_millis(2500)).is_none());
        let why = t.expired(t0 + Duration::from_secs(3)).expect("expired");
        assert!(why.contains("while 2 waited"), "{why}");
        // Once aborting, nothing more expires.
        t.ending = Some((Status::Timeout, why));
        assert!(t.expired(t0 + Duration::from_secs(9)).is_none());
        assert_eq!(t.deadline(), None);
    }

    #[test]
    fn a_close_wait_expires_on_its_own() {
        let t0 = Instant::now();
        let mut t = ConnTimer::new(None, t0);
        t.pending = 5;
        assert_eq!(
            t.deadline(),
            None,
            "no send timeout: waiting sends alone never expire"
        );
        t.close = Some((t0 + Duration::from_secs(1), Duration::from_secs(1)));
        assert_eq!(t.deadline(), Some(t0 + Duration::from_secs(1)));
        assert!(
            t.expired(t0 + Duration::from_secs(1))
                .unwrap()
                .contains("orderly close")
        );
    }

    #[test]
    fn the_application_s_abort_is_a_local_close_and_a_timeout_an_error() {
        assert_eq!(
            reason(Some((Status::Cancelled, "x".into())), Disconnect::Peer),
            Disconnect::Local
        );
        assert_eq!(
            reason(Some((Status::Timeout, "slow".into())), Disconnect::Local),
            Disconnect::Error {
                status: Status::Timeout,
                detail: "slow".into()
            }
        );
        assert_eq!(reason(None, Disconnect::Peer), Disconnect::Peer);
    }

    #[test]
    fn timeouts_are_bounded() {
        assert!(checked("a send timeout", Duration::ZERO).is_err());
        assert!(checked("a send timeout", MAX_TIMEOUT + Duration::from_secs(1)).is_err());
        assert!(checked("a send timeout", Duration::from_millis(5)).is_ok());
    }
}
