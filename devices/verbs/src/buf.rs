//! Memory a NIC reads and writes: allocated by hand and reached only through raw pointers
//! while it is registered, so that no Rust reference claims bytes the NIC may be writing.
#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

/// Alignment of every buffer: a page, as NICs prefer.
const ALIGN: usize = 4096;

/// A zeroed, page-aligned buffer for work requests. Neither `Send` nor `Sync`.
pub struct DmaBuf {
    ptr: NonNull<u8>,
    len: usize,
}

impl DmaBuf {
    /// `len` zeroed bytes (at least one byte is allocated).
    pub fn new(len: usize) -> DmaBuf {
        let layout = Layout::from_size_align(len.max(1), ALIGN).expect("a buffer size in range");
        // SAFETY: the layout's size is not zero.
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        DmaBuf { ptr, len }
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its first byte, for registration.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The address of byte `off`.
    pub fn addr(&self, off: usize) -> u64 {
        self.ptr.as_ptr() as u64 + off as u64
    }

    /// Copies `data` in at `off`; false when it does not fit.
    ///
    /// # Safety
    /// No work request that writes or reads these bytes may be outstanding.
    pub unsafe fn write(&self, off: usize, data: &[u8]) -> bool {
        if off.checked_add(data.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        // SAFETY: in range (checked); the caller guarantees no NIC access to it now; `data`
        // cannot overlap memory only reached through this buffer's raw pointer.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len())
        };
        true
    }

    /// The bytes at `off..off+len`, or `None` when out of range.
    ///
    /// # Safety
    /// No work request that writes these bytes may be outstanding for as long as the slice
    /// lives.
    pub unsafe fn slice(&self, off: usize, len: usize) -> Option<&[u8]> {
        if off.checked_add(len).is_none_or(|end| end > self.len) {
            return None;
        }
        // SAFETY: in range; allocated and zero-initialised; the caller guarantees nothing
        // writes it while the slice lives.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) })
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.len.max(1), ALIGN).expect("as allocated");
        // SAFETY: allocated in `new` with this layout and not freed since.
        unsafe { dealloc(self.ptr.as_ptr(), layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_slices_stay_in_range() {
        let b = DmaBuf::new(100);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        // SAFETY: no NIC knows this buffer.
        unsafe {
            assert!(b.write(90, &[7; 10]));
            assert!(!b.write(91, &[7; 10]));
            assert!(!b.write(usize::MAX, &[7]));
            assert_eq!(b.slice(88, 4), Some(&[0, 0, 7, 7][..]));
            assert_eq!(b.slice(97, 4), None);
            assert_eq!(b.slice(usize::MAX, 2), None);
        }
    }
}
