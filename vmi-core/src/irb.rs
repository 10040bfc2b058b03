//! Host-side IRB storage: the slot behind each `VmiIrb` and the per-chain pool that makes the
//! steady state allocation-free (VMI 2.1 allocated its IRB-like "send handles" per message).
#![allow(unsafe_code)]

use crate::abi::{VMI_IRB_MAX_SEGS, VmiIrb, VmiSeg, VmiStr};
use crate::buffer::Buffer;

/// Longest device path an IRB can travel (filters plus the transport).
pub(crate) const MAX_PATH: usize = 32;

/// Which way an IRB travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Send chain, application to wire.
    Down,
    /// Receive chain, wire to application.
    Up,
}

/// What the application is told when the IRB is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A fragment send: send-completion callback.
    Send,
    /// A connection attempt: connect callback.
    Connect,
    /// The answer to an incoming connection: no callback unless it fails.
    Answer,
    /// A local disconnect: disconnect callback.
    Disconnect,
    /// Something a transport produced: receive, connect request, peer disconnect.
    Received,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(crate) struct FrameBlock([u8; 64]);

/// An IRB and what only the host knows about it. `abi` must stay the first field: the
/// host hands `*mut IrbSlot` to devices as `*mut VmiIrb`.
#[repr(C)]
pub(crate) struct IrbSlot {
    pub abi: VmiIrb,
    pub dir: Dir,
    /// Index into the IRB's chain of the device that holds it now (-1: not entered yet;
    /// for the receive chain, chain.len(): not entered yet from below).
    pub pos: isize,
    /// Devices (engine indices) whose completion step runs when the IRB completes.
    pub path: [u8; MAX_PATH],
    pub depth: u8,
    /// Engine index of the transport that owns the connection.
    pub transport: u8,
    pub purpose: Purpose,
    /// True once the completion steps ran (a failed receive is unwound before delivery).
    pub unwound: bool,
    /// The application's token for the completion callback.
    pub token: u64,
    /// Send buffers owned while the IRB is in flight.
    pub bufs: Vec<Buffer>,
    /// Host copies attached by devices (connect data, reply data).
    pub attached: Vec<Vec<u8>>,
    pub peer_host: String,
    pub peer_key: String,
    pub detail: String,
    pub frames: Box<[FrameBlock]>,
}

impl IrbSlot {
    fn new(frame_blocks: usize) -> Box<IrbSlot> {
        Box::new(IrbSlot {
            abi: VmiIrb {
                op: 0,
                flags: 0,
                status: 0,
                nseg: 0,
                conn: 0,
                segs: [VmiSeg::EMPTY; VMI_IRB_MAX_SEGS],
                peer_host: VmiStr::EMPTY,
                peer_key: VmiStr::EMPTY,
            },
            dir: Dir::Down,
            pos: -1,
            path: [0; MAX_PATH],
            depth: 0,
            transport: 0,
            purpose: Purpose::Send,
            unwound: false,
            token: 0,
            bufs: Vec::with_capacity(VMI_IRB_MAX_SEGS),
            attached: Vec::new(),
            peer_host: String::new(),
            peer_key: String::new(),
            detail: String::new(),
            frames: vec![FrameBlock([0; 64]); frame_blocks].into_boxed_slice(),
        })
    }

    /// Points `abi.peer_*` at the owned strings.
    pub fn sync_peer(&mut self) {
        self.abi.peer_host = VmiStr::new(&self.peer_host);
        self.abi.peer_key = VmiStr::new(&self.peer_key);
    }

    /// Appends a segment; false when full.
    pub fn push_seg(&mut self, base: *mut u8, len: usize) -> bool {
        let n = self.abi.nseg as usize;
        if n >= VMI_IRB_MAX_SEGS {
            return false;
        }
        self.abi.segs[n] = VmiSeg { base, len };
        self.abi.nseg += 1;
        true
    }

    pub fn segs(&self) -> &[VmiSeg] {
        &self.abi.segs[..(self.abi.nseg as usize).min(VMI_IRB_MAX_SEGS)]
    }

    pub fn frame_ptr(&mut self, offset: usize) -> *mut u8 {
        // SAFETY: offsets are computed from the frame layout that sized `frames`.
        unsafe { (self.frames.as_mut_ptr() as *mut u8).add(offset) }
    }
}

/// A free list of slots; each slot is boxed so its address is stable while devices hold it.
pub(crate) struct IrbPool {
    // Boxed on purpose: devices hold raw pointers to slots, which must not move.
    #[allow(clippy::vec_box)]
    free: Vec<Box<IrbSlot>>,
    frame_blocks: usize,
    /// Slots handed out and not yet returned.
    pub live: usize,
}

impl IrbPool {
    pub fn new(frame_bytes: usize) -> IrbPool {
        IrbPool {
            free: Vec::new(),
            frame_blocks: frame_bytes.div_ceil(64),
            live: 0,
        }
    }

    /// A clean slot.
    pub fn take(&mut self) -> *mut IrbSlot {
        let slot = self
            .free
            .pop()
            .unwrap_or_else(|| IrbSlot::new(self.frame_blocks));
        self.live += 1;
        Box::into_raw(slot)
    }

    /// Returns a slot. Its buffers must already have been handed back or dropped.
    ///
    /// # Safety
    /// `slot` must come from `take` of this pool and not be used afterwards.
    pub unsafe fn give(&mut self, slot: *mut IrbSlot) {
        // SAFETY: per the contract.
        let mut s = unsafe { Box::from_raw(slot) };
        s.abi.op = 0;
        s.abi.flags = 0;
        s.abi.status = 0;
        s.abi.nseg = 0;
        s.abi.conn = 0;
        s.abi.peer_host = VmiStr::EMPTY;
        s.abi.peer_key = VmiStr::EMPTY;
        s.pos = -1;
        s.depth = 0;
        s.unwound = false;
        s.token = 0;
        s.bufs.clear();
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
            self.free.push(IrbSlot::new(self.frame_blocks));
        }
    }
}

impl Drop for IrbPool {
    fn drop(&mut self) {
        if self.live > 0 {
            log::debug!(
                "{} IRBs still held by devices or the application at shutdown",
                self.live
            );
        }
    }
}
