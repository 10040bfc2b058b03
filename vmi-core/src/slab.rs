//! What a receiver reads (VMI 2.1: `VMI_SLAB`, `VMI_Slab_Get_Bytes_Remaining`,
//! `VMI_Slab_Copy_Bytes`, `VMI_Slab_Save_State`/`VMI_Slab_Restore_State`, `VMI_SLAB_GRAB`,
//! `VMI_Slab_Release`).
//!
//! A slab is the data of one fragment, possibly in several segments, read through a cursor.
//! Soundness: a [`Slab<'a>`] never hands out bytes that outlive `'a`, the borrow of the IRB it
//! reads; a [`GrabbedSlab`] hands out bytes borrowed from itself, so they cannot outlive its
//! release. Whether a slab was grabbed is recorded outside the slab (a handler may replace
//! the slab it was given), so the host never frees memory a grabbed slab still reads.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::abi::{VMI_IRB_MAX_SEGS, VmiSeg};
use crate::services::Count;
use crate::slot::Slot;
use crate::waker::Waker;

/// A saved cursor position (VMI 2.1: `VMI_SLAB_STATE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabState {
    seg: usize,
    off: usize,
    remaining: usize,
}

/// The segments a cursor reads: borrowed from the IRB (no copy per delivery), or one inline.
#[derive(Clone, Copy)]
enum Segs<'a> {
    Borrowed(&'a [VmiSeg]),
    One(VmiSeg),
}

impl Segs<'_> {
    fn len(&self) -> usize {
        match self {
            Segs::Borrowed(s) => s.len().min(VMI_IRB_MAX_SEGS),
            Segs::One(_) => 1,
        }
    }

    fn get(&self, i: usize) -> VmiSeg {
        match self {
            Segs::Borrowed(s) => s[i],
            Segs::One(seg) => *seg,
        }
    }
}

/// Segments and a cursor over them. The lifetime is the segments' list, not their bytes:
/// `Slab` and `GrabbedSlab` say how long the bytes live.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    segs: Segs<'a>,
    seg: usize,
    off: usize,
    remaining: usize,
    total: usize,
}

impl<'a> Cursor<'a> {
    fn new(segs: Segs<'a>) -> Cursor<'a> {
        let total = (0..segs.len()).map(|i| segs.get(i).len).sum();
        Cursor {
            segs,
            seg: 0,
            off: 0,
            remaining: total,
            total,
        }
    }

    fn normalize(&mut self) {
        let n = self.segs.len();
        while self.seg < n && self.off >= self.segs.get(self.seg).len {
            self.seg += 1;
            self.off = 0;
        }
    }

    /// # Safety
    /// Every segment must be readable and unchanged for `'b`.
    unsafe fn read<'b>(&mut self, max: usize) -> &'b [u8] {
        self.normalize();
        if self.seg >= self.segs.len() || max == 0 {
            return &[];
        }
        let s = self.segs.get(self.seg);
        let n = (s.len - self.off).min(max);
        if s.base.is_null() {
            return &[];
        }
        // SAFETY: per the contract, and off + n <= len.
        let out = unsafe { std::slice::from_raw_parts(s.base.add(self.off), n) };
        self.off += n;
        self.remaining -= n;
        out
    }

    fn save(&self) -> SlabState {
        SlabState {
            seg: self.seg,
            off: self.off,
            remaining: self.remaining,
        }
    }

    fn restore(&mut self, state: SlabState) {
        // A state from another slab must not move the cursor out of bounds.
        let n = self.segs.len();
        if state.seg > n || state.remaining > self.total {
            return;
        }
        if state.seg < n && state.off > self.segs.get(state.seg).len {
            return;
        }
        self.seg = state.seg;
        self.off = state.off;
        self.remaining = state.remaining;
    }
}

/// What a released copy (a grab of a slab delivered with no IRB) queues instead of a slot
/// address: `poll` then counts one fewer received fragment held.
pub(crate) const COPY_RELEASED: usize = usize::MAX;

/// Who lets go of a delivered slab, and where the host records a grab.
struct Owner<'a> {
    /// The received IRB, or [`COPY_RELEASED`] for bytes a transport lent with no IRB (a grab
    /// copies them).
    slot: usize,
    releases: &'a Arc<Releases>,
    grabbed: &'a Cell<bool>,
    /// For lent bytes: the host's count of received fragments held, which a grab raises.
    held: Option<&'a Count>,
}

/// Received bytes with a read cursor. Lives for the callback it is passed to; keep it longer
/// with [`Slab::grab`].
pub struct Slab<'a> {
    cursor: Cursor<'a>,
    owner: Option<Owner<'a>>,
    _life: PhantomData<&'a [u8]>,
}

impl<'a> Slab<'a> {
    /// A slab over one byte slice.
    pub fn from_bytes(data: &'a [u8]) -> Slab<'a> {
        let seg = VmiSeg {
            base: data.as_ptr() as *mut u8,
            len: data.len(),
        };
        Slab {
            cursor: Cursor::new(Segs::One(seg)),
            owner: None,
            _life: PhantomData,
        }
    }

    /// A slab over the segments of a slot the host holds (connect data, reply data): the
    /// slot owns the bytes, and the borrow keeps them.
    pub(crate) fn of_slot(slot: &'a Slot) -> Slab<'a> {
        Slab {
            cursor: Cursor::new(Segs::Borrowed(slot.segs())),
            owner: None,
            _life: PhantomData,
        }
    }

    /// A slab over a received slot that the application may grab. The bytes belong to the
    /// transport until the slot is released, which needs the slot by value: the borrow keeps
    /// them. A grab is recorded in `grabbed`.
    pub(crate) fn received(
        slot: &'a Slot,
        releases: &'a Arc<Releases>,
        grabbed: &'a Cell<bool>,
    ) -> Slab<'a> {
        Slab {
            cursor: Cursor::new(Segs::Borrowed(slot.segs())),
            owner: Some(Owner {
                slot: slot.addr(),
                releases,
                grabbed,
                held: None,
            }),
            _life: PhantomData,
        }
    }

    /// A slab over bytes a transport lent for the callback only (a fragment delivered with
    /// no IRB): a grab copies them, and counts in `held` until the copy is released.
    pub(crate) fn lent(
        data: &'a [u8],
        releases: &'a Arc<Releases>,
        grabbed: &'a Cell<bool>,
        held: &'a Count,
    ) -> Slab<'a> {
        let mut slab = Slab::from_bytes(data);
        slab.owner = Some(Owner {
            slot: COPY_RELEASED,
            releases,
            grabbed,
            held: Some(held),
        });
        slab
    }

    /// Total bytes in the slab.
    pub fn len(&self) -> usize {
        self.cursor.total
    }

    /// True when the slab holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.cursor.total == 0
    }

    /// Bytes not read yet (VMI 2.1: `VMI_Slab_Get_Bytes_Remaining`).
    pub fn remaining(&self) -> usize {
        self.cursor.remaining
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.cursor.segs.len()
    }

    /// The next contiguous bytes, at most `max`, without copying; advances the cursor
    /// (VMI 2.1: `VMI_Slab_Get_Bytes`). Returns an empty slice at the end.
    pub fn read(&mut self, max: usize) -> &'a [u8] {
        // SAFETY: every constructor ties the segments' validity to 'a.
        unsafe { self.cursor.read(max) }
    }

    /// Copies up to `dst.len()` bytes across segments; returns how many
    /// (VMI 2.1: `VMI_Slab_Copy_Bytes`).
    pub fn copy_to(&mut self, dst: &mut [u8]) -> usize {
        let mut done = 0;
        while done < dst.len() {
            let chunk = self.read(dst.len() - done);
            if chunk.is_empty() {
                break;
            }
            dst[done..done + chunk.len()].copy_from_slice(chunk);
            done += chunk.len();
        }
        done
    }

    /// Skips up to `n` bytes; returns how many were skipped.
    pub fn skip(&mut self, n: usize) -> usize {
        let mut left = n;
        while left > 0 {
            let c = self.read(left).len();
            if c == 0 {
                break;
            }
            left -= c;
        }
        n - left
    }

    /// Copies the rest into a new vector.
    pub fn read_to_vec(&mut self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.remaining());
        self.read_into(&mut v);
        v
    }

    /// Appends the rest to `out` (a message gathered fragment by fragment); returns how many
    /// bytes.
    pub fn read_into(&mut self, out: &mut Vec<u8>) -> usize {
        let mut n = 0;
        loop {
            let chunk = self.read(usize::MAX);
            if chunk.is_empty() {
                return n;
            }
            out.extend_from_slice(chunk);
            n += chunk.len();
        }
    }

    /// Saves the cursor (VMI 2.1: `VMI_Slab_Save_State`).
    pub fn save(&self) -> SlabState {
        self.cursor.save()
    }

    /// Restores a saved cursor (VMI 2.1: `VMI_Slab_Restore_State`). A state saved from
    /// another slab that does not fit this one is ignored.
    pub fn restore(&mut self, state: SlabState) {
        self.cursor.restore(state);
    }

    /// Rewinds to the first byte.
    pub fn rewind(&mut self) {
        self.cursor.seg = 0;
        self.cursor.off = 0;
        self.cursor.remaining = self.cursor.total;
    }

    /// Keeps the slab after the callback returns (VMI 2.1: returning `VMI_SLAB_GRAB` from the
    /// receive handler). The data stays valid until the returned [`GrabbedSlab`] is dropped
    /// or released, from any thread. Returns `None` for slabs that cannot be kept (connect
    /// data, or a slab already grabbed).
    ///
    /// A grabbed slab counts against the process's [`crate::MAX_RECEIVES_IN_FLIGHT`] received
    /// IRBs until it is released: an application that keeps that many stops receiving (the
    /// transports push back on the peers) until it lets some go.
    pub fn grab(&mut self) -> Option<GrabbedSlab> {
        let owner = self.owner.as_ref()?;
        if owner.grabbed.replace(true) {
            return None;
        }
        if owner.held.is_none() {
            // Device memory stays in use until the release (a copy holds none).
            owner.releases.outstanding.fetch_add(1, Ordering::AcqRel);
        }
        let n = self.cursor.segs.len();
        let mut segs = [VmiSeg::EMPTY; VMI_IRB_MAX_SEGS];
        let mut copy = None;
        if let Some(held) = owner.held {
            // Lent bytes go back to the transport when the callback returns: keep a copy.
            held.set(held.get() + 1);
            let mut bytes = Vec::with_capacity(self.cursor.total);
            for i in 0..n {
                let seg = self.cursor.segs.get(i);
                if !seg.base.is_null() && seg.len > 0 {
                    // SAFETY: the lent segments are readable for 'a, which this borrow is in.
                    bytes.extend_from_slice(unsafe {
                        std::slice::from_raw_parts(seg.base, seg.len)
                    });
                }
            }
            let bytes = bytes.into_boxed_slice();
            segs[0] = VmiSeg {
                base: bytes.as_ptr() as *mut u8,
                len: bytes.len(),
            };
            copy = Some(bytes);
        } else {
            for (i, s) in segs.iter_mut().enumerate().take(n) {
                *s = self.cursor.segs.get(i);
            }
        }
        let nseg = if copy.is_some() { 1 } else { n };
        let mut state = self.cursor.save();
        if copy.is_some() {
            // The same offset, in the one segment of the copy.
            state = SlabState {
                seg: 0,
                off: self.cursor.total - self.cursor.remaining,
                remaining: self.cursor.remaining,
            };
        }
        Some(GrabbedSlab {
            segs,
            nseg,
            state,
            slot: owner.slot,
            releases: owner.releases.clone(),
            _copy: copy,
        })
    }
}

impl std::io::Read for Slab<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Ok(self.copy_to(buf))
    }
}

/// Slabs released by the application, waiting for `poll` to give them back to the devices.
#[derive(Default)]
pub(crate) struct Releases {
    queue: Mutex<Vec<usize>>,
    /// The host's doorbell: a release from another thread wakes a `wait`, so transports
    /// stopped for want of receive IRBs go on at once (none of them polls for it).
    waker: Option<Arc<Waker>>,
    /// Grabbed slabs not yet released.
    pub(crate) outstanding: AtomicUsize,
    /// Released slabs waiting in `queue`: lets `poll` skip the mutex with one relaxed load.
    pub(crate) pending: AtomicUsize,
}

impl Releases {
    /// Releases that ring `waker` when a slab comes back.
    pub(crate) fn with_waker(waker: Arc<Waker>) -> Releases {
        Releases {
            waker: Some(waker),
            ..Releases::default()
        }
    }

    /// Moves every released slot address into `into` (which should be empty).
    pub(crate) fn take_all(&self, into: &mut Vec<usize>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut *q, into);
        self.pending.fetch_sub(into.len(), Ordering::Relaxed);
    }
}

/// A slab the application kept; its memory stays valid until this is dropped
/// (VMI 2.1: `VMI_Slab_Release`). Dropping it releases it, from any thread; `poll` then
/// returns the memory to the transport. Bytes read from it borrow it, so none outlive the
/// release.
pub struct GrabbedSlab {
    /// Its own copy of the segment list (copied once, at the grab): a grabbed slab moves to
    /// other threads and must not read the engine's slot.
    segs: [VmiSeg; VMI_IRB_MAX_SEGS],
    nseg: usize,
    state: SlabState,
    slot: usize,
    releases: Arc<Releases>,
    /// The copy the segment points into, for a grab of lent bytes; its heap block does not
    /// move while this lives.
    _copy: Option<Box<[u8]>>,
}

// SAFETY: the segments stay valid and unchanged until the slab is released, and nothing else
// reads or writes them meanwhile; the release goes through a mutex-protected queue.
unsafe impl Send for GrabbedSlab {}

impl GrabbedSlab {
    fn cursor(&self) -> Cursor<'_> {
        let mut c = Cursor::new(Segs::Borrowed(&self.segs[..self.nseg]));
        c.restore(self.state);
        c
    }

    /// A fresh cursor over the kept bytes, starting where this one is, borrowed from it.
    pub fn slab(&self) -> Slab<'_> {
        Slab {
            cursor: self.cursor(),
            owner: None,
            _life: PhantomData,
        }
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.cursor().total
    }

    /// True when the slab holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.state.remaining
    }

    /// The next contiguous bytes, at most `max`, borrowed from this slab.
    pub fn read(&mut self, max: usize) -> &[u8] {
        let mut c = self.cursor();
        // SAFETY: the segments stay valid until `self` is dropped; the result borrows `self`.
        let out = unsafe { c.read(max) };
        self.state = c.save();
        out
    }

    /// Copies up to `dst.len()` bytes; returns how many.
    pub fn copy_to(&mut self, dst: &mut [u8]) -> usize {
        let mut view = self.slab();
        let n = view.copy_to(dst);
        self.state = view.save();
        n
    }

    /// Copies the rest into a new vector.
    pub fn read_to_vec(&mut self) -> Vec<u8> {
        let mut view = self.slab();
        let v = view.read_to_vec();
        self.state = view.save();
        v
    }

    /// Saves the cursor.
    pub fn save(&self) -> SlabState {
        self.state
    }

    /// Restores a saved cursor (ignored if it does not fit this slab).
    pub fn restore(&mut self, state: SlabState) {
        let mut c = self.cursor();
        c.restore(state);
        self.state = c.save();
    }

    /// The rest as an owned vector, and the slab released. A grab of lent bytes (a copy
    /// already) hands its copy over when nothing of it was read, with no second copy; any
    /// other slab is copied out.
    pub fn into_vec(mut self) -> Vec<u8> {
        let whole = self.state.remaining == self.len();
        match self._copy.as_mut() {
            // The empty box left in its place keeps `Drop` counting this slab as a copy.
            Some(copy) if whole => std::mem::take(copy).into_vec(),
            _ => self.read_to_vec(),
        }
    }

    /// Releases the slab (same as dropping it).
    pub fn release(self) {}
}

impl std::io::Read for GrabbedSlab {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Ok(self.copy_to(buf))
    }
}

impl Drop for GrabbedSlab {
    fn drop(&mut self) {
        self.releases
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.slot);
        self.releases.pending.fetch_add(1, Ordering::Release);
        if self._copy.is_none() {
            self.releases.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(w) = &self.releases.waker {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slab_of<'a>(parts: &[&'a [u8]]) -> Slab<'a> {
        let segs: Vec<VmiSeg> = parts
            .iter()
            .map(|p| VmiSeg {
                base: p.as_ptr() as *mut u8,
                len: p.len(),
            })
            .collect();
        Slab {
            cursor: Cursor::new(Segs::Borrowed(Box::leak(segs.into_boxed_slice()))),
            owner: None,
            _life: PhantomData,
        }
    }

    #[test]
    fn reads_across_segments() {
        let (a, b, c) = (b"hello".as_slice(), b"".as_slice(), b" world".as_slice());
        let mut slab = slab_of(&[a, b, c]);
        assert_eq!(slab.len(), 11);
        assert_eq!(slab.read(3), b"hel");
        assert_eq!(slab.remaining(), 8);
        let saved = slab.save();
        assert_eq!(slab.read(100), b"lo", "read stops at the segment end");
        assert_eq!(slab.read(100), b" world", "empty segments are skipped");
        assert_eq!(slab.read(100), b"");
        slab.restore(saved);
        let mut out = [0u8; 8];
        assert_eq!(slab.copy_to(&mut out), 8);
        assert_eq!(&out, b"lo world");
        slab.rewind();
        assert_eq!(slab.skip(6), 6);
        assert_eq!(slab.read_to_vec(), b"world");
        assert_eq!(slab.skip(1), 0);
    }

    #[test]
    fn read_into_appends_the_rest_across_segments() {
        let mut slab = slab_of(&[b"ab", b"", b"cde"]);
        slab.read(1);
        let mut out = b"x".to_vec();
        assert_eq!(slab.read_into(&mut out), 4);
        assert_eq!(out, b"xbcde");
        assert_eq!(slab.read_into(&mut out), 0, "nothing left");
    }

    #[test]
    fn a_foreign_state_cannot_move_the_cursor_out_of_bounds() {
        let mut big = slab_of(&[b"0123456789", b"abcdef"]);
        big.read(12);
        let far = big.save();
        let mut small = Slab::from_bytes(b"xy");
        small.restore(far);
        assert_eq!(small.remaining(), 2, "ignored");
        assert_eq!(small.read_to_vec(), b"xy");
    }

    #[test]
    fn empty_and_single() {
        let mut slab = Slab::from_bytes(&[]);
        assert!(slab.is_empty());
        assert_eq!(slab.read(10), b"");
        let mut slab = Slab::from_bytes(b"abc");
        assert!(
            slab.grab().is_none(),
            "a slab without an owner cannot be kept"
        );
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut slab, &mut v).unwrap();
        assert_eq!(v, b"abc");
    }

    #[test]
    fn grab_is_recorded_outside_the_slab_and_release_queues_on_drop() {
        let releases = Arc::new(Releases::default());
        let grabbed = Cell::new(false);
        let data = b"payload".to_vec();
        let seg = VmiSeg {
            base: data.as_ptr() as *mut u8,
            len: data.len(),
        };
        let mut slab = Slab {
            cursor: Cursor::new(Segs::One(seg)),
            owner: Some(Owner {
                slot: 0x1000,
                releases: &releases,
                grabbed: &grabbed,
                held: None,
            }),
            _life: PhantomData,
        };
        slab.read(3);
        let mut g = slab.grab().expect("grab");
        assert!(grabbed.get());
        assert!(slab.grab().is_none(), "second grab refused");
        // A handler that swaps in another slab does not hide the grab from the host.
        slab = Slab::from_bytes(b"other");
        assert!(grabbed.get());
        assert_eq!(slab.len(), 5);
        assert_eq!(
            g.slab().read_to_vec(),
            b"load",
            "a view does not move the cursor"
        );
        assert_eq!(g.read(2), b"lo");
        assert_eq!(g.read_to_vec(), b"ad");
        assert_eq!(g.remaining(), 0);
        assert!(releases.queue.lock().unwrap().is_empty());
        assert_eq!(releases.outstanding.load(Ordering::Relaxed), 1);
        drop(g);
        assert_eq!(*releases.queue.lock().unwrap(), vec![0x1000]);
        assert_eq!(releases.outstanding.load(Ordering::Relaxed), 0);
        let mut into = Vec::new();
        releases.take_all(&mut into);
        assert_eq!(into, vec![0x1000]);
        assert_eq!(releases.pending.load(Ordering::Relaxed), 0);
    }

    /// A grab of lent bytes is a copy: it reads the same bytes after the original changes,
    /// counts as held until released, and its release queues the copy marker, not a slot.
    #[test]
    fn a_grab_of_lent_bytes_copies_them() {
        let releases = Arc::new(Releases::default());
        let grabbed = Cell::new(false);
        let held = Count::default();
        let mut data = b"lent bytes".to_vec();
        let mut g = {
            let mut slab = Slab::lent(&data, &releases, &grabbed, &held);
            assert_eq!(slab.read(5), b"lent ");
            slab.grab().expect("lent bytes can be grabbed")
        };
        data.fill(b'x');
        assert_eq!(held.get(), 1);
        assert_eq!(g.remaining(), 5, "the cursor is kept");
        assert_eq!(g.read_to_vec(), b"bytes");
        assert_eq!(
            releases.outstanding.load(Ordering::Relaxed),
            0,
            "no device memory held"
        );
        drop(g);
        let mut into = Vec::new();
        releases.take_all(&mut into);
        assert_eq!(into, vec![COPY_RELEASED]);
    }

    /// `into_vec` hands over a lent grab's own copy when none of it was read, copies
    /// otherwise, and releases the slab as a copy either way.
    #[test]
    fn into_vec_hands_over_a_whole_copy_and_releases_it() {
        let releases = Arc::new(Releases::default());
        let held = Count::default();
        let data = b"lent bytes".to_vec();
        for read_first in [0, 5] {
            let grabbed = Cell::new(false);
            let g = {
                let mut slab = Slab::lent(&data, &releases, &grabbed, &held);
                slab.read(read_first);
                slab.grab().expect("lent bytes can be grabbed")
            };
            let copy_at = g.segs[0].base as usize;
            let v = g.into_vec();
            assert_eq!(v, data[read_first..]);
            assert_eq!(
                v.as_ptr() as usize == copy_at,
                read_first == 0,
                "the copy itself is handed over only when whole"
            );
            assert_eq!(releases.outstanding.load(Ordering::Relaxed), 0);
            let mut into = Vec::new();
            releases.take_all(&mut into);
            assert_eq!(into, vec![COPY_RELEASED], "released as a copy");
        }
    }
}
