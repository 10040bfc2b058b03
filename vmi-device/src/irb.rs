//! The IRB as a device holds it (VMI 2.1 had no IRBs; the model is Windows NT's IRP and
//! Globus XIO's operation): [`Irb`] on the polling thread, [`RemoteIrb`] on any other.
#![allow(unsafe_code)]

use std::ptr::NonNull;

use crate::abi::{self, VmiIrb, VmiSeg, VmiStr};
use crate::host::Host;
use crate::status::Status;

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
    /// Close a connection at once (ABI 1.5): end what is held for it with [`Irb::status`].
    Abort,
    /// A fragment coming in.
    Recv,
    /// A peer asks to connect.
    ConnectRequest,
    /// The peer went away. A transport whose close is answered (the peer waits for this
    /// side's goodbye) answers only once the host has released this report
    /// ([`crate::Device::peer_close_released`]).
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
            abi::VMI_OP_ABORT => Op::Abort,
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
            Op::Abort => abi::VMI_OP_ABORT,
            Op::Recv => abi::VMI_OP_RECV,
            Op::ConnectRequest => abi::VMI_OP_CONNECT_REQUEST,
            Op::PeerDisconnect => abi::VMI_OP_PEER_DISCONNECT,
            Op::Unknown(c) => c,
        }
    }
}

/// An I/O request block held by a device. Owning an `Irb` means holding the request: it
/// must be passed or completed exactly once. Dropping one completes it with
/// [`Status::Internal`] and logs an error, so a lost IRB never hangs the application.
///
/// Neither `Send` nor `Sync`: everything it does goes through host services that are valid
/// only on the polling thread. To finish a request on another thread, turn it into a
/// [`RemoteIrb`] with [`Irb::into_remote`].
pub struct Irb {
    raw: NonNull<VmiIrb>,
    frame: *mut u8,
    host: Host,
}

impl Irb {
    /// Wraps a raw IRB handed to a device.
    ///
    /// # Safety
    /// `raw` must be a live IRB the host gave this device, `frame` its frame for this device
    /// (at least `host.frame_len()` bytes, aligned for the device's frame type), and the
    /// caller must be on the polling thread.
    #[inline]
    pub unsafe fn from_raw(raw: *mut VmiIrb, frame: *mut u8, host: Host) -> Irb {
        let raw = NonNull::new(raw).expect("host passed a NULL IRB");
        // SAFETY: per the contract, and `raw` is not NULL.
        unsafe { Irb::from_host(raw.as_ptr(), frame, host) }
    }

    /// [`Irb::from_raw`] for the trampolines, which the host calls with a live IRB (the
    /// ABI's first rule of `submit` and `receive`), so there is no NULL to look for.
    ///
    /// # Safety
    /// As for [`Irb::from_raw`]; `raw` is not NULL.
    #[inline(always)]
    pub(crate) unsafe fn from_host(raw: *mut VmiIrb, frame: *mut u8, host: Host) -> Irb {
        Irb {
            // SAFETY: per the contract.
            raw: unsafe { NonNull::new_unchecked(raw) },
            frame,
            host,
        }
    }

    /// Gives up the handle without completing (for the trampolines).
    #[inline]
    pub fn into_raw(self) -> *mut VmiIrb {
        self.into_parts().0
    }

    /// Gives up the handle without completing, keeping the host it came through (for the
    /// trampolines).
    #[inline]
    pub(crate) fn into_parts(self) -> (*mut VmiIrb, Host) {
        let me = std::mem::ManuallyDrop::new(self);
        (me.raw.as_ptr(), me.host)
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

    /// For an [`Op::Abort`]: the status to end the connection's held IRBs with (what the
    /// host put in `status`; [`Status::Cancelled`] when it put none or a success).
    pub fn abort_status(&self) -> Status {
        match self.status() {
            Status::Ok => Status::Cancelled,
            s => s,
        }
    }

    /// For an [`Op::Abort`]: its status ([`Irb::abort_status`]) and the detail a transport
    /// gives the IRBs it ends.
    pub fn abort_reason(&self) -> (Status, String) {
        let status = self.abort_status();
        (
            status,
            format!("the connection was aborted by this process ({status})"),
        )
    }

    /// Sets the status an IRB carries up (a transport reporting why a peer went away on a
    /// `PeerDisconnect`); completed IRBs get theirs from `complete`.
    pub fn set_status(&mut self, status: Status) {
        self.irb_mut().status = status.code();
    }

    /// The data segments.
    pub fn segments(&self) -> &[VmiSeg] {
        segments(self.irb())
    }

    /// The bytes of segment `i`, borrowed from the IRB.
    ///
    /// # Panics
    /// If `i` is not below `segments().len()`.
    pub fn segment(&self, i: usize) -> &[u8] {
        // SAFETY: whoever set the segment guarantees the memory stays valid until the IRB
        // completes (see `push_segment`); the borrow of `self` is shorter than that.
        unsafe { seg_bytes(self.segments()[i]) }
    }

    /// The bytes of segment `i`, writable, for received data only (`None` for other ops): a
    /// filter may change received bytes in place, never an application's send buffers.
    pub fn segment_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        if self.op() != Op::Recv {
            return None;
        }
        let seg = *self.segments().get(i)?;
        if seg.len == 0 || seg.base.is_null() {
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
        let nseg = (irb.nseg as usize).min(abi::VMI_IRB_MAX_SEGS);
        let mut left = len;
        let mut n = 0;
        for seg in irb.segs[..nseg].iter_mut() {
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
        if self.host.attach(self.raw.as_ptr(), data) {
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
        self.host
            .set_peer(self.raw.as_ptr(), VmiStr::new(host), VmiStr::new(key));
    }

    /// Attaches a human-readable explanation of the status (copied by the host).
    pub fn set_detail(&mut self, detail: &str) {
        self.host.set_detail(self.raw.as_ptr(), VmiStr::new(detail));
    }

    /// This device's per-IRB frame, as declared by `Device::Frame`.
    ///
    /// `F` must be `bytemuck::Pod` (valid for any bytes, since the host zeroes frames and a
    /// device may read one it never wrote); the compiler refuses anything else.
    ///
    /// # Panics
    /// If `F` is larger or more aligned than the frame the host reserved for this device (a
    /// device bug: ask for your own `Device::Frame`).
    pub fn frame<F: bytemuck::Pod>(&mut self) -> &mut F {
        let size = std::mem::size_of::<F>();
        if size == 0 {
            // SAFETY: a zero-sized type needs no memory; a dangling, aligned pointer is valid.
            return unsafe { NonNull::<F>::dangling().as_mut() };
        }
        assert!(
            size <= self.host.frame_len() && !self.frame.is_null(),
            "frame of {size} bytes asked for, but the host reserved {} for this device; ask for the device's own Frame type",
            self.host.frame_len()
        );
        assert_eq!(
            self.frame as usize % std::mem::align_of::<F>(),
            0,
            "frame misaligned for its type; ask for the device's own Frame type"
        );
        // SAFETY: the host reserved `frame_len` (>= size) zero-initialised bytes at this
        // address for this device, the address is aligned for F (checked), F: Pod is valid for
        // any bytes, and `&mut self` makes the access exclusive.
        unsafe { &mut *(self.frame as *mut F) }
    }

    /// Hands the IRB to the next device in its direction (after having pended it).
    pub fn pass(self) {
        let (raw, host) = self.into_parts();
        host.pass(raw);
    }

    /// Completes the IRB (after having pended it), on the polling thread.
    pub fn complete(self, status: Status) {
        let (raw, host) = self.into_parts();
        host.complete(raw, status);
    }

    /// Turns the handle into one that may move to another thread, where it can only be
    /// completed (through the host's thread-safe queue, picked up by the next poll).
    pub fn into_remote(self) -> RemoteIrb {
        let host = self.host;
        RemoteIrb {
            raw: NonNull::new(self.into_raw()).expect("live IRB"),
            completer: host.completer(),
        }
    }

    /// The raw pointer, for logging and for devices written against the C ABI.
    #[inline]
    pub fn as_ptr(&self) -> *mut VmiIrb {
        self.raw.as_ptr()
    }
}

impl Drop for Irb {
    // Inline, with the work out of line on scalars: a handle that might be dropped while
    // unwinding (every one a device step gets) then needs no copy in memory, so a step's
    // trampoline keeps it in registers.
    #[inline(always)]
    fn drop(&mut self) {
        dropped(self.raw, self.host);
    }
}

/// A device dropped a handle: the IRB completes with an internal error.
#[cold]
#[inline(never)]
fn dropped(raw: NonNull<VmiIrb>, host: Host) {
    // SAFETY: the handle was live until now, and the host keeps the IRB alive until it
    // completes.
    let op = Op::from_code(unsafe { raw.as_ref() }.op);
    log::error!(
        "a device dropped IRB {raw:p} (op {op:?}) without passing or completing it; completing it with an internal error"
    );
    host.complete(raw.as_ptr(), Status::Internal);
}

fn segments(irb: &VmiIrb) -> &[VmiSeg] {
    &irb.segs[..(irb.nseg as usize).min(abi::VMI_IRB_MAX_SEGS)]
}

/// # Safety
/// The segment must describe memory valid for the returned lifetime.
unsafe fn seg_bytes<'a>(seg: VmiSeg) -> &'a [u8] {
    if seg.len == 0 || seg.base.is_null() {
        return &[];
    }
    // SAFETY: per the contract.
    unsafe { std::slice::from_raw_parts(seg.base, seg.len) }
}

/// An IRB moved off the polling thread. It can be read and completed, nothing else: the only
/// host service it reaches is the thread-safe `complete_from_thread`. Dropping it completes
/// it with [`Status::Internal`].
pub struct RemoteIrb {
    raw: NonNull<VmiIrb>,
    completer: crate::host::Completer,
}

// SAFETY: a RemoteIrb is the unique handle to a pended IRB: the host does not touch a pended
// IRB, so reading its fields and segments from one other thread races with nothing, and the
// only way back is `complete_from_thread`, which the host allows from any thread.
unsafe impl Send for RemoteIrb {}

impl RemoteIrb {
    fn irb(&self) -> &VmiIrb {
        // SAFETY: unique handle to a live, pended IRB (see the Send impl).
        unsafe { self.raw.as_ref() }
    }

    /// The operation.
    pub fn op(&self) -> Op {
        Op::from_code(self.irb().op)
    }

    /// The connection handle.
    pub fn conn(&self) -> u64 {
        self.irb().conn
    }

    /// Total data length.
    pub fn data_len(&self) -> usize {
        segments(self.irb()).iter().map(|s| s.len).sum()
    }

    /// Number of data segments.
    pub fn segment_count(&self) -> usize {
        segments(self.irb()).len()
    }

    /// The bytes of segment `i`, borrowed from the handle.
    ///
    /// # Panics
    /// If `i` is not below `segment_count()`.
    pub fn segment(&self, i: usize) -> &[u8] {
        // SAFETY: segment memory stays valid until the IRB completes, which needs `self`.
        unsafe { seg_bytes(segments(self.irb())[i]) }
    }

    /// Completes the IRB from this thread; the host's next poll runs the completion.
    pub fn complete(self, status: Status) {
        let me = std::mem::ManuallyDrop::new(self);
        me.completer.complete_raw(me.raw.as_ptr(), status);
    }
}

impl Drop for RemoteIrb {
    fn drop(&mut self) {
        log::error!(
            "a device dropped remote IRB {:p} without completing it; completing it with an internal error",
            self.raw
        );
        self.completer
            .complete_raw(self.raw.as_ptr(), Status::Internal);
    }
}

/// An IRB during a device's completion step ([`crate::Device::complete`]). It is lent, never
/// owned: the device reads it and its frame, and cannot pass, complete, keep or swap it (it
/// is not an [`Irb`], and no device can own one), so the host may recycle it afterwards.
#[repr(transparent)]
pub struct CompletingIrb(Irb);

impl CompletingIrb {
    /// Lends `irb` for a completion step.
    ///
    /// The handle is not dropped (dropping an [`Irb`] completes it): the caller keeps it in a
    /// `ManuallyDrop`.
    pub(crate) fn lend(irb: &mut Irb) -> &mut CompletingIrb {
        // SAFETY: `CompletingIrb` is `repr(transparent)` over `Irb`, so the cast keeps layout,
        // validity and the borrow's lifetime.
        unsafe { &mut *(irb as *mut Irb as *mut CompletingIrb) }
    }

    /// This device's per-IRB frame; see [`Irb::frame`].
    pub fn frame<F: bytemuck::Pod>(&mut self) -> &mut F {
        self.0.frame()
    }
}

impl std::ops::Deref for CompletingIrb {
    type Target = Irb;

    /// Read access to the IRB: op, status, segments, peer.
    fn deref(&self) -> &Irb {
        &self.0
    }
}
