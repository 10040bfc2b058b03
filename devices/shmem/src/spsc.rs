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

use std::sync::atomic::Ordering;

/// Free space in a ring of `cap` bytes holding `head - tail` bytes.
pub fn free_space(head: u64, tail: u64, cap: usize) -> usize {
    debug_assert!(
        head >= tail && head - tail <= cap as u64,
        "ring positions out of order"
    );
    cap - (head - tail) as usize
}

/// Splits `len` bytes at logical position `pos` of a ring of `cap` (a power of two) bytes into
/// at most two physical ranges: `(offset, len)` then `(0, rest)`.
pub fn split(pos: u64, len: usize, cap: usize) -> ((usize, usize), (usize, usize)) {
    debug_assert!(cap.is_power_of_two() && len <= cap);
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
    /// The producer of `ring` (its positions as they are now).
    pub fn new(ring: Shared<'a, C, S>) -> Self {
        let head = ring.head.load(Ordering::Relaxed);
        let tail_seen = ring.tail.load(Ordering::Acquire);
        Producer {
            ring,
            head,
            tail_seen,
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

    /// Room for `n` bytes, reading the consumer's position only when the cached one is short.
    fn room(&mut self, n: usize) -> usize {
        let cap = self.ring.storage.capacity();
        if free_space(self.head, self.tail_seen, cap) < n {
            self.tail_seen = self.ring.tail.load(Ordering::Acquire);
        }
        free_space(self.head, self.tail_seen, cap)
    }

    /// Bytes that can be written now.
    pub fn free(&mut self) -> usize {
        let cap = self.ring.storage.capacity();
        if free_space(self.head, self.tail_seen, cap) < cap {
            self.tail_seen = self.ring.tail.load(Ordering::Acquire);
        }
        free_space(self.head, self.tail_seen, cap)
    }

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
    pub fn push_all(&mut self, parts: &[&[u8]]) -> bool {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if self.room(total) < total {
            return false;
        }
        for p in parts {
            self.put(p);
        }
        self.ring.head.store(self.head, Ordering::Release);
        true
    }

    /// Writes as much of `src` as fits; publishes; returns the bytes written.
    pub fn push_some(&mut self, src: &[u8]) -> usize {
        let n = self.room(src.len()).min(src.len());
        if n > 0 {
            self.put(&src[..n]);
            self.ring.head.store(self.head, Ordering::Release);
        }
        n
    }

    /// After publishing: true when the consumer may be asleep and must be woken.
    pub fn needs_wake(&self) -> bool {
        self.ring.storage.fence();
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
    /// The consumer of `ring`.
    pub fn new(ring: Shared<'a, C, S>) -> Self {
        let tail = ring.tail.load(Ordering::Relaxed);
        let head_seen = ring.head.load(Ordering::Acquire);
        Consumer {
            ring,
            tail,
            head_seen,
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

    /// Whether at least `n` bytes can be read, reading the producer's position only when the
    /// cached one is short.
    pub fn has(&mut self, n: usize) -> bool {
        if ((self.head_seen - self.tail) as usize) < n {
            self.head_seen = self.ring.head.load(Ordering::Acquire);
        }
        (self.head_seen - self.tail) as usize >= n
    }

    /// Bytes that can be read now.
    pub fn available(&mut self) -> usize {
        self.head_seen = self.ring.head.load(Ordering::Acquire);
        (self.head_seen - self.tail) as usize
    }

    /// Copies up to `dst.len()` bytes out and frees their space; returns how many.
    pub fn pop(&mut self, dst: &mut [u8]) -> usize {
        if !self.has(dst.len()) {
            // `has` refreshed the cached position: take what there is.
        }
        let n = ((self.head_seen - self.tail) as usize).min(dst.len());
        if n == 0 {
            return 0;
        }
        let ((o1, l1), (o2, l2)) = split(self.tail, n, self.ring.storage.capacity());
        // SAFETY: the bytes were published by the producer (observed through `head` with
        // Acquire) and are not overwritten until `tail` moves past them below.
        unsafe {
            self.ring.storage.read(o1, &mut dst[..l1]);
            self.ring.storage.read(o2, &mut dst[l1..l1 + l2]);
        }
        self.tail += n as u64;
        self.ring.tail.store(self.tail, Ordering::Release);
        n
    }

    /// Announces a sleep; returns true when the ring is still empty (sleeping is safe), false
    /// when data arrived (the flag is cleared again).
    pub fn prepare_sleep(&mut self) -> bool {
        self.ring.sleeping.store(1, Ordering::Relaxed);
        self.ring.storage.fence();
        self.head_seen = self.ring.head.load(Ordering::Acquire);
        if self.head_seen != self.tail {
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
        /// Storage of `cap` bytes at `base`.
        ///
        /// # Safety
        /// `base..base+cap` must stay mapped and writable while this value is used, and be
        /// accessed only through the ring protocol.
        pub unsafe fn new(base: *mut u8, cap: usize) -> RawStorage {
            assert!(cap.is_power_of_two());
            RawStorage { base, cap }
        }
    }

    impl Storage for RawStorage {
        fn capacity(&self) -> usize {
            self.cap
        }

        unsafe fn write(&self, off: usize, src: &[u8]) {
            // SAFETY: the caller keeps the range inside the mapping and unshared.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.add(off), src.len()) }
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
                    prop_assert_eq!(p.push_all(&[&data]), fits);
                    if fits { model.extend(&data); } else { next = next.wrapping_sub(n as u8); }
                } else {
                    let mut out = vec![0u8; n];
                    let got = c.pop(&mut out);
                    prop_assert_eq!(got, n.min(model.len()));
                    let want: Vec<u8> = model.drain(..got).collect();
                    prop_assert_eq!(&out[..got], &want[..]);
                }
                prop_assert_eq!(c.available(), model.len());
            }
        }
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
                        while !p.push_all(&[&msg]) {
                            loom::thread::yield_now();
                        }
                    }
                });
                let mut c = Consumer::new(shared(&r));
                let mut got = Vec::new();
                while got.len() < 6 {
                    let mut buf = [0u8; 4];
                    let n = c.pop(&mut buf);
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
                    assert!(p.push_all(&[&[9]]));
                    p.needs_wake()
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
