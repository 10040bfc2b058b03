//! Reading received bytes (VMI 2.1: `VMI_SLAB_BYTES_REMAINING`, `VMI_Slab_Save_State`,
//! `VMI_Slab_Restore_State`, `VMI_Slab_Read`, `VMI_Slab_Copy_Bytes`, `VMI_Release_Slab`).
//!
//! A saved state is the cursor's offset from the slab's first byte, carried in the
//! `PVMI_SLAB_STATE` value itself, so saving costs no allocation and a state may be restored
//! any number of times.

use crate::handle::{from_ptr, to_ptr};
use crate::state::{self, SlabEntry, SlabView};
use crate::status::{CapiError, guard};
use crate::types::*;

const SLAB: &str = "the slab";

/// The next contiguous bytes of a slab view, at most `max`.
fn read_view(view: &mut SlabView, max: usize) -> &[u8] {
    match view {
        // SAFETY: a borrowed view exists only while its callback runs (see `bridge`), and the
        // slab's bytes live at least that long.
        SlabView::Borrowed(p) => unsafe { (**p).read(max) },
        SlabView::Grabbed { slab, .. } => slab.read(max),
    }
}

fn remaining(view: &SlabView) -> usize {
    match view {
        // SAFETY: as in `read_view`.
        SlabView::Borrowed(p) => unsafe { (**p).remaining() },
        SlabView::Grabbed { slab, .. } => slab.remaining(),
    }
}

fn len(view: &SlabView) -> usize {
    match view {
        // SAFETY: as in `read_view`.
        SlabView::Borrowed(p) => unsafe { (**p).len() },
        SlabView::Grabbed { slab, .. } => slab.len(),
    }
}

/// Moves the cursor to `offset` bytes from the first.
fn seek(view: &mut SlabView, offset: usize) {
    match view {
        // SAFETY: as in `read_view`.
        SlabView::Borrowed(p) => unsafe { (**p).rewind() },
        SlabView::Grabbed { slab, origin } => slab.restore(*origin),
    }
    let mut left = offset;
    while left > 0 {
        let n = read_view(view, left).len();
        if n == 0 {
            break;
        }
        left -= n;
    }
}

fn with_slab<R>(
    slab: PVMI_SLAB,
    f: impl FnOnce(&mut SlabEntry) -> Result<R, CapiError>,
) -> Result<R, CapiError> {
    state::tables(|t| match t.slabs.get_mut(from_ptr(slab)) {
        Some(e) => f(e),
        None => Err(CapiError::InvalidHandle(SLAB)),
    })
}

/// Bytes not read yet, or 0 for an invalid handle (VMI 2.1: `VMI_SLAB_BYTES_REMAINING`).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Slab_Bytes_Remaining(slab: PVMI_SLAB) -> ULONG {
    with_slab(slab, |e| Ok(remaining(&e.view) as ULONG)).unwrap_or(0)
}

/// Saves the cursor (VMI 2.1: `VMI_Slab_Save_State`).
///
/// # Safety
/// `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Slab_Save_State(
    slab: PVMI_SLAB,
    out: *mut PVMI_SLAB_STATE,
) -> VMI_STATUS {
    guard("VMI_Slab_Save_State", || {
        if out.is_null() {
            return Err(CapiError::InvalidParameter(
                "the output pointer is NULL".into(),
            ));
        }
        let offset = with_slab(slab, |e| Ok(len(&e.view) - remaining(&e.view)))?;
        // SAFETY: checked non-null; the caller's writable pointer. The offset + 1 is never 0.
        unsafe { *out = to_ptr(offset as u64 + 1) };
        Ok(())
    })
}

/// Restores a saved cursor (VMI 2.1: `VMI_Slab_Restore_State`); a state past the slab's end
/// is refused.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Slab_Restore_State(slab: PVMI_SLAB, saved: PVMI_SLAB_STATE) -> VMI_STATUS {
    guard("VMI_Slab_Restore_State", || {
        let offset = (from_ptr(saved) as usize).checked_sub(1).ok_or_else(|| {
            CapiError::InvalidParameter("the slab state is NULL (save it first)".into())
        })?;
        with_slab(slab, |e| {
            if offset > len(&e.view) {
                return Err(CapiError::InvalidParameter(format!(
                    "the saved state (offset {offset}) does not fit this slab of {} bytes",
                    len(&e.view)
                )));
            }
            seek(&mut e.view, offset);
            Ok(())
        })
    })
}

/// Reads: `*bytes` in, how many bytes are wanted; `*out` is set to contiguous memory holding
/// the next of them (without copying when they lie in one segment, else copied), and
/// `*bytes` to how many of those wanted were NOT available (0: all of them). The memory stays
/// valid until the slab is released (the receive function returns `VMI_SLAB_DONE`, or
/// `VMI_Release_Slab` for a grabbed slab). VMI 2.1: `VMI_Slab_Read`.
///
/// # Safety
/// `bytes` and `out` point to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Slab_Read(
    slab: PVMI_SLAB,
    bytes: *mut ULONG,
    out: *mut PVOID,
) -> VMI_STATUS {
    guard("VMI_Slab_Read", || {
        if bytes.is_null() || out.is_null() {
            return Err(CapiError::InvalidParameter(
                "an output pointer is NULL".into(),
            ));
        }
        // SAFETY: checked non-null; the caller's pointer.
        let wanted = unsafe { *bytes } as usize;
        let (ptr, got) = with_slab(slab, |e| Ok(read_contiguous(e, wanted)))?;
        // SAFETY: checked non-null; the caller's writable pointers.
        unsafe {
            *out = ptr.cast_mut().cast();
            *bytes = (wanted - got) as ULONG;
        }
        Ok(())
    })
}

/// Like `VMI_Slab_Read`, without moving the cursor (VMI 2.1: `VMI_Slab_Try_Read`).
///
/// # Safety
/// `bytes` and `out` point to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Slab_Try_Read(
    slab: PVMI_SLAB,
    bytes: *mut ULONG,
    out: *mut PVOID,
) -> VMI_STATUS {
    guard("VMI_Slab_Try_Read", || {
        if bytes.is_null() || out.is_null() {
            return Err(CapiError::InvalidParameter(
                "an output pointer is NULL".into(),
            ));
        }
        // SAFETY: checked non-null; the caller's pointer.
        let wanted = unsafe { *bytes } as usize;
        let (ptr, got) = with_slab(slab, |e| {
            let at = len(&e.view) - remaining(&e.view);
            let r = read_contiguous(e, wanted);
            seek(&mut e.view, at);
            Ok(r)
        })?;
        // SAFETY: checked non-null; the caller's writable pointers.
        unsafe {
            *out = ptr.cast_mut().cast();
            *bytes = (wanted - got) as ULONG;
        }
        Ok(())
    })
}

/// A zero byte for empty reads, so a program that prints what it read sees "".
static EMPTY: u8 = 0;

/// The next `wanted` bytes (or all that remain) in one piece: returns where and how many.
fn read_contiguous(e: &mut SlabEntry, wanted: usize) -> (*const u8, usize) {
    let n = wanted.min(remaining(&e.view));
    if n == 0 {
        return (&EMPTY, 0);
    }
    let first = read_view(&mut e.view, n);
    if first.len() == n {
        return (first.as_ptr(), n);
    }
    let mut copy = Vec::with_capacity(n + 1);
    copy.extend_from_slice(first);
    while copy.len() < n {
        let more = read_view(&mut e.view, n - copy.len());
        if more.is_empty() {
            break;
        }
        copy.extend_from_slice(more);
    }
    let got = copy.len();
    let p = copy.as_ptr();
    // The Vec's heap block does not move when the Vec is moved into the list.
    e.copies.push(copy);
    (p, got)
}

/// Copies exactly `n` bytes to `dst` (VMI 2.1: `VMI_Slab_Copy_Bytes`); when fewer remain,
/// nothing is copied and `VMI_STATUS_SHORT_SLAB` is returned.
///
/// # Safety
/// `dst` points to `n` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Slab_Copy_Bytes(slab: PVMI_SLAB, n: ULONG, dst: PVOID) -> VMI_STATUS {
    guard("VMI_Slab_Copy_Bytes", || {
        let n = n as usize;
        if dst.is_null() && n > 0 {
            return Err(CapiError::InvalidParameter(
                "the destination is NULL".into(),
            ));
        }
        with_slab(slab, |e| {
            let left = remaining(&e.view);
            if left < n {
                return Err(CapiError::ShortSlab {
                    wanted: n,
                    remaining: left,
                });
            }
            let mut done = 0;
            while done < n {
                let chunk = read_view(&mut e.view, n - done);
                // SAFETY: `dst` holds `n` bytes (the caller's contract); `chunk` is at most
                // `n - done` bytes of slab memory, which cannot overlap the caller's buffer.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        chunk.as_ptr(),
                        dst.cast::<u8>().add(done),
                        chunk.len(),
                    )
                };
                done += chunk.len();
            }
            Ok(())
        })
    })
}

/// Releases a slab the receive function grabbed (VMI 2.1: `VMI_Release_Slab`); the handle
/// and every pointer read from it are invalid afterwards.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Release_Slab(slab: PVMI_SLAB) -> VMI_STATUS {
    guard("VMI_Release_Slab", || {
        state::check()?;
        let h = from_ptr(slab);
        state::tables(|t| match t.slabs.get(h).map(|e| &e.view) {
            Some(SlabView::Grabbed { .. }) => {
                t.slabs.remove(h);
                Ok(())
            }
            Some(SlabView::Borrowed(_)) => Err(CapiError::InvalidParameter(
                "the slab of a running receive function is released by returning VMI_SLAB_DONE"
                    .into(),
            )),
            None => Err(CapiError::InvalidHandle(SLAB)),
        })
    })
}
