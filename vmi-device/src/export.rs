//! Turning a safe [`Device`] into the C-ABI descriptor: the trampolines behind
//! [`export_device!`](crate::export_device). Every trampoline catches panics, so a bug in a
//! device becomes an error status and a log line, never an abort of the application.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::abi::*;
use crate::config::Config;
use crate::device::{Device, Disposition};
use crate::host::Host;
use crate::irb::{CompletingIrb, Irb};
use crate::status::Status;

/// Exports a [`Device`] as a plugin: generates the `#[no_mangle]` descriptor symbol, found
/// by a host that loads the crate's shared object, and a function that registers the device
/// for programs that link the crate instead (`register_static()`, or the name given with
/// `register = name` when a crate exports several devices).
///
/// The symbol must be `vmi_device_<NAME>` so the loader finds it from the specfile's `type`.
///
/// ```ignore
/// vmi_device::export_device!(TcpDevice, vmi_device_tcp);
/// vmi_device::export_device!(Recorder, vmi_device_recorder, register = register_recorder);
/// ```
#[macro_export]
macro_rules! export_device {
    ($device:ty, $symbol:ident) => {
        $crate::export_device!($device, $symbol, register = register_static);
    };
    ($device:ty, $symbol:ident, register = $register:ident) => {
        /// The device's C-ABI descriptor, found by the loader under this symbol.
        #[unsafe(no_mangle)]
        pub static $symbol: $crate::abi::VmiDeviceDescriptor =
            $crate::export::Export::<$device>::DESCRIPTOR;

        /// Registers the device for programs that link this crate, so a specfile naming its
        /// type without `library=` uses it instead of the shared object.
        pub fn $register() {
            $crate::registry::register(&$symbol);
        }
    };
}

/// The device instance behind the opaque pointer the host holds.
struct Instance<D> {
    device: D,
    host: Host,
}

/// Compile-time descriptor and vtable for a device type.
pub struct Export<D>(PhantomData<D>);

impl<D: Device> Export<D> {
    /// The operations table.
    pub const VTABLE: VmiDeviceVtable = VmiDeviceVtable {
        size: std::mem::size_of::<VmiDeviceVtable>() as u32,
        destroy: Some(destroy::<D>),
        capabilities: Some(capabilities::<D>),
        submit: if D::HOOKS.submit {
            Some(submit::<D>)
        } else {
            None
        },
        receive: if D::HOOKS.receive {
            Some(receive::<D>)
        } else {
            None
        },
        complete: if D::HOOKS.complete {
            Some(complete::<D>)
        } else {
            None
        },
        poll: if D::HOOKS.poll { Some(poll::<D>) } else { None },
        wait_fd: if D::HOOKS.poll {
            Some(wait_fd::<D>)
        } else {
            None
        },
        reach: Some(reach::<D>),
        register: Some(register::<D>),
        deregister: Some(deregister::<D>),
        get_attr: Some(get_attr::<D>),
        set_attr: Some(set_attr::<D>),
        poll_budget: if D::HOOKS.poll {
            Some(poll_budget::<D>)
        } else {
            None
        },
        send_inline: if D::SEND_INLINE {
            Some(send_inline::<D>)
        } else {
            None
        },
        poll_direct: if D::RECEIVE_DIRECT {
            Some(poll_direct::<D>)
        } else {
            None
        },
        rdma_access: if D::RDMA_ACCESS {
            Some(rdma_access::<D>)
        } else {
            None
        },
        register_conn: if D::RDMA_ACCESS {
            Some(register_conn::<D>)
        } else {
            None
        },
    };

    /// The descriptor.
    pub const DESCRIPTOR: VmiDeviceDescriptor = VmiDeviceDescriptor {
        magic: VMI_DEVICE_MAGIC,
        abi_major: VMI_ABI_MAJOR,
        abi_minor: VMI_ABI_MINOR,
        struct_size: std::mem::size_of::<VmiDeviceDescriptor>() as u32,
        kind: D::KIND.code(),
        flags: if D::WIRE_NEUTRAL {
            VMI_DEVICE_WIRE_NEUTRAL
        } else {
            0
        },
        name: D::NAME.as_ptr(),
        version: D::VERSION.as_ptr(),
        description: D::DESCRIPTION.as_ptr(),
        frame_size: std::mem::size_of::<D::Frame>() as u32,
        frame_align: std::mem::align_of::<D::Frame>() as u32,
        params: D::PARAMS.as_ptr(),
        nparams: D::PARAMS.len(),
        create: Some(create::<D>),
        vtable: &Self::VTABLE,
    };
}

/// Text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-text panic payload".to_string()
    }
}

/// Copies `msg` into a C error buffer, NUL-terminated and truncated to fit.
///
/// # Safety
/// `buf` must be NULL or point to `len` writable bytes.
pub unsafe fn write_c_message(buf: *mut c_char, len: usize, msg: &str) {
    if buf.is_null() || len == 0 {
        return;
    }
    let n = msg.len().min(len - 1);
    // SAFETY: the caller guarantees `len` writable bytes; we write n + 1 <= len.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
    }
}

/// # Safety
/// `dev` must be a pointer `create::<D>` returned and not yet destroyed.
unsafe fn instance<'a, D>(dev: *mut c_void) -> &'a mut Instance<D> {
    // SAFETY: forwarded to the caller; the host never calls a device concurrently.
    unsafe { &mut *(dev as *mut Instance<D>) }
}

fn device_panicked<D: Device>(what: &str, payload: &(dyn std::any::Any + Send)) {
    log::error!(
        "device '{}' panicked in {what}: {}",
        D::NAME.to_string_lossy(),
        panic_message(payload)
    );
}

unsafe extern "C" fn create<D: Device>(
    services: *const VmiHostServices,
    host: *mut c_void,
    params: *const VmiParam,
    nparams: usize,
    out: *mut *mut c_void,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host passes its services table, valid for the device's life.
        unsafe { crate::logbridge::install(services) };
        let mut values = Vec::with_capacity(nparams);
        for i in 0..nparams {
            // SAFETY: the host passes `nparams` valid entries whose strings outlive this call.
            let p = unsafe { &*params.add(i) };
            // SAFETY: as above.
            let (name, value) = unsafe { (p.name.to_string_lossy(), p.value.to_string_lossy()) };
            values.push((name, value));
        }
        // SAFETY: these are the pointers `create` was given; the host reserves the frame the
        // descriptor declares, which is `size_of::<D::Frame>()`.
        let host = unsafe { Host::from_raw(services, host, std::mem::size_of::<D::Frame>()) };
        D::create(host, &Config::new(values)).map(|device| Box::new(Instance { device, host }))
    }));
    match result {
        Ok(Ok(instance)) => {
            // SAFETY: `out` is a valid out-pointer from the host.
            unsafe { *out = Box::into_raw(instance) as *mut c_void };
            VMI_CREATE_OK
        }
        Ok(Err(reason)) => {
            // SAFETY: the host's error buffer.
            unsafe { write_c_message(err, err_len, &reason) };
            VMI_CREATE_FAILED
        }
        Err(payload) => {
            // SAFETY: the host's error buffer.
            unsafe { write_c_message(err, err_len, &panic_message(&*payload)) };
            VMI_CREATE_PANICKED
        }
    }
}

unsafe extern "C" fn destroy<D: Device>(dev: *mut c_void) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host destroys each instance once, after its last call.
        drop(unsafe { Box::from_raw(dev as *mut Instance<D>) });
    }));
    if let Err(p) = r {
        device_panicked::<D>("destroy", &*p);
    }
}

unsafe extern "C" fn capabilities<D: Device>(dev: *mut c_void, caps: *mut VmiCapabilities) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: live instance; `caps` is a valid in/out pointer.
        let inst = unsafe { instance::<D>(dev) };
        // SAFETY: as above.
        unsafe { *caps = inst.device.capabilities(*caps) };
    }));
    if let Err(p) = r {
        device_panicked::<D>("capabilities", &*p);
    }
}

/// The ABI code for what a device's step returned. The common cases are inline in the
/// trampoline and use only scalars (the handle's pointer and the status), so the disposition
/// never goes through memory; a device that returned another IRB than it was given is
/// handled out of line.
#[inline(always)]
fn disposition_code<D: Device>(irb: *mut VmiIrb, d: Disposition) -> i32 {
    let (code, raw, host, status) = match d {
        Disposition::Pass(i) => {
            let (raw, host) = i.into_parts();
            (VMI_PASS, raw, host, Status::Ok)
        }
        Disposition::Complete(i, status) => {
            let (raw, host) = i.into_parts();
            (VMI_COMPLETE, raw, host, status)
        }
        Disposition::Pending => return VMI_PENDING,
    };
    if raw != irb {
        return another_irb::<D>(code, raw, host, status);
    }
    if code == VMI_COMPLETE {
        // SAFETY: the IRB is live; the device hands it back with its status.
        unsafe { (*raw).status = status.code() };
    }
    code
}

/// A device may return another IRB it held instead of the one it was given (it keeps the
/// given one). The host must not take that as the given IRB moving on: it is treated as the
/// device passing or completing the other one through the host, and the given one as pending.
#[cold]
#[inline(never)]
fn another_irb<D: Device>(code: i32, raw: *mut VmiIrb, host: Host, status: Status) -> i32 {
    if code == VMI_PASS {
        log::warn!(
            "device '{}' returned a different IRB than it was given; treating it as pass() of that IRB and the given one as pending",
            D::NAME.to_string_lossy()
        );
        host.pass(raw);
    } else {
        log::warn!(
            "device '{}' completed a different IRB than it was given; treating the given one as pending",
            D::NAME.to_string_lossy()
        );
        host.complete(raw, status);
    }
    VMI_PENDING
}

/// Runs one submit or receive. Generic over the method (not a function pointer), so the
/// device's code is inlined into its trampoline.
#[inline(always)]
unsafe fn step<D: Device, F: FnOnce(&mut D, Irb) -> Disposition>(
    dev: *mut c_void,
    irb: *mut VmiIrb,
    frame: *mut u8,
    what: &str,
    f: F,
) -> i32 {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: live instance, live IRB and its frame, from the host.
        let inst = unsafe { instance::<D>(dev) };
        // SAFETY: as above (the host never passes a NULL IRB).
        let handle = unsafe { Irb::from_host(irb, frame, inst.host) };
        disposition_code::<D>(irb, f(&mut inst.device, handle))
    }));
    match r {
        Ok(code) => code,
        Err(p) => {
            device_panicked::<D>(what, &*p);
            // The Irb handle was dropped while unwinding, which already queued its completion
            // with Status::Internal: the host must not touch it again.
            VMI_PENDING
        }
    }
}

unsafe extern "C" fn submit<D: Device>(dev: *mut c_void, irb: *mut VmiIrb, frame: *mut u8) -> i32 {
    // SAFETY: forwarded from the host.
    unsafe { step::<D, _>(dev, irb, frame, "submit", D::submit) }
}

unsafe extern "C" fn receive<D: Device>(dev: *mut c_void, irb: *mut VmiIrb, frame: *mut u8) -> i32 {
    // SAFETY: forwarded from the host.
    unsafe { step::<D, _>(dev, irb, frame, "receive", D::receive) }
}

unsafe extern "C" fn complete<D: Device>(dev: *mut c_void, irb: *mut VmiIrb, frame: *mut u8) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: live instance and IRB from the host.
        let inst = unsafe { instance::<D>(dev) };
        // SAFETY: as above; the handle is only lent, ManuallyDrop keeps it from completing.
        let mut handle =
            std::mem::ManuallyDrop::new(unsafe { Irb::from_raw(irb, frame, inst.host) });
        inst.device.complete(CompletingIrb::lend(&mut handle));
        if handle.op() == crate::irb::Op::PeerDisconnect {
            inst.device.peer_close_released(handle.conn());
        }
    }));
    if let Err(p) = r {
        device_panicked::<D>("complete", &*p);
    }
}

unsafe extern "C" fn poll<D: Device>(dev: *mut c_void) -> i32 {
    // SAFETY: forwarded from the host (a 1.0 host, which knows no budget).
    unsafe { poll_budget::<D>(dev, u32::MAX) }
}

unsafe extern "C" fn register_conn<D: Device>(
    dev: *mut c_void,
    conn: u64,
    base: *mut u8,
    len: usize,
) -> u64 {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: live instance.
        let inst = unsafe { instance::<D>(dev) };
        inst.device.register_conn(conn, base, len)
    }));
    r.unwrap_or_else(|p| {
        device_panicked::<D>("register_conn", &*p);
        0
    })
}

unsafe extern "C" fn rdma_access<D: Device>(
    dev: *mut c_void,
    conn: u64,
    write: u32,
    remote: u64,
    key: *const VmiRdmaKey,
    segs: *const VmiSeg,
    nsegs: usize,
    status: *mut i32,
) -> i32 {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: live instance.
        let inst = unsafe { instance::<D>(dev) };
        let segs = if nsegs == 0 || segs.is_null() {
            &[][..]
        } else {
            // SAFETY: the host lends `nsegs` segment descriptors at `segs` for the call.
            unsafe { std::slice::from_raw_parts(segs, nsegs) }
        };
        // SAFETY: the host passes NULL or a key valid for the call.
        let key = unsafe { key.as_ref() };
        inst.device.rdma_access(conn, write != 0, remote, key, segs)
    }));
    match r {
        Ok(Some(s)) => {
            if !status.is_null() {
                // SAFETY: the host passes a writable status.
                unsafe { *status = s.code() };
            }
            VMI_COMPLETE
        }
        Ok(None) => VMI_PASS,
        Err(p) => {
            device_panicked::<D>("rdma_access", &*p);
            VMI_PASS
        }
    }
}

unsafe extern "C" fn send_inline<D: Device>(
    dev: *mut c_void,
    conn: u64,
    flags: u32,
    data: *const u8,
    len: usize,
) -> i32 {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: live instance.
        let inst = unsafe { instance::<D>(dev) };
        let bytes = if len == 0 {
            &[][..]
        } else {
            // SAFETY: the host lends `len` readable bytes at `data` for the call.
            unsafe { std::slice::from_raw_parts(data, len) }
        };
        inst.device.send_inline(conn, flags, bytes)
    }));
    match r {
        Ok(true) => VMI_COMPLETE,
        Ok(false) => VMI_PASS,
        Err(p) => {
            device_panicked::<D>("send_inline", &*p);
            VMI_PASS
        }
    }
}

unsafe extern "C" fn poll_direct<D: Device>(
    dev: *mut c_void,
    budget: u32,
    deliver: VmiDeliverFn,
    ctx: *mut c_void,
) -> i32 {
    // SAFETY: the host's receiver and context for this call; the scope ends when this
    // function returns, and `poll_budget` catches any panic of the device before that.
    let _scope = unsafe { crate::deliver::Scope::enter(deliver, ctx) };
    // SAFETY: forwarded from the host.
    unsafe { run_poll::<D>(dev, budget) }
}

unsafe extern "C" fn poll_budget<D: Device>(dev: *mut c_void, budget: u32) -> i32 {
    // SAFETY: forwarded from the host.
    unsafe { run_poll::<D>(dev, budget) }
}

/// The device's poll, its panic caught: the body of both poll entries (one call frame).
///
/// # Safety
/// `dev` is a live instance of `D`.
#[inline(always)]
unsafe fn run_poll<D: Device>(dev: *mut c_void, budget: u32) -> i32 {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: live instance.
        let inst = unsafe { instance::<D>(dev) };
        inst.device.poll(budget as usize).min(i32::MAX as usize) as i32
    }));
    r.unwrap_or_else(|p| {
        device_panicked::<D>("poll", &*p);
        0
    })
}

unsafe extern "C" fn wait_fd<D: Device>(dev: *mut c_void, fd: *mut i32, timeout_ms: *mut i64) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: live instance.
        let inst = unsafe { instance::<D>(dev) };
        inst.device.wait_fd()
    }));
    let (f, t) = r.unwrap_or_else(|p| {
        device_panicked::<D>("wait_fd", &*p);
        (None, None)
    });
    // SAFETY: valid out-pointers from the host.
    unsafe {
        *fd = f.unwrap_or(-1);
        *timeout_ms = t.map_or(-1, |d| d.as_millis().min(i64::MAX as u128) as i64);
    }
}

unsafe extern "C" fn reach<D: Device>(
    dev: *mut c_void,
    host: VmiStr,
    key: VmiStr,
    why: *mut c_char,
    why_len: usize,
) -> i32 {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: live instance; the strings live for this call.
        let inst = unsafe { instance::<D>(dev) };
        // SAFETY: as above.
        let (h, k) = unsafe { (host.to_string_lossy(), key.to_string_lossy()) };
        inst.device.reach(&h, &k)
    }));
    let r = r.unwrap_or_else(|p| Err(format!("device panicked: {}", panic_message(&*p))));
    match r {
        Ok(()) => 1,
        Err(reason) => {
            // SAFETY: the host's buffer.
            unsafe { write_c_message(why, why_len, &reason) };
            0
        }
    }
}

unsafe extern "C" fn register<D: Device>(dev: *mut c_void, base: *mut u8, len: usize) -> u64 {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: live instance.
        let inst = unsafe { instance::<D>(dev) };
        inst.device.register(base, len)
    }));
    r.unwrap_or_else(|p| {
        device_panicked::<D>("register", &*p);
        0
    })
}

unsafe extern "C" fn deregister<D: Device>(dev: *mut c_void, handle: u64) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: live instance.
        let inst = unsafe { instance::<D>(dev) };
        inst.device.deregister(handle)
    }));
    if let Err(p) = r {
        device_panicked::<D>("deregister", &*p);
    }
}

unsafe extern "C" fn get_attr<D: Device>(
    dev: *mut c_void,
    name: VmiStr,
    out: *mut c_char,
    out_len: usize,
) -> i64 {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: live instance; the name lives for the call.
        let inst = unsafe { instance::<D>(dev) };
        // SAFETY: as above.
        let name = unsafe { name.to_string_lossy() };
        inst.device.get_attr(&name)
    }));
    match r {
        Ok(Some(v)) => {
            // SAFETY: the host's buffer.
            unsafe { write_c_message(out, out_len, &v) };
            v.len() as i64
        }
        Ok(None) => -1,
        Err(p) => {
            device_panicked::<D>("get_attr", &*p);
            -1
        }
    }
}

unsafe extern "C" fn set_attr<D: Device>(
    dev: *mut c_void,
    name: VmiStr,
    value: VmiStr,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: live instance; the strings live for the call.
        let inst = unsafe { instance::<D>(dev) };
        // SAFETY: as above.
        let (name, value) = unsafe { (name.to_string_lossy(), value.to_string_lossy()) };
        inst.device.set_attr(&name, &value)
    }));
    let r = r.unwrap_or_else(|p| Err(format!("device panicked: {}", panic_message(&*p))));
    match r {
        Ok(()) => 0,
        Err(reason) => {
            // SAFETY: the host's buffer.
            unsafe { write_c_message(err, err_len, &reason) };
            -1
        }
    }
}
