//! Process limits vmi adjusts at start: the soft limit on open descriptors is raised to the
//! hard limit, once, and logged, so a process with many connections does not run out of
//! descriptors at the conservative default soft limit (often 1,024).
#![allow(unsafe_code)]

use std::sync::Once;

/// Raises `RLIMIT_NOFILE`'s soft limit to its hard limit (once per process).
pub fn raise_fd_limit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one rlimit into the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            log::debug!(
                "cannot read the descriptor limit: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        if lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let was = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
            log::info!(
                "raised the open-descriptor limit from {was} to its hard limit {}",
                lim.rlim_max
            );
        } else {
            log::warn!(
                "cannot raise the open-descriptor limit from {was} to {}: {}",
                lim.rlim_max,
                std::io::Error::last_os_error()
            );
        }
    });
}
