//! The host's receiver of fragments a transport hands over with no IRB (device ABI 1.2
//! `poll_direct`). The SDK's `poll_direct` entry makes it reachable through [`offer`] for the
//! duration of the device's [`crate::Device::poll`], so a device offers each fragment where
//! it would hand it up, with no plumbing.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::c_void;

use crate::abi;

thread_local! {
    /// The receiver of the `poll_direct` call running on this thread (each device library
    /// has its own copy of the SDK, so this is per library), or `None`.
    static CURRENT: Cell<Option<(abi::VmiDeliverFn, *mut c_void)>> = const { Cell::new(None) };
}

/// True inside a direct poll whose host has not declined a fragment yet: [`offer`] may take
/// the next one (a device can pick a buffer that comes straight back).
pub fn active() -> bool {
    CURRENT.with(|c| c.get().is_some())
}

/// Within a `poll` the host runs as `poll_direct` (devices with
/// [`crate::Device::RECEIVE_DIRECT`]): hands a fragment of connection `conn` with IRB `flags`
/// to the host, which reads `data` before it returns. False when not inside a direct poll, or
/// when the host declined this or an earlier fragment of the same poll: hand it up as an IRB
/// (order is kept).
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
