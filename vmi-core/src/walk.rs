//! Walks: the devices an IRB calls on its way through one direction of one chain, computed
//! when the chain is built.
//!
//! A chain's step list ([`Step`], one per device, application first) has one entry per
//! device, and an IRB passes some of them without a call: a device without this direction's
//! hook, a transport that does not own the send, every transport on the way up (a receive
//! goes up from the transport it arrived on), and every filter for the hosts' own messages.
//! A walk leaves those out, so moving an IRB is one call per entry with nothing to decide in
//! between. [`Walks`] keeps one for each chain, direction, owning transport and kind of
//! message: a chain of F hooked filters over T transports takes about 4 (F + 1) T entries of
//! 32 bytes.
#![allow(unsafe_code)]

use std::ffi::c_void;

use crate::abi::VmiIrb;
use crate::slot::{DevIndex, NO_DEVICE};

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
    pub frame_off: u32,
    /// The device's position in the chain (what the IRB records while the device holds it).
    pub pos: i32,
    pub index: DevIndex,
    pub joins: bool,
}

// SAFETY: as for `Step`: `dev` is the same instance pointer.
unsafe impl Send for Call {}

impl Call {
    fn of(pos: usize, st: &Step) -> Option<Call> {
        Some(Call {
            entry: st.entry?,
            dev: st.dev,
            // Both fit: frame areas are far below 4 GiB and chains far shorter than 2^31
            // devices (the engine refuses more than `MAX_DEVICES`).
            frame_off: st.frame_off as u32,
            pos: pos as i32,
            index: st.index,
            joins: st.joins,
        })
    }
}

/// The index of the first of `calls` (a walk, in walking order) past chain position `pos` in
/// direction `down`. An IRB starts at an end (the application going down, a transport going
/// up), where that is the first, found with one compare; one a device held goes on after it.
#[inline(always)]
pub(crate) fn first_after(calls: &[Call], pos: isize, down: bool) -> usize {
    let Some(c) = calls.first() else {
        return 0;
    };
    let first = c.pos as isize;
    if (down && first > pos) || (!down && first < pos) {
        return 0;
    }
    resume_after(calls, pos, down)
}

/// [`first_after`] for an IRB that stopped inside its walk.
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

/// Every walk of an engine.
#[derive(Default)]
pub(crate) struct Walks {
    /// At [`Walks::index`].
    walks: Vec<Box<[Call]>>,
    /// By engine device index: the device's rank among the transports, or `owners - 1`.
    rank: Box<[u16]>,
    /// Ranks: one per transport, and one for "no transport" (the last).
    owners: usize,
}

impl Walks {
    /// The walks of chains given as (send steps, receive steps), chain 0 first, over
    /// `devices` device instances.
    pub fn new<'a>(
        chains: impl IntoIterator<Item = (&'a [Step], &'a [Step])> + Clone,
        devices: usize,
    ) -> Walks {
        // The transports: every chain has the same ones (the assembly checks it), so the
        // first chain's sends name them all; the others are looked at too, to be sure.
        let mut transports: Vec<DevIndex> = Vec::new();
        for (down, _) in chains.clone() {
            for st in down {
                if st.only != FILTER && !transports.contains(&st.only) {
                    transports.push(st.only);
                }
            }
        }
        let owners = transports.len() + 1;
        let mut rank = vec![(owners - 1) as u16; devices];
        for (r, &t) in transports.iter().enumerate() {
            if let Some(slot) = rank.get_mut(t as usize) {
                *slot = r as u16;
            }
        }
        let mut walks = Vec::new();
        for (down, up) in chains {
            for (steps, is_down) in [(down, true), (up, false)] {
                for r in 0..owners {
                    let owner = transports.get(r).copied().unwrap_or(NO_DEVICE);
                    for host_msg in [false, true] {
                        walks.push(walk(steps, is_down, owner, !host_msg));
                    }
                }
            }
        }
        Walks {
            walks,
            rank: rank.into_boxed_slice(),
            owners,
        }
    }

    /// The walk of an IRB on `chain` in direction `down`, owned by transport `owner` (or
    /// [`NO_DEVICE`]), a host's own message or not; `None` for a chain this engine does
    /// not have.
    #[inline(always)]
    pub fn get(&self, chain: u8, down: bool, owner: DevIndex, host_msg: bool) -> Option<&[Call]> {
        let rank = self
            .rank
            .get(owner as usize)
            .map_or(self.owners - 1, |&r| r as usize);
        let table = chain as usize * 2 + usize::from(!down);
        let i = (table * self.owners + rank) * 2 + usize::from(host_msg);
        self.walks.get(i).map(|w| &w[..])
    }
}

/// The calls of `steps` (one direction of a chain, application first) in walking order, for
/// IRBs owned by transport `owner` (or [`NO_DEVICE`]), with or without the filters.
fn walk(steps: &[Step], down: bool, owner: DevIndex, filters: bool) -> Box<[Call]> {
    let mut calls: Vec<Call> = steps
        .iter()
        .enumerate()
        .filter(|(_, st)| match st.only {
            FILTER => filters,
            t => t == owner,
        })
        .filter_map(|(pos, st)| Call::of(pos, st))
        .collect();
    if !down {
        calls.reverse();
    }
    calls.into_boxed_slice()
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

    #[test]
    fn a_send_calls_the_hooked_filters_then_its_own_transport() {
        let down = chain();
        let walks = Walks::new([(&down[..], &down[..])], 5);
        let w = walks.get(0, true, 3, false).unwrap();
        assert_eq!(positions(w), [0, 2, 3]);
        assert_eq!(w[1].frame_off, 128);
        assert_eq!(
            positions(walks.get(0, true, 4, false).unwrap()),
            [0, 2],
            "no submit"
        );
        // A host's own message passes the filters; an IRB without a transport meets none.
        assert_eq!(positions(walks.get(0, true, 3, true).unwrap()), [3]);
        assert!(walks.get(0, true, NO_DEVICE, true).unwrap().is_empty());
        assert_eq!(
            positions(walks.get(0, true, NO_DEVICE, false).unwrap()),
            [0, 2]
        );
        // A filter owns nothing.
        assert_eq!(positions(walks.get(0, true, 0, false).unwrap()), [0, 2]);
    }

    #[test]
    fn a_walk_goes_on_after_the_device_that_held_the_irb() {
        let down = chain();
        let walks = Walks::new([(&down[..], &down[..])], 5);
        let w = walks.get(0, true, 3, false).unwrap();
        assert_eq!(first_after(w, -1, true), 0);
        assert_eq!(first_after(w, 0, true), 1);
        assert_eq!(first_after(w, 1, true), 1);
        assert_eq!(first_after(w, 2, true), 2);
        assert_eq!(
            first_after(w, 3, true),
            3,
            "past the transport: nothing left"
        );
    }

    #[test]
    fn a_receive_goes_up_through_the_filters_only() {
        let mut up = chain();
        up[3].entry = None; // the engine gives transports no receive step
        let walks = Walks::new([(&up[..], &up[..])], 5);
        let w = walks.get(0, false, 3, false).unwrap();
        assert_eq!(positions(w), [2, 0]);
        // From transport 3 up: filter 2 first; after filter 2, filter 0; after it, the
        // application.
        assert_eq!(first_after(w, 3, false), 0);
        assert_eq!(first_after(w, 2, false), 1);
        assert_eq!(first_after(w, 0, false), 2);
        assert!(walks.get(0, false, 3, true).unwrap().is_empty());
    }

    #[test]
    fn walks_are_kept_per_chain() {
        let a = chain();
        let b = [step(2, false, true), step(3, true, true)];
        let walks = Walks::new([(&a[..], &a[..]), (&b[..], &b[..])], 5);
        assert_eq!(positions(walks.get(1, true, 3, false).unwrap()), [0, 1]);
        assert!(walks.get(2, true, 3, false).is_none());
    }
}
