//! Routes a plugin's `log` records to the host's logger. A device loaded from a shared object
//! carries its own copy of the `log` crate, whose logger is unset; this installs one that
//! forwards through `VmiHostServices::log`. A device linked into the host shares the host's
//! `log` and must not (it would forward to itself), which `host_marker` tells apart.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicPtr, Ordering};

use crate::abi::{VmiHostServices, VmiStr};

/// An address unique to each copy of `vmi-core` in the process.
pub static MARKER: u8 = 0;

static SERVICES: AtomicPtr<VmiHostServices> = AtomicPtr::new(std::ptr::null_mut());

struct Forward;

impl log::Log for Forward {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        let services = SERVICES.load(Ordering::Acquire);
        if services.is_null() || !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        let target = record.target();
        // SAFETY: the host services table lives as long as the process (the host never
        // unloads device libraries); `log` ignores its host argument.
        unsafe {
            ((*services).log)(
                std::ptr::null_mut(),
                record.level() as u32,
                VmiStr::new(target),
                VmiStr::new(&msg),
            )
        };
    }

    fn flush(&self) {}
}

static FORWARD: Forward = Forward;

/// Installs the forwarding logger if this copy of `vmi-core` is not the host's.
///
/// # Safety
/// `services` must be the host's services table, valid for the rest of the process.
pub unsafe fn install(services: *const VmiHostServices) {
    if services.is_null() {
        return;
    }
    // SAFETY: valid table per the contract.
    let svc = unsafe { &*services };
    if std::ptr::eq(svc.host_marker, &MARKER) {
        return; // linked into the host: same logger already.
    }
    SERVICES.store(services as *mut _, Ordering::Release);
    let _ = log::set_logger(&FORWARD);
    log::set_max_level(match svc.max_log_level {
        0 => log::LevelFilter::Off,
        1 => log::LevelFilter::Error,
        2 => log::LevelFilter::Warn,
        3 => log::LevelFilter::Info,
        4 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    });
}
