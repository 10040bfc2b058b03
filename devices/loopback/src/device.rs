//! The loopback device.

use std::collections::{HashMap, VecDeque};
use std::ffi::CStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vmi_device::Status;
use vmi_device::signature::Signature;
use vmi_device::{
    Capabilities, CompletingIrb, Config, ConnMap, Device, DeviceKind, Disposition, Host, HostWaker,
    Irb, Op,
};

use crate::config::{LoopbackConfig, PARAMS};
use crate::wire::Message;

/// One process-local endpoint, found by key.
struct Endpoint {
    inbox: Mutex<VecDeque<Message>>,
    waker: HostWaker,
    /// False once the endpoint's device is gone (a peer may still hold the `Arc`).
    alive: std::sync::atomic::AtomicBool,
    /// Messages pushed and not yet taken: an idle poll reads this instead of locking.
    queued: std::sync::atomic::AtomicUsize,
}

impl Endpoint {
    /// Queues a message (the caller wakes the owner).
    fn push(&self, msg: Message) {
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        inbox.push_back(msg);
        self.queued
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Takes the next message, if any; an empty inbox costs one load, no lock.
    fn pop(&self) -> Option<Message> {
        if self.queued.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return None;
        }
        let msg = self
            .inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()?;
        self.queued
            .fetch_sub(1, std::sync::atomic::Ordering::Release);
        Some(msg)
    }

    fn is_empty(&self) -> bool {
        self.queued.load(std::sync::atomic::Ordering::Acquire) == 0
    }
}

fn registry() -> &'static Mutex<HashMap<String, Arc<Endpoint>>> {
    static R: OnceLock<Mutex<HashMap<String, Arc<Endpoint>>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Payload buffers shared by all endpoints: what one side takes to send, the receiving side
/// gives back on release, so one-way traffic allocates nothing in the steady state.
fn pool() -> &'static Mutex<Vec<Vec<u8>>> {
    static P: OnceLock<Mutex<Vec<Vec<u8>>>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(Vec::new()))
}

/// Buffers kept: a full inbox plus what a receiver holds, so a burst recycles everything.
const POOL_KEEP: usize = 8192;

/// Messages an endpoint's inbox holds before senders to it wait (their sends pend and go on
/// from `poll`): a receiver that does not poll costs bounded memory.
const INBOX_LIMIT: usize = 4096;
/// How long a close waits for the peer's close in answer (a peer that stopped polling).
const CLOSE_WAIT: Duration = Duration::from_secs(5);
const POOL_MAX_BYTES: usize = 1 << 20;

fn take_buffer(len: usize) -> Vec<u8> {
    let mut v = pool()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_default();
    v.clear();
    v.reserve(len);
    v
}

fn give_buffer(v: Vec<u8>) {
    if v.capacity() <= POOL_MAX_BYTES {
        let mut p = pool().lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < POOL_KEEP {
            p.push(v);
        }
    }
}

/// This side's view of a connection.
struct Link {
    peer_key: String,
    /// The peer's endpoint, resolved when the connection was made (no look-up per message).
    peer: Option<Arc<Endpoint>>,
    /// The peer's handle for it (0 until the peer answered).
    peer_conn: u64,
    /// The connect IRB waiting for the answer.
    connect: Option<Irb>,
    /// This side's Disconnect, waiting for the peer's close in answer (its last messages,
    /// the notices of failed messages among them, come first), and when it gives up.
    closing: Option<(Irb, Instant)>,
    /// The peer closed first: answer with this side's close once the host has released the
    /// report of it (`released`), after the host's last sends.
    answer_close: bool,
    /// The host released the PEER_DISCONNECT report (`peer_close_released`):
    /// every fragment before the close, and what the host sent in answer to them (notices of
    /// failed messages, over as many polls as it took), went first.
    released: bool,
}

/// Per-IRB frame: which received payload the IRB points at (index + 1, 0 for none).
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct LoopFrame {
    held: u32,
}

/// In-process transport.
pub struct LoopbackDevice {
    host: Host,
    key: String,
    me: Arc<Endpoint>,
    config: LoopbackConfig,
    links: ConnMap<Link>,
    held: Vec<Option<Vec<u8>>>,
    free_held: Vec<u32>,
    signature: Signature,
    /// Sends waiting for room in their peer's inbox, in order.
    blocked: VecDeque<Irb>,
    /// Disconnects waiting in `blocked` behind their connections' sends.
    closes_blocked: usize,
    /// Links closing (see `close_link`, `run_closes`).
    closes: Vec<u64>,
}

impl LoopbackDevice {
    fn endpoint(key: &str) -> Option<Arc<Endpoint>> {
        registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn post(&self, key: &str, msg: Message) -> bool {
        match Self::endpoint(key) {
            Some(ep) => {
                ep.push(msg);
                ep.waker.wake();
                true
            }
            None => false,
        }
    }

    /// Posts a send to its peer's inbox and completes it, or gives it back when the inbox is
    /// full.
    fn try_send(&mut self, mut irb: Irb) -> Result<Disposition, Irb> {
        let Some(link) = self.links.get(&irb.conn()) else {
            irb.set_detail("connection closed");
            return Ok(Disposition::Complete(irb, Status::ConnectionLost));
        };
        let Some(ep) = link
            .peer
            .clone()
            .filter(|ep| ep.alive.load(std::sync::atomic::Ordering::Acquire))
        else {
            irb.set_detail("the peer endpoint is gone");
            return Ok(Disposition::Complete(irb, Status::ConnectionLost));
        };
        let mut inbox = ep.inbox.lock().unwrap_or_else(|e| e.into_inner());
        if inbox.len() >= INBOX_LIMIT {
            return Err(irb);
        }
        let mut payload = take_buffer(irb.data_len());
        for i in 0..irb.segments().len() {
            payload.extend_from_slice(irb.segment(i));
        }
        inbox.push_back(Message::Data {
            to: link.peer_conn,
            flags: irb.flags(),
            payload,
        });
        ep.queued.fetch_add(1, std::sync::atomic::Ordering::Release);
        drop(inbox);
        ep.waker.wake();
        Ok(Disposition::Complete(irb, Status::Ok))
    }

    /// Closes a connection in order: the peer hears after everything sent before.
    /// The close waits for the peer's close in answer, so what the peer still sends (its
    /// host's notices of failed messages) arrives first; it completes at once when there is
    /// no peer to answer.
    fn close_link(&mut self, conn: u64, irb: Irb) {
        let Some(link) = self.links.get_mut(&conn) else {
            return irb.complete(Status::Ok);
        };
        let told = link.peer_conn != 0 && {
            let msg = Message::Close {
                to: link.peer_conn,
                lost: false,
            };
            let key = link.peer_key.clone();
            self.post(&key, msg)
        };
        let Some(link) = self.links.get_mut(&conn) else {
            return irb.complete(Status::Ok);
        };
        if !told || link.answer_close {
            // Nobody to answer, or the peer closed first (its close is in): done.
            if link.answer_close {
                self.closes.retain(|&c| c != conn);
            }
            self.links.remove(&conn);
            return irb.complete(Status::Ok);
        }
        link.closing = Some((irb, Instant::now() + CLOSE_WAIT));
        self.closes.push(conn);
    }

    /// Links closing: answers the peer's close after the host's last sends, and ends a close
    /// whose answer did not come in time.
    fn run_closes(&mut self) -> usize {
        let now = Instant::now();
        let mut n = 0;
        for conn in std::mem::take(&mut self.closes) {
            let Some(link) = self.links.get_mut(&conn) else {
                continue;
            };
            if link.answer_close {
                if !link.released || self.blocked.iter().any(|b| b.conn() == conn) {
                    self.closes.push(conn);
                    continue;
                }
                let (key, to) = (link.peer_key.clone(), link.peer_conn);
                self.links.remove(&conn);
                self.post(&key, Message::Close { to, lost: false });
                n += 1;
            } else if link.closing.as_ref().is_some_and(|(_, by)| now >= *by) {
                log::info!(
                    "loopback: '{}' did not answer this side's close within {} ms; closed",
                    link.peer_key,
                    CLOSE_WAIT.as_millis()
                );
                if let Some(Some((irb, _))) = self.links.remove(&conn).map(|l| l.closing) {
                    irb.complete(Status::Ok);
                }
                n += 1;
            } else {
                self.closes.push(conn);
            }
        }
        n
    }

    /// Sends blocked on a full inbox go on while there is room.
    fn unblock(&mut self) -> usize {
        let mut n = 0;
        while let Some(irb) = self.blocked.pop_front() {
            if self.closes_blocked > 0 && irb.op() == Op::Disconnect {
                // Its sends went ahead of it: the close follows them.
                self.closes_blocked -= 1;
                self.close_link(irb.conn(), irb);
                n += 1;
                continue;
            }
            match self.try_send(irb) {
                Ok(Disposition::Complete(irb, status)) => {
                    irb.complete(status);
                    n += 1;
                }
                Ok(Disposition::Pass(irb)) => irb.pass(),
                Ok(Disposition::Pending) => {}
                Err(irb) => {
                    self.blocked.push_front(irb);
                    break;
                }
            }
        }
        n
    }

    fn hold(&mut self, v: Vec<u8>) -> u32 {
        match self.free_held.pop() {
            Some(i) => {
                self.held[i as usize] = Some(v);
                i + 1
            }
            None => {
                self.held.push(Some(v));
                self.held.len() as u32
            }
        }
    }

    fn handle(&mut self, msg: Message) {
        match msg {
            Message::ConnectRequest {
                from_key,
                reply_to,
                signature,
                data,
            } => {
                let peer_sig = Signature::parse(&signature).unwrap_or_default();
                if let Err(why) = self.signature.check_peer(&self.key, &peer_sig, &from_key) {
                    log::warn!("loopback: refusing connection from '{from_key}': {why}");
                    self.post(
                        &from_key,
                        Message::ConnectReply {
                            to: reply_to,
                            peer_conn: 0,
                            status: Status::Mismatch.code(),
                            data: why.into_bytes(),
                        },
                    );
                    return;
                }
                let conn = self.host.conn_new();
                let Some(mut irb) = self.host.alloc_irb(Op::ConnectRequest, conn) else {
                    return;
                };
                self.links.insert(
                    conn,
                    Link {
                        peer_key: from_key.clone(),
                        peer: Self::endpoint(&from_key),
                        peer_conn: reply_to,
                        connect: None,
                        closing: None,
                        answer_close: false,
                        released: false,
                    },
                );
                irb.set_peer("loopback", &from_key);
                if irb.attach(&data).is_err() {
                    log::error!("loopback: could not attach connect data");
                }
                irb.pass();
            }
            Message::ConnectReply {
                to,
                peer_conn,
                status,
                data,
            } => {
                let Some(link) = self.links.get_mut(&to) else {
                    return;
                };
                link.peer_conn = peer_conn;
                let Some(mut irb) = link.connect.take() else {
                    return;
                };
                let status = Status::from_code(status);
                irb.clear_segments();
                if status == Status::Mismatch {
                    irb.set_detail(&String::from_utf8_lossy(&data));
                } else if irb.attach(&data).is_err() {
                    log::error!("loopback: could not attach reply data");
                }
                if status != Status::Ok {
                    self.links.remove(&to);
                }
                irb.complete(status);
            }
            Message::Data { to, flags, payload } => {
                if !self.links.contains_key(&to) {
                    give_buffer(payload);
                    return;
                }
                let Some(mut irb) = self.host.alloc_irb(Op::Recv, to) else {
                    give_buffer(payload);
                    return;
                };
                irb.set_flags(flags);
                let (ptr, len) = (payload.as_ptr() as *mut u8, payload.len());
                let slot = self.hold(payload);
                irb.frame::<LoopFrame>().held = slot;
                // The payload stays in `held` until the completion step below releases it.
                let _ = push(&mut irb, ptr, len);
                irb.pass();
            }
            Message::Close { to, lost } => {
                let Some(link) = self.links.get_mut(&to) else {
                    return;
                };
                if let Some((irb, _)) = link.closing.take() {
                    // The peer's answer to this side's close: everything it sent came first.
                    self.links.remove(&to);
                    self.closes.retain(|&c| c != to);
                    return irb.complete(Status::Ok);
                }
                if lost {
                    self.links.remove(&to);
                } else if !link.answer_close {
                    // The peer closed first: this side answers once its host has released
                    // the report (`peer_close_released`), after its last sends (notices of
                    // the peer's failed messages, which may take it several polls).
                    link.answer_close = true;
                    self.closes.push(to);
                }
                let (status, detail) = if lost {
                    (Status::ConnectionLost, "the peer aborted the connection")
                } else {
                    (Status::Ok, "")
                };
                if !self.host.report_peer_disconnect(to, status, detail)
                    && let Some(link) = self.links.get_mut(&to)
                {
                    // No report to wait for: answer at the next poll.
                    link.released = true;
                }
            }
        }
    }
}

#[allow(unsafe_code)]
fn push(irb: &mut Irb, ptr: *mut u8, len: usize) -> bool {
    // SAFETY: the payload is kept in the device's `held` table until the IRB's completion
    // step, and a Vec's heap buffer does not move when the Vec itself is moved.
    unsafe { irb.push_segment(ptr, len) }
}

impl Device for LoopbackDevice {
    const NAME: &'static CStr = c"loopback";
    const VERSION: &'static CStr = c"0.1.0";
    const DESCRIPTION: &'static CStr =
        c"in-process transport between Vmi instances of one process (tests, benchmarks)";
    const KIND: DeviceKind = DeviceKind::Transport;
    const PARAMS: &'static [vmi_device::abi::VmiParamSpec] = PARAMS;
    type Frame = LoopFrame;

    fn create(host: Host, config: &Config) -> Result<Self, String> {
        let config = LoopbackConfig::from_config(config)?;
        let key = host.local_key();
        let signature = Signature::parse(&host.signature()).unwrap_or_default();
        let me = Arc::new(Endpoint {
            inbox: Mutex::new(VecDeque::with_capacity(1024)),
            waker: host.waker(),
            alive: std::sync::atomic::AtomicBool::new(true),
            queued: std::sync::atomic::AtomicUsize::new(0),
        });
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if reg.contains_key(&key) {
            return Err(format!(
                "key '{key}' is already used by another loopback device in this process; give each Vmi its own key"
            ));
        }
        reg.insert(key.clone(), me.clone());
        Ok(LoopbackDevice {
            host,
            key,
            me,
            config,
            links: ConnMap::new(),
            held: Vec::with_capacity(1024),
            free_held: Vec::with_capacity(1024),
            blocked: VecDeque::new(),
            closes_blocked: 0,
            closes: Vec::new(),
            signature,
        })
    }

    fn capabilities(&self, _below: Capabilities) -> Capabilities {
        Capabilities {
            max_fragment: self.config.max_fragment,
            headroom: 0,
            tailroom: 0,
            max_connect_data: 64 * 1024,
        }
    }

    fn reach(&mut self, _host: &str, key: &str) -> Result<(), String> {
        if Self::endpoint(key).is_some() {
            Ok(())
        } else {
            Err(format!(
                "no loopback endpoint with key '{key}' in this process"
            ))
        }
    }

    fn submit(&mut self, mut irb: Irb) -> Disposition {
        let conn = irb.conn();
        match irb.op() {
            Op::Connect => {
                let (_, key) = irb.peer();
                let data = irb
                    .segments()
                    .first()
                    .map(|_| irb.segment(0).to_vec())
                    .unwrap_or_default();
                let msg = Message::ConnectRequest {
                    from_key: self.key.clone(),
                    reply_to: conn,
                    signature: self.signature.encode(),
                    data,
                };
                if !self.post(&key, msg) {
                    irb.set_detail(&format!(
                        "no loopback endpoint with key '{key}' in this process"
                    ));
                    return Disposition::Complete(irb, Status::Unreachable);
                }
                self.links.insert(
                    conn,
                    Link {
                        peer: Self::endpoint(&key),
                        peer_key: key,
                        peer_conn: 0,
                        connect: Some(irb),
                        closing: None,
                        answer_close: false,
                        released: false,
                    },
                );
                Disposition::Pending
            }
            Op::Accept | Op::Reject => {
                let Some(link) = self.links.get(&conn) else {
                    return Disposition::Complete(irb, Status::Invalid);
                };
                let data: Vec<u8> = (0..irb.segments().len())
                    .flat_map(|i| irb.segment(i).to_vec())
                    .collect();
                let accepted = irb.op() == Op::Accept;
                let status = if accepted {
                    Status::Ok
                } else {
                    Status::Rejected
                };
                let (peer_key, to) = (link.peer_key.clone(), link.peer_conn);
                self.post(
                    &peer_key,
                    Message::ConnectReply {
                        to,
                        peer_conn: conn,
                        status: status.code(),
                        data,
                    },
                );
                if !accepted {
                    self.links.remove(&conn);
                }
                Disposition::Complete(irb, Status::Ok)
            }
            Op::Send => {
                if !self.blocked.is_empty() {
                    // Earlier sends wait for room: keep the order.
                    self.blocked.push_back(irb);
                    return Disposition::Pending;
                }
                match self.try_send(irb) {
                    Ok(d) => d,
                    Err(irb) => {
                        self.blocked.push_back(irb);
                        Disposition::Pending
                    }
                }
            }
            Op::Disconnect => {
                if self.blocked.iter().any(|b| b.conn() == conn) {
                    // Sends issued before it wait for room: it closes after them, in order.
                    self.closes_blocked += 1;
                    self.blocked.push_back(irb);
                    return Disposition::Pending;
                }
                self.close_link(conn, irb);
                Disposition::Pending
            }
            Op::Abort => {
                // Sends of this connection waiting for room end here; the others keep their
                // order.
                let (status, why) = irb.abort_reason();
                let (mine, others): (VecDeque<Irb>, VecDeque<Irb>) =
                    std::mem::take(&mut self.blocked)
                        .into_iter()
                        .partition(|b| b.conn() == conn);
                self.blocked = others;
                self.closes_blocked = self
                    .blocked
                    .iter()
                    .filter(|b| b.op() == Op::Disconnect)
                    .count();
                for mut b in mine {
                    b.set_detail(&why);
                    b.complete(status);
                }
                self.closes.retain(|&c| c != conn);
                if let Some(link) = self.links.remove(&conn) {
                    if let Some(c) = link.connect {
                        c.complete(Status::Cancelled);
                    }
                    if let Some((mut c, _)) = link.closing {
                        c.set_detail(&why);
                        c.complete(status);
                    }
                    if link.peer_conn != 0 {
                        self.post(
                            &link.peer_key,
                            Message::Close {
                                to: link.peer_conn,
                                lost: true,
                            },
                        );
                    }
                }
                // The host completes it after what it ended (queued in this call), so the
                // application hears of those sends first, then of the end.
                Disposition::Complete(irb, Status::Ok)
            }
            _ => Disposition::Complete(irb, Status::Invalid),
        }
    }

    fn complete(&mut self, irb: &mut CompletingIrb) {
        let held = std::mem::take(&mut irb.frame::<LoopFrame>().held);
        if held > 0 {
            if let Some(v) = self.held[(held - 1) as usize].take() {
                give_buffer(v);
            }
            self.free_held.push(held - 1);
        }
    }

    fn peer_close_released(&mut self, conn: u64) {
        // What the host sent in answer to the peer's last messages is queued: the close is
        // answered at the next poll.
        if let Some(link) = self.links.get_mut(&conn) {
            link.released = true;
        }
    }

    fn wait_fd(&self) -> (Option<std::os::fd::RawFd>, Option<std::time::Duration>) {
        // No descriptor of its own: peers ring the host's doorbell. Pending messages mean
        // "do not sleep".
        // Sends blocked on a full inbox are retried at every poll (the peer rings no bell when
        // it takes from it); received messages wait for a receive IRB, and a release of one
        // rings the host's doorbell.
        let ready = !self.blocked.is_empty()
            || (!self.inbox_empty() && self.host.irbs_available() > 0)
            || self.closes.iter().any(|c| {
                self.links
                    .get(c)
                    .is_some_and(|l| l.answer_close && l.released)
            });
        if ready {
            return (None, Some(Duration::ZERO));
        }
        // A close waiting for the peer's answer gives up at its deadline.
        let now = Instant::now();
        let due = self
            .closes
            .iter()
            .filter_map(|c| self.links.get(c)?.closing.as_ref().map(|(_, by)| *by))
            .min()
            .map(|by| by.saturating_duration_since(now));
        (None, due)
    }

    #[inline]
    fn poll(&mut self, budget: usize) -> usize {
        // The empty poll is two loads; the work is out of line, so this stays a leaf.
        if self.blocked.is_empty() && self.me.is_empty() && self.closes.is_empty() {
            return 0;
        }
        self.poll_work(budget)
    }
}

impl LoopbackDevice {
    #[inline(never)]
    fn poll_work(&mut self, budget: usize) -> usize {
        let mut n = if self.blocked.is_empty() {
            0
        } else {
            self.unblock()
        };
        if !self.closes.is_empty() {
            n += self.run_closes();
        }
        if self.me.is_empty() {
            return n;
        }
        // One message needs at most one receive IRB: take none the host cannot give. The host
        // is asked once per poll; only this loop takes receive IRBs meanwhile.
        let credit = budget.min(self.host.irbs_available() as usize);
        for _ in 0..credit {
            let Some(msg) = self.me.pop() else { break };
            self.handle(msg);
            n += 1;
        }
        n
    }

    fn inbox_empty(&self) -> bool {
        self.me.is_empty()
    }
}

impl Drop for LoopbackDevice {
    fn drop(&mut self) {
        self.me
            .alive
            .store(false, std::sync::atomic::Ordering::Release);
        for irb in self.blocked.drain(..) {
            irb.complete(Status::Cancelled);
        }
        for (_, link) in self.links.drain() {
            if link.peer_conn != 0
                && let Some(ep) = Self::endpoint(&link.peer_key)
            {
                ep.push(Message::Close {
                    to: link.peer_conn,
                    lost: false,
                });
                ep.waker.wake();
            }
            if let Some(irb) = link.connect {
                irb.complete(Status::Cancelled);
            }
            if let Some((irb, _)) = link.closing {
                irb.complete(Status::Ok);
            }
        }
        registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}
