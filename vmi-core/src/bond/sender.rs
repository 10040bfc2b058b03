//! The sending side of a bonded connection: fragments cut into chunks, chunks handed to
//! rails as the rails have room, everything kept until the receiver acknowledges it, and the
//! chunks of a rail that went down sent again on the others. No I/O and no clock of its own
//! (times are arguments), so the two-endpoint harness (`pair`) drives it deterministically.

use std::collections::VecDeque;
use std::sync::Arc;

use super::wire::Record;

/// Tuning of a sender.
#[derive(Clone, Copy, Debug)]
pub struct SenderConfig {
    /// Largest chunk in bytes.
    pub chunk: u64,
    /// Fragments at least this long are striped over every rail that is up; shorter ones go
    /// whole to one rail.
    pub stripe_min: u64,
    /// Bytes a rail may have handed to its transport and not yet completed.
    pub rail_window: u64,
    /// Chunks a rail may have handed to its transport and not yet completed.
    pub rail_chunks: u64,
    /// Fragments sent and not yet acknowledged, at most (the process's limit of sends in
    /// flight bounds them first; see `rails`).
    pub max_unacked: usize,
    /// Times a chunk that the receiver could not take is sent again before its fragment
    /// is failed.
    pub max_retries: u8,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            chunk: 256 * 1024,
            stripe_min: 64 * 1024,
            rail_window: 4 * 1024 * 1024,
            rail_chunks: 1024,
            max_unacked: 4096,
            max_retries: 3,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Chunk {
    offset: u64,
    len: u64,
    /// The rail it was last handed to (None: waiting in the queue).
    rail: Option<usize>,
    tries: u8,
    /// Queued again after it was handed to a rail.
    again: bool,
}

struct OutFragment<T> {
    seq: u64,
    data: Arc<[u8]>,
    end: bool,
    /// The message this fragment belongs to (0-based, counting messages on the bond).
    message: u64,
    chunks: Vec<Chunk>,
    user: Option<T>,
}

/// One rail as the sender sees it.
#[derive(Clone, Copy, Debug, Default)]
pub struct RailTx {
    /// Usable.
    pub up: bool,
    /// Bytes handed to the transport and not completed.
    pub outstanding: u64,
    /// Chunks handed to the transport and not completed.
    pub outstanding_chunks: u64,
    /// Bytes whose sends completed.
    pub bytes: u64,
    /// Chunks handed to this rail.
    pub chunks: u64,
    /// Chunks sent again on this rail after another rail failed or the receiver lost them.
    pub resent: u64,
    /// Nanoseconds this rail had bytes outstanding (for its measured bandwidth).
    pub busy_ns: u64,
    busy_since: Option<u64>,
}

impl RailTx {
    /// Measured bandwidth in bytes per second: completed bytes over the time the rail was
    /// busy (0 before anything completed).
    pub fn bandwidth(&self) -> u64 {
        if self.busy_ns == 0 {
            return 0;
        }
        (self.bytes as u128 * 1_000_000_000 / self.busy_ns as u128).min(u64::MAX as u128) as u64
    }
}

/// A chunk to hand to a rail's transport now.
#[derive(Debug)]
pub struct Outgoing {
    /// The rail.
    pub rail: usize,
    /// Its fragment.
    pub seq: u64,
    /// Where it starts in the fragment.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// The record header to send before the bytes.
    pub header: [u8; super::wire::HEADER],
    /// The fragment's bytes (the chunk is `offset..offset+len` of them).
    pub data: Arc<[u8]>,
}

/// What a lost chunk leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Lost {
    /// Queued to be sent again.
    Resend,
    /// Tried too often: send `Record::Fail` for the fragment; the application's message
    /// number is given.
    Fail {
        /// The fragment.
        seq: u64,
        /// Its message (0-based).
        message: u64,
    },
    /// Nothing to do (acknowledged already, or unknown).
    Ignore,
}

/// Why a send cannot be queued now.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    /// Too many fragments or bytes await acknowledgement: wait for acknowledgements.
    Window,
    /// No rail is up.
    NoRail,
}

/// The sending half of a bonded connection; `T` is what the application gets back when a
/// fragment is acknowledged (its buffers and token).
pub struct Sender<T> {
    cfg: SenderConfig,
    rails: Vec<RailTx>,
    /// Fragments sent and not acknowledged, in sequence order.
    unacked: VecDeque<OutFragment<T>>,
    unacked_bytes: u64,
    next_seq: u64,
    /// The message the next fragment belongs to.
    next_message: u64,
    /// Chunks waiting for a rail: (seq, chunk index); sent-again chunks go first.
    queue: VecDeque<(u64, usize)>,
}

impl<T> Sender<T> {
    /// A sender over `rails` rails, all down until [`Sender::rail_up`].
    pub fn new(cfg: SenderConfig, rails: usize) -> Sender<T> {
        Sender {
            cfg,
            rails: vec![RailTx::default(); rails],
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            next_seq: 0,
            next_message: 0,
            queue: VecDeque::new(),
        }
    }

    /// The rails.
    pub fn rails(&self) -> &[RailTx] {
        &self.rails
    }

    /// Rails that are up.
    pub fn rails_up(&self) -> usize {
        self.rails.iter().filter(|r| r.up).count()
    }

    /// Fragments sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Bytes of fragments sent and not yet acknowledged.
    pub fn unacked_bytes(&self) -> u64 {
        self.unacked_bytes
    }

    /// Chunks waiting for a rail.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Makes a rail usable.
    pub fn rail_up(&mut self, rail: usize) {
        if let Some(r) = self.rails.get_mut(rail) {
            r.up = true;
        }
    }

    /// A rail failed or closed: every unacknowledged chunk it carried goes back to the front
    /// of the queue, in order, for the other rails (the receiver drops what it already has).
    /// Returns how many chunks were queued again.
    pub fn rail_down(&mut self, rail: usize, now_ns: u64) -> usize {
        let Some(r) = self.rails.get_mut(rail) else {
            return 0;
        };
        r.up = false;
        if let Some(since) = r.busy_since.take() {
            r.busy_ns += now_ns.saturating_sub(since);
        }
        r.outstanding = 0;
        r.outstanding_chunks = 0;
        let mut again = Vec::new();
        for f in self.unacked.iter_mut() {
            for (i, c) in f.chunks.iter_mut().enumerate() {
                if c.rail == Some(rail) {
                    c.rail = None;
                    c.again = true;
                    again.push((f.seq, i));
                }
            }
        }
        for &k in again.iter().rev() {
            self.queue.push_front(k);
        }
        again.len()
    }

    /// Queues a fragment (`end`: it ends its message). Returns its sequence number.
    pub fn push(&mut self, data: Arc<[u8]>, end: bool, user: T) -> Result<u64, (Full, T)> {
        if self.rails_up() == 0 {
            return Err((Full::NoRail, user));
        }
        let len = data.len() as u64;
        if self.unacked.len() >= self.cfg.max_unacked {
            return Err((Full::Window, user));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let chunks = self.cut(len);
        for i in 0..chunks.len() {
            self.queue.push_back((seq, i));
        }
        self.unacked_bytes += len;
        let message = self.next_message;
        if end {
            self.next_message += 1;
        }
        self.unacked.push_back(OutFragment {
            seq,
            data,
            end,
            message,
            chunks,
            user: Some(user),
        });
        Ok(seq)
    }

    /// Chunks for a fragment of `len` bytes: one below `stripe_min`, else an equal share per
    /// rail that is up, cut again to at most `chunk` bytes (the rails then pull them as they
    /// have room, so each carries a part in proportion to its bandwidth).
    fn cut(&self, len: u64) -> Vec<Chunk> {
        let size = if len < self.cfg.stripe_min {
            len.max(1)
        } else {
            let rails = self.rails_up().max(1) as u64;
            len.div_ceil(rails).clamp(1, self.cfg.chunk.max(1))
        };
        let mut v = Vec::with_capacity(len.div_ceil(size).max(1) as usize);
        let mut offset = 0;
        loop {
            let n = size.min(len - offset);
            v.push(Chunk {
                offset,
                len: n,
                rail: None,
                tries: 0,
                again: false,
            });
            offset += n;
            if offset >= len {
                break;
            }
        }
        v
    }

    fn find(&mut self, seq: u64) -> Option<&mut OutFragment<T>> {
        let first = self.unacked.front()?.seq;
        let i = seq.checked_sub(first)? as usize;
        self.unacked.get_mut(i)
    }

    /// The rail the next chunk of `len` bytes goes to: the one with the fewest bytes
    /// outstanding among those up with room (the first such, on a tie, so small messages
    /// keep to one rail while it keeps up).
    fn pick(&self, len: u64) -> Option<usize> {
        self.rails
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.up && r.outstanding_chunks < self.cfg.rail_chunks
                    && (r.outstanding == 0 || r.outstanding + len <= self.cfg.rail_window)
            })
            .min_by_key(|(i, r)| (r.outstanding, *i))
            .map(|(i, _)| i)
    }

    /// The next chunk to send, if one waits and a rail has room. The caller hands it to the
    /// rail's transport and reports the completion with [`Sender::sent`]; a chunk the
    /// transport refused goes back with [`Sender::unsend`].
    pub fn next(&mut self, now_ns: u64) -> Option<Outgoing> {
        loop {
            let &(seq, i) = self.queue.front()?;
            let Some(f) = self.find(seq) else {
                // Acknowledged meanwhile (a chunk queued again after its fragment got in).
                self.queue.pop_front();
                continue;
            };
            let Some(&c) = f.chunks.get(i) else {
                self.queue.pop_front();
                continue;
            };
            if c.rail.is_some() {
                self.queue.pop_front();
                continue;
            }
            let rail = self.pick(c.len)?;
            self.queue.pop_front();
            let f = self.find(seq).expect("found above");
            f.chunks[i].rail = Some(rail);
            let resent = f.chunks[i].again;
            let header = Record::Data {
                seq,
                offset: c.offset,
                total: f.data.len() as u64,
                end: f.end,
            }
            .encode();
            let data = f.data.clone();
            let r = &mut self.rails[rail];
            if r.outstanding == 0 {
                r.busy_since = Some(now_ns);
            }
            r.outstanding += c.len;
            r.outstanding_chunks += 1;
            r.chunks += 1;
            if resent {
                r.resent += 1;
            }
            return Some(Outgoing {
                rail,
                seq,
                offset: c.offset,
                len: c.len,
                header,
                data,
            });
        }
    }

    /// A chunk from [`Sender::next`] that the transport did not take (it is busy): back to
    /// the front of the queue.
    pub fn unsend(&mut self, out: &Outgoing) {
        self.settle(out.rail, out.len, false, 0);
        if let Some(f) = self.find(out.seq)
            && let Some(i) = f.chunks.iter().position(|c| c.offset == out.offset)
            && f.chunks[i].rail == Some(out.rail)
        {
            f.chunks[i].rail = None;
            self.queue.push_front((out.seq, i));
        }
    }

    fn settle(&mut self, rail: usize, len: u64, ok: bool, now_ns: u64) {
        let Some(r) = self.rails.get_mut(rail) else {
            return;
        };
        if !r.up {
            return;
        }
        r.outstanding = r.outstanding.saturating_sub(len);
        r.outstanding_chunks = r.outstanding_chunks.saturating_sub(1);
        if ok {
            r.bytes += len;
        }
        if r.outstanding == 0
            && let Some(since) = r.busy_since.take()
        {
            r.busy_ns += now_ns.saturating_sub(since);
        }
    }

    /// The transport finished sending `len` bytes handed to `rail` (`ok`: it reports success;
    /// a failure leaves the chunk to [`Sender::rail_down`] or [`Sender::lost`]).
    pub fn sent(&mut self, rail: usize, len: u64, ok: bool, now_ns: u64) {
        self.settle(rail, len, ok, now_ns);
    }

    /// The receiver could not take the chunk of fragment `seq` at `offset` (it failed a
    /// check on the way, or was dropped): send it again, or fail the fragment after
    /// `max_retries`.
    pub fn lost(&mut self, seq: u64, offset: u64) -> Lost {
        let max = self.cfg.max_retries;
        let Some(f) = self.find(seq) else {
            return Lost::Ignore;
        };
        let message = f.message;
        let Some(i) = f.chunks.iter().position(|c| c.offset == offset) else {
            return Lost::Ignore;
        };
        let c = &mut f.chunks[i];
        if c.tries >= max {
            return Lost::Fail { seq, message };
        }
        c.tries += 1;
        c.again = true;
        if c.rail.take().is_some() {
            self.queue.push_front((seq, i));
        }
        Lost::Resend
    }

    /// The receiver has every fragment before `next`: they are done; their users come back
    /// in order. An acknowledgement of fragments never sent is a protocol error.
    pub fn ack(&mut self, next: u64) -> Result<Vec<(u64, T)>, String> {
        if next > self.next_seq {
            return Err(format!(
                "the peer acknowledged fragment {} but only {} were sent",
                next.saturating_sub(1),
                self.next_seq
            ));
        }
        let mut done = Vec::new();
        while self.unacked.front().is_some_and(|f| f.seq < next) {
            let mut f = self.unacked.pop_front().expect("checked");
            self.unacked_bytes -= f.data.len() as u64;
            if let Some(u) = f.user.take() {
                done.push((f.message, u));
            }
        }
        Ok(done)
    }

    /// Takes back every unacknowledged fragment's user (the bond is gone).
    pub fn drain(&mut self) -> Vec<T> {
        self.queue.clear();
        self.unacked_bytes = 0;
        self.unacked
            .drain(..)
            .filter_map(|mut f| f.user.take())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SenderConfig {
        SenderConfig {
            chunk: 100,
            stripe_min: 50,
            rail_window: 200,
            ..SenderConfig::default()
        }
    }

    #[test]
    fn small_fragments_keep_to_the_first_rail_while_it_keeps_up() {
        let mut s: Sender<()> = Sender::new(cfg(), 2);
        s.rail_up(0);
        s.rail_up(1);
        for _ in 0..3 {
            s.push(Arc::from(&[1u8; 10][..]), true, ()).unwrap();
            let o = s.next(0).unwrap();
            assert_eq!(o.rail, 0);
            s.sent(o.rail, o.len, true, 1);
        }
    }

    #[test]
    fn a_large_fragment_is_striped_and_pulled_by_rails_with_room() {
        let mut s: Sender<()> = Sender::new(cfg(), 2);
        s.rail_up(0);
        s.rail_up(1);
        s.push(Arc::from(vec![0u8; 400]), true, ()).unwrap();
        let a = s.next(0).unwrap();
        let b = s.next(0).unwrap();
        assert_eq!((a.rail, b.rail), (0, 1));
        let c = s.next(0).unwrap();
        let d = s.next(0).unwrap();
        assert_eq!((c.rail, d.rail), (0, 1));
        assert!(s.next(0).is_none(), "both rails are at their window");
        // Rail 1 is faster: it completes and pulls the next.
        s.push(Arc::from(vec![0u8; 400]), true, ()).unwrap();
        s.sent(1, 100, true, 10);
        s.sent(1, 100, true, 20);
        assert_eq!(s.next(20).unwrap().rail, 1);
        assert_eq!(s.next(20).unwrap().rail, 1);
        assert!(s.next(20).is_none());
        assert_eq!(s.rails()[1].bandwidth(), 200 * 1_000_000_000 / 20);
    }

    #[test]
    fn a_rail_going_down_queues_its_unacknowledged_chunks_again_in_order() {
        let mut s: Sender<u32> = Sender::new(cfg(), 2);
        s.rail_up(0);
        s.rail_up(1);
        s.push(Arc::from(vec![0u8; 400]), true, 7).unwrap();
        let sent: Vec<_> = std::iter::from_fn(|| s.next(0)).collect();
        assert_eq!(sent.len(), 4);
        for o in &sent {
            s.sent(o.rail, o.len, true, 1);
        }
        assert_eq!(s.rail_down(1, 2), 2);
        let again: Vec<_> = std::iter::from_fn(|| s.next(3))
            .map(|o| (o.rail, o.offset))
            .collect();
        assert_eq!(again, vec![(0, 100), (0, 300)]);
        assert_eq!(s.ack(1).unwrap(), vec![(0, 7)]);
        assert_eq!(s.unacked(), 0);
    }

    #[test]
    fn lost_chunks_are_resent_then_failed() {
        let mut s: Sender<()> = Sender::new(cfg(), 1);
        s.rail_up(0);
        s.push(Arc::from(&[1u8; 10][..]), true, ()).unwrap();
        for _ in 0..3 {
            let o = s.next(0).unwrap();
            s.sent(0, o.len, true, 0);
            assert_eq!(s.lost(0, 0), Lost::Resend);
        }
        let o = s.next(0).unwrap();
        s.sent(0, o.len, true, 0);
        assert_eq!(s.lost(0, 0), Lost::Fail { seq: 0, message: 0 });
        assert!(s.ack(2).is_err(), "an ack past what was sent is refused");
    }

    #[test]
    fn the_window_and_the_rails_bound_what_may_be_queued() {
        let mut s: Sender<()> = Sender::new(
            SenderConfig {
                max_unacked: 2,
                ..cfg()
            },
            1,
        );
        assert_eq!(
            s.push(Arc::from(&[][..]), true, ()).unwrap_err().0,
            Full::NoRail
        );
        s.rail_up(0);
        s.push(Arc::from(&[][..]), true, ()).unwrap();
        s.push(Arc::from(&[][..]), true, ()).unwrap();
        assert_eq!(
            s.push(Arc::from(&[][..]), true, ()).unwrap_err().0,
            Full::Window
        );
        let o = s.next(0).unwrap();
        assert_eq!(o.len, 0);
    }
}
