//! Sending (VMI 2.1: `VMI_Stream_Begin`, `VMI_Stream_Send_Fragment`, `VMI_Stream_End`,
//! `VMI_Stream_Send`, `VMI_Stream_Send_Inline`) and the receive function
//! (`VMI_STREAM_SET_RECV_FUNCTION`).
//!
//! The trailing `BOOLEAN` of the send calls is accepted and ignored: VMI 2.1 never documented
//! it (its tutorial passes FALSE, Charm++ always TRUE), and vmi's sends complete the same way
//! either way.

use vmi_core::{Buffer, Operations};

use crate::buffer::part;
use crate::connection::{self, put_out};
use crate::handle::{Handle, from_ptr};
use crate::state::{self, Pending, StreamEntry, with_ops};
use crate::status::{self, CapiError, guard};
use crate::types::*;

const STREAM: &str = "the stream";

/// Copies the parts into one buffer (a spare one when there is one).
fn gather(parts: &[(*const u8, usize)]) -> Buffer {
    let total = parts.iter().map(|p| p.1).sum();
    let mut v = state::tables(|t| t.spare.pop()).unwrap_or_default();
    v.clear();
    v.reserve(total);
    for &(p, n) in parts {
        if n > 0 {
            // SAFETY: `part` checked the range; the application keeps it valid for the call.
            v.extend_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
        }
    }
    Buffer::from_vec(v)
}

/// Reads the caller's three parallel arrays of `n` entries.
///
/// # Safety
/// Each non-NULL array holds `n` entries.
unsafe fn parts_of(
    buffers: *mut PVMI_BUFFER,
    addrs: *mut PVOID,
    sizes: *mut ULONG,
    n: ULONG,
) -> Result<Vec<(*const u8, usize)>, CapiError> {
    let n = n as usize;
    if n == 0 {
        return Ok(Vec::new());
    }
    if addrs.is_null() || sizes.is_null() {
        return Err(CapiError::InvalidParameter(
            "the address and size arrays must not be NULL".into(),
        ));
    }
    if n > 1 << 16 {
        return Err(CapiError::InvalidParameter(format!(
            "{n} segments; at most 65536"
        )));
    }
    (0..n)
        .map(|i| {
            // SAFETY: the caller's arrays hold `n` entries.
            let (b, a, s) = unsafe {
                let b = if buffers.is_null() {
                    std::ptr::null_mut()
                } else {
                    *buffers.add(i)
                };
                (b, *addrs.add(i), *sizes.add(i))
            };
            part(b, a, s)
        })
        .collect()
}

/// Sends one fragment of a stream: `end` makes it the last.
fn send_fragment(stream: Handle, part: (*const u8, usize), end: bool) -> Result<(), CapiError> {
    let conn = state::tables(|t| t.streams.get(stream).map(|s| s.conn))
        .ok_or(CapiError::InvalidHandle(STREAM))?;
    connection::live(crate::handle::to_ptr::<VMI_CONNECT>(conn))?;
    let core_stream = state::tables(|t| t.streams.get_mut(stream).and_then(|s| s.stream.take()));
    let Some(st) = core_stream else {
        return Err(CapiError::InvalidParameter(
            "the stream was ended already (VMI_Stream_End)".into(),
        ));
    };
    // A refused end consumes the core's stream; refuse a busy one before, so it can be
    // retried.
    let busy = if end {
        with_ops!(|o| o.sends_available() == 0).unwrap_or(false)
    } else {
        false
    };
    if busy {
        state::tables(|t| {
            if let Some(s) = t.streams.get_mut(stream) {
                s.stream = Some(st);
            }
        });
        return Err(CapiError::Vmi(vmi_core::VmiError::Busy {
            limit: vmi_core::MAX_SENDS_IN_FLIGHT,
        }));
    }
    let token = state::tables(|t| t.pending.insert(Pending::Stream(stream)));
    let buffer = gather(&[part]);
    let sent = if end {
        with_ops!(|o| o.stream_end(st, [buffer], token))
    } else {
        let r = with_ops!(|o| o.stream_send(&st, [buffer], token));
        state::tables(|t| {
            if let Some(s) = t.streams.get_mut(stream) {
                s.stream = Some(st);
            }
        });
        r
    };
    match sent {
        Ok(Ok(())) => {
            state::tables(|t| {
                if let Some(s) = t.streams.get_mut(stream) {
                    s.outstanding += 1;
                }
            });
            Ok(())
        }
        Ok(Err(e)) => Err(failed_fragment(stream, token, end, e.into())),
        Err(e) => Err(failed_fragment(stream, token, end, e)),
    }
}

/// Undoes a refused fragment. A refused end ends the stream: its callback reports the
/// failure once the fragments in flight complete, and with none in flight it goes at once.
fn failed_fragment(stream: Handle, token: Handle, end: bool, e: CapiError) -> CapiError {
    state::tables(|t| {
        t.pending.remove(token);
        if !end {
            return;
        }
        if let Some(s) = t.streams.get_mut(stream) {
            if s.status == status::code::OK {
                s.status = e.code();
            }
            if s.outstanding == 0 {
                t.streams.remove(stream);
            }
        }
    });
    e
}

/// Opens a stream on a connection (VMI 2.1: `VMI_Stream_Begin`), sending `size` bytes at
/// `addr` in `buffer` as its first fragment when `size` is not 0. `done(context, status)`
/// runs once every fragment is sent, after `VMI_Stream_End`, with the first failure if any;
/// the stream handle is stale from then on (at once when `done` is NULL).
///
/// # Safety
/// `addr` points to `size` readable bytes; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Stream_Begin(
    conn: PVMI_CONNECT,
    buffer: PVMI_BUFFER,
    addr: PVOID,
    size: ULONG,
    done: VMIStreamNotification,
    context: PVOID,
    _notify: BOOLEAN,
    out: *mut PVMI_STREAM,
) -> VMI_STATUS {
    guard("VMI_Stream_Begin", || {
        state::check()?;
        if out.is_null() {
            return Err(CapiError::InvalidParameter(
                "the output pointer is NULL".into(),
            ));
        }
        let h = connection::live(conn)?;
        let first = part(buffer, addr, size)?;
        let id = connection::open_id(h)?;
        let core_stream = with_ops!(|o| o.stream_begin(id))??;
        let stream = state::tables(|t| {
            t.streams.insert(StreamEntry {
                conn: h,
                stream: Some(core_stream),
                done: (done, context),
                outstanding: 0,
                status: status::code::OK,
            })
        });
        put_out(out, stream)?;
        if first.1 > 0 {
            send_fragment(stream, first, false)?;
        }
        Ok(())
    })
}

/// Sends one more fragment (VMI 2.1: `VMI_Stream_Send_Fragment`): `size` bytes at `addr`
/// in `buffer` (NULL: unregistered memory), copied now.
///
/// # Safety
/// `addr` points to `size` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Stream_Send_Fragment(
    stream: PVMI_STREAM,
    buffer: PVMI_BUFFER,
    addr: PVOID,
    size: ULONG,
    _notify: BOOLEAN,
) -> VMI_STATUS {
    guard("VMI_Stream_Send_Fragment", || {
        state::check()?;
        send_fragment(from_ptr(stream), part(buffer, addr, size)?, false)
    })
}

/// Sends the last fragment, possibly empty, and ends the stream (VMI 2.1: `VMI_Stream_End`).
///
/// # Safety
/// `addr` points to `size` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Stream_End(
    stream: PVMI_STREAM,
    buffer: PVMI_BUFFER,
    addr: PVOID,
    size: ULONG,
    _notify: BOOLEAN,
) -> VMI_STATUS {
    guard("VMI_Stream_End", || {
        state::check()?;
        send_fragment(from_ptr(stream), part(buffer, addr, size)?, true)
    })
}

/// Sends a one-fragment message gathered from `n` segments (VMI 2.1: `VMI_Stream_Send`):
/// `sizes[i]` bytes at `addrs[i]` in `buffers[i]` (`buffers` may be NULL). `done(context,
/// status)` runs when it is sent (may be NULL).
///
/// # Safety
/// The arrays hold `n` entries and each segment `sizes[i]` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Stream_Send(
    conn: PVMI_CONNECT,
    buffers: *mut PVMI_BUFFER,
    addrs: *mut PVOID,
    sizes: *mut ULONG,
    n: ULONG,
    done: VMIStreamNotification,
    context: PVOID,
    _notify: BOOLEAN,
) -> VMI_STATUS {
    guard("VMI_Stream_Send", || {
        state::check()?;
        let h = connection::live(conn)?;
        let id = connection::open_id(h)?;
        // SAFETY: the caller's arrays of `n` entries.
        let parts = unsafe { parts_of(buffers, addrs, sizes, n) }?;
        let token = if done.is_some() {
            state::tables(|t| t.pending.insert(Pending::Callback(done, context)))
        } else {
            0
        };
        let buffer = gather(&parts);
        let sent = with_ops!(|o| o.send(id, [buffer], token)).and_then(|r| Ok(r?));
        if sent.is_err() && token != 0 {
            state::tables(|t| t.pending.remove(token));
        }
        sent
    })
}

/// Sends a small one-fragment message by copying it, with no buffer and no completion
/// (VMI 2.1: `VMI_Stream_Send_Inline`); `total` must be the sum of `sizes`. A failure after
/// the call is logged.
///
/// # Safety
/// The arrays hold `n` entries and each segment `sizes[i]` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Stream_Send_Inline(
    conn: PVMI_CONNECT,
    addrs: *mut PVOID,
    sizes: *mut ULONG,
    n: ULONG,
    total: ULONG,
) -> VMI_STATUS {
    guard("VMI_Stream_Send_Inline", || {
        state::check()?;
        let h = connection::live(conn)?;
        let id = connection::open_id(h)?;
        // SAFETY: the caller's arrays of `n` entries.
        let parts = unsafe { parts_of(std::ptr::null_mut(), addrs, sizes, n) }?;
        let sum: usize = parts.iter().map(|p| p.1).sum();
        if sum != total as usize {
            return Err(CapiError::InvalidParameter(format!(
                "total is {total} but the sizes add up to {sum}"
            )));
        }
        if let [(p, len)] = parts[..] {
            // SAFETY: `part` checked the range; the application keeps it valid for the call.
            let data = unsafe { std::slice::from_raw_parts(p, len) };
            with_ops!(|o| o.send_inline(id, data))??;
        } else {
            let joined = gather(&parts).into_vec();
            with_ops!(|o| o.send_inline(id, &joined))??;
            state::tables(|t| t.spare.push(joined));
        }
        Ok(())
    })
}

/// Sets the process-wide receive function (VMI 2.1: `VMI_STREAM_SET_RECV_FUNCTION`). It
/// returns `VMI_SLAB_DONE` (vmi frees the slab) or `VMI_SLAB_GRAB` (the application keeps it
/// until `VMI_Release_Slab`).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Stream_Set_Recv_Function(f: VMIStreamRecv) -> VMI_STATUS {
    guard("VMI_Stream_Set_Recv_Function", || {
        state::check()?;
        state::tables(|t| t.recv_fn = f);
        Ok(())
    })
}
