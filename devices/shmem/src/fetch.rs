//! A large fragment read from the sender's memory: by one `process_vm_readv`, or shared
//! with the sender (`crate::coop`): the receiver reads chunks from the front while the
//! sender writes chunks from the back, and the fragment is whole once the sender's
//! completion word covers every chunk it claimed.

use std::sync::atomic::AtomicU64;

use crate::coop::{Bad, Finish, Receiving, Share};
use crate::io::{read_peer, read_peer_part};
use crate::wire::Record;

/// A fragment being read.
#[derive(Debug)]
pub struct Fetch {
    /// The fragment's record (RDV or RDV_END).
    pub rec: Record,
    /// Its bytes in the sender's memory.
    pub ranges: Vec<(u64, usize)>,
    /// The buffer it lands in, at `at`.
    pub buf: Vec<u8>,
    /// Where the fragment starts in `buf` (see `io::read_offset`).
    pub at: usize,
    /// The share, when the copy is shared.
    share: Option<Receiving>,
    /// Chunks the next claim asks for.
    want: u64,
    /// Bytes this side read so far (the poll's single-copy budget counts them).
    pub read: usize,
    /// Every byte is in the buffer (a complete fetch waiting for a receive IRB is not read
    /// again).
    complete: bool,
}

/// Where a fetch stands after a step.
#[derive(Debug)]
pub enum Step {
    /// Every byte is in the buffer.
    Complete,
    /// The sender is still writing its last chunk: step again at the next poll.
    Waiting,
    /// This side's read failed (the reason); the sender is asked to send inline. `reusable`
    /// says whether the buffer may go back to the pool (nothing the sender claimed is still
    /// being written).
    Failed {
        /// What failed.
        why: String,
        /// The buffer may be reused.
        reusable: bool,
    },
    /// The peer broke the share's protocol; the connection ends. The buffer is reusable
    /// only when `reusable`.
    Broken {
        /// What was wrong.
        bad: Bad,
        /// The buffer may be reused.
        reusable: bool,
    },
}

impl Fetch {
    /// A fetch of fragment `rec` from `ranges` into `buf` at `at`, shared with the sender
    /// when `share` is given: opened here as generation `era` (the buffer's address goes
    /// into the share, so the sender writes its chunks there).
    pub fn new(
        rec: Record,
        ranges: Vec<(u64, usize)>,
        mut buf: Vec<u8>,
        at: usize,
        share: Option<(&Share<'_, AtomicU64>, u32)>,
    ) -> Fetch {
        let len = rec.len as u64;
        let share = share.map(|(s, era)| {
            let dst = buf[at..].as_mut_ptr() as u64;
            Receiving::open(s, era, rec.id, dst, len)
        });
        let want = share.as_ref().map_or(0, Receiving::first_claim);
        Fetch {
            rec,
            ranges,
            buf,
            at,
            share,
            want,
            read: 0,
            complete: false,
        }
    }

    /// Chunks of a shared copy the sender claimed (0 when not shared).
    pub fn sender_chunks(&self) -> u64 {
        self.share.as_ref().map_or(0, Receiving::sender_chunks)
    }

    /// Whether the copy is shared.
    pub fn shared(&self) -> bool {
        self.share.is_some()
    }

    fn read(&mut self, pid: i32, from: u64, to: u64) -> Result<(), String> {
        let (from, to) = (from as usize, to as usize);
        let local = &mut self.buf[self.at + from..self.at + to];
        let got = if from == 0 && to == self.rec.len as usize {
            read_peer(pid, &self.ranges, local)
        } else {
            read_peer_part(pid, &self.ranges, from, to, local)
        };
        match got {
            Ok(n) if n == to - from => {
                self.read += n;
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    }

    /// Reads what this side can: the whole fragment, or its chunks of the share (`s`, the
    /// ring's), then looks at the sender's.
    pub fn step(&mut self, pid: i32, s: &Share<'_, AtomicU64>) -> Step {
        let step = self.advance(pid, s);
        self.complete = matches!(step, Step::Complete);
        step
    }

    fn advance(&mut self, pid: i32, s: &Share<'_, AtomicU64>) -> Step {
        if self.complete {
            return Step::Complete;
        }
        if self.share.is_none() {
            let len = self.rec.len as u64;
            return match self.read(pid, 0, len) {
                Ok(()) => Step::Complete,
                Err(why) => Step::Failed {
                    why,
                    reusable: true,
                },
            };
        };
        loop {
            let want = self.want;
            let claimed = self.receiving().claim(s, want);
            match claimed {
                Ok(Some(bytes)) => {
                    self.want = 1;
                    if let Err(why) = self.read(pid, bytes.start, bytes.end) {
                        return self.fail(s, why);
                    }
                }
                Ok(None) => break,
                Err(bad) => return self.broken(s, bad),
            }
        }
        let finished = self.receiving().finish(s);
        match finished {
            Ok(Finish::Complete) => Step::Complete,
            Ok(Finish::Waiting) => Step::Waiting,
            Ok(Finish::Redo(bytes)) => match self.read(pid, bytes.start, bytes.end) {
                Ok(()) => Step::Complete,
                Err(why) => self.fail(s, why),
            },
            Err(bad) => self.broken(s, bad),
        }
    }

    fn receiving(&mut self) -> &mut Receiving {
        self.share.as_mut().expect("a shared fetch")
    }

    fn fail(&mut self, s: &Share<'_, AtomicU64>, why: String) -> Step {
        let reusable = self.seal(s);
        Step::Failed { why, reusable }
    }

    fn broken(&mut self, s: &Share<'_, AtomicU64>, bad: Bad) -> Step {
        let reusable = self.seal(s);
        Step::Broken { bad, reusable }
    }

    /// Ends the share early (the fetch is dropped): true when the buffer may be reused (the
    /// sender writes nothing more into it).
    pub fn seal(&mut self, s: &Share<'_, AtomicU64>) -> bool {
        self.share.as_mut().is_none_or(|r| r.seal(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::RDV_END;

    /// A fetch that completed (and waits on its connection for a receive IRB) is not read
    /// again at its next step: what the sender's memory holds by then does not matter.
    #[test]
    fn a_complete_fetch_is_never_read_again() {
        let words: [AtomicU64; 5] = std::array::from_fn(|_| AtomicU64::new(0));
        let [claims, done, dst, shape, id] = &words;
        let share = Share {
            claims,
            done,
            dst,
            shape,
            id,
        };
        let me = std::process::id() as i32;
        for shared in [false, true] {
            let mut src: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
            let rec = Record {
                kind: RDV_END,
                flags: 0,
                len: src.len() as u32,
                id: 1,
            };
            let ranges = vec![(src.as_ptr() as u64, src.len())];
            let buf = vec![0u8; src.len()];
            let mut f = Fetch::new(rec, ranges, buf, 0, shared.then_some((&share, 1)));
            assert!(
                matches!(f.step(me, &share), Step::Complete),
                "shared {shared}"
            );
            assert_eq!(f.buf, src);
            assert_eq!(f.read, src.len());
            let first = src.clone();
            src.iter_mut().for_each(|b| *b = 0xEE);
            assert!(matches!(f.step(me, &share), Step::Complete));
            assert_eq!(f.read, src.len(), "shared {shared}: read again");
            assert!(f.buf == first, "shared {shared}: the buffer changed");
        }
    }
}
