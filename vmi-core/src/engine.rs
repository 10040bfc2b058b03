//! The chain engine (the NT-IRP / Globus XIO model): moves IRBs through the devices of a
//! chain, runs completion steps in reverse, and implements the host services devices call.
//!
//! Devices are never re-entered: a host service called from device code only queues work,
//! and the engine's loop ([`Engine::drive`]) runs it after the device returns.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_queue::SegQueue;

use crate::abi::*;
use crate::buffer::InlinePool;
use crate::conn::{ConnState, ConnTable};
use crate::device::{Capabilities, DeviceKind};
use crate::irb::{Dir, IrbPool, IrbSlot, MAX_PATH, Purpose};
use crate::loader::DeviceType;
use crate::params::ResolvedParam;
use crate::slab::Releases;
use crate::status::Status;
use crate::waker::Waker;

/// Work queued by host services for the engine loop.
enum Work {
    Pass(*mut IrbSlot),
    Complete(*mut IrbSlot, i32),
}

/// State the host services reach through a device's `host` pointer.
pub(crate) struct Shared {
    work: RefCell<VecDeque<Work>>,
    pub pool: RefCell<IrbPool>,
    pub conns: RefCell<ConnTable>,
    remote: SegQueue<(usize, i32)>,
    /// Completions pushed to `remote` and not yet taken: lets the loop skip the queue
    /// (several atomic operations even when empty) with one relaxed load.
    remote_pending: AtomicUsize,
    pub releases: Arc<Releases>,
    pub waker: Waker,
    pub local_key: String,
    pub signature: String,
    /// Per device: position in the receive chain (top-down), or -1.
    recv_pos: Vec<isize>,
}

/// What a device's `host` pointer points at.
pub(crate) struct DeviceCtx {
    shared: *const Shared,
    index: usize,
    frame_off: usize,
}

/// One running device.
pub(crate) struct Instance {
    /// Instance name from the specfile.
    pub name: String,
    pub ty: DeviceType,
    pub ptr: *mut c_void,
    pub frame_off: usize,
    pub caps: Capabilities,
    pub params: Vec<ResolvedParam>,
    _ctx: Box<DeviceCtx>,
}

impl Instance {
    pub fn is_transport(&self) -> bool {
        self.ty.kind == DeviceKind::Transport
    }
}

/// The devices of one process and its send and receive chains.
pub(crate) struct Engine {
    pub devices: Vec<Instance>,
    /// Send chain, engine indices, application first.
    pub send: Vec<usize>,
    /// Receive chain, engine indices, application first.
    pub recv: Vec<usize>,
    /// Transports in send-chain order (the order tried at connect).
    pub transports: Vec<usize>,
    pub shared: Box<Shared>,
    /// IRBs whose outcome the application must hear of, in order.
    pub out: VecDeque<*mut IrbSlot>,
    pub inline: InlinePool,
    /// Scratch for slabs released by the application (see `poll_devices`).
    release_batch: Vec<usize>,
    services: Box<VmiHostServices>,
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

/// A device to start, in engine order.
pub(crate) struct Planned {
    pub name: String,
    pub ty: DeviceType,
    pub params: Vec<ResolvedParam>,
}

impl Engine {
    /// Creates every device. `send`/`recv` are engine indices, application first.
    pub fn start(
        planned: Vec<Planned>,
        send: Vec<usize>,
        recv: Vec<usize>,
        local_key: String,
        signature: String,
    ) -> Result<Engine, crate::loader::LoadError> {
        // Frame layout: one frame per device instance, shared by both chains.
        let mut offsets = Vec::with_capacity(planned.len());
        let mut total = 0usize;
        for p in &planned {
            let align = p.ty.frame_align.max(1);
            total = total.div_ceil(align) * align;
            offsets.push(total);
            total += p.ty.frame_size;
        }
        let mut recv_pos = vec![-1isize; planned.len()];
        for (i, &d) in recv.iter().enumerate() {
            recv_pos[d] = i as isize;
        }
        let transports: Vec<usize> = send
            .iter()
            .copied()
            .filter(|&d| planned[d].ty.kind == DeviceKind::Transport)
            .collect();
        let shared = Box::new(Shared {
            work: RefCell::new(VecDeque::with_capacity(256)),
            pool: RefCell::new(IrbPool::new(total)),
            conns: RefCell::new(ConnTable::default()),
            remote: SegQueue::new(),
            remote_pending: AtomicUsize::new(0),
            releases: Arc::new(Releases::default()),
            waker: Waker::new().map_err(|e| crate::loader::LoadError::CreateFailed {
                device: "(host)".into(),
                origin: "vmi-core".into(),
                reason: format!("cannot create an eventfd: {e}"),
            })?,
            local_key,
            signature,
            recv_pos,
        });
        shared.pool.borrow_mut().reserve(64);
        let services = Box::new(VmiHostServices {
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
            host_marker: &crate::logbridge::MARKER,
        });
        let mut engine = Engine {
            devices: Vec::with_capacity(planned.len()),
            send,
            recv,
            transports,
            shared,
            out: VecDeque::with_capacity(256),
            inline: InlinePool::default(),
            release_batch: Vec::new(),
            services,
        };
        for (index, p) in planned.into_iter().enumerate() {
            let ctx = Box::new(DeviceCtx {
                shared: &*engine.shared,
                index,
                frame_off: offsets[index],
            });
            let names: Vec<(String, String)> = p
                .params
                .iter()
                .map(|r| (r.name.clone(), r.value.clone()))
                .collect();
            let raw: Vec<VmiParam> = names
                .iter()
                .map(|(n, v)| VmiParam {
                    name: VmiStr::new(n),
                    value: VmiStr::new(v),
                })
                .collect();
            let mut out: *mut c_void = std::ptr::null_mut();
            let mut err = [0 as std::ffi::c_char; 1024];
            let create = p.ty.descriptor.create.expect("validated at load");
            // SAFETY: the descriptor was validated; services and ctx outlive the instance
            // (the engine destroys devices before freeing them); params live for the call.
            let rc = unsafe {
                create(
                    &*engine.services,
                    &*ctx as *const DeviceCtx as *mut c_void,
                    raw.as_ptr(),
                    raw.len(),
                    &mut out,
                    err.as_mut_ptr(),
                    err.len(),
                )
            };
            // SAFETY: the device NUL-terminates within the buffer (write_c_message), and
            // the last byte is still 0 if it did not.
            let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            match rc {
                VMI_CREATE_OK if !out.is_null() => {}
                VMI_CREATE_PANICKED => {
                    return Err(crate::loader::LoadError::Panicked {
                        device: p.name,
                        origin: p.ty.origin(),
                        message: msg,
                    });
                }
                _ => {
                    let reason = if msg.is_empty() {
                        format!("create returned {rc}")
                    } else {
                        msg
                    };
                    return Err(crate::loader::LoadError::CreateFailed {
                        device: p.name,
                        origin: p.ty.origin(),
                        reason,
                    });
                }
            }
            engine.devices.push(Instance {
                name: p.name,
                ty: p.ty,
                ptr: out,
                frame_off: offsets[index],
                caps: Capabilities::default(),
                params: p.params,
                _ctx: ctx,
            });
        }
        engine.compute_capabilities();
        Ok(engine)
    }

    /// Asks each device for its capabilities, bottom-up along the send chain.
    fn compute_capabilities(&mut self) {
        let mut below = Capabilities::default();
        for &d in self.send.iter().rev() {
            let inst = &mut self.devices[d];
            let mut caps = if inst.is_transport() {
                Capabilities::default()
            } else {
                below
            };
            if let Some(f) = inst.ty.vtable.capabilities {
                // SAFETY: live instance; `caps` is a valid in/out pointer.
                unsafe { f(inst.ptr, &mut caps) };
            }
            inst.caps = caps;
            if inst.is_transport() {
                below =
                    merge_transport_caps(below, caps, d == *self.transports.last().unwrap_or(&d));
            } else {
                below = caps;
            }
        }
        for &d in self.recv.iter() {
            let inst = &mut self.devices[d];
            if !self.send.contains(&d) {
                let mut caps = Capabilities::default();
                if let Some(f) = inst.ty.vtable.capabilities {
                    // SAFETY: as above.
                    unsafe { f(inst.ptr, &mut caps) };
                }
                inst.caps = caps;
            }
        }
    }

    /// Capabilities the application sees at the top of the send chain.
    pub fn top_caps(&self) -> Capabilities {
        self.send
            .first()
            .map(|&d| self.devices[d].caps)
            .unwrap_or_default()
    }

    /// Takes a clean slot for an application operation.
    pub fn new_slot(&self) -> *mut IrbSlot {
        self.shared.pool.borrow_mut().take()
    }

    /// Returns a slot to the pool, recycling inline buffers.
    pub fn free_slot(&mut self, s: *mut IrbSlot) {
        // SAFETY: `s` is a live slot owned by the engine at this point.
        let bufs = unsafe { &mut (*s).bufs };
        for b in bufs.drain(..) {
            self.inline.give(b);
        }
        // SAFETY: as above; not used afterwards.
        unsafe { self.shared.pool.borrow_mut().give(s) };
    }

    /// Sends an application IRB down the send chain and runs everything that follows.
    pub fn submit(&mut self, s: *mut IrbSlot) {
        // SAFETY: a fresh slot owned by the engine.
        unsafe {
            (*s).dir = Dir::Down;
            (*s).pos = -1;
        }
        self.advance(s);
        self.drive();
    }

    /// Runs queued work until none is left.
    pub fn drive(&mut self) {
        loop {
            // One relaxed load instead of the queue's atomics when nothing came from other threads.
            if self.shared.remote_pending.load(Ordering::Relaxed) > 0 {
                while let Some((p, st)) = self.shared.remote.pop() {
                    self.shared.remote_pending.fetch_sub(1, Ordering::AcqRel);
                    self.shared
                        .work
                        .borrow_mut()
                        .push_back(Work::Complete(p as *mut IrbSlot, st));
                }
            }
            let next = self.shared.work.borrow_mut().pop_front();
            match next {
                None => break,
                Some(Work::Pass(s)) => {
                    // The device that held it passes it on: it joins the completion path.
                    // SAFETY: live slot handed back by its holder.
                    let pos = unsafe { (*s).pos };
                    if let Some(d) = self.device_at(s, pos) {
                        self.push_path(s, d);
                    }
                    self.advance(s);
                }
                Some(Work::Complete(s, st)) => self.finish(s, st),
            }
        }
    }

    fn device_at(&self, s: *mut IrbSlot, pos: isize) -> Option<usize> {
        // SAFETY: live slot.
        let chain = if unsafe { (*s).dir } == Dir::Down {
            &self.send
        } else {
            &self.recv
        };
        usize::try_from(pos)
            .ok()
            .and_then(|p| chain.get(p).copied())
    }

    fn push_path(&self, s: *mut IrbSlot, d: usize) {
        if self.devices[d].ty.vtable.complete.is_none() {
            return;
        }
        // SAFETY: live slot owned by the engine during this call.
        let slot = unsafe { &mut *s };
        if (slot.depth as usize) < MAX_PATH {
            slot.path[slot.depth as usize] = d as u8;
            slot.depth += 1;
        }
    }

    /// Moves an IRB to the next devices until one pends or completes it, or it leaves the chain.
    fn advance(&mut self, s: *mut IrbSlot) {
        loop {
            // SAFETY: live slot; no device holds it while the engine looks at it.
            let (dir, pos, transport) = unsafe { ((*s).dir, (*s).pos, (*s).transport as usize) };
            let chain = if dir == Dir::Down {
                &self.send
            } else {
                &self.recv
            };
            let next = if dir == Dir::Down { pos + 1 } else { pos - 1 };
            if next < 0 {
                self.out.push_back(s); // reached the application
                return;
            }
            if next as usize >= chain.len() {
                // SAFETY: live slot.
                unsafe {
                    (*s).detail = "no transport took the request (a transport passed it on)".into()
                };
                self.finish(s, Status::Internal.code());
                return;
            }
            let d = chain[next as usize];
            // SAFETY: live slot.
            unsafe { (*s).pos = next };
            let inst = &self.devices[d];
            if inst.is_transport() && (dir == Dir::Up || d != transport) {
                continue; // only the owning transport sees a send; none above the one receiving
            }
            let entry = if dir == Dir::Down {
                inst.ty.vtable.submit
            } else {
                inst.ty.vtable.receive
            };
            let Some(f) = entry else {
                continue; // pass-through at no cost
            };
            // SAFETY: live slot; the frame offset belongs to this device.
            let frame = unsafe { (*s).frame_ptr(inst.frame_off) };
            // SAFETY: live instance and IRB; the device follows the ABI's ownership rules.
            let rc = unsafe { f(inst.ptr, s as *mut VmiIrb, frame) };
            match rc {
                VMI_PASS => self.push_path(s, d),
                VMI_COMPLETE => {
                    // SAFETY: the device handed it back.
                    let st = unsafe { (*s).abi.status };
                    self.finish(s, st);
                    return;
                }
                VMI_PENDING => return,
                other => {
                    log::error!(
                        "device '{}' returned {other} from {}; expected 0 (pass), 1 (complete) or 2 (pending)",
                        inst.name,
                        if dir == Dir::Down {
                            "submit"
                        } else {
                            "receive"
                        }
                    );
                    self.finish(s, Status::Internal.code());
                    return;
                }
            }
        }
    }

    /// Runs the completion steps in reverse order, then queues the outcome for the application.
    fn finish(&mut self, s: *mut IrbSlot, status: i32) {
        // SAFETY: live slot.
        unsafe { (*s).abi.status = status };
        self.unwind(s);
        self.out.push_back(s);
    }

    /// Runs the completion steps of the devices on the IRB's path, last first.
    pub fn unwind(&mut self, s: *mut IrbSlot) {
        loop {
            // SAFETY: live slot.
            let slot = unsafe { &mut *s };
            if slot.depth == 0 {
                break;
            }
            slot.depth -= 1;
            let d = slot.path[slot.depth as usize] as usize;
            let inst = &self.devices[d];
            if let Some(c) = inst.ty.vtable.complete {
                let frame = slot.frame_ptr(inst.frame_off);
                // SAFETY: live instance and IRB.
                unsafe { c(inst.ptr, s as *mut VmiIrb, frame) };
            }
        }
        // SAFETY: live slot.
        unsafe { (*s).unwound = true };
    }

    /// Gives a received IRB back to the devices (the application let it go) and frees it.
    pub fn release(&mut self, s: *mut IrbSlot) {
        self.unwind(s);
        self.drive();
        self.free_slot(s);
    }

    /// Lets every device make progress; returns the number of events they reported.
    pub fn poll_devices(&mut self) -> usize {
        let mut events = 0;
        if self.shared.releases.pending.load(Ordering::Relaxed) > 0 {
            // Swap with a kept vector: both keep their capacity, so releasing allocates nothing.
            let mut batch = std::mem::take(&mut self.release_batch);
            {
                let mut q = self
                    .shared
                    .releases
                    .queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                std::mem::swap(&mut *q, &mut batch);
                self.shared
                    .releases
                    .pending
                    .fetch_sub(batch.len(), Ordering::Relaxed);
            }
            events += batch.len();
            for s in batch.drain(..) {
                self.release(s as *mut IrbSlot);
            }
            self.release_batch = batch;
        }
        for i in 0..self.devices.len() {
            if let Some(p) = self.devices[i].ty.vtable.poll {
                // SAFETY: live instance.
                let n = unsafe { p(self.devices[i].ptr) };
                events += n.max(0) as usize;
                self.drive();
            }
        }
        self.drive();
        events
    }

    /// Sleeps until a device's descriptor is ready, a deadline passes, `wake` is called, or
    /// `timeout` elapses.
    pub fn sleep(&mut self, timeout: Duration) {
        // Announce the sleep before looking for work (see `Waker` for the ordering argument).
        self.shared.waker.set_sleeping(true);
        let mut fds = Vec::with_capacity(self.devices.len() + 1);
        fds.push(libc::pollfd {
            fd: self.shared.waker.fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let mut ms = timeout.as_millis().min(i32::MAX as u128) as i64;
        for inst in &self.devices {
            if let Some(w) = inst.ty.vtable.wait_fd {
                let (mut fd, mut t) = (-1i32, -1i64);
                // SAFETY: live instance, valid out-pointers.
                unsafe { w(inst.ptr, &mut fd, &mut t) };
                if fd >= 0 {
                    fds.push(libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    });
                }
                if t >= 0 {
                    ms = ms.min(t);
                }
            }
        }
        let pending = self.shared.remote_pending.load(Ordering::Acquire) > 0
            || self.shared.releases.pending.load(Ordering::Acquire) > 0;
        if !pending && ms > 0 {
            // SAFETY: `fds` is a live array of pollfd of the given length.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms as i32) };
        }
        self.shared.waker.set_sleeping(false);
        self.shared.waker.drain();
    }

    /// The transport that takes a connection to `host`/`key`, with each refusal's reason.
    pub fn choose_transport(
        &mut self,
        host: &str,
        key: &str,
    ) -> Result<usize, Vec<(String, String)>> {
        let mut refusals = Vec::new();
        for &t in &self.transports {
            let inst = &self.devices[t];
            let Some(reach) = inst.ty.vtable.reach else {
                refusals.push((inst.name.clone(), "it does not implement reach".into()));
                continue;
            };
            let mut why = [0 as std::ffi::c_char; 512];
            // SAFETY: live instance; strings live for the call; `why` is a writable buffer.
            let ok = unsafe {
                reach(
                    inst.ptr,
                    VmiStr::new(host),
                    VmiStr::new(key),
                    why.as_mut_ptr(),
                    why.len(),
                )
            };
            if ok == 1 {
                log::info!(
                    "connection to {key}@{host}: transport '{}' ({}) can reach it",
                    inst.name,
                    inst.ty.name
                );
                for (name, reason) in &refusals {
                    log::info!("  transport '{name}' was passed over: {reason}");
                }
                return Ok(t);
            }
            // SAFETY: NUL-terminated by write_c_message (or still all zero).
            let reason = unsafe { std::ffi::CStr::from_ptr(why.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            refusals.push((
                inst.name.clone(),
                if reason.is_empty() {
                    "cannot reach it".into()
                } else {
                    reason
                },
            ));
        }
        Err(refusals)
    }

    /// Reads a device's runtime attribute.
    pub fn get_attr(&self, device: usize, name: &str) -> Option<String> {
        let inst = &self.devices[device];
        let f = inst.ty.vtable.get_attr?;
        let mut buf = vec![0 as std::ffi::c_char; 4096];
        loop {
            // SAFETY: live instance; `buf` is writable for its length.
            let n = unsafe { f(inst.ptr, VmiStr::new(name), buf.as_mut_ptr(), buf.len()) };
            if n < 0 {
                return None;
            }
            if (n as usize) < buf.len() {
                // SAFETY: NUL-terminated by the device within the buffer.
                return Some(
                    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            buf.resize(n as usize + 1, 0);
        }
    }

    /// Changes a device's runtime attribute.
    pub fn set_attr(&mut self, device: usize, name: &str, value: &str) -> Result<(), String> {
        let inst = &self.devices[device];
        let Some(f) = inst.ty.vtable.set_attr else {
            return Err(format!("device '{}' has no runtime attributes", inst.name));
        };
        let mut err = [0 as std::ffi::c_char; 1024];
        // SAFETY: live instance; strings live for the call; `err` is writable.
        let rc = unsafe {
            f(
                inst.ptr,
                VmiStr::new(name),
                VmiStr::new(value),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            // SAFETY: NUL-terminated by the device (or all zero).
            Err(unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }
                .to_string_lossy()
                .into_owned())
        }
    }

    /// Registers memory with every transport; returns the handles.
    pub fn register(&mut self, base: *mut u8, len: usize) -> [u64; 4] {
        let mut regs = [0u64; 4];
        for (i, &t) in self.transports.iter().enumerate().take(4) {
            if let Some(r) = self.devices[t].ty.vtable.register {
                // SAFETY: live instance; the memory is the caller's buffer.
                regs[i] = unsafe { r(self.devices[t].ptr, base, len) };
            }
        }
        regs
    }

    /// Undoes `register`.
    pub fn deregister(&mut self, regs: [u64; 4]) {
        for (i, &t) in self.transports.iter().enumerate().take(4) {
            if regs[i] != 0 {
                if let Some(d) = self.devices[t].ty.vtable.deregister {
                    // SAFETY: live instance; handle from its own `register`.
                    unsafe { d(self.devices[t].ptr, regs[i]) };
                }
            }
        }
    }
}

fn merge_transport_caps(acc: Capabilities, t: Capabilities, first: bool) -> Capabilities {
    if first {
        return t;
    }
    let min_nonzero = |a: u64, b: u64| match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    };
    Capabilities {
        max_fragment: min_nonzero(acc.max_fragment, t.max_fragment),
        headroom: acc.headroom.max(t.headroom),
        tailroom: acc.tailroom.max(t.tailroom),
        max_connect_data: min_nonzero(acc.max_connect_data as u64, t.max_connect_data as u64)
            as u32,
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let outstanding = self
            .shared
            .releases
            .outstanding
            .load(std::sync::atomic::Ordering::Acquire);
        // Return what the application let go of, then deliver nothing more.
        let released: Vec<usize> = std::mem::take(
            &mut *self
                .shared
                .releases
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for s in released {
            self.release(s as *mut IrbSlot);
        }
        while let Some(s) = self.out.pop_front() {
            // SAFETY: slots in `out` are owned by the engine.
            let (purpose, unwound) = unsafe { ((*s).purpose, (*s).unwound) };
            if purpose == Purpose::Received && !unwound {
                self.release(s);
            } else {
                self.free_slot(s);
            }
        }
        if outstanding > 0 {
            log::warn!(
                "{outstanding} grabbed slab(s) still held at shutdown: device memory is kept (leaked) so they stay readable; release slabs before dropping Vmi"
            );
            return;
        }
        for inst in self.devices.iter().rev() {
            if let Some(destroy) = inst.ty.vtable.destroy {
                // SAFETY: each instance is destroyed once, after its last call. IRBs it still
                // held complete through services that stay valid until `self` is gone.
                unsafe { destroy(inst.ptr) };
            }
        }
        // Devices are gone: free whatever they handed back while shutting down.
        let leftover: Vec<Work> = self.shared.work.borrow_mut().drain(..).collect();
        for w in leftover {
            let s = match w {
                Work::Pass(s) | Work::Complete(s, _) => s,
            };
            self.free_slot(s);
        }
        while let Some((p, _)) = self.shared.remote.pop() {
            self.free_slot(p as *mut IrbSlot);
        }
    }
}

// ---- host services -------------------------------------------------------------------

/// # Safety
/// `host` must be a `DeviceCtx` pointer the engine gave a device.
unsafe fn ctx<'a>(host: *mut c_void) -> (&'a DeviceCtx, &'a Shared) {
    // SAFETY: per the contract; the engine outlives its devices.
    unsafe {
        let c = &*(host as *const DeviceCtx);
        (c, &*c.shared)
    }
}

unsafe extern "C" fn svc_pass(host: *mut c_void, irb: *mut VmiIrb) {
    // SAFETY: called by a device with its own host pointer.
    let (_, sh) = unsafe { ctx(host) };
    sh.work
        .borrow_mut()
        .push_back(Work::Pass(irb as *mut IrbSlot));
}

unsafe extern "C" fn svc_complete(host: *mut c_void, irb: *mut VmiIrb, status: i32) {
    // SAFETY: as above.
    let (_, sh) = unsafe { ctx(host) };
    sh.work
        .borrow_mut()
        .push_back(Work::Complete(irb as *mut IrbSlot, status));
}

unsafe extern "C" fn svc_complete_from_thread(host: *mut c_void, irb: *mut VmiIrb, status: i32) {
    // SAFETY: as above; only thread-safe fields are touched.
    let (_, sh) = unsafe { ctx(host) };
    sh.remote.push((irb as usize, status));
    sh.remote_pending.fetch_add(1, Ordering::AcqRel);
    sh.waker.wake();
}

unsafe extern "C" fn svc_irb_alloc(host: *mut c_void, op: u32, conn: u64) -> *mut VmiIrb {
    // SAFETY: as above.
    let (c, sh) = unsafe { ctx(host) };
    let pos = sh.recv_pos[c.index];
    if pos < 0 {
        log::error!("a device outside the receive chain asked for a receive IRB");
        return std::ptr::null_mut();
    }
    let s = sh.pool.borrow_mut().take();
    // SAFETY: fresh slot.
    unsafe {
        (*s).abi.op = op;
        (*s).abi.conn = conn;
        (*s).dir = Dir::Up;
        (*s).pos = pos;
        (*s).transport = c.index as u8;
        (*s).purpose = Purpose::Received;
    }
    s as *mut VmiIrb
}

unsafe extern "C" fn svc_irb_frame(host: *mut c_void, irb: *mut VmiIrb) -> *mut u8 {
    // SAFETY: as above; `irb` is a live slot the device holds.
    let (c, _) = unsafe { ctx(host) };
    // SAFETY: as above.
    unsafe { (*(irb as *mut IrbSlot)).frame_ptr(c.frame_off) }
}

unsafe extern "C" fn svc_irb_attach(
    _host: *mut c_void,
    irb: *mut VmiIrb,
    data: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: live slot held by the calling device.
    let slot = unsafe { &mut *(irb as *mut IrbSlot) };
    if slot.abi.nseg as usize >= VMI_IRB_MAX_SEGS {
        return -1;
    }
    let copy = if len == 0 {
        Vec::new()
    } else {
        // SAFETY: the device passes `len` readable bytes.
        unsafe { std::slice::from_raw_parts(data, len) }.to_vec()
    };
    let ptr = copy.as_ptr() as *mut u8;
    slot.attached.push(copy); // moving the Vec keeps its heap buffer in place
    slot.push_seg(ptr, len);
    0
}

unsafe extern "C" fn svc_irb_set_peer(
    _host: *mut c_void,
    irb: *mut VmiIrb,
    peer_host: VmiStr,
    peer_key: VmiStr,
) {
    // SAFETY: live slot; the strings live for the call.
    let slot = unsafe { &mut *(irb as *mut IrbSlot) };
    // SAFETY: as above.
    let (h, k) = unsafe { (peer_host.to_string_lossy(), peer_key.to_string_lossy()) };
    slot.peer_host = h;
    slot.peer_key = k;
    slot.sync_peer();
}

unsafe extern "C" fn svc_irb_set_detail(_host: *mut c_void, irb: *mut VmiIrb, detail: VmiStr) {
    // SAFETY: live slot; the string lives for the call.
    let slot = unsafe { &mut *(irb as *mut IrbSlot) };
    // SAFETY: as above.
    slot.detail = unsafe { detail.to_string_lossy() };
}

unsafe extern "C" fn svc_conn_new(host: *mut c_void) -> u64 {
    // SAFETY: as above.
    let (c, sh) = unsafe { ctx(host) };
    sh.conns
        .borrow_mut()
        .alloc(c.index, ConnState::Incoming)
        .raw()
}

unsafe extern "C" fn svc_local_key(host: *mut c_void) -> VmiStr {
    // SAFETY: as above; the string lives as long as the engine.
    let (_, sh) = unsafe { ctx(host) };
    VmiStr::new(&sh.local_key)
}

unsafe extern "C" fn svc_signature(host: *mut c_void) -> VmiStr {
    // SAFETY: as above.
    let (_, sh) = unsafe { ctx(host) };
    VmiStr::new(&sh.signature)
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
    // SAFETY: as above; the waker is thread-safe.
    let (_, sh) = unsafe { ctx(host) };
    sh.waker.wake();
}
