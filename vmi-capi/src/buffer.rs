//! Buffers (VMI 2.1: `VMI_Buffer_Register`, `VMI_Buffer_Allocate`, `VMI_Buffer_Deallocate`,
//! `VMI_BUFFER_ADDRESS`).
//!
//! A send copies the bytes out of the buffer when it is issued, so the memory may be changed
//! or sent again at once, even while earlier sends of it are in flight (VMI 2.1 asked
//! programs to leave it untouched until the completion; programs that do still work).

use crate::connection::put_out;
use crate::handle::{Handle, from_ptr};
use crate::state::{self, Buf};
use crate::status::{CapiError, guard};
use crate::types::*;

const BUFFER: &str = "the buffer";

/// Largest `VMI_Buffer_Allocate` served from a pool (larger ones get a region each).
const SMALL_ALLOC: usize = 256 * 1024;

/// Largest buffer (the largest message a chain can carry is smaller; sends check that).
pub(crate) const MAX_BUFFER: usize = 1 << 40;

/// Registers application memory for sending (VMI 2.1: `VMI_Buffer_Register`). The memory
/// stays the application's; `VMI_Buffer_Deallocate` (or `VMI_Buffer_Deregister`) forgets it.
///
/// # Safety
/// `addr` points to `size` bytes that stay valid until the buffer is deregistered;
/// `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Buffer_Register(
    addr: PVOID,
    size: ULONG,
    out: *mut PVMI_BUFFER,
) -> VMI_STATUS {
    guard("VMI_Buffer_Register", || {
        state::check()?;
        let len = size as usize;
        if addr.is_null() && len > 0 {
            return Err(CapiError::InvalidParameter("the address is NULL".into()));
        }
        if len > MAX_BUFFER || (addr as usize).checked_add(len).is_none() {
            return Err(CapiError::InvalidParameter(format!(
                "{len} bytes at {addr:p} do not fit the address space"
            )));
        }
        let h = state::tables(|t| {
            t.buffers.insert(Buf {
                addr: addr.cast(),
                len,
                region: None,
                _slot: None,
            })
        });
        put_out(out, h)
    })
}

/// Allocates zero-filled memory for sending or publishing (VMI 2.1: `VMI_Buffer_Allocate`);
/// its address is `VMI_BUFFER_ADDRESS(buffer)`. It is a vmi region, page-aligned.
///
/// # Safety
/// `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Buffer_Allocate(size: ULONG, out: *mut PVMI_BUFFER) -> VMI_STATUS {
    guard("VMI_Buffer_Allocate", || {
        state::check()?;
        let len = size as usize;
        if len > MAX_BUFFER {
            return Err(CapiError::InvalidParameter(format!(
                "{len} bytes is over the {MAX_BUFFER}-byte buffer limit"
            )));
        }
        // vmi's memory (sealed memfds, zeroed): it can be published for RDMA and reached
        // one-sided by a peer on the same host. Small buffers come from a pool per size class
        // (chunks of about 1 MiB: one descriptor per chunk, not per buffer); large ones get a
        // region of their own.
        let h = state::tables(|t| -> Result<Handle, CapiError> {
            let fail = |e: vmi_core::VmiError| CapiError::InvalidParameter(e.to_string());
            let (region, offset, slot) = if len <= SMALL_ALLOC {
                let class = len.next_power_of_two().max(64);
                let pool = match t.alloc_pools.entry(class) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => e.insert(
                        vmi_core::BufferPool::new(vmi_core::PoolConfig {
                            buffer_size: class,
                            align: 64,
                            prealloc: 0,
                            grow: (SMALL_ALLOC * 4 / class).max(1),
                            max: 0,
                            clear: true,
                        })
                        .map_err(fail)?,
                    ),
                };
                let b = pool.alloc().map_err(fail)?;
                (b.region().clone(), b.offset(), Some(b))
            } else {
                (vmi_core::Region::new(len).map_err(fail)?, 0, None)
            };
            Ok(t.buffers.insert(Buf {
                addr: (region.addr() + offset) as *mut u8,
                len,
                region: Some((region, offset)),
                _slot: slot,
            }))
        })?;
        put_out(out, h)
    })
}

/// Frees an allocated buffer, or forgets a registered one (VMI 2.1: `VMI_Buffer_Deallocate`);
/// the handle is stale afterwards.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Buffer_Deallocate(buffer: PVMI_BUFFER) -> VMI_STATUS {
    guard("VMI_Buffer_Deallocate", || {
        state::check()?;
        state::tables(|t| t.buffers.remove(from_ptr(buffer)))
            .map(drop)
            .ok_or(CapiError::InvalidHandle(BUFFER))
    })
}

/// Forgets a registered buffer (VMI 2.1: `VMI_Buffer_Deregister`); the same as
/// `VMI_Buffer_Deallocate`.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Buffer_Deregister(buffer: PVMI_BUFFER) -> VMI_STATUS {
    VMI_Buffer_Deallocate(buffer)
}

/// The buffer's memory, or NULL for an invalid handle (VMI 2.1: `VMI_BUFFER_ADDRESS`).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Buffer_Address(buffer: PVMI_BUFFER) -> PVOID {
    state::tables(|t| t.buffers.get(from_ptr(buffer)).map(|b| b.addr.cast()))
        .unwrap_or(std::ptr::null_mut())
}

/// The buffer's size in bytes, or 0 for an invalid handle (vmi's addition).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Buffer_Size(buffer: PVMI_BUFFER) -> ULONG {
    state::tables(|t| t.buffers.get(from_ptr(buffer)).map(|b| b.len as ULONG)).unwrap_or(0)
}

/// The whole buffer's bytes, copied (connect data).
pub(crate) fn bytes_of(buffer: PVMI_BUFFER) -> Result<Vec<u8>, CapiError> {
    let (addr, len) = range(buffer)?;
    // SAFETY: registered memory the application promised valid while registered.
    Ok(unsafe { std::slice::from_raw_parts(addr, len) }.to_vec())
}

fn range(buffer: PVMI_BUFFER) -> Result<(*const u8, usize), CapiError> {
    let h: Handle = from_ptr(buffer);
    state::tables(|t| t.buffers.get(h).map(|b| (b.addr as *const u8, b.len)))
        .ok_or(CapiError::InvalidHandle(BUFFER))
}

/// Checks that `size` bytes at `addr` lie in `buffer` (when one is given) and returns them
/// as a part to send. With a NULL buffer the memory is taken as it is (unregistered memory,
/// which the copy makes safe).
pub(crate) fn part(
    buffer: PVMI_BUFFER,
    addr: PVOID,
    size: ULONG,
) -> Result<(*const u8, usize), CapiError> {
    let len = size as usize;
    if len == 0 {
        return Ok((std::ptr::null(), 0));
    }
    if addr.is_null() {
        return Err(CapiError::InvalidParameter(format!(
            "the address of {len} bytes to send is NULL"
        )));
    }
    let start = addr as usize;
    let end = start
        .checked_add(len)
        .ok_or_else(|| CapiError::InvalidParameter("the range wraps the address space".into()))?;
    if !buffer.is_null() {
        let (base, blen) = range(buffer)?;
        let (b0, b1) = (base as usize, base as usize + blen);
        if start < b0 || end > b1 {
            return Err(CapiError::InvalidParameter(format!(
                "{len} bytes at {addr:p} lie outside the buffer ({blen} bytes at {base:p})"
            )));
        }
    }
    Ok((addr as *const u8, len))
}
