//! The host's receiver of fragments a transport hands over with no IRB (device ABI 1.2
//! `poll_direct`), as a safe value a device uses during [`crate::Device::poll_direct`].
#![allow(unsafe_code)]

use crate::abi;

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
