//! What a receiver reads (VMI 2.1: `VMI_SLAB`, `VMI_Slab_Get_Bytes_Remaining`,
//! `VMI_Slab_Copy_Bytes`, `VMI_Slab_Save_State`/`VMI_Slab_Restore_State`).
//!
//! A slab is the data of one fragment, possibly in several segments, read through a cursor.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use crate::abi::{VMI_IRB_MAX_SEGS, VmiSeg};

/// A saved cursor position (VMI 2.1: `VMI_SLAB_STATE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabState {
    seg: usize,
    off: usize,
    remaining: usize,
}

/// Received bytes with a read cursor. Lives for the callback it is passed to; keep it longer
/// with [`Slab::grab`].
pub struct Slab<'a> {
    segs: [VmiSeg; VMI_IRB_MAX_SEGS],
    nseg: usize,
    seg: usize,
    off: usize,
    remaining: usize,
    total: usize,
    owner: Option<(*mut u8, Arc<Releases>)>,
    grabbed: bool,
    _life: PhantomData<&'a [u8]>,
}

// SAFETY: a slab only reads memory that stays valid and unchanged until it is released; the
// release goes through a mutex-protected queue.
unsafe impl Send for Slab<'_> {}

impl<'a> Slab<'a> {
    /// A slab over one byte slice.
    pub fn from_bytes(data: &'a [u8]) -> Slab<'a> {
        let mut segs = [VmiSeg::EMPTY; VMI_IRB_MAX_SEGS];
        segs[0] = VmiSeg {
            base: data.as_ptr() as *mut u8,
            len: data.len(),
        };
        // SAFETY: `data` outlives 'a.
        unsafe { Slab::from_segments(&segs[..1]) }
    }

    /// A slab over raw segments.
    ///
    /// # Safety
    /// Every segment must stay readable and unchanged for `'a`.
    pub(crate) unsafe fn from_segments(segs: &[VmiSeg]) -> Slab<'a> {
        let n = segs.len().min(VMI_IRB_MAX_SEGS);
        let mut arr = [VmiSeg::EMPTY; VMI_IRB_MAX_SEGS];
        arr[..n].copy_from_slice(&segs[..n]);
        let total = arr[..n].iter().map(|s| s.len).sum();
        Slab {
            segs: arr,
            nseg: n,
            seg: 0,
            off: 0,
            remaining: total,
            total,
            owner: None,
            grabbed: false,
            _life: PhantomData,
        }
    }

    pub(crate) fn with_owner(mut self, slot: *mut u8, releases: Arc<Releases>) -> Slab<'a> {
        self.owner = Some((slot, releases));
        self
    }

    pub(crate) fn was_grabbed(&self) -> bool {
        self.grabbed
    }

    /// Total bytes in the slab.
    pub fn len(&self) -> usize {
        self.total
    }

    /// True when the slab holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Bytes not read yet (VMI 2.1: `VMI_Slab_Get_Bytes_Remaining`).
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.nseg
    }

    fn normalize(&mut self) {
        while self.seg < self.nseg && self.off >= self.segs[self.seg].len {
            self.seg += 1;
            self.off = 0;
        }
    }

    /// The next contiguous bytes, at most `max`, without copying; advances the cursor
    /// (VMI 2.1: `VMI_Slab_Get_Bytes`). Returns an empty slice at the end.
    pub fn read(&mut self, max: usize) -> &'a [u8] {
        self.normalize();
        if self.seg >= self.nseg || max == 0 {
            return &[];
        }
        let s = self.segs[self.seg];
        let n = (s.len - self.off).min(max);
        // SAFETY: the segment is valid for 'a (constructor contract) and off + n <= len.
        let out = unsafe { std::slice::from_raw_parts(s.base.add(self.off), n) };
        self.off += n;
        self.remaining -= n;
        out
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
        let mut v = vec![0; self.remaining];
        let n = self.copy_to(&mut v);
        v.truncate(n);
        v
    }

    /// Saves the cursor (VMI 2.1: `VMI_Slab_Save_State`).
    pub fn save(&self) -> SlabState {
        SlabState {
            seg: self.seg,
            off: self.off,
            remaining: self.remaining,
        }
    }

    /// Restores a saved cursor (VMI 2.1: `VMI_Slab_Restore_State`).
    pub fn restore(&mut self, state: SlabState) {
        self.seg = state.seg;
        self.off = state.off;
        self.remaining = state.remaining;
    }

    /// Rewinds to the first byte.
    pub fn rewind(&mut self) {
        self.restore(SlabState {
            seg: 0,
            off: 0,
            remaining: self.total,
        });
    }

    /// Keeps the slab after the callback returns (VMI 2.1: returning `VMI_SLAB_KEEP` from the
    /// receive handler). The data stays valid until the returned [`GrabbedSlab`] is dropped
    /// or released, from any thread. Returns `None` for slabs that cannot be kept (connect
    /// data, or a slab already grabbed).
    pub fn grab(&mut self) -> Option<GrabbedSlab> {
        if self.grabbed {
            return None;
        }
        let (slot, releases) = self.owner.clone()?;
        self.grabbed = true;
        let mut slab = Slab {
            segs: self.segs,
            nseg: self.nseg,
            seg: self.seg,
            off: self.off,
            remaining: self.remaining,
            total: self.total,
            owner: None,
            grabbed: false,
            _life: PhantomData,
        };
        slab.grabbed = false;
        releases
            .outstanding
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Some(GrabbedSlab {
            slab,
            slot,
            releases,
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
    pub(crate) queue: Mutex<Vec<usize>>,
    /// Grabbed slabs not yet released.
    pub(crate) outstanding: std::sync::atomic::AtomicUsize,
    /// Released slabs waiting in `queue`: lets `poll` skip the mutex with one relaxed load.
    pub(crate) pending: std::sync::atomic::AtomicUsize,
}

/// A slab the application kept; its memory stays valid until this is dropped
/// (VMI 2.1: `VMI_Slab_Release`). Dropping it releases it, from any thread; `poll` then
/// returns the memory to the transport.
pub struct GrabbedSlab {
    slab: Slab<'static>,
    slot: *mut u8,
    releases: Arc<Releases>,
}

// SAFETY: see `Slab`; the slot pointer is only handed back through the mutex-protected queue.
unsafe impl Send for GrabbedSlab {}

impl GrabbedSlab {
    /// The slab (cursor where it was at the grab).
    pub fn slab(&mut self) -> &mut Slab<'static> {
        &mut self.slab
    }

    /// Releases the slab (same as dropping it).
    pub fn release(self) {}
}

impl Drop for GrabbedSlab {
    fn drop(&mut self) {
        self.releases
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.slot as usize);
        self.releases
            .pending
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        self.releases
            .outstanding
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(parts: &[&[u8]]) -> Vec<VmiSeg> {
        parts
            .iter()
            .map(|p| VmiSeg {
                base: p.as_ptr() as *mut u8,
                len: p.len(),
            })
            .collect()
    }

    #[test]
    fn reads_across_segments() {
        let (a, b, c) = (b"hello".as_slice(), b"".as_slice(), b" world".as_slice());
        let s = segs(&[a, b, c]);
        // SAFETY: the arrays outlive the slab.
        let mut slab = unsafe { Slab::from_segments(&s) };
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
    fn grab_queues_release_on_drop() {
        let releases = Arc::new(Releases::default());
        let data = b"payload".to_vec();
        let mut slab = Slab::from_bytes(&data).with_owner(0x1000 as *mut u8, releases.clone());
        slab.read(3);
        let mut g = slab.grab().expect("grab");
        assert!(slab.was_grabbed());
        assert!(slab.grab().is_none(), "second grab refused");
        assert_eq!(g.slab().read_to_vec(), b"load");
        assert!(releases.queue.lock().unwrap().is_empty());
        drop(g);
        assert_eq!(*releases.queue.lock().unwrap(), vec![0x1000]);
    }
}
