//! One device alone, with the host simulated in the test (gst-plugins-rs `Harness`,
//! tower-test `mock`): submit IRBs, feed received bytes, poll, and see what the device passed
//! down or up, completed, or kept.
//!
//! The harness plays both neighbours. Above the device it is the application; below it, the
//! next device (for a filter) or the wire (for a transport). An IRB the device passes on is
//! captured as a [`Packet`] and at once finished by the harness with success, which runs the
//! device's completion step as the real engine would; an IRB the device completes comes back
//! as [`Outcome::Completed`]; one it keeps is [`Outcome::Pending`] until it passes or
//! completes it from `poll` (or another thread), reported as an [`Event`].
//!
//! The device is driven through its C-ABI descriptor, so the `export_device!` trampolines
//! (panic catching included) are part of what is tested. A device that panics completes the
//! IRB with [`Status::Internal`]: a conformant device never does.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_void};
use std::path::Path;
use std::sync::Mutex;

use vmi_device::abi::*;
use vmi_device::param::ParamKind;
use vmi_device::{Capabilities, Device, Op, Status};

/// What became of an IRB given to the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The device passed it on (down for a submit, up for a receive); what it passed.
    Passed(Packet),
    /// The device completed it with this status and detail.
    Completed(Status, String),
    /// The device kept it; it will pass or complete it later (see [`Harness::poll`]).
    Pending,
}

impl Outcome {
    /// The packet, or a panic naming what happened instead.
    pub fn passed(self) -> Packet {
        match self {
            Outcome::Passed(p) => p,
            other => panic!("the device did not pass the IRB on: {other:?}"),
        }
    }
}

/// An IRB as it left the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Operation.
    pub op: Op,
    /// Connection handle.
    pub conn: u64,
    /// Flags (`VMI_FLAG_*`, filter bits in the upper half).
    pub flags: u32,
    /// The bytes of all segments, in order.
    pub data: Vec<u8>,
    /// Number of segments.
    pub segments: usize,
    /// Peer host and key (connect and connect-request IRBs).
    pub peer: (String, String),
}

/// Something the device did outside a direct call (from `poll`, or with an IRB it had kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// It passed an IRB down (a send it had kept).
    PassedDown(Packet),
    /// It passed an IRB up (a receive it had kept, or one it allocated: a transport).
    PassedUp(Packet),
    /// It completed an IRB (from the polling thread or another one).
    Completed {
        /// The IRB's operation.
        op: Op,
        /// Status.
        status: Status,
        /// Detail text.
        detail: String,
    },
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Block([u8; 64]);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Submitted by the harness as the application (travels down).
    Above,
    /// Fed by the harness as the wire or the device below (travels up).
    Below,
    /// Allocated by the device itself (a transport; travels up).
    Device,
}

/// An IRB the harness owns. `abi` first: the device sees `*mut HIrb` as `*mut VmiIrb`.
#[repr(C)]
struct HIrb {
    abi: VmiIrb,
    origin: Origin,
    /// True once the device joined the IRB's completion path (it passed it on).
    joined: bool,
    payload: Vec<u8>,
    attached: Vec<Vec<u8>>,
    peer_host: String,
    peer_key: String,
    detail: String,
    frame: Box<[Block]>,
}

enum Call {
    Pass(usize),
    Complete(usize, i32),
}

/// What the device's `host` pointer points at.
struct HostState {
    calls: RefCell<Vec<Call>>,
    remote: Mutex<Vec<(usize, i32)>>,
    // Boxed on purpose: the device holds pointers to these IRBs, which must not move.
    #[allow(clippy::vec_box)]
    allocated: RefCell<Vec<Box<HIrb>>>,
    local_key: String,
    signature: String,
    next_conn: Cell<u64>,
    available: Cell<u32>,
    frame_blocks: usize,
    wakes: Mutex<u64>,
}

/// One device, alone, driven by the test.
pub struct Harness {
    name: String,
    vt: VmiDeviceVtable,
    dev: *mut c_void,
    host: Box<HostState>,
    services: Box<VmiHostServices>,
    irbs: HashMap<usize, Box<HIrb>>,
    events: Vec<Event>,
}

impl Harness {
    /// The device type `D`, through the descriptor `export_device!` builds for it, with
    /// `params` over the declared defaults.
    pub fn new<D: Device>(params: &[(&str, &str)]) -> Result<Harness, String> {
        let desc = vmi_device::export::Export::<D>::DESCRIPTOR;
        // SAFETY: a descriptor built by export_device! is complete and 'static.
        unsafe { Harness::from_descriptor(&desc, params) }
    }

    /// The device of type `type_name` from the shared object at `path` (loaded and checked
    /// by the host's loader), with `params` over the declared defaults.
    pub fn load(path: &Path, type_name: &str, params: &[(&str, &str)]) -> Result<Harness, String> {
        let ty = vmi_core::loader::load_library(path, type_name).map_err(|e| e.to_string())?;
        let mut desc = ty.descriptor();
        let vt = ty.vtable();
        desc.vtable = &vt;
        // SAFETY: the loader validated the descriptor and copied its vtable to this host's
        // layout; the library stays loaded for the process.
        unsafe { Harness::from_descriptor(&desc, params) }
    }

    /// # Safety
    /// `desc` must be a valid descriptor whose vtable is at least this host's size, and whose
    /// strings and functions live for the process.
    unsafe fn from_descriptor(
        desc: &VmiDeviceDescriptor,
        params: &[(&str, &str)],
    ) -> Result<Harness, String> {
        // SAFETY: per the contract.
        let vt = unsafe { *desc.vtable };
        // SAFETY: descriptor strings are NUL-terminated statics.
        let name = unsafe { text(desc.name) };
        let mut values: Vec<(String, String)> = Vec::new();
        for i in 0..desc.nparams {
            // SAFETY: `nparams` entries of static strings.
            let p = unsafe { &*desc.params.add(i) };
            // SAFETY: as above.
            let (pname, default) = unsafe { (text(p.name), text(p.default_value)) };
            let given = params.iter().find(|(n, _)| *n == pname).map(|(_, v)| *v);
            let value = match given {
                Some(v) => ParamKind::from_code(p.kind).check(v).map_err(|expected| {
                    format!("parameter '{pname}' = \"{v}\": expected {expected}")
                })?,
                None => default,
            };
            values.push((pname, value));
        }
        for (n, _) in params {
            if !values.iter().any(|(v, _)| v == n) {
                return Err(format!("device '{name}' declares no parameter '{n}'"));
            }
        }
        let host = Box::new(HostState {
            calls: RefCell::new(Vec::new()),
            remote: Mutex::new(Vec::new()),
            allocated: RefCell::new(Vec::new()),
            local_key: "harness".into(),
            signature: "send=;recv=".into(),
            next_conn: Cell::new(1),
            available: Cell::new(u32::MAX),
            frame_blocks: (desc.frame_size as usize).div_ceil(64),
            wakes: Mutex::new(0),
        });
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
            max_log_level: VMI_LOG_TRACE,
            // Not the host's marker: a device linked into the test forwards nothing.
            host_marker: &vmi_device::logbridge::MARKER,
            irb_available: svc_irb_available,
            lend_rings: svc_lend_rings,
            lend_streams: svc_lend_streams,
        });
        let raw: Vec<VmiParam> = values
            .iter()
            .map(|(n, v)| VmiParam {
                name: VmiStr::new(n),
                value: VmiStr::new(v),
            })
            .collect();
        let create = desc.create.ok_or("the descriptor has no create function")?;
        let mut out: *mut c_void = std::ptr::null_mut();
        let mut err = [0 as c_char; 1024];
        // SAFETY: services and host outlive the device (the harness destroys it first in
        // Drop); params live for the call; `err` is writable for len - 1 bytes.
        let rc = unsafe {
            create(
                &*services,
                &*host as *const HostState as *mut c_void,
                raw.as_ptr(),
                raw.len(),
                &mut out,
                err.as_mut_ptr(),
                err.len() - 1,
            )
        };
        if rc != VMI_CREATE_OK || out.is_null() {
            // SAFETY: NUL-terminated (the last byte is never written).
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            return Err(format!("device '{name}' failed to start ({rc}): {msg}"));
        }
        Ok(Harness {
            name,
            vt,
            dev: out,
            host,
            services,
            irbs: HashMap::new(),
            events: Vec::new(),
        })
    }

    /// The device's type name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Limits how many receive IRBs the device may allocate (`irb_available`, back-pressure).
    pub fn set_irbs_available(&mut self, n: u32) {
        self.host.available.set(n);
    }

    /// The device's capabilities given those of the devices below.
    pub fn capabilities(&mut self, below: Capabilities) -> Capabilities {
        let mut caps = below;
        if let Some(f) = self.vt.capabilities {
            // SAFETY: live instance; `caps` is a valid in/out pointer.
            unsafe { f(self.dev, &mut caps) };
        }
        caps
    }

    /// Reads a runtime attribute.
    pub fn attr(&self, name: &str) -> Option<String> {
        let f = self.vt.get_attr?;
        let mut buf = vec![0 as c_char; 4096];
        // SAFETY: live instance; `buf` writable for len - 1 bytes, last byte NUL.
        let n = unsafe { f(self.dev, VmiStr::new(name), buf.as_mut_ptr(), buf.len() - 1) };
        (n >= 0).then(|| {
            // SAFETY: NUL-terminated (the last byte is never written).
            unsafe { CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        })
    }

    /// Submits an IRB from above (as the application): a send of `parts` with `flags`, or a
    /// control operation (connect, disconnect) with `parts` as its data.
    pub fn submit(&mut self, op: Op, conn: u64, parts: &[&[u8]], flags: u32) -> Outcome {
        let irb = self.new_irb(Origin::Above, op, conn, parts, flags);
        let entry = self.vt.submit;
        self.run(irb, entry)
    }

    /// Feeds an IRB from below (as the wire, or the device underneath): a received fragment
    /// of `parts` with `flags`, or a connect request / peer disconnect.
    pub fn receive(&mut self, op: Op, conn: u64, parts: &[&[u8]], flags: u32) -> Outcome {
        let irb = self.new_irb(Origin::Below, op, conn, parts, flags);
        let entry = self.vt.receive;
        self.run(irb, entry)
    }

    /// Lets the device make progress (at most `budget` IRBs handed up); returns the events it
    /// reported, then everything it did, as [`Event`]s (also kept for [`Harness::events`]).
    pub fn poll(&mut self, budget: u32) -> usize {
        let n = if let Some(p) = self.vt.poll_budget {
            // SAFETY: live instance.
            unsafe { p(self.dev, budget) }
        } else if let Some(p) = self.vt.poll {
            // SAFETY: live instance.
            unsafe { p(self.dev) }
        } else {
            0
        };
        self.settle();
        n.max(0) as usize
    }

    /// Everything the device did outside direct calls since the last call, in order.
    pub fn events(&mut self) -> Vec<Event> {
        self.settle();
        std::mem::take(&mut self.events)
    }

    /// IRBs the device holds now (pending, or allocated and not yet passed up).
    pub fn held(&self) -> usize {
        self.irbs.len()
    }

    /// Times the device rang the host's doorbell.
    pub fn wakes(&self) -> u64 {
        *self.host.wakes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_irb(
        &mut self,
        origin: Origin,
        op: Op,
        conn: u64,
        parts: &[&[u8]],
        flags: u32,
    ) -> Box<HIrb> {
        let mut irb = blank(self.host.frame_blocks, origin);
        irb.abi.op = op.code();
        irb.abi.conn = conn;
        irb.abi.flags = flags;
        assert!(
            parts.len() <= VMI_IRB_MAX_SEGS,
            "an IRB carries at most {VMI_IRB_MAX_SEGS} segments; {} given",
            parts.len()
        );
        // One payload vector holds every part; segments point into it.
        irb.payload = parts.concat();
        let base = irb.payload.as_mut_ptr();
        let mut off = 0;
        for (i, p) in parts.iter().enumerate() {
            // SAFETY: off + p.len() <= payload.len() (the parts were concatenated).
            let at = unsafe { base.add(off) };
            irb.abi.segs[i] = VmiSeg {
                base: at,
                len: p.len(),
            };
            off += p.len();
        }
        irb.abi.nseg = parts.len().min(VMI_IRB_MAX_SEGS) as u32;
        irb
    }

    fn run(
        &mut self,
        mut irb: Box<HIrb>,
        entry: Option<unsafe extern "C" fn(*mut c_void, *mut VmiIrb, *mut u8) -> i32>,
    ) -> Outcome {
        let Some(f) = entry else {
            // No hook: the device passes everything through at no cost.
            let p = packet(&irb);
            return Outcome::Passed(p);
        };
        let frame = irb.frame.as_mut_ptr() as *mut u8;
        let raw = Box::into_raw(irb);
        // SAFETY: live instance; the device gets a live IRB and its frame, and follows the
        // ownership rules (hands it back on PASS/COMPLETE, keeps it on PENDING).
        let rc = unsafe { f(self.dev, raw as *mut VmiIrb, frame) };
        let outcome = match rc {
            VMI_PASS | VMI_COMPLETE => {
                // SAFETY: the device handed the IRB back.
                let mut irb = unsafe { Box::from_raw(raw) };
                if rc == VMI_PASS {
                    irb.joined = true;
                    let p = packet(&irb);
                    self.finish(irb, Status::Ok.code());
                    Outcome::Passed(p)
                } else {
                    Outcome::Completed(Status::from_code(irb.abi.status), irb.detail.clone())
                }
            }
            _ => {
                // SAFETY: the device keeps it; the harness owns the memory meanwhile.
                self.irbs
                    .insert(raw as usize, unsafe { Box::from_raw(raw) });
                Outcome::Pending
            }
        };
        self.settle();
        outcome
    }

    /// Runs the device's completion step (if it joined the IRB's path) and frees the IRB.
    fn finish(&mut self, mut irb: Box<HIrb>, status: i32) {
        irb.abi.status = status;
        if irb.joined
            && let Some(c) = self.vt.complete
        {
            let frame = irb.frame.as_mut_ptr() as *mut u8;
            // SAFETY: live instance; the IRB is lent for the call.
            unsafe { c(self.dev, &mut irb.abi, frame) };
        }
    }

    /// Turns what the device asked of the host into events until nothing is left.
    fn settle(&mut self) {
        loop {
            for irb in self.host.allocated.borrow_mut().drain(..) {
                let addr = &*irb as *const HIrb as usize;
                self.irbs.insert(addr, irb);
            }
            let mut calls = std::mem::take(&mut *self.host.calls.borrow_mut());
            calls.extend(
                self.host
                    .remote
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .drain(..)
                    .map(|(a, s)| Call::Complete(a, s)),
            );
            if calls.is_empty() {
                return;
            }
            for call in calls {
                match call {
                    Call::Pass(a) => {
                        let Some(mut irb) = self.irbs.remove(&a) else {
                            panic!("device '{}' passed an IRB it does not hold", self.name);
                        };
                        irb.joined = true;
                        let p = packet(&irb);
                        self.events.push(if irb.origin == Origin::Above {
                            Event::PassedDown(p)
                        } else {
                            Event::PassedUp(p)
                        });
                        self.finish(irb, Status::Ok.code());
                    }
                    Call::Complete(a, st) => {
                        let Some(irb) = self.irbs.remove(&a) else {
                            panic!("device '{}' completed an IRB it does not hold", self.name);
                        };
                        self.events.push(Event::Completed {
                            op: Op::from_code(irb.abi.op),
                            status: Status::from_code(st),
                            detail: irb.detail.clone(),
                        });
                        self.finish(irb, st);
                    }
                }
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(d) = self.vt.destroy {
            // SAFETY: destroyed once, after its last call.
            unsafe { d(self.dev) };
        }
        // IRBs the device gave back while shutting down.
        self.settle();
        let _ = &self.services;
    }
}

fn blank(frame_blocks: usize, origin: Origin) -> Box<HIrb> {
    Box::new(HIrb {
        abi: VmiIrb::EMPTY,
        origin,
        joined: false,
        payload: Vec::new(),
        attached: Vec::new(),
        peer_host: String::new(),
        peer_key: String::new(),
        detail: String::new(),
        frame: vec![Block([0; 64]); frame_blocks].into_boxed_slice(),
    })
}

fn packet(irb: &HIrb) -> Packet {
    let n = (irb.abi.nseg as usize).min(VMI_IRB_MAX_SEGS);
    let mut data = Vec::new();
    for s in &irb.abi.segs[..n] {
        if s.len > 0 && !s.base.is_null() {
            // SAFETY: segments point at memory valid while the IRB is (device or harness
            // memory, by the ABI's rules).
            data.extend_from_slice(unsafe { std::slice::from_raw_parts(s.base, s.len) });
        }
    }
    Packet {
        op: Op::from_code(irb.abi.op),
        conn: irb.abi.conn,
        flags: irb.abi.flags,
        data,
        segments: n,
        // SAFETY: peer strings point into the IRB's own strings (set by the host services).
        peer: unsafe {
            (
                irb.abi.peer_host.to_string_lossy(),
                irb.abi.peer_key.to_string_lossy(),
            )
        },
    }
}

/// # Safety
/// `p` must be NULL or a NUL-terminated string.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: per the contract.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// # Safety
/// `host` must be the harness's `HostState` pointer.
unsafe fn state<'a>(host: *mut c_void) -> &'a HostState {
    // SAFETY: per the contract; the state outlives the device.
    unsafe { &*(host as *const HostState) }
}

/// # Safety
/// `irb` must be a live IRB the harness owns.
unsafe fn hirb<'a>(irb: *mut VmiIrb) -> &'a mut HIrb {
    // SAFETY: per the contract; `abi` is the first field of the repr(C) HIrb.
    unsafe { &mut *(irb as *mut HIrb) }
}

unsafe extern "C" fn svc_pass(host: *mut c_void, irb: *mut VmiIrb) {
    // SAFETY: the device's own host pointer.
    unsafe { state(host) }
        .calls
        .borrow_mut()
        .push(Call::Pass(irb as usize));
}

unsafe extern "C" fn svc_complete(host: *mut c_void, irb: *mut VmiIrb, status: i32) {
    // SAFETY: as above.
    let st = unsafe { state(host) };
    // SAFETY: a live IRB the device hands back.
    unsafe { (*irb).status = status };
    st.calls
        .borrow_mut()
        .push(Call::Complete(irb as usize, status));
}

unsafe extern "C" fn svc_complete_from_thread(host: *mut c_void, irb: *mut VmiIrb, status: i32) {
    // SAFETY: as above; only the mutex-protected queue is touched.
    let st = unsafe { state(host) };
    st.remote
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((irb as usize, status));
}

unsafe extern "C" fn svc_irb_alloc(host: *mut c_void, op: u32, conn: u64) -> *mut VmiIrb {
    // SAFETY: as above.
    let st = unsafe { state(host) };
    let left = st.available.get();
    if left == 0 {
        return std::ptr::null_mut();
    }
    if left != u32::MAX {
        st.available.set(left - 1);
    }
    let mut irb = blank(st.frame_blocks, Origin::Device);
    irb.abi.op = op;
    irb.abi.conn = conn;
    let raw = &mut irb.abi as *mut VmiIrb;
    st.allocated.borrow_mut().push(irb);
    raw
}

/// The harness reads no ring itself: it takes the loan and ignores it, so a transport is
/// polled every time and must read its lent rings itself, as it does for an older host.
unsafe extern "C" fn svc_lend_rings(_host: *mut c_void, _set: *mut VmiRingSet) {}

/// The harness leaves lent streams alone: the transport reads its sockets itself.
unsafe extern "C" fn svc_lend_streams(_host: *mut c_void, _set: *mut VmiStreamSet) {}

unsafe extern "C" fn svc_irb_available(host: *mut c_void) -> u32 {
    // SAFETY: as above.
    unsafe { state(host) }.available.get()
}

unsafe extern "C" fn svc_irb_frame(_host: *mut c_void, irb: *mut VmiIrb) -> *mut u8 {
    // SAFETY: a live IRB the device holds.
    unsafe { hirb(irb) }.frame.as_mut_ptr() as *mut u8
}

unsafe extern "C" fn svc_irb_attach(
    _host: *mut c_void,
    irb: *mut VmiIrb,
    data: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: a live IRB the device holds.
    let h = unsafe { hirb(irb) };
    let n = h.abi.nseg as usize;
    if n >= VMI_IRB_MAX_SEGS {
        return -1;
    }
    let copy = if len == 0 || data.is_null() {
        Vec::new()
    } else {
        // SAFETY: the device passes `len` readable bytes.
        unsafe { std::slice::from_raw_parts(data, len) }.to_vec()
    };
    h.abi.segs[n] = VmiSeg {
        base: copy.as_ptr() as *mut u8,
        len,
    };
    h.abi.nseg += 1;
    h.attached.push(copy);
    0
}

unsafe extern "C" fn svc_irb_set_peer(
    _host: *mut c_void,
    irb: *mut VmiIrb,
    peer_host: VmiStr,
    peer_key: VmiStr,
) {
    // SAFETY: a live IRB the device holds; the strings live for the call.
    let h = unsafe { hirb(irb) };
    // SAFETY: as above.
    unsafe {
        h.peer_host = peer_host.to_string_lossy();
        h.peer_key = peer_key.to_string_lossy();
    }
    h.abi.peer_host = VmiStr::new(&h.peer_host);
    h.abi.peer_key = VmiStr::new(&h.peer_key);
}

unsafe extern "C" fn svc_irb_set_detail(_host: *mut c_void, irb: *mut VmiIrb, detail: VmiStr) {
    // SAFETY: a live IRB the device holds; the string lives for the call.
    unsafe { hirb(irb).detail = detail.to_string_lossy() };
}

unsafe extern "C" fn svc_conn_new(host: *mut c_void) -> u64 {
    // SAFETY: as above.
    let st = unsafe { state(host) };
    let c = st.next_conn.get();
    st.next_conn.set(c + 1);
    c
}

unsafe extern "C" fn svc_local_key(host: *mut c_void) -> VmiStr {
    // SAFETY: as above; the string lives as long as the harness.
    VmiStr::new(&unsafe { state(host) }.local_key)
}

unsafe extern "C" fn svc_signature(host: *mut c_void) -> VmiStr {
    // SAFETY: as above.
    VmiStr::new(&unsafe { state(host) }.signature)
}

unsafe extern "C" fn svc_log(_host: *mut c_void, level: u32, target: VmiStr, msg: VmiStr) {
    // SAFETY: strings live for the call.
    let (target, msg) = unsafe { (target.to_string_lossy(), msg.to_string_lossy()) };
    if level <= VMI_LOG_WARN {
        eprintln!("[{target}] {msg}");
    }
}

unsafe extern "C" fn svc_wake(host: *mut c_void) {
    // SAFETY: as above; the counter is mutex-protected.
    *unsafe { state(host) }
        .wakes
        .lock()
        .unwrap_or_else(|e| e.into_inner()) += 1;
}
