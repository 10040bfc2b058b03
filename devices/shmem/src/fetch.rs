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

    /// Reads what this side can: the whole fragment, or its chunks of the share, then looks
    /// at the sender's.
    pub fn step(&mut self, pid: i32, share: Option<&Share<'_, AtomicU64>>) -> Step {
        let Some(s) = share.filter(|_| self.share.is_some()) else {
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
