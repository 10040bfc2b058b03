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

/// Recycles the memory of inline sends so the steady state allocates nothing.
#[derive(Debug, Default)]
pub(crate) struct InlinePool {
    free: Vec<Vec<u8>>,
}

/// Inline sends up to this size draw from the pool; larger ones allocate.
pub const INLINE_POOL_MAX: usize = 64 * 1024;
const INLINE_POOL_KEEP: usize = 1024;

impl InlinePool {
    pub(crate) fn take(&mut self, data: &[u8]) -> Buffer {
        let mut v = if data.len() <= INLINE_POOL_MAX {
            self.free
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(INLINE_POOL_MAX))
        } else {
            Vec::with_capacity(data.len())
        };
        v.clear();
        v.extend_from_slice(data);
        Buffer {
            data: v,
            regs: Vec::new(),
            pooled: data.len() <= INLINE_POOL_MAX,
        }
    }

    pub(crate) fn give(&mut self, mut b: Buffer) {
        if b.pooled && self.free.len() < INLINE_POOL_KEEP {
            b.vec_mut().clear();
            self.free.push(std::mem::take(b.vec_mut()));
        }
    }
}
