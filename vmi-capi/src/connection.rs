//! Connections (VMI 2.1: `VMI_Connection_Create`, `_Bind`, `_Issue`, `_Accept_Fn`,
//! `_Disconnect`, `_Disconnect_Fn`, the receive-context macros).

use vmi_core::Operations;

use crate::handle::{Handle, from_ptr, to_ptr};
use crate::netaddr;
use crate::state::{self, Conn, ConnState, with_ops};
use crate::status::{CapiError, guard};
use crate::types::*;

const CONN: &str = "the connection";

/// The handle of a live connection entry.
pub(crate) fn live(conn: PVMI_CONNECT) -> Result<Handle, CapiError> {
    let h = from_ptr(conn);
    state::tables(|t| t.conns.get(h).map(|_| h)).ok_or(CapiError::InvalidHandle(CONN))
}

/// Writes an output handle.
pub(crate) fn put_out<P>(out: *mut *mut P, h: Handle) -> Result<(), CapiError> {
    if out.is_null() {
        return Err(CapiError::InvalidParameter(
            "the output pointer is NULL".into(),
        ));
    }
    // SAFETY: checked non-null; the caller's writable pointer.
    unsafe { *out = to_ptr(h) };
    Ok(())
}

/// Creates a connection object (VMI 2.1: `VMI_Connection_Create`); bind it, then issue it.
///
/// # Safety
/// `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Connection_Create(out: *mut PVMI_CONNECT) -> VMI_STATUS {
    guard("VMI_Connection_Create", || {
        state::check()?;
        if out.is_null() {
            return Err(CapiError::InvalidParameter(
                "the output pointer is NULL".into(),
            ));
        }
        let h = state::tables(|t| t.conns.insert(Conn::new(ConnState::Created)));
        put_out(out, h)
    })
}

/// Binds a connection to the peer's address (VMI 2.1: `VMI_Connection_Bind`, addresses by
/// value; `local` is `*localAddress`, recorded but not needed). A port other than 0 skips
/// the key-derived port search (`host:port`).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Connection_Bind(
    local: VMI_NETADDRESS,
    remote: VMI_NETADDRESS,
    conn: PVMI_CONNECT,
) -> VMI_STATUS {
    guard("VMI_Connection_Bind", || {
        state::check()?;
        let _ = netaddr::get(&local.key, "local key")?;
        let host = netaddr::get(&remote.host, "host")?;
        let key = netaddr::get(&remote.key, "key")?;
        let host = if remote.port != 0 {
            format!("{host}:{}", remote.port)
        } else {
            host
        };
        let h = live(conn)?;
        state::tables(|t| {
            let c = t.conns.get_mut(h).ok_or(CapiError::InvalidHandle(CONN))?;
            if c.state != ConnState::Created {
                return Err(CapiError::InvalidParameter(
                    "the connection was issued already; create a new one".into(),
                ));
            }
            c.remote = Some((host, key));
            Ok(())
        })
    })
}

/// Starts connecting (VMI 2.1: `VMI_Connection_Issue`) with optional connect data (the
/// whole buffer); `done(context, reply, size, connection, response)` runs from a later
/// `VMI_Poll` (never inside this call) with `VMI_CONNECT_RESPONSE_ACCEPT`, `_REJECT` or
/// `_ERROR` (then `VMI_Last_Error` says why).
///
/// # Safety
/// `context` is the caller's, passed back untouched.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Connection_Issue(
    conn: PVMI_CONNECT,
    data: PVMI_BUFFER,
    done: VMIConnectIssue,
    context: PVOID,
) -> VMI_STATUS {
    guard("VMI_Connection_Issue", || {
        state::check()?;
        let h = live(conn)?;
        let bytes = if data.is_null() {
            Vec::new()
        } else {
            crate::buffer::bytes_of(data)?
        };
        let (host, key) = state::tables(|t| {
            let c = t.conns.get(h).ok_or(CapiError::InvalidHandle(CONN))?;
            if c.state != ConnState::Created {
                return Err(CapiError::InvalidParameter(
                    "the connection was issued already; create a new one".into(),
                ));
            }
            c.remote.clone().ok_or_else(|| {
                CapiError::InvalidParameter(
                    "the connection is not bound; call VMI_Connection_Bind first".into(),
                )
            })
        })?;
        let id = with_ops!(|o| o.connect(&host, &key, &bytes, h))??;
        state::tables(|t| {
            if let Some(c) = t.conns.get_mut(h) {
                c.state = ConnState::Connecting;
                c.id = Some(id);
                c.issued = Some((done, context));
            }
            t.by_id.insert(id, h);
        });
        Ok(())
    })
}

/// Sets the process-wide accept function (VMI 2.1: `VMI_Connection_Accept_Fn`). Without one,
/// every incoming connection is refused (and logged).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Connection_Accept_Fn(f: VMIConnectAccept) -> VMI_STATUS {
    guard("VMI_Connection_Accept_Fn", || {
        state::check()?;
        state::tables(|t| t.accept_fn = f);
        Ok(())
    })
}

/// Sets the function told when a peer closes a connection or it fails (VMI 2.1:
/// `VMI_Connection_Disconnect_Fn`).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Connection_Disconnect_Fn(f: VMIDisconnectNotification) -> VMI_STATUS {
    guard("VMI_Connection_Disconnect_Fn", || {
        state::check()?;
        state::tables(|t| t.peer_disconnect_fn = f);
        Ok(())
    })
}

/// Closes a connection in order (VMI 2.1: `VMI_Connection_Disconnect`): sends already issued
/// are delivered first; `done(connection, context, status)` runs from a later `VMI_Poll`,
/// after which the handle is stale.
///
/// # Safety
/// `context` is the caller's, passed back untouched.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Connection_Disconnect(
    conn: PVMI_CONNECT,
    done: VMIConnectDisconnect,
    context: PVOID,
) -> VMI_STATUS {
    guard("VMI_Connection_Disconnect", || {
        state::check()?;
        let (h, id) = issued(conn)?;
        with_ops!(|o| o.disconnect(id))??;
        closing(h, done, context);
        Ok(())
    })
}

/// The live connection behind a handle that was issued or accepted.
fn issued(conn: PVMI_CONNECT) -> Result<(u64, vmi_core::ConnId), CapiError> {
    let h = live(conn)?;
    let id = state::tables(|t| t.conns.get(h).and_then(|c| c.id)).ok_or_else(|| {
        CapiError::InvalidParameter("the connection was never issued or accepted".into())
    })?;
    Ok((h, id))
}

/// The connection is closing: `done(connection, context, status)` runs when it ended.
fn closing(h: u64, done: VMIConnectDisconnect, context: PVOID) {
    state::tables(|t| {
        if let Some(c) = t.conns.get_mut(h) {
            c.state = ConnState::Closing;
            c.closing = Some((done, context));
        }
    });
}

/// Milliseconds from C as a timeout: 0 is refused (where none would mean "none", the caller
/// says so), and so is more than a day.
// `ULONG` is C's `unsigned long`: 64 bits on the Linux targets built today, 32 elsewhere.
#[allow(clippy::useless_conversion)]
fn millis(what: &str, ms: ULONG) -> Result<std::time::Duration, CapiError> {
    let max = vmi_core::MAX_TIMEOUT.as_millis() as u64;
    if ms == 0 || u64::from(ms) > max {
        return Err(CapiError::InvalidParameter(format!(
            "{what} of {ms} ms is out of range: give 1 to {max} ms"
        )));
    }
    Ok(std::time::Duration::from_millis(u64::from(ms)))
}

/// As `VMI_Connection_Disconnect`, giving the orderly close at most `timeout_ms` (vmi's
/// addition, Globus XIO's close timeout): if the sends issued before it have not all reached
/// the peer by then, the connection is aborted, its waiting sends complete with
/// `VMI_STATUS_TIMEOUT`, and `done` runs with `VMI_STATUS_TIMEOUT`.
///
/// # Safety
/// `context` is the caller's, passed back untouched.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Connection_Disconnect_Timeout(
    conn: PVMI_CONNECT,
    timeout_ms: ULONG,
    done: VMIConnectDisconnect,
    context: PVOID,
) -> VMI_STATUS {
    guard("VMI_Connection_Disconnect_Timeout", || {
        state::check()?;
        let (h, id) = issued(conn)?;
        let wait = millis("a disconnect timeout", timeout_ms)?;
        with_ops!(|o| o.disconnect_with(id, wait))??;
        closing(h, done, context);
        Ok(())
    })
}

/// Closes a connection at once (vmi's addition; Globus XIO's cancel): sends not yet finished
/// complete with `VMI_STATUS_CANCELLED`, nothing more goes to the peer, which sees the
/// connection lost; `done(connection, context, VMI_STATUS_OK)` runs from a later `VMI_Poll`,
/// after which the handle is stale. Also ends a disconnect in progress.
///
/// # Safety
/// `context` is the caller's, passed back untouched.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Connection_Abort(
    conn: PVMI_CONNECT,
    done: VMIConnectDisconnect,
    context: PVOID,
) -> VMI_STATUS {
    guard("VMI_Connection_Abort", || {
        state::check()?;
        let (h, id) = issued(conn)?;
        with_ops!(|o| o.abort(id))??;
        closing(h, done, context);
        Ok(())
    })
}

/// Sets the connection's send timeout in milliseconds, or clears it with 0 (vmi's addition;
/// TCP's user timeout for vmi's sends): when sends wait on the connection and none completes
/// for the timeout, the connection is aborted, its waiting sends complete with
/// `VMI_STATUS_TIMEOUT`, and the disconnect function (`VMI_Connection_Disconnect_Fn`) runs;
/// `VMI_Last_Error` then says why. At most a day.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Connection_Set_Send_Timeout(
    conn: PVMI_CONNECT,
    timeout_ms: ULONG,
) -> VMI_STATUS {
    guard("VMI_Connection_Set_Send_Timeout", || {
        state::check()?;
        let (_, id) = issued(conn)?;
        let t = match timeout_ms {
            0 => None,
            ms => Some(millis("a send timeout", ms)?),
        };
        with_ops!(|o| o.set_send_timeout(id, t))??;
        Ok(())
    })
}

/// Sets the connection's receive context, passed to the receive function (VMI 2.1:
/// `VMI_CONNECT_SET_RECEIVE_CONTEXT`).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Connection_Set_Receive_Context(
    conn: PVMI_CONNECT,
    context: PVOID,
) -> VMI_STATUS {
    guard("VMI_Connection_Set_Receive_Context", || {
        state::check()?;
        let h = live(conn)?;
        state::tables(|t| {
            if let Some(c) = t.conns.get_mut(h) {
                c.recv_context = context;
            }
        });
        Ok(())
    })
}

/// The connection's receive context, or NULL for an invalid handle (VMI 2.1:
/// `VMI_CONNECT_GET_RECEIVE_CONTEXT`).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Connection_Get_Receive_Context(conn: PVMI_CONNECT) -> PVOID {
    let h = from_ptr(conn);
    state::tables(|t| t.conns.get(h).map(|c| c.recv_context)).unwrap_or(std::ptr::null_mut())
}

/// The connection's measured one-way latency in microseconds (at least 1 once measured), or
/// 0 before the first measurement or for an invalid or closed handle (VMI 2.1:
/// `VMI_CONNECT_ONE_WAY_LATENCY`). Measured when the connection opens, and again when asked
/// at most every 5 s.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Connection_Get_One_Way_Latency(conn: PVMI_CONNECT) -> ULONG {
    let h = from_ptr(conn);
    let Some(id) = state::tables(|t| t.conns.get(h).and_then(|c| c.id)) else {
        return 0;
    };
    let latency = with_ops!(|o| o.one_way_latency(id)).ok().flatten();
    latency.map_or(0, |d| d.as_micros().clamp(1, ULONG::MAX as u128) as ULONG)
}

/// The open connection behind a handle, for sends.
pub(crate) fn open_id(h: Handle) -> Result<vmi_core::ConnId, CapiError> {
    state::tables(|t| {
        let c = t.conns.get(h).ok_or(CapiError::InvalidHandle(CONN))?;
        c.id.ok_or_else(|| {
            CapiError::InvalidParameter(
                "the connection is not open (issue it and wait for its callback)".into(),
            )
        })
    })
}
