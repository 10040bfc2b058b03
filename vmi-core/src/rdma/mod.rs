//! Remote memory access (VMI 2.1's RDMA API: `VMI_RDMA_Publish_Buffer`, `VMI_RDMA_Put`,
//! `VMI_RDMA_Get`, the publish, put-notification and get-notification callbacks,
//! `VMI_RDMA_Dealloc_Buffer`), over any chain.
//!
//! A process publishes part of a [`Region`] to a peer with a small payload; the peer's
//! [`Handler::rdma_published`] gets a [`RemoteBuffer`] and the payload; it then puts bytes
//! gathered from several parts into the buffer at an offset, or gets bytes from it into
//! segments of its own regions, and hears in [`Handler::rdma_done`] when each put or get
//! landed (or why not). With the notify option the publisher's application hears of it too
//! ([`Handler::rdma_put_notify`], [`Handler::rdma_get_notify`]). The peer releases a buffer
//! it no longer needs ([`crate::Operations::rdma_release`]); the publisher may withdraw one
//! ([`crate::Operations::rdma_withdraw`]).
//!
//! How the bytes move: on every transport, puts and gets travel as host messages marked
//! [`VMI_FLAG_MSG`](crate::abi::VMI_FLAG_MSG) through the chain (so filters check and
//! compress them like stream data), split into chunks of at most [`MAX_CHUNK`] bytes and
//! the chain's largest fragment; the target's vmi writes or reads the buffer during its
//! `poll` and answers, with no callback into the target's application unless it asked to be
//! notified. The wire header is in [`wire`]; the initiator's waiting ops in [`initiator`];
//! the published buffers and the checks of a peer's access in [`target`].
//!
//! Everything the peer sends is checked before use: a put or get reaches only a buffer
//! published to that peer, within its range, and not withdrawn; an answer must match a
//! waiting op's chunk on the connection it went on, and a get's answer must carry exactly
//! the bytes asked for. A lost connection, a timeout or a cancel ends each waiting op with
//! a status; a chunk that fails a filter's check on the way fails its op.
#![deny(unsafe_code)]

pub mod initiator;
mod pool;
mod region;
pub mod target;
pub mod wire;

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::conn::ConnId;
use crate::ctx::Ctx;
use crate::error::VmiError;
use crate::handler::Handler;
use crate::ops::{Core, Mode};
use crate::slab::Slab;
use crate::status::Status;
use initiator::{Answered, Initiator, Landing, Op, OpKind};
use target::{Exposed, Target};
use wire::{HEADER, Kind};

pub use pool::{BufferPool, PoolBuffer, PoolConfig, PoolStats};
pub use region::{MAX_REGION, Region};

/// The largest chunk a put or get moves in one message (larger ones take several).
pub const MAX_CHUNK: usize = 4 << 20;

/// The largest publish payload.
pub const MAX_PUBLISH_PAYLOAD: usize = 64 * 1024;

/// The most puts and gets one process may have waiting.
pub const MAX_OPS: usize = 65_536;

/// The operation's name in refusals (rails).
const WHAT: &str = "RDMA puts and gets";

/// A buffer this process published (the publisher's handle).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PublishId(pub(crate) u64);

impl PublishId {
    /// The id as a number (the peer's [`RemoteBuffer::id`]).
    pub fn raw(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for PublishId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "published buffer #{}", self.0)
    }
}

/// A buffer a peer published to this process (VMI 2.1: `PVMI_REMOTE_BUFFER`; `rsz` is
/// [`RemoteBuffer::size`], `lctxt` is [`RemoteBuffer::ctx`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RemoteBuffer {
    /// The connection to its publisher.
    pub conn: ConnId,
    /// The publisher's id for it.
    pub id: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The publisher's value, given back in its notifications (VMI's `ctx`).
    pub ctx: u32,
    /// The publisher's 64-bit tag (VMI 2.1: `remoteCtx`, the remote buffer's `lctxt`).
    pub tag: u64,
}

/// A put or get this process issued and has not heard the end of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RdmaOpId(pub(crate) u64);

impl RdmaOpId {
    /// The id as a number.
    pub fn raw(self) -> u64 {
        self.0
    }
}

/// How a put or get is issued (VMI 2.1: the op's `notify` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RdmaOptions {
    /// Tell the publisher's application when it landed.
    pub notify: bool,
    /// How long it may wait for the target's answers before it fails with
    /// [`Status::Timeout`]; `None` waits until they come or the connection closes.
    pub timeout: Option<Duration>,
}

impl Default for RdmaOptions {
    fn default() -> Self {
        RdmaOptions {
            notify: false,
            timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// Where part of a get lands: `len` bytes at `offset` of `region` (VMI 2.1: one entry of
/// the op's `buffers`/`addr`/`sz` lists).
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    /// The local memory.
    pub region: &'a Region,
    /// Where in it.
    pub offset: usize,
    /// How many bytes.
    pub len: usize,
}

/// What the publisher's application is told of a put or get that landed (VMI 2.1: the put
/// and get notification callbacks' `rdmaSize` and `ctx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RdmaNotice {
    /// The buffer.
    pub buffer: PublishId,
    /// The value it was published with.
    pub ctx: u32,
    /// Where in the buffer the op started.
    pub offset: u64,
    /// How many bytes it moved.
    pub len: u64,
}

/// How an op ended, kept until delivered.
struct Ended {
    /// The handle the application knows the connection by.
    conn: ConnId,
    /// The application's token.
    token: u64,
    status: Status,
    detail: Cow<'static, str>,
}

impl Ended {
    fn of(op: &Op, status: Status, detail: impl Into<Cow<'static, str>>) -> Ended {
        Ended {
            conn: op.app_conn,
            token: op.token,
            status,
            detail: detail.into(),
        }
    }
}

/// The RDMA state of a process.
#[derive(Default)]
pub(crate) struct Rdma {
    initiator: Initiator,
    target: Target,
    /// Ops that ended outside a poll (cancels, timeouts), delivered at the next poll.
    done: VecDeque<Ended>,
    /// Get answers sent recently, by connection and message index, so the peer's "message N
    /// failed" turns into a failed answer instead of a wait for the deadline.
    sent: VecDeque<(ConnId, u64, u64, u64)>,
    /// Buffers peers published with an address for one-sided access, by connection and id,
    /// as the publisher said (never the application's copy of them).
    remotes: HashMap<(ConnId, u64), Reach>,
    /// How each connection moved its puts and gets, once it tried: true for one-sided.
    paths: HashMap<ConnId, bool>,
    /// Entries of `remotes` per connection (a peer cannot take the whole of it).
    remote_counts: HashMap<ConnId, usize>,
    /// The last buffer reached one-sided (most ops go to the buffer the one before went to):
    /// no hashing for it. Cleared whenever `remotes` loses an entry.
    last: Option<(ConnId, u64, Reach)>,
    /// Ids of ops that ended at once (one-sided): counted, never in the initiator's table.
    next_quick: u64,
    /// Published buffers the connection's transport registered for the peer's one-sided
    /// access (an RDMA NIC's memory registration), by publish id: the transport and its
    /// handle, deregistered when the buffer is released or its connection closes.
    regs: HashMap<u64, (crate::slot::DevIndex, u64)>,
}

/// The bit that marks the id of an op that ended at once (no table key has it: generations
/// are 32 bits, shifted by 32, and vmi never reaches the top one).
const QUICK: u64 = 1 << 63;

/// The most buffers published to this process that it reaches one-sided (more are reached
/// through messages).
const MAX_ONE_SIDED: usize = 65_536;
/// The most of them one peer's connection may have (so one peer cannot take them all).
const MAX_ONE_SIDED_PER_CONN: usize = 4096;

/// How this process reaches a buffer a peer published one-sided.
#[derive(Clone, Copy, Debug)]
struct Reach {
    /// Its address in the publisher.
    addr: u64,
    /// Its size.
    size: u64,
    /// The memory object behind it, if the publisher named one.
    attach: Option<wire::Attach>,
    /// The transport that reaches it (the connection's, found able when it was published).
    transport: crate::slot::DevIndex,
}

/// How a connection moves RDMA bytes (see [`crate::Vmi::rdma_path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RdmaPath {
    /// Straight into and out of the peer's memory (the transport's one-sided access, e.g.
    /// `process_vm_writev`/`readv` over shared memory); the peer's application and vmi do
    /// nothing for a put or get without notify.
    OneSided,
    /// As messages through the chain, which the peer's vmi answers in its `poll`.
    Messages,
    /// No put or get has run on the connection yet.
    Untried,
}

/// How many sent get answers `Rdma::sent` remembers.
const SENT_KEPT: usize = 1024;

impl Rdma {
    /// What the next poll must see to (timeouts to check, ends to deliver).
    pub(crate) fn waits(&self) -> usize {
        usize::from(self.initiator.timed()) + self.done.len()
    }

    /// The number of puts and gets waiting.
    pub fn waiting(&self) -> usize {
        self.initiator.waiting()
    }

    /// The number of buffers published and not released.
    pub fn published(&self) -> usize {
        self.target.published()
    }
}

/// The system's page size (sysconf; rustix's auxv reader does not run under valgrind, which
/// the instruction counts need).
#[allow(unsafe_code)]
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// The largest chunk on `core`'s chain.
fn chunk_size(core: &Core) -> usize {
    let max = core.engine.top_caps().max_fragment;
    let chain = if max == 0 {
        usize::MAX
    } else {
        (max as usize).saturating_sub(HEADER)
    };
    MAX_CHUNK.min(chain).max(1)
}

/// Publishes `range` of `region` on `app_conn` (see [`crate::Operations::rdma_publish`]).
pub(crate) fn publish(
    core: &mut Core,
    app_conn: ConnId,
    region: &Region,
    range: Range<usize>,
    (ctx, tag): (u32, u64),
    payload: &[u8],
    mode: Mode,
) -> Result<PublishId, VmiError> {
    if range.start > range.end || range.end > region.len() {
        return Err(VmiError::RdmaRange {
            offset: range.start as u64,
            len: range.end.saturating_sub(range.start) as u64,
            size: region.len() as u64,
        });
    }
    if payload.len() > MAX_PUBLISH_PAYLOAD {
        return Err(VmiError::MessageTooLarge {
            len: payload.len(),
            max: MAX_PUBLISH_PAYLOAD,
        });
    }
    let conn = core.cross.real(app_conn);
    if !core.engine.conns().is_live(conn) {
        return Err(VmiError::UnknownConnection(app_conn));
    }
    // The application's own memory is reached through messages only: vmi cannot keep its
    // addresses reserved after a close (see `Region::from_user`).
    let transport = one_sided_transport(core, conn).filter(|_| region.is_vmi_memory());
    let one_sided = transport.is_some();
    let id = core.rdma.target.publish(Exposed {
        conn,
        region: region.clone(),
        start: range.start,
        len: range.len(),
        ctx,
        withdrawn: false,
        one_sided,
    });
    // Over a connection that can reach it one-sided, the address and the memfd behind it,
    // and the transport's key for it when the transport registers memory (an RDMA NIC: the
    // registration gives the peer remote access to exactly this range until the release).
    let mut attach = one_sided.then(|| region.attach(range.start)).flatten();
    if let Some(a) = attach.as_mut()
        && let Some(t) = transport
    {
        let base = (region.addr() + range.start) as *mut u8;
        // SAFETY: the range lies in the region (checked above), and the region's memory
        // stays mapped while the publish holds its handle, which it does until `unregister`.
        #[allow(unsafe_code)]
        let handle = unsafe { core.engine.register_range(t, conn.raw(), base, range.len()) };
        if handle != 0 {
            a.key = handle as u32;
            core.rdma.regs.insert(id, (t, handle));
        }
    }
    let kind = Kind::Publish {
        buffer: id,
        addr: if one_sided {
            (region.addr() + range.start) as u64
        } else {
            0
        },
        size: range.len() as u64,
        ctx,
        tag,
        attach,
    };
    let block = attach.map(|a| a.encode());
    let parts: &[&[u8]] = match &block {
        Some(b) => &[b, payload],
        None => &[payload],
    };
    if let Err(e) = transmit(core, conn, kind, parts, mode) {
        core.rdma.target.release(conn, id);
        unregister(core, id);
        return Err(e);
    }
    Ok(PublishId(id))
}

/// Undoes the transport's registration of published buffer `id`, if it made one.
fn unregister(core: &mut Core, id: u64) {
    if let Some((t, handle)) = core.rdma.regs.remove(&id) {
        core.engine.deregister_handle(t, handle);
    }
}

/// Whether `conn`'s transport can move RDMA bytes one-sided and no filter on its chain must
/// see them (a filter sees every message; a one-sided transfer would pass it by).
/// Decided once per connection and buffer (a connection's transport and chain do not change),
/// not per op.
fn one_sided_transport(core: &Core, conn: ConnId) -> Option<crate::slot::DevIndex> {
    let conns = core.engine.conns();
    let t = conns.transport_of(conn)?;
    let able = core.engine.has_rdma_access(t)
        && core.engine.chain_direct(conns.chain(conn))
        && !(core.rails.on() && (core.rails.is_bond(conn) || core.rails.is_rail(conn)));
    able.then_some(t)
}

/// Runs `f` with the transport's segments for `items`: on the stack for a few (the common
/// case: no allocation per op), else on the heap.
fn with_segs<T, R>(
    items: &[T],
    seg: impl Fn(&T) -> crate::abi::VmiSeg,
    f: impl FnOnce(&[crate::abi::VmiSeg]) -> R,
) -> R {
    let mut few = [crate::abi::VmiSeg {
        base: std::ptr::null_mut(),
        len: 0,
    }; 4];
    if items.len() <= few.len() {
        for (s, i) in few.iter_mut().zip(items) {
            *s = seg(i);
        }
        f(&few[..items.len()])
    } else {
        f(&items.iter().map(seg).collect::<Vec<_>>())
    }
}

/// Whether the peer published buffer `buffer` on `conn` for one-sided access.
#[inline]
fn reachable(core: &Core, conn: ConnId, buffer: u64) -> bool {
    matches!(core.rdma.last, Some((c, b, _)) if c == conn && b == buffer)
        || core.rdma.remotes.contains_key(&(conn, buffer))
}

/// Forgets how to reach `buffer` on `conn` one-sided.
fn unreachable(core: &mut Core, conn: ConnId, buffer: u64) {
    if core.rdma.remotes.remove(&(conn, buffer)).is_some()
        && let Some(n) = core.rdma.remote_counts.get_mut(&conn)
    {
        *n = n.saturating_sub(1);
    }
    core.rdma.last = None;
}

/// Remembers how to reach `buffer` on `conn` one-sided, within the limits (beyond them the
/// buffer is reached through messages).
fn reach(core: &mut Core, conn: ConnId, buffer: u64, r: Reach) {
    let rdma = &mut core.rdma;
    let n = rdma.remote_counts.entry(conn).or_insert(0);
    if let Some(old) = rdma.remotes.get_mut(&(conn, buffer)) {
        // The same id published again (a peer's choice): the newer word stands.
        *old = r;
        rdma.last = None;
        return;
    }
    if *n < MAX_ONE_SIDED_PER_CONN && rdma.remotes.len() < MAX_ONE_SIDED {
        rdma.remotes.insert((conn, buffer), r);
        *n += 1;
    } else {
        log::debug!("{conn}: buffer {buffer} is reached through messages (one-sided limit)");
    }
}

/// Moves an op's bytes one-sided when the connection can: `Some(status)` when it ran,
/// `None` when the bytes must go as messages.
fn try_one_sided(
    core: &mut Core,
    conn: ConnId,
    buffer: u64,
    offset: u64,
    write: bool,
    segs: &[crate::abi::VmiSeg],
) -> Option<Status> {
    let (reach, fresh) = match core.rdma.last {
        Some((c, b, r)) if c == conn && b == buffer => (r, false),
        _ => {
            let r = *core.rdma.remotes.get(&(conn, buffer))?;
            core.rdma.last = Some((conn, buffer, r));
            (r, true)
        }
    };
    let (addr, size) = (reach.addr, reach.size);
    let len: u64 = segs.iter().map(|s| s.len as u64).sum();
    // Within what the publisher published (the application's RemoteBuffer may say more).
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Some(Status::Invalid);
    }
    let key = reach.attach.map(|a| crate::abi::VmiRdmaKey {
        fd: a.fd as i32,
        remote_key: a.key,
        inode: a.inode,
        offset: a.start + offset,
    });
    let r = core.engine.rdma_access(
        reach.transport,
        conn.raw(),
        write,
        addr + offset,
        key.as_ref(),
        segs,
    );
    if fresh {
        note_path(core, conn, r.is_some());
    }
    r
}

/// Records (and logs, the first time) how `conn` moved an op.
#[cold]
fn note_path(core: &mut Core, conn: ConnId, one_sided: bool) {
    if let std::collections::hash_map::Entry::Vacant(e) = core.rdma.paths.entry(conn) {
        e.insert(one_sided);
        if one_sided {
            log::info!("{conn}: RDMA puts and gets go one-sided (straight into the peer's memory)");
        } else {
            log::info!(
                "{conn}: RDMA puts and gets go as messages: the transport cannot reach the peer's memory"
            );
        }
    }
}

/// An op that ran one-sided: ends at the next poll (callbacks run only from `poll`); with
/// notify, the publisher is told now.
#[allow(clippy::too_many_arguments)]
fn ended_one_sided(
    core: &mut Core,
    remote: &RemoteBuffer,
    conn: ConnId,
    get: bool,
    offset: u64,
    len: u64,
    status: Status,
    opts: &RdmaOptions,
    token: u64,
    mode: Mode,
) -> RdmaOpId {
    if status == Status::Ok && opts.notify {
        let kind = Kind::Notice {
            get,
            buffer: remote.id,
            offset,
            len,
        };
        if let Err(e) = transmit(core, conn, kind, &[], mode) {
            log::warn!("{conn}: could not send an RDMA notice: {e}");
        }
    }
    let detail: Cow<'static, str> = match status {
        Status::Ok => "".into(),
        Status::Invalid => {
            "the buffer's memory is not there at the target any more, or the range is outside it"
                .into()
        }
        s => format!("the one-sided transfer failed: {}", s.describe()).into(),
    };
    // An id of its own, never a table key (it ended already: a cancel finds nothing).
    core.rdma.next_quick = core.rdma.next_quick.wrapping_add(1);
    let id = QUICK | (core.rdma.next_quick & !QUICK);
    core.rdma.done.push_back(Ended {
        conn: remote.conn,
        token,
        status,
        detail,
    });
    core.refresh();
    RdmaOpId(id)
}

/// Withdraws a published buffer (see [`crate::Operations::rdma_withdraw`]).
pub(crate) fn withdraw(core: &mut Core, id: PublishId, mode: Mode) -> Result<(), VmiError> {
    let Some(conn) = core.rdma.target.withdraw(id.0) else {
        return Err(VmiError::UnknownPublish(id));
    };
    transmit(core, conn, Kind::Withdraw { buffer: id.0 }, &[], mode).map(|_| ())
}

/// Releases a buffer the peer published (see [`crate::Operations::rdma_release`]).
pub(crate) fn release(core: &mut Core, remote: &RemoteBuffer, mode: Mode) -> Result<(), VmiError> {
    let conn = core.cross.real(remote.conn);
    unreachable(core, conn, remote.id);
    transmit(core, conn, Kind::Release { buffer: remote.id }, &[], mode).map(|_| ())
}

/// Checks an op's remote range against the buffer's size.
fn check_remote(remote: &RemoteBuffer, offset: u64, len: u64) -> Result<(), VmiError> {
    match offset.checked_add(len) {
        Some(end) if end <= remote.size => Ok(()),
        _ => Err(VmiError::RdmaRange {
            offset,
            len,
            size: remote.size,
        }),
    }
}

/// Records an op and returns its id, or refuses it at the limit.
fn issue_op(core: &mut Core, op: Op) -> Result<u64, VmiError> {
    if core.rdma.initiator.waiting() >= MAX_OPS {
        return Err(VmiError::Busy { limit: MAX_OPS });
    }
    Ok(core.rdma.initiator.issue(op))
}

/// Records an op that goes as messages, in chunks; returns its id and its chunks
/// ((offset, length) pairs). With notify, an op of several chunks is followed by a notice.
#[allow(clippy::too_many_arguments)]
fn issue_chunked(
    core: &mut Core,
    remote: &RemoteBuffer,
    conn: ConnId,
    kind: OpKind,
    offset: u64,
    len: u64,
    opts: &RdmaOptions,
    token: u64,
) -> Result<(u64, Vec<(u64, u64)>), VmiError> {
    let pieces = chunks(offset, len, chunk_size(core));
    let id = issue_op(
        core,
        Op {
            id: 0,
            conn,
            app_conn: remote.conn,
            token,
            kind,
            buffer: remote.id,
            offset,
            len,
            chunks: pieces.iter().map(|c| c.0).collect(),
            notify: opts.notify && pieces.len() > 1,
            deadline: opts.timeout.map(|t| Instant::now() + t),
            messages: 0..0,
        },
    )?;
    Ok((id, pieces))
}

/// The chunks of `len` bytes from `offset`: (offset, length) pairs.
fn chunks(offset: u64, len: u64, chunk: usize) -> Vec<(u64, u64)> {
    let chunk = chunk as u64;
    let mut out = Vec::with_capacity(len.div_ceil(chunk).max(1) as usize);
    let mut at = 0;
    loop {
        let n = (len - at).min(chunk);
        out.push((offset + at, n));
        at += n;
        if at >= len {
            return out;
        }
    }
}

/// Puts `parts` at `offset` of `remote` (see [`crate::Operations::rdma_put`]).
pub(crate) fn put(
    core: &mut Core,
    remote: &RemoteBuffer,
    offset: u64,
    parts: &[&[u8]],
    opts: &RdmaOptions,
    token: u64,
    mode: Mode,
) -> Result<RdmaOpId, VmiError> {
    let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
    check_remote(remote, offset, len)?;
    let conn = core.cross.real(remote.conn);
    if !core.engine.conns().is_live(conn) {
        return Err(VmiError::UnknownConnection(remote.conn));
    }
    if reachable(core, conn, remote.id) {
        let seg = |p: &&[u8]| crate::abi::VmiSeg {
            base: p.as_ptr().cast_mut(),
            len: p.len(),
        };
        // The transport only reads these segments (a write to the peer).
        let done = with_segs(parts, seg, |segs| {
            try_one_sided(core, conn, remote.id, offset, true, segs)
        });
        if let Some(status) = done {
            return Ok(ended_one_sided(
                core, remote, conn, false, offset, len, status, opts, token, mode,
            ));
        }
    }
    let (id, pieces) = issue_chunked(core, remote, conn, OpKind::Put, offset, len, opts, token)?;
    let one = pieces.len() == 1;
    let first = core.engine.conns().tx_messages(conn);
    // Walk the parts once, handing each chunk the slices that make it up.
    let mut part = 0;
    let mut within = 0;
    let mut slices: Vec<&[u8]> = Vec::with_capacity(parts.len().min(8));
    for &(at, n) in &pieces {
        slices.clear();
        let mut need = n as usize;
        while need > 0 {
            let p = parts[part];
            let take = (p.len() - within).min(need);
            slices.push(&p[within..within + take]);
            need -= take;
            within += take;
            if within == p.len() {
                part += 1;
                within = 0;
            }
        }
        while part < parts.len() && parts[part].is_empty() {
            part += 1;
        }
        let kind = Kind::Put {
            op: id,
            buffer: remote.id,
            offset: at,
            notify: opts.notify && one,
        };
        if let Err(e) = transmit(core, conn, kind, &slices, mode) {
            let sent = core.engine.conns().tx_messages(conn);
            return fail_issue(core, id, first..sent, e);
        }
    }
    let sent = core.engine.conns().tx_messages(conn);
    core.rdma.initiator.set_messages(id, first..sent);
    core.refresh();
    Ok(RdmaOpId(id))
}

/// An op whose chunks could not all be sent: with none sent it is forgotten and the error
/// returned; with some sent it ends with the error at the next poll (its answers are
/// ignored), and the id is returned.
fn fail_issue(
    core: &mut Core,
    id: u64,
    sent: Range<u64>,
    e: VmiError,
) -> Result<RdmaOpId, VmiError> {
    let op = core.rdma.initiator.take(id);
    if sent.is_empty() {
        return Err(e);
    }
    if let Some(op) = op {
        let detail = format!("only part of it could be sent: {e}");
        core.rdma
            .done
            .push_back(Ended::of(&op, Status::NoResources, detail));
    }
    core.refresh();
    Ok(RdmaOpId(id))
}

/// Gets bytes at `offset` of `remote` into `into` (see [`crate::Operations::rdma_get`]).
pub(crate) fn get(
    core: &mut Core,
    remote: &RemoteBuffer,
    offset: u64,
    into: &[Segment<'_>],
    opts: &RdmaOptions,
    token: u64,
    mode: Mode,
) -> Result<RdmaOpId, VmiError> {
    let mut len = 0u64;
    for s in into {
        if s.offset
            .checked_add(s.len)
            .is_none_or(|end| end > s.region.len())
        {
            return Err(VmiError::RdmaRange {
                offset: s.offset as u64,
                len: s.len as u64,
                size: s.region.len() as u64,
            });
        }
        len += s.len as u64;
    }
    check_remote(remote, offset, len)?;
    let conn = core.cross.real(remote.conn);
    if !core.engine.conns().is_live(conn) {
        return Err(VmiError::UnknownConnection(remote.conn));
    }
    if reachable(core, conn, remote.id) {
        let seg = |s: &Segment<'_>| crate::abi::VmiSeg {
            base: (s.region.addr() + s.offset) as *mut u8,
            len: s.len,
        };
        // The regions are live (borrowed for this call) and were range-checked above; the
        // transport writes the peer's bytes into them before it returns.
        let done = with_segs(into, seg, |segs| {
            try_one_sided(core, conn, remote.id, offset, false, segs)
        });
        if let Some(status) = done {
            return Ok(ended_one_sided(
                core, remote, conn, true, offset, len, status, opts, token, mode,
            ));
        }
    }
    let landings = into
        .iter()
        .map(|s| Landing {
            region: s.region.clone(),
            offset: s.offset,
            len: s.len,
        })
        .collect();
    let kind = OpKind::Get(landings);
    let (id, pieces) = issue_chunked(core, remote, conn, kind, offset, len, opts, token)?;
    let one = pieces.len() == 1;
    let first = core.engine.conns().tx_messages(conn);
    for &(at, n) in &pieces {
        let kind = Kind::Get {
            op: id,
            buffer: remote.id,
            offset: at,
            len: n,
            notify: opts.notify && one,
        };
        if let Err(e) = transmit(core, conn, kind, &[], mode) {
            let sent = core.engine.conns().tx_messages(conn);
            return fail_issue(core, id, first..sent, e);
        }
    }
    let sent = core.engine.conns().tx_messages(conn);
    core.rdma.initiator.set_messages(id, first..sent);
    core.refresh();
    Ok(RdmaOpId(id))
}

/// Cancels a waiting op: it ends with [`Status::Cancelled`] at the next poll, and its
/// answers are ignored (a get's late bytes land nowhere). False when it does not wait.
pub(crate) fn cancel(core: &mut Core, id: RdmaOpId) -> bool {
    let Some(op) = core.rdma.initiator.take(id.0) else {
        return false;
    };
    let detail = "cancelled by this process";
    core.rdma
        .done
        .push_back(Ended::of(&op, Status::Cancelled, detail));
    core.refresh();
    true
}

/// Sends an RDMA message.
fn transmit(
    core: &mut Core,
    conn: ConnId,
    kind: Kind,
    parts: &[&[u8]],
    mode: Mode,
) -> Result<u64, VmiError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    crate::msgpass::transmit(core, conn, &kind.encode(len), parts, mode, WHAT)
}

/// Sends an answer or notice; a failure to send only loses it (the peer's op then ends by
/// its deadline), so it is logged.
fn answer(core: &mut Core, conn: ConnId, kind: Kind, parts: &[&[u8]]) -> Option<u64> {
    match transmit(core, conn, kind, parts, Mode::Deferred) {
        Ok(m) => Some(m),
        Err(e) => {
            log::warn!("{conn}: could not send an RDMA {}: {e}", kind.name());
            None
        }
    }
}

/// An RDMA message arrived on `conn` (already counted in the connection's messages).
pub(crate) fn handle(core: &mut Core, handler: &mut dyn Handler, conn: ConnId, data: &[u8]) {
    let max = MAX_CHUNK.max(MAX_PUBLISH_PAYLOAD);
    let (kind, payload) = match Kind::decode(data, max) {
        Ok(k) => k,
        Err(e) => {
            log::warn!("{conn}: ignored a malformed RDMA message from the peer: {e}");
            return;
        }
    };
    match kind {
        Kind::Publish {
            buffer,
            addr,
            size,
            ctx,
            tag,
            attach,
        } => {
            // Kept only where this side can reach it one-sided; else puts and gets on it go
            // as messages with no look-up.
            if addr != 0
                && let Some(transport) = one_sided_transport(core, conn)
            {
                let r = Reach {
                    addr,
                    size,
                    attach,
                    transport,
                };
                reach(core, conn, buffer, r);
            }
            let remote = RemoteBuffer {
                conn: core.cross.app(conn),
                id: buffer,
                size,
                ctx,
                tag,
            };
            let mut slab = Slab::from_bytes(payload);
            handler.rdma_published(&mut Ctx::new(core), remote.conn, remote, &mut slab);
        }
        Kind::Put {
            op,
            buffer,
            offset,
            notify,
        } => {
            let len = payload.len() as u64;
            let status = match core.rdma.target.access(conn, buffer, offset, len) {
                Ok((e, at)) => {
                    let landed = e.region.write(at, payload);
                    let ctx = e.ctx;
                    if let Err(err) = landed {
                        log::error!("{conn}: a checked put did not fit its region: {err}");
                        Status::Internal
                    } else {
                        if notify {
                            let n = RdmaNotice {
                                buffer: PublishId(buffer),
                                ctx,
                                offset,
                                len,
                            };
                            tell(core, handler, conn, false, n);
                        }
                        Status::Ok
                    }
                }
                Err(why) => {
                    log::debug!("{conn}: refused a put on buffer {buffer}: {why:?}");
                    why.status()
                }
            };
            answer(core, conn, Kind::PutDone { op, offset, status }, &[]);
        }
        Kind::Get {
            op,
            buffer,
            offset,
            len,
            notify,
        } => {
            let chunk = chunk_size(core) as u64;
            let got = if len > chunk {
                Err(Status::TooLarge)
            } else {
                match core.rdma.target.access(conn, buffer, offset, len) {
                    Ok((e, at)) => e
                        .region
                        .to_vec(at, len as usize)
                        .map(|v| (v, e.ctx))
                        .map_err(|_| Status::Internal),
                    Err(why) => Err(why.status()),
                }
            };
            match got {
                Ok((bytes, ctx)) => {
                    let kind = Kind::GetData {
                        op,
                        offset,
                        status: Status::Ok,
                    };
                    if let Some(m) = answer(core, conn, kind, &[&bytes]) {
                        if core.rdma.sent.len() == SENT_KEPT {
                            core.rdma.sent.pop_front();
                        }
                        core.rdma.sent.push_back((conn, m, op, offset));
                    }
                    if notify {
                        let n = RdmaNotice {
                            buffer: PublishId(buffer),
                            ctx,
                            offset,
                            len,
                        };
                        tell(core, handler, conn, true, n);
                    }
                }
                Err(status) => {
                    answer(core, conn, Kind::GetData { op, offset, status }, &[]);
                }
            }
        }
        Kind::Notice {
            get,
            buffer,
            offset,
            len,
        } => match core.rdma.target.access(conn, buffer, offset, len) {
            Ok((e, _)) => {
                let n = RdmaNotice {
                    buffer: PublishId(buffer),
                    ctx: e.ctx,
                    offset,
                    len,
                };
                tell(core, handler, conn, get, n);
            }
            Err(why) => log::debug!("{conn}: ignored a notice on buffer {buffer}: {why:?}"),
        },
        Kind::PutDone { op, offset, status } => chunk_done(core, handler, conn, op, offset, status),
        Kind::GetData { op, offset, status } => {
            if status == Status::Ok {
                let Some(o) = core.rdma.initiator.get(op).filter(|o| o.conn == conn) else {
                    log::debug!("{conn}: ignored a get answer for no waiting get ({op})");
                    return;
                };
                // The chunk must be one this get waits for, with exactly its bytes.
                if !o.chunks.contains(&offset) {
                    log::debug!("{conn}: ignored a get answer for no waiting chunk (op {op})");
                    return;
                }
                let want = (o.offset + o.len - offset).min(chunk_size(core) as u64);
                if payload.len() as u64 != want {
                    let detail = format!(
                        "the target answered with {} bytes at offset {offset} where {want} were asked for",
                        payload.len()
                    );
                    if let Some(o) = core.rdma.initiator.take(op) {
                        end_op(core, handler, o, Status::Protocol, &detail);
                    }
                    return;
                }
                if let OpKind::Get(landings) = &o.kind {
                    initiator::scatter(landings, (offset - o.offset) as usize, payload);
                }
            }
            chunk_done(core, handler, conn, op, offset, status);
        }
        Kind::Release { buffer } => {
            if core.rdma.target.release(conn, buffer).is_some() {
                unregister(core, buffer);
                handler.rdma_released(&mut Ctx::new(core), PublishId(buffer), Status::Ok);
            }
        }
        Kind::Withdraw { buffer } => {
            unreachable(core, conn, buffer);
            let remote_conn = core.cross.app(conn);
            handler.rdma_withdrawn(&mut Ctx::new(core), remote_conn, buffer);
            // The publisher keeps the memory until it hears that nothing more will come.
            answer(core, conn, Kind::Release { buffer }, &[]);
        }
    }
}

/// Tells the publisher's application of a put (or a get) that landed in its buffer.
fn tell(core: &mut Core, handler: &mut dyn Handler, conn: ConnId, get: bool, n: RdmaNotice) {
    let app = core.cross.app(conn);
    if get {
        handler.rdma_get_notify(&mut Ctx::new(core), app, n);
    } else {
        handler.rdma_put_notify(&mut Ctx::new(core), app, n);
    }
}

/// A chunk's answer: the op ends when its last chunk is answered, or at the first failure.
fn chunk_done(
    core: &mut Core,
    handler: &mut dyn Handler,
    conn: ConnId,
    op: u64,
    offset: u64,
    status: Status,
) {
    match core.rdma.initiator.answered(conn, op, offset) {
        Answered::Stray => {
            log::debug!("{conn}: ignored an RDMA answer for no waiting chunk (op {op})");
        }
        Answered::More if status == Status::Ok => {}
        Answered::More | Answered::Done => {
            let Some(o) = core.rdma.initiator.take(op) else {
                return;
            };
            if status != Status::Ok {
                let detail = format!("the target refused it: {}", refusal(status));
                end_op(core, handler, o, status, &detail);
                return;
            }
            if o.notify {
                let kind = Kind::Notice {
                    get: matches!(o.kind, OpKind::Get(_)),
                    buffer: o.buffer,
                    offset: o.offset,
                    len: o.len,
                };
                answer(core, conn, kind, &[]);
            }
            end_op(core, handler, o, Status::Ok, "");
        }
    }
}

/// What a refusal's status means for RDMA.
fn refusal(status: Status) -> &'static str {
    match status {
        Status::Rejected => {
            "the buffer is not published to this process (released, withdrawn or never published)"
        }
        Status::Invalid => "the range is outside the buffer",
        Status::TooLarge => "a chunk over the target's limit",
        s => s.describe(),
    }
}

/// Tells the application how an op ended.
fn end_op(core: &mut Core, handler: &mut dyn Handler, o: Op, status: Status, detail: &str) {
    end(core, handler, o.app_conn, o.token, status, detail);
}

/// Tells the application that its op `token` on `conn` ended.
fn end(
    core: &mut Core,
    handler: &mut dyn Handler,
    conn: ConnId,
    token: u64,
    status: Status,
    detail: &str,
) {
    handler.rdma_done(&mut Ctx::new(core), conn, token, status, detail);
    core.run_deferred();
    core.refresh();
}

/// Timeouts, and ops that ended outside a poll, run from `poll`.
pub(crate) fn background(core: &mut Core, handler: &mut dyn Handler) {
    if core.rdma.initiator.timed() {
        for op in core.rdma.initiator.expired(Instant::now()) {
            let detail = "the target did not answer in time";
            core.rdma
                .done
                .push_back(Ended::of(&op, Status::Timeout, detail));
        }
    }
    while let Some(e) = core.rdma.done.pop_front() {
        end(core, handler, e.conn, e.token, e.status, &e.detail);
    }
}

/// How `conn` moves RDMA bytes.
pub(crate) fn path(core: &Core, conn: ConnId) -> RdmaPath {
    match core.rdma.paths.get(&core.cross.real(conn)) {
        Some(true) => RdmaPath::OneSided,
        Some(false) => RdmaPath::Messages,
        None => RdmaPath::Untried,
    }
}

/// The soonest deadline of a waiting op.
pub(crate) fn next_deadline(core: &mut Core) -> Option<Instant> {
    core.rdma.initiator.next_deadline()
}

/// A connection closed: its ops fail, and the buffers published on it are released.
pub(crate) fn conn_closed(core: &mut Core, handler: &mut dyn Handler, conn: ConnId, local: bool) {
    let (status, detail) = if local {
        (
            Status::Cancelled,
            "the connection was closed by this process",
        )
    } else {
        (
            Status::ConnectionLost,
            "the connection closed before the target answered",
        )
    };
    for o in core.rdma.initiator.conn_closed(conn) {
        end_op(core, handler, o, status, detail);
    }
    for (id, e) in core.rdma.target.conn_closed(conn) {
        unregister(core, id);
        if e.one_sided {
            // The peer may not have seen the close yet and write once more: keep the
            // addresses reserved when the application drops the region.
            e.region.retire_on_drop();
        }
        handler.rdma_released(&mut Ctx::new(core), PublishId(id), status);
    }
    core.rdma.sent.retain(|s| s.0 != conn);
    core.rdma.remotes.retain(|k, _| k.0 != conn);
    core.rdma.remote_counts.remove(&conn);
    core.rdma.last = None;
    core.rdma.paths.remove(&conn);
}

/// The peer could not receive message `message` that this side sent on `conn`: a put or
/// get whose chunk it was fails; a get answer's op is told it failed. True when it was one.
pub(crate) fn message_failed(
    core: &mut Core,
    handler: &mut dyn Handler,
    conn: ConnId,
    message: u64,
    status: Status,
    detail: &str,
) -> bool {
    if let Some(o) = core.rdma.initiator.by_message(conn, message) {
        let detail = format!("the target could not receive it: {detail}");
        end_op(core, handler, o, status, &detail);
        return true;
    }
    let Some(i) = core
        .rdma
        .sent
        .iter()
        .position(|&(c, m, _, _)| c == conn && m == message)
    else {
        return false;
    };
    let (_, _, op, offset) = core.rdma.sent.remove(i).expect("found above");
    answer(core, conn, Kind::GetData { op, offset, status }, &[]);
    true
}
