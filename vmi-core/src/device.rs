//! The device SDK: what a device plugin implements ([`Device`]) and the handles it works
//! with ([`Irb`], [`Host`]). `export_device!` turns a `Device` into the C-ABI descriptor.
//!
//! A device never calls into the application and is never re-entered: everything a device
//! asks of the host (`pass`, `complete`, a new IRB handed up) is queued and run by the host's
//! loop after the device returns.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_void};
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::time::Duration;

use crate::abi::{self, VmiHostServices, VmiIrb, VmiParamSpec, VmiSeg, VmiStr};
use crate::status::Status;

/// Filter or transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// Looks at and changes data (CRC, compression, tracing).
    Filter,
    /// Moves bytes to peers (TCP, shared memory).
    Transport,
}

impl DeviceKind {
    /// The ABI code.
    pub const fn code(self) -> u32 {
        match self {
            DeviceKind::Filter => abi::VMI_KIND_FILTER,
            DeviceKind::Transport => abi::VMI_KIND_TRANSPORT,
        }
    }
}

/// What an IRB asks for (the `VMI_OP_*` codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A fragment going out.
    Send,
    /// Open a connection.
    Connect,
    /// Accept an incoming connection.
    Accept,
    /// Reject an incoming connection.
    Reject,
    /// Close a connection.
    Disconnect,
    /// A fragment coming in.
    Recv,
    /// A peer asks to connect.
    ConnectRequest,
    /// The peer went away.
    PeerDisconnect,
    /// A code this build does not know.
    Unknown(u32),
}

impl Op {
    /// From the ABI code.
    pub fn from_code(code: u32) -> Op {
        match code {
            abi::VMI_OP_SEND => Op::Send,
            abi::VMI_OP_CONNECT => Op::Connect,
            abi::VMI_OP_ACCEPT => Op::Accept,
            abi::VMI_OP_REJECT => Op::Reject,
            abi::VMI_OP_DISCONNECT => Op::Disconnect,
            abi::VMI_OP_RECV => Op::Recv,
            abi::VMI_OP_CONNECT_REQUEST => Op::ConnectRequest,
            abi::VMI_OP_PEER_DISCONNECT => Op::PeerDisconnect,
            other => Op::Unknown(other),
        }
    }

    /// The ABI code.
    pub fn code(self) -> u32 {
        match self {
            Op::Send => abi::VMI_OP_SEND,
            Op::Connect => abi::VMI_OP_CONNECT,
            Op::Accept => abi::VMI_OP_ACCEPT,
            Op::Reject => abi::VMI_OP_REJECT,
            Op::Disconnect => abi::VMI_OP_DISCONNECT,
            Op::Recv => abi::VMI_OP_RECV,
            Op::ConnectRequest => abi::VMI_OP_CONNECT_REQUEST,
            Op::PeerDisconnect => abi::VMI_OP_PEER_DISCONNECT,
            Op::Unknown(c) => c,
        }
    }
}

/// What a device did with an IRB it was given.
#[must_use]
pub enum Disposition {
    /// Hand it to the next device.
    Pass(Irb),
    /// Finished, with this status.
    Complete(Irb, Status),
    /// The device kept the IRB and will pass or complete it later.
    Pending,
}

/// Device capabilities (see [`abi::VmiCapabilities`]).
pub type Capabilities = abi::VmiCapabilities;

/// Which vtable entries a device exports. An entry left out costs nothing per IRB: the host
/// passes IRBs through without calling the device.
#[derive(Clone, Copy, Debug)]
pub struct Hooks {
    /// `submit` (send direction).
    pub submit: bool,
    /// `receive` (receive direction).
    pub receive: bool,
    /// `complete` (completion step).
    pub complete: bool,
    /// `poll` and `wait_fd` (devices with their own I/O or timers).
    pub poll: bool,
}

impl Hooks {
    /// Every entry.
    pub const ALL: Hooks = Hooks {
        submit: true,
        receive: true,
        complete: true,
        poll: true,
    };
    /// A filter that only transforms data: submit, receive and complete.
    pub const FILTER: Hooks = Hooks {
        submit: true,
        receive: true,
        complete: true,
        poll: false,
    };
    /// Nothing: a pure pass-through.
    pub const NONE: Hooks = Hooks {
        submit: false,
        receive: false,
        complete: false,
        poll: false,
    };
}

/// The host, as a device sees it. Cheap to copy.
#[derive(Clone, Copy)]
pub struct Host {
    services: *const VmiHostServices,
    ctx: *mut c_void,
}

// SAFETY: the host only lets `complete_from_thread` and `wake` be called from other threads,
// and `Completer` is the only thing that offers them; the pointers themselves stay valid for
// the device's whole life.
unsafe impl Send for Host {}

impl Host {
    /// Wraps the pointers the host gave `create`.
    ///
    /// # Safety
    /// Both must be the pointers passed to the device's `create`, valid for its life.
    pub unsafe fn from_raw(services: *const VmiHostServices, ctx: *mut c_void) -> Host {
        Host { services, ctx }
    }

    fn svc(&self) -> &VmiHostServices {
        // SAFETY: `from_raw`'s contract: the table outlives the device.
        unsafe { &*self.services }
    }

    /// Allocates a receive-direction IRB originated by this device (a transport).
    pub fn alloc_irb(&self, op: Op, conn: u64) -> Option<Irb> {
        // SAFETY: a valid host pointer; the host returns a live IRB or NULL.
        let raw = unsafe { (self.svc().irb_alloc)(self.ctx, op.code(), conn) };
        let raw = NonNull::new(raw)?;
        // SAFETY: the IRB was just allocated for this device.
        let frame = unsafe { (self.svc().irb_frame)(self.ctx, raw.as_ptr()) };
        Some(Irb {
            raw,
            frame,
            host: *self,
        })
    }

    /// A handle for a new incoming connection owned by this device.
    pub fn conn_new(&self) -> u64 {
        // SAFETY: valid host pointer.
        unsafe { (self.svc().conn_new)(self.ctx) }
    }

    /// This process's key.
    pub fn local_key(&self) -> String {
        // SAFETY: the host returns a string that lives as long as the host.
        unsafe { (self.svc().local_key)(self.ctx).to_string_lossy() }
    }

    /// The chains' filter signature exchanged during the connect handshake.
    pub fn signature(&self) -> String {
        // SAFETY: as for `local_key`.
        unsafe { (self.svc().signature)(self.ctx).to_string_lossy() }
    }

    /// Wakes a `wait` in progress.
    pub fn wake(&self) {
        // SAFETY: valid host pointer; `wake` is thread-safe.
        unsafe { (self.svc().wake)(self.ctx) }
    }

    /// A handle that wakes this host's `wait` from any thread.
    pub fn waker(&self) -> HostWaker {
        HostWaker { host: *self }
    }

    /// A handle that completes IRBs from another thread.
    pub fn completer(&self) -> Completer {
        Completer { host: *self }
    }
}

/// Wakes a host's `wait` from any thread.
#[derive(Clone, Copy)]
pub struct HostWaker {
    host: Host,
}

// SAFETY: only the thread-safe `wake` service is reachable through a HostWaker.
unsafe impl Sync for HostWaker {}

impl HostWaker {
    /// Wakes the host.
    pub fn wake(&self) {
        self.host.wake();
    }
}

/// Completes IRBs from any thread; `poll` picks the completions up.
#[derive(Clone, Copy)]
pub struct Completer {
    host: Host,
}

impl Completer {
    /// Completes `irb` with `status` from this thread.
    pub fn complete(&self, irb: Irb, status: Status) {
        let irb = std::mem::ManuallyDrop::new(irb);
        // SAFETY: the IRB is live and owned by the caller; the service is thread-safe.
        unsafe {
            (self.host.svc().complete_from_thread)(self.host.ctx, irb.raw.as_ptr(), status.code())
        }
    }
}

/// An I/O request block held by a device. Owning an `Irb` means holding the request: it
/// must be passed or completed exactly once. Dropping one completes it with
/// [`Status::Internal`] and logs an error, so a lost IRB never hangs the application.
pub struct Irb {
    raw: NonNull<VmiIrb>,
    frame: *mut u8,
    host: Host,
}

// SAFETY: an Irb is a unique handle to host memory; moving it to another thread is allowed so
// the device can complete it there through a `Completer`.
unsafe impl Send for Irb {}

impl Irb {
    /// Wraps a raw IRB handed to a device.
    ///
    /// # Safety
    /// `raw` must be a live IRB the host gave this device, `frame` its frame for this device.
    pub unsafe fn from_raw(raw: *mut VmiIrb, frame: *mut u8, host: Host) -> Irb {
        Irb {
            raw: NonNull::new(raw).expect("host passed a NULL IRB"),
            frame,
            host,
        }
    }

    /// Gives up the handle without completing (for the trampolines).
    pub fn into_raw(self) -> *mut VmiIrb {
        let me = std::mem::ManuallyDrop::new(self);
        me.raw.as_ptr()
    }

    fn irb(&self) -> &VmiIrb {
        // SAFETY: the handle is unique and the host keeps the IRB alive while a device holds it.
        unsafe { self.raw.as_ref() }
    }

    fn irb_mut(&mut self) -> &mut VmiIrb {
        // SAFETY: as above, and `&mut self` makes this access exclusive.
        unsafe { self.raw.as_mut() }
    }

    /// The operation.
    pub fn op(&self) -> Op {
        Op::from_code(self.irb().op)
    }

    /// The connection handle.
    pub fn conn(&self) -> u64 {
        self.irb().conn
    }

    /// `VMI_FLAG_*` bits.
    pub fn flags(&self) -> u32 {
        self.irb().flags
    }

    /// Replaces the flag bits.
    pub fn set_flags(&mut self, flags: u32) {
        self.irb_mut().flags = flags;
    }

    /// True when this is the last fragment of a stream.
    pub fn is_end(&self) -> bool {
        self.flags() & abi::VMI_FLAG_END != 0
    }

    /// Status so far.
    pub fn status(&self) -> Status {
        Status::from_code(self.irb().status)
    }

    /// Sets the status an IRB carries up (a transport reporting why a peer went away on a
    /// `PeerDisconnect`); completed IRBs get theirs from `complete`.
    pub fn set_status(&mut self, status: Status) {
        self.irb_mut().status = status.code();
    }

    /// The data segments.
    pub fn segments(&self) -> &[VmiSeg] {
        let irb = self.irb();
        &irb.segs[..(irb.nseg as usize).min(abi::VMI_IRB_MAX_SEGS)]
    }

    /// The bytes of segment `i`.
    pub fn segment(&self, i: usize) -> &[u8] {
        let seg = self.segments()[i];
        if seg.len == 0 {
            return &[];
        }
        // SAFETY: whoever set the segment guarantees the memory stays valid until the IRB
        // completes (see `push_segment`).
        unsafe { std::slice::from_raw_parts(seg.base, seg.len) }
    }

    /// The bytes of segment `i`, writable, for received data only (`None` for other ops): a
    /// filter may change received bytes in place, never an application's send buffers.
    pub fn segment_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        if self.op() != Op::Recv {
            return None;
        }
        let seg = *self.segments().get(i)?;
        if seg.len == 0 {
            return Some(&mut []);
        }
        // SAFETY: received segments point at memory the originating transport owns for the
        // IRB's life and does not read until the IRB completes; `&mut self` makes this unique.
        Some(unsafe { std::slice::from_raw_parts_mut(seg.base, seg.len) })
    }

    /// Total data length.
    pub fn data_len(&self) -> usize {
        self.segments().iter().map(|s| s.len).sum()
    }

    /// Removes all segments.
    pub fn clear_segments(&mut self) {
        self.irb_mut().nseg = 0;
    }

    /// Appends a segment. Returns false when all [`abi::VMI_IRB_MAX_SEGS`] are in use.
    ///
    /// # Safety
    /// `base..base+len` must stay valid (and unchanged) until the IRB completes.
    pub unsafe fn push_segment(&mut self, base: *mut u8, len: usize) -> bool {
        let irb = self.irb_mut();
        let n = irb.nseg as usize;
        if n >= abi::VMI_IRB_MAX_SEGS {
            return false;
        }
        irb.segs[n] = VmiSeg { base, len };
        irb.nseg += 1;
        true
    }

    /// Shortens the data to `len` bytes by trimming from the end.
    pub fn truncate(&mut self, len: usize) {
        let irb = self.irb_mut();
        let mut left = len;
        let mut n = 0;
        for seg in irb.segs[..irb.nseg as usize].iter_mut() {
            if left == 0 {
                break;
            }
            seg.len = seg.len.min(left);
            left -= seg.len;
            n += 1;
        }
        irb.nseg = n as u32;
    }

    /// Copies `data` into host memory owned by the IRB and appends it as a segment.
    pub fn attach(&mut self, data: &[u8]) -> Result<(), Status> {
        // SAFETY: live IRB, valid host; the host copies the bytes.
        let rc = unsafe {
            (self.host.svc().irb_attach)(
                self.host.ctx,
                self.raw.as_ptr(),
                data.as_ptr(),
                data.len(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(Status::NoResources)
        }
    }

    /// The peer's host and key (connect and connect-request IRBs).
    pub fn peer(&self) -> (String, String) {
        let irb = self.irb();
        // SAFETY: the host keeps peer strings alive with the IRB.
        unsafe {
            (
                irb.peer_host.to_string_lossy(),
                irb.peer_key.to_string_lossy(),
            )
        }
    }

    /// Sets the peer's host and key (copied by the host).
    pub fn set_peer(&mut self, host: &str, key: &str) {
        // SAFETY: live IRB; the host copies both strings.
        unsafe {
            (self.host.svc().irb_set_peer)(
                self.host.ctx,
                self.raw.as_ptr(),
                VmiStr::new(host),
                VmiStr::new(key),
            )
        }
    }

    /// Attaches a human-readable explanation of the status (copied by the host).
    pub fn set_detail(&mut self, detail: &str) {
        // SAFETY: live IRB; the host copies the text.
        unsafe {
            (self.host.svc().irb_set_detail)(self.host.ctx, self.raw.as_ptr(), VmiStr::new(detail))
        }
    }

    /// This device's per-IRB frame, as declared by `Device::Frame`.
    ///
    /// # Panics
    /// If `F` is larger or more aligned than the frame the host reserved (a device bug).
    pub fn frame<F: bytemuck::Pod>(&mut self) -> &mut F {
        assert!(
            !self.frame.is_null() || std::mem::size_of::<F>() == 0,
            "this device declared no frame"
        );
        if std::mem::size_of::<F>() == 0 {
            // SAFETY: a zero-sized type needs no memory; a dangling, aligned pointer is valid.
            return unsafe { NonNull::<F>::dangling().as_mut() };
        }
        assert_eq!(
            self.frame as usize % std::mem::align_of::<F>(),
            0,
            "frame misaligned for its type"
        );
        // SAFETY: the host reserved `size_of::<Device::Frame>()` zero-initialised bytes at this
        // aligned address for this device, and F: Pod is valid for any bytes.
        unsafe { &mut *(self.frame as *mut F) }
    }

    /// Hands the IRB to the next device in its direction (after having pended it).
    pub fn pass(self) {
        let host = self.host;
        let raw = self.into_raw();
        // SAFETY: live IRB owned by this device until now.
        unsafe { (host.svc().pass)(host.ctx, raw) }
    }

    /// Completes the IRB (after having pended it), on the polling thread.
    pub fn complete(self, status: Status) {
        let host = self.host;
        let raw = self.into_raw();
        // SAFETY: live IRB owned by this device until now.
        unsafe { (host.svc().complete)(host.ctx, raw, status.code()) }
    }

    /// The raw pointer, for logging and for devices written against the C ABI.
    pub fn as_ptr(&self) -> *mut VmiIrb {
        self.raw.as_ptr()
    }
}

impl Drop for Irb {
    fn drop(&mut self) {
        log::error!(
            "a device dropped IRB {:p} (op {:?}) without passing or completing it; completing it with an internal error",
            self.raw,
            self.op()
        );
        // SAFETY: live IRB; dropping the handle is giving it back.
        unsafe {
            (self.host.svc().complete)(self.host.ctx, self.raw.as_ptr(), Status::Internal.code())
        }
    }
}

/// A device's configuration: the effective parameters the host resolved.
#[derive(Clone, Debug, Default)]
pub struct Config {
    values: Vec<(String, String)>,
}

/// A parameter the device could not use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The host did not pass the parameter.
    #[error("parameter '{0}' is missing")]
    Missing(String),
    /// The value does not fit.
    #[error("parameter '{name}' = \"{value}\" is invalid: expected {expected}")]
    Invalid {
        /// Parameter.
        name: String,
        /// Value.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}

impl Config {
    /// A configuration from name/value pairs.
    pub fn new(values: Vec<(String, String)>) -> Config {
        Config { values }
    }

    /// The text value.
    pub fn get(&self, name: &str) -> Result<&str, ConfigError> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| ConfigError::Missing(name.to_string()))
    }

    /// An unsigned value (suffixes k, m, g allowed).
    pub fn get_u64(&self, name: &str) -> Result<u64, ConfigError> {
        let v = self.get(name)?;
        crate::params::parse_uint(v).ok_or_else(|| ConfigError::Invalid {
            name: name.into(),
            value: v.into(),
            expected: "a non-negative integer",
        })
    }

    /// A boolean value.
    pub fn get_bool(&self, name: &str) -> Result<bool, ConfigError> {
        let v = self.get(name)?;
        crate::params::parse_bool(v).ok_or_else(|| ConfigError::Invalid {
            name: name.into(),
            value: v.into(),
            expected: "true or false",
        })
    }

    /// A duration given in milliseconds.
    pub fn get_millis(&self, name: &str) -> Result<Duration, ConfigError> {
        self.get_u64(name).map(Duration::from_millis)
    }

    /// All pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// Declares a parameter (for `Device::PARAMS`).
pub const fn param(
    name: &'static CStr,
    kind: u32,
    default: &'static CStr,
    doc: &'static CStr,
) -> VmiParamSpec {
    VmiParamSpec {
        name: name.as_ptr(),
        kind,
        default_value: default.as_ptr(),
        doc: doc.as_ptr(),
    }
}

/// A device: a filter or a transport. Implement this, then `export_device!` it.
///
/// Every method has a pass-through default; a filter usually writes `submit` and `receive`
/// only. Methods are never called concurrently and never re-entered.
pub trait Device: Sized + 'static {
    /// Type name; the exported symbol is `vmi_device_<NAME>`.
    const NAME: &'static CStr;
    /// Version text.
    const VERSION: &'static CStr;
    /// One line saying what the device does.
    const DESCRIPTION: &'static CStr;
    /// Filter or transport.
    const KIND: DeviceKind;
    /// Declared parameters.
    const PARAMS: &'static [VmiParamSpec] = &[];
    /// True for a filter that does not change the bytes on the wire (tracing, delays): it is
    /// left out of the filter signature checked at connect, so it may run on one side only.
    const WIRE_NEUTRAL: bool = false;
    /// Which entries to export; the rest are pass-through at no cost.
    const HOOKS: Hooks = Hooks::ALL;
    /// Per-IRB scratch space, zeroed when the host allocates the IRB.
    type Frame: bytemuck::Pod;

    /// Creates an instance (VMI 2.1: the device's `Init` entry).
    fn create(host: Host, config: &Config) -> Result<Self, String>;

    /// Reports capabilities given those of the devices below (a filter subtracts its overhead).
    fn capabilities(&self, below: Capabilities) -> Capabilities {
        below
    }

    /// An IRB going towards the wire.
    fn submit(&mut self, irb: Irb) -> Disposition {
        Disposition::Pass(irb)
    }

    /// An IRB coming from the wire.
    fn receive(&mut self, irb: Irb) -> Disposition {
        Disposition::Pass(irb)
    }

    /// Completion step for an IRB this device passed (or, for a transport, originated).
    fn complete(&mut self, _irb: &mut Irb) {}

    /// Makes progress without blocking; returns the number of events produced.
    fn poll(&mut self) -> usize {
        0
    }

    /// A descriptor to sleep on and the time until the device's next deadline.
    fn wait_fd(&self) -> (Option<RawFd>, Option<Duration>) {
        (None, None)
    }

    /// Transports: whether `host`/`key` can be reached, and if not why.
    fn reach(&mut self, _host: &str, _key: &str) -> Result<(), String> {
        Err("this device is not a transport".into())
    }

    /// Registers memory for sending; returns a handle (0: nothing to undo).
    fn register(&mut self, _base: *mut u8, _len: usize) -> u64 {
        0
    }

    /// Undoes `register`.
    fn deregister(&mut self, _handle: u64) {}

    /// Reads a runtime attribute as text (Globus XIO `attr_cntl`); `None` if unknown.
    fn get_attr(&self, _name: &str) -> Option<String> {
        None
    }

    /// Changes a runtime attribute on a live chain; the error says why not.
    fn set_attr(&mut self, name: &str, _value: &str) -> Result<(), String> {
        Err(format!("no attribute '{name}'"))
    }
}
