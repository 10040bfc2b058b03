//! Rings a transport lends the host (device ABI 1.7 `lend_rings`): the host's poll reads
//! whole small data records from the receive rings itself, straight into its receive arena,
//! and calls the transport's poll only when the transport has other work; a small send is
//! written straight into the send ring (see [`abi::VmiRingSet`] for the contract and the
//! record format).
//!
//! Two halves, one format:
//! - the transport's: [`LentRings`] (the set, its rings and the host's skips),
//!   [`RingCursor`] (the positions both sides use) and [`data_header`] (the record header
//!   both sides write);
//! - the host's: [`read_ring`] and [`write_message`], which check every position and header
//!   they read from the ring, since the peer writes that memory and may be hostile.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use crate::abi::{
    self, VMI_FLAG_END, VMI_FLAG_HOST, VMI_RING_DATA, VMI_RING_DATA_END, VMI_RING_RECORD_LEN,
    VmiRing, VmiRingCursor, VmiRingSet, VmiTxRing,
};
use crate::loan::{HostCell, Lent};

/// One side's positions in a ring, kept where the host can reach them while the ring is
/// lent (a stable heap address): `(own, seen)`, as a ring consumer keeps `(tail, head_seen)`
/// and a producer `(head, tail_seen)`.
#[derive(Debug, Default)]
pub struct RingCursor(HostCell<VmiRingCursor>);

impl RingCursor {
    /// Both positions.
    #[inline]
    pub fn get(&self) -> (u64, u64) {
        // SAFETY: the cursor is written only on the polling thread, by this handle or by the
        // host's `read_ring` or `write_message` (which run while the device is not called),
        // never at once.
        let c = unsafe { &*self.0.get() };
        (c.own, c.seen)
    }

    /// Sets both positions.
    #[inline]
    pub fn set(&self, (own, seen): (u64, u64)) {
        // SAFETY: as in `get`.
        let c = unsafe { &mut *self.0.get() };
        c.own = own;
        c.seen = seen;
    }

    fn as_ptr(&self) -> *mut VmiRingCursor {
        self.0.get()
    }
}

/// One send ring to lend (see [`LentRings::publish`]).
#[derive(Clone, Copy, Debug)]
pub struct TxLoan<'a> {
    /// The ring (`max_len`: the largest payload the host may write).
    pub ring: RingLoan<'a>,
    /// The consumer's doorbell flag.
    pub sleeping: &'a AtomicU64,
    /// The peer's doorbell eventfd, or -1.
    pub bell: i32,
    /// The peer issues a process-wide barrier before it sleeps: the host's sends need no
    /// fence ([`abi::VMI_TX_LIGHT_BARRIER`]).
    pub light: bool,
}

/// One ring to lend (see [`LentRings::publish`]), receive or send.
#[derive(Clone, Copy, Debug)]
pub struct RingLoan<'a> {
    /// The host's connection the records belong to.
    pub conn: u64,
    /// The producer's position word.
    pub head: &'a AtomicU64,
    /// The consumer's position word.
    pub tail: &'a AtomicU64,
    /// The ring's bytes.
    pub data: *mut u8,
    /// Capacity, a power of two.
    pub cap: usize,
    /// Largest payload the host may take (or write, into a send ring).
    pub max_len: u64,
    /// The cursor the transport reads (or writes) the ring with.
    pub cursor: &'a RingCursor,
}

/// A transport's lent rings, receive and send ([`Lent`] of a [`VmiRingSet`]).
///
/// At the end of its poll, when only ring records can need it, [`LentRings::publish`] lists
/// the rings again and clears the busy flag.
pub type LentRings = Lent<VmiRingSet>;

impl Lent<VmiRingSet> {
    /// Messages the host has written into the send rings itself, in all.
    pub fn sent(&self) -> u64 {
        self.read(|set| set.sent)
    }

    /// Lists `rings` as the lent receive rings and `tx` as the lent send rings (at most one
    /// per connection), lets the host skip up to `skips` of the device's polls (0: the host
    /// still reads the rings, but polls the device every time) and clears the busy flag.
    ///
    /// # Safety
    /// Until the next `publish`, [`LentRings::set_busy`] or drop, every listed ring's memory
    /// stays mapped, readable and writable as a ring in the [`abi::VmiRingSet`] format, its
    /// position and doorbell words stay valid, its reader is between records at the cursor's
    /// position (the host reads from there), and nothing is queued to be written into a
    /// listed send ring (the host writes at the cursor's position); each `bell` stays open.
    pub unsafe fn publish<'a>(
        &mut self,
        rings: impl IntoIterator<Item = RingLoan<'a>>,
        tx: impl IntoIterator<Item = TxLoan<'a>>,
        skips: u32,
    ) {
        let lists = &mut self.lists;
        lists.rings.clear();
        lists.rings.extend(rings.into_iter().map(|r| VmiRing {
            conn: r.conn,
            head: r.head.as_ptr(),
            tail: r.tail.as_ptr(),
            data: r.data,
            cap: r.cap as u64,
            max_len: r.max_len,
            cursor: r.cursor.as_ptr(),
        }));
        lists.tx.clear();
        lists.tx.extend(tx.into_iter().map(|t| VmiTxRing {
            conn: t.ring.conn,
            head: t.ring.head.as_ptr(),
            tail: t.ring.tail.as_ptr(),
            sleeping: t.sleeping.as_ptr(),
            data: t.ring.data,
            cap: t.ring.cap as u64,
            max_len: t.ring.max_len,
            cursor: t.ring.cursor.as_ptr(),
            bell: t.bell,
            flags: if t.light {
                abi::VMI_TX_LIGHT_BARRIER
            } else {
                0
            },
        }));
        // Sorted, one per connection: the host finds a connection's ring by binary search.
        lists.tx.sort_unstable_by_key(|t| t.conn);
        lists.tx.dedup_by_key(|t| t.conn);
        let (rings, count) = (lists.rings.as_ptr(), lists.rings.len());
        let (tx, tx_count) = (lists.tx.as_ptr(), lists.tx.len());
        let set = self.set_mut();
        set.rings = rings;
        set.count = count;
        set.tx = tx;
        set.tx_count = tx_count;
        self.unbusy(skips);
    }
}

/// The lent send ring of `conn` in `set`, if the set is not busy and lends one.
///
/// # Safety
/// `set` is a set lent under the [`abi::VmiRingSet`] contract, which holds for the call.
#[inline]
pub unsafe fn tx_ring(set: &VmiRingSet, conn: u64) -> Option<&VmiTxRing> {
    if set.busy != 0 || set.tx_count == 0 {
        return None;
    }
    // SAFETY: the contract: `tx_count` rings at `tx`, unchanged while the set is not busy.
    let tx = unsafe { std::slice::from_raw_parts(set.tx, set.tx_count) };
    match tx {
        [t] => (t.conn == conn).then_some(t),
        _ => tx
            .binary_search_by_key(&conn, |t| t.conn)
            .ok()
            .map(|i| &tx[i]),
    }
}

/// Writes a small whole message (`flags` as an IRB carries them) into a lent send ring as
/// one record, publishes it and rings the peer's doorbell if it sleeps. False, with nothing
/// written, when it is larger than the ring's `max_len`, when the ring has too little room,
/// or when the consumer's position is one no correct peer writes: the caller then sends it
/// through the transport, which queues it or reports the bad position.
///
/// # Safety
/// `tx` is a send ring of a set lent under the [`abi::VmiRingSet`] contract, which holds for
/// the call.
#[inline]
pub unsafe fn write_message(tx: &VmiTxRing, flags: u32, data: &[u8]) -> bool {
    // SAFETY: the caller's promise.
    match unsafe { write_record(tx, flags, data) } {
        Written::Large | Written::No => false,
        Written::Yes => true,
        Written::Wake => {
            // SAFETY: the caller's promise.
            unsafe { ring_bell(tx) };
            true
        }
    }
}

/// What [`write_record`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Nothing: the message is larger than the ring's `max_len` (the transport may still
    /// take it inline itself).
    Large,
    /// Nothing: the ring has too little room, or the consumer's position is one no correct
    /// peer writes (the transport, which reads the same ring, would find the same).
    No,
    /// The record is published and the consumer is awake.
    Yes,
    /// The record is published and the consumer sleeps: ring its bell ([`ring_bell`], which
    /// does nothing for a ring with no bell).
    Wake,
}

/// [`write_message`] without the doorbell's system call: writes and publishes the record and
/// says whether the consumer must be woken. It calls nothing, so a caller that inlines it
/// keeps a send that needs no wake-up free of any call (and of the frame a call needs).
///
/// # Safety
/// As [`write_message`].
#[inline(always)]
pub unsafe fn write_record(tx: &VmiTxRing, flags: u32, data: &[u8]) -> Written {
    let len = data.len();
    let total = (VMI_RING_RECORD_LEN + len) as u64;
    let cap = tx.cap;
    if len as u64 > tx.max_len {
        return Written::Large;
    }
    // `total > cap` first: past it `cap` is at least a header, so not 0, and one test says
    // whether it is a power of two.
    if total > cap || cap & (cap - 1) != 0 {
        return Written::No;
    }
    // SAFETY: the contract: the cursor is the device's, not in use during this call.
    let cursor = unsafe { &mut *tx.cursor };
    let head = cursor.own;
    if cap - (head - cursor.seen) < total {
        // SAFETY: the contract: an aligned, mapped position word.
        let now = unsafe { AtomicU64::from_ptr(tx.tail as *mut u64) }.load(Ordering::Acquire);
        if now < cursor.seen || now > head {
            return Written::No;
        }
        cursor.seen = now;
        if cap - (head - now) < total {
            return Written::No;
        }
    }
    let h0 = data_header(
        flags & VMI_FLAG_END != 0,
        abi::wire_flags(flags),
        len as u32,
    );
    let off = (head & (cap - 1)) as usize;
    // SAFETY: `total` bytes from `head` are free space the consumer does not read until
    // `head` is published below; offsets are masked into the ring.
    unsafe {
        if off as u64 + total <= cap {
            // The whole record before the end of the ring (the common case).
            let at = tx.data.add(off);
            std::ptr::write_unaligned(at as *mut u64, h0.to_le());
            std::ptr::write_unaligned(at.add(8) as *mut u64, 0);
            crate::copy::copy_small(data.as_ptr(), at.add(VMI_RING_RECORD_LEN), len);
        } else {
            write_wrapped(tx, head, h0, data);
        }
    }
    let head = head + total;
    cursor.own = head;
    // SAFETY: the contract: aligned, mapped words.
    unsafe {
        AtomicU64::from_ptr(tx.head).store(head, Ordering::Release);
        if tx.flags & abi::VMI_TX_LIGHT_BARRIER != 0 {
            // The consumer's barrier before it sleeps orders this pair (see the flag).
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            std::sync::atomic::fence(Ordering::SeqCst);
        }
        if AtomicU64::from_ptr(tx.sleeping as *mut u64).load(Ordering::Relaxed) != 0 {
            return Written::Wake;
        }
    }
    Written::Yes
}

/// A record that runs past the ring's end, written in two pieces (out of line: rare).
///
/// # Safety
/// As [`write_record`], which checked the room.
#[cold]
#[inline(never)]
unsafe fn write_wrapped(tx: &VmiTxRing, head: u64, h0: u64, data: &[u8]) {
    let mut header = [0u8; VMI_RING_RECORD_LEN];
    header[..8].copy_from_slice(&h0.to_le_bytes());
    // SAFETY: the caller's promise.
    unsafe {
        copy_in(tx.data, tx.cap, head, &header);
        copy_in(tx.data, tx.cap, head + VMI_RING_RECORD_LEN as u64, data);
    }
}

/// Wakes the consumer of `tx`, which [`write_record`] found asleep: writes its bell, if the
/// ring has one.
///
/// # Safety
/// As [`write_message`]: the bell is an open eventfd or -1.
#[cold]
#[inline(never)]
pub unsafe fn ring_bell(tx: &VmiTxRing) {
    if tx.bell < 0 {
        return;
    }
    let one = 1u64.to_ne_bytes();
    // A full eventfd counter (never in practice) leaves the peer awake anyway.
    // SAFETY: the contract: the bell is an open eventfd; the 8 bytes are ours.
    let _ = unsafe { libc::write(tx.bell, one.as_ptr().cast(), one.len()) };
}

/// The first 8 bytes of a data record's header, as a little-endian word: kind
/// ([`VMI_RING_DATA_END`] when `end`, else [`VMI_RING_DATA`]), a zero byte, the filter flags
/// as carried on the wire, the payload length. The id that follows is 0 for data records.
#[inline(always)]
pub fn data_header(end: bool, wire_flags: u16, len: u32) -> u64 {
    let kind = if end {
        VMI_RING_DATA_END
    } else {
        VMI_RING_DATA
    };
    u64::from(kind) | (u64::from(wire_flags) << 16) | (u64::from(len) << 32)
}

/// Copies `src` to ring position `pos`, wrapping at the end of the ring.
///
/// # Safety
/// `data..data+cap` writable, `cap` a power of two, `src.len() <= cap`.
#[inline(always)]
unsafe fn copy_in(data: *mut u8, cap: u64, pos: u64, src: &[u8]) {
    let (off, cap) = ((pos & (cap - 1)) as usize, cap as usize);
    let first = src.len().min(cap - off);
    // SAFETY: the caller's ranges; `off + first <= cap` and `len - first <= off`.
    unsafe {
        crate::copy::copy_small(src.as_ptr(), data.add(off), first);
        if first < src.len() {
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
        }
    }
}

/// True when a lent ring holds nothing new: its producer's position is where the consumer
/// is (compared for equality only; [`read_ring`] checks any other value).
///
/// # Safety
/// As for [`read_ring`].
#[inline(always)]
pub unsafe fn is_empty(ring: &VmiRing) -> bool {
    // SAFETY: the contract: an aligned, mapped position word, and a cursor not in use.
    unsafe {
        AtomicU64::from_ptr(ring.head as *mut u64).load(Ordering::Relaxed) == (*ring.cursor).own
    }
}

/// [`is_empty`], and when the ring is empty, a hint to the CPU to fetch the cache line its
/// next record will be written to.
///
/// A busy poll that finds the ring empty looks again at once; when the producer writes a
/// record and then publishes its position, the poll that sees the position then finds the
/// record already on its way, instead of missing the cache twice in a row (the position's
/// line, then the record's). On the 2-core development VM this took a shared-memory 8-byte
/// half round trip from a median 0.160-0.175 to 0.145-0.150 us (eight alternated rounds),
/// with no change to the streaming rate. The hint reads no value and cannot fault (the
/// address is inside the ring for any capacity: the offset is masked by `cap - 1`); on
/// other architectures than x86-64 it is nothing.
///
/// # Safety
/// As for [`read_ring`].
#[inline(always)]
pub unsafe fn is_empty_prefetch(ring: &VmiRing) -> bool {
    // SAFETY: forwarded.
    let empty = unsafe { is_empty(ring) };
    if empty {
        // SAFETY: the contract: the cursor is the device's, not in use during this call.
        let own = unsafe { (*ring.cursor).own };
        crate::copy::prefetch(
            ring.data
                .wrapping_add((own & ring.cap.wrapping_sub(1)) as usize),
        );
    }
    empty
}

/// Why [`read_ring`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The ring holds nothing more.
    Empty,
    /// `max_records` were read.
    Budget,
    /// What comes next is the transport's to read: another kind of record, a larger one,
    /// one written only in part, a record of the peer's host, or a position no correct peer
    /// writes (the transport's poll reads it and reports what is wrong).
    Device,
}

/// A record the host read from a lent ring: its connection, receive flags
/// (`abi::recv_flags`) and where its payload lies in the host's byte buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The ring's connection.
    pub conn: u64,
    /// Receive flags.
    pub flags: u32,
    /// Offset of the payload in the byte buffer.
    pub start: usize,
    /// Payload length.
    pub len: usize,
}

/// Where [`read_ring`] puts what it reads: payloads appended to `bytes`, one [`Received`]
/// per record in `records`, and `msgs` counting those flagged `VMI_FLAG_MSG`.
#[derive(Debug, Default)]
pub struct Batch {
    /// Payload bytes.
    pub bytes: Vec<u8>,
    /// The records, in ring order.
    pub records: Vec<Received>,
    /// How many records carry `VMI_FLAG_MSG`.
    pub msgs: usize,
}

/// Reads whole data records of at most `max_len` payload bytes (and at most `max_records`
/// of them) from a lent ring into `out`. Publishes the consumer's position once, after the
/// batch. Returns the records read and why it stopped.
///
/// Every position and header is read once from the ring and checked before use: a producer
/// position behind the last one seen or more than the capacity ahead of the consumer, a
/// capacity that is not a power of two, or a header promising more than `max_len` bytes
/// stops the read with [`Stop::Device`], touching no byte outside the ring.
///
/// # Safety
/// `ring` is listed in a set lent under the [`abi::VmiRingSet`] contract, which holds for
/// the duration of the call.
#[inline(always)]
pub unsafe fn read_ring(
    ring: &VmiRing,
    max_records: usize,
    max_len: usize,
    out: &mut Batch,
) -> (usize, Stop) {
    // SAFETY: the contract: an aligned, mapped position word, and the cursor is the
    // device's, not in use during this call. An empty ring costs these two loads.
    let (head, tail) = unsafe {
        (
            AtomicU64::from_ptr(ring.head as *mut u64).load(Ordering::Acquire),
            (*ring.cursor).own,
        )
    };
    if head == tail {
        return (0, Stop::Empty);
    }
    // SAFETY: forwarded.
    unsafe { read_records(ring, head, max_records, max_len, out) }
}

/// [`read_ring`] once the ring holds something: `head` was read from it (unchecked yet).
///
/// # Safety
/// As for [`read_ring`].
#[inline]
unsafe fn read_records(
    ring: &VmiRing,
    head: u64,
    max_records: usize,
    max_len: usize,
    out: &mut Batch,
) -> (usize, Stop) {
    let cap = ring.cap;
    // SAFETY: the contract: the cursor is the device's, not in use during this call.
    let cursor = unsafe { &mut *ring.cursor };
    let tail0 = cursor.own;
    if !cap.is_power_of_two() || head < cursor.seen || head < tail0 || head - tail0 > cap {
        return (0, Stop::Device);
    }
    cursor.seen = head;
    let limit = ring.max_len.min(max_len as u64);
    // The records wholly before the end of the ring, read through a pointer (no wrap to
    // handle); the loop after it reads the rest and says why the read stopped.
    let off = tail0 & (cap - 1);
    let room = (head - tail0).min(cap - off) as usize;
    let mut at = 0usize;
    let mut n = 0;
    while n < max_records && room - at >= VMI_RING_RECORD_LEN {
        // SAFETY: `room` bytes from `off` lie inside the ring and were published.
        let h = unsafe {
            u64::from_le(std::ptr::read_unaligned(
                ring.data.add(off as usize + at) as *const u64
            ))
        };
        let Some((flags, len)) = takeable(h, limit, (room - at - VMI_RING_RECORD_LEN) as u64)
        else {
            break;
        };
        // SAFETY: the payload lies inside `room` (checked by `takeable`).
        let src = unsafe { ring.data.add(off as usize + at + VMI_RING_RECORD_LEN) };
        // SAFETY: `append` gives `len` writable bytes; `src` has `len` readable ones.
        unsafe {
            append(out, ring.conn, flags, len, |dst| {
                crate::copy::copy_small(src, dst, len)
            })
        };
        at += VMI_RING_RECORD_LEN + len;
        n += 1;
    }
    let mut tail = tail0 + at as u64;
    let stop = loop {
        let avail = head - tail;
        if avail == 0 {
            break Stop::Empty;
        }
        if n == max_records {
            break Stop::Budget;
        }
        if avail < VMI_RING_RECORD_LEN as u64 {
            break Stop::Device;
        }
        // SAFETY: `avail` bytes from `tail` were published (Acquire above) and stay until
        // `tail` moves; offsets are masked into the ring.
        let h = unsafe { header(ring.data, cap, tail) };
        let Some((flags, len)) = takeable(h, limit, avail - VMI_RING_RECORD_LEN as u64) else {
            break Stop::Device;
        };
        let at = tail + VMI_RING_RECORD_LEN as u64;
        // SAFETY: `append` gives `len` writable bytes; the payload lies in the published
        // bytes (checked by `takeable`), wrapping at the end of the ring.
        unsafe {
            append(out, ring.conn, flags, len, |dst| {
                copy_out(ring.data, cap, at, dst, len)
            })
        };
        tail += (VMI_RING_RECORD_LEN + len) as u64;
        n += 1;
    };
    if n > 0 {
        cursor.own = tail;
        // SAFETY: the contract: an aligned, mapped position word this side owns.
        unsafe { AtomicU64::from_ptr(ring.tail) }.store(tail, Ordering::Release);
    }
    (n, stop)
}

/// The one record of a lent ring that holds exactly one: a whole data record the host may
/// take (as [`read_ring`] would take it), of at most `max_len` payload bytes, lying before
/// the end of the ring. Its payload replaces what `out` held, the consumer's position is
/// published, and its receive flags are returned. Anything else (an empty ring, more than
/// one record, a record [`read_ring`] would leave to the transport, a record that wraps,
/// a position no correct peer writes) returns `None` and leaves the ring as it was.
///
/// The host uses it to deliver a lone record at once, with no batch; every position and
/// header is checked as in [`read_ring`].
///
/// # Safety
/// As for [`read_ring`].
#[inline]
pub unsafe fn take_only(ring: &VmiRing, max_len: usize, out: &mut Vec<u8>) -> Option<u32> {
    let cap = ring.cap;
    // SAFETY: the contract: an aligned, mapped position word, and the cursor is the
    // device's, not in use during this call.
    let (head, cursor) = unsafe {
        (
            AtomicU64::from_ptr(ring.head as *mut u64).load(Ordering::Acquire),
            &mut *ring.cursor,
        )
    };
    let tail = cursor.own;
    // Behind the consumer, or more than a ring ahead: wraps to a huge value, refused below.
    let avail = head.wrapping_sub(tail);
    let off = tail & cap.wrapping_sub(1);
    if !cap.is_power_of_two()
        || head < cursor.seen
        || avail < VMI_RING_RECORD_LEN as u64
        || avail > cap - off
    {
        return None;
    }
    // SAFETY: `avail` bytes from `off` lie inside the ring (checked above) and were
    // published (Acquire above); at least a header's worth.
    let h = unsafe {
        u64::from_le(std::ptr::read_unaligned(
            ring.data.add(off as usize) as *const u64
        ))
    };
    let len = avail - VMI_RING_RECORD_LEN as u64;
    // The header's length must be exactly what is left: one whole record, no more.
    if h >> 32 != len {
        return None;
    }
    let (flags, len) = takeable(h, ring.max_len.min(max_len as u64), len)?;
    out.clear();
    out.reserve(len);
    // SAFETY: the payload lies inside the published bytes (checked above); `reserve` made
    // room for `len` bytes, which the copy writes before `set_len` covers them.
    unsafe {
        let src = ring.data.add(off as usize + VMI_RING_RECORD_LEN);
        crate::copy::copy_small(src, out.as_mut_ptr(), len);
        out.set_len(len);
    }
    cursor.own = head;
    cursor.seen = head;
    // SAFETY: the contract: an aligned, mapped position word this side owns.
    unsafe { AtomicU64::from_ptr(ring.tail) }.store(head, Ordering::Release);
    Some(flags)
}

/// The receive flags and payload length of the record (or lent stream frame) whose header
/// begins with `h` (its first 8 bytes, little-endian), when it is a whole data record the
/// host may take: of kind DATA or DATA_END, at most `limit` bytes, its payload wholly within
/// the `avail` bytes there are after the header, and not one of the peer's host's own.
#[inline(always)]
pub(crate) fn takeable(h: u64, limit: u64, avail: u64) -> Option<(u32, usize)> {
    let (kind, len) = (h as u8, h >> 32);
    let flags = abi::recv_flags(kind == VMI_RING_DATA_END, (h >> 16) as u16);
    let data = kind == VMI_RING_DATA || kind == VMI_RING_DATA_END;
    let whole = avail >= len;
    (data && len <= limit && whole && flags & VMI_FLAG_HOST == 0).then_some((flags, len as usize))
}

/// Appends a record of `len` payload bytes to `out`: `copy` writes them at the pointer it
/// is given, then the record is counted.
///
/// # Safety
/// `copy` writes exactly `len` bytes at the pointer (which has room for them) and nothing
/// else.
#[inline(always)]
pub(crate) unsafe fn append(
    out: &mut Batch,
    conn: u64,
    flags: u32,
    len: usize,
    copy: impl FnOnce(*mut u8),
) {
    let start = out.bytes.len();
    out.bytes.reserve(len);
    // SAFETY: `reserve` made room for `len` bytes after `start`, which `copy` writes (the
    // caller's promise) before `set_len` covers them.
    unsafe {
        copy(out.bytes.as_mut_ptr().add(start));
        out.bytes.set_len(start + len);
    }
    out.msgs += (flags & abi::VMI_FLAG_MSG != 0) as usize;
    out.records.push(Received {
        conn,
        flags,
        start,
        len,
    });
}

/// The first 8 bytes of the record header at position `pos` (kind, zero, filter flags and
/// length, little-endian), wrapping at the end of the ring; the id is not needed here.
///
/// # Safety
/// `data..data+cap` readable, `cap` a power of two, 8 bytes published from `pos`.
#[inline(always)]
unsafe fn header(data: *const u8, cap: u64, pos: u64) -> u64 {
    let off = (pos & (cap - 1)) as usize;
    let mut h = [0u8; 8];
    // SAFETY: the caller's ranges.
    unsafe {
        if off + 8 <= cap as usize {
            return u64::from_le(std::ptr::read_unaligned(data.add(off) as *const u64));
        }
        copy_out(data, cap, pos, h.as_mut_ptr(), 8);
    }
    u64::from_le_bytes(h)
}

/// Copies `len` bytes at ring position `pos` to `dst`, wrapping at the end of the ring.
///
/// # Safety
/// `data..data+cap` readable, `cap` a power of two, `dst..dst+len` writable, `len <= cap`.
#[inline(always)]
unsafe fn copy_out(data: *const u8, cap: u64, pos: u64, dst: *mut u8, len: usize) {
    let (off, cap) = ((pos & (cap - 1)) as usize, cap as usize);
    let first = len.min(cap - off);
    // SAFETY: the caller's ranges; `off + first <= cap` and `len - first <= off`.
    unsafe {
        crate::copy::copy_small(data.add(off), dst, first);
        if first < len {
            std::ptr::copy_nonoverlapping(data, dst.add(first), len - first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `takeable` decodes every kind byte and every filter-flag word as `recv_flags` and the
    /// kind constants say, and refuses every kind but the two data kinds.
    #[test]
    fn takeable_decodes_every_kind_as_recv_flags() {
        for kind in 0..=255u8 {
            for wire in [0u16, 1, 0x7fff, 0x8000, 0xffff, 0x1234] {
                let h = u64::from(kind) | (u64::from(wire) << 16) | (8u64 << 32);
                let got = takeable(h, 16, 8);
                let data = kind == VMI_RING_DATA || kind == VMI_RING_DATA_END;
                let flags = abi::recv_flags(kind == VMI_RING_DATA_END, wire);
                let want = (data && flags & VMI_FLAG_HOST == 0).then_some((flags, 8));
                assert_eq!(got, want, "kind {kind}, wire flags {wire:#x}");
            }
        }
    }

    /// A ring in ordinary memory, written the way a producer writes it.
    struct TestRing {
        head: Box<AtomicU64>,
        tail: Box<AtomicU64>,
        data: Vec<u8>,
        cursor: RingCursor,
    }

    impl TestRing {
        fn new(cap: usize) -> TestRing {
            TestRing {
                head: Box::new(AtomicU64::new(0)),
                tail: Box::new(AtomicU64::new(0)),
                data: vec![0; cap],
                cursor: RingCursor::default(),
            }
        }
        fn put(&mut self, bytes: &[u8]) {
            let cap = self.data.len();
            let mut h = self.head.load(Ordering::Relaxed);
            for &b in bytes {
                self.data[(h as usize) & (cap - 1)] = b;
                h += 1;
            }
            self.head.store(h, Ordering::Release);
        }
        fn record(&mut self, kind: u8, flags: u16, payload: &[u8]) {
            let mut h = [0u8; 16];
            h[0] = kind;
            h[2..4].copy_from_slice(&flags.to_le_bytes());
            h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
            self.put(&h);
            self.put(payload);
        }
        fn desc(&self, max_len: u64) -> VmiRing {
            VmiRing {
                conn: 9,
                head: self.head.as_ptr(),
                tail: self.tail.as_ptr(),
                data: self.data.as_ptr(),
                cap: self.data.len() as u64,
                max_len,
                cursor: self.cursor.as_ptr(),
            }
        }
        /// `take_only` with a host limit of 64 bytes (the ring's own is 1024).
        fn take_only(&self) -> Option<(u32, Vec<u8>)> {
            let mut out = vec![0xee; 3];
            // SAFETY: the test ring lives through the call.
            let flags = unsafe { take_only(&self.desc(1024), 64, &mut out) }?;
            Some((flags, out))
        }
        fn read(&self, max: usize) -> (Vec<(u32, Vec<u8>)>, Stop) {
            let mut out = Batch::default();
            // SAFETY: the test ring lives through the call.
            let (n, stop) = unsafe { read_ring(&self.desc(1024), max, 64, &mut out) };
            assert_eq!(n, out.records.len());
            assert!(out.records.iter().all(|r| r.conn == 9));
            let msgs = out
                .records
                .iter()
                .filter(|r| r.flags & abi::VMI_FLAG_MSG != 0);
            assert_eq!(out.msgs, msgs.count());
            let got = out
                .records
                .iter()
                .map(|r| (r.flags, out.bytes[r.start..r.start + r.len].to_vec()))
                .collect();
            (got, stop)
        }
    }

    /// A send ring in ordinary memory, its consumer played by `TestRing::read`.
    struct TestTx {
        ring: TestRing,
        sleeping: Box<AtomicU64>,
        cursor: RingCursor,
    }

    impl TestTx {
        fn new(cap: usize) -> TestTx {
            TestTx {
                ring: TestRing::new(cap),
                sleeping: Box::new(AtomicU64::new(0)),
                cursor: RingCursor::default(),
            }
        }
        fn desc(&mut self, max_len: u64, bell: i32) -> VmiTxRing {
            VmiTxRing {
                conn: 9,
                head: self.ring.head.as_ptr(),
                tail: self.ring.tail.as_ptr(),
                sleeping: self.sleeping.as_ptr(),
                data: self.ring.data.as_mut_ptr(),
                cap: self.ring.data.len() as u64,
                max_len,
                cursor: self.cursor.as_ptr(),
                bell,
                flags: 0,
            }
        }
        fn write(&mut self, flags: u32, data: &[u8]) -> bool {
            let d = self.desc(64, -1);
            // SAFETY: the test ring lives through the call.
            unsafe { write_message(&d, flags, data) }
        }
    }

    #[test]
    fn written_messages_read_back_whole_at_every_offset() {
        // A 64-byte ring: records cut by its end at every offset, header or payload.
        for skew in 0..64u64 {
            let mut t = TestTx::new(64);
            t.ring.head.store(skew, Ordering::Relaxed);
            t.ring.tail.store(skew, Ordering::Relaxed);
            t.ring.cursor.set((skew, skew));
            t.cursor.set((skew, skew));
            let flags = VMI_FLAG_END | (0x0003 << 16);
            assert!(t.write(flags, &[5; 20]), "skew {skew}");
            assert_eq!(t.cursor.get().0, skew + 36);
            let (got, stop) = t.ring.read(10);
            assert_eq!(stop, Stop::Empty, "skew {skew}");
            assert_eq!(got, vec![(flags, vec![5; 20])], "skew {skew}");
            assert!(t.write(0, b""), "skew {skew}: a fragment, not the end");
            assert_eq!(t.ring.read(10).0, vec![(0, vec![])], "skew {skew}");
        }
    }

    /// `write_record` tells a message the ring never takes (over `max_len`: the transport
    /// may) from one it cannot take now (no room), and says when the consumer sleeps.
    #[test]
    fn write_record_tells_too_large_from_no_room_and_asks_for_a_wake_up() {
        let mut t = TestTx::new(64);
        let d = t.desc(32, -1);
        // SAFETY: the test ring lives through the calls.
        unsafe {
            assert_eq!(write_record(&d, VMI_FLAG_END, &[0; 33]), Written::Large);
            assert_eq!(write_record(&d, VMI_FLAG_END, &[1; 32]), Written::Yes);
            assert_eq!(write_record(&d, VMI_FLAG_END, &[2; 8]), Written::No);
        }
        assert_eq!(t.cursor.get(), (48, 0));
        t.ring.read(10);
        t.sleeping.store(1, Ordering::Relaxed);
        // SAFETY: as above.
        assert_eq!(unsafe { write_record(&d, 0, &[3; 8]) }, Written::Wake);
    }

    #[test]
    fn a_write_that_does_not_fit_or_meets_a_bad_position_writes_nothing() {
        let mut t = TestTx::new(64);
        assert!(!t.write(VMI_FLAG_END, &[0; 65]), "over max_len");
        assert!(t.write(VMI_FLAG_END, &[1; 40]));
        assert!(!t.write(VMI_FLAG_END, &[2; 8]), "8 + 16 bytes into 8 free");
        assert_eq!(t.cursor.get(), (56, 0));
        // The consumer read it: room again (the position is read when short).
        t.ring.read(10);
        assert!(t.write(VMI_FLAG_END, &[3; 8]));
        assert_eq!(t.cursor.get(), (80, 56));
        // A consumer position past what was written, or behind the one seen: refused.
        // (28 bytes free as last seen, 32 needed: the position is read.)
        for bad in [81, 10] {
            let mut t = TestTx::new(64);
            t.write(VMI_FLAG_END, &[1; 40]);
            t.cursor.set((56, 20));
            t.ring.tail.store(bad, Ordering::Relaxed);
            assert!(!t.write(VMI_FLAG_END, &[2; 16]), "tail {bad}");
            assert_eq!(t.cursor.get(), (56, 20), "tail {bad}: nothing changed");
            assert_eq!(t.ring.head.load(Ordering::Relaxed), 56, "tail {bad}");
            t.ring.tail.store(56, Ordering::Relaxed);
            assert!(t.write(VMI_FLAG_END, &[2; 16]), "a good position again");
        }
    }

    #[test]
    fn a_sleeping_peer_is_woken_through_its_bell() {
        // SAFETY: a plain eventfd, closed at the end of the test.
        let bell = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(bell >= 0);
        let count = || {
            let mut v = [0u8; 8];
            // SAFETY: 8 writable bytes; a nonblocking eventfd.
            let n = unsafe { libc::read(bell, v.as_mut_ptr().cast(), 8) };
            if n == 8 { u64::from_ne_bytes(v) } else { 0 }
        };
        let mut t = TestTx::new(256);
        let d = t.desc(64, bell);
        // SAFETY: the test ring lives through the calls.
        assert!(unsafe { write_message(&d, VMI_FLAG_END, b"awake") });
        assert_eq!(count(), 0, "an awake peer is not rung");
        t.sleeping.store(1, Ordering::Relaxed);
        // SAFETY: as above.
        assert!(unsafe { write_message(&d, VMI_FLAG_END, b"asleep") });
        assert_eq!(count(), 1, "a sleeping peer is rung once");
        // SAFETY: opened above.
        unsafe { libc::close(bell) };
    }

    #[test]
    fn reads_whole_data_records_and_publishes_the_position_once() {
        let mut r = TestRing::new(64);
        r.record(VMI_RING_DATA, 0x4002, b"abc");
        r.record(VMI_RING_DATA_END, 0, b"hello");
        let (got, stop) = r.read(10);
        assert_eq!(stop, Stop::Empty);
        assert_eq!(
            got,
            vec![
                (abi::recv_flags(false, 0x4002), b"abc".to_vec()),
                (abi::recv_flags(true, 0), b"hello".to_vec())
            ]
        );
        assert_eq!(r.tail.load(Ordering::Relaxed), 16 + 3 + 16 + 5);
        assert_eq!(r.cursor.get(), (40, 40));
        assert_eq!(r.read(10), (vec![], Stop::Empty));
    }

    #[test]
    fn records_that_wrap_around_the_end_read_whole() {
        // Header and payload cut by the end of a 64-byte ring at every offset.
        for skew in 0..64u64 {
            let mut r = TestRing::new(64);
            r.head.store(skew, Ordering::Relaxed);
            r.tail.store(skew, Ordering::Relaxed);
            r.cursor.set((skew, skew));
            r.record(VMI_RING_DATA_END, 0, &[7; 20]);
            let (got, stop) = r.read(10);
            assert_eq!(stop, Stop::Empty, "skew {skew}");
            assert_eq!(
                got,
                vec![(abi::recv_flags(true, 0), vec![7; 20])],
                "skew {skew}"
            );
        }
    }

    #[test]
    fn stops_at_what_the_transport_must_read() {
        // Another kind, a payload over max_len, a record written in part, a host record.
        let mut r = TestRing::new(256);
        r.record(3, 0, &[0; 16]);
        assert_eq!(r.read(10), (vec![], Stop::Device));
        assert_eq!(r.tail.load(Ordering::Relaxed), 0, "nothing consumed");
        let mut r = TestRing::new(256);
        r.record(VMI_RING_DATA, 0, b"ok");
        r.record(VMI_RING_DATA, 0, &[1; 65]);
        let (got, stop) = r.read(10);
        assert_eq!((got.len(), stop), (1, Stop::Device));
        assert_eq!(
            r.cursor.get().0,
            18,
            "the first record consumed, the large one left"
        );
        let mut r = TestRing::new(256);
        r.put(&[
            VMI_RING_DATA,
            0,
            0,
            0,
            8,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            1,
            2,
        ]);
        assert_eq!(r.read(10), (vec![], Stop::Device));
        let mut r = TestRing::new(256);
        r.put(&[VMI_RING_DATA, 0, 0]);
        assert_eq!(r.read(10), (vec![], Stop::Device));
        let mut r = TestRing::new(256);
        r.record(VMI_RING_DATA_END, 0x8000, b"host");
        assert_eq!(r.read(10), (vec![], Stop::Device));
    }

    #[test]
    fn stops_at_the_budget() {
        let mut r = TestRing::new(256);
        for i in 0..5u8 {
            r.record(VMI_RING_DATA_END, 0, &[i; 8]);
        }
        let (got, stop) = r.read(3);
        assert_eq!((got.len(), stop), (3, Stop::Budget));
        let (got, stop) = r.read(3);
        assert_eq!((got.len(), stop), (2, Stop::Empty));
        assert_eq!(got[1].1, vec![4; 8]);
    }

    #[test]
    fn positions_no_correct_peer_writes_stop_the_read() {
        // Head more than a ring ahead; head behind the consumer; head behind what was seen.
        let r = TestRing::new(64);
        r.head.store(65, Ordering::Relaxed);
        assert_eq!(r.read(10), (vec![], Stop::Device));
        let r = TestRing::new(64);
        r.cursor.set((100, 100));
        r.head.store(90, Ordering::Relaxed);
        assert_eq!(r.read(10), (vec![], Stop::Device));
        let r = TestRing::new(64);
        r.cursor.set((10, 40));
        r.head.store(30, Ordering::Relaxed);
        assert_eq!(r.read(10), (vec![], Stop::Device));
        assert_eq!(r.cursor.get(), (10, 40), "nothing changed");
        // A header claiming 4 GiB: over max_len, never a read past the ring.
        let mut r = TestRing::new(64);
        r.put(&[
            VMI_RING_DATA_END,
            0,
            0,
            0,
            0xff,
            0xff,
            0xff,
            0xff,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ]);
        assert_eq!(r.read(10), (vec![], Stop::Device));
        // A capacity that is not a power of two.
        let mut r = TestRing::new(64);
        r.record(VMI_RING_DATA_END, 0, b"x");
        let mut d = r.desc(64);
        d.cap = 48;
        let mut out = Batch::default();
        // SAFETY: the test ring lives through the call.
        let got = unsafe { read_ring(&d, 10, 64, &mut out) };
        assert_eq!(got, (0, Stop::Device));
    }

    #[test]
    fn random_streams_read_as_written() {
        // Seeded: records of random kinds and sizes through a small ring, read in random
        // budgets; every data record the host takes is the one written, in order, and it
        // stops exactly at the first record it must leave.
        let (seed, mut rnd) = crate::test_rng::seeded(0x5eed_u64);
        for _ in 0..200 {
            let mut r = TestRing::new(256);
            let mut written = Vec::new();
            let mut room = 256usize;
            loop {
                let len = rnd(80) as usize;
                if 16 + len > room {
                    break;
                }
                room -= 16 + len;
                let kind = if rnd(10) == 0 { 5 } else { VMI_RING_DATA_END };
                let byte = rnd(256) as u8;
                r.record(kind, 0, &vec![byte; len]);
                written.push((kind, vec![byte; len]));
            }
            let expect: Vec<_> = written
                .iter()
                .take_while(|(k, p)| *k == VMI_RING_DATA_END && p.len() <= 64)
                .map(|(_, p)| (abi::recv_flags(true, 0), p.clone()))
                .collect();
            let mut got = Vec::new();
            let last = loop {
                let (g, stop) = r.read(1 + rnd(4) as usize);
                got.extend(g);
                if stop != Stop::Budget {
                    break stop;
                }
            };
            assert_eq!(got, expect, "seed {seed}");
            let want = if expect.len() == written.len() {
                Stop::Empty
            } else {
                Stop::Device
            };
            assert_eq!(last, want, "seed {seed}");
        }
    }

    #[test]
    fn a_record_alone_is_taken_whole_and_the_position_published() {
        let mut r = TestRing::new(128);
        r.record(VMI_RING_DATA, 0x4002, b"abcdefghij");
        assert_eq!(
            r.take_only(),
            Some((abi::recv_flags(false, 0x4002), b"abcdefghij".to_vec())),
            "the payload replaces what the buffer held"
        );
        assert_eq!(r.tail.load(Ordering::Relaxed), 26);
        assert_eq!(r.cursor.get(), (26, 26));
        assert_eq!(r.take_only(), None, "empty now");
        // Every size up to the host's limit, at a new position each time.
        for len in 0..=64 {
            r.record(VMI_RING_DATA_END, 0, &vec![len as u8; len]);
            let before = r.cursor.get().0;
            // A record that would wrap is left to the batch read.
            let wraps = (before % 128) + 16 + len as u64 > 128;
            if wraps {
                assert_eq!(r.take_only(), None, "len {len} wraps");
                assert_eq!(r.cursor.get().0, before, "nothing consumed");
                assert_eq!(r.read(10).0.len(), 1, "len {len}: the batch read takes it");
            } else {
                let want = (abi::recv_flags(true, 0), vec![len as u8; len]);
                assert_eq!(r.take_only(), Some(want), "len {len}");
            }
        }
    }

    #[test]
    fn anything_but_a_record_alone_is_left_as_it_was() {
        // Two records; another kind; over the host's limit; a host record; a record written
        // in part (header only, then header and part of the payload).
        let mut r = TestRing::new(256);
        r.record(VMI_RING_DATA, 0, b"one");
        r.record(VMI_RING_DATA_END, 0, b"two");
        assert_eq!(r.take_only(), None);
        assert_eq!(r.read(10).0.len(), 2, "both still there");
        for (kind, flags, len) in [
            (3, 0, 4),
            (VMI_RING_DATA, 0, 65),
            (VMI_RING_DATA, 0x8000, 4),
        ] {
            let mut r = TestRing::new(256);
            r.record(kind, flags, &vec![1; len]);
            assert_eq!(
                r.take_only(),
                None,
                "kind {kind} flags {flags:#x} len {len}"
            );
            assert_eq!(r.cursor.get(), (0, 0));
            assert_eq!(r.tail.load(Ordering::Relaxed), 0);
        }
        let mut r = TestRing::new(256);
        r.put(&[VMI_RING_DATA, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(r.take_only(), None, "header alone");
        r.put(&[1, 2, 3]);
        assert_eq!(r.take_only(), None, "payload in part");
        r.put(&[4, 5, 6, 7, 8]);
        assert_eq!(
            r.take_only(),
            Some((abi::recv_flags(false, 0), (1..=8).collect()))
        );
    }

    #[test]
    fn positions_no_correct_peer_writes_take_nothing() {
        // Head more than a ring ahead (its header claiming exactly that much); behind the
        // consumer; behind what was seen; a header claiming 4 GiB; a capacity that is not
        // a power of two.
        let mut r = TestRing::new(64);
        r.record(VMI_RING_DATA_END, 0, &[0; 49]);
        assert_eq!(r.take_only(), None, "65 bytes in a 64-byte ring");
        let r = TestRing::new(64);
        r.cursor.set((100, 100));
        r.head.store(90, Ordering::Relaxed);
        assert_eq!(r.take_only(), None);
        let mut r = TestRing::new(64);
        r.cursor.set((0, 40));
        r.record(VMI_RING_DATA_END, 0, b"x");
        assert_eq!(r.take_only(), None);
        assert_eq!(r.cursor.get(), (0, 40), "nothing changed");
        let mut r = TestRing::new(64);
        r.put(&[VMI_RING_DATA_END, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        r.put(&[0; 8]);
        assert_eq!(r.take_only(), None);
        let mut r = TestRing::new(64);
        r.record(VMI_RING_DATA_END, 0, b"x");
        let mut d = r.desc(64);
        d.cap = 48;
        let mut out = Vec::new();
        // SAFETY: the test ring lives through the call (and is larger than 48 bytes).
        assert_eq!(unsafe { take_only(&d, 64, &mut out) }, None);
    }

    #[test]
    fn random_rings_take_only_what_a_batch_read_of_one_would() {
        // Seeded: a ring at a random position with up to two random records (kinds,
        // sizes, flags) or a torn one; `take_only` takes exactly when a batch read would
        // take one record and find the ring empty after it without wrapping, and takes
        // the same bytes.
        let (seed, mut rnd) = crate::test_rng::seeded(0x7a4e_u64);
        let mut taken = 0;
        for _ in 0..2000 {
            let mut r = TestRing::new(128);
            let at = rnd(512);
            r.head.store(at, Ordering::Relaxed);
            r.tail.store(at, Ordering::Relaxed);
            r.cursor.set((at, at));
            for _ in 0..1 + rnd(2) {
                let kind = [VMI_RING_DATA, VMI_RING_DATA_END, 4][rnd(3) as usize];
                let flags = [0u16, 0x0001, 0x8000][rnd(3) as usize];
                let len = rnd(80) as usize;
                if rnd(8) == 0 {
                    r.put(&[kind, 0, 0, 0, len as u8, 0, 0, 0][..1 + rnd(8) as usize]);
                } else if 16 + len <= 128 - (r.head.load(Ordering::Relaxed) - at) as usize {
                    r.record(kind, flags, &vec![rnd(256) as u8; len]);
                }
            }
            // The oracle: a batch read of a copy takes one record, finds the ring empty
            // after it, and the record does not wrap.
            let copy = TestRing::new(128);
            copy.head
                .store(r.head.load(Ordering::Relaxed), Ordering::Relaxed);
            copy.tail.store(at, Ordering::Relaxed);
            copy.cursor.set((at, at));
            let copy = TestRing {
                data: r.data.clone(),
                ..copy
            };
            let (batch, stop) = copy.read(2);
            let avail = r.head.load(Ordering::Relaxed) - at;
            let lone = batch.len() == 1 && stop == Stop::Empty && at % 128 + avail <= 128;
            let got = r.take_only();
            assert_eq!(got.is_some(), lone, "seed {seed}");
            if let Some(g) = got {
                taken += 1;
                assert_eq!(vec![g], batch, "seed {seed}");
                assert_eq!(r.cursor.get().0, r.head.load(Ordering::Relaxed));
            } else {
                assert_eq!(r.cursor.get(), (at, at), "seed {seed}: nothing consumed");
            }
        }
        // Both outcomes are exercised.
        assert!(
            (200..1800).contains(&taken),
            "seed {seed}: {taken} of 2000 taken"
        );
    }
}
