//! Start, progress and shutdown: `VMI_Init`, `VMI_Poll`, `VMI_Terminate`, `VMI_perror`, and
//! the global `localAddress`.

use std::ffi::{CStr, c_char, c_int};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::{Duration, Instant};

use vmi_core::{Operations, Vmi};

use crate::bridge::Bridge;
use crate::netaddr;
use crate::state::{self, ConnState, Runtime};
use crate::status::{self, CapiError, guard};
use crate::types::*;

/// This process's address (VMI 2.1: `extern PVMI_NETADDRESS localAddress`), filled by
/// `VMI_Init` and cleared by `VMI_Terminate`. `AtomicPtr` has the layout of a plain pointer.
#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
pub static localAddress: AtomicPtr<VMI_NETADDRESS> = AtomicPtr::new(ptr::null_mut());

/// How long `VMI_Terminate` waits for connections to close in order (sends in flight finish
/// first); `VMI_TERMINATE_TIMEOUT` (seconds) overrides it.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(10);

/// The key: `argv[1]` when the program was given arguments (the tutorial's
/// `vmirecv recvkey`), else `VMI_KEY`.
fn key_from(argc: c_int, argv: PPSTR) -> Result<String, CapiError> {
    if argc >= 2 && !argv.is_null() {
        // SAFETY: C's contract for argv: `argc` valid entries.
        let arg = unsafe { *argv.add(1) };
        if !arg.is_null() {
            // SAFETY: a NUL-terminated argument string.
            let s = unsafe { CStr::from_ptr(arg) };
            return s.to_str().map(str::to_string).map_err(|_| {
                CapiError::InvalidParameter("argv[1], the process key, is not UTF-8".into())
            });
        }
    }
    match std::env::var("VMI_KEY") {
        Ok(k) if !k.is_empty() => Ok(k),
        _ => Err(CapiError::Init(
            "no process key: pass it as the program's first argument (VMI_Init(argc, argv)) or set VMI_KEY".into(),
        )),
    }
}

/// Sends vmi's log to stderr unless the program set up a logger (`VMI_LOG`: error, warn,
/// info, debug or trace; warn when unset).
fn start_logging() {
    let env = env_logger::Env::new()
        .filter_or("VMI_LOG", "warn")
        .write_style("VMI_LOG_STYLE");
    let _ = env_logger::Builder::from_env(env).try_init();
}

/// Starts VMI (VMI 2.1: `VMI_Init`): reads the specfile named by `VMI_SPECFILE`, loads its
/// devices and builds the chains. The key is `argv[1]` when `argc >= 2`, else `VMI_KEY`.
///
/// # Safety
/// `argv` is NULL or holds `argc` valid C strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_Init(argc: c_int, argv: PPSTR) -> VMI_STATUS {
    guard("VMI_Init", || {
        start_logging();
        if state::in_callback() {
            return Err(CapiError::Reentrant("VMI_Init"));
        }
        let key = key_from(argc, argv)?;
        crate::search::add_library_dir();
        state::reserve()?;
        let vmi = match Vmi::init(Some(&key)) {
            Ok(v) => v,
            Err(e) => {
                state::unreserve();
                return Err(CapiError::Init(e.to_string()));
            }
        };
        state::install(Runtime { vmi });
        let addr = Box::new(netaddr::local(&key));
        let old = localAddress.swap(Box::into_raw(addr), Ordering::AcqRel);
        free_address(old);
        log::debug!("VMI_Init: key '{key}'");
        Ok(())
    })
}

fn free_address(p: PVMI_NETADDRESS) {
    if !p.is_null() {
        // SAFETY: only `VMI_Init` stores into `localAddress`, always a leaked Box.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// Makes progress (VMI 2.1: `VMI_Poll`): sends, receives, connects and accepts; every
/// callback runs inside it. Never blocks.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Poll() -> VMI_STATUS {
    guard("VMI_Poll", || {
        state::with_runtime("VMI_Poll", |rt| {
            rt.vmi.poll(&mut Bridge);
        })
    })
}

/// Like `VMI_Poll`, but sleeps until something happens or `timeout_ms` milliseconds pass,
/// so a waiting process uses no CPU (vmi's addition).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Wait(timeout_ms: ULONG) -> VMI_STATUS {
    guard("VMI_Wait", || {
        // ULONG is 64 bits here but 32 on other targets.
        #[allow(clippy::useless_conversion)]
        let timeout = Duration::from_millis(u64::from(timeout_ms));
        state::with_runtime("VMI_Wait", |rt| {
            rt.vmi.wait(&mut Bridge, timeout);
        })
    })
}

fn terminate_timeout() -> Duration {
    match std::env::var("VMI_TERMINATE_TIMEOUT") {
        Ok(v) => match vmi_core::params::parse_seconds(&v) {
            Ok(s) => Duration::from_secs_f64(s),
            Err(e) => {
                log::warn!(
                    "VMI_TERMINATE_TIMEOUT={v}: {e}; using {}s",
                    TERMINATE_TIMEOUT.as_secs()
                );
                TERMINATE_TIMEOUT
            }
        },
        Err(_) => TERMINATE_TIMEOUT,
    }
}

/// Shuts VMI down (VMI 2.1: `VMI_Terminate`): closes every connection in order, so sends
/// already issued are delivered first (waiting at most `VMI_TERMINATE_TIMEOUT`, 10 s by
/// default), then unloads the devices. Grabbed slabs are released and every handle goes
/// stale. `status` is the program's exit status as VMI 2.1 took it; it is logged.
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Terminate(status: VMI_STATUS) -> VMI_STATUS {
    guard("VMI_Terminate", || {
        state::with_runtime("VMI_Terminate", |rt| {
            let open: Vec<_> = state::tables(|t| {
                t.conns
                    .handles()
                    .into_iter()
                    .filter_map(|h| t.conns.get(h))
                    .filter(|c| c.state == ConnState::Open || c.state == ConnState::Accepted)
                    .filter_map(|c| c.id)
                    .collect()
            });
            for id in open {
                let _ = rt.vmi.disconnect(id);
            }
            let deadline = Instant::now() + terminate_timeout();
            while rt.vmi.connection_count() > 0 && Instant::now() < deadline {
                rt.vmi.wait(&mut Bridge, Duration::from_millis(20));
            }
            if rt.vmi.connection_count() > 0 {
                log::warn!(
                    "VMI_Terminate: {} connections did not close in time; closing them now",
                    rt.vmi.connection_count()
                );
            }
        })?;
        // The tables go first: grabbed slabs are released while the devices still exist.
        if let Some((rt, tables)) = state::uninstall() {
            drop(tables);
            drop(rt);
        }
        free_address(localAddress.swap(ptr::null_mut(), Ordering::AcqRel));
        log::debug!("VMI_Terminate({status})");
        Ok(())
    })
}

/// Prints `msg: <what the status means>` and, when it is the last failure on this thread,
/// the full reason with its remedy (VMI 2.1: `VMI_perror`).
///
/// # Safety
/// `msg` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn VMI_perror(msg: PCSTR, status: VMI_STATUS) {
    let what = status::describe(status).to_string_lossy();
    let prefix = if msg.is_null() {
        String::new()
    } else {
        // SAFETY: the caller's NUL-terminated string.
        format!("{}: ", unsafe { CStr::from_ptr(msg) }.to_string_lossy())
    };
    let (last_code, last_text) = status::last();
    if last_code == status && status != status::code::OK && !last_text.is_empty() {
        eprintln!("{prefix}{what} (0x{status:08X}): {last_text}");
    } else {
        eprintln!("{prefix}{what} (0x{status:08X})");
    }
}

/// What a status code means, as a static string (vmi's addition).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Status_String(status: VMI_STATUS) -> PCSTR {
    status::describe(status).as_ptr()
}

/// The full message of the last failure on this thread, with its remedy; valid until the
/// next failure (vmi's addition).
#[unsafe(no_mangle)]
pub extern "C" fn VMI_Last_Error() -> PCSTR {
    status::last_ptr() as *const c_char
}
