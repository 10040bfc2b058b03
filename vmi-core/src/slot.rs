//! Host-side IRB storage: the slot behind each `VmiIrb`, the owning [`Slot`] handle, and the
//! pool that makes the steady state allocation-free (VMI 2.1 allocated its IRB-like "send
//! handles" per message).
//!
//! A [`Slot`] is the unique owner of a pooled slot while the host (engine or application
//! layer) holds it; a device holds the raw `VmiIrb` pointer instead. All `unsafe` about slots
//! lives here: the rest of the host reads and writes slots through `Slot`'s safe methods.
#![allow(unsafe_code)]

use std::ptr::NonNull;

use crate::abi::{VMI_IRB_MAX_SEGS, VmiIrb, VmiSeg, VmiStr};
use crate::buffer::Buffer;
use crate::status::Status;

/// Engine index of a device. The assembly refuses specfiles with more devices than fit.
pub(crate) type DevIndex = u16;
/// "No device yet" (a connect whose transport is chosen when it runs).
pub(crate) const NO_DEVICE: DevIndex = DevIndex::MAX;

/// Which way an IRB travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Send chain, application to wire.
    Down,
    /// Receive chain, wire to application.
    Up,
}

/// Which limit a slot counts against while it is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// Control operations (connect, answer, disconnect): not limited, they are rare and a
    /// close must always be possible.
    Control,
    /// An application send: at most `MAX_SENDS_IN_FLIGHT`.
    Send,
    /// A received IRB, from its allocation by a transport to its release by the application:
    /// at most `MAX_RECEIVES_IN_FLIGHT`.
    Recv,
}

/// What the application is told when the IRB is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A fragment send: send-completion callback.
    Send,
    /// An inline send (VMI 2.1's `VMI_Stream_Send_Inline` has no completion routine): freed
    /// at once when it succeeds; a failure is reported like a `Send`'s.
    SendInline,
    /// A connection attempt: connect callback.
    Connect,
    /// The answer to an incoming connection: no callback unless it fails.
    Answer,
    /// A local disconnect: disconnect callback.
    Disconnect,
    /// Something a transport produced: receive, connect request, peer disconnect.
    Received,
    /// A message of this engine to the peer's (see `hostmsg`): no callback.
    Internal,
    /// A chunk of a bonded connection on one of its rails (see `rails`): the token is its
    /// length, for the rail's accounting.
    RailChunk,
    /// An acknowledgement or give-up record on a rail: no callback.
    RailControl,
    /// An abort of a connection (see `timeouts`): disconnect callback.
    Abort,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct FrameBlock([u8; 64]);

/// An IRB and what only the host knows about it. `abi` must stay the first field: the
/// host hands `*mut IrbSlot` to devices as `*mut VmiIrb`.
#[repr(C)]
pub(crate) struct IrbSlot {
    abi: VmiIrb,
    dir: Dir,
    /// Index into the IRB's chain of the device that holds it now (-1: not entered yet).
    pos: isize,
    /// Devices whose completion step runs when the IRB completes, in the order they joined.
    /// Its capacity is the longest chain, and a device joins at most once per traversal, so
    /// pushing never allocates.
    path: Vec<DevIndex>,
    /// The transport that owns the connection.
    transport: DevIndex,
    /// The chain it travels: 0 the send and receive chains, 1.. the named chains.
    chain: u8,
    purpose: Purpose,
    class: Class,
    /// True once the completion steps ran (a failed receive is unwound before delivery).
    unwound: bool,
    /// A send on a connection with a send timeout: its completion is progress.
    timed: bool,
    /// The application's token for the completion callback.
    token: u64,
    /// Send buffers owned while the IRB is in flight.
    bufs: Vec<Buffer>,
    /// Host copies attached by devices or the application (connect data, reply data).
    attached: Vec<Vec<u8>>,
    peer_host: String,
    peer_key: String,
    detail: String,
    frames: Box<[FrameBlock]>,
}

/// The unique owner of a slot taken from an [`IrbPool`]. Not `Clone`: holding one means
/// nobody else (no device, no queue) holds the slot.
pub(crate) struct Slot(NonNull<IrbSlot>);

// SAFETY: a slot's raw pointers (its segments, and the `NonNull` of a `Slot`) point into
// memory the slot owns (`bufs`, `attached`), into its pool's slot storage, or into device
// memory lent for the IRB's flight; all of it belongs to one engine and is reached only by
// the thread driving that engine (devices touch a slot only inside the engine's calls, and a
// device's other threads go through `complete_from_thread`, which carries the address only).
// Moving the engine to another thread moves all of them together.
unsafe impl Send for IrbSlot {}
// SAFETY: as for `IrbSlot`: a `Slot` is the unique owner of its slot.
unsafe impl Send for Slot {}

impl std::ops::Deref for Slot {
    type Target = IrbSlot;
    fn deref(&self) -> &IrbSlot {
        // SAFETY: a Slot is the unique owner of a live pooled slot.
        unsafe { self.0.as_ref() }
    }
}

impl std::ops::DerefMut for Slot {
    fn deref_mut(&mut self) -> &mut IrbSlot {
        // SAFETY: as above, and `&mut self` makes the access exclusive.
        unsafe { self.0.as_mut() }
    }
}

impl Slot {
    /// Gives up ownership to a device (or a queue); the pointer is the device's `VmiIrb`.
    pub fn into_raw(self) -> *mut VmiIrb {
        self.0.as_ptr() as *mut VmiIrb
    }

    /// Takes ownership back from a device.
    ///
    /// # Safety
    /// `raw` must come from [`Slot::into_raw`] (a live slot of a live pool) and no other
    /// `Slot` for it may exist: the device that held it has handed it back.
    pub unsafe fn from_raw(raw: *mut VmiIrb) -> Slot {
        Slot(NonNull::new(raw as *mut IrbSlot).expect("a device handed back a NULL IRB"))
    }

    /// The address, as devices see it (for logs and for telling slots apart).
    pub fn addr(&self) -> usize {
        self.0.as_ptr() as usize
    }
}

impl IrbSlot {
    fn new(frame_blocks: usize, max_path: usize) -> Box<IrbSlot> {
        Box::new(IrbSlot {
            abi: VmiIrb::EMPTY,
            dir: Dir::Down,
            pos: -1,
            path: Vec::with_capacity(max_path),
            transport: NO_DEVICE,
            chain: 0,
            purpose: Purpose::Send,
            class: Class::Control,
            unwound: false,
            timed: false,
            token: 0,
            bufs: Vec::with_capacity(VMI_IRB_MAX_SEGS),
            attached: Vec::new(),
            peer_host: String::new(),
            peer_key: String::new(),
            detail: String::new(),
            frames: vec![FrameBlock([0; 64]); frame_blocks].into_boxed_slice(),
        })
    }

    // ---- what devices see ----

    pub fn op(&self) -> u32 {
        self.abi.op
    }
    pub fn set_op(&mut self, op: u32) {
        self.abi.op = op;
    }
    pub fn conn_raw(&self) -> u64 {
        self.abi.conn
    }
    pub fn set_conn_raw(&mut self, conn: u64) {
        self.abi.conn = conn;
    }
    pub fn flags(&self) -> u32 {
        self.abi.flags
    }
    pub fn set_flags(&mut self, flags: u32) {
        self.abi.flags = flags;
    }
    pub fn status(&self) -> Status {
        Status::from_code(self.abi.status)
    }
    pub fn status_code(&self) -> i32 {
        self.abi.status
    }
    pub fn set_status_code(&mut self, code: i32) {
        self.abi.status = code;
    }

    /// The data segments.
    pub fn segs(&self) -> &[VmiSeg] {
        &self.abi.segs[..(self.abi.nseg as usize).min(VMI_IRB_MAX_SEGS)]
    }

    /// Appends a segment; false when all are in use.
    ///
    /// The memory must stay valid until the IRB completes: callers pass memory the slot owns
    /// (`bufs`, `attached`) or that a device owns under the same rule.
    fn push_seg(&mut self, base: *mut u8, len: usize) -> bool {
        let n = self.abi.nseg as usize;
        if n >= VMI_IRB_MAX_SEGS {
            return false;
        }
        self.abi.segs[n] = VmiSeg { base, len };
        self.abi.nseg += 1;
        true
    }

    /// Takes `buf` for the life of the IRB and appends it as a segment. Returns the buffer
    /// back when all segments are in use.
    #[inline]
    pub fn push_buffer(&mut self, buf: Buffer) -> Result<(), Buffer> {
        if self.abi.nseg as usize >= VMI_IRB_MAX_SEGS {
            return Err(buf);
        }
        let (p, l) = (buf.as_ptr() as *mut u8, buf.len());
        // Moving the Buffer into `bufs` keeps its heap memory where it is.
        self.bufs.push(buf);
        self.push_seg(p, l);
        Ok(())
    }

    /// Copies `data` into memory the slot owns and appends it as a segment; false when all
    /// segments are in use.
    pub fn attach_copy(&mut self, data: &[u8]) -> bool {
        self.attach_vec(data.to_vec())
    }

    /// As [`IrbSlot::attach_copy`], taking the vector.
    pub fn attach_vec(&mut self, v: Vec<u8>) -> bool {
        if self.abi.nseg as usize >= VMI_IRB_MAX_SEGS {
            return false;
        }
        let (p, l) = (v.as_ptr() as *mut u8, v.len());
        // Moving the Vec keeps its heap buffer in place.
        self.attached.push(v);
        self.push_seg(p, l);
        true
    }

    /// Total bytes in the send buffers.
    #[inline]
    pub fn buffers_len(&self) -> u64 {
        self.bufs.iter().map(|b| b.len() as u64).sum()
    }

    /// The send buffers (returned to the application in the send completion).
    pub fn buffers_mut(&mut self) -> &mut Vec<Buffer> {
        &mut self.bufs
    }

    pub fn peer_host(&self) -> &str {
        &self.peer_host
    }
    pub fn peer_key(&self) -> &str {
        &self.peer_key
    }
    /// Sets the peer strings (host copies) and points the ABI view at them.
    pub fn set_peer(&mut self, host: String, key: String) {
        self.peer_host = host;
        self.peer_key = key;
        self.abi.peer_host = VmiStr::new(&self.peer_host);
        self.abi.peer_key = VmiStr::new(&self.peer_key);
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }
    pub fn take_detail(&mut self) -> String {
        std::mem::take(&mut self.detail)
    }
    pub fn set_detail(&mut self, detail: String) {
        self.detail = detail;
    }

    // ---- what only the host knows ----

    pub fn dir(&self) -> Dir {
        self.dir
    }
    pub fn pos(&self) -> isize {
        self.pos
    }
    pub fn set_pos(&mut self, pos: isize) {
        self.pos = pos;
    }
    /// Starts the IRB's journey: direction and position before its first device.
    /// A send whose completion counts as progress against its connection's send timeout.
    #[inline]
    pub fn timed(&self) -> bool {
        self.timed
    }
    pub fn set_timed(&mut self) {
        self.timed = true;
    }
    pub fn enter(&mut self, dir: Dir, pos: isize) {
        self.dir = dir;
        self.pos = pos;
    }
    pub fn transport(&self) -> DevIndex {
        self.transport
    }
    /// The chain it travels (0: the send and receive chains).
    #[inline]
    pub fn chain(&self) -> u8 {
        self.chain
    }
    pub fn set_chain(&mut self, chain: u8) {
        self.chain = chain;
    }
    pub fn set_transport(&mut self, t: DevIndex) {
        self.transport = t;
    }
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }
    pub fn class(&self) -> Class {
        self.class
    }
    pub fn set_class(&mut self, c: Class) {
        self.class = c;
    }
    pub fn set_purpose(&mut self, p: Purpose) {
        self.purpose = p;
    }
    pub fn token(&self) -> u64 {
        self.token
    }
    pub fn set_token(&mut self, t: u64) {
        self.token = t;
    }
    pub fn unwound(&self) -> bool {
        self.unwound
    }
    pub fn set_unwound(&mut self) {
        self.unwound = true;
    }

    /// Adds a device to the completion path.
    pub fn join_path(&mut self, d: DevIndex) {
        self.path.push(d);
    }
    /// Takes the most recent device off the completion path.
    pub fn pop_path(&mut self) -> Option<DevIndex> {
        self.path.pop()
    }

    /// The device's frame at `offset` inside this slot's frame area.
    pub fn frame_ptr(&mut self, offset: usize) -> *mut u8 {
        debug_assert!(offset <= self.frames.len() * 64);
        // SAFETY: offsets come from the frame layout that sized `frames` (the engine checks
        // each device's offset + size against the area when it starts).
        unsafe { (self.frames.as_mut_ptr() as *mut u8).add(offset) }
    }
}

/// A free list of slots; each slot is boxed so its address is stable while devices hold it.
pub(crate) struct IrbPool {
    // Boxed on purpose: devices hold raw pointers to slots, which must not move.
    #[allow(clippy::vec_box)]
    free: Vec<Box<IrbSlot>>,
    frame_blocks: usize,
    max_path: usize,
    /// Slots handed out and not yet returned.
    live: usize,
}

impl IrbPool {
    pub fn new(frame_bytes: usize, max_path: usize) -> IrbPool {
        IrbPool {
            free: Vec::new(),
            frame_blocks: frame_bytes.div_ceil(64),
            max_path,
            live: 0,
        }
    }

    /// Slots handed out and not yet returned.
    pub fn live(&self) -> usize {
        self.live
    }

    /// A clean slot.
    pub fn take(&mut self) -> Slot {
        let slot = self
            .free
            .pop()
            .unwrap_or_else(|| IrbSlot::new(self.frame_blocks, self.max_path));
        self.live += 1;
        Slot(NonNull::from(Box::leak(slot)))
    }

    /// Returns a slot, cleared. Buffers still in it are dropped (the engine hands inline
    /// buffers back before).
    pub fn give(&mut self, slot: Slot) {
        // SAFETY: a Slot owns a slot leaked from a Box in `take`; it is consumed here.
        let mut s = unsafe { Box::from_raw(slot.0.as_ptr()) };
        // Segments past `nseg` are never read: only the header fields are reset.
        s.abi.op = 0;
        s.abi.flags = 0;
        s.abi.status = 0;
        s.abi.nseg = 0;
        s.abi.conn = 0;
        s.abi.peer_host = VmiStr::EMPTY;
        s.abi.peer_key = VmiStr::EMPTY;
        s.pos = -1;
        s.path.clear();
        s.transport = NO_DEVICE;
        s.chain = 0;
        s.purpose = Purpose::Send;
        s.class = Class::Control;
        s.unwound = false;
        s.timed = false;
        s.token = 0;
        if !s.bufs.is_empty() {
            // Only then: clearing an empty vector still calls the slice's drop glue.
            s.bufs.clear();
        }
        s.attached.clear();
        s.peer_host.clear();
        s.peer_key.clear();
        s.detail.clear();
        for b in s.frames.iter_mut() {
            b.0 = [0; 64];
        }
        self.live -= 1;
        self.free.push(s);
    }

    /// Pre-allocates `n` slots.
    pub fn reserve(&mut self, n: usize) {
        self.free.reserve(n);
        for _ in 0..n {
            self.free
                .push(IrbSlot::new(self.frame_blocks, self.max_path));
        }
    }
}

impl Drop for IrbPool {
    fn drop(&mut self) {
        if self.live > 0 {
            log::debug!(
                "{} IRBs still held by devices or the application at shutdown (their memory is kept)",
                self.live
            );
        }
    }
}
