//! The bookkeeping every set a transport lends the host shares ([`crate::lent::LentRings`],
//! [`crate::lent_stream::LentStreams`]): the set at a stable heap address, its `busy` flag,
//! the host's skips (granted and counted down), what the host took, and the end of the loan
//! when it is dropped.
#![allow(unsafe_code)]

use std::ptr::NonNull;

use crate::abi::{VmiRingSet, VmiStreamSet};
use crate::host::Host;

/// A set the host may be lent: its first fields are `busy`, `skips` and `taken`, and a host
/// service takes it (or NULL, to end the loan).
pub(crate) trait LoanSet {
    /// `busy`, `skips` and `taken`.
    fn header(&mut self) -> (&mut u32, &mut u32, &mut u64);
    /// Hands `set` (NULL: ends the loan) to the host; false when the host predates the
    /// service.
    fn lend(host: &Host, set: *mut Self) -> bool;
}

impl LoanSet for VmiRingSet {
    fn header(&mut self) -> (&mut u32, &mut u32, &mut u64) {
        (&mut self.busy, &mut self.skips, &mut self.taken)
    }
    fn lend(host: &Host, set: *mut Self) -> bool {
        host.lend_rings(set)
    }
}

impl LoanSet for VmiStreamSet {
    fn header(&mut self) -> (&mut u32, &mut u32, &mut u64) {
        (&mut self.busy, &mut self.skips, &mut self.taken)
    }
    fn lend(host: &Host, set: *mut Self) -> bool {
        host.lend_streams(set)
    }
}

/// One lent set and its bookkeeping. Made busy; dropping it sets it busy and ends the loan.
pub(crate) struct Loan<S: LoanSet> {
    set: HostCell<S>,
    /// The skips granted at the last grant (the host counts `skips` down from it).
    granted: u32,
    host: Option<Host>,
}

/// A value on the heap that the host reaches through a pointer the device handed it (a
/// lent set, a ring cursor, a stream's rest), reached by the device through the same
/// pointer: a `Box` would be asserted unique again whenever it is used or moved, which the
/// host's later accesses through the older pointer would break.
pub(crate) struct HostCell<T>(NonNull<T>);

// SAFETY: the cell owns its value alone, as a `Box` does; the host reaches it only on the
// polling thread, while the device is not called.
unsafe impl<T: Send> Send for HostCell<T> {}

impl<T> HostCell<T> {
    /// `value`, on the heap.
    pub fn new(value: T) -> HostCell<T> {
        HostCell(NonNull::from(Box::leak(Box::new(value))))
    }

    /// The value's address, valid until the cell is dropped.
    #[inline]
    pub fn get(&self) -> *mut T {
        self.0.as_ptr()
    }
}

impl<T: Default> Default for HostCell<T> {
    fn default() -> HostCell<T> {
        HostCell::new(T::default())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for HostCell<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SAFETY: read on the polling thread while the host is not using it (the only
        // place a device formats its state).
        unsafe { &*self.0.as_ptr() }.fmt(f)
    }
}

impl<T> Drop for HostCell<T> {
    fn drop(&mut self) {
        // SAFETY: made by `Box::leak` in `new`, dropped once.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

impl<S: LoanSet> Loan<S> {
    /// `set`, made busy with no skips.
    pub fn new(mut set: S) -> Loan<S> {
        let (busy, skips, _) = set.header();
        *busy = 1;
        *skips = 0;
        Loan {
            set: HostCell::new(set),
            granted: 0,
            host: None,
        }
    }

    /// The set, for one access of this handle's own (no reference outlives the expression
    /// that makes it).
    #[inline]
    #[allow(clippy::mut_from_ref)]
    fn set(&self) -> &mut S {
        // SAFETY: the set is touched only on the polling thread, by the device (through
        // this handle, one access at a time) or by the host while the device is not called,
        // never at once.
        unsafe { &mut *self.set.get() }
    }

    /// What `f` reads from the set (a count the host keeps in it); `f` must not reach this
    /// loan again.
    #[inline]
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(self.set())
    }

    /// The set, for the device's changes to its lists.
    #[inline]
    pub fn set_mut(&mut self) -> &mut S {
        self.set()
    }

    /// Offers the set to `host`; false when the host predates the service (nothing changes).
    pub fn lend(&mut self, host: &Host) -> bool {
        let lent = S::lend(host, self.set.get());
        if lent {
            self.host = Some(*host);
        }
        lent
    }

    /// True when the host has the set.
    #[inline]
    pub fn is_lent(&self) -> bool {
        self.host.is_some()
    }

    /// The host reads nothing of the set until it is resumed.
    #[inline]
    pub fn set_busy(&self) {
        *self.set().header().0 = 1;
    }

    /// True while the host reads nothing of the set.
    #[inline]
    pub fn busy(&self) -> bool {
        *self.set().header().0 != 0
    }

    /// The host's polls that skipped the device since the last grant, not yet taken.
    #[inline]
    pub fn skipped(&self) -> u32 {
        self.granted.saturating_sub(*self.set().header().1)
    }

    /// [`Loan::skipped`], counted once: they are taken.
    #[inline]
    pub fn take_skipped(&mut self) -> u32 {
        let skipped = self.skipped();
        self.granted -= skipped;
        skipped
    }

    /// What the host took from the set, in all.
    pub fn taken(&self) -> u64 {
        *self.set().header().2
    }

    /// Lets the host skip up to `skips` more of the device's polls; `busy` stays as it is.
    #[inline]
    pub fn grant(&mut self, skips: u32) {
        self.granted = skips;
        *self.set().header().1 = skips;
    }

    /// [`Loan::grant`], and the host may read the set again. The caller keeps the set's
    /// contract for what it lists (it is `unsafe` there).
    #[inline]
    pub fn resume(&mut self, skips: u32) {
        self.grant(skips);
        *self.set().header().0 = 0;
    }
}

impl<S: LoanSet> Drop for Loan<S> {
    fn drop(&mut self) {
        self.set_busy();
        if let Some(host) = self.host.take() {
            S::lend(&host, std::ptr::null_mut());
        }
    }
}
