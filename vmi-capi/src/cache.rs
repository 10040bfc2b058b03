//! The registration cache from C (VMI 2.1: `VMI_Cache_Register`, `VMI_Cache_Deregister`,
//! `VMI_Cache_Stats`): a registration of the application's memory (a `PVMI_BUFFER`, as
//! `VMI_Buffer_Register` makes) kept after `VMI_Cache_Deregister` and found again by address
//! range, over the SDK's cache (`vmi_device::regcache`). Its ranges are watched: memory
//! unmapped, released or moved drops its registration before the call that did it returns,
//! so a later `VMI_Cache_Register` of other memory mapped at the same address never gets the
//! old one (VMI 2.1's cache was defeated by exactly that). Where memory cannot be watched, or
//! with `VMI_DISABLE_REGCACHE=1`, every registration is for one use.
//!
//! A `PVMI_CACHE_ENTRY` is a struct C reads, owned by libvmi's table and checked by address
//! on every call, like the RDMA structs.

use vmi_core::sdk::regcache::{Lease, RegCache};

use crate::handle::{Handle, to_ptr};
use crate::state::{self, Buf};
use crate::status::{CapiError, guard};
use crate::types::*;

/// Registrations the process keeps at most (the least recently used unused one goes).
const CACHE_ENTRIES: usize = 4096;

const ENTRY: &str = "PVMI_CACHE_ENTRY";

/// A cached registration as C sees it (VMI 2.1: `VMI_CACHE_ENTRY`).
#[repr(C)]
#[derive(Debug)]
pub struct VMI_CACHE_ENTRY {
    /// The registration, for sends and RDMA calls (VMI 2.1: `bufferHandle`); it covers the
    /// whole pages around the range asked for.
    pub bufferHandle: PVMI_BUFFER,
    /// The address asked for.
    pub addr: PVOID,
    /// The size asked for.
    pub size: ULONG,
}

/// A cache entry handle.
#[allow(non_camel_case_types)]
pub type PVMI_CACHE_ENTRY = *mut VMI_CACHE_ENTRY;

/// What the cache did (vmi's addition, for programs; `VMI_Cache_Stats` prints it): the
/// cache's own statistics, laid out for C.
#[allow(non_camel_case_types)]
pub type VMI_CACHE_STATS = vmi_core::sdk::regcache::CacheStats;

/// The cache and the entries handed to C.
#[derive(Default)]
pub(crate) struct CacheTables {
    cache: Option<RegCache<Handle>>,
    /// Entries C holds, by address: the C view (owned here) and the cache's lease.
    entries: std::collections::HashMap<usize, (Box<VMI_CACHE_ENTRY>, Lease<Handle>)>,
}

/// Registers `size` bytes at `addr` through the cache (VMI 2.1: `VMI_Cache_Register`):
/// `(*out)->bufferHandle` is the registration. Give it back with `VMI_Cache_Deregister`.
///
/// # Safety
/// `out` points to writable storage; the memory stays mapped while the entry is held.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Cache_Register(
    addr: PVOID,
    size: ULONG,
    out: *mut PVMI_CACHE_ENTRY,
) -> VMI_STATUS {
    guard("VMI_Cache_Register", || {
        state::check()?;
        if out.is_null() {
            return Err(CapiError::InvalidParameter(
                "the output pointer is NULL".into(),
            ));
        }
        let len = size as usize;
        if addr.is_null() || len == 0 {
            return Err(CapiError::InvalidParameter(
                "the cache registers at least one byte at a non-NULL address".into(),
            ));
        }
        if len > crate::buffer::MAX_BUFFER || (addr as usize).checked_add(len).is_none() {
            return Err(CapiError::InvalidParameter(format!(
                "{len} bytes at {addr:p} do not fit the address space"
            )));
        }
        let entry = state::tables(|t| {
            let (caches, buffers) = (&mut t.cache, &mut t.buffers);
            let cache = caches
                .cache
                .get_or_insert_with(|| RegCache::new(CACHE_ENTRIES));
            // Registrations the cache drops on the way (memory that went away, an eviction).
            let mut dropped = Vec::new();
            let lease = cache.acquire(
                addr as u64,
                len as u64,
                |start, n| {
                    Ok::<_, CapiError>(buffers.insert(Buf {
                        addr: start as *mut u8,
                        len: n as usize,
                        region: None,
                        _slot: None,
                    }))
                },
                &mut |h| dropped.push(h),
            );
            for h in dropped {
                buffers.remove(h);
            }
            let lease = lease?;
            let mut boxed = Box::new(VMI_CACHE_ENTRY {
                bufferHandle: to_ptr(lease.handle),
                addr,
                size,
            });
            let e: PVMI_CACHE_ENTRY = &mut *boxed;
            caches.entries.insert(e as usize, (boxed, lease));
            Ok::<_, CapiError>(e)
        })?;
        // SAFETY: checked non-null; the caller's writable pointer.
        unsafe { *out = entry };
        Ok(())
    })
}

/// Gives an entry back (VMI 2.1: `VMI_Cache_Deregister`): the registration stays cached for
/// the next `VMI_Cache_Register` of the same memory, unless that memory went away; the
/// entry's pointer is stale afterwards.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Cache_Deregister(entry: PVMI_CACHE_ENTRY) -> VMI_STATUS {
    guard("VMI_Cache_Deregister", || {
        state::check()?;
        state::tables(|t| {
            let (caches, buffers) = (&mut t.cache, &mut t.buffers);
            let (_, lease) = caches
                .entries
                .remove(&(entry as usize))
                .ok_or(CapiError::InvalidHandle(ENTRY))?;
            if let Some(cache) = caches.cache.as_mut() {
                cache.release(lease, &mut |h| {
                    buffers.remove(h);
                });
            }
            Ok(())
        })
    })
}

/// The cache's statistics (vmi's addition).
///
/// # Safety
/// `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Cache_Get_Stats(out: *mut VMI_CACHE_STATS) -> VMI_STATUS {
    guard("VMI_Cache_Get_Stats", || {
        state::check()?;
        if out.is_null() {
            return Err(CapiError::InvalidParameter(
                "the output pointer is NULL".into(),
            ));
        }
        let stats = stats();
        // SAFETY: checked non-null; the caller's writable pointer.
        unsafe { *out = stats };
        Ok(())
    })
}

/// Prints the cache's statistics on standard output (VMI 2.1: `VMI_Cache_Stats`), with
/// why it does not cache when it does not.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Cache_Stats() -> VMI_STATUS {
    guard("VMI_Cache_Stats", || {
        state::check()?;
        let s = stats();
        let off = state::tables(|t| {
            t.cache
                .cache
                .as_ref()
                .and_then(|c| c.off_reason().map(str::to_string))
        });
        println!(
            "vmi registration cache: {} hits, {} misses, {} invalidated, {} evicted, {} for one use; {} entries, {} bytes{}",
            s.hits,
            s.misses,
            s.invalidated,
            s.evicted,
            s.uncached,
            s.entries,
            s.bytes,
            off.map(|why| format!(" (not caching: {why})"))
                .unwrap_or_default()
        );
        Ok(())
    })
}

fn stats() -> VMI_CACHE_STATS {
    state::tables(|t| {
        t.cache
            .cache
            .as_ref()
            .map_or_else(Default::default, |c| c.stats())
    })
}
