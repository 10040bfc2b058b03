//! A connection's send queue: what waits to be written to its socket, in order. Bytes (the
//! protocol's own messages, small sends batched by `send_inline`, the rest of a partial
//! write), fragments sent as IRBs (completed once written whole), and a close. No I/O: the
//! device gathers the queue into one `writev` ([`SendQueue::gather`]) and credits what the
//! socket took ([`SendQueue::credit`]).

use std::collections::VecDeque;
use std::io::IoSlice;

use vmi_device::{Irb, Status};

/// Pieces (headers, segments, byte runs) one flush hands to one `writev`.
pub const MAX_IOV: usize = 64;

/// Bytes one connection may hold queued as bytes: `send_inline` appends a send that cannot go
/// out at once (a second one in a poll turn, or one behind queued data) to the connection's
/// queued bytes up to this; past it, sends take the IRB path, whose slots push back on the
/// application.
pub const QUEUED_MAX: usize = 64 * 1024;

/// Bytes all connections together may hold queued as bytes by `send_inline` (so many
/// connections cannot each fill [`QUEUED_MAX`] unseen).
pub const QUEUED_TOTAL_MAX: usize = 4 << 20;

/// Queued bytes at which `send_inline` writes them out at once instead of at the next poll
/// (a program that sends many small messages between polls still writes in large batches).
pub const FLUSH_AT: usize = 16 * 1024;

/// One entry of a send queue.
pub enum Tx {
    /// Bytes to write.
    Bytes {
        /// The bytes.
        data: Vec<u8>,
        /// How many of them are written (always fewer than all: a written entry goes).
        off: usize,
    },
    /// A fragment sent as an IRB, written from its segments (no copy).
    Frame {
        /// The send IRB, completed once the frame is written whole.
        irb: Irb,
        /// The frame's header.
        header: [u8; 8],
        /// Bytes of header and segments written.
        off: usize,
        /// Bytes of header and segments in all.
        total: usize,
    },
    /// One socket's part of a striped frame (see `proto::stripe`): its header, then bytes
    /// `from..to` of the send's payload. The send is in [`StripedSends`], completed once
    /// every part is written.
    Part {
        /// The send's entry in [`StripedSends`].
        send: u32,
        /// The striped frame header (the connection's part) or a piece header (a lane's).
        header: [u8; 8],
        /// Where this part starts in the payload.
        from: usize,
        /// Where it ends.
        to: usize,
        /// Bytes of header and part written.
        off: usize,
    },
    /// A close after everything ahead.
    Close {
        /// The IRB of a local disconnect, if it is one.
        irb: Option<Irb>,
    },
}

/// A connection's send queue (see the module's text). Every `Bytes` entry holds at least
/// one byte still to write; `bytes` counts them.
#[derive(Default)]
pub struct SendQueue {
    entries: VecDeque<Tx>,
    bytes: usize,
}

impl SendQueue {
    /// Nothing waits.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes waiting in byte entries (not counting fragments sent as IRBs).
    #[inline(always)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queues a fragment sent as an IRB, `off` bytes of it written already.
    pub fn push_frame(&mut self, irb: Irb, header: [u8; 8], off: usize, total: usize) {
        self.entries.push_back(Tx::Frame {
            irb,
            header,
            off,
            total,
        });
    }

    /// Queues a part of a striped send.
    pub fn push_part(&mut self, send: u32, header: [u8; 8], from: usize, to: usize) {
        self.entries.push_back(Tx::Part {
            send,
            header,
            from,
            to,
            off: 0,
        });
    }

    /// Queues a close after everything queued.
    pub fn push_close(&mut self, irb: Option<Irb>) {
        self.entries.push_back(Tx::Close { irb });
    }

    /// Queues a whole frame as bytes (`send_inline`'s batch), appended to the last entry when
    /// that is bytes too, so one piece of the `writev` carries the batch. Returns the bytes
    /// queued (as every `queue_` method does, for the device's count over connections).
    #[inline(always)]
    #[allow(unsafe_code)]
    pub fn queue_frame(&mut self, spare: &mut Vec<u8>, header: &[u8; 8], data: &[u8]) -> usize {
        let tail = tail_bytes(&mut self.entries, spare);
        let n = header.len() + data.len();
        tail.reserve(n);
        let at = tail.len();
        // Copied with `copy_small`, not `extend_from_slice`: that was two calls per message
        // here, with a `memcpy` each (callgrind: 411 against 474 instructions per streamed
        // TCP message).
        // SAFETY: `reserve` left room for `n` more bytes after `at`; the two copies fill
        // exactly `at..at + n` from slices outside the vector (a caller's `&[u8]` cannot
        // alias `tail`, borrowed mutably here), so every byte `set_len` exposes is written.
        unsafe {
            let dst = tail.as_mut_ptr().add(at);
            vmi_device::copy::copy_small(header.as_ptr(), dst, header.len());
            vmi_device::copy::copy_small(data.as_ptr(), dst.add(header.len()), data.len());
            tail.set_len(at + n);
        }
        self.bytes += n;
        n
    }

    /// Queues `parts` as bytes, skipping their first `skip` bytes (already written), as
    /// [`SendQueue::queue_frame`] does. Nothing is queued when nothing is left.
    pub fn queue_parts(&mut self, spare: &mut Vec<u8>, parts: &[&[u8]], mut skip: usize) -> usize {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let n = total.saturating_sub(skip);
        if n == 0 {
            return 0;
        }
        let tail = tail_bytes(&mut self.entries, spare);
        for part in parts {
            tail.extend_from_slice(&part[skip.min(part.len())..]);
            skip = skip.saturating_sub(part.len());
        }
        self.bytes += n;
        n
    }

    /// Queues bytes the protocol produced (a handshake message, a heartbeat), as they are.
    pub fn queue_owned(&mut self, data: Vec<u8>) -> usize {
        let n = data.len();
        if n > 0 {
            self.bytes += n;
            self.entries.push_back(Tx::Bytes { data, off: 0 });
        }
        n
    }

    /// Whether a close is next (everything ahead of it written).
    pub fn close_is_next(&self) -> bool {
        matches!(self.entries.front(), Some(Tx::Close { .. }))
    }

    /// Takes the close at the front (see [`SendQueue::close_is_next`]): `Some(irb)`, the
    /// irb being the local disconnect's if any.
    pub fn take_close(&mut self) -> Option<Option<Irb>> {
        if !self.close_is_next() {
            return None;
        }
        match self.entries.pop_front() {
            Some(Tx::Close { irb }) => Some(irb),
            _ => None,
        }
    }

    /// Fills `slices` with what is queued ahead of the first close, in order, as far as
    /// they reach, and stops at the first end of an entry at or past `enough` bytes (an
    /// entry is never cut short: a frame's last bytes do not wait for another write);
    /// returns how many it filled.
    pub fn gather<'a>(
        &'a self,
        slices: &mut [IoSlice<'a>],
        enough: usize,
        striped: &'a StripedSends,
    ) -> usize {
        let mut n = 0;
        let mut bytes = 0;
        'queued: for tx in &self.entries {
            if bytes >= enough {
                break;
            }
            match tx {
                Tx::Bytes { data, off } => {
                    if n == slices.len() {
                        break;
                    }
                    slices[n] = IoSlice::new(&data[*off..]);
                    bytes += data.len() - *off;
                    n += 1;
                }
                Tx::Frame {
                    irb, header, off, ..
                } => {
                    let segs = (0..irb.segments().len()).map(|i| irb.segment(i));
                    let pieces = std::iter::once(&header[..]).chain(segs);
                    if !fill(slices, &mut n, &mut bytes, pieces, *off) {
                        break 'queued;
                    }
                }
                Tx::Part {
                    send,
                    header,
                    from,
                    to,
                    off,
                } => {
                    let Some(irb) = striped.irb(*send) else {
                        break;
                    };
                    let pieces = std::iter::once(&header[..]).chain(payload_range(irb, *from, *to));
                    if !fill(slices, &mut n, &mut bytes, pieces, *off) {
                        break 'queued;
                    }
                }
                Tx::Close { .. } => break,
            }
        }
        n
    }

    /// Credits `w` bytes the socket took to the entries in order: whole byte entries are
    /// removed (the buffer of the last kept in `spare` for the next), whole fragments
    /// completed. Returns the bytes credited to byte entries.
    pub fn credit(
        &mut self,
        mut w: usize,
        spare: &mut Vec<u8>,
        striped: &mut StripedSends,
    ) -> usize {
        let mut from_bytes = 0;
        loop {
            match self.entries.front_mut() {
                Some(Tx::Bytes { data, off }) => {
                    let take = (data.len() - *off).min(w);
                    *off += take;
                    w -= take;
                    from_bytes += take;
                    if *off < data.len() {
                        break;
                    }
                    if let Some(Tx::Bytes { data, .. }) = self.entries.pop_front()
                        && data.capacity() <= QUEUED_MAX + FLUSH_AT
                    {
                        *spare = data;
                    }
                }
                Some(Tx::Frame { off, total, .. }) => {
                    let take = (*total - *off).min(w);
                    *off += take;
                    w -= take;
                    if *off < *total {
                        break;
                    }
                    if let Some(Tx::Frame { irb, .. }) = self.entries.pop_front() {
                        irb.complete(Status::Ok);
                    }
                }
                Some(Tx::Part {
                    send,
                    header,
                    from,
                    to,
                    off,
                }) => {
                    let total = header.len() + (*to - *from);
                    let take = (total - *off).min(w);
                    *off += take;
                    w -= take;
                    if *off < total {
                        break;
                    }
                    let send = *send;
                    self.entries.pop_front();
                    if let Some(irb) = striped.part_written(send) {
                        irb.complete(Status::Ok);
                    }
                }
                Some(Tx::Close { .. }) | None => break,
            }
        }
        self.bytes -= from_bytes;
        from_bytes
    }

    /// Empties the queue (the connection ends): its entries, for their IRBs to be completed.
    pub fn drain(&mut self) -> impl Iterator<Item = Tx> + '_ {
        self.bytes = 0;
        self.entries.drain(..)
    }
}

/// Adds `pieces` to `slices` from `slices[*n]` on, skipping their first `skip` bytes
/// (written already), counting the bytes in `bytes`; false when the slices ran out first.
fn fill<'a>(
    slices: &mut [IoSlice<'a>],
    n: &mut usize,
    bytes: &mut usize,
    pieces: impl Iterator<Item = &'a [u8]>,
    mut skip: usize,
) -> bool {
    for part in pieces {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        if *n == slices.len() {
            return false;
        }
        slices[*n] = IoSlice::new(&part[skip..]);
        *bytes += part.len() - skip;
        skip = 0;
        *n += 1;
    }
    true
}

/// The slices of `irb`'s payload between byte `from` and byte `to`.
fn payload_range(irb: &Irb, from: usize, to: usize) -> impl Iterator<Item = &[u8]> {
    let mut at = 0;
    (0..irb.segments().len()).filter_map(move |i| {
        let s = irb.segment(i);
        let (start, end) = (at, at + s.len());
        at = end;
        let (a, b) = (from.max(start), to.min(end));
        (a < b).then(|| &s[a - start..b - start])
    })
}

/// Striped sends in flight: each IRB with the number of its parts not yet written. An IRB
/// completes when its last part is written, or fails once (`fail`) when its connection ends.
#[derive(Default)]
pub struct StripedSends {
    entries: Vec<Option<(Irb, u8)>>,
    free: Vec<u32>,
}

impl StripedSends {
    /// Holds `irb` until `parts` parts are written; returns its entry.
    pub fn insert(&mut self, irb: Irb, parts: u8) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.entries[i as usize] = Some((irb, parts));
                i
            }
            None => {
                self.entries.push(Some((irb, parts)));
                (self.entries.len() - 1) as u32
            }
        }
    }

    /// The IRB of entry `send`, while it is in flight.
    pub fn irb(&self, send: u32) -> Option<&Irb> {
        self.entries
            .get(send as usize)?
            .as_ref()
            .map(|(irb, _)| irb)
    }

    /// One part of `send` is written: its IRB when that was the last.
    pub fn part_written(&mut self, send: u32) -> Option<Irb> {
        let slot = self.entries.get_mut(send as usize)?;
        let (_, left) = slot.as_mut()?;
        *left = left.saturating_sub(1);
        if *left > 0 {
            return None;
        }
        self.free.push(send);
        slot.take().map(|(irb, _)| irb)
    }

    /// `send` cannot be written whole (its connection ended): its IRB, the first time only.
    pub fn fail(&mut self, send: u32) -> Option<Irb> {
        let irb = self
            .entries
            .get_mut(send as usize)?
            .take()
            .map(|(irb, _)| irb)?;
        self.free.push(send);
        Some(irb)
    }
}

/// The last entry's bytes; a new entry, built in `spare` (a buffer kept from an earlier
/// entry: nothing allocated once warm), if the last is not bytes.
#[inline(always)]
fn tail_bytes<'a>(entries: &'a mut VecDeque<Tx>, spare: &mut Vec<u8>) -> &'a mut Vec<u8> {
    if !matches!(entries.back(), Some(Tx::Bytes { .. })) {
        let mut data = std::mem::take(spare);
        data.clear();
        entries.push_back(Tx::Bytes { data, off: 0 });
    }
    match entries.back_mut() {
        Some(Tx::Bytes { data, .. }) => data,
        _ => unreachable!("the last entry is bytes: checked or pushed just above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(q: &SendQueue) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let none = StripedSends::default();
        let n = q.gather(&mut slices, usize::MAX, &none);
        slices[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn small_frames_join_one_run_of_bytes() {
        let (mut q, mut spare) = (SendQueue::default(), Vec::new());
        q.queue_owned(b"hello".to_vec());
        q.queue_frame(&mut spare, &[1; 8], b"ab");
        q.queue_frame(&mut spare, &[2; 8], b"cde");
        // The protocol's message stays its own entry; the two frames join the next.
        assert_eq!(q.len(), 1, "frames are appended to the last byte entry");
        assert_eq!(q.bytes(), 5 + 10 + 11);
        let mut want = b"hello".to_vec();
        want.extend([1; 8]);
        want.extend(b"ab");
        want.extend([2; 8]);
        want.extend(b"cde");
        assert_eq!(written(&q), want);
    }

    #[test]
    fn credit_in_order_and_keep_a_buffer() {
        let (mut q, mut spare) = (SendQueue::default(), Vec::new());
        q.push_close(None);
        q.queue_frame(&mut spare, &[1; 8], b"xy"); // after a close: an entry of its own
        assert_eq!(q.len(), 2);
        assert!(written(&q).is_empty(), "nothing is written past a close");
        assert_eq!(q.take_close().map(|irb| irb.is_none()), Some(true));
        assert_eq!(written(&q).len(), 10);
        assert_eq!(q.credit(3, &mut spare, &mut StripedSends::default()), 3);
        assert_eq!(q.bytes(), 7);
        assert_eq!(written(&q), {
            let mut v = vec![1; 5];
            v.extend(b"xy");
            v
        });
        assert!(spare.capacity() == 0, "the entry is not written yet");
        assert_eq!(
            q.credit(100, &mut spare, &mut StripedSends::default()),
            7,
            "credit stops at what is queued"
        );
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
        assert!(spare.capacity() >= 10, "the written entry's buffer is kept");
        // The next entry reuses it.
        let kept = spare.as_ptr();
        q.queue_frame(&mut spare, &[3; 8], b"z");
        assert!(spare.capacity() == 0);
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let none = StripedSends::default();
        assert_eq!(q.gather(&mut slices, usize::MAX, &none), 1);
        assert_eq!(slices[0].as_ptr(), kept);
    }

    #[test]
    fn the_rest_of_a_partial_write_skips_what_went() {
        let (mut q, mut spare) = (SendQueue::default(), Vec::new());
        q.queue_parts(&mut spare, &[b"12345678", b"abc"], 10);
        assert_eq!(written(&q), b"c");
        assert_eq!(q.bytes(), 1);
        q.queue_parts(&mut spare, &[b"1234", b"ab"], 6);
        assert_eq!(q.bytes(), 1, "nothing left: nothing queued");
        q.queue_owned(Vec::new());
        assert_eq!(q.len(), 1, "no empty entry");
    }

    #[test]
    fn gather_stops_at_the_end_of_the_entry_that_reaches_enough() {
        let (mut q, mut spare) = (SendQueue::default(), Vec::new());
        q.queue_owned(b"abc".to_vec());
        q.queue_owned(b"defg".to_vec());
        q.queue_owned(b"h".to_vec());
        let gathered = |q: &SendQueue, enough| {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let none = StripedSends::default();
            let n = q.gather(&mut slices, enough, &none);
            slices[..n]
                .iter()
                .flat_map(|s| s.iter().copied())
                .collect::<Vec<u8>>()
        };
        assert_eq!(gathered(&q, 1), b"abc", "the first entry whole");
        assert_eq!(gathered(&q, 3), b"abc", "exactly enough");
        assert_eq!(
            gathered(&q, 4),
            b"abcdefg",
            "the entry that reaches it whole"
        );
        assert_eq!(gathered(&q, usize::MAX), b"abcdefgh");
        assert!(gathered(&q, 0).is_empty(), "nothing at 0");
        // After a partial write the rest of an entry counts from where it stands.
        assert_eq!(q.credit(2, &mut spare, &mut StripedSends::default()), 2);
        assert_eq!(gathered(&q, 1), b"c");
        assert_eq!(gathered(&q, 2), b"cdefg");
    }

    #[test]
    fn gather_stops_at_the_iovec_limit() {
        let (mut q, mut spare) = (SendQueue::default(), Vec::new());
        for i in 0..MAX_IOV + 5 {
            q.queue_owned(vec![i as u8; 3]);
        }
        q.queue_frame(&mut spare, &[9; 8], b"tail");
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let none = StripedSends::default();
        assert_eq!(q.gather(&mut slices, usize::MAX, &none), MAX_IOV);
        let total = q.bytes();
        assert_eq!(
            q.credit(total, &mut spare, &mut StripedSends::default()),
            total
        );
        assert!(q.is_empty());
        assert_eq!(q.drain().count(), 0);
    }
}
