//! The host's receiver of fragments a transport hands over with no IRB (device ABI 1.2
//! `poll_direct`), as a safe value a device uses during [`crate::Device::poll_direct`].
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::c_void;

use crate::abi;

thread_local! {
    /// The receiver of the `poll_direct` call running on this thread (each device library
    /// has its own copy of the SDK, so this is per library), or `None`.
    static CURRENT: Cell<Option<(abi::VmiDeliverFn, *mut c_void)>> = const { Cell::new(None) };
}

/// Within [`crate::Device::poll_direct`] (or a `poll` the SDK runs for it): hands a fragment
/// of connection `conn` with IRB `flags` to the host, which reads `data` before it returns.
/// False when not inside a direct poll, or when the host declined this or an earlier
/// fragment of the same poll: hand it up as an IRB. A device that delivers from one place
/// can call this there instead of passing a [`Deliver`] down its call chain.
pub fn offer(conn: u64, flags: u32, data: &[u8]) -> bool {
    let Some((f, ctx)) = CURRENT.with(Cell::get) else {
        return false;
    };
    // SAFETY: set only for the duration of the host's poll_direct call that lent them (see
    // `Scope`), on this thread.
    let rc = unsafe { f(ctx, conn, flags, data.as_ptr(), data.len()) };
    if rc == abi::VMI_COMPLETE {
        true
    } else {
        // Declined: everything after it in this poll goes up as IRBs, so order is kept.
        CURRENT.with(|c| c.set(None));
        false
    }
}

/// Makes `offer` reach the host's receiver until dropped.
pub(crate) struct Scope;

impl Scope {
    /// # Safety
    /// `f` and `ctx` are what the host passed to the running `poll_direct`; the scope is
    /// dropped before that call returns.
    pub(crate) unsafe fn enter(f: abi::VmiDeliverFn, ctx: *mut c_void) -> Scope {
        CURRENT.with(|c| c.set(Some((f, ctx))));
        Scope
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(None));
    }
}

/// Where a transport hands received fragments with no IRB during [`Device::poll_direct`]:
/// the host's receiver, valid for that call only.
pub struct Deliver<'a> {
    f: abi::VmiDeliverFn,
    ctx: *mut std::ffi::c_void,
    _call: std::marker::PhantomData<&'a mut ()>,
}

impl Deliver<'_> {
    /// # Safety
    /// `f` and `ctx` are what the host passed to `poll_direct`, used only during that call.
    pub(crate) unsafe fn new<'a>(f: abi::VmiDeliverFn, ctx: *mut std::ffi::c_void) -> Deliver<'a> {
        Deliver {
            f,
            ctx,
            _call: std::marker::PhantomData,
        }
    }

    /// Hands a fragment of connection `conn` (the raw id IRBs carry) with IRB `flags` to the
    /// host, which reads `data` before it returns. False: the host cannot take it directly
    /// now; send it, and the rest of this poll's fragments, up as IRBs.
    pub fn deliver(&mut self, conn: u64, flags: u32, data: &[u8]) -> bool {
        // SAFETY: the host's receiver and context, within the poll_direct call that lent them
        // (this value cannot outlive it); the bytes are lent for the call.
        let rc = unsafe { (self.f)(self.ctx, conn, flags, data.as_ptr(), data.len()) };
        rc == abi::VMI_COMPLETE
    }
}
