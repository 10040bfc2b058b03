//! Send buffers (VMI 2.1: `VMI_Buffer_Allocate`, `VMI_Buffer_Register`).
#![forbid(unsafe_code)]

use std::sync::Arc;

/// One transport's registration of a buffer's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Registration {
    /// The transport (its engine index, a `slot::DevIndex`).
    pub transport: u16,
    /// Its handle (never 0).
    pub handle: u64,
}

/// The bytes of a buffer: its own, or read-only bytes shared with other buffers.
#[derive(Debug)]
enum Bytes {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
    /// A range of shared bytes (boxed, so a buffer stays three words: the send path moves
    /// buffers by value).
    Slice(Box<(Arc<[u8]>, std::ops::Range<usize>)>),
}

impl Default for Bytes {
    fn default() -> Self {
        Bytes::Owned(Vec::new())
    }
}

/// Memory a send uses. Ownership moves into the send and comes back in the send completion,
/// so the transport may use the bytes without copying until then.
///
/// A buffer made with [`Buffer::shared`] sends the same read-only bytes as any number of
/// other sends at once (a benchmark's message, a broadcast); devices only ever read a send's
/// bytes (the SDK gives no writable view of them). Writing to a shared buffer (through
/// `DerefMut` or [`Buffer::resize`]) first copies its bytes into its own memory.
#[derive(Debug, Default)]
pub struct Buffer {
    data: Bytes,
    /// Registrations, one per transport that registered the memory (any number of
    /// transports; empty, and so allocation-free, for an unregistered buffer).
    regs: Vec<Registration>,
    /// True when the buffer came from the host's inline pool and goes back there.
    pooled: bool,
}

impl Buffer {
    /// Uses `data` as a buffer without registering it with any transport
    /// (VMI 2.1: sending from unregistered memory).
    pub fn from_vec(data: Vec<u8>) -> Buffer {
        Buffer {
            data: Bytes::Owned(data),
            regs: Vec::new(),
            pooled: false,
        }
    }

    /// A buffer over read-only bytes that other buffers may share: sending it copies nothing
    /// and clones only the `Arc`, so many sends of the same bytes can be in flight at once
    /// (the bytes stay where they are until the last of them completes).
    pub fn shared(data: Arc<[u8]>) -> Buffer {
        Buffer {
            data: Bytes::Shared(data),
            regs: Vec::new(),
            pooled: false,
        }
    }

    /// A shared buffer over `range` of `data` (a chunk of a larger message), copying
    /// nothing. A range past the end is cut to the end.
    pub fn shared_range(data: Arc<[u8]>, range: std::ops::Range<usize>) -> Buffer {
        let end = range.end.min(data.len());
        let start = range.start.min(end);
        Buffer {
            data: Bytes::Slice(Box::new((data, start..end))),
            regs: Vec::new(),
            pooled: false,
        }
    }

    /// The shared bytes of a buffer made with [`Buffer::shared`] (not a range of them, and
    /// not written to since): another handle on the same memory, nothing copied.
    pub(crate) fn shared_whole(&self) -> Option<Arc<[u8]>> {
        match &self.data {
            Bytes::Shared(a) => Some(a.clone()),
            _ => None,
        }
    }

    /// True for a buffer made with [`Buffer::shared`] (and not written to since).
    pub fn is_shared(&self) -> bool {
        matches!(self.data, Bytes::Shared(_) | Bytes::Slice(_))
    }

    /// A zero-filled buffer of `len` bytes, not registered.
    pub fn zeroed(len: usize) -> Buffer {
        Buffer::from_vec(vec![0; len])
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }

    #[inline]
    fn bytes(&self) -> &[u8] {
        match &self.data {
            Bytes::Owned(v) => v,
            Bytes::Shared(a) => a,
            Bytes::Slice(b) => &b.0[b.1.clone()],
        }
    }

    /// Whether any transport registered this memory.
    pub fn is_registered(&self) -> bool {
        !self.regs.is_empty()
    }

    pub(crate) fn add_registration(&mut self, r: Registration) {
        self.regs.push(r);
    }

    pub(crate) fn take_registrations(&mut self) -> Vec<Registration> {
        std::mem::take(&mut self.regs)
    }

    /// Takes the memory back (a copy of the bytes for a shared buffer).
    pub fn into_vec(self) -> Vec<u8> {
        match self.data {
            Bytes::Owned(v) => v,
            Bytes::Shared(a) => a.to_vec(),
            Bytes::Slice(b) => b.0[b.1.clone()].to_vec(),
        }
    }

    /// Changes the length (new bytes are zero); registration covers the old capacity only,
    /// so a registered buffer should be re-registered after growing.
    pub fn resize(&mut self, len: usize) {
        self.vec_mut().resize(len, 0);
    }

    /// The buffer's own vector; a shared buffer's bytes are copied into one first (its
    /// registrations, which named the shared memory, are dropped).
    pub(crate) fn vec_mut(&mut self) -> &mut Vec<u8> {
        if !matches!(self.data, Bytes::Owned(_)) {
            self.make_owned();
        }
        match &mut self.data {
            Bytes::Owned(v) => v,
            Bytes::Shared(_) | Bytes::Slice(_) => unreachable!("made owned just above"),
        }
    }

    /// Copies shared bytes into the buffer's own vector.
    #[cold]
    #[inline(never)]
    fn make_owned(&mut self) {
        let copy = self.bytes().to_vec();
        self.data = Bytes::Owned(copy);
        self.regs.clear();
    }

    #[cfg(test)]
    fn vec_mut_cap(&self) -> usize {
        match &self.data {
            Bytes::Owned(v) => v.capacity(),
            Bytes::Shared(a) => a.len(),
            Bytes::Slice(b) => b.1.len(),
        }
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.vec_mut()
    }
}

impl From<Vec<u8>> for Buffer {
    fn from(v: Vec<u8>) -> Buffer {
        Buffer::from_vec(v)
    }
}

impl From<&[u8]> for Buffer {
    fn from(v: &[u8]) -> Buffer {
        Buffer::from_vec(v.to_vec())
    }
}

/// Recycles the memory of inline sends so the steady state allocates nothing: one free list
/// per power-of-two size class, kept up to a total byte budget.
#[derive(Debug)]
pub(crate) struct InlinePool {
    classes: Vec<Vec<Vec<u8>>>,
    kept_bytes: usize,
}

/// Inline sends up to this size draw from the pool; larger ones allocate.
pub const INLINE_POOL_MAX: usize = 64 * 1024;
/// Smallest class (bytes).
const MIN_CLASS: usize = 64;
/// Most bytes the pool keeps when buffers come back: enough for every send in flight at the
/// small sizes inline sends are for, bounded for large ones.
const INLINE_POOL_KEEP_BYTES: usize = 8 << 20;

impl Default for InlinePool {
    fn default() -> Self {
        let classes = (MIN_CLASS.trailing_zeros()..=INLINE_POOL_MAX.trailing_zeros())
            .map(|_| Vec::new())
            .collect();
        InlinePool {
            classes,
            kept_bytes: 0,
        }
    }
}

impl InlinePool {
    fn class(len: usize) -> usize {
        (len.max(MIN_CLASS).next_power_of_two().trailing_zeros() - MIN_CLASS.trailing_zeros())
            as usize
    }

    pub(crate) fn take(&mut self, data: &[u8]) -> Buffer {
        let pooled = data.len() <= INLINE_POOL_MAX;
        let mut v = if pooled {
            let c = Self::class(data.len());
            match self.classes[c].pop() {
                Some(v) => {
                    self.kept_bytes -= v.capacity();
                    v
                }
                None => Vec::with_capacity(data.len().max(MIN_CLASS).next_power_of_two()),
            }
        } else {
            Vec::with_capacity(data.len())
        };
        v.clear();
        v.extend_from_slice(data);
        Buffer {
            data: Bytes::Owned(v),
            regs: Vec::new(),
            pooled,
        }
    }

    pub(crate) fn give(&mut self, mut b: Buffer) {
        if !b.pooled || b.is_shared() {
            return;
        }
        let cap = b.vec_mut().capacity();
        if !cap.is_power_of_two() || !(MIN_CLASS..=INLINE_POOL_MAX).contains(&cap) {
            return;
        }
        if self.kept_bytes + cap > INLINE_POOL_KEEP_BYTES {
            return;
        }
        let mut v = std::mem::take(b.vec_mut());
        v.clear();
        self.kept_bytes += cap;
        self.classes[Self::class(cap)].push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_whole_shared_buffer_hands_out_its_bytes_uncopied() {
        let bytes: Arc<[u8]> = Arc::from(vec![5u8; 100]);
        let whole = Buffer::shared(bytes.clone());
        assert!(
            whole
                .shared_whole()
                .is_some_and(|a| Arc::ptr_eq(&a, &bytes))
        );
        assert!(
            Buffer::shared_range(bytes.clone(), 0..100)
                .shared_whole()
                .is_none()
        );
        assert!(Buffer::from_vec(vec![1; 4]).shared_whole().is_none());
        let mut written = Buffer::shared(bytes);
        written[0] = 9;
        assert!(
            written.shared_whole().is_none(),
            "written: its own copy now"
        );
    }

    #[test]
    fn shared_buffers_share_until_written() {
        let bytes: Arc<[u8]> = Arc::from(vec![5u8; 100]);
        let a = Buffer::shared(bytes.clone());
        let mut b = Buffer::shared(bytes.clone());
        assert!(a.is_shared() && b.is_shared());
        assert_eq!(a.as_ptr(), bytes.as_ptr(), "no copy");
        assert_eq!(b.as_ptr(), bytes.as_ptr());
        assert_eq!(a.len(), 100);
        b[0] = 9; // copy on write
        assert!(!b.is_shared());
        assert_ne!(b.as_ptr(), bytes.as_ptr());
        assert_eq!(
            (b[0], b[1], bytes[0]),
            (9, 5, 5),
            "the shared bytes are untouched"
        );
        assert_eq!(a.into_vec(), vec![5u8; 100]);
        let mut pool = InlinePool::default();
        pool.give(Buffer::shared(bytes.clone()));
        assert_eq!(
            Arc::strong_count(&bytes),
            1,
            "the pool keeps no shared bytes"
        );
    }

    #[test]
    fn inline_buffers_are_sized_to_their_class_and_recycled() {
        let mut p = InlinePool::default();
        let b = p.take(&[1; 8]);
        assert_eq!(
            b.vec_mut_cap(),
            64,
            "an 8-byte send does not reserve 64 KiB"
        );
        let ptr = b.as_ptr();
        p.give(b);
        let again = p.take(&[2; 60]);
        assert_eq!(again.as_ptr(), ptr, "same class, same memory");
        let big = p.take(&[0; 1000]);
        assert_eq!(big.vec_mut_cap(), 1024);
        p.give(again);
        p.give(big);
        assert_eq!(p.kept_bytes, 64 + 1024);
        let huge = p.take(&vec![0; INLINE_POOL_MAX + 1]);
        p.give(huge);
        assert_eq!(p.kept_bytes, 64 + 1024, "oversized buffers are not kept");
    }
}
