//! A lock-free single-producer / single-consumer byte ring, written once over two small traits
//! so the same code runs on shared memory (std atomics, raw bytes) and under `loom` (model
//! atomics, tracked cells) in the tests.
//!
//! Positions are free-running `u64` byte counts; `head - tail` is the fill level. The producer
//! alone writes `head`, the consumer alone writes `tail`, each on its own cache line. Data is
//! written before `head` is published (Release) and read after it is observed (Acquire);
//! space is reused only after `tail` is observed (Acquire). The doorbell flag follows the
//! Dekker pattern: the consumer sets `sleeping`, fences, then re-checks for data; the
//! producer publishes, fences, then reads `sleeping`. One of the two sees the other.
//!
//! **The other side is not trusted.** Each end keeps its own position privately and only
//! ever reads the other side's position from the shared memory; every such read is checked
//! (the producer's `head` may only move forward and never more than a ring ahead of our
//! `tail`; the consumer's `tail` may only move forward and never past our `head`) before it
//! is used to compute an offset, in release builds too. A position that fails the check is a
//! [`Corrupt`] error: the caller ends the connection, and no byte outside the ring is ever
//! touched. Offsets are always reduced modulo the capacity, so even a wrong-but-plausible
//! position stays inside the ring.

use std::fmt;
use std::sync::atomic::Ordering;

/// The other side wrote a ring position that no correct peer can write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corrupt {
    /// Which position (`head` or `tail`).
    pub what: &'static str,
    /// The value last known good.
    pub was: u64,
    /// The value read.
    pub now: u64,
    /// The ring's capacity.
    pub cap: usize,
}

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the peer moved the ring's {} position from {} to {} (ring of {} bytes), which no correct peer does: its memory is corrupt or it is hostile",
            self.what, self.was, self.now, self.cap
        )
    }
}

impl std::error::Error for Corrupt {}

/// Free space in a ring of `cap` bytes holding `head - tail` bytes (0 when the positions
/// are inconsistent; the callers validate positions before they get here).
pub fn free_space(head: u64, tail: u64, cap: usize) -> usize {
    match head.checked_sub(tail) {
        Some(fill) if fill <= cap as u64 => cap - fill as usize,
        _ => 0,
    }
}

/// Splits `len` bytes at logical position `pos` of a ring of `cap` (a power of two) bytes into
/// at most two physical ranges: `(offset, len)` then `(0, rest)`.
///
/// Both ranges lie inside `0..cap` for any `pos`; a `len` over `cap` is cut to `cap`.
pub fn split(pos: u64, len: usize, cap: usize) -> ((usize, usize), (usize, usize)) {
    debug_assert!(cap.is_power_of_two());
    let len = len.min(cap);
    let off = (pos & (cap as u64 - 1)) as usize;
    let first = len.min(cap - off);
    ((off, first), (0, len - first))
}

/// An atomic position or flag.
pub trait Cell64 {
    /// Loads.
    fn load(&self, order: Ordering) -> u64;
    /// Stores.
    fn store(&self, value: u64, order: Ordering);
}

/// The ring's byte storage.
pub trait Storage {
    /// Capacity (a power of two).
    fn capacity(&self) -> usize;
    /// Copies `src` to `off`.
    ///
    /// # Safety
    /// `off + src.len() <= capacity()`, and no one reads these bytes concurrently (the ring
    /// protocol guarantees it).
    unsafe fn write(&self, off: usize, src: &[u8]);
    /// Copies from `off` into `dst`.
    ///
    /// # Safety
    /// `off + dst.len() <= capacity()`, and no one writes these bytes concurrently.
    unsafe fn read(&self, off: usize, dst: &mut [u8]);
    /// A sequentially consistent fence (the doorbell protocol).
    fn fence(&self);
}

/// The shared parts of one ring.
pub struct Shared<'a, C: Cell64, S: Storage> {
    /// Producer position.
    pub head: &'a C,
    /// Consumer position.
    pub tail: &'a C,
    /// Nonzero while the consumer is about to sleep or sleeping.
    pub sleeping: &'a C,
    /// Bytes.
    pub storage: &'a S,
}

impl<C: Cell64, S: Storage> Clone for Shared<'_, C, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C: Cell64, S: Storage> Copy for Shared<'_, C, S> {}

/// The writing end.
pub struct Producer<'a, C: Cell64, S: Storage> {
    ring: Shared<'a, C, S>,
    head: u64,
    tail_seen: u64,
}

impl<'a, C: Cell64, S: Storage> Producer<'a, C, S> {
    /// The producer of a fresh `ring` (both positions 0; nothing is read from the ring).
    pub fn new(ring: Shared<'a, C, S>) -> Self {
        Producer {
            ring,
            head: 0,
            tail_seen: 0,
        }
    }

    /// Resumes with positions kept from an earlier producer of the same ring (`head` is this
    /// side's own; `tail_seen` a consumer position read earlier, a conservative bound).
    pub fn resume(ring: Shared<'a, C, S>, head: u64, tail_seen: u64) -> Self {
        Producer {
            ring,
            head,
            tail_seen,
        }
    }

    /// The positions to resume from.
    pub fn positions(&self) -> (u64, u64) {
        (self.head, self.tail_seen)
    }

    /// Reads the consumer's position and checks it: it may only move forward, and never past
    /// what was written.
    fn load_tail(&mut self) -> Result<(), Corrupt> {
        let now = self.ring.tail.load(Ordering::Acquire);
        if now < self.tail_seen || now > self.head {
            return Err(Corrupt {
                what: "tail",
                was: self.tail_seen,
                now,
                cap: self.ring.storage.capacity(),
            });
        }
        self.tail_seen = now;
        Ok(())
    }

    /// Room for `n` bytes, reading the consumer's position only when the cached one is short.
    fn room(&mut self, n: usize) -> Result<usize, Corrupt> {
        let cap = self.ring.storage.capacity();
        if free_space(self.head, self.tail_seen, cap) < n {
            self.load_tail()?;
        }
        Ok(free_space(self.head, self.tail_seen, cap))
    }

    /// Bytes that can be written now.
    pub fn free(&mut self) -> Result<usize, Corrupt> {
        let cap = self.ring.storage.capacity();
        if free_space(self.head, self.tail_seen, cap) < cap {
            self.load_tail()?;
        }
        Ok(free_space(self.head, self.tail_seen, cap))
    }

    #[inline(always)]
    fn put(&mut self, src: &[u8]) {
        let ((o1, l1), (o2, l2)) = split(self.head, src.len(), self.ring.storage.capacity());
        // SAFETY: the ranges lie inside the ring and in its free space, which the consumer
        // does not read until `head` is published below.
        unsafe {
            self.ring.storage.write(o1, &src[..l1]);
            self.ring.storage.write(o2, &src[l1..l1 + l2]);
        }
        self.head += src.len() as u64;
    }

    /// Writes all `parts` or nothing; returns whether they were written and published.
    pub fn push_all(&mut self, parts: &[&[u8]]) -> Result<bool, Corrupt> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if self.room(total)? < total {
            return Ok(false);
        }
        for p in parts {
            self.put(p);
        }
        self.ring.head.store(self.head, Ordering::Release);
        Ok(true)
    }

    /// Writes a record, a fixed-size `header` then `data`, or nothing; returns whether it was
    /// written and published. The common case (no wrap) is one store of the header and one
    /// copy of the data.
    #[inline(always)]
    pub fn push_record<const H: usize>(
        &mut self,
        header: &[u8; H],
        data: &[u8],
    ) -> Result<bool, Corrupt> {
        let total = H + data.len();
        if self.room(total)? < total {
            return Ok(false);
        }
        let cap = self.ring.storage.capacity();
        let off = (self.head & (cap as u64 - 1)) as usize;
        if off + total <= cap {
            // SAFETY: `off..off + total` lies inside the ring (checked just above) and in its
            // free space (`room`), which the consumer does not read until `head` is published.
            unsafe {
                self.ring.storage.write(off, header);
                self.ring.storage.write(off + H, data);
            }
            self.head += total as u64;
        } else {
            self.put(header);
            self.put(data);
        }
        self.ring.head.store(self.head, Ordering::Release);
        Ok(true)
    }

    /// Writes as much of `src` as fits; publishes; returns the bytes written.
    pub fn push_some(&mut self, src: &[u8]) -> Result<usize, Corrupt> {
        let n = self.room(src.len())?.min(src.len());
        if n > 0 {
            self.put(&src[..n]);
            self.ring.head.store(self.head, Ordering::Release);
        }
        Ok(n)
    }

    /// After publishing: true when the consumer may be asleep and must be woken.
    ///
    /// The publication and the look at `sleeping` are ordered by a full fence, or, when
    /// `light` (both processes registered for membarrier barriers, see `crate::barrier`), by
    /// a compiler barrier alone: the consumer then issues the process-wide barrier before it
    /// sleeps ([`Consumer::announce_sleep`], [`Consumer::still_empty`]).
    #[inline]
    pub fn needs_wake(&self, light: bool) -> bool {
        if light {
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            self.ring.storage.fence();
        }
        self.ring.sleeping.load(Ordering::Relaxed) != 0
    }
}

/// The reading end.
pub struct Consumer<'a, C: Cell64, S: Storage> {
    ring: Shared<'a, C, S>,
    tail: u64,
    head_seen: u64,
}

impl<'a, C: Cell64, S: Storage> Consumer<'a, C, S> {
    /// The consumer of a fresh `ring` (both positions 0; nothing is read from the ring).
    pub fn new(ring: Shared<'a, C, S>) -> Self {
        Consumer {
            ring,
            tail: 0,
            head_seen: 0,
        }
    }

    /// Resumes with positions kept from an earlier consumer of the same ring (`tail` is this
    /// side's own; `head_seen` a producer position read earlier, a conservative bound).
    pub fn resume(ring: Shared<'a, C, S>, tail: u64, head_seen: u64) -> Self {
        Consumer {
            ring,
            tail,
            head_seen,
        }
    }

    /// The positions to resume from.
    pub fn positions(&self) -> (u64, u64) {
        (self.tail, self.head_seen)
    }

    /// Reads the producer's position and checks it: it may only move forward, and never
    /// more than a ring ahead of what was read.
    fn load_head(&mut self) -> Result<(), Corrupt> {
        let now = self.ring.head.load(Ordering::Acquire);
        let cap = self.ring.storage.capacity();
        if now < self.head_seen || now - self.tail > cap as u64 {
            return Err(Corrupt {
                what: "head",
                was: self.head_seen,
                now,
                cap,
            });
        }
        self.head_seen = now;
        Ok(())
    }

    /// Bytes known to be readable (validated positions: at most the capacity).
    fn filled(&self) -> usize {
        (self.head_seen - self.tail) as usize
    }

    /// Whether at least `n` bytes can be read, reading the producer's position only when the
    /// cached one is short.
    pub fn has(&mut self, n: usize) -> Result<bool, Corrupt> {
        if self.filled() < n {
            self.load_head()?;
        }
        Ok(self.filled() >= n)
    }

    /// Bytes that can be read now.
    pub fn available(&mut self) -> Result<usize, Corrupt> {
        self.load_head()?;
        Ok(self.filled())
    }

    /// Copies up to `dst.len()` bytes out and frees their space; returns how many.
    pub fn pop(&mut self, dst: &mut [u8]) -> Result<usize, Corrupt> {
        let n = self.peek(dst)?;
        self.consume(n);
        Ok(n)
    }

    /// Copies up to `dst.len()` readable bytes out *without* freeing their space; returns
    /// how many. The caller parses its own copy (the peer may rewrite the ring at any time)
    /// and then frees what it used with [`Consumer::consume`], once for a whole batch.
    #[inline(always)]
    pub fn peek(&mut self, dst: &mut [u8]) -> Result<usize, Corrupt> {
        // Refreshes the cached position when it is short; then take what there is.
        self.has(dst.len())?;
        let n = self.filled().min(dst.len());
        if n == 0 {
            return Ok(0);
        }
        let ((o1, l1), (o2, l2)) = split(self.tail, n, self.ring.storage.capacity());
        // SAFETY: the bytes were published by the producer (observed through `head` with
        // Acquire) and are not overwritten until `tail` moves past them (`consume`).
        unsafe {
            self.ring.storage.read(o1, &mut dst[..l1]);
            // Most batches do not wrap: no second call for nothing.
            if l2 > 0 {
                self.ring.storage.read(o2, &mut dst[l1..l1 + l2]);
            }
        }
        Ok(n)
    }

    /// Frees `n` bytes returned by the last `peek` (at most the readable bytes): one
    /// publication of the consumer's position for a batch of records.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.filled());
        if n > 0 {
            self.tail += n as u64;
            self.ring.tail.store(self.tail, Ordering::Release);
        }
    }

    /// Announces a sleep; returns true when the ring is still empty (sleeping is safe), false
    /// when data arrived (the flag is cleared again). Compares the producer's position with
    /// this side's own, and caches nothing: a bad position is reported by the next read.
    pub fn prepare_sleep(&mut self) -> bool {
        self.announce_sleep();
        self.ring.storage.fence();
        self.still_empty()
    }

    /// The first half of [`Consumer::prepare_sleep`], for a caller that sets the flag of
    /// several rings and then issues one barrier for all of them (a fence, or the
    /// process-wide one when the producers skip theirs): sets `sleeping`.
    pub fn announce_sleep(&mut self) {
        self.ring.sleeping.store(1, Ordering::Relaxed);
    }

    /// The second half, after the barrier: true when the ring is still empty (sleeping is
    /// safe), false when data arrived (the flag is cleared again).
    pub fn still_empty(&mut self) -> bool {
        if self.ring.head.load(Ordering::Acquire) != self.tail {
            self.ring.sleeping.store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Ends a sleep.
    pub fn woke(&mut self) {
        self.ring.sleeping.store(0, Ordering::Relaxed);
    }
}

/// Production implementations over shared memory.
pub mod mem {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::{Cell64, Storage};

    impl Cell64 for AtomicU64 {
        fn load(&self, order: Ordering) -> u64 {
            AtomicU64::load(self, order)
        }
        fn store(&self, value: u64, order: Ordering) {
            AtomicU64::store(self, value, order)
        }
    }

    /// Bytes at a raw address (a mapping) that outlives this value.
    pub struct RawStorage {
        base: *mut u8,
        cap: usize,
    }

    // SAFETY: the ring protocol gives producer and consumer disjoint byte ranges.
    unsafe impl Sync for RawStorage {}
    // SAFETY: as above.
    unsafe impl Send for RawStorage {}

    impl RawStorage {
        /// Storage of `cap` bytes at `base`; `cap` is a power of two (the region checked it
        /// when it was mapped: this runs for every view, per message).
        ///
        /// # Safety
        /// `base..base+cap` must stay mapped and writable while this value is used, and be
        /// accessed only through the ring protocol.
        pub unsafe fn new(base: *mut u8, cap: usize) -> RawStorage {
            // Positions are masked with `cap - 1`, which stays inside `cap` whatever `cap` is:
            // a wrong size could only garble the ring, never reach outside it.
            debug_assert!(cap.is_power_of_two());
            RawStorage { base, cap }
        }

        /// The first byte.
        pub fn base(&self) -> *mut u8 {
            self.base
        }
    }

    impl Storage for RawStorage {
        fn capacity(&self) -> usize {
            self.cap
        }

        #[inline]
        unsafe fn write(&self, off: usize, src: &[u8]) {
            // SAFETY: the caller keeps the range inside the mapping and unshared.
            unsafe { vmi_device::copy::copy_small(src.as_ptr(), self.base.add(off), src.len()) }
        }

        unsafe fn read(&self, off: usize, dst: &mut [u8]) {
            // SAFETY: as above.
            unsafe {
                std::ptr::copy_nonoverlapping(self.base.add(off), dst.as_mut_ptr(), dst.len())
            }
        }

        fn fence(&self) {
            std::sync::atomic::fence(Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicU64;

    use proptest::prelude::*;

    use super::mem::RawStorage;
    use super::*;

    proptest! {
        #[test]
        fn split_covers_the_range_once(pos in any::<u32>(), len in 0usize..=64, shift in 0u32..7) {
            let cap = 1usize << shift.max(6);
            let ((o1, l1), (o2, l2)) = split(pos as u64, len, cap);
            prop_assert_eq!(l1 + l2, len);
            prop_assert!(o1 + l1 <= cap && o2 == 0 && l2 <= cap);
            prop_assert_eq!(o1 as u64, pos as u64 % cap as u64);
            if l2 > 0 { prop_assert_eq!(o1 + l1, cap); }
        }

        #[test]
        fn free_space_is_capacity_minus_fill(tail in any::<u32>(), fill in 0usize..=4096) {
            let head = tail as u64 + fill as u64;
            prop_assert_eq!(free_space(head, tail as u64, 4096), 4096 - fill);
        }

        /// Any interleaving of pushes and pops behaves like a byte queue of fixed capacity.
        #[test]
        fn ring_matches_a_queue(ops in proptest::collection::vec((any::<bool>(), 0usize..40), 1..200)) {
            let (h, t, s) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
            let mut mem = vec![0u8; 64];
            // SAFETY: `mem` outlives the ring and is used only through it.
            let storage = unsafe { RawStorage::new(mem.as_mut_ptr(), 64) };
            let ring = Shared { head: &h, tail: &t, sleeping: &s, storage: &storage };
            let mut p = Producer::new(ring);
            let mut c = Consumer::new(ring);
            let mut model: VecDeque<u8> = VecDeque::new();
            let mut next = 0u8;
            for (push, n) in ops {
                if push {
                    let data: Vec<u8> = (0..n).map(|_| { next = next.wrapping_add(1); next }).collect();
                    let fits = model.len() + n <= 64;
                    prop_assert_eq!(p.push_all(&[&data]), Ok(fits));
                    if fits { model.extend(&data); } else { next = next.wrapping_sub(n as u8); }
                } else {
                    let mut out = vec![0u8; n];
                    let got = c.pop(&mut out).unwrap();
                    prop_assert_eq!(got, n.min(model.len()));
                    let want: Vec<u8> = model.drain(..got).collect();
                    prop_assert_eq!(&out[..got], &want[..]);
                }
                prop_assert_eq!(c.available(), Ok(model.len()));
            }
        }

        /// Whatever the peer writes into the positions it owns, the other end either reads
        /// bytes from inside the ring or reports [`Corrupt`]; it never indexes outside (the
        /// storage is exactly `cap` bytes, so an out-of-range copy would panic here).
        #[test]
        fn hostile_positions_are_caught(
            writes in proptest::collection::vec((any::<bool>(), any::<u64>(), 0usize..80), 1..60),
        ) {
            let (h, t, s) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
            let mut mem = vec![0u8; 64];
            let storage = Bounded(std::cell::RefCell::new(&mut mem));
            let ring = Shared { head: &h, tail: &t, sleeping: &s, storage: &storage };
            let mut p = Producer::new(ring);
            let mut c = Consumer::new(ring);
            let (mut p_dead, mut c_dead) = (false, false);
            for (as_producer, value, n) in writes {
                if as_producer {
                    // The hostile producer writes `head`; our consumer reads.
                    h.store(value, Ordering::Relaxed);
                    if !c_dead {
                        let mut out = vec![0u8; n];
                        match c.pop(&mut out) {
                            Ok(k) => prop_assert!(k <= n),
                            Err(e) => { prop_assert_eq!(e.what, "head"); c_dead = true; }
                        }
                    }
                } else {
                    // The hostile consumer writes `tail`; our producer writes.
                    t.store(value, Ordering::Relaxed);
                    if !p_dead {
                        match p.push_some(&vec![7u8; n]) {
                            Ok(k) => prop_assert!(k <= n),
                            Err(e) => { prop_assert_eq!(e.what, "tail"); p_dead = true; }
                        }
                    }
                }
            }
        }
    }

    /// Storage that panics on any access outside its bytes (instead of corrupting memory).
    struct Bounded<'m>(std::cell::RefCell<&'m mut Vec<u8>>);

    impl Storage for Bounded<'_> {
        fn capacity(&self) -> usize {
            self.0.borrow().len()
        }
        unsafe fn write(&self, off: usize, src: &[u8]) {
            self.0.borrow_mut()[off..off + src.len()].copy_from_slice(src);
        }
        unsafe fn read(&self, off: usize, dst: &mut [u8]) {
            dst.copy_from_slice(&self.0.borrow()[off..off + dst.len()]);
        }
        fn fence(&self) {}
    }

    #[test]
    fn peek_copies_without_freeing_and_consume_frees_once() {
        let (h, t, s) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        let mut mem = vec![0u8; 64];
        let storage = Bounded(std::cell::RefCell::new(&mut mem));
        let ring = Shared {
            head: &h,
            tail: &t,
            sleeping: &s,
            storage: &storage,
        };
        let mut p = Producer::new(ring);
        let mut c = Consumer::new(ring);
        // Wrap the ring: 50 bytes in and out, then a record across the end.
        assert_eq!(p.push_some(&[0u8; 50]), Ok(50));
        assert_eq!(c.pop(&mut [0u8; 50]), Ok(50));
        assert_eq!(p.push_record(&[9u8; 16], &[1, 2, 3, 4]), Ok(true));
        let mut out = [0u8; 32];
        assert_eq!(c.peek(&mut out), Ok(20));
        assert_eq!(&out[..16], &[9u8; 16]);
        assert_eq!(&out[16..20], &[1, 2, 3, 4]);
        assert_eq!(t.load(Ordering::Relaxed), 50, "peek frees nothing");
        assert_eq!(c.peek(&mut out), Ok(20), "the same bytes again");
        c.consume(16);
        assert_eq!(t.load(Ordering::Relaxed), 66);
        c.consume(100); // more than readable: only what is there
        assert_eq!(t.load(Ordering::Relaxed), 70);
        assert_eq!(c.peek(&mut out), Ok(0));
        // A record that does not fit is not written at all.
        assert_eq!(p.push_record(&[1u8; 16], &[0u8; 49]), Ok(false));
        assert_eq!(h.load(Ordering::Relaxed), 70);
    }

    #[test]
    fn a_head_moved_backwards_or_past_the_ring_is_corrupt() {
        let (h, t, s) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
        let mut mem = vec![0u8; 64];
        let storage = Bounded(std::cell::RefCell::new(&mut mem));
        let ring = Shared {
            head: &h,
            tail: &t,
            sleeping: &s,
            storage: &storage,
        };
        let mut c = Consumer::new(ring);
        h.store(65, Ordering::Relaxed);
        let err = c.available().unwrap_err();
        assert_eq!((err.what, err.now), ("head", 65));
        assert!(err.to_string().contains("hostile"), "{err}");
        let mut c = Consumer::new(ring);
        h.store(40, Ordering::Relaxed);
        assert_eq!(c.pop(&mut [0u8; 10]), Ok(10));
        h.store(20, Ordering::Relaxed);
        assert_eq!(c.available().unwrap_err().what, "head", "backwards");
        let mut p = Producer::new(ring);
        assert_eq!(p.push_all(&[&[1u8; 64]]), Ok(true));
        t.store(100, Ordering::Relaxed);
        assert_eq!(
            p.push_all(&[&[1u8; 1]]).unwrap_err().what,
            "tail",
            "past head"
        );
    }

    /// Model checks: every interleaving loom can find, with race detection on the bytes.
    mod model {
        use std::sync::atomic::Ordering;

        use loom::cell::UnsafeCell;
        use loom::sync::Arc;
        use loom::sync::atomic::AtomicU64;

        use super::super::{Cell64, Consumer, Producer, Shared, Storage};

        struct M(AtomicU64);

        impl Cell64 for M {
            fn load(&self, o: Ordering) -> u64 {
                self.0.load(o)
            }
            fn store(&self, v: u64, o: Ordering) {
                self.0.store(v, o)
            }
        }

        struct Cells(Vec<UnsafeCell<u8>>);

        impl Storage for Cells {
            fn capacity(&self) -> usize {
                self.0.len()
            }
            unsafe fn write(&self, off: usize, src: &[u8]) {
                for (i, b) in src.iter().enumerate() {
                    // SAFETY: loom checks that no one else touches this cell concurrently.
                    self.0[off + i].with_mut(|p| unsafe { *p = *b });
                }
            }
            unsafe fn read(&self, off: usize, dst: &mut [u8]) {
                for (i, b) in dst.iter_mut().enumerate() {
                    // SAFETY: as above.
                    *b = self.0[off + i].with(|p| unsafe { *p });
                }
            }
            fn fence(&self) {
                loom::sync::atomic::fence(Ordering::SeqCst);
            }
        }

        struct Ring {
            head: M,
            tail: M,
            sleeping: M,
            cells: Cells,
        }

        fn ring(cap: usize) -> Arc<Ring> {
            Arc::new(Ring {
                head: M(AtomicU64::new(0)),
                tail: M(AtomicU64::new(0)),
                sleeping: M(AtomicU64::new(0)),
                cells: Cells((0..cap).map(|_| UnsafeCell::new(0)).collect()),
            })
        }

        fn shared(r: &Ring) -> Shared<'_, M, Cells> {
            Shared {
                head: &r.head,
                tail: &r.tail,
                sleeping: &r.sleeping,
                storage: &r.cells,
            }
        }

        /// Three messages through a 4-byte ring, so writes wrap and wait for space: bytes arrive
        /// in order, none torn, no data race.
        #[test]
        fn bytes_arrive_in_order_without_races() {
            loom::model(|| {
                let r = ring(4);
                let r2 = r.clone();
                let producer = loom::thread::spawn(move || {
                    let mut p = Producer::new(shared(&r2));
                    for msg in [[1u8, 2, 3], [4, 5, 6]] {
                        while !p.push_all(&[&msg]).unwrap() {
                            loom::thread::yield_now();
                        }
                    }
                });
                let mut c = Consumer::new(shared(&r));
                let mut got = Vec::new();
                while got.len() < 6 {
                    let mut buf = [0u8; 4];
                    let n = c.pop(&mut buf).unwrap();
                    got.extend_from_slice(&buf[..n]);
                    if n == 0 {
                        loom::thread::yield_now();
                    }
                }
                producer.join().unwrap();
                assert_eq!(got, [1, 2, 3, 4, 5, 6]);
            });
        }

        /// The doorbell never loses a wake-up: if the consumer decides to sleep on an empty
        /// ring, the producer that then publishes sees the flag.
        #[test]
        fn no_lost_wakeups() {
            loom::model(|| {
                let r = ring(4);
                let r2 = r.clone();
                let producer = loom::thread::spawn(move || {
                    let mut p = Producer::new(shared(&r2));
                    assert!(p.push_all(&[&[9]]).unwrap());
                    p.needs_wake(false)
                });
                let mut c = Consumer::new(shared(&r));
                let slept = c.prepare_sleep();
                let woke = producer.join().unwrap();
                if slept {
                    assert!(woke, "the consumer slept on an empty ring and nobody rang");
                }
            });
        }
    }
}
