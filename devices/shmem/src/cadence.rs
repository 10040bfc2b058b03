//! When the transport looks at its control sockets (connects, closes, goodbyes; an
//! `epoll_wait`): once in [`EVERY`] polls, and sooner when polls are slow. The rings are read
//! at every poll; only this look is spaced out.
//!
//! A busy poll takes some 25 to 70 ns, so a look once in 1,024 polls costs a busy ping-pong
//! almost nothing (once in 128 it added about 0.035 us to an 8-byte half round trip on
//! average), while a connect or a close is still seen within some 25 to 70 us. An application
//! that polls slowly (work between its polls, no `wait`) would wait 1,024 of its polls for the
//! same, so the clock is read once in [`CLOCK_EVERY`] polls, and a look is due as soon as
//! [`AFTER`] has passed since the last one: such an application sees connects and closes
//! within [`CLOCK_EVERY`] of its polls, as before the spacing grew.
//!
//! No I/O here: the caller passes the clock, so the tests drive it.

use std::time::{Duration, Instant};

/// Polls between two looks at most.
pub const EVERY: u32 = 1024;
/// Polls between two reads of the clock.
pub const CLOCK_EVERY: u32 = 128;
/// Time after which a look is due at the next read of the clock.
pub const AFTER: Duration = Duration::from_micros(200);

/// The count of polls since the last look, and when the clock is read next.
#[derive(Debug)]
pub struct Cadence {
    /// Polls since the last look.
    since: u32,
    /// The value of `since` at which the clock is read next.
    clock_at: u32,
    /// When the last look was.
    last: Instant,
    /// A look is due at this poll (decided, or asked for with [`Cadence::soon`]).
    look: bool,
}

impl Cadence {
    /// A cadence whose last look was at `now`.
    pub fn new(now: Instant) -> Cadence {
        Cadence {
            since: 0,
            clock_at: CLOCK_EVERY,
            last: now,
            look: false,
        }
    }

    /// Counts `n` polls that passed without this device (the host's skipped ones).
    #[inline]
    pub fn count(&mut self, n: u32) {
        self.since = self.since.saturating_add(n);
    }

    /// Whether this poll must look (the caller then calls [`Cadence::looked`] once it did,
    /// or [`Cadence::count`] with 1 when the poll ends without looking). Reads the clock
    /// (`now`) only when its turn came; asking again in the same poll gives the same answer.
    #[inline]
    pub fn due(&mut self, now: impl FnOnce() -> Instant) -> bool {
        let next = self.since.saturating_add(1);
        if !self.look && (next >= EVERY || (next >= self.clock_at && self.late(now()))) {
            self.look = true;
        }
        self.look
    }

    /// The clock's turn: the next read is [`CLOCK_EVERY`] polls on; true when [`AFTER`]
    /// passed since the last look.
    #[cold]
    fn late(&mut self, now: Instant) -> bool {
        self.clock_at = self.since.saturating_add(1).saturating_add(CLOCK_EVERY);
        now.saturating_duration_since(self.last) >= AFTER
    }

    /// Asks for a look at the next poll (after a sleep, or a connect sent).
    #[inline]
    pub fn soon(&mut self) {
        self.look = true;
    }

    /// The look was done at `now`: the count starts again.
    pub fn looked(&mut self, now: Instant) {
        self.look = false;
        self.since = 0;
        self.clock_at = CLOCK_EVERY;
        self.last = now;
    }

    /// How many polls may pass without this device before it must be polled again (for the
    /// host's skips): up to the next read of the clock or the next look, whichever is first.
    pub fn skips(&self) -> u32 {
        if self.look {
            return 0;
        }
        EVERY
            .min(self.clock_at)
            .saturating_sub(self.since.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs polls of `gap` each, the host skipping what `skips` allows; returns the poll
    /// count (host polls included) at which the first look after `start` came.
    fn first_look(gap: Duration) -> u32 {
        let t0 = Instant::now();
        let mut c = Cadence::new(t0);
        let mut polls = 0u32;
        let mut t = t0;
        loop {
            let skipped = c.skips();
            c.count(skipped);
            polls += skipped;
            t += gap * skipped;
            polls += 1;
            t += gap;
            if c.due(|| t) {
                c.looked(t);
                assert!(!c.due(|| t), "the count started again");
                return polls;
            }
            c.count(1);
        }
    }

    #[test]
    fn busy_polls_look_once_in_every() {
        assert_eq!(first_look(Duration::from_nanos(30)), EVERY);
    }

    #[test]
    fn slow_polls_look_at_the_first_read_of_the_clock_after_the_wait() {
        // 1 ms a poll: the first read of the clock (after CLOCK_EVERY polls) finds it late.
        assert_eq!(first_look(Duration::from_millis(1)), CLOCK_EVERY);
        // 1 us a poll: late after 200 polls, seen at the second read (256 polls).
        assert_eq!(first_look(Duration::from_micros(1)), 2 * CLOCK_EVERY);
    }

    #[test]
    fn soon_makes_the_next_poll_look_and_the_host_skip_nothing() {
        let mut c = Cadence::new(Instant::now());
        assert_eq!(c.skips(), CLOCK_EVERY - 1);
        c.soon();
        assert_eq!(c.skips(), 0);
        assert!(c.due(|| panic!("no clock needed")));
        assert!(
            c.due(|| panic!("no clock needed")),
            "the same answer in the same poll"
        );
        c.looked(Instant::now());
        assert!(!c.due(|| panic!("not the clock's turn")));
    }

    #[test]
    fn the_clock_is_read_once_in_clock_every_polls() {
        let t0 = Instant::now();
        let mut c = Cadence::new(t0);
        let mut reads = 0;
        for _ in 0..EVERY - 1 {
            let due = c.due(|| {
                reads += 1;
                t0
            });
            assert!(!due, "no time passed, no look before EVERY");
            c.count(1);
        }
        assert_eq!(reads, (EVERY - 1) / CLOCK_EVERY);
        assert!(c.due(|| t0), "the EVERY-th poll looks");
    }
}
