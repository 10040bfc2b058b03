//! The receiving side of a bonded connection: chunks from any rail placed into their
//! fragment, duplicates (chunks sent again after a rail failed) dropped, fragments delivered
//! in sequence order exactly once, and acknowledgements owed. Everything from the peer is
//! checked before it is used: a fragment over the size limit, a chunk outside its fragment or
//! overlapping another differently, a sequence number too far ahead, or more bytes awaiting
//! reassembly than the window allows is a protocol error that ends the bonded connection.

use std::collections::BTreeMap;

use thiserror::Error;

/// Limits of a receiver.
#[derive(Clone, Copy, Debug)]
pub struct ReceiverConfig {
    /// Largest fragment in bytes.
    pub max_fragment: u64,
    /// Bytes of fragments being reassembled or waiting for their turn, at most.
    pub max_pending_bytes: u64,
    /// Fragments ahead of the next one to deliver, at most.
    pub max_ahead: u64,
}

/// A peer that broke the rules.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    /// A fragment longer than the limit.
    #[error("the peer announced a fragment of {total} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Announced.
        total: u64,
        /// Limit.
        max: u64,
    },
    /// A chunk outside its fragment.
    #[error("the peer sent bytes {offset}..+{len} of a {total}-byte fragment")]
    OutOfRange {
        /// Chunk offset.
        offset: u64,
        /// Chunk length.
        len: u64,
        /// Fragment length.
        total: u64,
    },
    /// Chunks of one fragment disagree.
    #[error("the peer sent chunks of fragment {seq} that disagree ({what})")]
    Inconsistent {
        /// Fragment.
        seq: u64,
        /// What differs.
        what: &'static str,
    },
    /// A sequence number too far ahead.
    #[error("the peer sent fragment {seq} while {next} is the next due (at most {ahead} ahead)")]
    TooFarAhead {
        /// Sent.
        seq: u64,
        /// Due.
        next: u64,
        /// Window.
        ahead: u64,
    },
    /// Too many bytes waiting.
    #[error("the peer sent more than {max} bytes ahead of what was delivered")]
    Window {
        /// The limit.
        max: u64,
    },
}

struct Partial {
    total: u64,
    end: bool,
    data: Vec<u8>,
    /// Chunks placed: offset → length.
    got: BTreeMap<u64, u64>,
    have: u64,
    seen: bool,
    failed: bool,
}

impl Partial {
    fn complete(&self) -> bool {
        self.failed || (self.seen && self.have == self.total)
    }
}

/// A fragment whose turn came.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// Its bytes; `end` when it ends its message.
    Data {
        /// Ends the message.
        end: bool,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The sender gave it up (`Record::Fail`): its message fails here.
    Failed {
        /// Ends the message.
        end: bool,
    },
}

/// Where a chunk's bytes go.
pub enum Place<'a> {
    /// Seen before (a chunk sent again): drop it.
    Duplicate,
    /// Copy the chunk here, then call [`Receiver::placed`].
    Into(&'a mut [u8]),
}

/// Delivered reassembly buffers a receiver keeps for the next fragments, at most.
const SPARE_MAX: usize = 2;

/// The largest delivered buffer a receiver keeps (bytes of capacity).
const SPARE_BYTES_MAX: usize = 8 << 20;

/// The receiving half of a bonded connection.
pub struct Receiver {
    cfg: ReceiverConfig,
    next: u64,
    pending: BTreeMap<u64, Partial>,
    pending_bytes: u64,
    acked: u64,
    /// Delivered buffers, reused for the next fragments (see [`Receiver::recycle`]).
    spare: Vec<Vec<u8>>,
}

/// A buffer of `len` bytes for a fragment's chunks: a delivered one when there is one (its
/// old bytes stay: the chunks cover every byte before the fragment is delivered, since
/// `place` refuses overlaps and `complete` counts the bytes placed), else a zeroed
/// allocation, whose pages the kernel commits as bytes land. Reusing a buffer skips the
/// zeroing and the page faults of a new one each time (`perf record` of 1 MiB streaming over
/// two rails: `memset` and page faults beside the copies).
fn spare_or_zeroed(spare: &mut Vec<Vec<u8>>, len: usize) -> Vec<u8> {
    match spare.pop() {
        Some(mut v) => {
            if v.len() >= len {
                v.truncate(len);
            } else {
                v.resize(len, 0);
            }
            v
        }
        None => vec![0; len],
    }
}

impl Receiver {
    /// An empty receiver.
    pub fn new(cfg: ReceiverConfig) -> Receiver {
        Receiver {
            cfg,
            next: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            acked: 0,
            spare: Vec::new(),
        }
    }

    /// Takes back a delivered fragment's buffer for the next fragments: at most
    /// `SPARE_MAX` of them, each of at most `SPARE_BYTES_MAX` bytes (the rest are freed).
    pub fn recycle(&mut self, data: Vec<u8>) {
        if self.spare.len() < SPARE_MAX && data.capacity() <= SPARE_BYTES_MAX {
            self.spare.push(data);
        }
    }

    /// The next fragment to deliver.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Bytes of fragments being reassembled or waiting.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// True when a chunk is a whole fragment whose turn it is, with nothing else waiting:
    /// the caller may deliver it from where it lies and call [`Receiver::delivered_whole`].
    pub fn is_next_whole(&self, seq: u64, offset: u64, len: u64, total: u64) -> bool {
        seq == self.next
            && offset == 0
            && len == total
            && total <= self.cfg.max_fragment
            && self.pending.is_empty()
    }

    /// The fragment [`Receiver::is_next_whole`] approved was delivered.
    pub fn delivered_whole(&mut self) {
        self.next += 1;
    }

    /// Where the chunk `offset..offset+len` of fragment `seq` goes, after checking it.
    pub fn place(
        &mut self,
        seq: u64,
        offset: u64,
        len: u64,
        total: u64,
        end: bool,
    ) -> Result<Place<'_>, ProtoError> {
        if total > self.cfg.max_fragment {
            return Err(ProtoError::TooLarge {
                total,
                max: self.cfg.max_fragment,
            });
        }
        if offset.checked_add(len).is_none_or(|e| e > total) || (len == 0 && total != 0) {
            return Err(ProtoError::OutOfRange { offset, len, total });
        }
        if seq < self.next {
            return Ok(Place::Duplicate);
        }
        if seq - self.next >= self.cfg.max_ahead {
            return Err(ProtoError::TooFarAhead {
                seq,
                next: self.next,
                ahead: self.cfg.max_ahead,
            });
        }
        if !self.pending.contains_key(&seq) {
            if self.pending_bytes + total > self.cfg.max_pending_bytes.max(self.cfg.max_fragment) {
                return Err(ProtoError::Window {
                    max: self.cfg.max_pending_bytes,
                });
            }
            self.pending_bytes += total;
            self.pending.insert(
                seq,
                Partial {
                    total,
                    end,
                    data: spare_or_zeroed(&mut self.spare, total as usize),
                    got: BTreeMap::new(),
                    have: 0,
                    seen: false,
                    failed: false,
                },
            );
        }
        let p = self.pending.get_mut(&seq).expect("inserted above");
        if p.total != total || p.end != end {
            return Err(ProtoError::Inconsistent {
                seq,
                what: "length or end flag",
            });
        }
        if p.failed {
            return Ok(Place::Duplicate);
        }
        if let Some(&l) = p.got.get(&offset) {
            if l == len {
                return Ok(Place::Duplicate);
            }
            return Err(ProtoError::Inconsistent {
                seq,
                what: "overlapping chunks",
            });
        }
        let before = p.got.range(..offset).next_back();
        let after = p.got.range(offset..).next();
        if before.is_some_and(|(&o, &l)| o + l > offset)
            || after.is_some_and(|(&o, _)| o < offset + len)
        {
            return Err(ProtoError::Inconsistent {
                seq,
                what: "overlapping chunks",
            });
        }
        let (o, l) = (offset as usize, len as usize);
        Ok(Place::Into(&mut p.data[o..o + l]))
    }

    /// The chunk [`Receiver::place`] gave a place for was copied there.
    pub fn placed(&mut self, seq: u64, offset: u64, len: u64) {
        if let Some(p) = self.pending.get_mut(&seq)
            && p.got.insert(offset, len).is_none()
        {
            p.have += len;
            p.seen = true;
        }
    }

    /// The sender gave fragment `seq` up.
    pub fn fail(&mut self, seq: u64) -> Result<(), ProtoError> {
        if seq < self.next {
            return Ok(());
        }
        if seq - self.next >= self.cfg.max_ahead {
            return Err(ProtoError::TooFarAhead {
                seq,
                next: self.next,
                ahead: self.cfg.max_ahead,
            });
        }
        match self.pending.get_mut(&seq) {
            Some(p) => {
                p.failed = true;
                self.pending_bytes -= p.total;
                p.total = 0;
                p.data = Vec::new();
            }
            None => {
                // Its end flag is unknown: a failed fragment ends its message (the sender
                // fails the whole message).
                self.pending.insert(
                    seq,
                    Partial {
                        total: 0,
                        end: true,
                        data: Vec::new(),
                        got: BTreeMap::new(),
                        have: 0,
                        seen: true,
                        failed: true,
                    },
                );
            }
        }
        Ok(())
    }

    /// The next fragment, when its turn came and it is complete.
    pub fn pop(&mut self) -> Option<Ready> {
        let p = self.pending.get(&self.next)?;
        if !p.complete() {
            return None;
        }
        let p = self.pending.remove(&self.next).expect("present");
        self.next += 1;
        self.pending_bytes -= p.total;
        Some(if p.failed {
            Ready::Failed { end: p.end }
        } else {
            Ready::Data {
                end: p.end,
                data: p.data,
            }
        })
    }

    /// The acknowledgement owed, if fragments were delivered since the last one.
    pub fn ack_due(&mut self) -> Option<u64> {
        if self.next > self.acked {
            self.acked = self.next;
            return Some(self.next);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rx() -> Receiver {
        Receiver::new(ReceiverConfig {
            max_fragment: 1000,
            max_pending_bytes: 2000,
            max_ahead: 8,
        })
    }

    fn put(r: &mut Receiver, seq: u64, off: u64, bytes: &[u8], total: u64) -> bool {
        match r.place(seq, off, bytes.len() as u64, total, true).unwrap() {
            Place::Duplicate => false,
            Place::Into(d) => {
                d.copy_from_slice(bytes);
                r.placed(seq, off, bytes.len() as u64);
                true
            }
        }
    }

    #[test]
    fn out_of_order_chunks_make_fragments_delivered_in_order_once() {
        let mut r = rx();
        assert!(put(&mut r, 1, 0, b"xy", 2));
        assert!(put(&mut r, 0, 2, b"cd", 4));
        assert_eq!(r.pop(), None);
        assert!(put(&mut r, 0, 0, b"ab", 4));
        assert!(!put(&mut r, 0, 0, b"ab", 4), "a duplicate is dropped");
        assert_eq!(
            r.pop(),
            Some(Ready::Data {
                end: true,
                data: b"abcd".to_vec()
            })
        );
        assert_eq!(
            r.pop(),
            Some(Ready::Data {
                end: true,
                data: b"xy".to_vec()
            })
        );
        assert_eq!(r.ack_due(), Some(2));
        assert_eq!(r.ack_due(), None);
        assert!(
            !put(&mut r, 1, 0, b"xy", 2),
            "a late copy of a delivered fragment"
        );
        assert_eq!(r.pending_bytes(), 0);
    }

    /// Takes the next fragment's bytes and gives its buffer back, as the host does.
    fn deliver_and_recycle(r: &mut Receiver) -> (Vec<u8>, *const u8) {
        let Some(Ready::Data { data, .. }) = r.pop() else {
            panic!("a fragment is ready");
        };
        let (bytes, at) = (data.clone(), data.as_ptr());
        r.recycle(data);
        (bytes, at)
    }

    #[test]
    fn a_delivered_buffer_takes_the_next_fragment_with_none_of_its_old_bytes() {
        let mut r = rx();
        assert!(put(&mut r, 0, 0, b"0123456789", 10));
        let (first, at) = deliver_and_recycle(&mut r);
        assert_eq!(first, b"0123456789");
        // Shorter, in two chunks out of order: the same memory, only the new bytes.
        assert!(put(&mut r, 1, 3, b"xyz", 6));
        assert!(put(&mut r, 1, 0, b"abc", 6));
        let (second, again) = deliver_and_recycle(&mut r);
        assert_eq!(second, b"abcxyz");
        assert_eq!(again, at, "the delivered buffer was reused");
        // Longer than the kept buffer: it grows, and still holds only the new bytes.
        let long: Vec<u8> = (0..40).collect();
        assert!(put(&mut r, 2, 20, &long[20..], 40));
        assert!(put(&mut r, 2, 0, &long[..20], 40));
        assert_eq!(deliver_and_recycle(&mut r).0, long);
    }

    #[test]
    fn few_delivered_buffers_are_kept() {
        let mut r = rx();
        for _ in 0..SPARE_MAX + 3 {
            r.recycle(vec![1; 16]);
        }
        assert_eq!(r.spare.len(), SPARE_MAX);
        let mut r = rx();
        r.recycle(Vec::with_capacity(SPARE_BYTES_MAX + 1));
        assert!(r.spare.is_empty(), "a buffer over the size limit is freed");
    }

    #[test]
    fn hostile_chunks_are_refused() {
        let mut r = rx();
        assert!(matches!(
            r.place(0, 0, 1, 5000, true),
            Err(ProtoError::TooLarge { .. })
        ));
        assert!(matches!(
            r.place(0, 4, 2, 5, true),
            Err(ProtoError::OutOfRange { .. })
        ));
        assert!(matches!(
            r.place(0, u64::MAX, 2, 5, true),
            Err(ProtoError::OutOfRange { .. })
        ));
        assert!(matches!(
            r.place(8, 0, 1, 1, true),
            Err(ProtoError::TooFarAhead { .. })
        ));
        assert!(put(&mut r, 0, 0, b"ab", 10));
        assert!(matches!(
            r.place(0, 1, 2, 10, true),
            Err(ProtoError::Inconsistent { .. })
        ));
        assert!(matches!(
            r.place(0, 0, 3, 10, true),
            Err(ProtoError::Inconsistent { .. })
        ));
        assert!(matches!(
            r.place(0, 4, 2, 11, true),
            Err(ProtoError::Inconsistent { .. })
        ));
        assert!(put(&mut r, 1, 0, &[0; 991], 991));
        assert!(matches!(
            r.place(2, 0, 1, 1000, true),
            Err(ProtoError::Window { .. })
        ));
    }

    #[test]
    fn a_failed_fragment_is_reported_at_its_turn() {
        let mut r = rx();
        assert!(put(&mut r, 1, 0, b"z", 1));
        r.fail(0).unwrap();
        assert_eq!(r.pop(), Some(Ready::Failed { end: true }));
        assert!(matches!(r.pop(), Some(Ready::Data { .. })));
        r.fail(0).unwrap();
        assert_eq!(r.pop(), None);
    }

    proptest::proptest! {
        /// Whatever a peer sends (any sequence numbers, offsets, lengths, end flags and
        /// give-ups), the receiver never panics, never holds more than its window, and
        /// delivers sequence numbers in order.
        #[test]
        fn any_records_are_checked_without_panic(
            ops in proptest::collection::vec(
                (0u64..80, 0u64..3000, 0u64..1200, 0u64..3000, proptest::bool::ANY, proptest::bool::ANY),
                0..200,
            )
        ) {
            let mut r = Receiver::new(ReceiverConfig {
                max_fragment: 2500,
                max_pending_bytes: 6000,
                max_ahead: 64,
            });
            let mut delivered = 0u64;
            for (seq, offset, len, total, end, give_up) in ops {
                if give_up {
                    let _ = r.fail(seq);
                } else if let Ok(Place::Into(dst)) = r.place(seq, offset, len, total, end) {
                    proptest::prop_assert_eq!(dst.len() as u64, len);
                    dst.fill(1);
                    r.placed(seq, offset, len);
                }
                proptest::prop_assert!(r.pending_bytes() <= 6000);
                while r.pop().is_some() {
                    delivered += 1;
                    proptest::prop_assert_eq!(r.next_seq(), delivered);
                }
            }
        }
    }
}
