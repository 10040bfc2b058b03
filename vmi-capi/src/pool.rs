//! Buffer pools (VMI 2.1: `VMI_Pool_Create_Buffer_Pool`, `VMI_Pool_Allocate_Buffer`,
//! `VMI_Pool_Deallocate_Buffer`, `VMI_Pool_Destroy_Buffer_Pool`), over the core's
//! `BufferPool`: fixed-size buffers, aligned as asked, carved from vmi's regions.
//!
//! A buffer is known to C by its address. `VMI_POOL_HANDLE` also gives each buffer a
//! `PVMI_BUFFER` for the send calls; it goes stale when the buffer goes back to the pool.
//! `VMI_POOL_CLEARONCE` asks for zeroed memory, which every new chunk is; `VMI_POOL_REGISTER`
//! asks for memory the transports may use without registering it again, which every region
//! is. Destroying a pool frees the buffers still out with it.

use std::collections::HashMap;

use vmi_core::{BufferPool, PoolBuffer, PoolConfig};

use crate::connection::put_out;
use crate::handle::{Handle, from_ptr};
use crate::state::{self, Buf};
use crate::status::{CapiError, guard};
use crate::types::*;

/// Give each buffer a `PVMI_BUFFER` too.
pub const VMI_POOL_HANDLE: ULONG = 4;
/// Every flag VMI 2.1 defined (`VMI_POOL_CLEARONCE | VMI_POOL_REGISTER | VMI_POOL_HANDLE`).
const KNOWN_FLAGS: ULONG = 1 | 2 | VMI_POOL_HANDLE;

const POOL: &str = "the buffer pool";

/// A pool and the buffers it has out, by address.
pub(crate) struct PoolEntry {
    pool: BufferPool,
    handles: bool,
    out: HashMap<usize, (PoolBuffer, Option<Handle>)>,
}

/// Makes a pool of buffers of `size` bytes aligned to `align` (a power of two up to the page
/// size; 0 means 8), `prealloc` of them now and `grow` more whenever it runs out (VMI 2.1:
/// `VMI_Pool_Create_Buffer_Pool`).
///
/// # Safety
/// `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Pool_Create_Buffer_Pool(
    size: ULONG,
    align: ULONG,
    prealloc: ULONG,
    grow: ULONG,
    flags: ULONG,
    out: *mut PVMI_BUFFER_POOL,
) -> VMI_STATUS {
    guard("VMI_Pool_Create_Buffer_Pool", || {
        state::check()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(CapiError::InvalidParameter(format!(
                "unknown pool flags {:#x} (known: VMI_POOL_CLEARONCE, VMI_POOL_REGISTER, VMI_POOL_HANDLE)",
                flags & !KNOWN_FLAGS
            )));
        }
        let pool = BufferPool::new(PoolConfig {
            buffer_size: size as usize,
            align: if align == 0 { 8 } else { align as usize },
            prealloc: prealloc as usize,
            grow: grow as usize,
            max: 0,
            clear: false,
        })
        .map_err(|e| CapiError::InvalidParameter(e.to_string()))?;
        let h = state::tables(|t| {
            t.pools.insert(PoolEntry {
                pool,
                handles: flags & VMI_POOL_HANDLE != 0,
                out: HashMap::new(),
            })
        });
        put_out(out, h)
    })
}

/// Takes a buffer from the pool (VMI 2.1: `VMI_Pool_Allocate_Buffer`): its address goes to
/// `*ptr`, and with `VMI_POOL_HANDLE` a `PVMI_BUFFER` for it to `*handle` (which may be NULL
/// otherwise).
///
/// # Safety
/// `ptr` points to writable storage; `handle` is NULL or points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Pool_Allocate_Buffer(
    pool: PVMI_BUFFER_POOL,
    ptr: *mut PVOID,
    handle: *mut PVMI_BUFFER,
) -> VMI_STATUS {
    guard("VMI_Pool_Allocate_Buffer", || {
        state::check()?;
        if ptr.is_null() {
            return Err(CapiError::InvalidParameter(
                "the output pointer is NULL".into(),
            ));
        }
        let (addr, h) = state::tables(|t| {
            let entry = t
                .pools
                .get_mut(from_ptr(pool))
                .ok_or(CapiError::InvalidHandle(POOL))?;
            let b = entry
                .pool
                .alloc()
                .map_err(|e| CapiError::InvalidParameter(e.to_string()))?;
            let addr = b.region().addr() + b.offset();
            let (len, region, offset) = (b.len(), b.region().clone(), b.offset());
            let handles = entry.handles;
            entry.out.insert(addr, (b, None));
            let h = handles.then(|| {
                t.buffers.insert(Buf {
                    addr: addr as *mut u8,
                    len,
                    region: Some((region, offset)),
                    _slot: None,
                })
            });
            if let (Some(h), Some(entry)) = (h, t.pools.get_mut(from_ptr(pool)))
                && let Some(slot) = entry.out.get_mut(&addr)
            {
                slot.1 = Some(h);
            }
            Ok::<_, CapiError>((addr, h))
        })?;
        // SAFETY: checked non-null; the caller's writable pointer.
        unsafe { *ptr = addr as PVOID };
        match (h, handle.is_null()) {
            (Some(h), false) => put_out(handle, h),
            _ => Ok(()),
        }
    })
}

/// Returns the buffer at `ptr` to its pool (VMI 2.1: `VMI_Pool_Deallocate_Buffer`); its
/// `PVMI_BUFFER`, if any, goes stale.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Pool_Deallocate_Buffer(pool: PVMI_BUFFER_POOL, ptr: PVOID) -> VMI_STATUS {
    guard("VMI_Pool_Deallocate_Buffer", || {
        state::check()?;
        state::tables(|t| {
            let entry = t
                .pools
                .get_mut(from_ptr(pool))
                .ok_or(CapiError::InvalidHandle(POOL))?;
            let (buffer, h) = entry.out.remove(&(ptr as usize)).ok_or_else(|| {
                CapiError::InvalidParameter(format!(
                    "{ptr:p} is not a buffer this pool has out (never allocated, or deallocated already)"
                ))
            })?;
            drop(buffer);
            if let Some(h) = h {
                t.buffers.remove(h);
            }
            Ok(())
        })
    })
}

/// Frees the pool and every buffer it still has out (VMI 2.1:
/// `VMI_Pool_Destroy_Buffer_Pool`).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Pool_Destroy_Buffer_Pool(pool: PVMI_BUFFER_POOL) -> VMI_STATUS {
    guard("VMI_Pool_Destroy_Buffer_Pool", || {
        state::check()?;
        state::tables(|t| {
            let entry = t
                .pools
                .remove(from_ptr(pool))
                .ok_or(CapiError::InvalidHandle(POOL))?;
            for (_, (_, h)) in entry.out {
                if let Some(h) = h {
                    t.buffers.remove(h);
                }
            }
            Ok(())
        })
    })
}
