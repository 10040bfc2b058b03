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

use crate::abi::{VMI_COMPLETE, VMI_FLAG_HOST, VMI_FLAG_MSG, VMI_PASS};
use crate::dispatch::receive_lent;
use crate::engine::{Dev, PollDirectFn};
use crate::handler::Handler;
use crate::ops::Core;
use crate::slab::Releases;

/// Largest fragment taken through the arena; larger ones go up as IRBs (no second copy).
pub(crate) const DIRECT_MAX: usize = 16 * 1024;

/// One fragment in the arena.
#[derive(Clone, Copy)]
struct Lent {
    conn: u64,
    flags: u32,
    start: usize,
    len: usize,
}

/// The fragments of one poll, copied out of the transport (kept between polls, so it
/// allocates nothing once warm).
#[derive(Default)]
pub(crate) struct Arena {
    bytes: Vec<u8>,
    lent: Vec<Lent>,
    /// Outcomes wait to be delivered: take nothing, so they go first.
    blocked: bool,
    /// How many of the fragments are requests, replies or pulses (see `msgpass`).
    msgs: usize,
    /// The engine's release queue and count of fragments held, which a grab of a slab over
    /// the arena counts in: taken once, so delivering a fragment clones nothing.
    owners: Option<(Arc<Releases>, Arc<crate::services::Count>)>,
}

/// Polls the transports that deliver directly and delivers what they handed over; returns
/// the events they reported.
#[inline]
pub(crate) fn poll(core: &mut Core, arena: &mut Arena, handler: &mut dyn Handler) -> usize {
    let mut events = 0;
    for i in 0..core.engine.direct_pollers().len() {
        let (f, dev) = core.engine.direct_pollers()[i];
        arena.blocked = core.engine.outcomes() > 0;
        let ctx = std::ptr::from_mut(arena);
        // SAFETY: a live transport instance; the arena is reached only through the pointer
        // until the call returns, by `receive` on this thread, and is not kept after it.
        let n = unsafe { f(dev.0, core.engine.poll_credit(), receive, ctx.cast()) };
        events += n.max(0) as usize;
        deliver(core, arena, handler);
        // IRBs the transport handed up (after what went through the arena) move now.
        core.engine.run_queued();
    }
    events
}

/// Polls one direct transport into the arena, with no outcome waiting (so it takes
/// everything it may); returns the events it reported. `Vmi::poll`'s own direct poll.
#[inline(always)]
pub(crate) fn poll_one(arena: &mut Arena, f: PollDirectFn, dev: Dev, budget: u32) -> usize {
    arena.blocked = false;
    let ctx = std::ptr::from_mut(arena);
    // SAFETY: a live transport instance; the arena is reached only through the pointer until
    // the call returns, by `receive` on this thread, and is not kept after it.
    let n = unsafe { f(dev.0, budget, receive, ctx.cast()) };
    n.max(0) as usize
}

impl Arena {
    /// True when no fragment waits in it.
    #[inline(always)]
    pub(crate) fn is_empty(&self) -> bool {
        self.lent.is_empty()
    }
}

/// Delivers what a direct poll put in the arena (nothing when it is empty).
#[inline]
pub(crate) fn deliver(core: &mut Core, arena: &mut Arena, handler: &mut dyn Handler) {
    if !arena.lent.is_empty() {
        if arena.msgs == 0 {
            deliver_arena(core, arena, handler);
        } else {
            deliver_with_msgs(core, arena, handler);
        }
    }
}

/// Delivers the fragments of the arena, in order, and empties it.
#[inline]
fn deliver_arena(core: &mut Core, arena: &mut Arena, handler: &mut dyn Handler) {
    let (releases, held) = arena
        .owners
        .get_or_insert_with(|| (core.engine.releases().clone(), core.engine.held_count()));
    for l in &arena.lent {
        let data = &arena.bytes[l.start..l.start + l.len];
        receive_lent(core, handler, (l.conn, l.flags, data), releases, held);
        core.run_deferred();
    }
    arena.bytes.clear();
    arena.lent.clear();
}

/// `deliver_arena` when requests, replies or pulses are among the fragments: those are
/// taken first (answers delivered, requests and pulses queued, and those of priority above
/// the stream's delivered now, ahead of the stream fragments of the same poll); then the
/// stream's fragments are delivered in order, and the connection's count of messages
/// moves in arrival order for both.
#[inline(never)]
fn deliver_with_msgs(core: &mut Core, arena: &mut Arena, handler: &mut dyn Handler) {
    arena.msgs = 0;
    if let [l] = arena.lent[..] {
        // One message alone in this poll: nothing to order it against, so it is handled
        // (a request or a pulse delivered, if nothing is queued) where it lies.
        let data = &arena.bytes[l.start..l.start + l.len];
        crate::msgpass::received_alone(core, handler, crate::ConnId(l.conn), l.flags, data);
        arena.bytes.clear();
        arena.lent.clear();
        return;
    }
    let lent = std::mem::take(&mut arena.lent);
    for l in lent.iter().filter(|l| l.flags & VMI_FLAG_MSG != 0) {
        let data = &arena.bytes[l.start..l.start + l.len];
        crate::msgpass::received_early(core, handler, crate::ConnId(l.conn), l.flags, data);
        core.run_deferred();
    }
    crate::msgpass::deliver(core, handler, 1);
    let (releases, held) = arena
        .owners
        .get_or_insert_with(|| (core.engine.releases().clone(), core.engine.held_count()));
    for l in &lent {
        if l.flags & VMI_FLAG_MSG != 0 {
            let end = l.flags & crate::abi::VMI_FLAG_END != 0;
            core.engine
                .conns_mut()
                .rx_fragment(crate::ConnId(l.conn), end);
            continue;
        }
        let data = &arena.bytes[l.start..l.start + l.len];
        receive_lent(core, handler, (l.conn, l.flags, data), releases, held);
        core.run_deferred();
    }
    arena.lent = lent;
    arena.bytes.clear();
    arena.lent.clear();
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
    let start = arena.bytes.len();
    let small = len == 0 || ((4..=64).contains(&len) && !data.is_null());
    if !small || arena.bytes.capacity() - start < len || arena.lent.len() == arena.lent.capacity() {
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
    arena.bytes.reserve(len);
    arena.lent.reserve(1);
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
    arena.msgs += (flags & VMI_FLAG_MSG != 0) as usize;
    let start = arena.bytes.len();
    let at = arena.lent.len();
    // SAFETY: `lent` has room for one more (the caller's promise); the slot is written
    // before `set_len` covers it.
    unsafe {
        arena.lent.as_mut_ptr().add(at).write(Lent {
            conn,
            flags,
            start,
            len,
        });
        arena.lent.set_len(at + 1);
    }
    if len > 0 {
        // SAFETY: the arena has room for `len` bytes after its `start` initialised ones (the
        // caller's promise), which `set_len` then covers once they are copied.
        unsafe {
            copy(data, arena.bytes.as_mut_ptr().add(start), len);
            arena.bytes.set_len(start + len);
        }
    }
    VMI_COMPLETE
}
