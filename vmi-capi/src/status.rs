//! `VMI_STATUS` codes, the C API's errors, and the per-thread last error that
//! `VMI_perror` and `VMI_Last_Error` report.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};

use vmi_core::{Status, VmiError};

use crate::types::VMI_STATUS;

/// Codes 0–13 are the transports' and devices' statuses (`Status`, `VMI_STATUS_*` of the
/// device header); the C API adds these.
pub mod code {
    use super::VMI_STATUS;
    /// Success.
    pub const OK: VMI_STATUS = 0;
    /// `VMI_Init` has not run (or `VMI_Terminate` has).
    pub const NOT_INITIALIZED: VMI_STATUS = 100;
    /// `VMI_Init` ran already.
    pub const ALREADY_INITIALIZED: VMI_STATUS = 101;
    /// A handle is stale, freed, or was never returned by VMI.
    pub const INVALID_HANDLE: VMI_STATUS = 102;
    /// An argument is wrong (NULL, out of range, inconsistent sizes).
    pub const INVALID_PARAMETER: VMI_STATUS = 103;
    /// Too many sends are in flight; poll, then send again.
    pub const BUSY: VMI_STATUS = 104;
    /// `VMI_Poll`, `VMI_Wait` or `VMI_Terminate` was called from inside a callback.
    pub const REENTRANT: VMI_STATUS = 105;
    /// VMI was initialised on another thread.
    pub const WRONG_THREAD: VMI_STATUS = 106;
    /// The specfile, a device, a parameter or the key is wrong.
    pub const CONFIGURATION: VMI_STATUS = 107;
    /// The connection is not open (still connecting, closing, or closed).
    pub const NOT_CONNECTED: VMI_STATUS = 108;
    /// Fewer bytes remain in the slab than were asked for.
    pub const SHORT_SLAB: VMI_STATUS = 109;
}

/// Why a C API call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CapiError {
    #[error("VMI is not initialised: call VMI_Init first")]
    NotInitialized,
    #[error("VMI is already initialised; call VMI_Terminate before calling VMI_Init again")]
    AlreadyInitialized,
    #[error(
        "VMI was initialised on another thread; call every VMI function from the thread that called VMI_Init"
    )]
    WrongThread,
    #[error("{0} is not a valid handle (stale, already freed, or never returned by VMI)")]
    InvalidHandle(&'static str),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0} cannot be called from inside a VMI callback; return from the callback first")]
    Reentrant(&'static str),
    #[error("{remaining} bytes remain in the slab, fewer than the {wanted} asked for")]
    ShortSlab { wanted: usize, remaining: usize },
    #[error("{0}")]
    Init(String),
    #[error(transparent)]
    Vmi(#[from] VmiError),
    #[error("internal error: {0}; please report it")]
    Panic(String),
}

impl CapiError {
    /// The `VMI_STATUS` for this error.
    pub fn code(&self) -> VMI_STATUS {
        match self {
            CapiError::NotInitialized => code::NOT_INITIALIZED,
            CapiError::AlreadyInitialized => code::ALREADY_INITIALIZED,
            CapiError::WrongThread => code::WRONG_THREAD,
            CapiError::InvalidHandle(_) => code::INVALID_HANDLE,
            CapiError::InvalidParameter(_) => code::INVALID_PARAMETER,
            CapiError::Reentrant(_) => code::REENTRANT,
            CapiError::ShortSlab { .. } => code::SHORT_SLAB,
            CapiError::Init(_) => code::CONFIGURATION,
            CapiError::Panic(_) => Status::Internal.code() as VMI_STATUS,
            CapiError::Vmi(e) => match e {
                VmiError::Busy { .. } => code::BUSY,
                VmiError::Assembly(_) | VmiError::Environment { .. } => code::CONFIGURATION,
                VmiError::UnknownConnection(_)
                | VmiError::NotOpen { .. }
                | VmiError::StreamBusy(_)
                | VmiError::StreamClosed(_) => code::NOT_CONNECTED,
                VmiError::Unreachable { .. } => Status::Unreachable.code() as VMI_STATUS,
                VmiError::ConnectDataTooLarge { .. } | VmiError::FragmentTooLarge { .. } => {
                    Status::TooLarge.code() as VMI_STATUS
                }
                _ => code::INVALID_PARAMETER,
            },
        }
    }
}

/// A short description of a status code, NUL-terminated and static.
pub(crate) fn describe(status: VMI_STATUS) -> &'static CStr {
    match status {
        code::OK => c"success",
        1 => c"rejected by the peer",
        2 => c"peer unreachable",
        3 => c"incompatible peer (wire version or filter chain)",
        4 => c"timed out",
        5 => c"connection lost",
        6 => c"protocol violation by the peer",
        7 => c"data failed an integrity check",
        8 => c"cancelled",
        9 => c"over a size limit",
        10 => c"invalid request",
        11 => c"out of resources",
        12 => c"internal error",
        13 => c"data lost on the way",
        code::NOT_INITIALIZED => c"VMI is not initialised",
        code::ALREADY_INITIALIZED => c"VMI is already initialised",
        code::INVALID_HANDLE => c"invalid handle",
        code::INVALID_PARAMETER => c"invalid parameter",
        code::BUSY => c"too many sends in flight",
        code::REENTRANT => c"not allowed inside a callback",
        code::WRONG_THREAD => c"called from a thread other than VMI_Init's",
        code::CONFIGURATION => c"configuration error (specfile, device, parameter or key)",
        code::NOT_CONNECTED => c"connection not open",
        code::SHORT_SLAB => c"fewer bytes in the slab than asked for",
        _ => c"unknown status",
    }
}

/// The `VMI_STATUS` for a transport's status.
pub(crate) fn of(status: Status) -> VMI_STATUS {
    status.code() as VMI_STATUS
}

thread_local! {
    /// The last failure on this thread: its code and the full message.
    static LAST: RefCell<(VMI_STATUS, CString)> = RefCell::new((code::OK, CString::default()));
}

/// Records a failure for `VMI_perror` and `VMI_Last_Error`.
pub(crate) fn set_last(status: VMI_STATUS, message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST.with(|l| *l.borrow_mut() = (status, text));
}

/// The last failure's code and message.
pub(crate) fn last() -> (VMI_STATUS, String) {
    LAST.with(|l| {
        let l = l.borrow();
        (l.0, l.1.to_string_lossy().into_owned())
    })
}

/// The last failure's message, valid until the next failing call on this thread.
pub(crate) fn last_ptr() -> *const c_char {
    LAST.with(|l| l.borrow().1.as_ptr())
}

/// Runs an exported call: a failure becomes its status (and the last error); a panic becomes
/// `VMI_STATUS_INTERNAL` instead of unwinding into C.
pub(crate) fn guard(name: &'static str, f: impl FnOnce() -> Result<(), CapiError>) -> VMI_STATUS {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(CapiError::Panic(panic_text(p.as_ref()))));
    match result {
        Ok(()) => code::OK,
        Err(e) => {
            let status = e.code();
            let message = format!("{name}: {e}");
            log::debug!("{message}");
            set_last(status, &message);
            status
        }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_description_and_errors_keep_their_message() {
        for c in (0..=13).chain(100..=109) {
            assert_ne!(describe(c), c"unknown status", "{c}");
        }
        let s = guard("VMI_Test", || {
            Err(CapiError::InvalidHandle("the connection"))
        });
        assert_eq!(s, code::INVALID_HANDLE);
        let (c, m) = last();
        assert_eq!(c, s);
        assert!(
            m.starts_with("VMI_Test: the connection is not a valid handle"),
            "{m}"
        );
        let s = guard("VMI_Test", || panic!("boom"));
        assert_eq!(s, 12);
        assert!(last().1.contains("boom"));
    }
}
