//! A pool of threads serving requests that arrive on one `Vmi` (QNX's thread pool on a
//! channel): the handler hands each request to the pool, worker threads run the
//! application's function on it, highest priority first, and their answers go back to the
//! polling thread, which sends them ([`RequestPool::flush`]); a worker's answer wakes the
//! polling thread's `wait`.
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crossbeam_queue::SegQueue;

use super::{ReceiveId, Request, Sender};
use crate::conn::ConnId;
use crate::error::VmiError;
use crate::ops::Operations;
use crate::vmi::VmiWaker;

/// A request taken out of the request callback (owned: it may cross threads or wait for
/// a worker, a task or a later answer).
#[derive(Clone, Debug)]
pub struct OwnedRequest {
    /// Its receive id.
    pub id: ReceiveId,
    /// The connection it came on.
    pub conn: ConnId,
    /// Who sent it.
    pub sender: Sender,
    /// Its priority.
    pub priority: u8,
    /// The most reply bytes the client takes.
    pub reply_max: usize,
    /// The request.
    pub data: Vec<u8>,
}

impl From<&mut Request<'_>> for OwnedRequest {
    /// Copies the request's bytes out of the callback's slab.
    fn from(r: &mut Request<'_>) -> OwnedRequest {
        OwnedRequest {
            id: r.id,
            conn: r.conn,
            sender: r.sender.clone(),
            priority: r.priority,
            reply_max: r.reply_max,
            data: r.data.read_to_vec(),
        }
    }
}

/// A worker's answer: a status value and reply bytes, or an error code (QNX `MsgError`).
pub type PoolAnswer = Result<(i32, Vec<u8>), i32>;

/// Requests waiting for a worker, highest priority first, then in arrival order.
struct Jobs {
    heap: BinaryHeap<(u8, Reverse<u64>, Job)>,
    seq: u64,
    closed: bool,
}

/// A queued request (ordered by the tuple's first fields only).
struct Job(OwnedRequest);

impl PartialEq for Job {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}
impl Eq for Job {}
impl PartialOrd for Job {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Job {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.id.0.cmp(&other.0.id.0)
    }
}

struct Shared {
    jobs: Mutex<Jobs>,
    ready: Condvar,
    answers: SegQueue<(ReceiveId, PoolAnswer)>,
    waker: VmiWaker,
}

/// Threads serving requests of one `Vmi`. [`RequestPool::shutdown`] stops the workers once
/// their current requests are done, sends their answers and answers the requests still
/// queued with [`ECANCELED`]; dropping the pool stops them too but sends nothing (the
/// clients' deadlines, or the end of their connections, answer those requests).
pub struct RequestPool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// QNX's `ECANCELED`: the answer to requests still queued when the pool stops.
pub const ECANCELED: i32 = 125;

impl RequestPool {
    /// Starts `threads` workers (at least one) running `serve` on each request; `waker`
    /// is the serving `Vmi`'s ([`crate::Vmi::waker`]).
    pub fn new(
        threads: usize,
        waker: VmiWaker,
        serve: impl Fn(&OwnedRequest) -> PoolAnswer + Send + Sync + 'static,
    ) -> RequestPool {
        let shared = Arc::new(Shared {
            jobs: Mutex::new(Jobs {
                heap: BinaryHeap::new(),
                seq: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            answers: SegQueue::new(),
            waker,
        });
        let serve = Arc::new(serve);
        let threads = (0..threads.max(1))
            .map(|i| {
                let (shared, serve) = (shared.clone(), serve.clone());
                std::thread::Builder::new()
                    .name(format!("vmi-pool-{i}"))
                    .spawn(move || work(&shared, &*serve))
                    .expect("a pool thread (the process is out of threads)")
            })
            .collect();
        RequestPool { shared, threads }
    }

    /// Hands a request to the workers (call it from [`crate::Handler::request`]).
    pub fn submit(&self, request: &mut Request<'_>) {
        let job = OwnedRequest::from(request);
        let mut jobs = lock(&self.shared.jobs);
        jobs.seq += 1;
        let seq = jobs.seq;
        jobs.heap.push((job.priority, Reverse(seq), Job(job)));
        drop(jobs);
        self.shared.ready.notify_one();
    }

    /// Sends the answers the workers finished (call it from the polling thread after each
    /// `poll` or `wait`); returns how many. An answer that cannot be sent (its client gave
    /// up meanwhile, or the reply is over its size) is logged and dropped.
    pub fn flush(&self, ops: &mut impl Operations) -> usize {
        let mut n = 0;
        while let Some((id, answer)) = self.shared.answers.pop() {
            let r: Result<(), VmiError> = match answer {
                Ok((status, data)) => ops.reply(id, status, &[&data]),
                Err(code) => ops.reply_error(id, code),
            };
            if let Err(e) = r {
                log::info!("a pool worker's answer to {id} was not sent: {e}");
            }
            n += 1;
        }
        n
    }

    /// Requests waiting for a worker.
    pub fn queued(&self) -> usize {
        lock(&self.shared.jobs).heap.len()
    }

    /// Stops the workers (after their current requests), answers the requests still
    /// queued with [`ECANCELED`] and sends every answer; returns how many were sent.
    pub fn shutdown(mut self, ops: &mut impl Operations) -> usize {
        for id in self.stop() {
            self.shared.answers.push((id, Err(ECANCELED)));
        }
        self.flush(ops)
    }

    /// Closes the queue, joins the workers and returns the requests no worker took.
    fn stop(&mut self) -> Vec<ReceiveId> {
        let mut jobs = lock(&self.shared.jobs);
        jobs.closed = true;
        let left = jobs.heap.drain().map(|(_, _, Job(r))| r.id).collect();
        drop(jobs);
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("a request pool worker panicked");
            }
        }
        left
    }
}

impl Drop for RequestPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A lock that survives a worker's panic (the queue stays consistent: it is changed only
/// under the lock, in single steps).
fn lock(m: &Mutex<Jobs>) -> std::sync::MutexGuard<'_, Jobs> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn work(shared: &Shared, serve: &(dyn Fn(&OwnedRequest) -> PoolAnswer + Send + Sync)) {
    loop {
        let job = {
            let mut jobs = lock(&shared.jobs);
            loop {
                if let Some((_, _, Job(r))) = jobs.heap.pop() {
                    break r;
                }
                if jobs.closed {
                    return;
                }
                jobs = shared.ready.wait(jobs).unwrap_or_else(|p| p.into_inner());
            }
        };
        let answer = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(&job))) {
            Ok(a) => a,
            Err(_) => {
                log::error!(
                    "a request pool worker panicked serving {}; answered with EIO",
                    job.id
                );
                Err(5)
            }
        };
        shared.answers.push((job.id, answer));
        shared.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, priority: u8) -> OwnedRequest {
        OwnedRequest {
            id: ReceiveId(id),
            conn: ConnId(1),
            sender: Sender {
                key: "k".into(),
                host: "h".into(),
                uid: None,
            },
            priority,
            reply_max: 8,
            data: Vec::new(),
        }
    }

    #[test]
    fn workers_take_the_highest_priority_then_the_oldest() {
        let mut jobs = Jobs {
            heap: BinaryHeap::new(),
            seq: 0,
            closed: false,
        };
        for (id, p) in [(1, 0), (2, 5), (3, 0), (4, 9), (5, 5)] {
            jobs.seq += 1;
            jobs.heap.push((p, Reverse(jobs.seq), Job(job(id, p))));
        }
        let order: Vec<u64> =
            std::iter::from_fn(|| jobs.heap.pop().map(|(_, _, Job(r))| r.id.0)).collect();
        assert_eq!(order, vec![4, 2, 5, 1, 3]);
    }
}
