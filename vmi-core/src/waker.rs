//! An eventfd that wakes `wait` from other threads.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Wakes a thread sleeping in `wait`. The eventfd is written only while the owner is asleep
/// (a doorbell, not a per-message syscall). Ordering: the sleeper sets `sleeping`, then looks
/// for pending work (queues, devices' `wait_fd`), then sleeps; a waker publishes its work,
/// then reads `sleeping`. With sequentially consistent operations on both sides, either the
/// sleeper sees the work or the waker sees the sleeper.
pub struct Waker {
    fd: OwnedFd,
    sleeping: AtomicBool,
    /// The application rang (`ring`): its polling thread has work of its own.
    rung: AtomicBool,
}

impl Waker {
    pub fn new() -> std::io::Result<Waker> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waker {
            fd,
            sleeping: AtomicBool::new(false),
            rung: AtomicBool::new(false),
        })
    }

    /// Marks the owner as about to sleep (true) or awake (false).
    pub fn set_sleeping(&self, sleeping: bool) {
        self.sleeping.store(sleeping, Ordering::SeqCst);
    }

    /// Rings the doorbell if the owner sleeps (any thread).
    pub fn wake(&self) {
        if !self.sleeping.load(Ordering::SeqCst) {
            return;
        }
        self.write();
    }

    /// Rings the doorbell for the application, whether or not the owner sleeps: for work
    /// of the application's that the owner's sleep does not look for (the doorbell stays
    /// readable until the next sleep ends, and `wait` returns to the application).
    pub fn ring(&self) {
        self.rung.store(true, Ordering::SeqCst);
        self.write();
    }

    fn write(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd; failure (counter saturated)
        // still leaves it readable, which is all we need.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
    }

    /// Whether the application rang since the last call (and clears it).
    pub fn take_rung(&self) -> bool {
        self.rung.swap(false, Ordering::SeqCst)
    }

    /// True while the application's ring is not taken.
    pub fn rung(&self) -> bool {
        self.rung.load(Ordering::SeqCst)
    }

    /// Clears the readable state.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                &mut v as *mut u64 as *mut libc::c_void,
                8,
            )
        };
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
