//! RDMA (VMI 2.1: `VMI_RDMA_Publish_Buffer`, `VMI_RDMA_Set_Publish_Callback`,
//! `VMI_RDMA_Alloc_Op`, `VMI_RDMA_Dealloc_Op`, `VMI_RDMA_Put`, `VMI_RDMA_Get`,
//! `VMI_RDMA_Set_Put_Notification_Callback`, `VMI_RDMA_Set_Get_Notification_Callback`,
//! `VMI_RDMA_Dealloc_Buffer`), over the core's `rdma` operations.
//!
//! Publishable memory is vmi's: a buffer from `VMI_Buffer_Allocate` or a pool; registered
//! application memory is refused. A `PVMI_REMOTE_BUFFER` and a `PVMI_RDMA_OP` are structs C
//! reads and fills (as VMI 2.1's were); libvmi allocates them and checks every pointer C hands
//! back against the ones it made, so a stale or made-up one is `VMI_STATUS_INVALID_HANDLE`.

use vmi_core::{Operations, RdmaOptions, RemoteBuffer, Segment};

use crate::connection;
use crate::handle::{Handle, from_ptr};
use crate::state::{self, RdmaPending, with_ops};
use crate::status::{CapiError, guard};
use crate::types::*;

const REMOTE: &str = "the remote buffer";
const OP: &str = "the RDMA op";

/// Gather and scatter entries in one op (VMI 2.1's fixed array).
pub const VMI_RDMA_MAX_BUFS: usize = 16;

/// A buffer a peer published (VMI 2.1: `VMI_REMOTE_BUFFER`; C reads `rsz` and `lctxt`).
#[repr(C)]
pub struct VMI_REMOTE_BUFFER {
    /// Its size in bytes.
    pub rsz: ULONG,
    /// The publisher's `remoteCtx`.
    pub lctxt: u64,
    /// The publisher's `ctx`.
    pub ctx: UINT32,
    /// The connection it came on.
    pub conn: PVMI_CONNECT,
}

/// `PVMI_REMOTE_BUFFER`.
#[allow(non_camel_case_types)]
pub type PVMI_REMOTE_BUFFER = *mut VMI_REMOTE_BUFFER;

/// A put or get (VMI 2.1: `VMI_RDMA_OP`): `numBufs` local entries (`buffers`, `addr`, `sz`),
/// the remote buffer, the offset in it, and whether the publisher is told.
#[repr(C)]
pub struct VMI_RDMA_OP {
    /// Entries used.
    pub numBufs: ULONG,
    /// Each entry's buffer (a get needs vmi's memory: `VMI_Buffer_Allocate` or a pool; a put
    /// may give NULL).
    pub buffers: [PVMI_BUFFER; VMI_RDMA_MAX_BUFS],
    /// Each entry's address.
    pub addr: [PVOID; VMI_RDMA_MAX_BUFS],
    /// Each entry's size.
    pub sz: [ULONG; VMI_RDMA_MAX_BUFS],
    /// The remote buffer.
    pub rbuffer: PVMI_REMOTE_BUFFER,
    /// The offset in it.
    pub roffset: ULONG,
    /// Tell the publisher (its put or get notification callback).
    pub notify: BOOLEAN,
}

/// `PVMI_RDMA_OP`.
#[allow(non_camel_case_types)]
pub type PVMI_RDMA_OP = *mut VMI_RDMA_OP;

/// Completion of a put or get: the op, the caller's context, the status.
pub type VMIRDMACompleteNotification =
    Option<unsafe extern "C" fn(PVMI_RDMA_OP, PVOID, VMI_STATUS)>;
/// A peer published a buffer: the connection, the remote buffer, the payload and its size.
pub type VMIRDMAPublishNotification =
    Option<unsafe extern "C" fn(PVMI_CONNECT, PVMI_REMOTE_BUFFER, PVMI_SLAB, ULONG)>;
/// A peer's put landed: the connection, its size, the buffer's `ctx`, the status.
pub type VMIRDMAPutNotification =
    Option<unsafe extern "C" fn(PVMI_CONNECT, UINT32, UINT32, VMI_STATUS)>;
/// A peer's get read a buffer: the connection, the buffer's `ctx`, the status.
pub type VMIRDMAGetNotification = Option<unsafe extern "C" fn(PVMI_CONNECT, UINT32, VMI_STATUS)>;

/// Publishes `size` bytes at `addr` of `buffer` (memory from `VMI_Buffer_Allocate` or a
/// pool) to the peer on `conn`, with `remoteCtx` (the peer's `rb->lctxt`), `ctx` (given back
/// in this side's notifications) and a payload (VMI 2.1: `VMI_RDMA_Publish_Buffer`).
///
/// # Safety
/// `payload` points to `payload_size` readable bytes (or is NULL with size 0).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn VMI_RDMA_Publish_Buffer(
    conn: PVMI_CONNECT,
    buffer: PVMI_BUFFER,
    addr: VMI_virt_addr_t,
    size: UINT32,
    remote_ctx: VMI_virt_addr_t,
    ctx: UINT32,
    payload: PVOID,
    payload_size: ULONG,
) -> VMI_STATUS {
    guard("VMI_RDMA_Publish_Buffer", || {
        state::check()?;
        let h = connection::live(conn)?;
        let id = connection::open_id(h)?;
        let (region, range) = state::tables(|t| {
            let b = t
                .buffers
                .get(from_ptr(buffer))
                .ok_or(CapiError::InvalidHandle("the buffer"))?;
            let (region, offset) = b.region.clone().ok_or_else(|| {
                CapiError::InvalidParameter(
                    "only memory from VMI_Buffer_Allocate or a buffer pool can be published; registered application memory cannot".into(),
                )
            })?;
            let start = (addr as usize).wrapping_sub(b.addr as usize);
            if (addr as usize) < b.addr as usize
                || start
                    .checked_add(size as usize)
                    .is_none_or(|end| end > b.len)
            {
                return Err(CapiError::InvalidParameter(format!(
                    "{size} bytes at {addr:#x} are not inside the buffer ({} bytes at {:p})",
                    b.len, b.addr
                )));
            }
            Ok((region, offset + start..offset + start + size as usize))
        })?;
        let payload = if payload_size == 0 {
            &[][..]
        } else if payload.is_null() {
            return Err(CapiError::InvalidParameter("the payload is NULL".into()));
        } else {
            // SAFETY: the caller's `payload_size` readable bytes.
            unsafe { std::slice::from_raw_parts(payload.cast::<u8>(), payload_size as usize) }
        };
        with_ops!(|o| o.rdma_publish(id, &region, range, ctx, remote_ctx, payload))??;
        Ok(())
    })
}

/// Sets the function told when the peer on `conn` publishes a buffer (VMI 2.1:
/// `VMI_RDMA_Set_Publish_Callback`). Without one, published buffers are released at once.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_RDMA_Set_Publish_Callback(
    conn: PVMI_CONNECT,
    f: VMIRDMAPublishNotification,
) -> VMI_STATUS {
    guard("VMI_RDMA_Set_Publish_Callback", || {
        state::check()?;
        let h = connection::live(conn)?;
        state::tables(|t| t.conns.get_mut(h).map(|c| c.rdma.publish = f));
        Ok(())
    })
}

/// Sets the function told when a peer's put with notify lands in a buffer this side published
/// on `conn` (VMI 2.1: `VMI_RDMA_Set_Put_Notification_Callback`).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_RDMA_Set_Put_Notification_Callback(
    conn: PVMI_CONNECT,
    f: VMIRDMAPutNotification,
) -> VMI_STATUS {
    guard("VMI_RDMA_Set_Put_Notification_Callback", || {
        state::check()?;
        let h = connection::live(conn)?;
        state::tables(|t| t.conns.get_mut(h).map(|c| c.rdma.put = f));
        Ok(())
    })
}

/// Sets the function told when a peer's get with notify read a buffer this side published
/// on `conn` (VMI 2.1: `VMI_RDMA_Set_Get_Notification_Callback`).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_RDMA_Set_Get_Notification_Callback(
    conn: PVMI_CONNECT,
    f: VMIRDMAGetNotification,
) -> VMI_STATUS {
    guard("VMI_RDMA_Set_Get_Notification_Callback", || {
        state::check()?;
        let h = connection::live(conn)?;
        state::tables(|t| t.conns.get_mut(h).map(|c| c.rdma.get = f));
        Ok(())
    })
}

/// Allocates a zeroed op for `VMI_RDMA_Put` and `VMI_RDMA_Get` (VMI 2.1: `VMI_RDMA_Alloc_Op`).
///
/// # Safety
/// `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_RDMA_Alloc_Op(out: *mut PVMI_RDMA_OP) -> VMI_STATUS {
    guard("VMI_RDMA_Alloc_Op", || {
        state::check()?;
        if out.is_null() {
            return Err(CapiError::InvalidParameter(
                "the output pointer is NULL".into(),
            ));
        }
        // The table owns the op; C fills it in through the pointer, between calls.
        let mut boxed = Box::new(VMI_RDMA_OP {
            numBufs: 0,
            buffers: [std::ptr::null_mut(); VMI_RDMA_MAX_BUFS],
            addr: [std::ptr::null_mut(); VMI_RDMA_MAX_BUFS],
            sz: [0; VMI_RDMA_MAX_BUFS],
            rbuffer: std::ptr::null_mut(),
            roffset: 0,
            notify: 0,
        });
        let op: PVMI_RDMA_OP = &mut *boxed;
        state::tables(|t| t.rdma_ops.insert(op as usize, boxed));
        // SAFETY: checked non-null; the caller's writable pointer.
        unsafe { *out = op };
        Ok(())
    })
}

/// Frees an op (VMI 2.1: `VMI_RDMA_Dealloc_Op`). An op whose put or get has not completed is
/// refused.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_RDMA_Dealloc_Op(op: PVMI_RDMA_OP) -> VMI_STATUS {
    guard("VMI_RDMA_Dealloc_Op", || {
        state::check()?;
        state::tables(|t| {
            if !t.rdma_ops.contains_key(&(op as usize)) {
                return Err(CapiError::InvalidHandle(OP));
            }
            let pending = t.rdma_pending.handles();
            if pending
                .iter()
                .any(|&h| t.rdma_pending.get(h).is_some_and(|p| p.op == op))
            {
                return Err(CapiError::InvalidParameter(
                    "the op's put or get has not completed yet".into(),
                ));
            }
            // The op's memory goes with the table's box.
            t.rdma_ops.remove(&(op as usize));
            Ok(())
        })
    })
}

/// The remote buffer an op names, checked.
fn remote_of(rb: PVMI_REMOTE_BUFFER) -> Result<RemoteBuffer, CapiError> {
    state::tables(|t| t.rdma_remotes.get(&(rb as usize)).map(|r| r.1))
        .ok_or(CapiError::InvalidHandle(REMOTE))
}

/// What an op says, read and checked.
struct OpEntries {
    remote: RemoteBuffer,
    offset: u64,
    notify: bool,
    /// (buffer, address, size) per entry.
    list: Vec<(PVMI_BUFFER, usize, usize)>,
}

/// Reads an op's entries, checked.
fn entries(op: PVMI_RDMA_OP) -> Result<OpEntries, CapiError> {
    let (rbuffer, roffset, notify, list) = state::tables(|t| {
        let o = t
            .rdma_ops
            .get(&(op as usize))
            .ok_or(CapiError::InvalidHandle(OP))?;
        let n = o.numBufs as usize;
        if n > VMI_RDMA_MAX_BUFS {
            return Err(CapiError::InvalidParameter(format!(
                "numBufs is {n}; at most {VMI_RDMA_MAX_BUFS}"
            )));
        }
        let list = (0..n)
            .map(|i| (o.buffers[i], o.addr[i] as usize, o.sz[i] as usize))
            .collect::<Vec<_>>();
        // ULONG is 64 bits here and 32 on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let roffset = u64::from(o.roffset);
        Ok((o.rbuffer, roffset, o.notify != 0, list))
    })?;
    Ok(OpEntries {
        remote: remote_of(rbuffer)?,
        offset: roffset,
        notify,
        list,
    })
}

/// Starts a put or get and records its completion.
fn start(
    conn: PVMI_CONNECT,
    op: PVMI_RDMA_OP,
    context: PVOID,
    cb: VMIRDMACompleteNotification,
    get: bool,
) -> Result<(), CapiError> {
    state::check()?;
    let h = connection::live(conn)?;
    let id = connection::open_id(h)?;
    let OpEntries {
        remote,
        offset,
        notify,
        list,
    } = entries(op)?;
    if remote.conn != id {
        return Err(CapiError::InvalidParameter(
            "the remote buffer was published on another connection".into(),
        ));
    }
    let options = RdmaOptions {
        notify,
        ..RdmaOptions::default()
    };
    let token = state::tables(|t| t.rdma_pending.insert(RdmaPending { op, context, cb }));
    let r = if get {
        // Each entry lands in vmi's memory: a region and an offset in it.
        let landing = state::tables(|t| {
            list.iter()
                .map(|&(b, addr, len)| {
                    let buf = t
                        .buffers
                        .get(from_ptr(b))
                        .ok_or(CapiError::InvalidHandle("the buffer"))?;
                    let (region, offset) = buf.region.clone().ok_or_else(|| {
                        CapiError::InvalidParameter(
                            "a get lands only in memory from VMI_Buffer_Allocate or a pool".into(),
                        )
                    })?;
                    let at = addr.wrapping_sub(buf.addr as usize);
                    if addr < buf.addr as usize || at.checked_add(len).is_none_or(|e| e > buf.len) {
                        return Err(CapiError::InvalidParameter(format!(
                            "{len} bytes at {addr:#x} are not inside their buffer"
                        )));
                    }
                    Ok((region, offset + at, len))
                })
                .collect::<Result<Vec<_>, CapiError>>()
        });
        match landing {
            Ok(landing) => {
                let segs: Vec<Segment<'_>> = landing
                    .iter()
                    .map(|(region, offset, len)| Segment {
                        region,
                        offset: *offset,
                        len: *len,
                    })
                    .collect();
                with_ops!(|o| o.rdma_get(&remote, offset, &segs, &options, token))
            }
            Err(e) => Err(e),
        }
    } else {
        let parts: Vec<&[u8]> = list
            .iter()
            .map(|&(_, addr, len)| {
                if len > 0 && addr == 0 {
                    return Err(CapiError::InvalidParameter(
                        "an entry's address is NULL".into(),
                    ));
                }
                Ok(if len == 0 {
                    &[][..]
                } else {
                    // SAFETY: the application's entry: `len` readable bytes at `addr`, read
                    // (copied) during this call.
                    unsafe { std::slice::from_raw_parts(addr as *const u8, len) }
                })
            })
            .collect::<Result<_, CapiError>>()?;
        with_ops!(|o| o.rdma_put(&remote, offset, &parts, &options, token))
    };
    match r.and_then(|r| r.map_err(CapiError::from)) {
        Ok(_) => Ok(()),
        Err(e) => {
            state::tables(|t| t.rdma_pending.remove(token));
            Err(e)
        }
    }
}

/// Writes the op's entries, one after another, at `roffset` of its remote buffer (VMI 2.1:
/// `VMI_RDMA_Put`); `cb(op, ctx, status)` runs in a later `VMI_Poll` when they landed (NULL:
/// no callback). The bytes are copied during the call.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_RDMA_Put(
    conn: PVMI_CONNECT,
    op: PVMI_RDMA_OP,
    ctx: PVOID,
    cb: VMIRDMACompleteNotification,
) -> VMI_STATUS {
    guard("VMI_RDMA_Put", || start(conn, op, ctx, cb, false))
}

/// Reads the remote buffer from `roffset` into the op's entries, which must lie in memory
/// from `VMI_Buffer_Allocate` or a pool (VMI 2.1: `VMI_RDMA_Get`); `cb` runs when the bytes
/// are there.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_RDMA_Get(
    conn: PVMI_CONNECT,
    op: PVMI_RDMA_OP,
    ctx: PVOID,
    cb: VMIRDMACompleteNotification,
) -> VMI_STATUS {
    guard("VMI_RDMA_Get", || start(conn, op, ctx, cb, true))
}

/// Frees a remote buffer and tells its publisher this side is done with it (VMI 2.1:
/// `VMI_RDMA_Dealloc_Buffer`).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_RDMA_Dealloc_Buffer(rb: PVMI_REMOTE_BUFFER) -> VMI_STATUS {
    guard("VMI_RDMA_Dealloc_Buffer", || {
        state::check()?;
        // The C view's memory goes with the table's box.
        let (_, remote) = state::tables(|t| t.rdma_remotes.remove(&(rb as usize)))
            .ok_or(CapiError::InvalidHandle(REMOTE))?;
        // A closed connection has no publisher to tell: freeing is all there is to do.
        if let Err(e) =
            with_ops!(|o| o.rdma_release(&remote)).and_then(|r| r.map_err(CapiError::from))
        {
            log::debug!("could not tell the publisher of a released buffer: {e}");
        }
        Ok(())
    })
}

/// Makes the C view of a buffer the peer on `conn` published; libvmi frees it in
/// `VMI_RDMA_Dealloc_Buffer`.
pub(crate) fn remote_buffer(conn: Handle, remote: RemoteBuffer) -> PVMI_REMOTE_BUFFER {
    let mut boxed = Box::new(VMI_REMOTE_BUFFER {
        rsz: remote.size as ULONG,
        lctxt: remote.tag,
        ctx: remote.ctx,
        conn: crate::handle::to_ptr(conn),
    });
    let rb: PVMI_REMOTE_BUFFER = &mut *boxed;
    state::tables(|t| t.rdma_remotes.insert(rb as usize, (boxed, remote)));
    rb
}
