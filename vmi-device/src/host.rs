//! The host as a device sees it: the services table behind safe methods.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::ptr::NonNull;

use crate::abi::{
    VMI_HOST_SERVICES_SIZE_1_0, VMI_HOST_SERVICES_SIZE_1_1, VMI_HOST_SERVICES_SIZE_1_7,
    VmiHostServices, VmiIrb, VmiRingSet, VmiStr, VmiStreamSet,
};
use crate::irb::{Irb, Op, RemoteIrb};
use crate::status::Status;

/// The host, as a device sees it. Cheap to copy; neither `Send` nor `Sync`, because the
/// services it calls are valid only on the polling thread. [`Host::completer`] and
/// [`Host::waker`] give the two pieces other threads may use.
///
/// One pointer wide, so that an [`Irb`] handle (which carries its host) stays small: every
/// filter step moves one in and out of its device.
#[derive(Clone, Copy)]
pub struct Host {
    parts: &'static HostParts,
}

/// What a [`Host`] points to: made once per device instance and never freed, like the
/// services table and context it holds (a `Host` copy a device kept anywhere stays valid).
/// Raw pointers make it neither `Send` nor `Sync`, so neither is `Host`.
struct HostParts {
    services: *const VmiHostServices,
    ctx: *mut c_void,
    frame_len: usize,
    /// The table's `abi_minor`, kept here: every poll asks it (`receive_credit`).
    abi_minor: u32,
}

impl Host {
    /// Wraps the pointers the host gave `create`. `frame_len` is the size of the device's
    /// per-IRB frame as its descriptor declares it.
    ///
    /// # Safety
    /// Both pointers must be those passed to the device's `create`, valid for its life, and
    /// the host must reserve `frame_len` bytes of frame per IRB for this device.
    pub unsafe fn from_raw(
        services: *const VmiHostServices,
        ctx: *mut c_void,
        frame_len: usize,
    ) -> Host {
        // Leaked on purpose (24 bytes per device instance): see `HostParts`.
        let parts = Box::leak(Box::new(HostParts {
            services,
            ctx,
            frame_len,
            // SAFETY: the caller's promise: a valid services table.
            abi_minor: unsafe { (*services).abi_minor },
        }));
        Host { parts }
    }

    pub(crate) fn svc(&self) -> &VmiHostServices {
        // SAFETY: `from_raw`'s contract: the table outlives the device.
        unsafe { &*self.parts.services }
    }

    /// Bytes of frame the host reserves for this device in every IRB.
    pub fn frame_len(&self) -> usize {
        self.parts.frame_len
    }

    /// The host's ABI minor.
    pub fn abi_minor(&self) -> u32 {
        self.parts.abi_minor
    }

    /// True when the host's services table reaches past the 1.0 layout (so 1.1 services
    /// such as `irb_available` are there).
    fn has_1_1(&self) -> bool {
        self.svc().size as usize > VMI_HOST_SERVICES_SIZE_1_0 as usize
    }

    /// Allocates a receive-direction IRB originated by this device (a transport), or `None`
    /// when the host pushes back (its pool is exhausted): try again on a later poll.
    pub fn alloc_irb(&self, op: Op, conn: u64) -> Option<Irb> {
        // SAFETY: a valid host pointer; the host returns a live IRB or NULL.
        let raw = unsafe { (self.svc().irb_alloc)(self.parts.ctx, op.code(), conn) };
        let raw = NonNull::new(raw)?;
        // SAFETY: the IRB was just allocated for this device.
        let frame = unsafe { (self.svc().irb_frame)(self.parts.ctx, raw.as_ptr()) };
        // SAFETY: a live IRB of this device with its frame, on the polling thread (Host is
        // not Send).
        Some(unsafe { Irb::from_raw(raw.as_ptr(), frame, *self) })
    }

    /// Reports that the peer of `conn` went away (a PEER_DISCONNECT IRB handed up with
    /// `status` and `detail`: `Ok` for a clean close). False when the host had no IRB to
    /// report with (its pool is exhausted): nothing will be released for it, so a transport
    /// whose close is answered answers it without waiting for
    /// [`crate::Device::peer_close_released`].
    pub fn report_peer_disconnect(&self, conn: u64, status: Status, detail: &str) -> bool {
        let Some(mut irb) = self.alloc_irb(Op::PeerDisconnect, conn) else {
            return false;
        };
        if !detail.is_empty() {
            irb.set_detail(detail);
        }
        // The status travels in the IRB; a PEER_DISCONNECT is handed up, not completed.
        irb.set_status(status);
        irb.pass();
        true
    }

    /// How many receive IRBs this device may still allocate before [`Host::alloc_irb`] returns
    /// `None` (ABI 1.1; an older host answers `u32::MAX`, meaning "no bound known").
    pub fn irbs_available(&self) -> u32 {
        if !self.has_1_1() {
            return u32::MAX;
        }
        // SAFETY: the table is large enough to hold the 1.1 entry (checked above).
        unsafe { (self.svc().irb_available)(self.parts.ctx) }
    }

    /// How many fragments a poll given `budget` may hand up (receive IRBs and direct
    /// deliveries together): `budget` itself from a host of ABI 1.6 on, which bounds it by
    /// the receive IRBs it can hand out before the call; the smaller of `budget` and
    /// [`Host::irbs_available`] from an older one. Ask once per poll and count down.
    #[inline]
    pub fn receive_credit(&self, budget: usize) -> usize {
        if self.parts.abi_minor >= 6 {
            budget
        } else {
            budget.min(self.irbs_available() as usize)
        }
    }

    /// Lends the host `set` (NULL: ends the loan); false when the host predates ABI 1.7.
    /// Through [`crate::lent::LentRings`], which keeps the contract.
    pub(crate) fn lend_rings(&self, set: *mut VmiRingSet) -> bool {
        if (self.svc().size as usize) <= VMI_HOST_SERVICES_SIZE_1_1 as usize {
            return false;
        }
        // SAFETY: the table holds the 1.7 entry (checked above); the set's validity is
        // `LentRings`' business.
        unsafe { (self.svc().lend_rings)(self.parts.ctx, set) };
        true
    }

    /// Lends the host `set` (NULL: ends the loan); false when the host predates ABI 1.8.
    /// Through [`crate::lent_stream::LentStreams`], which keeps the contract.
    pub(crate) fn lend_streams(&self, set: *mut VmiStreamSet) -> bool {
        if (self.svc().size as usize) <= VMI_HOST_SERVICES_SIZE_1_7 as usize {
            return false;
        }
        // SAFETY: the table holds the 1.8 entry (checked above); the set's validity is
        // `LentStreams`' business.
        unsafe { (self.svc().lend_streams)(self.parts.ctx, set) };
        true
    }

    /// A handle for a new incoming connection owned by this device.
    pub fn conn_new(&self) -> u64 {
        // SAFETY: valid host pointer.
        unsafe { (self.svc().conn_new)(self.parts.ctx) }
    }

    /// This process's key.
    pub fn local_key(&self) -> String {
        // SAFETY: the host returns a string that lives as long as the host.
        unsafe { (self.svc().local_key)(self.parts.ctx).to_string_lossy() }
    }

    /// The chains' filter signature exchanged during the connect handshake.
    pub fn signature(&self) -> String {
        // SAFETY: as for `local_key`.
        unsafe { (self.svc().signature)(self.parts.ctx).to_string_lossy() }
    }

    /// Wakes a `wait` in progress.
    pub fn wake(&self) {
        // SAFETY: valid host pointer; `wake` is thread-safe.
        unsafe { (self.svc().wake)(self.parts.ctx) }
    }

    /// A handle that wakes this host's `wait` from any thread.
    pub fn waker(&self) -> HostWaker {
        HostWaker {
            services: self.parts.services,
            ctx: self.parts.ctx,
        }
    }

    /// A handle that completes [`RemoteIrb`]s from any thread.
    pub fn completer(&self) -> Completer {
        Completer {
            services: self.parts.services,
            ctx: self.parts.ctx,
        }
    }

    pub(crate) fn pass(&self, irb: *mut VmiIrb) {
        // SAFETY: a live IRB the device owned until now, on the polling thread.
        unsafe { (self.svc().pass)(self.parts.ctx, irb) }
    }

    pub(crate) fn complete(&self, irb: *mut VmiIrb, status: Status) {
        // SAFETY: as for `pass`.
        unsafe { (self.svc().complete)(self.parts.ctx, irb, status.code()) }
    }

    pub(crate) fn attach(&self, irb: *mut VmiIrb, data: &[u8]) -> bool {
        // SAFETY: a live IRB the device holds; the host copies the bytes.
        unsafe { (self.svc().irb_attach)(self.parts.ctx, irb, data.as_ptr(), data.len()) == 0 }
    }

    pub(crate) fn set_peer(&self, irb: *mut VmiIrb, host: VmiStr, key: VmiStr) {
        // SAFETY: a live IRB; the host copies both strings.
        unsafe { (self.svc().irb_set_peer)(self.parts.ctx, irb, host, key) }
    }

    pub(crate) fn set_detail(&self, irb: *mut VmiIrb, detail: VmiStr) {
        // SAFETY: a live IRB; the host copies the text.
        unsafe { (self.svc().irb_set_detail)(self.parts.ctx, irb, detail) }
    }
}

/// Wakes a host's `wait` from any thread.
#[derive(Clone, Copy)]
pub struct HostWaker {
    services: *const VmiHostServices,
    ctx: *mut c_void,
}

// SAFETY: only the thread-safe `wake` service is reachable through a HostWaker, and the
// pointers stay valid for the device's life.
unsafe impl Send for HostWaker {}
// SAFETY: as above.
unsafe impl Sync for HostWaker {}

impl HostWaker {
    /// Wakes the host.
    pub fn wake(&self) {
        // SAFETY: valid pointers; `wake` may be called from any thread.
        unsafe { ((*self.services).wake)(self.ctx) }
    }
}

/// Completes [`RemoteIrb`]s from any thread; the host's next poll picks the completions up.
#[derive(Clone, Copy)]
pub struct Completer {
    services: *const VmiHostServices,
    ctx: *mut c_void,
}

// SAFETY: only the thread-safe `complete_from_thread` service is reachable through a
// Completer, and the pointers stay valid for the device's life.
unsafe impl Send for Completer {}
// SAFETY: as above.
unsafe impl Sync for Completer {}

impl Completer {
    /// Completes `irb` with `status` from this thread.
    pub fn complete(&self, irb: RemoteIrb, status: Status) {
        irb.complete(status);
    }

    pub(crate) fn complete_raw(&self, irb: *mut VmiIrb, status: Status) {
        // SAFETY: a live pended IRB whose unique handle is being consumed; the service is
        // thread-safe.
        unsafe { ((*self.services).complete_from_thread)(self.ctx, irb, status.code()) }
    }
}
