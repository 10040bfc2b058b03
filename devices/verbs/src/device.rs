//! The verbs transport: a TCP side channel per connection carries the bootstrap (queue pair
//! addresses, keys, filter signature, connect data) and the close; the queue pair carries the
//! data as the [`crate::proto`] endpoint directs (eager SENDs into posted receive buffers under
//! credits, RDMA READ rendezvous for large fragments).
//!
//! Sends: a fragment up to the agreed eager limit is copied into a registered send slot and
//! SENT; a larger one is copied into a registered buffer the peer reads (one copy on each
//! side; the registration cache that will let the peer read the application's memory in
//! place is not built yet). The Send IRB completes when its SEND completed, or when the peer
//! said it finished reading.
//!
//! Receives: each completion of a receive slot goes through the endpoint, which checks
//! everything; the slot is reposted at once. Fragments go up in order, at most `budget` per
//! poll; completions stay in the completion queue while the budget is spent.
//!
//! Close: the side that closes waits until everything it sent is done, says `bye` with its
//! frame count, and lingers until the peer closes the side channel; the peer hands up every
//! frame before it reports the close. A side channel that ends without a `bye`, or an error
//! completion, loses the connection.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use vmi_device::abi::{VmiRdmaKey, VmiSeg};
use vmi_device::auth::{self, AuthKey, Role, Transcript};
use vmi_device::deliver;
use vmi_device::dial::{Dial, probe_ports, split_host_port};
use vmi_device::held::HeldBuffers;
use vmi_device::regcache::RegCache;
use vmi_device::{
    Capabilities, CompletingIrb, Config, Device, DeviceKind, Disposition, Host, Irb, Op, Status,
};

use crate::bootstrap::{self, Answer, Control, Hello, QpInfo};
use crate::config::{NicKind, PARAMS, VerbsConfig};
use crate::conn::{
    Attempt, Conn, Qp, READ_BUDGET, Stage, Staged, Up, WR_RDMA, WR_READ, WR_RECV, WR_SEND, wr_id,
    wr_parts,
};
use crate::ibv::{IbvNic, IbvOptions};
use crate::nic::{Access, Address, Completion, Mr, Nic, Remote, RemoteMem, Sge};
use crate::proto::{self, Action, Endpoint, Fragment, SendError};
use crate::sim::SimNic;
use crate::wire::Meta;

const LISTENER: Token = Token(0);
const NIC: Token = Token(1);
/// Largest side-channel message (a hello with the longest keys, signature and data).
const MAX_SIDE: usize = bootstrap::HELLO_FIXED
    + 2 * bootstrap::MAX_KEY
    + bootstrap::MAX_SIGNATURE
    + bootstrap::MAX_DATA
    + bootstrap::MAX_REASON;
/// How long a closed connection waits for the peer to close the side channel.
const LINGER: Duration = Duration::from_secs(5);
/// Completions taken per call.
const BATCH: usize = 32;

/// A read fragment the host holds: its buffer and where it came from.
struct Big {
    idx: usize,
    qpn: u32,
    domain: u32,
    staged: Staged,
}

/// Per-IRB frame: the received buffer an IRB holds until its completion step.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
#[repr(C)]
pub struct VerbsFrame {
    /// An eager fragment's handle in `held` (0: none).
    held: u32,
    /// A read fragment's handle in `big` (0: none).
    big: u32,
}

/// The verbs transport.
pub struct VerbsDevice {
    host: Host,
    cfg: VerbsConfig,
    nic: Box<dyn Nic>,
    local_key: String,
    signature: String,
    /// The pre-shared key peers must prove they hold, when this process authenticates.
    auth: Option<AuthKey>,
    poll: Poll,
    events: Events,
    listener: Option<mio::net::TcpListener>,
    listen_port: u16,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    by_vmi: HashMap<u64, usize>,
    comps: Vec<Completion>,
    held: HeldBuffers,
    /// Read fragments handed up, until their IRB completes (then back to their connection's
    /// read pool, or released when it is gone).
    big: HashMap<u32, Big>,
    /// Domains of closed connections whose last read fragments the host still holds: how
    /// many.
    zombies: HashMap<u32, usize>,
    /// Why registrations are not cached, when they are not (for `vmi-info`).
    regcache_off: Option<String>,
    next_big: u32,
    next_read: u64,
    budget_left: usize,
    /// Completions may be waiting in the queue (the last poll stopped early).
    more: bool,
    nic_fired: bool,
    delivered: u64,
    /// Buffers the host registered for a peer's one-sided access (published), by id: the
    /// connection's index and the registration.
    published: HashMap<u32, (usize, Mr)>,
    next_published: u32,
    next_rdma: u64,
    /// One-sided transfers done (for `vmi-info` and tests).
    rdma_ops: u64,
    /// The most bytes of read buffers one connection held at once (for tests and tuning).
    read_bytes_peak: usize,
    /// Sends taken with no IRB (`send_inline`) and fragments handed over with none.
    inline_sends: u64,
    direct_receives: u64,
    /// Polls so far, and whether the last one found nothing (see `poll`).
    turn: u64,
    quiet: bool,
}

/// Transfers up to this size are copied through the bounce buffer instead of registering
/// the host's memory (registration costs more than copying a few pages).
const BOUNCE: usize = 64 * 1024;
/// How long a one-sided transfer may take before its connection is given up.
const RDMA_TIMEOUT: Duration = Duration::from_secs(30);

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn qp_info(addr: Address, qpn: u32, psn: u32, credits: u32, eager_max: u32) -> QpInfo {
    QpInfo {
        qpn,
        psn,
        lid: addr.lid,
        mtu: addr.mtu,
        gid: addr.gid,
        credits,
        eager_max,
    }
}

fn remote_of(q: &QpInfo) -> Remote {
    Remote {
        qpn: q.qpn,
        psn: q.psn,
        addr: Address {
            lid: q.lid,
            gid: q.gid,
            mtu: q.mtu,
        },
    }
}

/// A starting packet sequence number (24 bits, varied per connection).
fn psn(idx: usize) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    (t.wrapping_mul(2_654_435_761) ^ (idx as u32).wrapping_mul(40_503)) & 0x00ff_ffff
}

fn gather(irb: &Irb) -> Vec<u8> {
    let mut v = Vec::with_capacity(irb.data_len());
    for i in 0..irb.segments().len() {
        v.extend_from_slice(irb.segment(i));
    }
    v
}

fn meta_of(flags: u32) -> Meta {
    Meta {
        end: flags & vmi_device::abi::VMI_FLAG_END != 0,
        filter: vmi_device::abi::wire_flags(flags),
    }
}

/// Connection `idx`, borrowing only the connection table (so other fields stay usable).
macro_rules! conn {
    ($d:expr, $idx:expr) => {
        $d.conns.get_mut($idx).and_then(|c| c.as_mut())
    };
}

#[allow(unsafe_code)]
fn push_segment(irb: &mut Irb, ptr: *mut u8, len: usize) {
    // SAFETY: the bytes live in the device's `held` or `big` table (neither moves its
    // buffers) until the IRB's completion step gives them back.
    let _ = unsafe { irb.push_segment(ptr, len) };
}

impl VerbsDevice {
    fn insert(&mut self, mut c: Conn) -> io::Result<usize> {
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if let Err(e) = self.poll.registry().register(
            &mut c.sock,
            Token(idx + 2),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.free.push(idx);
            return Err(e);
        }
        if c.vmi != 0 {
            self.by_vmi.insert(c.vmi, idx);
        }
        self.conns[idx] = Some(c);
        Ok(idx)
    }

    /// Removes a connection, releasing its queue pair and buffers.
    fn take(&mut self, idx: usize) -> Option<Conn> {
        let mut c = self.conns.get_mut(idx)?.take()?;
        let _ = self.poll.registry().deregister(&mut c.sock);
        if c.vmi != 0 && self.by_vmi.get(&c.vmi) == Some(&idx) {
            self.by_vmi.remove(&c.vmi);
        }
        c.release(self.nic.as_mut());
        // Buffers published to this connection's peer go with it (the host's later
        // deregistration finds nothing).
        let nic = &mut self.nic;
        self.published.retain(|_, (i, mr)| {
            if *i == idx {
                nic.deregister(*mr);
                false
            } else {
                true
            }
        });
        if c.domain != 0 {
            // Fragments still held by the host keep their registrations in the domain until
            // their IRBs complete; the domain goes with the last of them.
            let held = self.big.values().filter(|b| b.domain == c.domain).count();
            if held == 0 {
                self.nic.free_domain(c.domain);
            } else {
                self.zombies.insert(c.domain, held);
            }
        }
        self.free.push(idx);
        Some(c)
    }

    /// Ends a connection: its IRBs complete with `status`, and the application hears of it
    /// when it knew the connection (`tell`).
    fn fail(&mut self, idx: usize, status: Status, detail: &str, tell: bool) {
        let Some(mut c) = self.take(idx) else { return };
        log::debug!("verbs: connection to {} ends: {detail}", c.peer);
        let _ = c.sock.shutdown(std::net::Shutdown::Both);
        if let Some(mut a) = c.attempt.take()
            && let Some(mut irb) = a.irb.take()
        {
            irb.set_detail(detail);
            irb.complete(status);
        }
        for (_, mut irb) in c.pending.drain() {
            irb.set_detail(detail);
            irb.complete(Status::ConnectionLost);
        }
        for mut irb in c.waiting.drain(..) {
            irb.set_detail(detail);
            irb.complete(Status::ConnectionLost);
        }
        if let Some(irb) = c.closing.take() {
            irb.complete(Status::Ok);
            return;
        }
        let open = matches!(c.stage, Stage::Open | Stage::AwaitReady | Stage::Requested);
        if tell && open && c.vmi != 0 && !c.peer_done {
            self.budget_left = self.budget_left.saturating_sub(1);
            if let Some(mut irb) = self.host.alloc_irb(Op::PeerDisconnect, c.vmi) {
                irb.set_detail(detail);
                irb.set_status(status);
                irb.pass();
            }
        }
    }

    /// Queues side-channel bytes and writes what the socket takes.
    fn say(&mut self, idx: usize, bytes: &[u8]) {
        let Some(c) = conn!(self, idx) else { return };
        c.tx.extend_from_slice(bytes);
        self.flush_side(idx);
    }

    fn flush_side(&mut self, idx: usize) {
        let Some(c) = conn!(self, idx) else { return };
        while !c.tx.is_empty() {
            match c.sock.write(&c.tx) {
                Ok(0) => break,
                Ok(n) => {
                    c.tx.drain(..n);
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = format!("the side channel failed: {e}");
                    if c.attempt.is_some() && c.stage == Stage::Hello {
                        return self.next_attempt(idx, &why, false);
                    }
                    return self.fail(idx, Status::ConnectionLost, &why, true);
                }
            }
        }
    }

    // ----- connecting -----

    fn start_attempt(&mut self, mut attempt: Attempt, vmi: u64) {
        loop {
            let now = Instant::now();
            let addr = match attempt.dial.next_addr(now) {
                Ok(a) => a,
                Err((status, detail)) => {
                    if let Some(mut irb) = attempt.irb.take() {
                        irb.set_detail(&detail);
                        irb.complete(status);
                    }
                    return;
                }
            };
            match mio::net::TcpStream::connect(addr) {
                Ok(sock) => {
                    self.tune(&sock);
                    let mut c = Conn::new(sock, addr, Stage::Dialing, vmi);
                    c.deadline = Some(attempt.dial.give_up());
                    c.attempt = Some(attempt);
                    match self.insert(c) {
                        Ok(_) => return,
                        Err(e) => {
                            log::error!("verbs: cannot register a socket: {e}");
                            return;
                        }
                    }
                }
                Err(e) => attempt
                    .dial
                    .failed(&addr.to_string(), &e.to_string(), false, false),
            }
        }
    }

    fn next_attempt(&mut self, idx: usize, why: &str, wrong_key: bool) {
        let Some(mut c) = self.take(idx) else { return };
        let Some(mut a) = c.attempt.take() else {
            return;
        };
        log::debug!("verbs: connect to {} failed: {why}", c.peer);
        a.dial
            .failed(&c.peer.to_string(), why, why.contains("refused"), wrong_key);
        self.start_attempt(a, c.vmi);
    }

    /// The connector's socket is writable: connected (or not); send the hello.
    fn on_dialed(&mut self, idx: usize) {
        let Some(c) = conn!(self, idx) else { return };
        match c.sock.take_error() {
            Ok(Some(e)) | Err(e) => return self.next_attempt(idx, &e.to_string(), false),
            Ok(None) => {}
        }
        if let Err(e) = c.sock.peer_addr() {
            if e.kind() == io::ErrorKind::NotConnected {
                return; // still connecting
            }
            return self.next_attempt(idx, &e.to_string(), false);
        }
        let qp = match self.make_qp(idx) {
            Ok(q) => q,
            Err(e) => {
                return self.fail(idx, Status::NoResources, &e.to_string(), false);
            }
        };
        let info = qp_info(
            self.nic.address(),
            qp.qpn,
            qp.psn,
            self.cfg.credits,
            self.cfg.eager_max,
        );
        let (local_key, signature) = (self.local_key.clone(), self.signature.clone());
        let nonce = self.auth.as_ref().map(|_| auth::nonce());
        let Some(c) = conn!(self, idx) else { return };
        let a = c.attempt.as_ref().expect("a connector has an attempt");
        let hello = Hello {
            from_key: local_key,
            to_key: a.dial.key().to_string(),
            signature,
            data: a.data.clone(),
            qp: info,
            nonce,
        }
        .emit();
        c.nonce = nonce;
        c.qp = Some(qp);
        c.stage = Stage::Hello;
        self.say(idx, &hello);
    }

    /// The connector got its answer.
    fn on_answer(&mut self, idx: usize, answer: Answer) {
        if !answer.accept {
            let wrong_key = answer.reason.starts_with("wrong key");
            if wrong_key {
                return self.next_attempt(idx, &answer.reason, true);
            }
            let Some(mut c) = self.take(idx) else { return };
            if let Some(mut irb) = c.attempt.take().and_then(|mut a| a.irb.take()) {
                irb.clear_segments();
                if irb.attach(&answer.data).is_err() {
                    log::error!("verbs: could not attach reply data");
                }
                irb.set_detail(&answer.reason);
                // The application's refusal is `Rejected` (its reply data goes up); the
                // device's own refusals carry their reason.
                let status = if answer.reason.starts_with("filter signature") {
                    Status::Mismatch
                } else if answer.reason == "rejected by the application" {
                    Status::Rejected
                } else {
                    Status::Invalid
                };
                irb.complete(status);
            }
            return;
        }
        if self.auth.is_some() && !conn!(self, idx).is_some_and(|c| c.proven) {
            let why = "the listener accepted without proving it holds the authentication key; this process requires authentication";
            return self.fail(idx, Status::Invalid, why, false);
        }
        let (eager_max, credits) = (self.cfg.eager_max, self.cfg.credits);
        let mine = {
            let Some(c) = conn!(self, idx) else { return };
            let Some(qp) = c.qp.as_ref() else { return };
            (qp.qpn, qp.psn)
        };
        let local = qp_info(self.nic.address(), mine.0, mine.1, credits, eager_max);
        let as_hello = Hello {
            from_key: String::new(),
            to_key: String::new(),
            signature: self.signature.clone(),
            data: vec![],
            qp: answer.qp,
            nonce: None,
        };
        let agreed = match bootstrap::agree(&local, &self.signature, &as_hello) {
            Ok(a) => a,
            Err(e) => return self.fail(idx, Status::Protocol, &e.to_string(), false),
        };
        if let Err(e) = self.nic.connect_qp(mine.0, mine.1, &remote_of(&answer.qp)) {
            return self.fail(idx, Status::Unreachable, &e.to_string(), false);
        }
        let ep = Endpoint::new(self.endpoint_config(agreed.credits, agreed.eager_max));
        let Some(c) = conn!(self, idx) else { return };
        c.ep = Some(ep);
        c.stage = Stage::Open;
        c.deadline = None;
        let irb = c.attempt.take().and_then(|mut a| a.irb.take());
        log::debug!(
            "verbs: connected to {} (queue pair {})",
            c.peer,
            answer.qp.qpn
        );
        self.say(idx, &Control::Ready.emit());
        if let Some(mut irb) = irb {
            irb.clear_segments();
            if irb.attach(&answer.data).is_err() {
                log::error!("verbs: could not attach reply data");
            }
            irb.complete(Status::Ok);
        }
    }

    fn endpoint_config(&self, credits: u32, eager_max: u32) -> proto::Config {
        proto::Config {
            eager_max: eager_max as usize,
            credits,
            max_fragment: self.cfg.max_fragment,
            max_queued: 4096,
            max_reads: 256,
        }
    }

    // ----- accepting -----

    fn accept_all(&mut self) {
        loop {
            let Some(l) = self.listener.as_ref() else {
                return;
            };
            match l.accept() {
                Ok((sock, peer)) => {
                    // Every connection counts, bootstrapping ones too (a flood of sockets that
                    // never say hello cannot take more than the limit).
                    if self.open_conns() >= self.max_conns() {
                        log::warn!(
                            "verbs: refusing {peer}: {} connections, the most allowed (max_connections {}, or what the completion queue of {} entries holds)",
                            self.open_conns(),
                            self.cfg.max_connections,
                            self.cfg.cq_entries
                        );
                        continue;
                    }
                    self.tune(&sock);
                    let mut c = Conn::new(sock, peer, Stage::Accepted, 0);
                    c.deadline = Some(Instant::now() + self.cfg.connect_timeout);
                    if let Err(e) = self.insert(c) {
                        log::error!("verbs: cannot register a socket: {e}");
                    }
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("verbs: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Refuses a connector (with `data`, the application's reply when it is the one
    /// refusing) and lingers until it has read the answer.
    fn refuse_with(&mut self, idx: usize, reason: &str, data: Vec<u8>) {
        let answer = Answer {
            accept: false,
            reason: reason.chars().take(bootstrap::MAX_REASON).collect(),
            data,
            qp: QpInfo::none(),
        }
        .emit();
        self.say(idx, &answer);
        if let Some(c) = conn!(self, idx) {
            c.stage = Stage::Lingering;
            c.deadline = Some(Instant::now() + LINGER);
        }
    }

    /// Refuses a connector with `reason`.
    fn refuse(&mut self, idx: usize, reason: &str) {
        self.refuse_with(idx, reason, Vec::new());
    }

    /// A hello arrived: check it, make the queue pair, and ask the application.
    fn on_hello(&mut self, idx: usize, hello: Hello) {
        if hello.to_key != self.local_key {
            let why = format!("wrong key: this is '{}'", self.local_key);
            return self.refuse(idx, &why);
        }
        match (&self.auth, hello.nonce) {
            (Some(key), Some(theirs)) => {
                // Prove this side first; the connector's proof comes back before anything
                // of its hello is taken further.
                let mine = auth::nonce();
                let proof = key.prove(
                    Role::Listener,
                    &Transcript {
                        connector_nonce: &theirs,
                        listener_nonce: &mine,
                        from_key: &hello.from_key,
                        to_key: &hello.to_key,
                        signature: &hello.signature,
                    },
                );
                let record = auth::challenge_record(bootstrap::VERSION, &mine, &proof);
                let Some(c) = conn!(self, idx) else { return };
                c.nonce = Some(mine);
                c.hello = Some(hello);
                c.stage = Stage::Proving;
                return self.say(idx, &record);
            }
            (Some(_), None) => {
                let peer = conn!(self, idx)
                    .map(|c| c.peer.to_string())
                    .unwrap_or_default();
                log::warn!(
                    "verbs: refusing {peer}: it does not authenticate, and this process requires it"
                );
                return self.refuse(
                    idx,
                    "this process requires authentication with a shared key; give the connecting process the same key (verbs parameter auth_key_file or VMI_AUTH_KEY_FILE)",
                );
            }
            (None, Some(_)) => {
                return self.refuse(
                    idx,
                    "this process does not use authentication; give it the same key as the connecting process, or remove the key there",
                );
            }
            (None, None) => {}
        }
        self.admit(idx, hello);
    }

    /// The connector's proof of an authenticating hello.
    fn on_proof(&mut self, idx: usize, proof: &[u8]) {
        let Some(c) = conn!(self, idx) else { return };
        let (Some(hello), Some(mine), Some(key)) = (c.hello.take(), c.nonce, self.auth.as_ref())
        else {
            return;
        };
        let Some(theirs) = hello.nonce else { return };
        let t = Transcript {
            connector_nonce: &theirs,
            listener_nonce: &mine,
            from_key: &hello.from_key,
            to_key: &hello.to_key,
            signature: &hello.signature,
        };
        if !key.verify(Role::Connector, &t, proof) {
            log::warn!(
                "verbs: refusing {}: it failed authentication (it does not hold this process's key)",
                c.peer
            );
            return self.refuse(
                idx,
                "authentication failed: the connecting process does not hold this process's key",
            );
        }
        self.admit(idx, hello);
    }

    /// A hello whose key matched (and whose sender proved itself, with authentication): check
    /// the rest, make the queue pair, and ask the application.
    fn admit(&mut self, idx: usize, hello: Hello) {
        if hello.data.len() > self.cfg.max_connect_data as usize {
            let why = format!(
                "connect data of {} bytes is over this side's max_connect_data {}",
                hello.data.len(),
                self.cfg.max_connect_data
            );
            return self.refuse(idx, &why);
        }
        let local = qp_info(
            self.nic.address(),
            0,
            0,
            self.cfg.credits,
            self.cfg.eager_max,
        );
        if let Err(e) = bootstrap::agree(&local, &self.signature, &hello) {
            return self.refuse(idx, &e.to_string());
        }
        let qp = match self.make_qp(idx) {
            Ok(q) => q,
            Err(e) => {
                log::error!("verbs: no queue pair for {}: {e}", hello.from_key);
                return self.refuse(idx, &format!("the acceptor has no queue pair: {e}"));
            }
        };
        let vmi = self.host.conn_new();
        self.by_vmi.insert(vmi, idx);
        let Some(c) = conn!(self, idx) else { return };
        c.vmi = vmi;
        c.qp = Some(qp);
        c.stage = Stage::Requested;
        c.deadline = None;
        let host = c.peer.ip().to_string();
        let (from, data) = (hello.from_key.clone(), hello.data.clone());
        c.hello = Some(hello);
        self.budget_left = self.budget_left.saturating_sub(1);
        let Some(mut irb) = self.host.alloc_irb(Op::ConnectRequest, vmi) else {
            return self.fail(idx, Status::NoResources, "out of IRBs", false);
        };
        irb.set_peer(&host, &from);
        if irb.attach(&data).is_err() {
            log::error!("verbs: could not attach connect data");
        }
        log::debug!("verbs: connect request from '{from}' at {host}");
        irb.pass();
    }

    /// The application accepted or rejected.
    fn answer(&mut self, idx: usize, accept: bool, reply: Vec<u8>) -> Result<(), String> {
        let (eager_max, credits) = (self.cfg.eager_max, self.cfg.credits);
        let Some(c) = conn!(self, idx) else {
            return Err("the connecting peer went away".into());
        };
        if c.stage != Stage::Requested {
            return Err("the connection is not waiting for an answer".into());
        }
        if !accept {
            let vmi = std::mem::take(&mut c.vmi);
            self.by_vmi.remove(&vmi);
            self.refuse_with(idx, "rejected by the application", reply);
            return Ok(());
        }
        let (Some(hello), Some(qp)) = (c.hello.take(), c.qp.as_ref()) else {
            return Err("the connection has no queue pair".into());
        };
        let (qpn, qpsn) = (qp.qpn, qp.psn);
        let local = qp_info(self.nic.address(), qpn, qpsn, credits, eager_max);
        let agreed =
            bootstrap::agree(&local, &self.signature, &hello).map_err(|e| e.to_string())?;
        if let Err(e) = self.nic.connect_qp(qpn, qpsn, &remote_of(&hello.qp)) {
            let why = e.to_string();
            self.refuse(idx, &why);
            return Err(why);
        }
        let ep = Endpoint::new(self.endpoint_config(agreed.credits, agreed.eager_max));
        let answer = Answer {
            accept: true,
            reason: String::new(),
            data: reply,
            qp: local,
        }
        .emit();
        let Some(c) = conn!(self, idx) else {
            return Err("the connecting peer went away".into());
        };
        c.ep = Some(ep);
        c.stage = Stage::AwaitReady;
        c.deadline = Some(Instant::now() + self.cfg.connect_timeout);
        self.say(idx, &answer);
        Ok(())
    }

    // ----- the side channel -----

    fn on_readable(&mut self, idx: usize) {
        let Some(c) = conn!(self, idx) else { return };
        let mut buf = [0u8; 4096];
        loop {
            match c.sock.read(&mut buf) {
                Ok(0) => {
                    c.eof = true;
                    break;
                }
                Ok(n) => {
                    c.rx.extend_from_slice(&buf[..n]);
                    if c.rx.len() > MAX_SIDE {
                        return self.fail(
                            idx,
                            Status::Protocol,
                            "the peer sent more on the side channel than any message holds",
                            true,
                        );
                    }
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    c.eof = true;
                    log::debug!("verbs: side channel to {}: {e}", c.peer);
                    break;
                }
            }
        }
        self.advance(idx);
    }

    /// Parses what the side channel brought, as far as the stage and the budget allow.
    fn advance(&mut self, idx: usize) {
        loop {
            let Some(c) = conn!(self, idx) else { return };
            match c.stage {
                Stage::Dialing => return,
                Stage::Hello if c.rx.starts_with(&auth::CHALLENGE_MAGIC) => {
                    if c.rx.len() < auth::CHALLENGE_LEN {
                        if c.eof {
                            return self.next_attempt(
                                idx,
                                "the peer closed while challenging",
                                false,
                            );
                        }
                        return;
                    }
                    let challenge = auth::parse_challenge(&c.rx, bootstrap::VERSION);
                    c.rx.drain(..auth::CHALLENGE_LEN);
                    let key_name = c
                        .attempt
                        .as_ref()
                        .map(|a| a.dial.key().to_string())
                        .unwrap_or_default();
                    let (Some(key), Some(mine), Some((theirs, proof))) =
                        (self.auth.as_ref(), c.nonce, challenge)
                    else {
                        let why = format!(
                            "'{key_name}' at {} requires authentication; give this process the same key (verbs parameter auth_key_file or VMI_AUTH_KEY_FILE)",
                            c.peer
                        );
                        return self.fail(idx, Status::Invalid, &why, false);
                    };
                    let t = Transcript {
                        connector_nonce: &mine,
                        listener_nonce: &theirs,
                        from_key: &self.local_key,
                        to_key: &key_name,
                        signature: &self.signature,
                    };
                    if !key.verify(Role::Listener, &t, &proof) {
                        let why = format!(
                            "the process at {} could not prove it holds the authentication key (another key, or an impostor)",
                            c.peer
                        );
                        return self.fail(idx, Status::Invalid, &why, false);
                    }
                    let record =
                        auth::proof_record(bootstrap::VERSION, &key.prove(Role::Connector, &t));
                    c.proven = true;
                    self.say(idx, &record);
                }
                Stage::Hello => match Answer::parse(&c.rx) {
                    Ok(Ok((a, used))) => {
                        c.rx.drain(..used);
                        self.on_answer(idx, a);
                    }
                    Ok(Err(_)) if c.eof => {
                        return self.next_attempt(idx, "the peer closed before answering", false);
                    }
                    Ok(Err(_)) => return,
                    // Not a verbs listener (another program holds the port): try the next.
                    Err(e) => return self.next_attempt(idx, &e.to_string(), true),
                },
                Stage::Proving => {
                    if c.rx.len() < auth::PROOF_RECORD_LEN {
                        if c.eof {
                            self.take(idx);
                        }
                        return;
                    }
                    if self.budget_left == 0 {
                        return; // the request goes up at a later poll
                    }
                    let proof = auth::parse_proof(&c.rx, bootstrap::VERSION);
                    c.rx.drain(..auth::PROOF_RECORD_LEN);
                    match proof {
                        Some(p) => self.on_proof(idx, &p),
                        None => return self.refuse(idx, "a malformed authentication proof"),
                    }
                }
                Stage::Accepted => {
                    if self.budget_left == 0 {
                        return;
                    }
                    match Hello::parse(&c.rx) {
                        Ok(Ok((h, used))) => {
                            c.rx.drain(..used);
                            self.on_hello(idx, h);
                        }
                        Ok(Err(_)) if c.eof => {
                            self.take(idx);
                            return;
                        }
                        Ok(Err(_)) => return,
                        Err(e) => {
                            log::warn!("verbs: bad hello from {}: {e}", c.peer);
                            return self.refuse(idx, &e.to_string());
                        }
                    }
                }
                Stage::Requested | Stage::AwaitReady | Stage::Open => match Control::parse(&c.rx) {
                    Ok(Some(ctl)) => {
                        c.rx.drain(..bootstrap::CONTROL);
                        match (c.stage, ctl) {
                            (Stage::AwaitReady, Control::Ready) => {
                                c.stage = Stage::Open;
                                c.deadline = None;
                                self.retry_waiting(idx);
                            }
                            (Stage::Open, Control::Bye { frames }) => {
                                c.bye_at = Some(frames);
                            }
                            (_, ctl) => {
                                let why = format!("the peer said {ctl:?} out of turn");
                                return self.fail(idx, Status::Protocol, &why, true);
                            }
                        }
                    }
                    Ok(None) if c.eof && c.bye_at.is_none() => {
                        return self.fail(
                            idx,
                            Status::ConnectionLost,
                            "the peer closed the side channel without a bye (it exited or failed)",
                            true,
                        );
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let why = format!("side channel: {e}");
                        return self.fail(idx, Status::Protocol, &why, true);
                    }
                },
                Stage::Lingering => {
                    c.rx.clear();
                    if c.eof && c.tx.is_empty() {
                        self.take(idx);
                    }
                    return;
                }
            }
        }
    }

    // ----- data -----

    /// Gives the endpoint a send IRB, or keeps it waiting; false when it waits. `queued`: the
    /// IRB comes from the front of `waiting` (a new one goes behind whatever waits there).
    fn offer(&mut self, idx: usize, mut irb: Irb, queued: bool) -> bool {
        let Some(c) = conn!(self, idx) else {
            irb.set_detail("the connection is closed");
            irb.complete(Status::ConnectionLost);
            return true;
        };
        if c.ep.is_none() || c.stage != Stage::Open || (!queued && !c.waiting.is_empty()) {
            if queued {
                c.waiting.push_front(irb);
            } else {
                c.waiting.push_back(irb);
            }
            return false;
        }
        let meta = meta_of(irb.flags());
        let len = irb.data_len();
        let token = c.next_token;
        let eager = len <= self.cfg.eager_max as usize;
        let frag = if eager {
            Fragment::Eager(gather(&irb), meta)
        } else {
            let Some(c) = conn!(self, idx) else {
                return true;
            };
            let staged = match c.stage_pool.take(self.nic.as_mut(), c.domain, len) {
                Ok(s) => s,
                Err(e) => {
                    irb.set_detail(&format!(
                        "no registered memory for a {len}-byte fragment: {e}"
                    ));
                    irb.complete(Status::NoResources);
                    return true;
                }
            };
            let mut off = 0;
            for i in 0..irb.segments().len() {
                let seg = irb.segment(i);
                // SAFETY: the buffer was just registered and no work request names it yet.
                #[allow(unsafe_code)]
                let fits = unsafe { staged.buf.write(off, seg) };
                debug_assert!(fits);
                off += seg.len();
            }
            let f = Fragment::Large {
                addr: staged.buf.addr(0),
                rkey: staged.mr.rkey,
                len: len as u64,
                meta,
            };
            let Some(c) = conn!(self, idx) else {
                return true;
            };
            c.staged.insert(token, staged);
            f
        };
        let Some(c) = conn!(self, idx) else {
            return true;
        };
        let ep = c.ep.as_mut().expect("checked above");
        match ep.send(token, frag) {
            Ok(()) => {
                c.next_token += 1;
                c.pending.insert(token, irb);
                self.drive(idx);
                true
            }
            Err(SendError::Busy(_)) => {
                if let Some(s) = c.staged.remove(&token) {
                    c.stage_pool.give(self.nic.as_mut(), s);
                }
                let Some(c) = conn!(self, idx) else {
                    return true;
                };
                c.waiting.push_front(irb);
                false
            }
            Err(e @ SendError::TooLarge { .. }) => {
                if let Some(s) = c.staged.remove(&token) {
                    c.stage_pool.give(self.nic.as_mut(), s);
                }
                irb.set_detail(&e.to_string());
                irb.complete(Status::TooLarge);
                true
            }
        }
    }

    fn retry_waiting(&mut self, idx: usize) {
        loop {
            let Some(c) = conn!(self, idx) else { return };
            if c.stage != Stage::Open || c.ep.is_none() {
                return;
            }
            let Some(irb) = c.waiting.pop_front() else {
                return;
            };
            if !self.offer(idx, irb, true) {
                return;
            }
        }
    }

    /// Carries out what the endpoint asks for.
    fn drive(&mut self, idx: usize) {
        self.post_unsent(idx);
        loop {
            let Some(c) = conn!(self, idx) else {
                return;
            };
            let Some(action) = c.ep.as_mut().and_then(|e| e.poll_action()) else {
                return;
            };
            match action {
                Action::Send { wr, bytes } => {
                    c.unsent.push_back((wr, bytes));
                    self.post_unsent(idx);
                }
                Action::Read {
                    msg,
                    addr,
                    rkey,
                    len,
                } => {
                    c.deferred_reads.push_back((msg, addr, rkey, len));
                    self.post_reads(idx);
                }
                Action::Deliver(bytes, meta) => c.up.push_back(Up::Eager(bytes, meta)),
                Action::DeliverRead { msg, meta } => {
                    if let Some((buf, len)) = c.read_done.remove(&msg) {
                        c.up.push_back(Up::Read(buf, len, meta));
                    }
                }
                Action::Sent { token } => {
                    let irb = c.pending.remove(&token);
                    if let Some(s) = c.staged.remove(&token) {
                        c.stage_pool.give(self.nic.as_mut(), s);
                    }
                    if let Some(irb) = irb {
                        irb.complete(Status::Ok);
                    }
                }
            }
        }
    }

    /// Posts the reads the peer asked for, in order, while the connection's read buffers
    /// stay within [`READ_BUDGET`] (one is always allowed).
    fn post_reads(&mut self, idx: usize) {
        loop {
            let Some(c) = conn!(self, idx) else { return };
            let Some(&(msg, addr, rkey, len)) = c.deferred_reads.front() else {
                return;
            };
            let size = len as usize;
            if c.read_bytes > 0 && c.read_bytes.saturating_add(size) > READ_BUDGET {
                return;
            }
            let Some(qpn) = c.qp.as_ref().map(|q| q.qpn) else {
                return;
            };
            c.deferred_reads.pop_front();
            let target = match c.read_pool.take(self.nic.as_mut(), c.domain, size) {
                Ok(s) => s,
                Err(e) => {
                    let why =
                        format!("no registered memory to read a {len}-byte fragment into: {e}");
                    return self.fail(idx, Status::NoResources, &why, true);
                }
            };
            self.next_read += 1;
            let id = self.next_read;
            let Some(c) = conn!(self, idx) else { return };
            c.read_bytes += target.buf.len();
            self.read_bytes_peak = self.read_bytes_peak.max(c.read_bytes);
            let sge = target.sge(0, size);
            c.reads.insert(id, (msg, target, size));
            if let Err(e) = self.nic.post_rdma(
                qpn,
                wr_id(idx, WR_READ, id),
                sge,
                RemoteMem { addr, rkey },
                false,
            ) {
                return self.fail(idx, Status::ConnectionLost, &e.to_string(), true);
            }
        }
    }

    /// Posts SENDs that wait for a send slot, while slots are free.
    fn post_unsent(&mut self, idx: usize) {
        loop {
            let Some(c) = conn!(self, idx) else {
                return;
            };
            let Some(qp) = c.qp.as_mut() else { return };
            if c.unsent.is_empty() {
                return;
            }
            let Some(slot) = qp.free_send.pop() else {
                return;
            };
            let (wr, bytes) = c.unsent.pop_front().expect("checked");
            let off = slot as usize * qp.slot;
            // SAFETY: a free slot: no work request names it.
            #[allow(unsafe_code)]
            let fits = unsafe { qp.send.buf.write(off, &bytes) };
            if !fits {
                let why = format!("a {}-byte frame does not fit a send slot", bytes.len());
                return self.fail(idx, Status::Internal, &why, true);
            }
            qp.send_wr.insert(slot, wr);
            let sge = qp.send.sge(off, bytes.len());
            let qpn = qp.qpn;
            if let Err(e) = self
                .nic
                .post_send(qpn, wr_id(idx, WR_SEND, slot.into()), sge)
            {
                return self.fail(idx, Status::ConnectionLost, &e.to_string(), true);
            }
        }
    }

    /// One work completion.
    fn on_completion(&mut self, done: Completion) {
        let (idx, kind, id) = wr_parts(done.wr_id);
        let Some(c) = conn!(self, idx) else {
            return;
        };
        if c.qp.as_ref().is_none_or(|q| q.qpn != done.qpn) {
            return; // a completion of a queue pair already gone
        }
        if c.stage == Stage::Lingering {
            return; // this side is closing: nothing more goes up
        }
        if let Some(why) = done.error {
            let what = match kind {
                WR_RECV => "a receive",
                WR_SEND => "a send",
                _ => "an RDMA READ",
            };
            let detail = format!("{what} failed on the queue pair: {why}");
            return self.fail(idx, Status::ConnectionLost, &detail, true);
        }
        match kind {
            WR_RECV => {
                let qp = c.qp.as_ref().expect("checked");
                let s = id as usize;
                if s >= qp.recv_slots || done.len as usize > qp.slot {
                    return self.fail(idx, Status::Protocol, "a receive out of range", true);
                }
                // SAFETY: the receive of this slot completed and it is not reposted yet.
                #[allow(unsafe_code)]
                let bytes = unsafe { qp.recv.buf.slice(s * qp.slot, done.len as usize) };
                let result = match (bytes, c.ep.as_mut()) {
                    (Some(b), Some(ep)) => ep.received(b),
                    _ => Ok(()),
                };
                if let Err(e) = result {
                    let why = format!("the peer broke the protocol: {e}");
                    return self.fail(idx, Status::Protocol, &why, true);
                }
                let (qpn, sge) = (qp.qpn, qp.recv_sge(s));
                if let Err(e) = self.nic.post_recv(qpn, done.wr_id, sge) {
                    return self.fail(idx, Status::ConnectionLost, &e.to_string(), true);
                }
            }
            WR_SEND => {
                let Some(qp) = c.qp.as_mut() else { return };
                let Some(wr) = qp.send_wr.remove(&(id as u32)) else {
                    return;
                };
                qp.free_send.push(id as u32);
                if let Some(ep) = c.ep.as_mut() {
                    ep.send_done(wr);
                }
            }
            WR_READ => {
                let Some((msg, target, len)) = c.reads.remove(&id) else {
                    return;
                };
                c.read_done.insert(msg, (target, len));
                let r = c.ep.as_mut().map(|ep| ep.read_done(msg));
                if let Some(Err(e)) = r {
                    return self.fail(idx, Status::Internal, &e.to_string(), true);
                }
            }
            _ => return,
        }
        self.drive(idx);
    }

    /// Hands up waiting fragments while the budget allows.
    fn hand_up(&mut self, idx: usize) {
        while self.budget_left > 0 {
            let Some(c) = conn!(self, idx) else {
                return;
            };
            if c.vmi == 0 {
                // The host is done with the connection: buffers go back, nothing goes up.
                for up in c.up.drain(..) {
                    if let Up::Read(s, _, _) = up {
                        c.read_bytes = c.read_bytes.saturating_sub(s.buf.len());
                        c.read_pool.give(self.nic.as_mut(), s);
                    }
                }
                return;
            }
            let vmi = c.vmi;
            let Some(up) = c.up.pop_front() else { return };
            let mut was_read = false;
            // Straight to the host with no IRB when it polls this device directly (ABI 1.2).
            // Every fragment is offered, read ones too: once the host declines one (too large,
            // or no room), `offer` declines the rest of the poll, which keeps the order.
            let (bytes, meta): (&[u8], Meta) = match &up {
                Up::Eager(b, m) => (b, *m),
                Up::Read(s, len, m) => {
                    // SAFETY: the READ completed and nothing else names the buffer.
                    #[allow(unsafe_code)]
                    let b = unsafe { s.buf.slice(0, *len) }.unwrap_or(&[]);
                    (b, *m)
                }
            };
            if deliver::offer(
                vmi,
                vmi_device::abi::recv_flags(meta.end, meta.filter),
                bytes,
            ) {
                if let Up::Read(s, _, _) = up
                    && let Some(c) = conn!(self, idx)
                {
                    c.read_bytes = c.read_bytes.saturating_sub(s.buf.len());
                    c.read_pool.give(self.nic.as_mut(), s);
                    was_read = true;
                }
                self.budget_left -= 1;
                self.delivered += 1;
                self.direct_receives += 1;
                if was_read {
                    self.post_reads(idx);
                }
                continue;
            }
            let Some(mut irb) = self.host.alloc_irb(Op::Recv, vmi) else {
                if let Some(c) = conn!(self, idx) {
                    c.up.push_front(up);
                }
                self.budget_left = 0;
                return;
            };
            self.budget_left -= 1;
            self.delivered += 1;
            match up {
                Up::Eager(bytes, meta) => {
                    irb.set_flags(vmi_device::abi::recv_flags(meta.end, meta.filter));
                    let (ptr, len) = (bytes.as_ptr() as *mut u8, bytes.len());
                    irb.frame::<VerbsFrame>().held = self.held.hold(bytes);
                    push_segment(&mut irb, ptr, len);
                }
                Up::Read(buf, len, meta) => {
                    irb.set_flags(vmi_device::abi::recv_flags(meta.end, meta.filter));
                    let ptr = buf.buf.as_ptr();
                    let (mut qpn, mut domain) = (0, 0);
                    if let Some(c) = conn!(self, idx) {
                        c.read_bytes = c.read_bytes.saturating_sub(buf.buf.len());
                        qpn = c.qp.as_ref().map_or(0, |q| q.qpn);
                        domain = c.domain;
                    }
                    was_read = true;
                    self.next_big = self.next_big.wrapping_add(1).max(1);
                    while self.big.contains_key(&self.next_big) {
                        self.next_big = self.next_big.wrapping_add(1).max(1);
                    }
                    self.big.insert(
                        self.next_big,
                        Big {
                            idx,
                            qpn,
                            domain,
                            staged: buf,
                        },
                    );
                    irb.frame::<VerbsFrame>().big = self.next_big;
                    push_segment(&mut irb, ptr, len);
                }
            }
            irb.pass();
            if was_read {
                self.post_reads(idx);
            }
        }
    }

    /// Closes, reports and retries what each connection has due.
    fn maintain(&mut self, now: Instant) {
        for idx in 0..self.conns.len() {
            let Some(c) = conn!(self, idx) else { continue };
            if c.deadline.is_some_and(|d| now >= d) {
                match c.stage {
                    Stage::Dialing | Stage::Hello => {
                        self.next_attempt(idx, "no answer in time", false);
                    }
                    Stage::Lingering | Stage::Accepted | Stage::Proving => {
                        self.take(idx);
                    }
                    _ => self.fail(
                        idx,
                        Status::Timeout,
                        "the peer did not finish connecting in time",
                        true,
                    ),
                }
                continue;
            }
            if c.peer_done {
                self.fail(
                    idx,
                    Status::ConnectionLost,
                    "the peer closed the connection",
                    false,
                );
                continue;
            }
            if !c.waiting.is_empty() {
                self.retry_waiting(idx);
            }
            self.hand_up(idx);
            self.check_close(idx);
            self.check_bye(idx);
        }
    }

    /// The host's Disconnect: once everything sent is done, say bye and linger.
    fn check_close(&mut self, idx: usize) {
        let Some(c) = conn!(self, idx) else { return };
        if c.closing.is_none() {
            return;
        }
        let idle = c.ep.as_ref().is_none_or(|e| e.is_idle())
            && c.unsent.is_empty()
            && c.waiting.is_empty()
            && c.pending.is_empty();
        if !idle {
            return;
        }
        let frames = c.ep.as_ref().map_or(0, |e| e.frames_sent());
        let irb = c.closing.take();
        let vmi = std::mem::take(&mut c.vmi);
        c.stage = Stage::Lingering;
        c.deadline = Some(Instant::now() + LINGER);
        self.by_vmi.remove(&vmi);
        self.say(idx, &Control::Bye { frames }.emit());
        if let Some(irb) = irb {
            irb.complete(Status::Ok);
        }
    }

    /// The peer's bye: once every frame it sent went up, the application hears of it.
    fn check_bye(&mut self, idx: usize) {
        let Some(c) = conn!(self, idx) else { return };
        let Some(frames) = c.bye_at else { return };
        let Some(ep) = c.ep.as_ref() else { return };
        let got = ep.frames_received();
        if got > frames {
            let why = format!("the peer said bye after {frames} frames but sent {got}");
            return self.fail(idx, Status::Protocol, &why, true);
        }
        if got < frames || ep.is_receiving() || !c.up.is_empty() || self.budget_left == 0 {
            return;
        }
        c.peer_done = true;
        let vmi = c.vmi;
        if vmi == 0 {
            return;
        }
        self.budget_left -= 1;
        if let Some(mut irb) = self.host.alloc_irb(Op::PeerDisconnect, vmi) {
            irb.set_detail("the peer closed the connection");
            irb.set_status(Status::Ok);
            irb.pass();
        }
    }

    // ----- one-sided RDMA -----

    /// Writes `segs` to the peer's `remote..` (key `rkey`), or reads them from there, and
    /// waits for the NIC to finish: small transfers through the bounce buffer, larger ones
    /// from the host's memory registered through the cache.
    fn one_sided(
        &mut self,
        idx: usize,
        write: bool,
        remote: u64,
        rkey: u32,
        segs: &[VmiSeg],
    ) -> Status {
        let Some(qpn) = conn!(self, idx)
            .filter(|c| c.stage == Stage::Open)
            .and_then(|c| c.qp.as_ref())
            .map(|q| q.qpn)
        else {
            return Status::ConnectionLost;
        };
        let total: usize = segs.iter().map(|s| s.len).sum();
        if total == 0 {
            return Status::Ok;
        }
        let first = self.next_rdma + 1;
        let mut leases = Vec::new();
        let mut posted = 0u64;
        let mut result = Ok(());
        let Some(c) = conn!(self, idx) else {
            return Status::ConnectionLost;
        };
        let domain = c.domain;
        if total <= BOUNCE {
            if c.bounce.is_none() {
                match Staged::new(self.nic.as_mut(), domain, BOUNCE, Access::Local) {
                    Ok(b) => c.bounce = Some(b),
                    Err(e) => {
                        log::error!("verbs: no bounce buffer: {e}");
                        return Status::NoResources;
                    }
                }
            }
            let bounce = c.bounce.as_ref().expect("made above");
            if write {
                let mut off = 0;
                for s in segs {
                    // SAFETY: the host lends the segments readable for the call; the bounce
                    // buffer has no work request outstanding (transfers are one at a time).
                    #[allow(unsafe_code)]
                    unsafe {
                        bounce
                            .buf
                            .write(off, std::slice::from_raw_parts(s.base, s.len));
                    }
                    off += s.len;
                }
            }
            let sge = bounce.sge(0, total);
            self.next_rdma += 1;
            result = self.post_one_sided(qpn, idx, write, sge, remote, rkey);
            posted = 1;
        } else {
            let mut off = 0u64;
            for s in segs.iter().filter(|s| s.len > 0) {
                let Some(c) = conn!(self, idx) else { break };
                let nic = std::cell::RefCell::new(&mut self.nic);
                let lease = c.regcache.acquire(
                    s.base as u64,
                    s.len as u64,
                    |start, len| {
                        // SAFETY: local access only; the cache drops the registration when
                        // the memory goes away, and it is named by a work request only while
                        // the host lends the segment (see `Nic::register`).
                        #[allow(unsafe_code)]
                        unsafe {
                            nic.borrow_mut().register(
                                domain,
                                start as *mut u8,
                                len as usize,
                                Access::Local,
                            )
                        }
                    },
                    &mut |mr| nic.borrow_mut().deregister(mr),
                );
                let lease = match lease {
                    Ok(l) => l,
                    Err(e) => {
                        result = Err(format!("cannot register {} bytes: {e}", s.len));
                        break;
                    }
                };
                let sge = Sge {
                    addr: s.base as u64,
                    len: s.len as u32,
                    lkey: lease.handle.lkey,
                };
                leases.push(lease);
                self.next_rdma += 1;
                posted += 1;
                result = self.post_one_sided(qpn, idx, write, sge, remote + off, rkey);
                if result.is_err() {
                    break;
                }
                off += s.len as u64;
            }
        }
        let status = match result {
            Ok(()) => self.wait_one_sided(idx, qpn, first, posted),
            Err(why) => {
                // Posted work requests may still run: the queue pair goes first.
                self.fail(idx, Status::ConnectionLost, &why, true);
                Status::ConnectionLost
            }
        };
        // A connection that failed meanwhile took its bounce buffer and cache with it.
        let nic = &mut self.nic;
        if let Some(c) = conn!(self, idx).filter(|c| c.qp.as_ref().is_some_and(|q| q.qpn == qpn)) {
            if status == Status::Ok && !write && total <= BOUNCE {
                let bounce = c.bounce.as_ref().expect("used above");
                let mut off = 0;
                for s in segs {
                    // SAFETY: the READ completed, nothing else is posted on the bounce buffer;
                    // the host lends the segments writable for the call.
                    #[allow(unsafe_code)]
                    unsafe {
                        if let Some(src) = bounce.buf.slice(off, s.len) {
                            std::ptr::copy_nonoverlapping(src.as_ptr(), s.base, s.len);
                        }
                    }
                    off += s.len;
                }
            }
            for l in leases {
                c.regcache.release(l, &mut |mr| nic.deregister(mr));
            }
        }
        if status == Status::Ok {
            self.rdma_ops += 1;
        }
        status
    }

    fn post_one_sided(
        &mut self,
        qpn: u32,
        idx: usize,
        write: bool,
        sge: Sge,
        remote: u64,
        rkey: u32,
    ) -> Result<(), String> {
        let wr = wr_id(idx, WR_RDMA, self.next_rdma);
        let r = self
            .nic
            .post_rdma(qpn, wr, sge, RemoteMem { addr: remote, rkey }, write);
        r.map_err(|e| e.to_string())
    }

    /// Waits for the completions of one-sided work requests `first..first+n`, handling
    /// every other completion as `poll` would (fragments queue for the next poll). The
    /// connection is given up (its queue pair destroyed, so nothing lands later) when one
    /// fails or they take longer than [`RDMA_TIMEOUT`].
    fn wait_one_sided(&mut self, idx: usize, qpn: u32, first: u64, n: u64) -> Status {
        let deadline = Instant::now() + RDMA_TIMEOUT;
        let mut done = 0;
        let mut comps = Vec::with_capacity(BATCH);
        while done < n {
            let gone = conn!(self, idx).is_none_or(|c| c.qp.as_ref().is_none_or(|q| q.qpn != qpn));
            if gone {
                return Status::ConnectionLost; // its queue pair is gone: nothing more lands
            }
            comps.clear();
            self.nic.poll(&mut comps, BATCH);
            for c in &comps {
                let (cidx, kind, id) = wr_parts(c.wr_id);
                let ours =
                    kind == WR_RDMA && cidx == idx && c.qpn == qpn && id >= first && id < first + n;
                if !ours {
                    self.on_completion(*c);
                    continue;
                }
                if let Some(why) = c.error {
                    let detail = format!(
                        "an RDMA {} failed: {why}",
                        if c.kind == crate::nic::Kind::Write {
                            "WRITE"
                        } else {
                            "READ"
                        }
                    );
                    self.fail(idx, Status::ConnectionLost, &detail, true);
                    return Status::ConnectionLost;
                }
                done += 1;
            }
            if done < n && Instant::now() >= deadline {
                let why = format!("an RDMA transfer did not finish in {RDMA_TIMEOUT:?}");
                self.fail(idx, Status::Timeout, &why, true);
                return Status::Timeout;
            }
        }
        Status::Ok
    }

    /// Side-channel socket options: no Nagle delay, and TCP keepalive probes so that a peer
    /// host that vanished (powered off, cut off) is noticed on an idle connection, whose
    /// queue pair would never tell.
    fn tune(&self, sock: &mio::net::TcpStream) {
        let _ = sock.set_nodelay(true);
        if self.cfg.keepalive.is_zero() {
            return;
        }
        let probe = (self.cfg.keepalive / 3).max(Duration::from_secs(1));
        let ka = socket2::TcpKeepalive::new()
            .with_time(self.cfg.keepalive)
            .with_interval(probe)
            .with_retries(3);
        if let Err(e) = socket2::SockRef::from(sock).set_tcp_keepalive(&ka) {
            log::debug!("verbs: cannot set keepalive on the side channel: {e}");
        }
    }

    /// The connection's queue pair, in a protection domain of its own (made now if it has
    /// none yet; freed with the connection).
    fn make_qp(&mut self, idx: usize) -> Result<Qp, crate::nic::NicError> {
        let domain = match conn!(self, idx).map(|c| c.domain) {
            Some(0) => {
                let d = self.nic.alloc_domain()?;
                if let Some(c) = conn!(self, idx) {
                    c.domain = d;
                }
                d
            }
            Some(d) => d,
            None => 0,
        };
        Qp::new(
            self.nic.as_mut(),
            domain,
            self.cfg.credits,
            self.cfg.eager_max,
            idx,
            psn(idx),
        )
    }

    /// Connections held, whatever their stage.
    fn open_conns(&self) -> usize {
        self.conns.len() - self.free.len()
    }

    /// The most connections at once: `max_connections`, and no more than the completion
    /// queue can hold the work requests of (each connection may have its receive buffers
    /// and its send slots outstanding at once; a completion queue that overflows breaks
    /// every queue pair on it).
    fn max_conns(&self) -> usize {
        let per_conn = 3 * self.cfg.credits as usize + 64;
        self.cfg
            .max_connections
            .min((self.cfg.cq_entries as usize / per_conn).max(1))
    }

    fn open_nic(cfg: &VerbsConfig) -> Result<Box<dyn Nic>, String> {
        Ok(match cfg.nic {
            NicKind::Sim => Box::new(SimNic::new().map_err(|e| e.to_string())?),
            NicKind::Ibverbs => Box::new(
                IbvNic::open(&IbvOptions {
                    device: cfg.device.clone(),
                    port: cfg.ib_port,
                    gid_index: cfg.gid_index,
                    cq_entries: cfg.cq_entries,
                })
                .map_err(|e| e.to_string())?,
            ),
        })
    }

    fn listen(&mut self) -> Result<(), String> {
        let ip: IpAddr = self.cfg.listen_addr.parse().map_err(|_| {
            format!(
                "parameter 'listen_addr' = '{}' is not an IP address",
                self.cfg.listen_addr
            )
        })?;
        let ports = if self.cfg.port != 0 {
            vec![self.cfg.port]
        } else {
            probe_ports(
                &self.local_key,
                self.cfg.port_base,
                self.cfg.port_span,
                self.cfg.probe_count,
            )
        };
        let mut last = String::new();
        for p in &ports {
            match mio::net::TcpListener::bind(SocketAddr::new(ip, *p)) {
                Ok(mut l) => {
                    self.poll
                        .registry()
                        .register(&mut l, LISTENER, Interest::READABLE)
                        .map_err(|e| e.to_string())?;
                    self.listen_port = *p;
                    self.listener = Some(l);
                    return Ok(());
                }
                Err(e) => last = format!("port {p}: {e}"),
            }
        }
        Err(format!(
            "no side-channel port free among {} tried ({last}); set 'port' or 'port_base'",
            ports.len()
        ))
    }
}

impl Device for VerbsDevice {
    const NAME: &'static CStr = c"verbs";
    const VERSION: &'static CStr = c"0.1.0";
    const DESCRIPTION: &'static CStr = c"RDMA transport over ibverbs RC queue pairs: eager SENDs under credits, RDMA READ rendezvous, TCP side channel for bootstrap";
    const KIND: DeviceKind = DeviceKind::Transport;
    const PARAMS: &'static [vmi_device::abi::VmiParamSpec] = PARAMS;
    const RDMA_ACCESS: bool = true;
    const SEND_INLINE: bool = true;
    const RECEIVE_DIRECT: bool = true;
    type Frame = VerbsFrame;

    fn create(host: Host, config: &Config) -> Result<Self, String> {
        let cfg = VerbsConfig::from_config(config)?;
        let auth = AuthKey::resolve(&cfg.auth_key_file)?;
        let mut nic = Self::open_nic(&cfg)?;
        let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
        if let Some(fd) = nic.fd() {
            poll.registry()
                .register(&mut mio::unix::SourceFd(&fd), NIC, Interest::READABLE)
                .map_err(|e| format!("epoll: {e}"))?;
        }
        nic.rearm();
        log::info!("verbs: {}", nic.describe());
        let mut d = VerbsDevice {
            local_key: host.local_key(),
            signature: host.signature(),
            host,
            cfg,
            auth,
            nic,
            poll,
            events: Events::with_capacity(256),
            listener: None,
            listen_port: 0,
            conns: Vec::new(),
            free: Vec::new(),
            by_vmi: HashMap::new(),
            comps: Vec::with_capacity(BATCH),
            held: HeldBuffers::default(),
            big: HashMap::new(),
            zombies: HashMap::new(),
            regcache_off: RegCache::<Mr>::new(1).off_reason().map(str::to_string),
            next_big: 0,
            next_read: 0,
            budget_left: 0,
            more: false,
            nic_fired: false,
            delivered: 0,
            published: HashMap::new(),
            next_published: 0,
            next_rdma: 0,
            rdma_ops: 0,
            read_bytes_peak: 0,
            inline_sends: 0,
            direct_receives: 0,
            turn: 0,
            quiet: true,
        };
        d.listen()?;
        Ok(d)
    }

    fn send_inline(&mut self, conn: u64, flags: u32, data: &[u8]) -> bool {
        let Some(&idx) = self.by_vmi.get(&conn) else {
            return false;
        };
        let Some(c) = conn!(self, idx) else {
            return false;
        };
        let Some(ep) = c.ep.as_mut() else {
            return false;
        };
        // Only when it goes out now, in order, in one SEND: else the host sends an IRB.
        if c.stage != Stage::Open
            || c.closing.is_some()
            || !c.waiting.is_empty()
            || !c.unsent.is_empty()
            || data.len() > ep.eager_max()
            || !ep.can_send_now()
        {
            return false;
        }
        // Token 0 names no IRB: the SEND's completion ends nothing at the host.
        if ep
            .send(0, Fragment::Eager(data.to_vec(), meta_of(flags)))
            .is_err()
        {
            return false;
        }
        self.inline_sends += 1;
        self.drive(idx);
        true
    }

    fn capabilities(&self, _below: Capabilities) -> Capabilities {
        Capabilities {
            max_fragment: self.cfg.max_fragment,
            headroom: 0,
            tailroom: 0,
            max_connect_data: self.cfg.max_connect_data,
        }
    }

    fn reach(&mut self, host: &str, _key: &str) -> Result<(), String> {
        vmi_device::dial::check_host(host)
    }

    fn submit(&mut self, mut irb: Irb) -> Disposition {
        let conn = irb.conn();
        match irb.op() {
            Op::Send => {
                let Some(&idx) = self.by_vmi.get(&conn) else {
                    irb.set_detail("the connection is closed");
                    return Disposition::Complete(irb, Status::ConnectionLost);
                };
                let len = irb.data_len() as u64;
                if len > self.cfg.max_fragment {
                    irb.set_detail(&format!(
                        "fragment of {len} bytes is over max_fragment {}",
                        self.cfg.max_fragment
                    ));
                    return Disposition::Complete(irb, Status::TooLarge);
                }
                let open = conn!(self, idx).is_some_and(|c| {
                    c.closing.is_none() && matches!(c.stage, Stage::Open | Stage::AwaitReady)
                });
                if !open {
                    irb.set_detail("the connection is not open");
                    return Disposition::Complete(irb, Status::ConnectionLost);
                }
                self.offer(idx, irb, false);
                Disposition::Pending
            }
            Op::Connect => {
                if self.open_conns() >= self.max_conns() {
                    irb.set_detail(&format!(
                        "{} connections already, the most this verbs device takes (max_connections {}, or what its completion queue of {} entries holds: raise cq_entries or lower credits)",
                        self.open_conns(),
                        self.cfg.max_connections,
                        self.cfg.cq_entries
                    ));
                    return Disposition::Complete(irb, Status::NoResources);
                }
                let (host, key) = irb.peer();
                let (h, port) = match split_host_port(&host) {
                    Ok(x) => x,
                    Err(e) => {
                        irb.set_detail(&e);
                        return Disposition::Complete(irb, Status::Invalid);
                    }
                };
                let ip = match (h.as_str(), 0u16).to_socket_addrs().map(|mut a| a.next()) {
                    Ok(Some(a)) => a.ip(),
                    _ => {
                        irb.set_detail(&format!("cannot resolve host '{h}'"));
                        return Disposition::Complete(irb, Status::Unreachable);
                    }
                };
                let ports = match port {
                    Some(p) => vec![p],
                    None => probe_ports(
                        &key,
                        self.cfg.port_base,
                        self.cfg.port_span,
                        self.cfg.probe_count,
                    ),
                };
                let data = gather(&irb);
                let addrs = ports.into_iter().map(|p| SocketAddr::new(ip, p)).collect();
                let attempt = Attempt {
                    dial: Dial::new(&key, &host, addrs, Instant::now(), self.cfg.connect_timeout),
                    irb: Some(irb),
                    data,
                };
                self.start_attempt(attempt, conn);
                Disposition::Pending
            }
            Op::Accept | Op::Reject => {
                let Some(&idx) = self.by_vmi.get(&conn) else {
                    irb.set_detail("the connecting peer went away");
                    return Disposition::Complete(irb, Status::ConnectionLost);
                };
                let reply = gather(&irb);
                match self.answer(idx, irb.op() == Op::Accept, reply) {
                    Ok(()) => Disposition::Complete(irb, Status::Ok),
                    Err(why) => {
                        irb.set_detail(&why);
                        Disposition::Complete(irb, Status::Invalid)
                    }
                }
            }
            Op::Disconnect => {
                let Some(&idx) = self.by_vmi.get(&conn) else {
                    return Disposition::Complete(irb, Status::Ok);
                };
                let Some(c) = conn!(self, idx) else {
                    return Disposition::Complete(irb, Status::Ok);
                };
                match c.stage {
                    Stage::Dialing
                    | Stage::Hello
                    | Stage::Requested
                    | Stage::Accepted
                    | Stage::Proving => {
                        self.fail(
                            idx,
                            Status::Cancelled,
                            "disconnected while connecting",
                            false,
                        );
                        Disposition::Complete(irb, Status::Ok)
                    }
                    _ => {
                        c.closing = Some(irb);
                        self.check_close(idx);
                        Disposition::Pending
                    }
                }
            }
            other => {
                irb.set_detail(&format!("verbs does not handle {other:?}"));
                Disposition::Complete(irb, Status::Invalid)
            }
        }
    }

    fn complete(&mut self, irb: &mut CompletingIrb) {
        let f = std::mem::take(irb.frame::<VerbsFrame>());
        if f.held != 0 {
            self.held.release(f.held);
        }
        if f.big != 0
            && let Some(b) = self.big.remove(&f.big)
        {
            match conn!(self, b.idx).filter(|c| c.qp.as_ref().is_some_and(|q| q.qpn == b.qpn)) {
                Some(c) => c.read_pool.give(self.nic.as_mut(), b.staged),
                None => {
                    // Its connection is gone: the last fragment of a closed domain frees it.
                    b.staged.release(self.nic.as_mut());
                    if let Some(n) = self.zombies.get_mut(&b.domain) {
                        *n -= 1;
                        if *n == 0 {
                            self.zombies.remove(&b.domain);
                            self.nic.free_domain(b.domain);
                        }
                    }
                }
            }
        }
    }

    fn poll(&mut self, budget: usize) -> usize {
        self.budget_left = budget.min(self.host.irbs_available() as usize);
        let start = self.budget_left;
        // The side channels and the completion channel are looked at (one epoll_wait) every
        // 16th poll, and after a poll that found nothing (the host may sleep next): the data
        // path is the completion queue, read every poll with no system call.
        self.turn = self.turn.wrapping_add(1);
        let look = self.turn.is_multiple_of(16) || self.quiet;
        if look
            && let Err(e) = self.poll.poll(&mut self.events, Some(Duration::ZERO))
            && e.kind() != io::ErrorKind::Interrupted
        {
            log::error!("verbs: epoll failed: {e}");
        }
        if !look {
            self.events.clear();
        }
        // The events are taken out for the walk (the handlers need `self`) and put back, so
        // a poll allocates nothing.
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for e in events.iter() {
            let (token, writable) = (e.token(), e.is_writable());
            let readable = e.is_readable() || e.is_read_closed() || e.is_error();
            match token {
                LISTENER => self.accept_all(),
                NIC => self.nic_fired = true,
                Token(t) => {
                    let idx = t - 2;
                    // A connect in progress learns its outcome from any event: writable when
                    // it succeeded, an error (or hang-up) when it was refused.
                    let dialing = conn!(self, idx).is_some_and(|c| c.stage == Stage::Dialing);
                    if dialing {
                        self.on_dialed(idx);
                        continue;
                    }
                    if writable {
                        self.flush_side(idx);
                    }
                    if readable {
                        self.on_readable(idx);
                    }
                }
            }
        }
        self.events = events;
        if std::mem::take(&mut self.nic_fired) {
            self.nic.rearm();
        }
        // Completions, while the budget lasts: each may hand fragments up.
        self.more = false;
        while self.budget_left > 0 {
            self.comps.clear();
            let n = self.nic.poll(&mut self.comps, BATCH);
            let comps = std::mem::take(&mut self.comps);
            for c in &comps {
                self.on_completion(*c);
            }
            self.comps = comps;
            for idx in 0..self.conns.len() {
                if conn!(self, idx).is_some_and(|c| !c.up.is_empty()) {
                    self.hand_up(idx);
                }
            }
            if n < BATCH {
                break;
            }
            self.more = true;
        }
        if self.budget_left == 0 {
            self.more = true;
        }
        self.maintain(Instant::now());
        for idx in 0..self.conns.len() {
            if let Some(c) = conn!(self, idx)
                && c.stage != Stage::Dialing
                && !c.rx.is_empty()
            {
                self.advance(idx);
            }
        }
        let done = start - self.budget_left;
        self.quiet = done == 0;
        done
    }

    fn wait_fd(&self) -> (Option<RawFd>, Option<Duration>) {
        let fd = Some(self.poll.as_raw_fd());
        let pending = self
            .conns
            .iter()
            .flatten()
            .any(|c| !c.up.is_empty() || c.peer_done);
        if self.more || pending {
            return (fd, Some(Duration::ZERO));
        }
        let now = Instant::now();
        let next = self
            .conns
            .iter()
            .flatten()
            .filter_map(|c| c.deadline)
            .min()
            .map(|d| d.saturating_duration_since(now));
        (fd, next)
    }

    fn register(&mut self, _base: *mut u8, len: usize) -> u64 {
        // A registration for no connection would be out of every queue pair's domain: a
        // host of ABI 1.4 calls `register_conn` for published buffers.
        log::warn!(
            "verbs: {len} bytes registered for no connection; the peer reaches them through messages"
        );
        0
    }

    // The pointer comes from the host, which keeps it valid (the trait's contract); the
    // device hands it to the NIC and never dereferences it.
    #[allow(clippy::not_unsafe_ptr_arg_deref)]
    fn register_conn(&mut self, conn: u64, base: *mut u8, len: usize) -> u64 {
        let Some(&idx) = self.by_vmi.get(&conn) else {
            return 0;
        };
        let Some(domain) = conn!(self, idx).map(|c| c.domain).filter(|&d| d != 0) else {
            return 0;
        };
        // SAFETY: the host keeps the memory mapped until `deregister` (Device::register's
        // contract); it is the application's published buffer, open to this connection's
        // peer (its domain alone) by the application's choice, and the device never reads or
        // writes it itself.
        #[allow(unsafe_code)]
        let mr = match unsafe {
            self.nic
                .register(domain, base, len, Access::RemoteReadWrite)
        } {
            Ok(mr) => mr,
            Err(e) => {
                log::warn!(
                    "verbs: cannot register {len} bytes for RDMA: {e}; the peer reaches them through messages"
                );
                return 0;
            }
        };
        self.next_published = self.next_published.wrapping_add(1).max(1);
        while self.published.contains_key(&self.next_published) {
            self.next_published = self.next_published.wrapping_add(1).max(1);
        }
        self.published.insert(self.next_published, (idx, mr));
        (u64::from(self.next_published) << 32) | u64::from(mr.rkey)
    }

    fn deregister(&mut self, handle: u64) {
        if let Some((_, mr)) = self.published.remove(&((handle >> 32) as u32)) {
            self.nic.deregister(mr);
        }
    }

    fn rdma_access(
        &mut self,
        conn: u64,
        write: bool,
        remote: u64,
        key: Option<&VmiRdmaKey>,
        segs: &[VmiSeg],
    ) -> Option<Status> {
        let rkey = key.map_or(0, |k| k.remote_key);
        if rkey == 0 {
            return None; // the peer's transport registered nothing: messages
        }
        let idx = *self.by_vmi.get(&conn)?;
        Some(self.one_sided(idx, write, remote, rkey, segs))
    }

    fn get_attr(&self, name: &str) -> Option<String> {
        match name {
            "nic" => Some(self.nic.describe()),
            "authentication" => Some(match &self.auth {
                Some(k) => format!("on (key from {})", k.source),
                None => "off".into(),
            }),
            "listen_port" => Some(self.listen_port.to_string()),
            "connections" => Some(self.by_vmi.len().to_string()),
            "delivered" => Some(self.delivered.to_string()),
            "rdma_ops" => Some(self.rdma_ops.to_string()),
            "inline_sends" => Some(self.inline_sends.to_string()),
            "direct_receives" => Some(self.direct_receives.to_string()),
            "read_bytes_peak" => Some(self.read_bytes_peak.to_string()),
            // Read back from the first open connection's socket.
            "keepalive" => self.conns.iter().flatten().next().map(|c| {
                let r = socket2::SockRef::from(&c.sock);
                match (r.keepalive(), r.tcp_keepalive_time()) {
                    (Ok(true), Ok(t)) => format!("on ({} s idle)", t.as_secs()),
                    (Ok(true), _) => "on".into(),
                    _ => "off".into(),
                }
            }),
            "regcache" => {
                // The connections' caches together.
                let mut t = vmi_device::regcache::CacheStats::default();
                for c in self.conns.iter().flatten() {
                    let s = c.regcache.stats();
                    t.hits += s.hits;
                    t.misses += s.misses;
                    t.invalidated += s.invalidated;
                    t.evicted += s.evicted;
                    t.uncached += s.uncached;
                    t.entries += s.entries;
                    t.bytes += s.bytes;
                }
                Some(match &self.regcache_off {
                    Some(why) => format!("{why}; {t:?}"),
                    None => format!("{t:?}"),
                })
            }
            "protocols" => Some(format!(
                "eager (one SEND into a posted receive buffer, {} per peer) up to {} bytes (eager_max; the smaller of the two sides' is used); rendezvous above: the receiver reads the fragment with RDMA READ",
                self.cfg.credits, self.cfg.eager_max
            )),
            _ => None,
        }
    }
}

impl Drop for VerbsDevice {
    fn drop(&mut self) {
        let mut open_domains = Vec::new();
        for idx in 0..self.conns.len() {
            if let Some(mut c) = self.conns[idx].take() {
                c.release(self.nic.as_mut());
                open_domains.push(c.domain);
            }
        }
        let nic = &mut self.nic;
        for (_, (_, mr)) in self.published.drain() {
            nic.deregister(mr);
        }
        let mut domains: std::collections::HashSet<u32> = self.zombies.keys().copied().collect();
        for (_, b) in self.big.drain() {
            domains.insert(b.domain);
            b.staged.release(nic.as_mut());
        }
        domains.extend(open_domains);
        for d in domains.into_iter().filter(|&d| d != 0) {
            nic.free_domain(d);
        }
    }
}
