//! The host services devices call (the `VmiHostServices` table), and the state they reach.
//!
//! Safety of the boundary:
//! - Devices are never re-entered: services called from device code only queue work
//!   ([`Work`]); the engine runs it after the device returns.
//! - The services table, each device's context and the cross-thread inbox ([`Remote`]) are
//!   leaked on purpose (a few hundred bytes per `Vmi`): a device may keep a `Host`,
//!   `Completer` or `HostWaker` past the engine's end (in a thread it did not join, or a
//!   thread-local), and every pointer those hold must stay valid. When the engine ends it
//!   retires them: polling-thread services then do nothing (and say so), and completions
//!   from other threads are dropped with a log line instead of touching freed memory.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crossbeam_queue::SegQueue;

use crate::abi::*;
use crate::conn::ConnTable;
use crate::slot::{Class, DevIndex, Dir, IrbPool, Purpose, Slot};
use crate::waker::Waker;

/// Work queued by host services for the engine loop.
pub(crate) enum Work {
    /// A device that pended the IRB hands it on.
    Pass(Slot),
    /// A device completes the IRB with this status.
    Complete(Slot, i32),
}

/// A count that only the thread driving the engine changes and reads: atomic loads and
/// stores (no read-modify-write, so no cost over a `Cell`), only so that the engine that
/// owns it, and the slabs that borrow it, may move to another thread with their `Vmi`.
#[derive(Debug, Default)]
pub(crate) struct Count(std::sync::atomic::AtomicUsize);

impl Count {
    /// The value.
    #[inline]
    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the value.
    #[inline]
    pub fn set(&self, v: usize) {
        self.0.store(v, std::sync::atomic::Ordering::Relaxed)
    }
}

/// State of one engine that services reach on the polling thread.
pub(crate) struct Shared {
    pub work: RefCell<VecDeque<Work>>,
    pub pool: RefCell<IrbPool>,
    pub conns: RefCell<ConnTable>,
    pub local_key: String,
    pub signature: String,
    /// Per device: position in the receive chain (top-down), or -1.
    pub recv_pos: Vec<isize>,
    /// The same for each named chain (chain 1 first).
    pub extra_recv_pos: RefCell<Vec<Vec<isize>>>,
    /// Whether there are named chains (one load on the receive path when there are none).
    pub named: std::cell::Cell<bool>,
    /// Received fragments held now: receive IRBs in flight and grabbed copies of lent
    /// bytes (shared with the slabs that count a grab).
    pub recv_live: std::sync::Arc<Count>,
    /// Most application sends in flight at once.
    pub send_limit: usize,
    /// Application sends in flight now.
    pub send_live: std::cell::Cell<usize>,
    /// Completions devices made through the `complete` service (a counter: the engine
    /// compares it around a device call).
    pub completed: std::cell::Cell<u64>,
}

impl Shared {
    /// Receive IRBs that may still be allocated: [`crate::MAX_RECEIVES_IN_FLIGHT`] less the
    /// received fragments held now (what `irb_available` answers; a poll's budget is at most
    /// this).
    #[inline(always)]
    pub fn receive_room(&self) -> usize {
        crate::MAX_RECEIVES_IN_FLIGHT.saturating_sub(self.recv_live.get())
    }
}

/// What other threads reach: completions and wake-ups.
pub(crate) struct Remote {
    queue: SegQueue<(usize, i32)>,
    /// Completions pushed and not yet taken: lets the loop skip the queue (several atomic
    /// operations even when empty) with one relaxed load.
    pending: AtomicUsize,
    /// The engine's doorbell while the engine lives; `None` once it is gone.
    waker: RwLock<Option<Arc<Waker>>>,
}

impl Remote {
    /// True when completions from other threads wait.
    #[inline]
    pub fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed) > 0
    }

    /// As `has_pending`, ordered with the waker protocol (before sleeping).
    pub fn has_pending_acquire(&self) -> bool {
        self.pending.load(Ordering::Acquire) > 0
    }

    /// Takes one completion from another thread.
    pub fn pop(&self) -> Option<(Slot, i32)> {
        let (p, st) = self.queue.pop()?;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        // SAFETY: the address was pushed by `complete_from_thread` for an IRB a device owned
        // (a RemoteIrb is the unique handle) and gave back by this very call.
        Some((unsafe { Slot::from_raw(p as *mut VmiIrb) }, st))
    }

    fn push(&self, irb: *mut VmiIrb, status: i32) {
        let gate = self.waker.read().unwrap_or_else(|e| e.into_inner());
        match gate.as_ref() {
            Some(w) => {
                self.queue.push((irb as usize, status));
                self.pending.fetch_add(1, Ordering::AcqRel);
                w.wake();
            }
            None => log::error!(
                "a device completed IRB {irb:p} from another thread after its vmi instance ended; the completion is dropped (join device threads in the device's Drop)"
            ),
        }
    }

    fn wake(&self) {
        let gate = self.waker.read().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = gate.as_ref() {
            w.wake();
        }
    }
}

/// What a device's `host` pointer points at. Leaked (see the module docs).
pub(crate) struct DeviceCtx {
    /// The engine's shared state; NULL once the engine ended.
    shared: AtomicPtr<Shared>,
    index: DevIndex,
    frame_off: usize,
    remote: &'static Remote,
    /// What the device lent the host.
    lent: Loans,
}

/// Where a device announces what it lent the host: each NULL, or its set.
#[derive(Debug)]
pub(crate) struct Loans {
    /// Its receive (and send) rings (ABI 1.7 `lend_rings`).
    pub rings: AtomicPtr<VmiRingSet>,
    /// Its stream sockets (ABI 1.8 `lend_streams`).
    pub streams: AtomicPtr<VmiStreamSet>,
}

/// Where one device announces what it lent (see [`Loans`]).
pub(crate) type LentSet = &'static Loans;

/// The leaked pieces of one engine.
pub(crate) struct Boundary {
    pub services: &'static VmiHostServices,
    pub remote: &'static Remote,
    ctxs: Vec<&'static DeviceCtx>,
}

// SAFETY: the services table is immutable once made and lives for the process; the contexts
// and the inbox are reached by other threads only through their atomics (`complete_from_thread`,
// `wake`). The rest of the services are called by devices during the engine's calls, on
// whichever thread drives the engine then.
unsafe impl Send for Boundary {}

impl Boundary {
    /// Creates the services table, the inbox and one context per device (frame offsets in
    /// engine order).
    pub fn new(shared: &Shared, waker: Arc<Waker>, frame_offsets: &[usize]) -> Boundary {
        let services: &'static VmiHostServices = Box::leak(Box::new(VmiHostServices {
            size: std::mem::size_of::<VmiHostServices>() as u32,
            abi_minor: VMI_ABI_MINOR as u32,
            pass: svc_pass,
            complete: svc_complete,
            complete_from_thread: svc_complete_from_thread,
            irb_alloc: svc_irb_alloc,
            irb_frame: svc_irb_frame,
            irb_attach: svc_irb_attach,
            irb_set_peer: svc_irb_set_peer,
            irb_set_detail: svc_irb_set_detail,
            conn_new: svc_conn_new,
            local_key: svc_local_key,
            signature: svc_signature,
            log: svc_log,
            wake: svc_wake,
            max_log_level: log_level_code(),
            host_marker: &vmi_device::logbridge::MARKER,
            irb_available: svc_irb_available,
            lend_rings: svc_lend_rings,
            lend_streams: svc_lend_streams,
        }));
        let remote: &'static Remote = Box::leak(Box::new(Remote {
            queue: SegQueue::new(),
            pending: AtomicUsize::new(0),
            waker: RwLock::new(Some(waker)),
        }));
        let ctxs = frame_offsets
            .iter()
            .enumerate()
            .map(|(i, &frame_off)| {
                &*Box::leak(Box::new(DeviceCtx {
                    shared: AtomicPtr::new(shared as *const Shared as *mut Shared),
                    index: i as DevIndex,
                    frame_off,
                    remote,
                    lent: Loans {
                        rings: AtomicPtr::new(std::ptr::null_mut()),
                        streams: AtomicPtr::new(std::ptr::null_mut()),
                    },
                }))
            })
            .collect();
        Boundary {
            services,
            remote,
            ctxs,
        }
    }

    /// The `host` pointer for device `i`.
    pub fn host_ptr(&self, i: usize) -> *mut c_void {
        self.ctxs[i] as *const DeviceCtx as *mut c_void
    }

    /// Where device `i`'s lent rings and streams are announced (see `direct::poll_one` and
    /// `Engine::send_direct`).
    pub fn lent(&self, i: usize) -> LentSet {
        &self.ctxs[i].lent
    }

    /// The engine ends: services stop reaching its state, other threads stop queueing.
    /// Returns completions that arrived from other threads and were never taken.
    pub fn retire(&self) -> Vec<Slot> {
        for c in &self.ctxs {
            c.shared.store(std::ptr::null_mut(), Ordering::Release);
        }
        *self.remote.waker.write().unwrap_or_else(|e| e.into_inner()) = None;
        let mut left = Vec::new();
        while let Some((s, _)) = self.remote.pop() {
            left.push(s);
        }
        left
    }
}

fn log_level_code() -> u32 {
    match log::max_level() {
        log::LevelFilter::Off => 0,
        log::LevelFilter::Error => VMI_LOG_ERROR,
        log::LevelFilter::Warn => VMI_LOG_WARN,
        log::LevelFilter::Info => VMI_LOG_INFO,
        log::LevelFilter::Debug => VMI_LOG_DEBUG,
        log::LevelFilter::Trace => VMI_LOG_TRACE,
    }
}

/// # Safety
/// `host` must be a `DeviceCtx` pointer the engine gave a device (they are never freed).
unsafe fn device_ctx<'a>(host: *mut c_void) -> &'a DeviceCtx {
    // SAFETY: per the contract; contexts are leaked, so the reference stays valid.
    unsafe { &*(host as *const DeviceCtx) }
}

/// The engine state behind a device's `host`, or `None` (logged) once the engine ended.
///
/// # Safety
/// As for [`device_ctx`], and only on the polling thread.
unsafe fn live<'a>(host: *mut c_void, what: &str) -> Option<(&'a DeviceCtx, &'a Shared)> {
    // SAFETY: forwarded.
    let c = unsafe { device_ctx(host) };
    let sh = c.shared.load(Ordering::Acquire);
    if sh.is_null() {
        log::error!("a device called the host service '{what}' after its vmi instance ended");
        return None;
    }
    // SAFETY: non-NULL means the engine is alive; it owns `Shared` in a Box that does not
    // move, and services run on the polling thread, never during the engine's drop.
    Some((c, unsafe { &*sh }))
}

unsafe extern "C" fn svc_pass(host: *mut c_void, irb: *mut VmiIrb) {
    // SAFETY: called by a device with its own host pointer, on the polling thread.
    if let Some((_, sh)) = unsafe { live(host, "pass") } {
        // SAFETY: the device gives back the IRB it held (its handle is consumed).
        let s = unsafe { Slot::from_raw(irb) };
        sh.work.borrow_mut().push_back(Work::Pass(s));
    }
}

unsafe extern "C" fn svc_complete(host: *mut c_void, irb: *mut VmiIrb, status: i32) {
    // SAFETY: as for `svc_pass`.
    if let Some((_, sh)) = unsafe { live(host, "complete") } {
        // SAFETY: as for `svc_pass`.
        let s = unsafe { Slot::from_raw(irb) };
        sh.work.borrow_mut().push_back(Work::Complete(s, status));
        sh.completed.set(sh.completed.get().wrapping_add(1));
    }
}

unsafe extern "C" fn svc_complete_from_thread(host: *mut c_void, irb: *mut VmiIrb, status: i32) {
    // SAFETY: a device's own host pointer; only the leaked, thread-safe inbox is touched.
    let c = unsafe { device_ctx(host) };
    c.remote.push(irb, status);
}

unsafe extern "C" fn svc_irb_alloc(host: *mut c_void, op: u32, conn: u64) -> *mut VmiIrb {
    // SAFETY: as for `svc_pass`.
    let Some((c, sh)) = (unsafe { live(host, "irb_alloc") }) else {
        return std::ptr::null_mut();
    };
    // The connection's chain decides the receive path (named chains are rare: one check).
    let chain = if !sh.named.get() {
        0
    } else {
        match sh.conns.try_borrow() {
            Ok(t) => t.chain(crate::conn::ConnId(conn)),
            Err(_) => {
                log::error!(
                    "a receive IRB was asked for while the connection table was in use; it takes the receive chain"
                );
                0
            }
        }
    };
    let pos = match chain {
        0 => sh.recv_pos[c.index as usize],
        n => sh.extra_recv_pos.borrow()[n as usize - 1][c.index as usize],
    };
    if pos < 0 {
        log::error!("a device outside the receive chain asked for a receive IRB");
        return std::ptr::null_mut();
    }
    if sh.receive_room() == 0 {
        return std::ptr::null_mut();
    }
    sh.recv_live.set(sh.recv_live.get() + 1);
    let mut s = sh.pool.borrow_mut().take();
    s.set_class(Class::Recv);
    s.set_op(op);
    s.set_conn_raw(conn);
    s.enter(Dir::Up, pos);
    s.set_chain(chain);
    s.set_transport(c.index);
    s.set_purpose(Purpose::Received);
    s.into_raw()
}

unsafe extern "C" fn svc_irb_available(host: *mut c_void) -> u32 {
    // SAFETY: as for `svc_pass`.
    let Some((_, sh)) = (unsafe { live(host, "irb_available") }) else {
        return 0;
    };
    sh.receive_room().min(u32::MAX as usize) as u32
}

unsafe extern "C" fn svc_lend_rings(host: *mut c_void, set: *mut VmiRingSet) {
    // SAFETY: a device's own host pointer (contexts are never freed, so this holds even
    // after the engine ended, when a device drops its set).
    let c = unsafe { device_ctx(host) };
    // Read only by the polling thread, which is the caller's (the ABI's rule).
    c.lent.rings.store(set, Ordering::Relaxed);
}

unsafe extern "C" fn svc_lend_streams(host: *mut c_void, set: *mut VmiStreamSet) {
    // SAFETY: as in `svc_lend_rings`.
    let c = unsafe { device_ctx(host) };
    // Read only by the polling thread, which is the caller's (the ABI's rule).
    c.lent.streams.store(set, Ordering::Relaxed);
}

unsafe extern "C" fn svc_irb_frame(host: *mut c_void, irb: *mut VmiIrb) -> *mut u8 {
    // SAFETY: a device's own host pointer.
    let c = unsafe { device_ctx(host) };
    // SAFETY: `irb` is a live slot the device holds; the slot is only borrowed here (the
    // handle is not dropped, the device keeps owning it).
    let mut s = std::mem::ManuallyDrop::new(unsafe { Slot::from_raw(irb) });
    s.frame_ptr(c.frame_off)
}

unsafe extern "C" fn svc_irb_attach(
    _host: *mut c_void,
    irb: *mut VmiIrb,
    data: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: a live slot held by the calling device, borrowed for this call.
    let mut s = std::mem::ManuallyDrop::new(unsafe { Slot::from_raw(irb) });
    let bytes = if len == 0 || data.is_null() {
        &[][..]
    } else {
        // SAFETY: the device passes `len` readable bytes.
        unsafe { std::slice::from_raw_parts(data, len) }
    };
    if s.attach_copy(bytes) { 0 } else { -1 }
}

unsafe extern "C" fn svc_irb_set_peer(
    _host: *mut c_void,
    irb: *mut VmiIrb,
    peer_host: VmiStr,
    peer_key: VmiStr,
) {
    // SAFETY: as for `svc_irb_attach`.
    let mut s = std::mem::ManuallyDrop::new(unsafe { Slot::from_raw(irb) });
    // SAFETY: the strings live for the call.
    let (h, k) = unsafe { (peer_host.to_string_lossy(), peer_key.to_string_lossy()) };
    s.set_peer(h, k);
}

unsafe extern "C" fn svc_irb_set_detail(_host: *mut c_void, irb: *mut VmiIrb, detail: VmiStr) {
    // SAFETY: as for `svc_irb_attach`.
    let mut s = std::mem::ManuallyDrop::new(unsafe { Slot::from_raw(irb) });
    // SAFETY: the string lives for the call.
    s.set_detail(unsafe { detail.to_string_lossy() });
}

unsafe extern "C" fn svc_conn_new(host: *mut c_void) -> u64 {
    // SAFETY: as for `svc_pass`.
    let Some((c, sh)) = (unsafe { live(host, "conn_new") }) else {
        return 0;
    };
    sh.conns.borrow_mut().incoming(c.index).raw()
}

unsafe extern "C" fn svc_local_key(host: *mut c_void) -> VmiStr {
    // SAFETY: as for `svc_pass`; the string lives as long as the engine.
    match unsafe { live(host, "local_key") } {
        Some((_, sh)) => VmiStr::new(&sh.local_key),
        None => VmiStr::EMPTY,
    }
}

unsafe extern "C" fn svc_signature(host: *mut c_void) -> VmiStr {
    // SAFETY: as for `svc_local_key`.
    match unsafe { live(host, "signature") } {
        Some((_, sh)) => VmiStr::new(&sh.signature),
        None => VmiStr::EMPTY,
    }
}

unsafe extern "C" fn svc_log(_host: *mut c_void, level: u32, target: VmiStr, msg: VmiStr) {
    let level = match level {
        VMI_LOG_ERROR => log::Level::Error,
        VMI_LOG_WARN => log::Level::Warn,
        VMI_LOG_INFO => log::Level::Info,
        VMI_LOG_DEBUG => log::Level::Debug,
        _ => log::Level::Trace,
    };
    // SAFETY: strings live for the call.
    let (target, msg) = unsafe { (target.to_string_lossy(), msg.to_string_lossy()) };
    log::logger().log(
        &log::Record::builder()
            .level(level)
            .target(&target)
            .args(format_args!("{msg}"))
            .build(),
    );
}

unsafe extern "C" fn svc_wake(host: *mut c_void) {
    // SAFETY: a device's own host pointer; only the thread-safe inbox is touched.
    let c = unsafe { device_ctx(host) };
    c.remote.wake();
}
