//! Network addresses (VMI 2.1: `VMI_NETADDRESS`, `VMI_Connection_Allocate_IPV4_Address`):
//! a host and a key, with the user name recorded.

use std::ffi::{CStr, c_char};

use crate::status::{CapiError, guard};
use crate::types::*;

/// Copies `s` into a fixed, NUL-terminated field; refuses strings that do not fit.
fn put(field: &mut [c_char], s: &str, what: &str) -> Result<(), CapiError> {
    if s.len() >= field.len() || s.contains('\0') {
        return Err(CapiError::InvalidParameter(format!(
            "{what} '{s}' is too long (at most {} bytes) or contains NUL",
            field.len() - 1
        )));
    }
    for (d, b) in field.iter_mut().zip(s.bytes()) {
        *d = b as c_char;
    }
    field[s.len()] = 0;
    Ok(())
}

/// Reads a fixed field back; a field with no NUL (C code wrote past it) is refused.
pub(crate) fn get(field: &[c_char], what: &str) -> Result<String, CapiError> {
    let bytes: Vec<u8> = field.iter().map(|&c| c as u8).collect();
    let end = bytes.iter().position(|&b| b == 0).ok_or_else(|| {
        CapiError::InvalidParameter(format!("the address's {what} is not NUL-terminated"))
    })?;
    String::from_utf8(bytes[..end].to_vec())
        .map_err(|_| CapiError::InvalidParameter(format!("the address's {what} is not UTF-8")))
}

fn empty() -> VMI_NETADDRESS {
    VMI_NETADDRESS {
        host: [0; VMI_HOST_MAX],
        key: [0; VMI_KEY_MAX],
        user: [0; VMI_USER_MAX],
        port: 0,
    }
}

fn make(host: &str, port: u16, user: &str, key: &str) -> Result<VMI_NETADDRESS, CapiError> {
    let mut a = empty();
    put(&mut a.host, host, "host")?;
    put(&mut a.user, user, "user name")?;
    put(&mut a.key, key, "key")?;
    a.port = port;
    Ok(a)
}

/// This process's address: its host name, key and user.
pub(crate) fn local(key: &str) -> VMI_NETADDRESS {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let user = std::env::var("USER").unwrap_or_default();
    make(&host, 0, &user, key).unwrap_or_else(|_| {
        let mut a = empty();
        let _ = put(&mut a.host, "localhost", "host");
        let _ = put(&mut a.key, key, "key");
        a
    })
}

/// Reads a C string argument.
pub(crate) fn c_str(p: PCSTR, what: &str) -> Result<String, CapiError> {
    if p.is_null() {
        return Err(CapiError::InvalidParameter(format!("{what} is NULL")));
    }
    // SAFETY: the caller's contract: a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map(str::to_string)
        .map_err(|_| CapiError::InvalidParameter(format!("{what} is not UTF-8")))
}

/// Makes the address of a peer: host, port (0: find the process by its key), user and key
/// (VMI 2.1: `VMI_Connection_Allocate_IPV4_Address`). Free it with
/// `VMI_Connection_Deallocate_Address` (or let `VMI_Terminate`'s exit reclaim it).
///
/// # Safety
/// The strings are NUL-terminated (`user` may be NULL); `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Connection_Allocate_IPV4_Address(
    host: PCSTR,
    port: USHORT,
    user: PCSTR,
    key: PCSTR,
    out: *mut PVMI_NETADDRESS,
) -> VMI_STATUS {
    guard("VMI_Connection_Allocate_IPV4_Address", || {
        if out.is_null() {
            return Err(CapiError::InvalidParameter(
                "the output pointer is NULL".into(),
            ));
        }
        let host = c_str(host, "the host")?;
        let key = c_str(key, "the key")?;
        let user = if user.is_null() {
            String::new()
        } else {
            c_str(user, "the user name")?
        };
        vmi_core::assembly::check_key(&key)
            .map_err(|e| CapiError::InvalidParameter(e.to_string()))?;
        let a = Box::new(make(&host, port, &user, &key)?);
        // SAFETY: checked non-null; the caller's writable pointer.
        unsafe { *out = Box::into_raw(a) };
        Ok(())
    })
}

/// Frees an address from `VMI_Connection_Allocate_IPV4_Address` (vmi's addition).
///
/// # Safety
/// `addr` came from `VMI_Connection_Allocate_IPV4_Address` and is freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Connection_Deallocate_Address(addr: PVMI_NETADDRESS) -> VMI_STATUS {
    guard("VMI_Connection_Deallocate_Address", || {
        if addr.is_null() {
            return Err(CapiError::InvalidParameter("the address is NULL".into()));
        }
        // SAFETY: the caller's contract: a Box from Allocate, freed once.
        drop(unsafe { Box::from_raw(addr) });
        Ok(())
    })
}
