//! Walks: the devices an IRB calls on its way through one direction of one chain, computed
//! when the chain is built.
//!
//! A chain's step list ([`Step`], one per device, application first) is filters, then
//! transports (the assembly refuses a filter on the wire side of a transport), and an IRB
//! passes some devices without a call: a device without this direction's hook, a transport
//! that does not own the send, every transport on the way up (a receive goes up from the
//! transport it arrived on), and every filter for the hosts' own messages. A [`Walk`] leaves
//! those out: the chain's hooked filters in the order an IRB meets them, then, going down,
//! the submit of the transport that owns it, found by its rank. Moving an IRB is then one
//! call after another with nothing to decide in between. A walk takes one 32-byte entry per
//! hooked filter and per transport.
#![allow(unsafe_code)]

use std::ffi::c_void;

use crate::abi::VmiIrb;
use crate::slot::DevIndex;
#[cfg(test)]
use crate::slot::NO_DEVICE;

/// A device's `submit` or `receive` entry.
pub(crate) type StepFn = unsafe extern "C" fn(*mut c_void, *mut VmiIrb, *mut u8) -> i32;

/// One device's place in one direction's chain, as the chain lists it (application first).
#[derive(Clone, Copy)]
pub(crate) struct Step {
    /// `submit` (send chain) or `receive` (receive chain); `None` passes through.
    pub entry: Option<StepFn>,
    pub dev: *mut c_void,
    pub frame_off: usize,
    pub index: DevIndex,
    /// Whom the step serves: [`FILTER`] for a filter (every IRB but the hosts' own
    /// messages), a transport's own index for a transport (only the sends it owns).
    pub only: DevIndex,
    /// It has a completion step, so it joins an IRB's path when it passes it.
    pub joins: bool,
}

// SAFETY: `dev` is a device instance, which the engine calls from the thread that drives it,
// one call at a time; the device ABI lets that thread change between calls (`abi.rs`,
// "Threads"). The device's own helper threads never see this value.
unsafe impl Send for Step {}

/// [`Step::only`] of a filter (no device has this index: the engine refuses that many).
pub(crate) const FILTER: DevIndex = DevIndex::MAX;

/// One device an IRB calls.
#[derive(Clone, Copy)]
pub(crate) struct Call {
    // 32 bytes: a walk's step is one shift from the next.
    pub entry: StepFn,
    pub dev: *mut c_void,
    /// The device's frame inside the IRB's frame area.
    pub frame_off: usize,
    /// The device's position in the chain (what the IRB records while the device holds it).
    pub pos: i32,
    pub index: DevIndex,
    pub joins: bool,
}

// SAFETY: as for `Step`: `dev` is the same instance pointer.
unsafe impl Send for Call {}

const _: () = assert!(std::mem::size_of::<Call>() == 32);

impl Call {
    fn of(pos: usize, st: &Step) -> Option<Call> {
        Some(Call {
            entry: st.entry?,
            dev: st.dev,
            frame_off: st.frame_off,
            // Fits: a chain lists each device once, and the engine refuses more than
            // `MAX_DEVICES` (below 2^16).
            pos: pos as i32,
            index: st.index,
            joins: st.joins,
        })
    }
}

/// [`Walk::first_filter`] for an IRB that a filter held: the first of `calls` past chain
/// position `pos` in direction `down`.
#[cold]
#[inline(never)]
fn resume_after(calls: &[Call], pos: isize, down: bool) -> usize {
    calls
        .iter()
        .position(|c| {
            let c = c.pos as isize;
            if down { c > pos } else { c < pos }
        })
        .unwrap_or(calls.len())
}

/// One direction of one chain: the hooked filters an IRB calls, in walking order, and
/// (going down) each transport's submit, by rank, for the one that owns the IRB.
pub(crate) struct Walk {
    pub filters: Box<[Call]>,
    sends: Box<[Option<Call>]>,
    /// An IRB whose chain position, as an unsigned number, is at least this starts at the
    /// first filter: going down, the application's -1 (`usize::MAX`); going up, a
    /// transport's position (the chain's filters all come before it).
    fresh_from: usize,
}

impl Walk {
    /// The index of the first filter an IRB at chain position `pos` calls: the first, for
    /// one starting at an end (one compare); for one a filter held, the one after it.
    #[inline(always)]
    pub fn first_filter(&self, pos: isize, down: bool) -> usize {
        if pos as usize >= self.fresh_from {
            return 0;
        }
        resume_after(&self.filters, pos, down)
    }

    /// The submit of the transport of rank `rank`, if it has one.
    #[inline(always)]
    pub fn send(&self, rank: usize) -> Option<&Call> {
        self.sends.get(rank)?.as_ref()
    }
}

/// Every walk of an engine. Memory grows with the chains' lengths: the filters are kept
/// once per chain and direction, not once per transport.
#[derive(Default)]
pub(crate) struct Walks {
    /// `2 c`: chain `c` down; `2 c + 1`: up.
    walks: Vec<Walk>,
    /// By engine device index: the device's rank among the transports (`u16::MAX` for a
    /// filter).
    rank: Box<[u16]>,
}

impl Walks {
    /// The walks of chains given as (send steps, receive steps), chain 0 first, over
    /// `devices` device instances.
    pub fn new<'a>(
        chains: impl IntoIterator<Item = (&'a [Step], &'a [Step])> + Clone,
        devices: usize,
    ) -> Walks {
        // The transports, ranked in the order the chains name them: every chain has the
        // same ones (the assembly checks it), but all are looked at, to be sure.
        let mut transports: Vec<DevIndex> = Vec::new();
        let mut rank = vec![u16::MAX; devices];
        for (down, _) in chains.clone() {
            for st in down {
                if st.only != FILTER
                    && let Some(r) = rank.get_mut(st.only as usize)
                    && *r == u16::MAX
                {
                    *r = transports.len() as u16;
                    transports.push(st.only);
                }
            }
        }
        let filters = |steps: &[Step], down: bool| -> Box<[Call]> {
            let mut calls: Vec<Call> = steps
                .iter()
                .enumerate()
                .filter(|(_, st)| st.only == FILTER)
                .filter_map(|(pos, st)| Call::of(pos, st))
                .collect();
            if !down {
                calls.reverse();
            }
            calls.into_boxed_slice()
        };
        let mut walks = Vec::new();
        for (down, up) in chains {
            let mut sends = vec![None; transports.len()];
            for (pos, st) in down.iter().enumerate() {
                if let Some(&r) = rank.get(st.only as usize)
                    && let Some(slot) = sends.get_mut(r as usize)
                {
                    *slot = Call::of(pos, st);
                }
            }
            walks.push(Walk {
                filters: filters(down, true),
                sends: sends.into_boxed_slice(),
                fresh_from: usize::MAX,
            });
            walks.push(Walk {
                filters: filters(up, false),
                sends: Box::new([]),
                fresh_from: up.iter().take_while(|st| st.only == FILTER).count(),
            });
        }
        Walks {
            walks,
            rank: rank.into_boxed_slice(),
        }
    }

    /// The walk of chain `chain` in direction `down`, or `None` for a chain this engine does
    /// not have.
    #[inline(always)]
    pub fn get(&self, chain: u8, down: bool) -> Option<&Walk> {
        self.walks.get(chain as usize * 2 + usize::from(!down))
    }

    /// The rank of transport `owner` (past every rank for a filter, [`NO_DEVICE`] or any
    /// other index), for [`Walk::send`].
    #[inline(always)]
    pub fn rank(&self, owner: DevIndex) -> usize {
        self.rank
            .get(owner as usize)
            .map_or(usize::MAX, |&r| r as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn hook(_: *mut c_void, _: *mut VmiIrb, _: *mut u8) -> i32 {
        0
    }

    fn step(index: DevIndex, transport: bool, entry: bool) -> Step {
        Step {
            entry: entry.then_some(hook as StepFn),
            dev: std::ptr::null_mut(),
            frame_off: 64 * index as usize,
            index,
            only: if transport { index } else { FILTER },
            joins: index == 1,
        }
    }

    fn positions(calls: &[Call]) -> Vec<i32> {
        calls.iter().map(|c| c.pos).collect()
    }

    /// Chain: filter 0, filter 1 (no hook), filter 2, transports 3 and 4 (4 has no submit).
    fn chain() -> Vec<Step> {
        vec![
            step(0, false, true),
            step(1, false, false),
            step(2, false, true),
            step(3, true, true),
            step(4, true, false),
        ]
    }

    /// The calls an IRB owned by `owner` makes going `down` (a host's own message or not),
    /// as chain positions, the way `advance` makes them.
    fn walked(walks: &Walks, chain: u8, down: bool, owner: DevIndex, host_msg: bool) -> Vec<i32> {
        let w = walks.get(chain, down).unwrap();
        let mut v = if host_msg {
            Vec::new()
        } else {
            positions(&w.filters)
        };
        if down && let Some(c) = w.send(walks.rank(owner)) {
            v.push(c.pos);
        }
        v
    }

    #[test]
    fn a_send_calls_the_hooked_filters_then_its_own_transport() {
        let down = chain();
        let walks = Walks::new([(&down[..], &down[..])], 5);
        assert_eq!(walked(&walks, 0, true, 3, false), [0, 2, 3]);
        assert_eq!(walks.get(0, true).unwrap().filters[1].frame_off, 128);
        assert_eq!(walked(&walks, 0, true, 4, false), [0, 2], "no submit");
        // A host's own message passes the filters; an IRB without a transport meets none.
        assert_eq!(walked(&walks, 0, true, 3, true), [3]);
        assert!(walked(&walks, 0, true, NO_DEVICE, true).is_empty());
        assert_eq!(walked(&walks, 0, true, NO_DEVICE, false), [0, 2]);
        // A filter owns nothing.
        assert_eq!(walked(&walks, 0, true, 0, false), [0, 2]);
    }

    #[test]
    fn a_walk_goes_on_after_the_device_that_held_the_irb() {
        let down = chain();
        let walks = Walks::new([(&down[..], &down[..])], 5);
        let w = walks.get(0, true).unwrap();
        assert_eq!(w.first_filter(-1, true), 0);
        assert_eq!(w.first_filter(0, true), 1);
        assert_eq!(w.first_filter(1, true), 1);
        assert_eq!(w.first_filter(2, true), 2, "past the filters");
        assert_eq!(w.first_filter(3, true), 2);
    }

    #[test]
    fn a_receive_goes_up_through_the_filters_only() {
        let mut up = chain();
        up[3].entry = None; // the engine gives transports no receive step
        let walks = Walks::new([(&up[..], &up[..])], 5);
        assert_eq!(walked(&walks, 0, false, 3, false), [2, 0]);
        let w = walks.get(0, false).unwrap();
        // From transport 3 (or 4) up: filter 2 first; after filter 2, filter 0; after it,
        // the application.
        assert_eq!(w.first_filter(3, false), 0);
        assert_eq!(w.first_filter(4, false), 0);
        assert_eq!(w.first_filter(2, false), 1);
        assert_eq!(w.first_filter(0, false), 2);
        assert!(walked(&walks, 0, false, 3, true).is_empty());
    }

    #[test]
    fn walks_are_kept_per_chain() {
        let a = chain();
        let b = [step(2, false, true), step(3, true, true)];
        let walks = Walks::new([(&a[..], &a[..]), (&b[..], &b[..])], 5);
        assert_eq!(walked(&walks, 1, true, 3, false), [0, 1]);
        assert!(walks.get(2, true).is_none());
    }

    #[test]
    fn memory_grows_with_the_chain_not_its_square() {
        // 2,000 filters over 2,000 transports: one entry each per walk.
        let n = 2000u16;
        let steps: Vec<Step> = (0..2 * n).map(|i| step(i, i >= n, true)).collect();
        let walks = Walks::new([(&steps[..], &steps[..])], 2 * n as usize);
        let down = walks.get(0, true).unwrap();
        assert_eq!(down.filters.len(), n as usize);
        assert_eq!(down.sends.len(), n as usize);
        assert_eq!(
            walked(&walks, 0, true, 2 * n - 1, false).len(),
            n as usize + 1
        );
    }
}
