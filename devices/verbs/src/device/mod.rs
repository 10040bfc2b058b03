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
use std::io::{self, Read};
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
    by_vmi: vmi_device::connmap::ConnMap<usize>,
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
    /// Large fragments the peer read where they lay (no staging copy).
    zero_copy_sends: u64,
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

mod connect;
mod data;
mod onesided;

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
        self.end(idx, status, detail, tell, None);
    }

    /// Ends connection `idx`. Its held IRBs complete with `aborted` when the application
    /// aborted it (`Op::Abort`: sends and the close alike), else sends with
    /// `ConnectionLost` and a close with success.
    fn end(
        &mut self,
        idx: usize,
        status: Status,
        detail: &str,
        tell: bool,
        aborted: Option<Status>,
    ) {
        let Some(mut c) = self.take(idx) else { return };
        log::debug!("verbs: connection to {} ends: {detail}", c.peer);
        let _ = c.sock.shutdown(std::net::Shutdown::Both);
        let lost = aborted.unwrap_or(Status::ConnectionLost);
        if let Some(mut a) = c.attempt.take()
            && let Some(mut irb) = a.irb.take()
        {
            irb.set_detail(detail);
            irb.complete(status);
        }
        for (_, mut irb) in c.pending.drain() {
            irb.set_detail(detail);
            irb.complete(lost);
        }
        for mut irb in c.waiting.drain(..) {
            irb.set_detail(detail);
            irb.complete(lost);
        }
        if let Some(mut irb) = c.closing.take() {
            if let Some(s) = aborted {
                irb.set_detail(detail);
                irb.complete(s);
            } else {
                irb.complete(Status::Ok);
            }
            return;
        }
        let open = matches!(c.stage, Stage::Open | Stage::AwaitReady | Stage::Requested);
        if tell && open && c.vmi != 0 && !c.peer_done {
            self.budget_left = self.budget_left.saturating_sub(1);
            self.host.report_peer_disconnect(c.vmi, status, detail);
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
            // MSG_NOSIGNAL: a peer that closed fails the write with EPIPE instead of raising
            // SIGPIPE, whose default action would end a C application.
            match socket2::SockRef::from(&c.sock).send_with_flags(&c.tx, libc::MSG_NOSIGNAL) {
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
            by_vmi: vmi_device::connmap::ConnMap::new(),
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
            zero_copy_sends: 0,
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
            Op::Abort => {
                if let Some(&idx) = self.by_vmi.get(&conn) {
                    let (status, why) = irb.abort_reason();
                    self.end(idx, status, &why, false, Some(status));
                }
                // The host completes it after what it ended (queued in this call), so the
                // application hears of those sends first, then of the end.
                Disposition::Complete(irb, Status::Ok)
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
                        // The host completes it after the connect's outcome.
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

    fn peer_close_released(&mut self, conn: u64) {
        // What the host sent in answer to the peer's last fragments is queued: the bye is
        // answered once those sends are done (`maintain`).
        if let Some(&idx) = self.by_vmi.get(&conn)
            && let Some(c) = conn!(self, idx)
            && c.peer_done
        {
            c.released = true;
        }
    }

    fn poll(&mut self, budget: usize) -> usize {
        self.budget_left = self.host.receive_credit(budget);
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
            .any(|c| !c.up.is_empty() || (c.peer_done && c.released && c.stage == Stage::Open));
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
            "zero_copy_sends" => Some(self.zero_copy_sends.to_string()),
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
                "eager (one SEND into a posted receive buffer, {} per peer) up to {} bytes (eager_max; the smaller of the two sides' is used); rendezvous above: the receiver reads the fragment with RDMA READ, where it lies when it is in one piece of at least {} bytes (send_zero_copy_min; 0: never), else from a staging copy",
                self.cfg.credits, self.cfg.eager_max, self.cfg.send_zero_copy_min
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
