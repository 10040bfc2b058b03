//! What a transport lends the host, whatever it lends ([`Lent`]: its rings,
//! [`crate::lent::LentRings`], or its stream sockets, [`crate::lent_stream::LentStreams`]):
//! the set at a stable heap address, its `busy` flag, the host's skips (granted and counted
//! down), what the host took, the lists the set points into, and the end of the loan when it
//! is dropped. Each kind adds only its own `publish`.
#![allow(unsafe_code)]

use std::ptr::NonNull;

use crate::abi::{VmiRing, VmiRingSet, VmiStream, VmiStreamSet, VmiTxRing};
use crate::host::Host;

/// A set the host may be lent ([`VmiRingSet`], [`VmiStreamSet`]): its first fields are
/// `busy`, `skips` and `taken`, a host service takes it, and it points into lists the
/// transport keeps. Sealed: only the ABI's sets are.
pub trait LoanSet: sealed::Set {}

mod sealed {
    use crate::host::Host;

    /// [`super::LoanSet`]'s workings, out of reach of other crates.
    pub trait Set: Sized {
        /// The lists the set points into.
        type Lists: Default;
        /// The set, busy, listing nothing.
        fn empty() -> Self;
        /// `busy`, `skips` and `taken`.
        fn header(&mut self) -> (&mut u32, &mut u32, &mut u64);
        /// Hands `set` (NULL: ends the loan) to the host; false when the host predates the
        /// service.
        fn lend(host: &Host, set: *mut Self) -> bool;
    }
}

/// What a set of rings points into: the receive rings, and the send rings.
#[derive(Debug, Default)]
pub struct RingLists {
    pub(crate) rings: Vec<VmiRing>,
    pub(crate) tx: Vec<VmiTxRing>,
}

impl LoanSet for VmiRingSet {}

impl sealed::Set for VmiRingSet {
    type Lists = RingLists;
    fn empty() -> Self {
        VmiRingSet {
            busy: 1,
            skips: 0,
            taken: 0,
            rings: std::ptr::null(),
            count: 0,
            sent: 0,
            tx: std::ptr::null(),
            tx_count: 0,
        }
    }
    fn header(&mut self) -> (&mut u32, &mut u32, &mut u64) {
        (&mut self.busy, &mut self.skips, &mut self.taken)
    }
    fn lend(host: &Host, set: *mut Self) -> bool {
        host.lend_rings(set)
    }
}

impl LoanSet for VmiStreamSet {}

impl sealed::Set for VmiStreamSet {
    type Lists = Vec<VmiStream>;
    fn empty() -> Self {
        VmiStreamSet {
            busy: 1,
            skips: 0,
            taken: 0,
            streams: std::ptr::null(),
            count: 0,
        }
    }
    fn header(&mut self) -> (&mut u32, &mut u32, &mut u64) {
        (&mut self.busy, &mut self.skips, &mut self.taken)
    }
    fn lend(host: &Host, set: *mut Self) -> bool {
        host.lend_streams(set)
    }
}

/// A set a transport lends the host, with its bookkeeping and the lists it points into. Made
/// once per device instance, busy and listing nothing; [`Lent::lend`] hands it to the host,
/// dropping it ends the loan.
///
/// The rule a transport keeps: **before anything that could change what the set lists or
/// its connection** (a connection ending, a record or frame half read, sends queued, a
/// sleep) it calls [`Lent::set_busy`]; at the end of its poll, when nothing but what the host
/// may take can be waiting, its kind's `publish` lists everything again and clears the flag.
pub struct Lent<S: LoanSet> {
    set: HostCell<S>,
    /// The skips granted at the last grant (the host counts `skips` down from it).
    granted: u32,
    host: Option<Host>,
    /// What the set points into.
    pub(crate) lists: S::Lists,
}

impl<S: LoanSet> Default for Lent<S> {
    fn default() -> Self {
        Lent {
            set: HostCell::new(S::empty()),
            granted: 0,
            host: None,
            lists: S::Lists::default(),
        }
    }
}

impl<S: LoanSet> std::fmt::Debug for Lent<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent")
            .field("lent", &self.is_lent())
            .field("busy", &self.busy())
            .finish()
    }
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
    pub(crate) fn new(value: T) -> HostCell<T> {
        HostCell(NonNull::from(Box::leak(Box::new(value))))
    }

    /// The value's address, valid until the cell is dropped.
    #[inline]
    pub(crate) fn get(&self) -> *mut T {
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

impl<S: LoanSet> Lent<S> {
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
    pub(crate) fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(self.set())
    }

    /// The set, for the device's changes to its lists.
    #[inline]
    pub(crate) fn set_mut(&mut self) -> &mut S {
        self.set()
    }

    /// Offers the set to `host` (busy, listing nothing, until the first `publish`). False
    /// when the host predates the service (ABI 1.7 for rings, 1.8 for streams): nothing
    /// changes then. (A host may still leave the set alone, as the conformance harness does:
    /// the transport is then polled every time and reads for itself.)
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

    /// Stops the host's reading until the next `publish`: call it before any change to what
    /// the set lists or its connection.
    #[inline]
    pub fn set_busy(&self) {
        *self.set().header().0 = 1;
    }

    /// True while the host reads nothing of the set (and polls the device at every poll).
    #[inline]
    pub fn busy(&self) -> bool {
        *self.set().header().0 != 0
    }

    /// The polls the host skipped since the last grant, not yet taken: the device's own
    /// count of polls plus this is the host's.
    #[inline]
    pub fn skipped(&self) -> u32 {
        self.granted.saturating_sub(*self.set().header().1)
    }

    /// The polls the host skipped since the last call (each counted once); the device counts
    /// them as its own, so a cadence of "every k polls" stays one of the host's.
    #[inline]
    pub fn take_skipped(&mut self) -> u32 {
        let skipped = self.skipped();
        self.granted -= skipped;
        skipped
    }

    /// What the host took itself (records from the rings, frames from the streams), in all.
    pub fn taken(&self) -> u64 {
        *self.set().header().2
    }

    /// Lets the host skip up to `skips` more of the device's polls, the set listing what it
    /// lists; `busy` stays as it is.
    #[inline]
    pub fn grant(&mut self, skips: u32) {
        self.granted = skips;
        *self.set().header().1 = skips;
    }

    /// [`Lent::grant`], and the host may read the set again. The caller keeps its kind's
    /// `publish` contract for what the set lists.
    #[inline]
    pub(crate) fn unbusy(&mut self, skips: u32) {
        self.grant(skips);
        *self.set().header().0 = 0;
    }
}

impl<S: LoanSet> Drop for Lent<S> {
    fn drop(&mut self) {
        self.set_busy();
        if let Some(host) = self.host.take() {
            S::lend(&host, std::ptr::null_mut());
        }
    }
}
