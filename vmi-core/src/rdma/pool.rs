//! Fixed-size buffer pools (VMI 2.1: `VMI_Pool_Create_Buffer_Pool`,
//! `VMI_Pool_Allocate_Buffer`, `VMI_Pool_Deallocate_Buffer`, `VMI_Pool_Destroy_Buffer_Pool`).
//!
//! A pool carves buffers of one size, each aligned as asked, out of [`Region`]s allocated a
//! chunk at a time: `prealloc` buffers at creation, `grow` more whenever it runs out, never
//! more than `max` in all. A buffer is publishable memory (its region and range), returned to
//! the pool when dropped. Dropping the pool (VMI's destroy) frees nothing under a buffer still
//! out: each buffer keeps its chunk alive, and its drop then goes to no pool.
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::rc::Rc;

use super::region::Region;
use crate::error::VmiError;

/// How a pool is made (VMI 2.1: `VMI_Pool_Create_Buffer_Pool`'s arguments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Bytes per buffer (at least 1).
    pub buffer_size: usize,
    /// Alignment of each buffer's first byte: a power of two, at most the page size.
    pub align: usize,
    /// Buffers made at creation.
    pub prealloc: usize,
    /// Buffers added when the pool runs out (0: it never grows).
    pub grow: usize,
    /// The most buffers the pool makes in all (0: no limit beyond memory).
    pub max: usize,
    /// Zero a buffer each time it is handed out (VMI's `VMI_POOL_CLEARONCE` zeroes new
    /// memory only, which every region is already).
    pub clear: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            buffer_size: 4096,
            align: 64,
            prealloc: 16,
            grow: 16,
            max: 0,
            clear: false,
        }
    }
}

/// How full a pool is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers made.
    pub buffers: usize,
    /// Of them, in the pool now.
    pub free: usize,
    /// Regions (chunks) allocated.
    pub chunks: usize,
}

struct Inner {
    cfg: PoolConfig,
    /// Bytes from one buffer's start to the next's (the size rounded up to the alignment).
    stride: usize,
    chunks: Vec<Region>,
    /// Free buffers: (chunk, offset in it).
    free: Vec<(usize, usize)>,
    buffers: usize,
}

impl Inner {
    /// Adds `n` buffers (fewer at the limit); false when none could be added.
    fn grow(&mut self, n: usize) -> Result<bool, VmiError> {
        let room = if self.cfg.max == 0 {
            n
        } else {
            n.min(self.cfg.max.saturating_sub(self.buffers))
        };
        if room == 0 {
            return Ok(false);
        }
        let bytes = room.checked_mul(self.stride).ok_or_else(|| {
            VmiError::Region(format!("{room} buffers of {} bytes overflow", self.stride))
        })?;
        let region = Region::new(bytes)?;
        let chunk = self.chunks.len();
        self.chunks.push(region);
        // Handed out lowest address first.
        self.free
            .extend((0..room).rev().map(|i| (chunk, i * self.stride)));
        self.buffers += room;
        Ok(true)
    }
}

/// A pool of fixed-size buffers (VMI 2.1: `PVMI_BUFFER_POOL`). Not `Send`: its free list
/// belongs to one thread (its regions may go to any).
pub struct BufferPool {
    inner: Rc<RefCell<Inner>>,
}

impl BufferPool {
    /// Makes a pool and its first `prealloc` buffers (VMI 2.1: `VMI_Pool_Create_Buffer_Pool`).
    pub fn new(cfg: PoolConfig) -> Result<BufferPool, VmiError> {
        let page = super::page_size();
        if cfg.buffer_size == 0 {
            return Err(VmiError::Region(
                "a pool's buffer_size must be at least 1".into(),
            ));
        }
        if !cfg.align.is_power_of_two() || cfg.align > page {
            return Err(VmiError::Region(format!(
                "a pool's align of {} is not a power of two up to the page size ({page})",
                cfg.align
            )));
        }
        let stride = cfg.buffer_size.div_ceil(cfg.align) * cfg.align;
        let mut inner = Inner {
            cfg,
            stride,
            chunks: Vec::new(),
            free: Vec::new(),
            buffers: 0,
        };
        if cfg.prealloc > 0 {
            inner.grow(cfg.prealloc)?;
        }
        Ok(BufferPool {
            inner: Rc::new(RefCell::new(inner)),
        })
    }

    /// Takes a buffer, growing the pool by `grow` when it is empty (VMI 2.1:
    /// `VMI_Pool_Allocate_Buffer`). Fails with [`VmiError::PoolExhausted`] at the limit.
    pub fn alloc(&self) -> Result<PoolBuffer, VmiError> {
        let mut p = self.inner.borrow_mut();
        if p.free.is_empty() {
            let n = p.cfg.grow;
            if n == 0 || !p.grow(n)? {
                return Err(VmiError::PoolExhausted {
                    buffers: p.buffers,
                    size: p.cfg.buffer_size,
                });
            }
        }
        let (chunk, offset) = p.free.pop().expect("grown above");
        let region = p.chunks[chunk].clone();
        let len = p.cfg.buffer_size;
        if p.cfg.clear {
            region.fill(offset, len, 0)?;
        }
        Ok(PoolBuffer {
            pool: Rc::downgrade(&self.inner),
            region,
            chunk,
            offset,
            len,
        })
    }

    /// How full it is.
    pub fn stats(&self) -> PoolStats {
        let p = self.inner.borrow();
        PoolStats {
            buffers: p.buffers,
            free: p.free.len(),
            chunks: p.chunks.len(),
        }
    }

    /// Bytes per buffer.
    pub fn buffer_size(&self) -> usize {
        self.inner.borrow().cfg.buffer_size
    }
}

/// A buffer from a [`BufferPool`]: `len()` bytes at `offset()` of `region()`. Back to its pool
/// when dropped (VMI 2.1: `VMI_Pool_Deallocate_Buffer`).
pub struct PoolBuffer {
    pool: std::rc::Weak<RefCell<Inner>>,
    region: Region,
    chunk: usize,
    offset: usize,
    len: usize,
}

impl std::fmt::Debug for PoolBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuffer")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl PoolBuffer {
    /// The region it lies in (to publish it, or to get into it).
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Where in the region it starts (aligned as the pool asked).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a buffer of no bytes (never, from a pool).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its range in the region (what [`crate::Operations::rdma_publish`] takes).
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }

    /// Copies `data` in at `at` (within the buffer).
    pub fn write(&self, at: usize, data: &[u8]) -> Result<(), VmiError> {
        self.check(at, data.len())?;
        self.region.write(self.offset + at, data)
    }

    /// Copies `buf.len()` bytes at `at` (within the buffer) out.
    pub fn read(&self, at: usize, buf: &mut [u8]) -> Result<(), VmiError> {
        self.check(at, buf.len())?;
        self.region.read(self.offset + at, buf)
    }

    fn check(&self, at: usize, len: usize) -> Result<(), VmiError> {
        match at.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(VmiError::RdmaRange {
                offset: at as u64,
                len: len as u64,
                size: self.len as u64,
            }),
        }
    }
}

impl Drop for PoolBuffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade()
            && let Ok(mut p) = pool.try_borrow_mut()
        {
            p.free.push((self.chunk, self.offset));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_distinct_and_come_back() {
        let pool = BufferPool::new(PoolConfig {
            buffer_size: 100,
            align: 64,
            prealloc: 3,
            grow: 2,
            max: 5,
            clear: true,
        })
        .unwrap();
        assert_eq!(
            pool.stats(),
            PoolStats {
                buffers: 3,
                free: 3,
                chunks: 1
            }
        );
        let bufs: Vec<PoolBuffer> = (0..5).map(|_| pool.alloc().unwrap()).collect();
        assert_eq!(pool.stats().chunks, 2, "grew once");
        for b in &bufs {
            assert_eq!((b.region().addr() + b.offset()) % 64, 0, "aligned");
            assert_eq!(b.len(), 100);
        }
        let mut starts: Vec<usize> = bufs
            .iter()
            .map(|b| b.region().addr() + b.offset())
            .collect();
        starts.sort();
        assert!(starts.windows(2).all(|w| w[1] - w[0] >= 100), "no overlap");
        assert!(matches!(
            pool.alloc(),
            Err(VmiError::PoolExhausted {
                buffers: 5,
                size: 100
            })
        ));
        bufs[0].write(0, b"dirty").unwrap();
        assert!(bufs[0].write(96, b"12345").is_err(), "past its end");
        drop(bufs);
        assert_eq!(pool.stats().free, 5);
        let again = pool.alloc().unwrap();
        let mut b = [1u8; 5];
        again.read(0, &mut b).unwrap();
        assert_eq!(b, [0; 5], "cleared when handed out again");
    }

    #[test]
    fn a_buffer_outlives_its_pool_and_bad_configurations_are_refused() {
        let pool = BufferPool::new(PoolConfig {
            prealloc: 1,
            grow: 0,
            ..PoolConfig::default()
        })
        .unwrap();
        let b = pool.alloc().unwrap();
        assert!(pool.alloc().is_err(), "grow 0: no more");
        drop(pool);
        b.write(0, b"still mine").unwrap();
        drop(b);
        for bad in [
            PoolConfig {
                buffer_size: 0,
                ..PoolConfig::default()
            },
            PoolConfig {
                align: 48,
                ..PoolConfig::default()
            },
            PoolConfig {
                align: 1 << 20,
                ..PoolConfig::default()
            },
        ] {
            assert!(BufferPool::new(bad).is_err(), "{bad:?}");
        }
    }
}
