//! The replies, refusals, cancels and pulses a process sent recently, by connection and
//! message index, so that the peer's "message N failed" finds what N was (a request is
//! found among the client's waiting ones instead). A fixed ring: the oldest are forgotten.
//! No I/O.
#![forbid(unsafe_code)]

use crate::conn::ConnId;

/// How many sent messages are remembered.
pub const KEPT: usize = 4096;

/// What a remembered message was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// A reply (or error answer) to the client's request id.
    Answer(u64),
    /// A pulse, a refusal or a cancel: nobody waits for it.
    Notice,
    /// An entry already taken.
    Taken,
}

/// The ring of recently sent messages.
#[derive(Default)]
pub struct SentLog {
    entries: Vec<(ConnId, u64, Sent)>,
    /// Where the next entry goes once the ring is full (the oldest).
    next: usize,
}

impl SentLog {
    /// Remembers message `message` on `conn`, forgetting the oldest when full.
    #[inline(always)]
    pub fn record(&mut self, conn: ConnId, message: u64, what: Sent) {
        if self.entries.len() < KEPT {
            self.entries.push((conn, message, what));
        } else {
            self.entries[self.next] = (conn, message, what);
            self.next = (self.next + 1) % KEPT;
        }
    }

    /// What message `message` on `conn` was, if remembered (once: it is forgotten then).
    pub fn take(&mut self, conn: ConnId, message: u64) -> Option<Sent> {
        let e = self
            .entries
            .iter_mut()
            .find(|e| e.0 == conn && e.1 == message && e.2 != Sent::Taken)?;
        Some(std::mem::replace(&mut e.2, Sent::Taken))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_found_once_and_the_oldest_are_forgotten() {
        let mut log = SentLog::default();
        let (a, b) = (ConnId(1), ConnId(2));
        log.record(a, 0, Sent::Answer(7));
        log.record(b, 0, Sent::Notice);
        assert_eq!(log.take(a, 0), Some(Sent::Answer(7)));
        assert_eq!(log.take(a, 0), None, "taken once");
        assert_eq!(log.take(b, 0), Some(Sent::Notice));
        for m in 1..=KEPT as u64 {
            log.record(a, m, Sent::Answer(m));
        }
        // The ring is full of a's messages 1..=KEPT minus the two oldest slots' overwrite.
        assert_eq!(log.take(a, 1), Some(Sent::Answer(1)));
        log.record(a, 5000, Sent::Answer(5000));
        log.record(a, 5001, Sent::Answer(5001));
        log.record(a, 5002, Sent::Answer(5002));
        assert_eq!(log.take(a, 2), None, "the oldest is forgotten");
        assert_eq!(log.take(a, 5002), Some(Sent::Answer(5002)));
        assert_eq!(log.take(a, KEPT as u64), Some(Sent::Answer(KEPT as u64)));
    }
}
