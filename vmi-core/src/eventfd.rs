//! One descriptor for an application's own event loop (UCX's `ucp_worker_get_efd` with
//! `ucp_worker_arm`, libfabric's `FI_GETWAIT`): an epoll instance holding the host's doorbell
//! and every device's wait descriptor. It becomes readable when `poll` has work, once the
//! application has armed it; see [`crate::Vmi::event_fd`] and [`crate::Vmi::arm`].
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// What [`crate::Vmi::arm`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    /// Work is pending already: call `poll` again instead of sleeping.
    Busy,
    /// Nothing to do: sleep until [`crate::Vmi::event_fd`] is readable, at most `timeout`
    /// (`None`: no limit), then call `poll`.
    Sleep {
        /// The longest sleep before `poll` must run (a timer of a device, a connect retry, a
        /// request's deadline).
        timeout: Option<Duration>,
    },
}

/// The epoll instance and the descriptors it watches.
pub(crate) struct EventFd {
    epoll: OwnedFd,
    watched: Vec<RawFd>,
}

impl EventFd {
    /// A new epoll instance watching `waker` (the host's doorbell).
    pub fn new(waker: RawFd) -> std::io::Result<EventFd> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut e = EventFd {
            epoll,
            watched: Vec::new(),
        };
        e.watch(waker)?;
        Ok(e)
    }

    /// Adds `fd` (level-triggered, readable) unless watched already.
    pub fn watch(&mut self, fd: RawFd) -> std::io::Result<()> {
        if self.watched.contains(&fd) {
            return Ok(());
        }
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: our live epoll descriptor; `ev` is a valid event for the call.
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            // Added already (a descriptor number reused after a close): nothing to do.
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
        self.watched.push(fd);
        Ok(())
    }

    /// The epoll descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}
