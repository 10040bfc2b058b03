//! The shared-memory record protocol without I/O: reading the records a peer writes into its
//! ring ([`RecordReader`]), and writing records into ours ([`encode_inline`],
//! [`encode_rendezvous`]). The ring itself, the mapping and the peer's memory are the device's
//! business; here a ring is any [`Source`] of bytes, so the unit tests drive the reader with
//! in-memory byte streams cut at every position, and with hostile records.
//!
//! Records (see `wire`): `DATA`/`DATA_END` carry the payload inline; `RDV`/`RDV_END` carry a
//! list of address ranges in the sender's memory for a single-copy read, answered by `ACK`
//! (read) or `NACK` (could not read: send it inline); every length is checked before memory
//! is committed for it.
#![forbid(unsafe_code)]

use crate::wire::*;

/// Most address ranges one rendezvous record may list (the IRB's segment limit).
pub const MAX_RANGES: usize = 16;

/// Bytes a payload buffer is committed ahead of the bytes received.
pub const COMMIT_AHEAD: usize = 256 * 1024;

/// The committed length for a payload of `total` bytes with `got` received (doubling).
fn commit_len(total: usize, got: usize) -> usize {
    total.min(got.saturating_mul(2).max(COMMIT_AHEAD))
}

/// Bytes in, as a ring consumer offers them.
/// An error from a source (a corrupt ring) ends the connection like a protocol violation.
pub trait Source {
    /// Whether at least `n` bytes can be read now.
    fn has(&mut self, n: usize) -> Result<bool, String>;
    /// Copies up to `dst.len()` bytes out; returns how many.
    fn pop(&mut self, dst: &mut [u8]) -> Result<usize, String>;
}

/// What the peer's next record means.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A fragment carried inline, complete.
    Data {
        /// Its header.
        rec: Record,
        /// Its bytes.
        payload: Vec<u8>,
    },
    /// A fragment to read from the peer's memory (single copy), then answer with
    /// [`ack`] or [`nack`].
    Fetch {
        /// Its header.
        rec: Record,
        /// Address and length of each piece, in the peer's address space. Their lengths add
        /// up to `rec.len` (checked).
        ranges: Vec<(u64, usize)>,
    },
    /// The peer read our rendezvous `id`.
    Ack {
        /// Rendezvous id.
        id: u64,
    },
    /// The peer could not read our rendezvous: send it inline.
    Nack {
        /// The header it sent back (id, length and flags of the fragment).
        rec: Record,
    },
}

/// Where a reader is in the record stream.
#[derive(Debug)]
enum Phase {
    Header,
    Payload {
        rec: Record,
        buf: Vec<u8>,
        got: usize,
    },
    Ranges {
        rec: Record,
        bytes: Vec<u8>,
        need: usize,
    },
}

/// Reads records from a peer's ring, checking each before committing memory to it.
#[derive(Debug)]
pub struct RecordReader {
    phase: Phase,
    max_fragment: u64,
}

impl RecordReader {
    /// A reader that refuses fragments over `max_fragment`.
    pub fn new(max_fragment: u64) -> RecordReader {
        RecordReader {
            phase: Phase::Header,
            max_fragment,
        }
    }

    /// True between records.
    pub fn at_boundary(&self) -> bool {
        matches!(self.phase, Phase::Header)
    }

    /// A small data record whole at the start of `bytes` (a private copy of the ring's
    /// readable bytes, see `Consumer::peek`): its header and the length of its payload, which
    /// follows the header. `None` for anything else (a partial record, another kind, a
    /// malformed or oversized header, or a reader in the middle of a record): the caller then
    /// reads through [`RecordReader::next`], which reports what is wrong.
    pub fn whole_data(&self, bytes: &[u8]) -> Option<(Record, usize)> {
        if !self.at_boundary() {
            return None;
        }
        let h: &[u8; RECORD_LEN] = bytes.get(..RECORD_LEN)?.try_into().ok()?;
        // Only the kinds taken here are looked at (no error text is built on this path).
        if !matches!(h[0], DATA | DATA_END) {
            return None;
        }
        let rec = Record {
            kind: h[0],
            flags: u16::from_le_bytes([h[2], h[3]]),
            len: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
            id: u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]),
        };
        let len = rec.len as usize;
        let whole = rec.len as u64 <= self.max_fragment && bytes.len() - RECORD_LEN >= len;
        whole.then_some((rec, len))
    }

    /// The buffer of a payload read halfway (the connection is ending), for reuse.
    pub fn take_partial(&mut self) -> Option<Vec<u8>> {
        match std::mem::replace(&mut self.phase, Phase::Header) {
            Phase::Payload { buf, .. } => Some(buf),
            _ => None,
        }
    }

    /// The next complete record, `Ok(None)` when the source has no more for now, or the
    /// protocol violation that ends the connection. `alloc` gives payload buffers (a pool).
    pub fn next(
        &mut self,
        src: &mut dyn Source,
        alloc: &mut dyn FnMut(usize) -> Vec<u8>,
    ) -> Result<Option<Incoming>, String> {
        loop {
            match &mut self.phase {
                Phase::Header => {
                    if !src.has(RECORD_LEN)? {
                        return Ok(None);
                    }
                    let mut h = [0u8; RECORD_LEN];
                    if src.pop(&mut h)? != RECORD_LEN {
                        return Err("the ring lost bytes of a record header".into());
                    }
                    let rec = Record::parse(&h)?;
                    match rec.kind {
                        DATA | DATA_END | RDV | RDV_END if rec.len as u64 > self.max_fragment => {
                            return Err(format!(
                                "a fragment of {} bytes, over max_fragment {}",
                                rec.len, self.max_fragment
                            ));
                        }
                        DATA | DATA_END if rec.len == 0 => {
                            return Ok(Some(Incoming::Data {
                                rec,
                                payload: alloc(0),
                            }));
                        }
                        DATA | DATA_END
                            if rec.len as usize <= COMMIT_AHEAD && src.has(rec.len as usize)? =>
                        {
                            // The common case, a small fragment already whole in the ring:
                            // read it in one go, with no partial-payload state.
                            let len = rec.len as usize;
                            let mut payload = alloc(len);
                            if src.pop(&mut payload[..len])? != len {
                                return Err("the ring lost bytes of a fragment".into());
                            }
                            return Ok(Some(Incoming::Data { rec, payload }));
                        }
                        DATA | DATA_END => {
                            // Memory is committed as bytes arrive: a header alone costs at
                            // most COMMIT_AHEAD, however large a fragment it announces.
                            self.phase = Phase::Payload {
                                rec,
                                buf: alloc(commit_len(rec.len as usize, 0)),
                                got: 0,
                            }
                        }
                        RDV | RDV_END => {
                            self.phase = Phase::Ranges {
                                rec,
                                bytes: Vec::with_capacity(8 + 16 * MAX_RANGES),
                                need: 8,
                            }
                        }
                        ACK => return Ok(Some(Incoming::Ack { id: rec.id })),
                        _ => return Ok(Some(Incoming::Nack { rec })),
                    }
                }
                Phase::Payload { rec, buf, got } => {
                    let total = rec.len as usize;
                    if *got == buf.len() && *got < total {
                        buf.resize(commit_len(total, *got), 0);
                    }
                    let k = src.pop(&mut buf[*got..])?;
                    *got += k;
                    if *got < total {
                        if k == 0 {
                            return Ok(None);
                        }
                        continue;
                    }
                    if let Phase::Payload { rec, buf, .. } =
                        std::mem::replace(&mut self.phase, Phase::Header)
                    {
                        return Ok(Some(Incoming::Data { rec, payload: buf }));
                    }
                }
                Phase::Ranges { rec, bytes, need } => {
                    let mut chunk = [0u8; 8 + 16 * MAX_RANGES];
                    let want = *need - bytes.len();
                    let k = src.pop(&mut chunk[..want])?;
                    bytes.extend_from_slice(&chunk[..k]);
                    if bytes.len() == 8 && *need == 8 {
                        let count =
                            u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
                        if count == 0 || count > MAX_RANGES {
                            return Err(format!(
                                "a single-copy record with {count} ranges (1 to {MAX_RANGES} allowed)"
                            ));
                        }
                        *need = 8 + 16 * count;
                    }
                    if bytes.len() < *need {
                        if k == 0 {
                            return Ok(None);
                        }
                        continue;
                    }
                    let rec = *rec;
                    let ranges: Vec<(u64, usize)> = bytes[8..]
                        .chunks_exact(16)
                        .map(|r| {
                            let mut a = [0u8; 8];
                            let mut l = [0u8; 8];
                            a.copy_from_slice(&r[..8]);
                            l.copy_from_slice(&r[8..]);
                            (u64::from_le_bytes(a), u64::from_le_bytes(l))
                        })
                        .map(|(a, l)| (a, usize::try_from(l).unwrap_or(usize::MAX)))
                        .collect();
                    self.phase = Phase::Header;
                    let total = ranges
                        .iter()
                        .try_fold(0usize, |acc, r| acc.checked_add(r.1));
                    if total != Some(rec.len as usize) {
                        return Err("a single-copy record whose ranges do not add up".into());
                    }
                    return Ok(Some(Incoming::Fetch { rec, ranges }));
                }
            }
        }
    }
}

/// The header of an inline fragment of `len` bytes.
pub fn encode_inline(end: bool, flags: u16, len: u32) -> [u8; RECORD_LEN] {
    // The same header the host writes into a lent send ring.
    let mut h = [0u8; RECORD_LEN];
    h[..8].copy_from_slice(&vmi_device::lent::data_header(end, flags, len).to_le_bytes());
    h
}

/// A rendezvous record for a fragment whose pieces are at `ranges` in this process.
pub fn encode_rendezvous(end: bool, flags: u16, id: u64, ranges: &[(u64, usize)]) -> Vec<u8> {
    // The sender's own fragments are at most max_fragment (u32) bytes; saturate regardless.
    let len = ranges
        .iter()
        .fold(0usize, |a, r| a.saturating_add(r.1))
        .min(u32::MAX as usize);
    let mut out = Vec::with_capacity(RECORD_LEN + 8 + 16 * ranges.len());
    out.extend_from_slice(
        &Record {
            kind: if end { RDV_END } else { RDV },
            flags,
            len: len as u32,
            id,
        }
        .emit(),
    );
    out.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for &(addr, l) in ranges {
        out.extend_from_slice(&addr.to_le_bytes());
        out.extend_from_slice(&(l as u64).to_le_bytes());
    }
    out
}

/// The answer to a rendezvous read in full.
pub fn ack(id: u64) -> [u8; RECORD_LEN] {
    Record {
        kind: ACK,
        flags: 0,
        len: 0,
        id,
    }
    .emit()
}

/// The answer to a rendezvous that could not be read: the sender resends it inline.
pub fn nack(rec: &Record) -> [u8; RECORD_LEN] {
    Record {
        kind: NACK,
        flags: rec.flags,
        len: rec.len,
        id: rec.id,
    }
    .emit()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// An in-memory ring end: the writer appends, the reader sees at most `window` bytes at a
    /// time (a ring the writer fills in pieces).
    struct Pipe {
        bytes: VecDeque<u8>,
        visible: usize,
    }

    impl Source for Pipe {
        fn has(&mut self, n: usize) -> Result<bool, String> {
            Ok(self.visible.min(self.bytes.len()) >= n)
        }
        fn pop(&mut self, dst: &mut [u8]) -> Result<usize, String> {
            let n = dst.len().min(self.visible).min(self.bytes.len());
            for d in dst.iter_mut().take(n) {
                *d = self.bytes.pop_front().expect("counted");
            }
            self.visible -= n;
            Ok(n)
        }
    }

    /// Feeds `stream` to a reader, making `step` more bytes visible at a time.
    fn read_all(stream: &[u8], step: usize, max: u64) -> Result<Vec<Incoming>, String> {
        read(stream, step, max, true)
    }

    fn read(stream: &[u8], step: usize, max: u64, whole: bool) -> Result<Vec<Incoming>, String> {
        let mut pipe = Pipe {
            bytes: stream.iter().copied().collect(),
            visible: 0,
        };
        let mut r = RecordReader::new(max);
        let mut out = Vec::new();
        loop {
            while let Some(ev) = r.next(&mut pipe, &mut |n| vec![0; n])? {
                out.push(ev);
            }
            if pipe.bytes.is_empty() || pipe.visible >= pipe.bytes.len() {
                // Everything was visible and nothing more came out: the stream is over.
                assert!(
                    !whole || (pipe.bytes.is_empty() && r.at_boundary()),
                    "a whole stream ends between records"
                );
                return Ok(out);
            }
            pipe.visible += step;
        }
    }

    fn inline(end: bool, flags: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = encode_inline(end, flags, payload.len() as u32).to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn the_hosts_data_header_is_this_devices_record() {
        // The host writes records into a lent send ring with `vmi_device::lent`'s header;
        // the peer's device parses them as its own records.
        for (end, flags, len) in [(true, 0, 0), (false, 0xbeef, 8), (true, 0x8001, u32::MAX)] {
            let h = encode_inline(end, flags, len);
            let rec = Record {
                kind: if end { DATA_END } else { DATA },
                flags,
                len,
                id: 0,
            };
            assert_eq!(h, rec.emit());
            assert_eq!(Record::parse(&h), Ok(rec));
        }
    }

    #[test]
    fn whole_data_takes_only_small_whole_data_records() {
        let r = RecordReader::new(100);
        let rec = inline(true, 7, b"hello");
        assert_eq!(
            r.whole_data(&rec),
            Some((
                Record {
                    kind: DATA_END,
                    flags: 7,
                    len: 5,
                    id: 0
                },
                5
            ))
        );
        // Every cut short of the whole record, and every other kind, is left to `next`.
        for cut in 0..rec.len() {
            assert_eq!(r.whole_data(&rec[..cut]), None, "cut at {cut}");
        }
        assert_eq!(r.whole_data(&ack(3)), None);
        assert_eq!(
            r.whole_data(&encode_rendezvous(true, 0, 1, &[(0x1000, 10)])),
            None
        );
        // A length over max_fragment (even with the bytes there), an unknown kind.
        assert_eq!(r.whole_data(&inline(false, 0, &[1; 101])), None);
        let mut bad = rec.clone();
        bad[0] = 99;
        assert_eq!(r.whole_data(&bad), None);
        // A header promising more than 4 GiB-1 cannot overflow the check.
        let mut huge = encode_inline(true, 0, u32::MAX).to_vec();
        huge.extend_from_slice(&[0; 64]);
        assert_eq!(RecordReader::new(u64::MAX).whole_data(&huge), None);
        // A reader in the middle of a record takes nothing whole.
        let mut mid = RecordReader::new(1 << 20);
        let mut pipe = Pipe {
            bytes: inline(true, 0, &[5; 300_000]).into_iter().collect(),
            visible: RECORD_LEN + 10,
        };
        assert_eq!(mid.next(&mut pipe, &mut |n| vec![0; n]), Ok(None));
        assert_eq!(mid.whole_data(&rec), None);
    }

    #[test]
    fn records_decode_the_same_however_the_writer_cuts_them() {
        let mut stream = inline(false, 0x0002, b"hello");
        stream.extend(inline(true, 0, b""));
        stream.extend(encode_rendezvous(
            true,
            1,
            77,
            &[(0x1000, 300), (0x9000, 12)],
        ));
        stream.extend(ack(5));
        let rdv = Record {
            kind: RDV,
            flags: 3,
            len: 9,
            id: 8,
        };
        stream.extend(nack(&rdv));
        stream.extend(inline(true, 0, &[7; 1000]));
        let expect = read_all(&stream, stream.len(), 1 << 20).unwrap();
        assert_eq!(expect.len(), 6);
        assert_eq!(
            expect[0],
            Incoming::Data {
                rec: Record {
                    kind: DATA,
                    flags: 2,
                    len: 5,
                    id: 0
                },
                payload: b"hello".to_vec()
            }
        );
        assert!(
            matches!(&expect[2], Incoming::Fetch { rec, ranges } if rec.id == 77 && rec.kind == RDV_END && ranges == &vec![(0x1000, 300), (0x9000, 12)])
        );
        assert_eq!(expect[3], Incoming::Ack { id: 5 });
        assert!(
            matches!(&expect[4], Incoming::Nack { rec } if rec.id == 8 && rec.len == 9 && rec.flags == 3)
        );
        for step in [1, 2, 7, 15, 16, 17, 100] {
            assert_eq!(
                read_all(&stream, step, 1 << 20).unwrap(),
                expect,
                "step {step}"
            );
        }
    }

    #[test]
    fn memory_is_committed_as_payload_bytes_arrive() {
        // A header announcing 200 MiB, and a few bytes: at most COMMIT_AHEAD is committed.
        let mut stream = encode_inline(true, 0, 200 << 20).to_vec();
        stream.extend_from_slice(&[1; 100]);
        let mut allocated = 0;
        let mut r = RecordReader::new(256 << 20);
        let mut pipe = Pipe {
            bytes: stream.iter().copied().collect(),
            visible: usize::MAX,
        };
        let got = r
            .next(&mut pipe, &mut |n| {
                allocated += n;
                vec![0; n]
            })
            .unwrap();
        assert!(got.is_none());
        assert!(allocated <= COMMIT_AHEAD, "{allocated} bytes committed");
        // A real 1 MiB fragment, in pieces, arrives whole.
        let payload: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7) as u8).collect();
        let mut stream = encode_inline(true, 0, payload.len() as u32).to_vec();
        stream.extend_from_slice(&payload);
        let events = read_all(&stream, 70_001, 1 << 20).unwrap();
        assert!(matches!(&events[..], [Incoming::Data { payload: p, .. }] if *p == payload));
    }

    #[test]
    fn hostile_records_are_refused_before_memory_is_committed() {
        // Over the limit: refused from the header alone.
        let big = encode_inline(true, 0, u32::MAX);
        let mut allocated = 0;
        let mut r = RecordReader::new(1 << 20);
        let mut pipe = Pipe {
            bytes: big.iter().copied().collect(),
            visible: usize::MAX,
        };
        let err = r
            .next(&mut pipe, &mut |n| {
                allocated += n;
                vec![0; n]
            })
            .unwrap_err();
        assert!(err.contains("over max_fragment"), "{err}");
        assert_eq!(allocated, 0);
        // Unknown kind.
        let mut bad = ack(1);
        bad[0] = 99;
        assert!(
            read_all(&bad, 16, 1 << 20)
                .unwrap_err()
                .contains("unknown record kind")
        );
        // Range counts of 0 and 17, and ranges that do not add up to the length.
        for count in [0u32, 17] {
            let mut v = encode_rendezvous(true, 0, 1, &[(0, 4)]);
            v[16..20].copy_from_slice(&count.to_le_bytes());
            let e = read_all(&v, 64, 1 << 20).unwrap_err();
            assert!(e.contains(&format!("{count} ranges")), "{e}");
        }
        let mut v = encode_rendezvous(true, 0, 1, &[(0, 4), (8, 4)]);
        v[4..8].copy_from_slice(&100u32.to_le_bytes()); // claims 100 bytes
        assert!(
            read_all(&v, 64, 1 << 20)
                .unwrap_err()
                .contains("do not add up")
        );
        // Lengths that overflow when added.
        let v = encode_rendezvous(true, 0, 1, &[(0, usize::MAX), (8, 2)]);
        assert!(read_all(&v, 64, 1 << 20).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (seed.rotate_left(i as u32) & 0xff) as u8)
                .collect();
            let _ = read(&bytes, 1 + (seed % 40) as usize, 4096, false);
        }
    }
}
