//! Cooperative single copy: the sender helps the receiver copy a large fragment.
//!
//! A single-copy fragment is copied by the kernel (`process_vm_readv`) at about the speed of
//! one core, while the sender's core waits for the acknowledgement. Here the receiver opens a
//! *share* of the fragment in its ring's header, and both ends copy chunks of it at once:
//! the receiver reads chunks from the front (`process_vm_readv`), the sender writes chunks
//! from the back into the receiver's buffer (`process_vm_writev`), until they meet. A sender
//! that is not polling takes nothing; the receiver then copies every chunk itself.
//!
//! No I/O here: the protocol runs over any [`Word`] (atomics in the ring header in the
//! device, loom's in the model tests), and the caller does the copying.
//!
//! The share, five words in the ring's header (the ring carries the fragment's records):
//!
//! ```text
//! claims  era u32 | front u16 | back u16   chunks [0, front) are the receiver's, [back, n)
//!                                          the sender's; each side moves only its own end,
//!                                          by compare-and-swap, while front < back
//! done    era u32 | failed 1 bit | idx 15+ chunks [idx, n) are written by the sender
//!                                          (failed: it stopped; chunks below idx it claimed
//!                                          may be partly written)
//! dst     the receiver's address of the fragment's first byte
//! shape   len u32 | chunk_shift u8 << 32
//! id      the fragment's record id
//! ```
//!
//! The receiver writes `id`, `dst`, `shape` and `done` before it publishes `claims` with a new
//! generation (release); it opens the next share only after the sender's `done` covers every
//! chunk the sender claimed, so a sender that claimed a chunk of a generation has read that
//! generation's `id`, `dst` and `shape`. The sender claims one chunk at a time and stores
//! `done` (release) after each write, so the receiver's acquire load of `done` orders the
//! sender's bytes before its delivery.
//!
//! **The peer is not trusted.** Every word read from the share is checked: a generation that
//! is not the open one, a front the receiver did not set, a back that grew or passed the
//! front, a `done` that covers chunks the sender never claimed: each is [`Bad`], which ends
//! the connection. The sender checks the receiver's `id`, length and chunk size against the
//! fragment it is waiting on and writes nothing otherwise; what it writes goes only into
//! the receiver's own process (the kernel's access checks decide whether it may).

use std::ops::Range;
use std::sync::atomic::Ordering;

/// Chunks per fragment at most (`front` and `back` are 16 bits).
pub const MAX_CHUNKS: u64 = 0xFFFF;
/// The `failed` flag in `done`.
const FAILED: u64 = 1 << 31;

/// A shared 64-bit word.
pub trait Word {
    /// Loads.
    fn load(&self, order: Ordering) -> u64;
    /// Stores.
    fn store(&self, value: u64, order: Ordering);
    /// Compare-and-swap (acquire-release; acquire on failure): the value found.
    fn cas(&self, current: u64, new: u64) -> Result<u64, u64>;
}

impl Word for std::sync::atomic::AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        std::sync::atomic::AtomicU64::load(self, order)
    }
    fn store(&self, value: u64, order: Ordering) {
        std::sync::atomic::AtomicU64::store(self, value, order)
    }
    fn cas(&self, current: u64, new: u64) -> Result<u64, u64> {
        self.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
    }
}

/// The share's words.
pub struct Share<'a, W: Word> {
    /// `era | front | back`.
    pub claims: &'a W,
    /// `era | failed | idx`.
    pub done: &'a W,
    /// The receiver's address of byte 0.
    pub dst: &'a W,
    /// `len | chunk_shift << 32`.
    pub shape: &'a W,
    /// The fragment's record id.
    pub id: &'a W,
}

/// A word from the peer that breaks the protocol (what was wrong).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bad(pub &'static str);

fn claims(era: u32, front: u64, back: u64) -> u64 {
    (era as u64) << 32 | front << 16 | back
}

fn unclaims(v: u64) -> (u32, u64, u64) {
    ((v >> 32) as u32, (v >> 16) & 0xFFFF, v & 0xFFFF)
}

/// The chunk size (a power of two, as a shift) for a fragment of `len` bytes: an eighth of
/// it, at least 64 KiB, so a fragment is at most eight chunks (fewer system calls, and the
/// receiver's first claim is half of it).
pub fn chunk_shift(len: u64) -> u8 {
    let log = 64 - len.max(1).saturating_sub(1).leading_zeros();
    log.saturating_sub(3).max(16) as u8
}

/// Chunks of `len` bytes at `1 << shift` each.
fn chunks(len: u64, shift: u8) -> u64 {
    len.div_ceil(1u64 << shift)
}

/// The receiver's side of one fragment's share.
#[derive(Debug, Clone)]
pub struct Receiving {
    era: u32,
    len: u64,
    shift: u8,
    n: u64,
    /// Chunks below this are the receiver's (it alone moves it).
    front: u64,
    /// The sender's end as last seen (it only comes down).
    back: u64,
    /// The sender stopped: the receiver takes over what it claimed and did not finish.
    taken_over: bool,
}

/// What is left of a share once every chunk is claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Every byte is written: deliver.
    Complete,
    /// The sender is still writing its last chunk: look again at the next poll.
    Waiting,
    /// The sender stopped; the receiver reads these bytes itself, then it is complete.
    Redo(Range<u64>),
}

impl Receiving {
    /// Opens generation `era` (never 0; the caller counts them) of the share for fragment
    /// `id` of `len` bytes, landing at `dst` in this process. `len` must be at most
    /// `MAX_CHUNKS` chunks of [`chunk_shift`]`(len)`, which holds for every `len` below 4 GiB.
    pub fn open<W: Word>(share: &Share<'_, W>, era: u32, id: u64, dst: u64, len: u64) -> Self {
        let shift = chunk_shift(len);
        let n = chunks(len, shift);
        share.id.store(id, Ordering::Relaxed);
        share.dst.store(dst, Ordering::Relaxed);
        share
            .shape
            .store(len & 0xFFFF_FFFF | (shift as u64) << 32, Ordering::Relaxed);
        share.done.store((era as u64) << 32 | n, Ordering::Relaxed);
        share.claims.store(claims(era, 0, n), Ordering::Release);
        Receiving {
            era,
            len,
            shift,
            n,
            front: 0,
            back: n,
            taken_over: false,
        }
    }

    fn bytes(&self, chunks: Range<u64>) -> Range<u64> {
        (chunks.start << self.shift).min(self.len)..(chunks.end << self.shift).min(self.len)
    }

    fn check_claims(&self, v: u64) -> Result<(u64, u64), Bad> {
        let (era, front, back) = unclaims(v);
        if era != self.era {
            return Err(Bad("the share's generation changed under the receiver"));
        }
        if front != self.front {
            return Err(Bad("the receiver's end of the share moved"));
        }
        if back > self.back || back < front {
            return Err(Bad(
                "the sender's end of the share moved back or past the receiver's",
            ));
        }
        Ok((front, back))
    }

    /// Claims up to `want` more chunks (at least one) from the front: the bytes to read, or
    /// `None` when every chunk is claimed.
    pub fn claim<W: Word>(
        &mut self,
        share: &Share<'_, W>,
        want: u64,
    ) -> Result<Option<Range<u64>>, Bad> {
        if self.taken_over {
            return Ok(None);
        }
        let mut v = share.claims.load(Ordering::Acquire);
        // Each failed swap is a chunk the sender claimed (its end comes down at most n
        // times); more failures than that are a peer rewriting the word.
        for _ in 0..self.n + 2 {
            let (front, back) = self.check_claims(v)?;
            self.back = back;
            if front == back {
                return Ok(None);
            }
            let to = front + want.clamp(1, back - front);
            match share.claims.cas(v, claims(self.era, to, back)) {
                Ok(_) => {
                    self.front = to;
                    return Ok(Some(self.bytes(front..to)));
                }
                Err(now) => v = now,
            }
        }
        Err(Bad(
            "the share's claims changed more often than the sender has chunks",
        ))
    }

    /// Chunks the sender claimed (all written once the share is complete).
    pub fn sender_chunks(&self) -> u64 {
        self.n - self.back
    }

    /// The half the receiver claims first: the sender takes the rest, if it is polling.
    pub fn first_claim(&self) -> u64 {
        self.n.div_ceil(2)
    }

    /// Once [`Receiving::claim`] returned `None`: whether the sender's chunks are written.
    pub fn finish<W: Word>(&mut self, share: &Share<'_, W>) -> Result<Finish, Bad> {
        if self.taken_over {
            return Ok(Finish::Complete);
        }
        let d = share.done.load(Ordering::Acquire);
        if (d >> 32) as u32 != self.era {
            return Err(Bad("the share's completion word names another generation"));
        }
        let failed = d & FAILED != 0;
        let idx = d & 0xFFFF;
        if idx < self.back || idx > self.n || d & 0x7FFF_0000 != 0 {
            return Err(Bad("the sender reported chunks done that it never claimed"));
        }
        if failed {
            // It stopped for good: what it claimed below `idx` is read here.
            self.taken_over = true;
            return Ok(Finish::Redo(self.bytes(self.back..idx)));
        }
        Ok(if idx == self.back {
            Finish::Complete
        } else {
            Finish::Waiting
        })
    }

    /// Ends the share early (the connection is closing): claims every chunk left, so the
    /// sender takes no more. True when nothing the sender claimed is still being written (the
    /// buffer may be reused); false when it may still write into it.
    pub fn seal<W: Word>(&mut self, share: &Share<'_, W>) -> bool {
        loop {
            let v = share.claims.load(Ordering::Acquire);
            let Ok((front, back)) = self.check_claims(v) else {
                return false;
            };
            self.back = back;
            if front == back || share.claims.cas(v, claims(self.era, back, back)).is_ok() {
                self.front = back;
                break;
            }
        }
        matches!(self.finish(share), Ok(Finish::Complete | Finish::Redo(_)))
    }
}

/// A chunk the sender claimed: write `bytes` of fragment `id` to `dst + bytes.start` in the
/// receiver, then call [`Helping::wrote`] (or [`Helping::failed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    era: u32,
    chunk: u64,
    /// The fragment's record id.
    pub id: u64,
    /// The receiver's address of the fragment's first byte.
    pub dst: u64,
    /// The bytes of the fragment to write.
    pub bytes: Range<u64>,
}

/// The sender's side: which generation it is done with.
#[derive(Debug, Default, Clone)]
pub struct Helping {
    /// A generation with nothing (more) to do here.
    finished: u32,
}

impl Helping {
    /// Whether the share may hold work for this side: one load of `claims`, for the poll.
    pub fn due<W: Word>(&self, share: &Share<'_, W>) -> bool {
        let (era, front, back) = unclaims(share.claims.load(Ordering::Relaxed));
        era != 0 && era != self.finished && front < back
    }

    /// Claims the next chunk from the back, if the open share is for a fragment this side
    /// is waiting on: `expects(id)` gives that fragment's length, or `None`.
    pub fn claim<W: Word>(
        &mut self,
        share: &Share<'_, W>,
        expects: impl Fn(u64) -> Option<u64>,
    ) -> Option<Job> {
        let mut v = share.claims.load(Ordering::Acquire);
        for _ in 0..4 {
            let (era, front, back) = unclaims(v);
            if era == 0 || era == self.finished {
                return None;
            }
            let id = share.id.load(Ordering::Relaxed);
            let dst = share.dst.load(Ordering::Relaxed);
            let shape = share.shape.load(Ordering::Relaxed);
            let (len, shift) = (shape & 0xFFFF_FFFF, (shape >> 32) as u8);
            let fits = (12..=40).contains(&shift)
                && shape >> 40 == 0
                && chunks(len, shift) <= MAX_CHUNKS
                && back <= chunks(len, shift)
                && expects(id) == Some(len);
            if !fits || front >= back {
                // Not a fragment this side sent, or nothing left: not this generation again.
                self.finished = era;
                return None;
            }
            match share.claims.cas(v, claims(era, front, back - 1)) {
                Ok(_) => {
                    let chunk = back - 1;
                    let start = (chunk << shift).min(len);
                    let end = (back << shift).min(len);
                    return Some(Job {
                        era,
                        chunk,
                        id,
                        dst,
                        bytes: start..end,
                    });
                }
                Err(now) => v = now,
            }
        }
        None
    }

    /// The job's bytes are written: chunks from it to the end are done.
    pub fn wrote<W: Word>(&self, share: &Share<'_, W>, job: &Job) {
        share
            .done
            .store((job.era as u64) << 32 | job.chunk, Ordering::Release);
    }

    /// The job's write failed: this side stops helping with the share; the receiver reads
    /// what it claimed itself.
    pub fn failed<W: Word>(&mut self, share: &Share<'_, W>, job: &Job) {
        self.finished = job.era;
        share.done.store(
            (job.era as u64) << 32 | FAILED | (job.chunk + 1),
            Ordering::Release,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    struct Words([AtomicU64; 5]);

    impl Words {
        fn new() -> Self {
            Words(std::array::from_fn(|_| AtomicU64::new(0)))
        }
        fn share(&self) -> Share<'_, AtomicU64> {
            Share {
                claims: &self.0[0],
                done: &self.0[1],
                dst: &self.0[2],
                shape: &self.0[3],
                id: &self.0[4],
            }
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn chunks_are_an_eighth_of_the_fragment_and_at_least_64_kib() {
        assert_eq!(chunk_shift(MIB), 17);
        assert_eq!(chunk_shift(MIB + 1), 18);
        assert_eq!(chunk_shift(256 << 10), 16);
        assert_eq!(chunk_shift(1), 16);
        for len in [1u64, 4095, 64 << 10, MIB, (4 << 30) - 1] {
            assert!(chunks(len, chunk_shift(len)) <= 8, "{len}");
        }
    }

    /// Drives both sides in a given order of steps, copying into a byte array, and checks
    /// that every byte is written once the receiver says complete.
    fn run(len: u64, sender_turns: &[bool], seed: u64) {
        let w = Words::new();
        let s = w.share();
        let src: Vec<u8> = (0..len).map(|i| (i as u8) ^ (seed as u8)).collect();
        let mut dst = vec![0u8; len as usize];
        let mut r = Receiving::open(&s, 7, 42, 0x1000, len);
        let mut h = Helping::default();
        let mut want = r.first_claim();
        let mut turns = sender_turns.iter().cycle();
        let mut done = false;
        for _ in 0..1000 {
            if *turns.next().unwrap() {
                if let Some(job) = h.claim(&s, |id| (id == 42).then_some(len)) {
                    assert_eq!(job.dst, 0x1000);
                    let b = job.bytes.start as usize..job.bytes.end as usize;
                    dst[b.clone()].copy_from_slice(&src[b]);
                    h.wrote(&s, &job);
                }
            } else {
                match r.claim(&s, want).unwrap() {
                    Some(b) => {
                        let b = b.start as usize..b.end as usize;
                        dst[b.clone()].copy_from_slice(&src[b]);
                        want = 1;
                    }
                    None => match r.finish(&s).unwrap() {
                        Finish::Complete => {
                            done = true;
                            break;
                        }
                        Finish::Waiting => {}
                        Finish::Redo(_) => unreachable!("the sender never fails here"),
                    },
                }
            }
        }
        assert!(done, "seed {seed}: never complete");
        assert_eq!(dst, src, "seed {seed}");
    }

    #[test]
    fn every_interleaving_of_a_few_turns_copies_every_byte_once_complete() {
        let seed = 0xc00b_5eed_u64;
        println!("seed {seed:#x}");
        for len in [1u64, 65_536, 100_000, MIB, MIB + 3, 3 * MIB / 2] {
            for pattern in 0u32..64 {
                // Six turns of either side, then one of the receiver's, over and over.
                let mut turns: Vec<bool> = (0..6).map(|b| pattern >> b & 1 == 1).collect();
                turns.push(false);
                run(len, &turns, seed ^ pattern as u64);
            }
        }
    }

    #[test]
    fn a_receiver_alone_claims_every_chunk_and_completes() {
        let w = Words::new();
        let s = w.share();
        let mut r = Receiving::open(&s, 1, 9, 0, MIB);
        assert_eq!(r.claim(&s, r.first_claim()).unwrap(), Some(0..MIB / 2));
        let mut next = MIB / 2;
        while let Some(b) = r.claim(&s, 1).unwrap() {
            assert_eq!(b.start, next);
            next = b.end;
        }
        assert_eq!(next, MIB);
        assert_eq!(r.finish(&s), Ok(Finish::Complete));
    }

    #[test]
    fn a_sender_waits_for_its_own_fragment_and_shape() {
        let w = Words::new();
        let s = w.share();
        let mut h = Helping::default();
        assert!(!h.due(&s), "generation 0 is closed");
        let _r = Receiving::open(&s, 1, 9, 0, MIB);
        assert!(h.due(&s));
        // Another id, or the same id with another length: nothing is written, and this
        // generation is not looked at again.
        assert_eq!(h.claim(&s, |_| None), None);
        assert!(!h.due(&s));
        let _r = Receiving::open(&s, 2, 9, 0, MIB);
        assert_eq!(h.claim(&s, |id| (id == 9).then_some(MIB - 1)), None);
        let _r = Receiving::open(&s, 3, 9, 0x7000, MIB);
        let job = h.claim(&s, |id| (id == 9).then_some(MIB)).unwrap();
        assert_eq!((job.id, job.dst, job.bytes), (9, 0x7000, 7 * MIB / 8..MIB));
        // A shape the receiver could not have written is refused too.
        let _r = Receiving::open(&s, 4, 9, 0, MIB);
        s.shape.store(MIB | 60 << 32, Ordering::Relaxed);
        assert_eq!(h.claim(&s, |_| Some(MIB)), None);
    }

    #[test]
    fn a_sender_that_fails_leaves_its_claimed_chunk_to_the_receiver() {
        let w = Words::new();
        let s = w.share();
        let mut r = Receiving::open(&s, 5, 1, 0, MIB);
        let mut h = Helping::default();
        let a = h.claim(&s, |_| Some(MIB)).unwrap();
        h.wrote(&s, &a);
        let b = h.claim(&s, |_| Some(MIB)).unwrap();
        assert_eq!(b.bytes, 6 * MIB / 8..7 * MIB / 8);
        h.failed(&s, &b);
        assert!(!h.due(&s), "a failed sender stops");
        assert_eq!(h.claim(&s, |_| Some(MIB)), None);
        assert_eq!(r.claim(&s, 100).unwrap(), Some(0..6 * MIB / 8));
        assert_eq!(r.claim(&s, 1).unwrap(), None);
        assert_eq!(r.finish(&s), Ok(Finish::Redo(6 * MIB / 8..7 * MIB / 8)));
        assert_eq!(r.finish(&s), Ok(Finish::Complete));
    }

    #[test]
    fn a_receiver_waits_for_the_sender_s_last_chunk() {
        let w = Words::new();
        let s = w.share();
        let mut r = Receiving::open(&s, 5, 1, 0, MIB);
        let mut h = Helping::default();
        let job = h.claim(&s, |_| Some(MIB)).unwrap();
        while r.claim(&s, 8).unwrap().is_some() {}
        assert_eq!(r.finish(&s), Ok(Finish::Waiting));
        assert!(
            !r.clone().seal(&s),
            "sealed while the sender writes: not reusable"
        );
        h.wrote(&s, &job);
        assert_eq!(r.finish(&s), Ok(Finish::Complete));
        assert!(r.seal(&s));
    }

    #[test]
    fn sealing_takes_every_chunk_left_from_the_sender() {
        let w = Words::new();
        let s = w.share();
        let mut r = Receiving::open(&s, 5, 1, 0, MIB);
        let mut h = Helping::default();
        assert!(r.seal(&s));
        assert_eq!(h.claim(&s, |_| Some(MIB)), None);
    }

    #[test]
    fn words_a_peer_could_not_have_written_are_refused() {
        let bad_claims: [fn(&Share<'_, AtomicU64>); 4] = [
            |s| s.claims.store(claims(6, 0, 8), Ordering::Relaxed), // another generation
            |s| s.claims.store(claims(5, 1, 8), Ordering::Relaxed), // the receiver's end moved
            |s| s.claims.store(claims(5, 0, 9), Ordering::Relaxed), // the sender's end grew
            |s| s.claims.store(claims(5, 3, 2), Ordering::Relaxed), // they crossed
        ];
        for f in bad_claims {
            let w = Words::new();
            let s = w.share();
            let mut r = Receiving::open(&s, 5, 1, 0, MIB);
            f(&s);
            assert!(r.claim(&s, 1).is_err());
            assert!(!r.seal(&s), "a broken share's buffer is never reused");
        }
        let bad_done: [u64; 4] = [
            6 << 32 | 8,           // another generation
            5 << 32 | 3,           // done below what the sender claimed
            5 << 32 | 9,           // past the end
            5 << 32 | 1 << 20 | 8, // stray bits
        ];
        for d in bad_done {
            let w = Words::new();
            let s = w.share();
            let mut r = Receiving::open(&s, 5, 1, 0, MIB);
            while r.claim(&s, 8).unwrap().is_some() {}
            s.done.store(d, Ordering::Relaxed);
            assert!(r.finish(&s).is_err(), "{d:#x}");
        }
    }

    /// A peer that rewrites the claims word between every load and swap cannot keep the
    /// receiver's claim looping.
    #[test]
    fn a_peer_churning_the_claims_word_ends_in_an_error() {
        struct Churn(AtomicU64, bool, std::cell::Cell<u64>);
        impl Word for Churn {
            fn load(&self, o: Ordering) -> u64 {
                self.0.load(o)
            }
            fn store(&self, v: u64, o: Ordering) {
                self.0.store(v, o)
            }
            fn cas(&self, current: u64, new: u64) -> Result<u64, u64> {
                if !self.1 {
                    return Word::cas(&self.0, current, new);
                }
                // Always "changed", to the same valid-looking value.
                self.2.set(self.2.get() + 1);
                Err(self.0.load(Ordering::Relaxed))
            }
        }
        let w: [Churn; 5] =
            std::array::from_fn(|i| Churn(AtomicU64::new(0), i == 0, std::cell::Cell::new(0)));
        let s = Share {
            claims: &w[0],
            done: &w[1],
            dst: &w[2],
            shape: &w[3],
            id: &w[4],
        };
        let mut r = Receiving::open(&s, 5, 1, 0, MIB);
        assert!(r.claim(&s, 1).is_err());
        assert!(w[0].2.get() <= 10);
    }

    /// Model check: a receiver and a sender on two threads, every interleaving loom finds;
    /// the receiver's view of the bytes is complete when it says so (loom tracks the cells).
    #[test]
    #[allow(unsafe_code)]
    fn loom_model_of_a_shared_copy() {
        use loom::cell::UnsafeCell;
        use loom::sync::Arc;
        use loom::sync::atomic::AtomicU64 as LAtomic;

        struct L(LAtomic);
        impl Word for L {
            fn load(&self, o: Ordering) -> u64 {
                self.0.load(o)
            }
            fn store(&self, v: u64, o: Ordering) {
                self.0.store(v, o)
            }
            fn cas(&self, current: u64, new: u64) -> Result<u64, u64> {
                self.0
                    .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            }
        }
        struct State {
            w: [L; 5],
            bytes: [UnsafeCell<u8>; 4],
        }
        // SAFETY: the cells are loom's tracked cells; loom reports any racy access.
        unsafe impl Sync for State {}
        fn share(s: &State) -> Share<'_, L> {
            Share {
                claims: &s.w[0],
                done: &s.w[1],
                dst: &s.w[2],
                shape: &s.w[3],
                id: &s.w[4],
            }
        }
        const LEN: u64 = 4 << 16; // four chunks of 64 KiB, one byte standing for each
        loom::model(|| {
            let st = Arc::new(State {
                w: std::array::from_fn(|_| L(LAtomic::new(0))),
                bytes: std::array::from_fn(|_| UnsafeCell::new(0)),
            });
            let mut r = Receiving::open(&share(&st), 1, 3, 0, LEN);
            let st2 = st.clone();
            let sender = loom::thread::spawn(move || {
                let mut h = Helping::default();
                while let Some(job) = h.claim(&share(&st2), |_| Some(LEN)) {
                    let c = (job.bytes.start >> 16) as usize;
                    // SAFETY: loom checks this write against every other access.
                    st2.bytes[c].with_mut(|p| unsafe { *p = 1 });
                    h.wrote(&share(&st2), &job);
                }
            });
            let mut want = r.first_claim();
            loop {
                match r.claim(&share(&st), want).unwrap() {
                    Some(b) => {
                        for c in (b.start >> 16)..(b.end >> 16) {
                            // SAFETY: as above.
                            st.bytes[c as usize].with_mut(|p| unsafe { *p = 1 });
                        }
                        want = 1;
                    }
                    None => match r.finish(&share(&st)).unwrap() {
                        Finish::Complete => break,
                        Finish::Waiting => loom::thread::yield_now(),
                        Finish::Redo(_) => unreachable!(),
                    },
                }
            }
            for b in &st.bytes {
                // SAFETY: as above: a read racing the sender's write is reported by loom.
                assert_eq!(b.with(|p| unsafe { *p }), 1);
            }
            sender.join().unwrap();
        });
    }
}
