//! Receiving with no IRB (device ABI 1.2 `poll_direct`): when no device above the transports
//! has a receive step, a transport hands each received fragment to the host's receiver,
//! which copies it into a per-poll arena (small fragments only); once the transport's poll
//! has returned, the application's `receive` runs for each, with a slab over the arena. No
//! application code runs while the transport is inside its poll, so no device is ever
//! re-entered. A fragment the host does not take (outcomes wait to be delivered first, a
//! message from the peer's engine, a large fragment) is declined, and the transport sends it
//! and the rest of that poll up as IRBs, delivered after the arena: the application sees
//! everything in the order it arrived.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use vmi_device::lent::{Batch, Received, Stop};

use crate::abi::{VMI_COMPLETE, VMI_FLAG_HOST, VMI_FLAG_MSG, VMI_PASS, VmiRingSet, VmiStreamSet};
use crate::dispatch::receive_lent;
use crate::engine::DirectPoller;
use crate::handler::Handler;
use crate::ops::Core;
use crate::slab::Releases;

/// Largest fragment taken through the arena; larger ones go up as IRBs (no second copy).
pub(crate) const DIRECT_MAX: usize = 16 * 1024;

/// The fragments of one poll, copied out of the transport (kept between polls, so it
/// allocates nothing once warm).
pub(crate) struct Arena {
    /// The fragments (their bytes, where each lies, how many are messages): the transport's
    /// offers and the host's reads of lent rings alike.
    got: Batch,
    /// Outcomes wait to be delivered: take nothing, so they go first.
    blocked: bool,
    /// The lent ring read first at the next poll (the one after a ring that used up a
    /// poll's budget: a busy peer cannot starve the others).
    ring_first: usize,
    /// The lent stream read first at the next poll (the one after a stream that left its
    /// transport a rest or used up a poll's budget).
    stream_first: usize,
    /// Not 0 when a record delivered at once (see [`read_lent_records`]) left work for the
    /// end of the poll (requests to deliver, background work): [`Arena::is_empty`] is false
    /// until [`deliver`] runs. A word, so that the check ORs it with the others.
    follow: usize,
    /// The engine's release queue and count of fragments held, which a grab of a slab over
    /// the arena counts in: taken once, so delivering a fragment clones nothing.
    owners: (Arc<Releases>, Arc<crate::services::Count>),
}

impl Arena {
    /// An empty arena for `engine`'s fragments.
    pub(crate) fn new(engine: &crate::engine::Engine) -> Arena {
        Arena {
            got: Batch::default(),
            blocked: false,
            ring_first: 0,
            stream_first: 0,
            follow: 0,
            owners: (engine.releases().clone(), engine.held_count()),
        }
    }
}

/// Polls the transports that deliver directly and delivers what they handed over; returns
/// the events they reported.
#[inline]
pub(crate) fn poll(core: &mut Core, arena: &mut Arena, handler: &mut dyn Handler) -> usize {
    let mut events = 0;
    for i in 0..core.engine.direct_pollers().len() {
        let poller = core.engine.direct_pollers()[i];
        let n = if core.engine.outcomes() > 0 {
            // Outcomes go first: the transport's poll declines to the IRB path what it
            // reads (its lent rings are not read by the host while it does).
            arena.blocked = true;
            let ctx = std::ptr::from_mut(arena);
            // SAFETY: a live transport instance; the arena is reached only through the
            // pointer until the call returns, by `receive` on this thread, and is not kept
            // after it.
            unsafe { f_call(poller, core.engine.poll_credit(), ctx) }
        } else {
            poll_one(core, arena, handler, poller)
        };
        events += n;
        deliver(core, arena, handler);
        // IRBs the transport handed up (after what went through the arena) move now.
        core.engine.run_queued();
    }
    events
}

/// Polls one direct transport into the arena, with no outcome waiting (so it takes
/// everything it may); returns the events it reported. `Vmi::poll`'s own direct poll, and
/// `poll`'s when no outcome waits.
///
/// When the transport lent its receive rings (ABI 1.7) and has nothing else to do, the
/// host reads their small records itself, and calls the transport's poll only when a ring
/// holds something else, or when the transport asked to be polled again (`skips` ran out).
///
/// A ring that holds one small record alone has it delivered at once (`handler` runs
/// before this returns); everything else waits in the arena for [`deliver`].
///
/// The budget (the engine's poll credit) is worked out where it is needed, so an idle
/// poll does not pay for it.
#[inline(always)]
pub(crate) fn poll_one(
    core: &mut Core,
    arena: &mut Arena,
    handler: &mut dyn Handler,
    (f, dev, lent): DirectPoller,
) -> usize {
    arena.blocked = false;
    let rings = lent.rings.load(Ordering::Relaxed);
    let (read, poll) = if !rings.is_null() {
        // SAFETY: a set lent by this live transport (it ends the loan before it frees the
        // set), read on the polling thread while the transport is not called.
        unsafe { read_lent(core, arena, handler, rings) }
    } else {
        // Looked at only when no rings are lent (a transport lends one kind).
        let streams = lent.streams.load(Ordering::Relaxed);
        if streams.is_null() {
            (0, true)
        } else {
            // SAFETY: as for the rings.
            unsafe { read_streams(core, arena, handler, streams, core.engine.poll_credit()) }
        }
    };
    if !poll {
        return read;
    }
    // What the host read from the rings counts against the transport's budget.
    let budget = core.engine.poll_credit().saturating_sub(read as u32);
    let ctx = std::ptr::from_mut(arena);
    // SAFETY: a live transport instance; the arena is reached only through the pointer until
    // the call returns, by `receive` on this thread, and is not kept after it.
    read + unsafe { f_call((f, dev, lent), budget, ctx) }
}

/// Calls a transport's `poll_direct` with the arena as the receiver's context; returns the
/// events it reported.
///
/// # Safety
/// A live transport instance; `ctx` is the arena, reached only through it until the call
/// returns (by `receive`, on this thread) and not kept after it.
#[inline(always)]
unsafe fn f_call((f, dev, _): DirectPoller, budget: u32, ctx: *mut Arena) -> usize {
    // SAFETY: the caller's promise.
    let n = unsafe { f(dev.0, budget, receive, ctx.cast()) };
    n.max(0) as usize
}

/// Reads the lent rings of `set` into the arena (at most the engine's poll credit of
/// records, from the ring after the one a spent budget stopped at); returns the records
/// read and whether the transport's poll must run now.
///
/// # Safety
/// `set` is a set lent under the ABI's `VmiRingSet` contract, which holds for the call.
#[inline(always)]
unsafe fn read_lent(
    core: &mut Core,
    arena: &mut Arena,
    handler: &mut dyn Handler,
    set_ptr: *mut VmiRingSet,
) -> (usize, bool) {
    // SAFETY: the caller's promise; the transport is not called while this reference
    // lives.
    let set = unsafe { &mut *set_ptr };
    // Busy, or the transport asked for its poll: it reads its rings itself.
    if set.busy != 0 || set.skips == 0 {
        return (0, true);
    }
    // SAFETY: as above: `count` rings at `rings`, unchanged while the set is not busy.
    let rings = unsafe { std::slice::from_raw_parts(set.rings, set.count) };
    // An idle poll is this look at each ring's two positions, inline (with a hint to fetch
    // the line where the next record will land).
    let empty = |r| {
        // SAFETY: a ring of the lent set (the caller's promise).
        unsafe { vmi_device::lent::is_empty_prefetch(r) }
    };
    // One ring (a pair: the usual case) without the loop.
    let idle = if let [ring] = rings {
        empty(ring)
    } else {
        rings.iter().all(empty)
    };
    if idle {
        return settle(&mut set.taken, &mut set.skips, 0, false);
    }
    // The budget is worked out only here, so an idle poll does not pay for it.
    let budget = core.engine.poll_credit();
    // SAFETY: forwarded.
    unsafe { read_lent_records(core, arena, handler, set_ptr, budget) }
}

/// [`read_lent`] when a ring holds something.
///
/// When one ring alone holds something, and that is one data record alone, and nothing
/// waits in the arena, the record is delivered at once, with no batch (the ping-pong case).
/// Everything else is [`read_lent_batch`].
///
/// The set is reached through a pointer, and no reference to it or to its rings lives
/// while `handler` runs: the application may call the transport, which may change them.
///
/// # Safety
/// As for [`read_lent`].
#[inline(never)]
unsafe fn read_lent_records(
    core: &mut Core,
    arena: &mut Arena,
    handler: &mut dyn Handler,
    set: *mut VmiRingSet,
    budget: u32,
) -> (usize, bool) {
    let (conn, flags) = {
        // SAFETY: the caller's promise; the transport is not called while these live.
        let set = unsafe { &mut *set };
        // SAFETY: as in `read_lent`.
        let rings = unsafe { std::slice::from_raw_parts(set.rings, set.count) };
        if budget == 0 || !arena.got.records.is_empty() {
            // SAFETY: forwarded.
            return unsafe { read_lent_batch(arena, set, rings, budget) };
        }
        // The one ring that holds something; when two do, the batch reads them both in
        // this poll. (One ring alone is not looked at again: `take_only` checks it.)
        let ring = if let [ring] = rings {
            ring
        } else {
            // SAFETY: the rings of the lent set (the caller's promise).
            match unsafe { lone_ring(rings) } {
                Some(i) => &rings[i],
                // SAFETY: forwarded.
                None => return unsafe { read_lent_batch(arena, set, rings, budget) },
            }
        };
        // SAFETY: a ring of the lent set (the caller's promise).
        let Some(flags) =
            (unsafe { vmi_device::lent::take_only(ring, DIRECT_MAX, &mut arena.got.bytes) })
        else {
            // SAFETY: forwarded.
            return unsafe { read_lent_batch(arena, set, rings, budget) };
        };
        let conn = ring.conn;
        settle(&mut set.taken, &mut set.skips, 1, false);
        (conn, flags)
    };
    deliver_one(core, arena, handler, conn, flags);
    (1, false)
}

/// The index of the one ring of `rings` that holds something; `None` when none or several
/// do.
///
/// # Safety
/// `rings` are those of a set lent under the `VmiRingSet` contract, which holds for the
/// call.
#[inline]
unsafe fn lone_ring(rings: &[vmi_device::abi::VmiRing]) -> Option<usize> {
    let mut found = None;
    for (i, ring) in rings.iter().enumerate() {
        // SAFETY: the caller's promise.
        if !unsafe { vmi_device::lent::is_empty(ring) } {
            if found.is_some() {
                return None;
            }
            found = Some(i);
        }
    }
    found
}

/// Reads the lent rings of `set` into the arena's batch, from `ring_first` on, at most
/// `budget` records; returns the records read and whether the transport's poll must run.
///
/// # Safety
/// As for [`read_lent`]; `rings` are the set's.
#[inline(never)]
unsafe fn read_lent_batch(
    arena: &mut Arena,
    set: &mut VmiRingSet,
    rings: &[vmi_device::abi::VmiRing],
    budget: u32,
) -> (usize, bool) {
    let mut poll = false;
    let mut n = 0;
    // From `ring_first` on, round the set (it may be past its end: the set changed).
    let mut i = arena.ring_first;
    for _ in 0..rings.len() {
        if i >= rings.len() {
            i = 0;
        }
        // SAFETY: a ring of the lent set (the caller's promise).
        let (got, stop) = unsafe {
            vmi_device::lent::read_ring(&rings[i], budget as usize - n, DIRECT_MAX, &mut arena.got)
        };
        n += got;
        match stop {
            Stop::Empty => {}
            Stop::Device => poll = true,
            Stop::Budget => {
                arena.ring_first = i + 1;
                break;
            }
        }
        i += 1;
    }
    settle(&mut set.taken, &mut set.skips, n, poll)
}

/// Reads the lent streams of `set` into the arena (at most `budget` frames); returns the
/// frames taken and whether the transport's poll must run now (the set is busy, the
/// transport asked for its poll, or a read left it a rest).
///
/// # Safety
/// `set` is a set lent under the ABI's `VmiStreamSet` contract, which holds for the call.
#[inline(always)]
unsafe fn read_streams(
    core: &mut Core,
    arena: &mut Arena,
    handler: &mut dyn Handler,
    set_ptr: *mut VmiStreamSet,
    budget: u32,
) -> (usize, bool) {
    // SAFETY: the caller's promise; the transport is not called while this reference
    // lives.
    let set = unsafe { &mut *set_ptr };
    if set.busy != 0 || set.skips == 0 {
        return (0, true);
    }
    // SAFETY: as above: `count` streams at `streams`, unchanged while the set is not busy.
    let streams = unsafe { std::slice::from_raw_parts(set.streams, set.count) };
    if let [stream] = streams
        && budget > 0
        && arena.got.records.is_empty()
    {
        // One connection (the usual pair): what one read brings may be one frame alone,
        // delivered at once.
        // SAFETY: the stream of the lent set, its rest empty (the transport takes each
        // before it publishes).
        return match unsafe { vmi_device::lent_stream::read_socket(stream) } {
            // SAFETY: forwarded; the read brought `got` bytes.
            Ok(got) => unsafe { read_lone_stream(core, arena, handler, set_ptr, got, budget) },
            Err(Stop::Empty) => settle(&mut set.taken, &mut set.skips, 0, false),
            // The end of the stream, or an error: the transport's poll takes it now.
            Err(_) => (0, true),
        };
    }
    let mut n = 0;
    let mut poll = false;
    // From `stream_first` on, round the set (it may be past its end: the set changed).
    let mut i = arena.stream_first;
    for _ in 0..streams.len() {
        if i >= streams.len() {
            i = 0;
        }
        // SAFETY: a stream of the lent set, its rest empty: a rest left by an earlier
        // stream stops the loop, and the transport takes each before it publishes.
        let (got, stop) = unsafe {
            vmi_device::lent_stream::read_stream(
                &streams[i],
                budget as usize - n,
                DIRECT_MAX,
                &mut arena.got,
            )
        };
        n += got;
        i += 1;
        if stop != Stop::Empty {
            // A rest (the transport's poll takes it now), or the budget spent: the next
            // poll starts after this stream, so a busy peer cannot starve the others.
            arena.stream_first = i;
            poll = stop == Stop::Device;
            break;
        }
    }
    settle(&mut set.taken, &mut set.skips, n, poll)
}

/// [`read_streams`] for a set of one stream whose read brought `got` bytes: one whole small
/// data frame alone is delivered at once, with no batch (the ping-pong case); anything else
/// is taken into the arena's batch as [`read_streams`] takes it. As in
/// [`read_lent_records`], no reference to the set lives while `handler` runs.
///
/// # Safety
/// As for [`read_streams`]; the set holds one stream, whose read brought `got` bytes.
#[inline(never)]
unsafe fn read_lone_stream(
    core: &mut Core,
    arena: &mut Arena,
    handler: &mut dyn Handler,
    set: *mut VmiStreamSet,
    got: usize,
    budget: u32,
) -> (usize, bool) {
    let (conn, flags) = {
        // SAFETY: the caller's promise; the transport is not called while these live.
        let (set, stream) = unsafe { (&mut *set, &*(*set).streams) };
        // SAFETY: forwarded.
        let lone = unsafe {
            vmi_device::lent_stream::take_only_frame(stream, got, DIRECT_MAX, &mut arena.got.bytes)
        };
        let Some(flags) = lone else {
            // SAFETY: forwarded.
            let (n, stop) = unsafe {
                vmi_device::lent_stream::take_frames(
                    stream,
                    got,
                    budget as usize,
                    DIRECT_MAX,
                    &mut arena.got,
                )
            };
            if stop != Stop::Empty {
                // As `read_streams` leaves it after its one stream.
                arena.stream_first = 1;
            }
            return settle(&mut set.taken, &mut set.skips, n, stop == Stop::Device);
        };
        settle(&mut set.taken, &mut set.skips, 1, false);
        (stream.conn, flags)
    };
    deliver_one(core, arena, handler, conn, flags);
    (1, false)
}

/// The end of a host's read of a lent set: counts the `n` messages it took and, unless the
/// transport's poll must run now (`poll`), one of the transport's polls skipped. Returns
/// `(n, poll)`.
#[inline(always)]
fn settle(taken: &mut u64, skips: &mut u32, n: usize, poll: bool) -> (usize, bool) {
    *taken += n as u64;
    if !poll {
        *skips -= 1;
    }
    (n, poll)
}

impl Arena {
    /// True when no fragment waits in it, and no record delivered at once left work for
    /// the end of the poll.
    #[inline(always)]
    pub(crate) fn is_empty(&self) -> bool {
        self.got.records.len() | self.follow == 0
    }
}

/// Delivers what a direct poll put in the arena (nothing when it is empty).
#[inline(always)]
pub(crate) fn deliver(core: &mut Core, arena: &mut Arena, handler: &mut dyn Handler) {
    arena.follow = 0;
    if !arena.got.records.is_empty() {
        if arena.got.msgs == 0 {
            deliver_arena(core, arena, handler);
        } else {
            deliver_with_msgs(core, arena, handler);
        }
    }
}

/// Delivers the one fragment `take_only` left in the arena's bytes, and empties it: a
/// request, reply or pulse as `deliver_with_msgs` delivers one alone in its poll.
#[inline(always)]
fn deliver_one(
    core: &mut Core,
    arena: &mut Arena,
    handler: &mut dyn Handler,
    conn: u64,
    flags: u32,
) {
    if flags & VMI_FLAG_MSG != 0 {
        let data = &arena.got.bytes[..];
        crate::msgpass::received_alone(core, handler, crate::ConnId(conn), flags, data);
    } else {
        let (releases, held) = &arena.owners;
        receive_lent(
            core,
            handler,
            (conn, flags, &arena.got.bytes),
            releases,
            held,
        );
        core.run_deferred();
    }
    arena.got.bytes.clear();
    arena.follow = usize::from(core.after) | core.background;
}

/// Delivers the fragments of the arena, in order, and empties it.
#[inline(always)]
fn deliver_arena(core: &mut Core, arena: &mut Arena, handler: &mut dyn Handler) {
    let (releases, held) = &arena.owners;
    for l in &arena.got.records {
        let data = &arena.got.bytes[l.start..l.start + l.len];
        receive_lent(core, handler, (l.conn, l.flags, data), releases, held);
        core.run_deferred();
    }
    arena.got.bytes.clear();
    arena.got.records.clear();
}

/// `deliver_arena` when requests, replies or pulses are among the fragments: those are
/// taken first (answers delivered, requests and pulses queued, and those of priority above
/// the stream's delivered now, ahead of the stream fragments of the same poll); then the
/// stream's fragments are delivered in order, and the connection's count of messages
/// moves in arrival order for both.
#[inline(never)]
fn deliver_with_msgs(core: &mut Core, arena: &mut Arena, handler: &mut dyn Handler) {
    arena.got.msgs = 0;
    if let [l] = arena.got.records[..] {
        // One message alone in this poll: nothing to order it against, so it is handled
        // (a request or a pulse delivered, if nothing is queued) where it lies.
        let data = &arena.got.bytes[l.start..l.start + l.len];
        crate::msgpass::received_alone(core, handler, crate::ConnId(l.conn), l.flags, data);
        arena.got.bytes.clear();
        arena.got.records.clear();
        return;
    }
    let lent = std::mem::take(&mut arena.got.records);
    for l in lent.iter().filter(|l| l.flags & VMI_FLAG_MSG != 0) {
        let data = &arena.got.bytes[l.start..l.start + l.len];
        crate::msgpass::received_early(core, handler, crate::ConnId(l.conn), l.flags, data);
        core.run_deferred();
    }
    crate::msgpass::deliver(core, handler, 1);
    let (releases, held) = &arena.owners;
    for l in &lent {
        if l.flags & VMI_FLAG_MSG != 0 {
            let end = l.flags & crate::abi::VMI_FLAG_END != 0;
            core.engine
                .conns_mut()
                .rx_fragment(crate::ConnId(l.conn), end);
            continue;
        }
        let data = &arena.got.bytes[l.start..l.start + l.len];
        receive_lent(core, handler, (l.conn, l.flags, data), releases, held);
        core.run_deferred();
    }
    arena.got.records = lent;
    arena.got.bytes.clear();
    arena.got.records.clear();
}

/// The receiver a transport calls with each fragment (`VmiDeliverFn`): copies it into the
/// arena, or declines it.
///
/// The common case (no bytes, or 4 to 64 of them, with room in the arena) calls nothing, so
/// it needs no callee-saved registers: everything else is [`receive_slow`].
unsafe extern "C" fn receive(
    ctx: *mut c_void,
    conn: u64,
    flags: u32,
    data: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: `ctx` is the arena of the `poll` call that is running (a device calls this
    // only within `poll_direct`).
    let arena = unsafe { &mut *ctx.cast::<Arena>() };
    if arena.blocked || flags & VMI_FLAG_HOST != 0 || len > DIRECT_MAX {
        return VMI_PASS;
    }
    let start = arena.got.bytes.len();
    let small = len == 0 || ((4..=64).contains(&len) && !data.is_null());
    if !small
        || arena.got.bytes.capacity() - start < len
        || arena.got.records.len() == arena.got.records.capacity()
    {
        // SAFETY: forwarded from the transport (the same signature: a tail call).
        return unsafe { receive_slow(ctx, conn, flags, data, len) };
    }
    // SAFETY: room checked above; `data` holds 0 or 4 to 64 readable bytes.
    unsafe { append(arena, conn, flags, data, len, vmi_device::copy::copy_small) }
}

/// [`receive`] for a fragment of 1 to 3 or over 64 bytes, or an arena that must grow.
#[inline(never)]
unsafe extern "C" fn receive_slow(
    ctx: *mut c_void,
    conn: u64,
    flags: u32,
    data: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: as in `receive`.
    let arena = unsafe { &mut *ctx.cast::<Arena>() };
    if len > 0 && data.is_null() {
        log::error!(
            "a transport offered a {len}-byte fragment at a null address; declined (a device bug)"
        );
        return VMI_PASS;
    }
    arena.got.bytes.reserve(len);
    arena.got.records.reserve(1);
    // SAFETY: `reserve` made the room; the transport lends `len` readable bytes at `data`.
    unsafe { append(arena, conn, flags, data, len, std::ptr::copy_nonoverlapping) }
}

/// Records a fragment in the arena and copies its bytes there with `copy`.
///
/// # Safety
/// The arena has room for `len` more bytes and one more fragment; `data` is readable for
/// `len` bytes (any pointer when `len` is 0); `copy` has `copy_nonoverlapping`'s contract
/// for the lengths it is given here.
#[inline(always)]
unsafe fn append(
    arena: &mut Arena,
    conn: u64,
    flags: u32,
    data: *const u8,
    len: usize,
    copy: unsafe fn(*const u8, *mut u8, usize),
) -> i32 {
    arena.got.msgs += (flags & VMI_FLAG_MSG != 0) as usize;
    let start = arena.got.bytes.len();
    let at = arena.got.records.len();
    // SAFETY: `lent` has room for one more (the caller's promise); the slot is written
    // before `set_len` covers it.
    unsafe {
        arena.got.records.as_mut_ptr().add(at).write(Received {
            conn,
            flags,
            start,
            len,
        });
        arena.got.records.set_len(at + 1);
    }
    if len > 0 {
        // SAFETY: the arena has room for `len` bytes after its `start` initialised ones (the
        // caller's promise), which `set_len` then covers once they are copied.
        unsafe {
            copy(data, arena.got.bytes.as_mut_ptr().add(start), len);
            arena.got.bytes.set_len(start + len);
        }
    }
    VMI_COMPLETE
}
