//! Memory that peers put into and get from (VMI 2.1: a buffer from `VMI_Buffer_Allocate`
//! published with `VMI_RDMA_Publish_Buffer`).
//!
//! A region is a sealed memfd mapped shared, page-aligned and zero-filled: memory the
//! kernel can hand to another process of the same user (the shared-memory transport's
//! one-sided path maps it there) and that no one can shrink under a mapping. vmi owns the
//! memory, so a registration of it can never outlive it: the last handle's drop unmaps it,
//! and vmi keeps a handle for as long as a peer may still reach the memory (until the peer
//! released it or the connection closed).
//!
//! Its bytes change under the application when a peer's put lands (during `poll`), so it
//! hands out no references: [`Region::read`] and [`Region::write`] copy, range-checked.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::error::VmiError;

/// Largest region: 1 TiB (a sanity bound on a size that may come from a configuration).
pub const MAX_REGION: usize = 1 << 40;

/// The mapping behind a region.
struct Mapping {
    base: *mut u8,
    /// Bytes mapped (whole pages).
    mapped: usize,
    /// Bytes the application asked for.
    len: usize,
    /// The memfd (kept to pass to a peer on the same host); none for the application's own
    /// memory ([`Region::from_user`]), which vmi neither maps nor unmaps.
    fd: Option<OwnedFd>,
    /// A peer may still write here one-sided without having said it stopped (its connection
    /// closed while the region was published to it): keep the addresses reserved after the
    /// drop (see `Drop`).
    retired: AtomicBool,
}

// SAFETY: a `Mapping` is an address range and the descriptor behind it. Its bytes are only
// ever reached by raw copies (`Region::read`, `write`, `fill`, the transports' one-sided
// copies), never through Rust references, and a peer process may write them at any moment
// anyway (one-sided puts over shared memory), so which thread of this process copies makes
// no difference to what a copy may see. The other fields are plain data or atomic.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` offers nothing but the raw copies and reads of plain fields.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.fd.is_none() {
            // The application's memory: it stays the application's.
            return;
        }
        if self.retired.load(Ordering::Relaxed) {
            // A late one-sided write from the peer must not land in whatever this process
            // maps next at these addresses: leave them reserved and inaccessible (its writes
            // then fail with EFAULT). The pages themselves go back to the system.
            // SAFETY: replaces exactly the mapping made in `Region::new` (MAP_FIXED over our
            // own range), which no reference outlives.
            let tomb = unsafe {
                rustix::mm::mmap_anonymous(
                    self.base.cast(),
                    self.mapped,
                    ProtFlags::empty(),
                    MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
                )
            };
            if tomb.is_ok() {
                return;
            }
        }
        // SAFETY: unmaps exactly the mapping made in `Region::new`; no reference into it
        // outlives the last `Region` handle (the API hands out copies only).
        let _ = unsafe { rustix::mm::munmap(self.base.cast(), self.mapped) };
    }
}

/// Memory that peers may put into and get from once published (see
/// [`crate::Operations::rdma_publish`]). Cloning it clones a handle to the same memory.
///
/// `Send` and `Sync`: its bytes are reached only by copies ([`Region::read`],
/// [`Region::write`]), and a peer on the same host may put into it at any moment, so a
/// program that reads a region while puts may land must agree with its peer on when the bytes
/// are complete (the put notification, a message) whichever thread reads.
///
/// Each region holds one descriptor (its memfd) and one mapping: for many small buffers, take
/// them from a [`crate::BufferPool`], whose chunks share both.
#[derive(Clone)]
pub struct Region {
    map: Arc<Mapping>,
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("base", &self.map.base)
            .field("len", &self.map.len)
            .finish()
    }
}

impl Region {
    /// A zero-filled region of `len` bytes (rounded up to whole pages in memory; `len()`
    /// stays `len`). The memory is reserved now (`fallocate`), so a full memory file system
    /// is an error here rather than a SIGBUS later.
    pub fn new(len: usize) -> Result<Region, VmiError> {
        if len > MAX_REGION {
            return Err(VmiError::Region(format!(
                "{len} bytes is over the largest region ({MAX_REGION} bytes)"
            )));
        }
        let fail = |what: &str, e: rustix::io::Errno| {
            VmiError::Region(format!("{what} for a region of {len} bytes failed: {e}"))
        };
        let fd = rustix::fs::memfd_create(
            "vmi-region",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(|e| fail("memfd_create", e))?;
        let page = super::page_size();
        let mapped = len.div_ceil(page).max(1) * page;
        rustix::fs::ftruncate(&fd, mapped as u64).map_err(|e| fail("ftruncate", e))?;
        rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, mapped as u64)
            .map_err(|e| fail("reserving the memory (fallocate)", e))?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(|e| fail("sealing", e))?;
        // SAFETY: a fresh shared mapping of a memfd we hold, of its whole (sealed) size.
        let base = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                mapped,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| fail("mmap", e))?;
        Ok(Region {
            map: Arc::new(Mapping {
                base: base.cast(),
                mapped,
                len,
                fd: Some(fd),
                retired: AtomicBool::new(false),
            }),
        })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.map.len
    }

    /// True for a region of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `self` and `other` are handles to the same memory.
    pub fn same(&self, other: &Region) -> bool {
        Arc::ptr_eq(&self.map, &other.map)
    }

    /// The address of its first byte in this process (what a registration records).
    pub fn addr(&self) -> usize {
        self.map.base as usize
    }

    /// A region over the application's own memory (VMI 2.1: publishing memory registered with
    /// `VMI_Buffer_Register`). vmi neither maps nor unmaps it, and never lets a peer reach it
    /// one-sided: puts and gets on it always go as messages, so a peer's write lands only
    /// while this process polls, through whatever memory is mapped at those addresses then
    /// (a registration never goes stale: memory unmapped and mapped again at the same
    /// addresses is what a later put writes to).
    ///
    /// # Safety
    /// `len` bytes at `ptr` must stay mapped, readable and writable (the same memory or other
    /// memory mapped in its place), and not be accessed through Rust references, while any
    /// handle to the region lives: until the application drops its own handles and vmi lets
    /// go of its (the peer released the buffer or the connection closed:
    /// [`crate::Handler::rdma_released`]).
    pub unsafe fn from_user(ptr: *mut u8, len: usize) -> Region {
        Region {
            map: Arc::new(Mapping {
                base: ptr,
                mapped: len,
                len,
                fd: None,
                retired: AtomicBool::new(false),
            }),
        }
    }

    /// True for a region over memory vmi allocated (not [`Region::from_user`]).
    pub fn is_vmi_memory(&self) -> bool {
        self.map.fd.is_some()
    }

    /// Keeps its addresses reserved and inaccessible after the last handle is dropped: a peer
    /// on the same host may still write into it one-sided.
    pub(crate) fn retire_on_drop(&self) {
        self.map.retired.store(true, Ordering::Relaxed);
    }

    /// The memfd behind it, named for a peer on the same host: its descriptor number, inode
    /// and `start` as the offset of a buffer in it. None when the inode cannot be read.
    pub(crate) fn attach(&self, start: usize) -> Option<super::wire::Attach> {
        use std::os::fd::AsRawFd;
        let fd = self.map.fd.as_ref()?;
        let st = rustix::fs::fstat(fd).ok()?;
        Some(super::wire::Attach {
            fd: u32::try_from(fd.as_raw_fd()).ok()?,
            key: 0,
            inode: st.st_ino,
            start: start as u64,
        })
    }

    /// The memfd behind it (for a transport that maps it into a peer on the same host); none
    /// for the application's own memory.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.map.fd.as_ref().map(|f| f.as_fd())
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), VmiError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(VmiError::RdmaRange {
                offset: offset as u64,
                len: len as u64,
                size: self.len() as u64,
            }),
        }
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), VmiError> {
        self.check(offset, buf.len())?;
        // SAFETY: the range lies inside the live mapping (checked above); `buf` is the
        // caller's own memory and cannot overlap the mapping (no reference into it exists).
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.base.add(offset), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copies `data` in at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), VmiError> {
        self.check(offset, data.len())?;
        // SAFETY: as in `read`, the other way.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.base.add(offset), data.len())
        };
        Ok(())
    }

    /// Copies `len` bytes at `offset` out into a vector.
    pub fn to_vec(&self, offset: usize, len: usize) -> Result<Vec<u8>, VmiError> {
        let mut v = vec![0; len];
        self.read(offset, &mut v)?;
        Ok(v)
    }

    /// Copies `parts` in one after another from `offset`.
    pub fn write_parts(&self, offset: usize, parts: &[&[u8]]) -> Result<(), VmiError> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        self.check(offset, total)?;
        let mut at = offset;
        for p in parts {
            self.write(at, p)?;
            at += p.len();
        }
        Ok(())
    }

    /// Fills `len` bytes at `offset` with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), VmiError> {
        self.check(offset, len)?;
        // SAFETY: the range lies inside the live mapping (checked above).
        unsafe { std::ptr::write_bytes(self.map.base.add(offset), byte, len) };
        Ok(())
    }
}
