//! Striping: a large frame's payload cut into parts, one per socket of a connection (its own
//! and its lanes), written and read at once and put together in one buffer with no copy.
//!
//! The sender writes a striped frame header and the first part on the connection, and on
//! lane `i` a piece header and part `i`. Every part but the last is `part_len` bytes, a
//! multiple of 4 KiB, so each part lands at the same alignment in the receiver's buffer as
//! the first; no part is empty. The receiver reads each socket straight into its part of
//! one buffer ([`Assembly`]); each lane's piece header is checked against what the frame
//! header promised before a byte of the part is taken. The connection reads no further
//! frame until every part is in, so frames stay in order. No I/O here: the device reads into
//! the slices this module hands out and reports how many bytes came.

use super::decoder::{Event, PayloadAlloc, recycled};
use crate::wire::{FRAME_LEN, MAX_LANES, StripeRepr, WireError, parse_piece};

/// Parts are multiples of this (a page: each part starts where the first does, modulo it).
pub const PART_ALIGN: usize = 4096;

/// Most sockets of one connection (its own and its lanes).
pub const MAX_SOCKETS: usize = 1 + MAX_LANES;

/// The length of every part but the last when `len` bytes go over `sockets` sockets; `None`
/// when that is not a valid striping (fewer than 2 or more than [`MAX_SOCKETS`] sockets, or a
/// socket that would carry nothing).
pub fn part_len(len: usize, sockets: usize) -> Option<usize> {
    if !(2..=MAX_SOCKETS).contains(&sockets) {
        return None;
    }
    let part = len.div_ceil(sockets).next_multiple_of(PART_ALIGN);
    ((sockets - 1) * part < len).then_some(part)
}

/// Where part `i` lies in a payload of `len` bytes cut into parts of `part` bytes.
pub fn part_range(len: usize, part: usize, i: usize) -> std::ops::Range<usize> {
    (i * part).min(len)..((i + 1) * part).min(len)
}

/// A striped frame being received: one buffer, each socket's part read straight into it.
#[derive(Debug)]
pub struct Assembly {
    end: bool,
    filter_flags: u16,
    buf: Vec<u8>,
    /// Where the payload starts in `buf` (see `decoder::payload_lead`).
    at: usize,
    len: usize,
    part: usize,
    sockets: usize,
    /// Bytes of each socket's part received.
    got: [usize; MAX_SOCKETS],
    /// Each lane's piece header, as it arrives (the connection's part has none).
    hdr: [[u8; FRAME_LEN]; MAX_SOCKETS],
    hdr_got: [usize; MAX_SOCKETS],
}

impl Assembly {
    /// Starts the frame of header `repr`, checked against the lanes this side has
    /// (`lanes`) and the largest fragment. The buffer is an idle pooled one of the whole
    /// length, or a new zeroed one: the system hands that out as untouched pages, so memory
    /// is committed as bytes arrive, not when a header promises them.
    pub fn new(
        repr: StripeRepr,
        lanes: usize,
        max_fragment: u64,
        alloc: &mut dyn PayloadAlloc,
    ) -> Result<Assembly, WireError> {
        let len = repr.len as usize;
        if repr.len as u64 > max_fragment {
            return Err(WireError::TooLong {
                field: "striped fragment",
                len: repr.len as u64,
                max: max_fragment,
            });
        }
        let sockets = repr.sockets as usize;
        if sockets > 1 + lanes {
            return Err(WireError::BadField {
                field: "striped frame's sockets (more than the lanes set up)",
                value: sockets as u64,
            });
        }
        let Some(part) = part_len(len, sockets) else {
            return Err(WireError::BadField {
                field: "striped frame's length for its sockets",
                value: len as u64,
            });
        };
        let (buf, at) = recycled(alloc, len).unwrap_or_else(|| (vec![0u8; len], 0));
        Ok(Assembly {
            end: repr.end,
            filter_flags: repr.filter_flags,
            buf,
            at,
            len,
            part,
            sockets,
            got: [0; MAX_SOCKETS],
            hdr: [[0; FRAME_LEN]; MAX_SOCKETS],
            // The connection's part has no piece header.
            hdr_got: [FRAME_LEN, 0, 0, 0],
        })
    }

    /// Sockets carrying parts (the connection's and lanes `1..sockets`).
    pub fn sockets(&self) -> usize {
        self.sockets
    }

    fn range(&self, i: usize) -> std::ops::Range<usize> {
        part_range(self.len, self.part, i)
    }

    /// The length of socket `i`'s part (0 for a socket that carries none).
    pub fn part_size(&self, i: usize) -> usize {
        if i < self.sockets {
            self.range(i).len()
        } else {
            0
        }
    }

    /// The bytes socket `i` still has to bring for this frame: the rest of its piece header
    /// and of its part (0 once its part is in, and for a socket that carries none).
    pub fn left(&self, i: usize) -> usize {
        if i >= self.sockets {
            return 0;
        }
        (FRAME_LEN - self.hdr_got[i]) + (self.range(i).len() - self.got[i])
    }

    /// Whether socket `i`'s part is all in (true for sockets that carry none).
    pub fn part_done(&self, i: usize) -> bool {
        i >= self.sockets || self.got[i] == self.range(i).len()
    }

    /// Whether every part is in.
    pub fn is_complete(&self) -> bool {
        (0..self.sockets).all(|i| self.part_done(i))
    }

    /// Where socket `i`'s next bytes go: the rest of its piece header, or of its part; `None`
    /// when its part is in (or it carries none).
    pub fn target(&mut self, i: usize) -> Option<&mut [u8]> {
        if self.part_done(i) {
            return None;
        }
        if self.hdr_got[i] < FRAME_LEN {
            return Some(&mut self.hdr[i][self.hdr_got[i]..]);
        }
        let r = self.range(i);
        let from = self.at + r.start + self.got[i];
        Some(&mut self.buf[from..self.at + r.end])
    }

    /// Records `n` bytes read into [`Assembly::target`] for socket `i`. A piece header, once
    /// whole, must name this lane and the part's length.
    pub fn advance(&mut self, i: usize, n: usize) -> Result<(), WireError> {
        if i >= self.sockets {
            return Ok(());
        }
        if self.hdr_got[i] < FRAME_LEN {
            self.hdr_got[i] = (self.hdr_got[i] + n).min(FRAME_LEN);
            if self.hdr_got[i] == FRAME_LEN {
                let want = self.range(i).len() as u64;
                match parse_piece(&self.hdr[i]) {
                    Some((lane, len)) if lane as usize == i && len as u64 == want => {}
                    Some((lane, len)) => {
                        return Err(WireError::BadField {
                            field: if lane as usize != i {
                                "piece's lane"
                            } else {
                                "piece's length"
                            },
                            value: if lane as usize != i {
                                lane as u64
                            } else {
                                len as u64
                            },
                        });
                    }
                    None => {
                        return Err(WireError::BadField {
                            field: "piece header kind",
                            value: self.hdr[i][0] as u64,
                        });
                    }
                }
            }
            return Ok(());
        }
        let left = self.range(i).len() - self.got[i];
        self.got[i] += n.min(left);
        Ok(())
    }

    /// Copies what `input` holds of the connection's part (bytes read past the frame
    /// header); returns how many it took.
    pub fn absorb(&mut self, input: &[u8]) -> usize {
        let Some(t) = self.target(0) else { return 0 };
        let n = t.len().min(input.len());
        t[..n].copy_from_slice(&input[..n]);
        self.got[0] += n;
        n
    }

    /// The whole frame, once [`Assembly::is_complete`].
    pub fn into_event(self) -> Event {
        Event::Frame {
            end: self.end,
            filter_flags: self.filter_flags,
            payload: self.buf,
            at: self.at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::emit_piece;

    fn fresh(len: usize) -> Vec<u8> {
        vec![0; len]
    }

    fn repr(len: u32, sockets: u8) -> StripeRepr {
        StripeRepr {
            end: true,
            filter_flags: 3,
            sockets,
            len,
        }
    }

    #[test]
    fn parts_tile_the_payload_page_aligned_and_none_is_empty() {
        for sockets in 2..=MAX_SOCKETS {
            for len in [
                sockets * PART_ALIGN,
                (sockets - 1) * PART_ALIGN + 1,
                1 << 20,
                (1 << 20) + 8,
                3 * (1 << 20) + 12345,
            ] {
                let part = part_len(len, sockets).unwrap_or_else(|| panic!("{len}/{sockets}"));
                assert_eq!(part % PART_ALIGN, 0);
                let mut next = 0;
                for i in 0..sockets {
                    let r = part_range(len, part, i);
                    assert_eq!(r.start, next);
                    assert!(!r.is_empty(), "{len} over {sockets}: part {i} empty");
                    next = r.end;
                }
                assert_eq!(next, len);
            }
            assert_eq!(part_len((sockets - 1) * PART_ALIGN, sockets), None);
        }
        assert_eq!(part_len(1 << 20, 1), None);
        assert_eq!(part_len(1 << 20, MAX_SOCKETS + 1), None);
    }

    /// Seeded: parts arrive from every socket in random pieces, in any interleaving, and the
    /// payload comes out whole.
    #[test]
    fn parts_in_any_order_and_pieces_make_the_payload() {
        let seed = std::env::var("VMI_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_57e1u64);
        println!("seed {seed} (VMI_TEST_SEED)");
        let mut x = seed;
        let mut rnd = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for round in 0..50 {
            let sockets = 2 + rnd(MAX_SOCKETS - 1);
            // Any length past sockets * (sockets - 1) pages stripes (a page of rounding per
            // part cannot leave the last one empty); below, some lengths do not.
            let len = sockets * (sockets - 1) * PART_ALIGN + 1 + rnd(300_000);
            let short = rnd(sockets * (sockets - 1) * PART_ALIGN);
            assert_eq!(
                part_len(short, sockets).is_some(),
                Assembly::new(
                    repr(short as u32, sockets as u8),
                    MAX_LANES,
                    1 << 30,
                    &mut fresh
                )
                .is_ok(),
                "a header is taken exactly when its striping is valid"
            );
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + round) as u8).collect();
            let mut a = Assembly::new(
                repr(len as u32, sockets as u8),
                MAX_LANES,
                1 << 30,
                &mut fresh,
            )
            .unwrap();
            let part = part_len(len, sockets).unwrap();
            // What each socket carries: its piece header (lanes) then its part.
            let streams: Vec<Vec<u8>> = (0..sockets)
                .map(|i| {
                    let r = part_range(len, part, i);
                    let mut s = Vec::new();
                    if i > 0 {
                        s.extend(emit_piece(i as u8, r.len() as u32));
                    }
                    s.extend(&payload[r]);
                    s
                })
                .collect();
            let mut pos = vec![0; sockets];
            // The connection's first bytes may come with the header's read.
            let first = rnd(streams[0].len());
            pos[0] = a.absorb(&streams[0][..first]);
            while !a.is_complete() {
                let i = rnd(sockets);
                let Some(t) = a.target(i) else { continue };
                let n = t.len().min(1 + rnd(70_000)).min(streams[i].len() - pos[i]);
                t[..n].copy_from_slice(&streams[i][pos[i]..pos[i] + n]);
                pos[i] += n;
                a.advance(i, n).unwrap();
                // What each socket has still to bring (its receive low-water mark's input).
                for (j, s) in streams.iter().enumerate() {
                    assert_eq!(a.left(j), s.len() - pos[j], "socket {j}: bytes left");
                    let piece = if j > 0 { FRAME_LEN } else { 0 };
                    assert_eq!(a.part_size(j), s.len() - piece, "socket {j}: its part");
                }
                assert_eq!((a.left(sockets), a.part_size(sockets)), (0, 0), "no part");
            }
            for (i, s) in streams.iter().enumerate() {
                assert_eq!(pos[i], s.len(), "socket {i} read exactly its part");
            }
            match a.into_event() {
                Event::Frame {
                    payload: got,
                    at,
                    end,
                    filter_flags,
                } => {
                    assert!(end);
                    assert_eq!(filter_flags, 3);
                    assert_eq!(&got[at..], &payload[..], "seed {seed} round {round}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn hostile_headers_and_pieces_are_refused() {
        let mut alloc = fresh;
        // More sockets than lanes here; over the limit; a length the sockets cannot share.
        assert!(Assembly::new(repr(1 << 20, 3), 1, 1 << 30, &mut alloc).is_err());
        assert!(Assembly::new(repr(1 << 20, 2), 1, 1 << 19, &mut alloc).is_err());
        assert!(Assembly::new(repr(100, 2), 1, 1 << 30, &mut alloc).is_err());
        assert!(Assembly::new(repr(1 << 20, 1), 1, 1 << 30, &mut alloc).is_err());
        assert!(Assembly::new(repr(1 << 20, 0), 1, 1 << 30, &mut alloc).is_err());
        let piece = |lane: u8, len: u32| {
            let mut a = Assembly::new(repr(1 << 20, 2), 1, 1 << 30, &mut fresh).unwrap();
            let h = emit_piece(lane, len);
            a.target(1).unwrap().copy_from_slice(&h);
            a.advance(1, FRAME_LEN)
        };
        assert!(piece(1, 1 << 19).is_ok());
        assert!(piece(2, 1 << 19).is_err(), "another lane's piece");
        assert!(piece(1, (1 << 19) + 1).is_err(), "a longer piece");
        assert!(piece(1, 1).is_err(), "a shorter piece");
        let mut a = Assembly::new(repr(1 << 20, 2), 1, 1 << 30, &mut fresh).unwrap();
        a.target(1)
            .unwrap()
            .copy_from_slice(&[1, 1, 0, 0, 0, 0, 8, 0]);
        assert!(a.advance(1, FRAME_LEN).is_err(), "a data frame on a lane");
        // Lanes past the frame's sockets carry nothing.
        assert!(a.target(2).is_none());
        assert!(a.part_done(3));
    }
}
