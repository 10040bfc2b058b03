//! What callbacks may do (VMI 2.1 allowed sends from notification functions; here they are
//! queued and run after the callback returns, so devices are never re-entered).
#![forbid(unsafe_code)]

use crate::ops::{Core, Mode, Operations, Sealed};

/// The operations a callback may issue ([`Operations`]); they run after the callback
/// returns.
pub struct Ctx<'a> {
    core: &'a mut Core,
    /// The request whose callback this is, when it was delivered at once: its bytes are
    /// still where they arrived, and `msg_read` reads them there.
    lent: Option<(crate::ReceiveId, &'a [u8])>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(core: &'a mut Core) -> Ctx<'a> {
        Ctx { core, lent: None }
    }

    /// The context of a `request` callback, with the request's bytes if they are lent.
    pub(crate) fn lending(
        core: &'a mut Core,
        lent: Option<(crate::ReceiveId, &'a [u8])>,
    ) -> Ctx<'a> {
        Ctx { core, lent }
    }
}

impl Sealed for Ctx<'_> {
    fn core(&mut self) -> (&mut Core, Mode) {
        (self.core, Mode::Deferred)
    }

    fn core_ref(&self) -> &Core {
        self.core
    }

    fn lent(&self) -> Option<(crate::ReceiveId, &[u8])> {
        self.lent
    }
}

impl Operations for Ctx<'_> {}
