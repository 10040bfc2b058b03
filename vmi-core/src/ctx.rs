//! What callbacks may do (VMI 2.1 allowed sends from notification functions; here they are
//! queued and run after the callback returns, so devices are never re-entered).
#![forbid(unsafe_code)]

use crate::ops::{Core, Mode, Operations, Sealed};

/// The operations a callback may issue ([`Operations`]); they run after the callback
/// returns.
pub struct Ctx<'a> {
    core: &'a mut Core,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(core: &'a mut Core) -> Ctx<'a> {
        Ctx { core }
    }
}

impl Sealed for Ctx<'_> {
    fn core(&mut self) -> (&mut Core, Mode) {
        (self.core, Mode::Deferred)
    }

    fn core_ref(&self) -> &Core {
        self.core
    }
}

impl Operations for Ctx<'_> {}
