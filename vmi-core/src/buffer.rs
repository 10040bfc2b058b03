//! Send buffers (VMI 2.1: `VMI_Buffer_Allocate`, `VMI_Buffer_Register`).
#![forbid(unsafe_code)]

/// One transport's registration of a buffer's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Registration {
    /// The transport (its engine index, a `slot::DevIndex`).
    pub transport: u16,
    /// Its handle (never 0).
    pub handle: u64,
}

/// Memory a send uses. Ownership moves into the send and comes back in the send completion,
/// so the transport may use the bytes without copying until then.
#[derive(Debug, Default)]
pub struct Buffer {
    data: Vec<u8>,
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
            data,
            regs: Vec::new(),
            pooled: false,
        }
    }

    /// A zero-filled buffer of `len` bytes, not registered.
    pub fn zeroed(len: usize) -> Buffer {
        Buffer::from_vec(vec![0; len])
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
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

    /// Takes the memory back.
    pub fn into_vec(self) -> Vec<u8> {
        self.data
    }

    /// Changes the length (new bytes are zero); registration covers the old capacity only,
    /// so a registered buffer should be re-registered after growing.
    pub fn resize(&mut self, len: usize) {
        self.data.resize(len, 0);
    }

    pub(crate) fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.data
    }

    #[cfg(test)]
    fn vec_mut_cap(&self) -> usize {
        self.data.capacity()
    }
}

impl std::ops::Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.data
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
            data: v,
            regs: Vec::new(),
            pooled,
        }
    }

    pub(crate) fn give(&mut self, mut b: Buffer) {
        let cap = b.vec_mut().capacity();
        if !b.pooled || !cap.is_power_of_two() || !(MIN_CLASS..=INLINE_POOL_MAX).contains(&cap) {
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
