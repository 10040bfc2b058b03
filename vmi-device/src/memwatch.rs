//! Telling a registration cache that memory went away: Linux's userfaultfd, used only for its
//! non-cooperative events.
//!
//! A range is registered with one process-wide userfaultfd in write-protect mode, and no page
//! is ever write-protected, so no access to it ever faults; what the registration buys is
//! that the kernel reports, for that range, an `munmap` (`UFFD_EVENT_UNMAP`), an
//! `madvise(MADV_DONTNEED/MADV_REMOVE)` (`UFFD_EVENT_REMOVE`) and an `mremap` that moves it
//! (`UFFD_EVENT_REMAP`) — including those glibc's `free` makes internally, which no symbol
//! interposition sees. The kernel holds the unmapping thread until the event is read, and a
//! watcher thread reads it while holding the log's lock and records it before letting go. So
//! once `munmap` has returned, any cache that takes the lock afterwards (every look-up does)
//! sees the range invalidated: a registration of memory that is gone is impossible to use.
//!
//! The price: an unmapping of watched memory waits for the watcher thread to read its event
//! (a thread switch, microseconds), so the thread never stops while the process runs.
//!
//! Unprivileged processes may do this (`UFFD_USER_MODE_ONLY`, Linux 5.11+). Where the kernel
//! or a sandbox refuses userfaultfd, or refuses a range (memory types write-protect mode does
//! not support), the caller learns it and does not cache that memory.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, OnceLock};

// From <linux/userfaultfd.h> (values checked against the header: `memwatch` tests).
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_REGISTER_MODE_WP: u64 = 2;
const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 0x1;
const UFFD_FEATURE_EVENT_REMAP: u64 = 0x4;
const UFFD_FEATURE_EVENT_REMOVE: u64 = 0x8;
const UFFD_FEATURE_EVENT_UNMAP: u64 = 0x40;
const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 0x1000;
const UFFD_EVENT_REMAP: u8 = 20;
const UFFD_EVENT_REMOVE: u8 = 21;
const UFFD_EVENT_UNMAP: u8 = 22;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

/// `struct uffd_msg`: the event byte, then (at 8) the event's arguments.
#[repr(C)]
#[derive(Clone, Copy)]
struct UffdMsg {
    event: u8,
    _reserved: [u8; 7],
    arg: [u64; 3],
}

/// Invalidations kept for caches that have not looked yet; a cache further behind than this
/// drops everything it holds.
pub const LOG_MAX: usize = 4096;

/// Ranges that went away, numbered.
struct Log {
    /// Number of the next event.
    next: u64,
    /// (number, start, end) of the latest events.
    events: VecDeque<(u64, u64, u64)>,
}

/// The process's watcher: one userfaultfd and the thread that reads it.
pub struct Watcher {
    uffd: OwnedFd,
    log: Mutex<Log>,
    pid: u32,
    /// Whether shared memory (memfd, shmem) can be watched too.
    shared_ok: bool,
}

/// What a cache saw since it last looked.
pub enum Seen {
    /// Events up to (not including) this number were handed to the callback.
    Upto(u64),
    /// Events were dropped before the cache looked: forget everything.
    Lost(u64),
}

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

impl Watcher {
    fn start() -> Result<&'static Watcher, String> {
        let wanted = UFFD_FEATURE_EVENT_UNMAP
            | UFFD_FEATURE_EVENT_REMOVE
            | UFFD_FEATURE_EVENT_REMAP
            | UFFD_FEATURE_PAGEFAULT_FLAG_WP;
        // Shared memory too where the kernel can (5.19+); else anonymous memory alone.
        if let Ok(uffd) = Self::open(wanted | UFFD_FEATURE_WP_HUGETLBFS_SHMEM) {
            return Self::launch(uffd, true);
        }
        log::debug!("memwatch: shared memory cannot be watched on this kernel");
        Self::launch(Self::open(wanted)?, false)
    }

    /// A userfaultfd with the API handshake made for `features` (the handshake may be made
    /// once per descriptor, so each try opens its own).
    fn open(features: u64) -> Result<OwnedFd, String> {
        // SAFETY: a plain system call; the descriptor is owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY,
            )
        };
        if fd < 0 {
            return Err(format!("userfaultfd: {}", errno()));
        }
        // SAFETY: a fresh descriptor this function owns.
        let uffd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: the ioctl reads and writes an `uffdio_api` we own.
        if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api) } != 0 {
            return Err(format!(
                "userfaultfd has no unmap events or write-protect mode here: {}",
                errno()
            ));
        }
        Ok(uffd)
    }

    fn launch(uffd: OwnedFd, shared_ok: bool) -> Result<&'static Watcher, String> {
        let w: &'static Watcher = Box::leak(Box::new(Watcher {
            uffd,
            log: Mutex::new(Log {
                next: 0,
                // Never grown: the watcher must not allocate while it holds the lock.
                events: VecDeque::with_capacity(LOG_MAX + 1),
            }),
            pid: std::process::id(),
            shared_ok,
        }));
        std::thread::Builder::new()
            .name("vmi-memwatch".into())
            .spawn(move || w.run())
            .map_err(|e| format!("cannot start the memory watcher thread: {e}"))?;
        Ok(w)
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The thread: wait for events, then read them all with the log locked (see the module
    /// documentation for why the lock is held while reading).
    fn run(&self) {
        let fd = self.uffd.as_raw_fd();
        loop {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, -1) };
            if n < 0 {
                // The thread must never stop: an unmapping of watched memory waits for it.
                if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                continue;
            }
            let mut log = self.lock();
            loop {
                let mut msg = UffdMsg {
                    event: 0,
                    _reserved: [0; 7],
                    arg: [0; 3],
                };
                let size = std::mem::size_of::<UffdMsg>();
                // SAFETY: reads at most `size` bytes into `msg`, plain data.
                let got = unsafe { libc::read(fd, (&mut msg as *mut UffdMsg).cast(), size) };
                if got != size as isize {
                    break; // EAGAIN: all read
                }
                let range = match msg.event {
                    UFFD_EVENT_UNMAP | UFFD_EVENT_REMOVE => Some((msg.arg[0], msg.arg[1])),
                    UFFD_EVENT_REMAP => Some((msg.arg[0], msg.arg[0].saturating_add(msg.arg[2]))),
                    _ => None,
                };
                if let Some((start, end)) = range {
                    let seq = log.next;
                    log.next += 1;
                    if log.events.len() >= LOG_MAX {
                        log.events.pop_front();
                    }
                    log.events.push_back((seq, start, end));
                }
            }
        }
    }

    /// Watches `start..start+len` (page-aligned). An error says why this memory cannot be
    /// watched (the caller must not cache it).
    pub fn watch(&self, start: u64, len: u64) -> Result<(), String> {
        if std::process::id() != self.pid {
            return Err("a forked child: the watcher runs in the parent".into());
        }
        let mut r = UffdioRegister {
            start,
            len,
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: the ioctl reads and writes an `uffdio_register` we own; registering changes
        // nothing about how the memory behaves (no page is ever write-protected).
        if unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_REGISTER, &mut r) } != 0 {
            let why = errno();
            return Err(if self.shared_ok {
                format!("the kernel cannot watch this memory: {why}")
            } else {
                format!(
                    "the kernel cannot watch this memory (shared memory needs Linux 5.19): {why}"
                )
            });
        }
        Ok(())
    }

    /// Hands `f` every range invalidated from event `since` on, and says up to which event
    /// it saw, all under the lock (so nothing unmapped before this call is missed).
    pub fn since(&self, since: u64, mut f: impl FnMut(u64, u64)) -> Seen {
        let log = self.lock();
        let oldest = log.events.front().map_or(log.next, |e| e.0);
        if since < oldest {
            return Seen::Lost(log.next);
        }
        for &(seq, start, end) in &log.events {
            if seq >= since {
                f(start, end);
            }
        }
        Seen::Upto(log.next)
    }

    /// The number the next event will have.
    pub fn now(&self) -> u64 {
        self.lock().next
    }
}

/// The process's watcher, started on first use, or why there is none.
pub fn watcher() -> Result<&'static Watcher, String> {
    static W: OnceLock<Result<&'static Watcher, String>> = OnceLock::new();
    W.get_or_init(Watcher::start).clone()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh private anonymous mapping of `len` bytes (the regcache tests use it too).
    pub(crate) fn map(len: usize) -> *mut u8 {
        // SAFETY: a fresh anonymous mapping.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p.cast()
    }

    #[test]
    fn munmap_and_dontneed_are_seen_before_they_return() {
        let w = match watcher() {
            Ok(w) => w,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        let len = 1 << 20;
        let p = map(len);
        // SAFETY: our mapping.
        unsafe { std::ptr::write_bytes(p, 1, len) };
        w.watch(p as u64, len as u64).unwrap();
        let t0 = w.now();
        // Writes do not fault (no page is write-protected), from user or kernel mode.
        // SAFETY: in our mapping.
        unsafe { *p.add(5) = 9 };
        let zero = std::fs::File::open("/dev/zero").unwrap();
        // SAFETY: reading /dev/zero into 16 bytes of our mapping.
        let n = unsafe { libc::read(zero.as_raw_fd(), p.add(4096).cast(), 16) };
        assert_eq!(n, 16);
        // SAFETY: part of our mapping.
        unsafe { libc::madvise(p.add(8192).cast(), 4096, libc::MADV_DONTNEED) };
        let mut seen = vec![];
        assert!(matches!(
            w.since(t0, |s, e| seen.push((s, e))),
            Seen::Upto(_)
        ));
        assert!(
            seen.contains(&(p as u64 + 8192, p as u64 + 12288)),
            "MADV_DONTNEED seen as soon as madvise returned: {seen:?}"
        );
        // SAFETY: our mapping, unmapped once.
        unsafe { libc::munmap(p.cast(), len) };
        let mut seen = vec![];
        w.since(t0, |s, e| seen.push((s, e)));
        assert!(
            seen.contains(&(p as u64, p as u64 + len as u64)),
            "munmap seen as soon as it returned: {seen:?}"
        );
    }

    #[test]
    fn a_forked_child_unmaps_watched_memory_without_waiting() {
        let w = match watcher() {
            Ok(w) => w,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        let len = 64 * 1024;
        let p = map(len);
        // SAFETY: our mapping.
        unsafe { std::ptr::write_bytes(p, 1, len) };
        w.watch(p as u64, len as u64).unwrap();
        // SAFETY: the child calls only async-signal-safe functions (alarm, madvise, munmap,
        // _exit) and touches only memory it inherited.
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            // SAFETY: see above; the alarm kills a child that would hang.
            unsafe {
                libc::alarm(10);
                *p = 2;
                libc::madvise(p.cast(), 4096, libc::MADV_DONTNEED);
                libc::munmap(p.cast(), len);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child hung in munmap (killed by its alarm) or failed: status {status:#x}"
        );
        // SAFETY: our mapping.
        unsafe { libc::munmap(p.cast(), len) };
    }
}
