//! The shared-memory device: rendezvous and control on abstract Unix sockets, data through
//! per-connection SPSC rings in a memfd, eventfd doorbells only for sleeping peers.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use vmi_device::Status;
use vmi_device::abi::{VMI_FLAG_END, recv_flags, wire_flags};
use vmi_device::deliver;
use vmi_device::held::HeldBuffers;
use vmi_device::lent::{LentRings, RingCursor, RingLoan, TxLoan};
use vmi_device::signature::Signature;
use vmi_device::{
    Capabilities, CompletingIrb, Config, ConnMap, Device, DeviceKind, Disposition, Host, Irb, Op,
};

use crate::cadence::Cadence;
use crate::config::{PARAMS, ShmemConfig};
use crate::coop::Helping;
use crate::fetch::{Fetch, Step};
use crate::io::{
    Region, bind_key, doorbell, drain, listening, peer_uid, read_offset, read_peer, recv_with_fds,
    ring, send_with_fds, socket_addr, sub_segs, uid,
};
use crate::proto::{Incoming, RecordReader, Source, ack, encode_inline, encode_rendezvous, nack};
use crate::spsc::{Consumer, Corrupt, Producer};
use crate::wire::*;
use vmi_device::auth::{self, AuthKey, NONCE_LEN, Role, Transcript};

const LISTENER: Token = Token(usize::MAX);
const BELL: Token = Token(usize::MAX - 1);
/// Bytes of a ring copied out at once to look for small records to hand over directly.
const RX_BATCH: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitAnswer,
    AwaitHello,
    AwaitDecision,
    Open,
    Closing,
}

enum Tx {
    Data {
        irb: Irb,
        header: [u8; RECORD_LEN],
        off: usize,
        total: usize,
    },
    Rdv {
        irb: Irb,
        record: Vec<u8>,
        id: u64,
    },
    Close {
        irb: Irb,
    },
}

struct Conn {
    sock: UnixStream,
    vmi: u64,
    state: State,
    region: Option<Region>,
    tx_ring: usize,
    rx_ring: usize,
    peer_bell: Option<OwnedFd>,
    peer_pid: i32,
    /// Address of the peer's probe bytes (single-copy check).
    peer_probe: u64,
    peer_key: String,
    /// The peer can read our memory: large sends go by single copy.
    peer_reads_me: bool,
    /// This process can read (and so write) the peer's memory: RDMA goes one-sided.
    i_reach_peer: bool,
    /// Both sides share single copies (`crate::coop`; each offered it in the handshake).
    coop: bool,
    /// The peer can write this process's memory (its single-copy probe of it succeeded):
    /// with `coop`, shares are opened for large fragments it sends.
    peer_writes_me: bool,
    /// This process can write the peer's memory (its probe of the peer succeeded): with
    /// `coop`, it helps with the shares the peer opens for fragments it sent.
    i_write_peer: bool,
    /// The receive ring's share generation last opened (`crate::coop`).
    era: u32,
    /// A fragment being read by a shared copy, waiting for the sender's last chunk.
    fetch: Option<Box<Fetch>>,
    /// The sender's side of the shares the peer opens.
    helping: Helping,
    /// The peer's pidfd, opened at the first one-sided access with a key.
    pidfd: Option<OwnedFd>,
    /// The peer's memfds attached for one-sided RDMA (at most `MAX_ATTACHED`).
    attached: Vec<crate::io::Attached>,
    /// Both processes registered for membarrier barriers: sends into this connection's ring
    /// skip the doorbell's fence, and this side issues the process-wide barrier before it
    /// sleeps (see `crate::barrier`).
    light: bool,
    /// The send ring's positions (own, the consumer's as last seen: a cross-core read only
    /// when needed), shared with the host while the ring is lent.
    tx_pos: RingCursor,
    /// The receive ring's positions (own, the producer's as last seen), likewise.
    rx_pos: RingCursor,
    ctl: Vec<u8>,
    fds: Vec<OwnedFd>,
    /// The incoming record stream's protocol state.
    reader: RecordReader,
    /// The peer left (status, detail); reported once its ring is drained.
    gone: Option<(Status, String)>,
    tx: VecDeque<Tx>,
    acks: VecDeque<[u8; RECORD_LEN]>,
    rdv_waiting: HashMap<u64, Irb>,
    next_id: u64,
    connect: Option<Irb>,
    deadline: Option<Instant>,
    /// A local disconnect whose goodbye is sent, completed when the peer answers it.
    closing: Option<Irb>,
    /// The peer said goodbye first; the connection is dropped at the next poll.
    peer_done: bool,
    /// Authentication: this side's nonce (a connector's, or a listener's challenge).
    auth_nonce: Option<[u8; NONCE_LEN]>,
    /// The peer proved it holds the key.
    auth_ok: bool,
}

impl Conn {
    /// Nothing to do for this connection in a poll: no new bytes in its receive ring (its
    /// head where this side last read; compared for equality only), nothing to write, no
    /// end pending. The idle poll's whole cost for a connection.
    #[inline]
    fn idle(&self) -> bool {
        self.rx_quiet()
            && self.gone.is_none()
            && self.tx.is_empty()
            && self.acks.is_empty()
            && self.fetch.is_none()
            && !self.may_help()
    }

    /// Fragments this side sent wait for the peer's single-copy read, and this side may
    /// write its part of a shared copy (`crate::coop`): polls look at the share.
    #[inline]
    fn may_help(&self) -> bool {
        self.coop && self.i_write_peer && !self.rdv_waiting.is_empty()
    }

    /// No bytes written into the receive ring since this side last read it (its head where
    /// this side's position is; compared for equality only: any other value is checked by
    /// the consumer that reads it).
    #[inline]
    fn rx_quiet(&self) -> bool {
        self.region.as_ref().is_none_or(|r| {
            let view = r.ring(self.rx_ring);
            view.shared()
                .head
                .load(std::sync::atomic::Ordering::Relaxed)
                == self.rx_pos.get().0
        })
    }

    fn new(
        sock: UnixStream,
        state: State,
        peer_pid: i32,
        deadline: Instant,
        max_fragment: u64,
    ) -> Conn {
        let connector = state == State::AwaitAnswer;
        Conn {
            sock,
            vmi: 0,
            state,
            region: None,
            tx_ring: if connector { 0 } else { 1 },
            rx_ring: if connector { 1 } else { 0 },
            peer_bell: None,
            peer_pid,
            peer_probe: 0,
            peer_key: String::new(),
            peer_reads_me: false,
            i_reach_peer: false,
            coop: false,
            peer_writes_me: false,
            i_write_peer: false,
            era: 0,
            fetch: None,
            helping: Helping::default(),
            light: false,
            pidfd: None,
            attached: Vec::new(),
            tx_pos: RingCursor::default(),
            rx_pos: RingCursor::default(),
            ctl: Vec::new(),
            fds: Vec::new(),
            reader: RecordReader::new(max_fragment),
            gone: None,
            tx: VecDeque::new(),
            acks: VecDeque::new(),
            rdv_waiting: HashMap::new(),
            next_id: 1,
            connect: None,
            deadline: Some(deadline),
            closing: None,
            peer_done: false,
            auth_nonce: None,
            auth_ok: false,
        }
    }
}

/// Per-IRB frame: the received buffer an IRB points at (a `HeldBuffers` handle).
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct ShmemFrame {
    held: u32,
}

/// The shared-memory transport.
pub struct ShmemDevice {
    host: Host,
    cfg: ShmemConfig,
    key: String,
    uid: u32,
    signature: Signature,
    signature_text: String,
    poll: Poll,
    events: Events,
    /// The key's socket, listening; `None` when this process accepts no connections.
    listener: Option<UnixListener>,
    /// The key's socket, bound but not listening (it reserves the key).
    _reserved: Option<OwnedFd>,
    bell: OwnedFd,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    by_vmi: ConnMap<usize>,
    pool: HeldBuffers,
    /// When the control sockets are looked at next (see `cadence`).
    cadence: Cadence,
    /// The connection `poll` reads first (see `poll_work`).
    rx_first: usize,
    slept: Cell<bool>,
    /// Connections whose peer said goodbye, to finish at the next poll.
    finishing: Vec<usize>,
    /// The pre-shared key peers must prove they hold, if any.
    auth: Option<AuthKey>,
    /// Messages written by `send_inline`, with no IRB (the `inline_sends` attribute).
    inline_sends: u64,
    /// Peer memfds attached for one-sided RDMA, in all.
    rdma_attached: u64,
    /// Fragments the host took through `poll_direct`, with no IRB (`direct_receives`).
    direct_receives: u64,
    /// Shared copies received: (fragments, of them with chunks the sender wrote, chunks this
    /// side wrote as a sender); attribute `coop_copies`.
    coop_stats: (u64, u64, u64),
    /// Bytes of shared-copy buffers leaked because their sender might still write into them
    /// (`COOP_LEAK_CAP`).
    coop_leaked: usize,
    /// The payload buffer a fragment handed over directly is read into (it comes straight
    /// back, so it skips the pool).
    rx_scratch: Vec<u8>,
    /// A private copy of a batch of a ring's bytes, parsed for small records (see `drain_rx`).
    rx_batch: Box<[u8; RX_BATCH]>,
    /// The receive and send rings lent to the host (see `relend`).
    lent: LentRings,
    /// This process registered for membarrier barriers (`crate::barrier`); why not, if not.
    barrier: Result<(), String>,
    /// The process-wide barrier failed before a sleep: sleeps are cut short from then on.
    barrier_failed: Cell<bool>,
}

/// A ring's consumer end as the record reader's byte source.
struct RingSource<'c, 'r>(
    &'c mut Consumer<'r, std::sync::atomic::AtomicU64, crate::spsc::mem::RawStorage>,
);

impl Source for RingSource<'_, '_> {
    fn has(&mut self, n: usize) -> Result<bool, String> {
        self.0.has(n).map_err(|e| e.to_string())
    }
    fn pop(&mut self, dst: &mut [u8]) -> Result<usize, String> {
        self.0.pop(dst).map_err(|e| e.to_string())
    }
}

/// The IRB flags of a received data record: the end bit and the sender's flags.
fn irb_flags(rec: &Record) -> u32 {
    recv_flags(matches!(rec.kind, DATA_END | RDV_END), rec.flags)
}

fn deliver(host: &Host, pool: &mut HeldBuffers, vmi: u64, rec: &Record, buf: Vec<u8>) {
    deliver_at(host, pool, vmi, rec, buf, 0);
}

/// [`deliver`] of the fragment in `buf[at..]` (a single-copy read placed for a fast copy).
fn deliver_at(
    host: &Host,
    pool: &mut HeldBuffers,
    vmi: u64,
    rec: &Record,
    buf: Vec<u8>,
    at: usize,
) {
    let Some(mut irb) = host.alloc_irb(Op::Recv, vmi) else {
        // drain_rx reads a record only when the host offers an IRB for it.
        log::error!("shmem: the host refused a receive IRB it had offered; a fragment is lost");
        pool.give(buf);
        return;
    };
    irb.set_flags(irb_flags(rec));
    let fragment = &buf[at.min(buf.len())..];
    let (ptr, len) = (fragment.as_ptr() as *mut u8, fragment.len());
    irb.frame::<ShmemFrame>().held = pool.hold(buf);
    push_segment(&mut irb, ptr, len);
    irb.pass();
}

/// Buffers of shared copies dropped while the sender may still write into them (a broken
/// share, or a read that failed under it) are never reused: they are leaked, at most this
/// many bytes per device; past it, no more shares are opened.
const COOP_LEAK_CAP: usize = 64 << 20;

/// What became of a fetch after a step.
enum Landed {
    /// Delivered and acknowledged.
    Delivered,
    /// Read failed: the sender was asked to send it inline.
    Refused,
    /// Kept on the connection until the sender's last chunk is written (or an IRB is free).
    Waiting,
    /// The peer aborted while its memory was read: the connection ends.
    Aborted,
    /// The peer broke the share's protocol: the connection ends (the reason).
    Broken(String),
}

/// The parts of a connection a fetch lands in (borrowed apart from its ring memory).
struct Landing<'a> {
    fetch: &'a mut Option<Box<Fetch>>,
    /// The device's `coop_copies` counters.
    stats: &'a mut (u64, u64, u64),
    acks: &'a mut VecDeque<[u8; RECORD_LEN]>,
    sock: &'a UnixStream,
    vmi: u64,
    peer_key: &'a str,
}

macro_rules! landing {
    ($c:expr, $stats:expr) => {
        Landing {
            fetch: &mut $c.fetch,
            stats: $stats,
            acks: &mut $c.acks,
            sock: &$c.sock,
            vmi: $c.vmi,
            peer_key: &$c.peer_key,
        }
    };
}

/// Delivers a complete fetch (or keeps it, or refuses it, as `step` says).
fn land(
    host: &Host,
    pool: &mut HeldBuffers,
    c: Landing<'_>,
    f: Fetch,
    step: Step,
    direct_receives: &mut u64,
    leaked: &mut usize,
) -> Landed {
    match step {
        Step::Waiting => {
            *c.fetch = Some(Box::new(f));
            Landed::Waiting
        }
        Step::Complete => {
            if crate::io::hung_up(c.sock) {
                // The peer aborted (or exited) while its memory was read: the buffers may
                // be its application's again, so what was read is not the fragment.
                // Dropped; the connection is lost. (A sender that writes its part has
                // finished its writes before its socket closes.)
                pool.give(f.buf);
                return Landed::Aborted;
            }
            let (shared, helped) = (f.shared(), f.sender_chunks() > 0);
            if deliver::offer(c.vmi, irb_flags(&f.rec), &f.buf[f.at..]) {
                *direct_receives += 1;
                pool.give(f.buf);
            } else if host.irbs_available() == 0 {
                // drain_rx reads a record only with an IRB to hand it up in; one that waited
                // for its sender may find none free now: it waits for one.
                *c.fetch = Some(Box::new(f));
                return Landed::Waiting;
            } else {
                deliver_at(host, pool, c.vmi, &f.rec, f.buf, f.at);
            }
            c.stats.0 += u64::from(shared);
            c.stats.1 += u64::from(helped);
            c.acks.push_back(ack(f.rec.id));
            Landed::Delivered
        }
        Step::Failed { why, reusable } => {
            log::warn!(
                "shmem: single-copy read from '{}' failed ({why}); asking it to send inline",
                c.peer_key
            );
            c.acks.push_back(nack(&f.rec));
            release(pool, f.buf, reusable, leaked);
            Landed::Refused
        }
        Step::Broken { bad, reusable } => {
            release(pool, f.buf, reusable, leaked);
            Landed::Broken(format!(
                "protocol violation by '{}' in a shared copy: {}",
                c.peer_key, bad.0
            ))
        }
    }
}

/// Back to the pool, or leaked when the sender may still write into it (see
/// [`COOP_LEAK_CAP`]).
fn release(pool: &mut HeldBuffers, buf: Vec<u8>, reusable: bool, leaked: &mut usize) {
    if reusable {
        pool.give(buf);
    } else {
        *leaked = leaked.saturating_add(buf.capacity());
        log::warn!(
            "shmem: a shared copy ended while its sender may still write into its buffer; {} bytes are set aside for good ({} so far; shares stop at {})",
            buf.capacity(),
            *leaked,
            COOP_LEAK_CAP
        );
        std::mem::forget(buf);
    }
}

#[allow(unsafe_code)]
fn push_segment(irb: &mut Irb, ptr: *mut u8, len: usize) {
    // SAFETY: the buffer is held in `HeldBuffers` (its heap memory does not move) until the
    // IRB's completion step releases it.
    let _ = unsafe { irb.push_segment(ptr, len) };
}

fn is_local(host: &str) -> bool {
    let h = host
        .trim_start_matches('[')
        .split(']')
        .next()
        .unwrap_or(host);
    let h = h
        .rsplit_once(':')
        .filter(|(a, _)| !a.contains(':'))
        .map_or(h, |(a, _)| a);
    if h.is_empty() || h == "localhost" || h == "::1" || h.starts_with("127.") {
        return true;
    }
    // An address of one of this machine's interfaces (as a job's host list gives them):
    // only a local address can be bound.
    if let Ok(ip) = h.parse::<std::net::IpAddr>() {
        return std::net::UdpSocket::bind((ip, 0)).is_ok();
    }
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy();
    h == name || name.split('.').next() == Some(h)
}

impl ShmemDevice {
    /// [`Device::poll`] when something may be due: goodbyes to answer, a wake-up to note,
    /// rings to read and sends to flush, the periodic control look.
    #[inline(never)]
    fn poll_work(&mut self, budget: usize) -> usize {
        // This may end connections and unmap their rings: the host reads none of them until
        // `relend` lists them again after it (and none at all if a panic cut it short).
        self.lent.set_busy();
        let mut n = 0;
        // Counted down over the connections: the records of one poll stay within it.
        let mut credit = self.host.receive_credit(budget);
        if !self.finishing.is_empty() {
            for idx in std::mem::take(&mut self.finishing) {
                if self.conns[idx].as_ref().is_some_and(|c| c.peer_done) {
                    self.finish(idx);
                    n += 1;
                }
            }
        }
        if self.slept.replace(false) {
            for c in self.conns.iter().flatten() {
                if let Some(r) = c.region.as_ref() {
                    let view = r.ring(c.rx_ring);
                    let (tail, head) = c.rx_pos.get();
                    Consumer::resume(view.shared(), tail, head).woke();
                }
            }
            self.cadence.soon();
        }
        // From `rx_first` on, round the table: a connection that used up a poll's credit is
        // read last at the next poll, so a busy peer cannot starve the others.
        let len = self.conns.len();
        let mut next = self.rx_first.min(len);
        for _ in 0..len {
            if next == len {
                next = 0;
            }
            let idx = next;
            next += 1;
            if self.conns[idx].as_ref().is_some_and(|c| !c.idle()) {
                if credit > 0 {
                    let got = self.drain_rx(idx, credit);
                    credit = credit.saturating_sub(got);
                    n += got;
                    if credit == 0 {
                        self.rx_first = idx + 1;
                    }
                }
                // The checks inline, the work out of line: an idle connection costs a few loads.
                let Some(c) = self.conns[idx].as_ref() else {
                    continue;
                };
                let (gone, sending) = (c.gone.is_some(), !c.tx.is_empty() || !c.acks.is_empty());
                let helping = c.may_help();
                if gone {
                    self.end_if_drained(idx);
                }
                if sending {
                    n += self.flush_tx(idx);
                }
                if helping {
                    self.help(idx);
                }
            }
        }
        if self.cadence.due(Instant::now) {
            self.cadence.looked(Instant::now());
            n += self.control();
        } else {
            self.cadence.count(1);
        }
        n
    }

    /// Lists the receive and send rings again for the host and lets it skip this device's polls
    /// until the next control look is due — when nothing but their records can need this
    /// device: no goodbye to answer, no sleep to end, and every connection open with its
    /// reader between records, nothing queued to send or acknowledge, no end pending.
    /// Otherwise the rings stay unlent (busy) until a later poll.
    #[allow(unsafe_code)]
    #[inline(never)]
    fn relend(&mut self) {
        let lendable = self.finishing.is_empty()
            && !self.slept.get()
            && self.conns.iter().flatten().all(|c| {
                c.state == State::Open
                    && c.region.is_some()
                    && c.reader.at_boundary()
                    && c.gone.is_none()
                    && !c.peer_done
                    && c.tx.is_empty()
                    && c.acks.is_empty()
                    && c.fetch.is_none()
                    && !c.may_help()
            });
        if !lendable {
            self.lent.set_busy();
            return;
        }
        let max_len = self.cfg.max_fragment;
        // What `send_inline` takes: up to max_fragment, below single_copy_min when the peer
        // reads this process's memory (larger ones go by single copy).
        let small = self.cfg.single_copy_min.saturating_sub(1) as u64;
        let tx = self.conns.iter().flatten().filter_map(|c| {
            let view = c.region.as_ref()?.ring(c.tx_ring);
            let (head, tail, data, cap) = view.loan();
            Some(TxLoan {
                ring: RingLoan {
                    conn: c.vmi,
                    head,
                    tail,
                    data,
                    cap,
                    max_len: if c.peer_reads_me {
                        max_len.min(small)
                    } else {
                        max_len
                    },
                    cursor: &c.tx_pos,
                },
                sleeping: view.sleeping(),
                bell: c.peer_bell.as_ref().map_or(-1, |b| b.as_raw_fd()),
                light: c.light,
            })
        });
        let rings = self.conns.iter().flatten().filter_map(|c| {
            let (head, tail, data, cap) = c.region.as_ref()?.ring(c.rx_ring).loan();
            Some(RingLoan {
                conn: c.vmi,
                head,
                tail,
                data,
                cap,
                max_len,
                cursor: &c.rx_pos,
            })
        });
        // SAFETY: every listed ring lies in the mapping of its connection's region, which
        // lives until the connection is taken out of the table; that happens only inside
        // this device's poll or an IRB it is given, and `submit` and every other entry that
        // could reach it sets the rings busy first (as does `Drop`). Each reader is between
        // records (checked above) at its cursor, which the host reads through; nothing is
        // queued to send on any connection (checked above), and each doorbell stays open
        // with its connection.
        unsafe { self.lent.publish(rings, tx, self.skips()) };
    }

    /// A shared copy dropped with its connection: the sender takes no more chunks; its
    /// buffer is reused once the sender's chunks are written (a live sender finishes one in
    /// microseconds: 20 ms at most are given) or its process hung up, and set aside for good
    /// otherwise.
    fn drop_fetch(&mut self, c: &Conn, mut f: Fetch) {
        let Some(region) = c.region.as_ref() else {
            self.pool.give(f.buf);
            return;
        };
        let view = region.ring(c.rx_ring);
        let share = view.share();
        let give_up = Instant::now() + Duration::from_millis(20);
        let mut reusable = f.seal(&share);
        while !reusable && !crate::io::hung_up(&c.sock) && Instant::now() < give_up {
            std::thread::yield_now();
            reusable = f.seal(&share);
        }
        let reusable = reusable || crate::io::hung_up(&c.sock);
        release(&mut self.pool, f.buf, reusable, &mut self.coop_leaked);
    }

    /// What this side offers in its hello or answer.
    fn caps(&self) -> Caps {
        Caps {
            barrier: self.barrier.is_ok(),
            coop: self.cfg.coop_copy && self.cfg.single_copy,
        }
    }

    /// The sender's part of a shared copy (`crate::coop`): while the peer has a share open
    /// for a fragment this side sent, claims chunks from its back and writes them into the
    /// peer's buffer, up to `single_copy_poll_bytes` per poll (at least one chunk).
    fn help(&mut self, idx: usize) {
        let budget = self.cfg.single_copy_poll_bytes;
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        let Some(region) = c.region.as_ref() else {
            return;
        };
        let view = region.ring(c.tx_ring);
        let share = view.share();
        if !c.helping.due(&share) {
            return;
        }
        let Conn {
            helping,
            rdv_waiting,
            peer_pid,
            peer_key,
            i_write_peer,
            ..
        } = c;
        let mut wrote = 0usize;
        while wrote == 0 || wrote < budget {
            let Some(job) = helping.claim(&share, |id| {
                rdv_waiting.get(&id).map(|irb| irb.data_len() as u64)
            }) else {
                break;
            };
            let Some(irb) = rdv_waiting.get(&job.id) else {
                break;
            };
            let ranges: Vec<(u64, usize)> = irb
                .segments()
                .iter()
                .map(|s| (s.base as u64, s.len))
                .collect();
            let (from, to) = (job.bytes.start as usize, job.bytes.end as usize);
            let at = job.dst.wrapping_add(from as u64);
            match crate::io::access_peer(*peer_pid, true, at, &sub_segs(&ranges, from, to)) {
                Ok(()) => {
                    helping.wrote(&share, &job);
                    wrote += to - from;
                    self.coop_stats.2 += 1;
                }
                Err(e) => {
                    helping.failed(&share, &job);
                    *i_write_peer = false;
                    log::warn!(
                        "shmem: cannot write into '{peer_key}' ({e}); it reads every chunk of large fragments itself from now on"
                    );
                    break;
                }
            }
        }
    }

    /// The polls the host may skip before this device must be polled again (the next
    /// control look, or the next read of the clock that may make one due).
    fn skips(&self) -> u32 {
        self.cadence.skips()
    }

    fn insert(&mut self, mut conn: Conn) -> usize {
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut conn.sock, Token(idx), Interest::READABLE)
        {
            log::error!("shmem: cannot register a control socket: {e}");
        }
        if conn.vmi != 0 {
            self.by_vmi.insert(conn.vmi, idx);
        }
        self.conns[idx] = Some(conn);
        idx
    }

    fn take(&mut self, idx: usize) -> Option<Conn> {
        let mut c = self.conns.get_mut(idx)?.take()?;
        let _ = self.poll.registry().deregister(&mut c.sock);
        if let Some(f) = c.fetch.take() {
            self.drop_fetch(&c, *f);
        }
        if c.vmi != 0 && self.by_vmi.get(&c.vmi) == Some(&idx) {
            self.by_vmi.remove(&c.vmi);
        }
        self.free.push(idx);
        Some(c)
    }

    /// Ends a connection: pending sends fail, the application hears why (unless `quiet`).
    fn end(&mut self, idx: usize, status: Status, detail: &str, quiet: bool) {
        self.end_with(idx, status, detail, quiet, None);
    }

    /// As `end`; when the application aborted the connection (`Op::Abort`), every IRB held
    /// for it (sends and the close alike) completes with `aborted`.
    fn end_with(
        &mut self,
        idx: usize,
        status: Status,
        detail: &str,
        quiet: bool,
        aborted: Option<Status>,
    ) {
        let Some(mut c) = self.take(idx) else { return };
        if aborted.is_some() {
            // Shut before any buffer goes back: a peer reading this process's memory checks
            // for the shutdown after each read (see `io::hung_up`).
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
        }
        let close_status = aborted.unwrap_or(Status::Ok);
        let lost = aborted.unwrap_or(Status::ConnectionLost);
        let mut local_close = false;
        // In the order they were sent: those the peer has (waiting for its ACK), oldest
        // first, then what is queued.
        let mut waiting: Vec<(u64, Irb)> = c.rdv_waiting.drain().collect();
        waiting.sort_unstable_by_key(|(id, _)| *id);
        for (_, mut irb) in waiting {
            irb.set_detail(detail);
            irb.complete(lost);
        }
        for tx in c.tx.drain(..) {
            match tx {
                Tx::Data { mut irb, .. } | Tx::Rdv { mut irb, .. } => {
                    irb.set_detail(detail);
                    irb.complete(lost);
                }
                Tx::Close { mut irb } => {
                    local_close = true;
                    if aborted.is_some() {
                        irb.set_detail(detail);
                    }
                    irb.complete(close_status);
                }
            }
        }
        // The close after the sends it followed: the application hears of them first.
        if let Some(mut irb) = c.closing.take() {
            local_close = true;
            if aborted.is_some() {
                irb.set_detail(detail);
            }
            irb.complete(close_status);
        }
        if let Some(buf) = c.reader.take_partial() {
            self.pool.give(buf);
        }
        if let Some(mut irb) = c.connect.take() {
            irb.set_detail(detail);
            irb.complete(if status == Status::Ok {
                Status::ConnectionLost
            } else {
                status
            });
            return;
        }
        if !quiet
            && !local_close
            && c.vmi != 0
            && matches!(c.state, State::Open | State::AwaitDecision | State::Closing)
        {
            if status == Status::Ok {
                log::debug!("shmem: '{}' closed connection {:#x}", c.peer_key, c.vmi);
            } else {
                log::info!(
                    "shmem: connection {:#x} to '{}' ended: {detail}",
                    c.vmi,
                    c.peer_key
                );
            }
            self.host.report_peer_disconnect(c.vmi, status, detail);
        }
    }

    /// Ends a connection whose peer left, once everything it wrote was delivered.
    fn end_if_drained(&mut self, idx: usize) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        if c.gone.is_none() {
            return;
        }
        // A corrupt ring counts as drained: nothing more can be read from it. A record cut
        // short by the peer's death is never completed: it is dropped (the end is reported).
        let drained = c.region.as_ref().is_none_or(|r| {
            let view = r.ring(c.rx_ring);
            Consumer::resume(view.shared(), c.rx_pos.get().0, c.rx_pos.get().1)
                .available()
                .map_or(true, |n| n == 0)
        });
        if drained && let Some((status, detail)) = c.gone.take() {
            if c.closing.is_some() {
                // Our goodbye was answered: done.
                self.end(idx, Status::Ok, &detail, true);
            } else if status == Status::Ok && c.state == State::Open {
                // The peer said goodbye first: the application hears of it, and this
                // side's host may still send what the fragments before it call for (a
                // notice that a message failed), which may take it more than one poll: the
                // goodbye is answered once the host has released this report
                // (`peer_close_released`), at the next poll after that.
                c.peer_done = true;
                if !self.host.report_peer_disconnect(c.vmi, Status::Ok, &detail) {
                    self.finishing.push(idx);
                }
            } else {
                self.end(idx, status, &detail, false);
            }
        }
    }

    /// Reads up to `budget` records from a connection's incoming ring and hands fragments up;
    /// the rest waits for the next poll (the peer's ring fills and it is pushed back).
    ///
    /// Inside the host's direct poll (ABI 1.2 `poll_direct`) fragments are offered to it
    /// with no IRB (`deliver::offer`); once it declines one, that one and the rest go up as
    /// IRBs, so order is kept.
    fn drain_rx(&mut self, idx: usize, budget: usize) -> usize {
        let fetch_cap = self.cfg.single_copy_poll_bytes;
        let coop_min = self.cfg.coop_copy_min;
        let mut fetched = 0usize;
        let Self {
            conns,
            pool,
            host,
            direct_receives,
            rx_scratch,
            rx_batch,
            coop_leaked,
            coop_stats,
            ..
        } = self;
        let Some(c) = conns[idx].as_mut() else {
            return 0;
        };
        if !matches!(c.state, State::Open | State::Closing) {
            return 0;
        }
        let Some(region) = c.region.as_ref() else {
            return 0;
        };
        let view = region.ring(c.rx_ring);
        let mut n = 0;
        let mut error: Option<String> = None;
        let mut aborted = false;
        if let Some(mut f) = c.fetch.take() {
            // A shared copy waiting for the sender's last chunk: the records behind it wait.
            let step = f.step(c.peer_pid, &view.share());
            match land(
                host,
                pool,
                landing!(c, coop_stats),
                *f,
                step,
                direct_receives,
                coop_leaked,
            ) {
                Landed::Delivered => n += 1,
                Landed::Refused => {}
                Landed::Waiting => return 0,
                Landed::Aborted => aborted = true,
                Landed::Broken(e) => error = Some(e),
            }
        }
        let skip = aborted || error.is_some();
        if !skip && c.rx_quiet() {
            return n;
        }
        let (tail, head) = c.rx_pos.get();
        let mut cons = Consumer::resume(view.shared(), tail, head);
        // At most `budget` records (the poll's credit: `Host::receive_credit`, at most the
        // receive IRBs the host could hand out when the poll began), and none without a
        // receive IRB to hand it up in: the rest stays in the ring, which pushes back on the
        // peer when it fills. Records handed over directly take no IRB; before the first that
        // may need one, the host is asked what it has now (below), once per call.
        let mut credit = budget;
        // Set when a batch took every byte the ring held: the reader below has nothing to do.
        let mut all_taken = false;
        if !skip && deliver::active() && c.reader.at_boundary() {
            // Small records handed over directly: one copy of what the ring holds (up to
            // RX_BATCH bytes), parsed from that copy, and one publication of the consumer's
            // position for the batch. Whatever is not a small whole data record, or a record
            // the host does not take directly, stays in the ring for the reader below.
            let mut used = 0;
            match cons.peek(&mut rx_batch[..]) {
                Ok(got) => {
                    all_taken = got < RX_BATCH;
                    while n < credit {
                        let Some((rec, len)) = c.reader.whole_data(&rx_batch[used..got]) else {
                            break;
                        };
                        let at = used + RECORD_LEN;
                        if !deliver::offer(c.vmi, irb_flags(&rec), &rx_batch[at..at + len]) {
                            break;
                        }
                        *direct_receives += 1;
                        used = at + len;
                        n += 1;
                    }
                    all_taken &= used == got;
                }
                Err(e) => error = Some(format!("protocol violation by '{}': {e}", c.peer_key)),
            }
            cons.consume(used);
        }
        if n < credit && !skip && !all_taken {
            // Only this loop takes receive IRBs meanwhile, one per record at most.
            credit = credit.min(n.saturating_add(host.irbs_available() as usize));
        }
        while n < credit && !skip && error.is_none() && !all_taken {
            let next = if deliver::active() {
                // Handed over directly, the buffer comes straight back: no pool round trip.
                c.reader.next(&mut RingSource(&mut cons), &mut |len| {
                    let mut v = std::mem::take(rx_scratch);
                    v.clear();
                    v.resize(len, 0);
                    v
                })
            } else {
                c.reader
                    .next(&mut RingSource(&mut cons), &mut |len| pool.take(len))
            };
            match next {
                Ok(None) => break,
                Err(e) => {
                    error = Some(format!("protocol violation by '{}': {e}", c.peer_key));
                    break;
                }
                Ok(Some(Incoming::Data { rec, payload })) => {
                    if deliver::offer(c.vmi, irb_flags(&rec), &payload) {
                        *direct_receives += 1;
                        *rx_scratch = payload;
                        n += 1;
                        continue;
                    }
                    deliver(host, pool, c.vmi, &rec, payload);
                    n += 1;
                }
                Ok(Some(Incoming::Fetch { rec, ranges })) => {
                    // A poll's single-copy reads stop after `single_copy_poll_bytes`: each
                    // fills a buffer that stays held until the host has delivered it, so a
                    // batch of large reads cycles many buffers through the cache (a poll
                    // of 16 reads of 1 MiB: 16 MiB, against one warm buffer per read
                    // when the batch is small; measured +30-50 % bandwidth at 256 KiB and
                    // 1 MiB).
                    let len = rec.len as usize;
                    let mut buf = pool.take(len);
                    // Read at the offset that keeps the kernel's copy fast (`read_offset`),
                    // where the buffer's spare capacity allows it.
                    let at = read_offset(&ranges, buf.as_ptr() as usize, len, buf.capacity());
                    if at > 0 {
                        buf.resize(at + len, 0);
                    }
                    let share = view.share();
                    // Shared with the sender when it may help and is awake to (a sleeping
                    // sender would only be woken to find the copy done).
                    let shared = c.coop
                        && c.peer_writes_me
                        && *coop_leaked < COOP_LEAK_CAP
                        && len >= coop_min
                        && region.ring(c.tx_ring).sleeping().load(Ordering::Relaxed) == 0;
                    if shared {
                        c.era = c.era.wrapping_add(1).max(1);
                    }
                    let mut f = Fetch::new(rec, ranges, buf, at, shared.then_some((&share, c.era)));
                    let step = f.step(c.peer_pid, &share);
                    fetched += f.read;
                    match land(
                        host,
                        pool,
                        landing!(c, coop_stats),
                        f,
                        step,
                        direct_receives,
                        coop_leaked,
                    ) {
                        Landed::Delivered => {
                            n += 1;
                            if fetched >= fetch_cap {
                                break;
                            }
                        }
                        Landed::Refused => {}
                        Landed::Waiting => break,
                        Landed::Aborted => {
                            aborted = true;
                            break;
                        }
                        Landed::Broken(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                Ok(Some(Incoming::Ack { id })) => {
                    if let Some(irb) = c.rdv_waiting.remove(&id) {
                        irb.complete(Status::Ok);
                        n += 1;
                    }
                }
                Ok(Some(Incoming::Nack { rec })) => {
                    // The peer cannot read our memory; send inline from now on.
                    c.peer_reads_me = false;
                    if let Some(irb) = c.rdv_waiting.remove(&rec.id) {
                        log::info!(
                            "shmem: '{}' cannot read this process's memory; sending inline",
                            c.peer_key
                        );
                        let header = encode_inline(irb.is_end(), rec.flags, rec.len);
                        let total = RECORD_LEN + rec.len as usize;
                        // After a record being written, if any; before everything else.
                        let at = usize::from(
                            matches!(c.tx.front(), Some(Tx::Data { off, .. }) if *off > 0),
                        );
                        c.tx.insert(
                            at,
                            Tx::Data {
                                irb,
                                header,
                                off: 0,
                                total,
                            },
                        );
                    }
                }
            }
        }
        c.rx_pos.set(cons.positions());
        if aborted {
            let why = format!(
                "'{}' aborted the connection while a fragment was read from its memory",
                c.peer_key
            );
            log::info!("shmem: {why}");
            self.end(idx, Status::ConnectionLost, &why, false);
        } else if let Some(e) = error {
            log::warn!("shmem: {e}; closing the connection");
            self.end(idx, Status::Protocol, &e, false);
        }
        n
    }

    /// Writes queued records and acknowledgements; rings the peer if it sleeps.
    fn flush_tx(&mut self, idx: usize) -> usize {
        let Some(c) = self.conns[idx].as_mut() else {
            return 0;
        };
        let Some(region) = c.region.as_ref() else {
            return 0;
        };
        if c.tx.is_empty() && c.acks.is_empty() {
            return 0;
        }
        let view = region.ring(c.tx_ring);
        let mut p = Producer::resume(view.shared(), c.tx_pos.get().0, c.tx_pos.get().1);
        let mut published = false;
        let mut n = 0;
        let mut close: Option<Irb> = None;
        let mut corrupt: Option<Corrupt> = None;
        // A ring operation's result, or the end of this flush when the peer corrupted the ring.
        macro_rules! ring_op {
            ($l:lifetime, $e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => {
                        corrupt = Some(e);
                        break $l;
                    }
                }
            };
        }
        'items: loop {
            // Acknowledgements go between records, never inside a partly written one.
            let in_progress = matches!(c.tx.front(), Some(Tx::Data { off, .. }) if *off > 0);
            if !in_progress {
                while let Some(a) = c.acks.front() {
                    if !ring_op!('items, p.push_all(&[a])) {
                        break;
                    }
                    c.acks.pop_front();
                    published = true;
                }
            }
            let Some(front) = c.tx.front_mut() else { break };
            match front {
                Tx::Data {
                    irb,
                    header,
                    off,
                    total,
                } => {
                    if *off == 0 {
                        if !ring_op!('items, p.push_all(&[header])) {
                            break;
                        }
                        *off = RECORD_LEN;
                        published = true;
                    }
                    // Continue the payload where the last call stopped.
                    let mut pos = *off - RECORD_LEN;
                    let mut base = 0;
                    for i in 0..irb.segments().len() {
                        let seg = irb.segment(i);
                        if pos < base + seg.len() {
                            let k = ring_op!('items, p.push_some(&seg[pos - base..]));
                            if k > 0 {
                                published = true;
                            }
                            *off += k;
                            pos += k;
                            if pos < base + seg.len() {
                                break 'items;
                            }
                        }
                        base += seg.len();
                    }
                    if *off == *total {
                        if let Some(Tx::Data { irb, .. }) = c.tx.pop_front() {
                            irb.complete(Status::Ok);
                            n += 1;
                        }
                    } else {
                        break;
                    }
                }
                Tx::Rdv { record, .. } => {
                    if !ring_op!('items, p.push_all(&[record])) {
                        break;
                    }
                    published = true;
                    if let Some(Tx::Rdv { irb, id, .. }) = c.tx.pop_front() {
                        c.rdv_waiting.insert(id, irb);
                    }
                }
                Tx::Close { .. } => {
                    if !c.rdv_waiting.is_empty() {
                        break;
                    }
                    if let Some(Tx::Close { irb }) = c.tx.pop_front() {
                        close = Some(irb);
                    }
                    break;
                }
            }
        }
        if published
            && p.needs_wake(c.light)
            && let Some(b) = &c.peer_bell
        {
            ring(b);
        }
        c.tx_pos.set(p.positions());
        if let Some(e) = corrupt {
            let detail = format!("'{}' broke the ring protocol: {e}", c.peer_key);
            log::warn!("shmem: {detail}; closing the connection");
            self.end(idx, Status::Protocol, &detail, false);
            return n;
        }
        if let Some(irb) = close {
            // Say goodbye, then read on until the peer says it too (its last fragments and
            // its host's notices arrive), at most `connect_timeout`; then complete.
            let c = self.conns[idx]
                .as_mut()
                .expect("flushing a live connection");
            let _ = send_with_fds(&c.sock, b"B", &[]);
            c.state = State::Closing;
            c.closing = Some(irb);
            c.deadline = Some(Instant::now() + self.cfg.connect_timeout);
        }
        n
    }

    /// A connection whose peer said goodbye (and whose ring is drained): what this side sent
    /// since is written, then goodbye is answered and the connection dropped.
    fn finish(&mut self, idx: usize) {
        self.flush_tx(idx);
        if let Some(mut c) = self.take(idx) {
            let _ = send_with_fds(&c.sock, b"B", &[]);
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
            for tx in c.tx.drain(..) {
                if let Tx::Data { mut irb, .. } | Tx::Rdv { mut irb, .. } = tx {
                    irb.set_detail("the peer closed the connection");
                    irb.complete(Status::ConnectionLost);
                } else if let Tx::Close { irb } = tx {
                    irb.complete(Status::Ok);
                }
            }
            for (_, mut irb) in c.rdv_waiting.drain() {
                irb.set_detail("the peer closed the connection");
                irb.complete(Status::ConnectionLost);
            }
        }
    }

    fn read_control(&mut self, idx: usize) {
        let mut eof = false;
        loop {
            let Some(c) = self.conns[idx].as_mut() else {
                return;
            };
            let mut buf = [0u8; 4096];
            match recv_with_fds(&c.sock, &mut buf, &mut c.fds) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(k) => {
                    c.ctl.extend_from_slice(&buf[..k]);
                    // Descriptors beyond what this stage expects are closed at once (a peer
                    // must not be able to fill this process's descriptor table).
                    let expected = match c.state {
                        State::AwaitHello => 2,
                        State::AwaitAnswer => 1,
                        _ => 0,
                    };
                    if c.fds.len() > expected {
                        let extra = c.fds.len() - expected;
                        c.fds.truncate(expected);
                        log::warn!(
                            "shmem: '{}' (pid {}) passed {extra} descriptor(s) this stage does not expect; closed them",
                            c.peer_key,
                            c.peer_pid
                        );
                        if expected > 0 {
                            let detail =
                                "the peer passed more descriptors than the handshake carries";
                            if c.state == State::AwaitHello {
                                self.take(idx);
                            } else {
                                self.end(idx, Status::Protocol, detail, false);
                            }
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        match c.state {
            State::AwaitHello => self.on_hello_bytes(idx, eof),
            State::AwaitAnswer => self.on_answer_bytes(idx, eof),
            _ => {
                let mut bye = false;
                for b in std::mem::take(&mut c.ctl) {
                    match b {
                        b'C' => {
                            c.peer_reads_me = self.cfg.single_copy;
                            c.peer_writes_me = true;
                            log::info!(
                                "shmem: '{}' reads fragments of {} bytes or more from this process by single copy",
                                c.peer_key,
                                self.cfg.single_copy_min
                            );
                        }
                        b'N' => {
                            c.peer_reads_me = false;
                            c.peer_writes_me = false;
                            log::info!(
                                "shmem: '{}' cannot read this process's memory: fragments are pipelined through the ring",
                                c.peer_key
                            );
                        }
                        b'B' => bye = true,
                        _ => {}
                    }
                }
                if bye || eof {
                    let gone = if bye {
                        (Status::Ok, "the peer closed the connection".to_string())
                    } else {
                        (
                            Status::ConnectionLost,
                            "the peer process exited or was killed (its rendezvous socket closed)"
                                .to_string(),
                        )
                    };
                    // Everything the peer wrote to the ring before closing is delivered first;
                    // the end is reported once the ring is drained (maybe over several polls,
                    // if the application holds many received IRBs).
                    if let Some(c) = self.conns[idx].as_mut() {
                        c.gone = Some(gone);
                    }
                    self.drain_rx(idx, usize::MAX);
                    self.end_if_drained(idx);
                }
            }
        }
    }

    fn on_hello_bytes(&mut self, idx: usize, eof: bool) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        let parsed = if c.ctl.len() >= HELLO_LEN {
            Some(Hello::parse(&c.ctl, self.cfg.max_connect_data))
        } else {
            None
        };
        let hello = match parsed {
            Some(Ok(h)) if c.ctl.len() >= HELLO_LEN + h.body_len() => h,
            Some(Err(e)) => {
                log::warn!(
                    "shmem: refused a connection (pid {}): invalid hello: {e}",
                    c.peer_pid
                );
                // A vmi peer (its magic is right) hears why, instead of "nobody listens".
                if c.ctl.starts_with(&HELLO_MAGIC) {
                    let _ = send_with_fds(
                        &c.sock,
                        &Answer::emit(INVALID, &e, &[], false, Caps::default(), &PROBE),
                        &[],
                    );
                }
                self.take(idx);
                return;
            }
            _ => {
                if eof {
                    log::warn!(
                        "shmem: dropped a connection (pid {}): it closed before finishing its hello",
                        c.peer_pid
                    );
                    self.take(idx);
                }
                return;
            }
        };
        let body = c.ctl[HELLO_LEN..HELLO_LEN + hello.body_len()].to_vec();
        let (from, rest) = body.split_at(hello.from_key_len as usize);
        let (to, rest) = rest.split_at(hello.to_key_len as usize);
        let (sig, rest) = rest.split_at(hello.sig_len as usize);
        let (data, nonce) = rest.split_at(hello.data_len as usize);
        let nonce: Option<[u8; NONCE_LEN]> = nonce.try_into().ok();
        let (from, to, sig) = (
            String::from_utf8_lossy(from).into_owned(),
            String::from_utf8_lossy(to),
            String::from_utf8_lossy(sig),
        );
        c.peer_key = from.clone();
        c.peer_probe = hello.probe_addr;
        let refuse = |c: &Conn, status: u8, reason: &str| {
            let _ = send_with_fds(
                &c.sock,
                &Answer::emit(status, reason, &[], false, Caps::default(), &PROBE),
                &[],
            );
        };
        // Authentication comes first: a peer without the key learns nothing more.
        let hello_end = HELLO_LEN + hello.body_len();
        match (&self.auth, nonce) {
            (Some(key), Some(connector_nonce)) if !c.auth_ok => {
                let Some(listener_nonce) = c.auth_nonce else {
                    let listener_nonce = auth::nonce();
                    let proof = key.prove(
                        Role::Listener,
                        &Transcript {
                            connector_nonce: &connector_nonce,
                            listener_nonce: &listener_nonce,
                            from_key: &from,
                            to_key: &to,
                            signature: &sig,
                        },
                    );
                    c.auth_nonce = Some(listener_nonce);
                    if send_with_fds(&c.sock, &emit_challenge(&listener_nonce, &proof), &[])
                        .is_err()
                    {
                        self.take(idx);
                    }
                    return;
                };
                let proof = parse_proof(&c.ctl[hello_end..]);
                let Some(proof) = proof else {
                    if eof || c.ctl.len() >= hello_end + PROOF_RECORD_LEN {
                        log::warn!(
                            "shmem: dropped a connection (pid {}): no valid proof of the authentication key",
                            c.peer_pid
                        );
                        self.take(idx);
                    }
                    return;
                };
                let t = Transcript {
                    connector_nonce: &connector_nonce,
                    listener_nonce: &listener_nonce,
                    from_key: &from,
                    to_key: &to,
                    signature: &sig,
                };
                if !key.verify(Role::Connector, &t, &proof) {
                    log::warn!(
                        "shmem: dropped a connection (pid {}): it failed authentication (it does not hold this process's key)",
                        c.peer_pid
                    );
                    self.take(idx);
                    return;
                }
                c.auth_ok = true;
                c.ctl.drain(hello_end..hello_end + PROOF_RECORD_LEN);
            }
            (Some(_), None) => {
                log::warn!(
                    "shmem: refused a connection (pid {}): it does not authenticate, and this process requires it",
                    c.peer_pid
                );
                refuse(
                    c,
                    INVALID,
                    "this process requires authentication with a shared key; give the connecting process the same key (shmem parameter auth_key_file or VMI_AUTH_KEY_FILE)",
                );
                self.take(idx);
                return;
            }
            (None, Some(_)) => {
                refuse(
                    c,
                    INVALID,
                    "this process does not use authentication; give it the same key as the connecting process, or remove the key there",
                );
                self.take(idx);
                return;
            }
            _ => {}
        }
        if to != self.key {
            refuse(
                c,
                INVALID,
                // Only the key asked for is named, never the one here.
                &format!(
                    "no process with key '{}' listens on this socket",
                    vmi_device::socketname::socket_name("", &to)
                        .chars()
                        .take(64)
                        .collect::<String>()
                ),
            );
            self.take(idx);
            return;
        }
        let peer_sig = Signature::parse(&sig).unwrap_or_default();
        if let Err(why) = self.signature.check_peer(&self.key, &peer_sig, &from) {
            log::warn!("shmem: refusing connection from '{from}': {why}");
            refuse(c, MISMATCH, &why);
            self.take(idx);
            return;
        }
        if c.fds.len() != 2 {
            refuse(
                c,
                INVALID,
                "the hello must carry the ring memory and a doorbell",
            );
            self.take(idx);
            return;
        }
        let mut fds = std::mem::take(&mut c.fds).into_iter();
        let (memfd, bell) = (fds.next().expect("two"), fds.next().expect("two"));
        let region = match Region::map(memfd, hello.ring_size as usize) {
            Ok(r) => r,
            Err(e) => {
                refuse(c, INVALID, &e);
                self.take(idx);
                return;
            }
        };
        c.region = Some(region);
        c.peer_bell = Some(bell);
        c.light = self.barrier.is_ok() && hello.barrier;
        c.coop = self.cfg.coop_copy && self.cfg.single_copy && hello.coop;
        c.tx_ring = 1;
        c.rx_ring = 0;
        c.ctl.clear();
        let vmi = self.host.conn_new();
        c.vmi = vmi;
        c.state = State::AwaitDecision;
        c.deadline = None;
        let data = data.to_vec();
        self.by_vmi.insert(vmi, idx);
        let Some(mut irb) = self.host.alloc_irb(Op::ConnectRequest, vmi) else {
            return;
        };
        irb.set_peer("localhost", &from);
        if irb.attach(&data).is_err() {
            log::error!("shmem: could not attach connect data");
        }
        irb.pass();
    }

    fn on_answer_bytes(&mut self, idx: usize, eof: bool) {
        let Some(c) = self.conns[idx].as_mut() else {
            return;
        };
        if c.ctl.starts_with(&CHALLENGE_MAGIC) {
            let Some((listener_nonce, proof)) = parse_challenge(&c.ctl) else {
                if eof {
                    let detail = format!("'{}' closed during authentication", c.peer_key);
                    self.end(idx, Status::ConnectionLost, &detail, false);
                }
                return;
            };
            let (Some(key), Some(connector_nonce)) = (self.auth.as_ref(), c.auth_nonce) else {
                let detail = format!(
                    "'{}' requires authentication; give this process the same key (shmem parameter auth_key_file or VMI_AUTH_KEY_FILE)",
                    c.peer_key
                );
                return self.end(idx, Status::Mismatch, &detail, false);
            };
            let t = Transcript {
                connector_nonce: &connector_nonce,
                listener_nonce: &listener_nonce,
                from_key: &self.key,
                to_key: &c.peer_key,
                signature: &self.signature_text,
            };
            if !key.verify(Role::Listener, &t, &proof) {
                let detail = format!(
                    "the process listening for '{}' could not prove it holds the authentication key (another key, or an impostor)",
                    c.peer_key
                );
                return self.end(idx, Status::Mismatch, &detail, false);
            }
            let mine = key.prove(Role::Connector, &t);
            let _ = send_with_fds(&c.sock, &emit_proof(&mine), &[]);
            c.auth_ok = true;
            c.ctl.drain(..CHALLENGE_LEN);
        }
        if self.auth.is_some() && !c.auth_ok && c.ctl.len() >= ANSWER_LEN {
            let detail = format!(
                "the process listening for '{}' answered without proving it holds the authentication key; this process requires authentication",
                c.peer_key
            );
            return self.end(idx, Status::Mismatch, &detail, false);
        }
        let parsed = if c.ctl.len() >= ANSWER_LEN {
            Some(Answer::parse(&c.ctl, self.cfg.max_connect_data))
        } else {
            None
        };
        let answer = match parsed {
            Some(Ok(a)) if c.ctl.len() >= ANSWER_LEN + a.body_len() => a,
            Some(Err(e)) => {
                let detail = format!("invalid answer from '{}': {e}", c.peer_key);
                return self.end(idx, Status::Protocol, &detail, false);
            }
            _ => {
                if eof {
                    let detail = format!(
                        "'{}' closed the rendezvous socket before answering",
                        c.peer_key
                    );
                    self.end(idx, Status::ConnectionLost, &detail, false);
                }
                return;
            }
        };
        let body = c.ctl[ANSWER_LEN..ANSWER_LEN + answer.body_len()].to_vec();
        let (reason, reply) = body.split_at(answer.reason_len as usize);
        let reason = String::from_utf8_lossy(reason).into_owned();
        c.ctl.clear();
        let mut irb = c.connect.take().expect("a connector has its connect IRB");
        irb.clear_segments();
        if irb.attach(reply).is_err() {
            log::error!("shmem: could not attach reply data");
        }
        if answer.status != ACCEPT {
            let (st, detail) = match answer.status {
                REJECT => (
                    Status::Rejected,
                    format!("'{}' rejected the connection", c.peer_key),
                ),
                MISMATCH => (
                    Status::Mismatch,
                    format!("'{}' refused the connection: {reason}", c.peer_key),
                ),
                _ => (
                    Status::Protocol,
                    format!("'{}' refused the connection: {reason}", c.peer_key),
                ),
            };
            irb.set_detail(&detail);
            irb.complete(st);
            self.take(idx);
            return;
        }
        let Some(bell) = c.fds.pop() else {
            irb.set_detail("the answer carried no doorbell");
            irb.complete(Status::Protocol);
            self.take(idx);
            return;
        };
        c.peer_bell = Some(bell);
        c.light = self.barrier.is_ok() && answer.barrier;
        c.coop = self.cfg.coop_copy && self.cfg.single_copy && answer.coop;
        c.peer_reads_me = answer.can_read_you && self.cfg.single_copy;
        c.peer_writes_me = answer.can_read_you;
        // Can we read the listener? Tell it, so it knows how to send large fragments.
        let mut probe = [0u8; 16];
        let readable = self.cfg.single_copy
            && read_peer(c.peer_pid, &[(answer.probe_addr, 16)], &mut probe).is_ok_and(|n| n == 16)
            && probe == PROBE;
        let _ = send_with_fds(&c.sock, if readable { b"C" } else { b"N" }, &[]);
        c.i_write_peer = readable;
        c.i_reach_peer = reaches(self.cfg.one_sided, c.peer_pid, answer.probe_addr);
        c.state = State::Open;
        c.deadline = None;
        let mode = if c.peer_reads_me {
            format!(
                "fragments of {} bytes or more by single copy (process_vm_readv), smaller ones copied through the ring",
                self.cfg.single_copy_min
            )
        } else {
            "every fragment copied through the ring (single copy not permitted or disabled)"
                .to_string()
        };
        log::info!(
            "shmem: connected to '{}': {} KiB ring per direction; {mode}",
            c.peer_key,
            self.cfg.ring_size >> 10
        );
        irb.complete(Status::Ok);
    }

    fn accept_all(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((sock, _)) => {
                    let (peer, pid) = match peer_uid(&sock) {
                        Ok(x) => x,
                        Err(e) => {
                            log::warn!(
                                "shmem: dropped a connection: cannot read its credentials: {e}"
                            );
                            continue;
                        }
                    };
                    if peer != self.uid {
                        log::warn!(
                            "shmem: refused a connection from uid {peer} (pid {pid}): only processes of uid {} may connect to key '{}'",
                            self.uid,
                            self.key
                        );
                        drop(sock);
                        continue;
                    }
                    let conn = Conn::new(
                        sock,
                        State::AwaitHello,
                        pid,
                        Instant::now() + self.cfg.connect_timeout,
                        self.cfg.max_fragment,
                    );
                    let idx = self.insert(conn);
                    self.read_control(idx);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("shmem: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn control(&mut self) -> usize {
        if let Err(e) = self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("shmem: epoll failed: {e}");
            }
            return 0;
        }
        let tokens: Vec<Token> = self.events.iter().map(|e| e.token()).collect();
        for t in &tokens {
            match *t {
                LISTENER => self.accept_all(),
                BELL => drain(&self.bell),
                Token(idx) => self.read_control(idx),
            }
        }
        let now = Instant::now();
        for idx in 0..self.conns.len() {
            let Some(c) = self.conns[idx].as_ref() else {
                continue;
            };
            if c.deadline.is_some_and(|d| d <= now) {
                match c.state {
                    State::AwaitHello => {
                        log::warn!(
                            "shmem: dropped a connection (pid {}): no complete hello in time",
                            c.peer_pid
                        );
                        self.take(idx);
                    }
                    _ => {
                        let detail = format!(
                            "no answer from '{}' within {} ms",
                            c.peer_key,
                            self.cfg.connect_timeout.as_millis()
                        );
                        self.end(idx, Status::Timeout, &detail, false);
                    }
                }
            }
        }
        tokens.len()
    }

    fn connect(&mut self, irb: Irb) -> Disposition {
        let (_, key) = irb.peer();
        let fail = |mut irb: Irb, st: Status, d: String| {
            irb.set_detail(&d);
            Disposition::Complete(irb, st)
        };
        let addr = match socket_addr(self.uid, &key) {
            Ok(a) => a,
            Err(e) => {
                return fail(
                    irb,
                    Status::Invalid,
                    format!("key '{key}' cannot name a socket: {e}"),
                );
            }
        };
        let std_sock = match std::os::unix::net::UnixStream::connect_addr(&addr) {
            Ok(s) => s,
            Err(e) => {
                return fail(
                    irb,
                    Status::Unreachable,
                    format!("no process with key '{key}' listens for shared memory here ({e})"),
                );
            }
        };
        // Who listens? Abstract socket names are not protected: any local user can bind one
        // first. Nothing (connect data, ring memory, messages) goes to another user's process.
        let pid = match peer_uid(&std_sock) {
            Ok((uid, pid)) if uid == self.uid => pid,
            Ok((uid, pid)) => {
                log::warn!(
                    "shmem: the socket for key '{key}' belongs to uid {uid} (pid {pid}), not to this user (uid {}); refusing to connect",
                    self.uid
                );
                return fail(
                    irb,
                    Status::Unreachable,
                    format!(
                        "the shared-memory socket for key '{key}' is held by a process of another user (uid {uid}, pid {pid}), not uid {}; refusing to send it anything. Stop that process or use another key",
                        self.uid
                    ),
                );
            }
            Err(e) => {
                return fail(
                    irb,
                    Status::Unreachable,
                    format!(
                        "cannot read the credentials of the process listening for key '{key}': {e}"
                    ),
                );
            }
        };
        let region = match Region::create(self.cfg.ring_size) {
            Ok(r) => r,
            Err(e) => return fail(irb, Status::NoResources, e),
        };
        let data: Vec<u8> = (0..irb.segments().len())
            .flat_map(|i| irb.segment(i).to_vec())
            .collect();
        let auth_nonce = self.auth.as_ref().map(|_| auth::nonce());
        let hello = Hello::emit_with(
            &self.key,
            &key,
            &self.signature_text,
            &data,
            self.cfg.ring_size as u32,
            &PROBE,
            auth_nonce.as_ref(),
            self.caps(),
        );
        let _ = std_sock.set_write_timeout(Some(Duration::from_secs(2)));
        if let Err(e) = send_with_fds(&std_sock, &hello, &[region.fd(), &self.bell]) {
            return fail(
                irb,
                Status::ConnectionLost,
                format!("cannot send the hello to '{key}': {e}"),
            );
        }
        let _ = std_sock.set_nonblocking(true);
        let mut conn = Conn::new(
            UnixStream::from_std(std_sock),
            State::AwaitAnswer,
            pid,
            Instant::now() + self.cfg.connect_timeout,
            self.cfg.max_fragment,
        );
        conn.vmi = irb.conn();
        conn.auth_nonce = auth_nonce;
        conn.region = Some(region);
        conn.peer_key = key;
        conn.connect = Some(irb);
        self.insert(conn);
        self.cadence.soon(); // look at the answer soon
        Disposition::Pending
    }

    fn send(&mut self, mut irb: Irb) -> Disposition {
        let Some(&idx) = self.by_vmi.get(&irb.conn()) else {
            irb.set_detail("the connection is closed");
            return Disposition::Complete(irb, Status::ConnectionLost);
        };
        let max = self.cfg.max_fragment;
        let min_rdv = self.cfg.single_copy_min;
        let c = self.conns[idx]
            .as_mut()
            .expect("by_vmi points at live conns");
        if c.state != State::Open {
            irb.set_detail("the connection is not open");
            return Disposition::Complete(irb, Status::ConnectionLost);
        }
        if c.peer_done && c.tx.len() > 64 {
            irb.set_detail("the peer closed the connection");
            return Disposition::Complete(irb, Status::ConnectionLost);
        }
        let total = irb.data_len();
        if total as u64 > max {
            irb.set_detail(&format!(
                "fragment of {total} bytes is over max_fragment {max}"
            ));
            return Disposition::Complete(irb, Status::TooLarge);
        }
        let flags = wire_flags(irb.flags());
        let end = irb.is_end();
        if c.peer_reads_me && total >= min_rdv {
            let id = c.next_id;
            c.next_id += 1;
            let ranges: Vec<(u64, usize)> = irb
                .segments()
                .iter()
                .map(|s| (s.base as u64, s.len))
                .collect();
            let record = encode_rendezvous(end, flags, id, &ranges);
            c.tx.push_back(Tx::Rdv { irb, record, id });
            self.flush_tx(idx);
            return Disposition::Pending;
        }
        let header = encode_inline(end, flags, total as u32);
        if c.tx.is_empty()
            && c.acks.is_empty()
            && let Some(region) = c.region.as_ref()
        {
            let view = region.ring(c.tx_ring);
            let mut p = Producer::resume(view.shared(), c.tx_pos.get().0, c.tx_pos.get().1);
            let mut parts: [&[u8]; 17] = [&[]; 17];
            parts[0] = &header;
            let n = irb.segments().len().min(16);
            for (i, part) in parts.iter_mut().enumerate().skip(1).take(n) {
                *part = irb.segment(i - 1);
            }
            let pushed = p.push_all(&parts[..=n]);
            c.tx_pos.set(p.positions());
            if let Err(e) = pushed {
                let detail = format!("'{}' broke the ring protocol: {e}", c.peer_key);
                log::warn!("shmem: {detail}; closing the connection");
                irb.set_detail(&detail);
                self.end(idx, Status::Protocol, &detail, false);
                return Disposition::Complete(irb, Status::ConnectionLost);
            }
            if pushed == Ok(true) {
                if p.needs_wake(c.light)
                    && let Some(b) = &c.peer_bell
                {
                    ring(b);
                }
                return Disposition::Complete(irb, Status::Ok);
            }
        }
        c.tx.push_back(Tx::Data {
            irb,
            header,
            off: 0,
            total: RECORD_LEN + total,
        });
        self.flush_tx(idx);
        Disposition::Pending
    }
}

/// The most peer memfds one connection keeps attached (more go through the kernel).
const MAX_ATTACHED: usize = 64;

/// Whether this process may reach process `pid`'s memory (RDMA one-sided): `process_vm_readv`
/// of its probe bytes works and finds them (`process_vm_writev` has the same permission rule).
fn reaches(one_sided: bool, pid: i32, probe_addr: u64) -> bool {
    let mut probe = [0u8; 16];
    one_sided
        && read_peer(pid, &[(probe_addr, 16)], &mut probe).is_ok_and(|n| n == 16)
        && probe == PROBE
}

impl Device for ShmemDevice {
    const NAME: &'static CStr = c"shmem";
    const VERSION: &'static CStr = c"0.1.0";
    const DESCRIPTION: &'static CStr = c"shared memory between processes of one user on one host: memfd rings, single copy for large fragments";
    const KIND: DeviceKind = DeviceKind::Transport;
    const PARAMS: &'static [vmi_device::abi::VmiParamSpec] = PARAMS;
    type Frame = ShmemFrame;
    const SEND_INLINE: bool = true;
    const RDMA_ACCESS: bool = true;
    const RECEIVE_DIRECT: bool = true;

    fn create(host: Host, config: &Config) -> Result<Self, String> {
        let cfg = ShmemConfig::from_config(config)?;
        let auth = AuthKey::resolve(&cfg.auth_key_file)?;
        if let Some(k) = &auth {
            log::info!(
                "shmem: authentication on (key from {}): peers must prove they hold it",
                k.source
            );
        }
        let key = host.local_key();
        let uid = uid();
        let sock = bind_key(uid, &key, cfg.listen).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                format!("another process of this user already uses key '{key}' for shared memory on this host; give each process its own key")
            } else {
                format!("cannot bind the abstract socket @{}: {e}", crate::io::socket_name(uid, &key))
            }
        })?;
        let poll = Poll::new().map_err(|e| format!("cannot create an epoll instance: {e}"))?;
        let (listener, reserved) = if cfg.listen {
            let mut l = UnixListener::from_std(std::os::unix::net::UnixListener::from(sock));
            poll.registry()
                .register(&mut l, LISTENER, Interest::READABLE)
                .map_err(|e| e.to_string())?;
            (Some(l), None)
        } else {
            (None, Some(sock))
        };
        let barrier = if cfg.membarrier {
            crate::barrier::register()
        } else {
            Err("parameter 'membarrier' is false".into())
        };
        match &barrier {
            Ok(()) => log::debug!(
                "shmem: registered for membarrier barriers: sends to peers that registered too skip the doorbell's fence"
            ),
            Err(why) => log::info!("shmem: every send fences before its doorbell check ({why})"),
        }
        let bell = doorbell().map_err(|e| format!("cannot create an eventfd: {e}"))?;
        poll.registry()
            .register(&mut SourceFd(&bell.as_raw_fd()), BELL, Interest::READABLE)
            .map_err(|e| e.to_string())?;
        let signature_text = host.signature();
        // Lent busy and empty; `relend` lists the rings once connections open.
        let mut lent = LentRings::default();
        if cfg.lend_rings && lent.lend(&host) {
            log::debug!(
                "shmem: rings lent to the host (it reads and writes small messages itself)"
            );
        }
        if cfg.listen {
            log::info!(
                "shmem: key '{key}' listening on @{}",
                crate::io::socket_name(uid, &key)
            );
        } else {
            log::info!(
                "shmem: key '{key}' reserved; not listening (this process accepts no connections)"
            );
        }
        Ok(ShmemDevice {
            host,
            cfg,
            key,
            uid,
            signature: Signature::parse(&signature_text).unwrap_or_default(),
            signature_text,
            poll,
            events: Events::with_capacity(128),
            listener,
            _reserved: reserved,
            bell,
            conns: Vec::new(),
            free: Vec::new(),
            by_vmi: ConnMap::new(),
            pool: HeldBuffers::default(),
            cadence: Cadence::new(Instant::now()),
            rx_first: 0,
            slept: Cell::new(false),
            finishing: Vec::new(),
            auth,
            inline_sends: 0,
            rdma_attached: 0,
            direct_receives: 0,
            coop_leaked: 0,
            coop_stats: (0, 0, 0),
            rx_scratch: Vec::new(),
            rx_batch: Box::new([0; RX_BATCH]),
            lent,
            barrier,
            barrier_failed: Cell::new(false),
        })
    }

    fn get_attr(&self, name: &str) -> Option<String> {
        match name {
            "authentication" => Some(match &self.auth {
                Some(k) => format!("on (key from {})", k.source),
                None => "off".into(),
            }),
            "inline_sends" => Some((self.inline_sends + self.lent.sent()).to_string()),
            "lent_sends" => Some(self.lent.sent().to_string()),
            "rdma_attached" => Some(self.rdma_attached.to_string()),
            // The eager/rendezvous threshold, as vmi-info shows it.
            "protocols" => Some(if self.cfg.single_copy {
                format!(
                    "eager (copied through the ring) below {} bytes; rendezvous from {} bytes (single_copy_min): the receiver reads the sender's memory with process_vm_readv, where the kernel lets it",
                    self.cfg.single_copy_min, self.cfg.single_copy_min
                )
            } else {
                "eager only: every fragment copied through the ring (single_copy = false)".into()
            }),
            "direct_receives" => Some(self.direct_receives.to_string()),
            // How sends order their publication and the look at the peer's sleep flag.
            "send_barrier" => Some(match &self.barrier {
                Ok(()) => {
                    let open = self.conns.iter().flatten().filter(|c| c.region.is_some());
                    let (light, all) =
                        open.fold((0, 0), |(l, a), c| (l + usize::from(c.light), a + 1));
                    format!(
                        "membarrier: registered; {light} of {all} connections send without a fence (their peer registered too)"
                    )
                }
                Err(why) => format!("fence after every send ({why})"),
            }),
            "lent_receives" => Some(self.lent.taken().to_string()),
            // Shared single copies (`crate::coop`): received, of them with the sender's help,
            // chunks written for peers, buffers set aside.
            "coop_copies" => Some(format!(
                "received {} shared, {} with chunks the sender wrote; wrote {} chunks for peers; {} bytes set aside",
                self.coop_stats.0, self.coop_stats.1, self.coop_stats.2, self.coop_leaked
            )),
            // Every peer has this process's uid: both sides check it with SO_PEERCRED.
            "peer_uid" => Some(self.uid.to_string()),
            _ => None,
        }
    }

    /// A small whole message written into the ring at once, when nothing is queued ahead
    /// on the connection and it fits now; otherwise the IRB path takes it (and reports any
    /// error).
    fn rdma_access(
        &mut self,
        conn: u64,
        write: bool,
        remote: u64,
        key: Option<&vmi_device::abi::VmiRdmaKey>,
        segs: &[vmi_device::abi::VmiSeg],
    ) -> Option<Status> {
        let idx = *self.by_vmi.get(&conn)?;
        let c = self.conns.get_mut(idx)?.as_mut()?;
        if c.state != State::Open || !c.i_reach_peer || c.gone.is_some() {
            return None;
        }
        if let Some(k) = key {
            // The peer's memfd, mapped here: a copy with no system call.
            if let Some(a) = c
                .attached
                .iter()
                .find(|a| a.fd == k.fd && a.inode == k.inode)
            {
                return Some(if a.copy(write, k.offset, segs) {
                    Status::Ok
                } else {
                    Status::Invalid
                });
            }
            if c.attached.len() < MAX_ATTACHED {
                if c.pidfd.is_none() {
                    c.pidfd = rustix::process::Pid::from_raw(c.peer_pid).and_then(|p| {
                        rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
                    });
                }
                let attached = match &c.pidfd {
                    Some(pidfd) => crate::io::Attached::attach(pidfd, k.fd, k.inode),
                    None => Err("pidfd_open of the peer failed".into()),
                };
                match attached {
                    Ok(a) => {
                        let ok = a.copy(write, k.offset, segs);
                        c.attached.push(a);
                        self.rdma_attached += 1;
                        return Some(if ok { Status::Ok } else { Status::Invalid });
                    }
                    Err(e) => log::debug!(
                        "shmem: cannot attach '{}''s memory ({e}); copying through the kernel",
                        c.peer_key
                    ),
                }
            }
        }
        match crate::io::access_peer(c.peer_pid, write, remote, segs) {
            Ok(()) => Some(Status::Ok),
            Err(e) => {
                log::debug!(
                    "shmem: one-sided {} of '{}' at {remote:#x} failed: {e}",
                    if write { "write" } else { "read" },
                    c.peer_key
                );
                // EFAULT: the address is not mapped there (the peer withdrew the memory);
                // EPERM/ESRCH: the peer cannot be reached any more.
                Some(if e.raw_os_error() == Some(libc::EFAULT) {
                    Status::Invalid
                } else {
                    Status::ConnectionLost
                })
            }
        }
    }

    fn send_inline(&mut self, conn: u64, flags: u32, data: &[u8]) -> bool {
        let Some(&idx) = self.by_vmi.get(&conn) else {
            return false;
        };
        let too_big = data.len() as u64 > self.cfg.max_fragment;
        let single_copy = data.len() >= self.cfg.single_copy_min;
        let Some(c) = self.conns[idx].as_mut() else {
            return false;
        };
        if too_big
            || c.state != State::Open
            || c.peer_done
            || (c.peer_reads_me && single_copy)
            || !c.tx.is_empty()
            || !c.acks.is_empty()
        {
            return false;
        }
        let Some(region) = c.region.as_ref() else {
            return false;
        };
        let header = encode_inline(
            flags & VMI_FLAG_END != 0,
            wire_flags(flags),
            data.len() as u32,
        );
        let view = region.ring(c.tx_ring);
        let mut p = Producer::resume(view.shared(), c.tx_pos.get().0, c.tx_pos.get().1);
        let pushed = p.push_record(&header, data);
        c.tx_pos.set(p.positions());
        if pushed != Ok(true) {
            return false;
        }
        if p.needs_wake(c.light)
            && let Some(b) = &c.peer_bell
        {
            ring(b);
        }
        self.inline_sends += 1;
        true
    }

    fn capabilities(&self, _below: Capabilities) -> Capabilities {
        Capabilities {
            max_fragment: self.cfg.max_fragment,
            headroom: RECORD_LEN as u32,
            tailroom: 0,
            max_connect_data: self.cfg.max_connect_data,
        }
    }

    fn reach(&mut self, host: &str, key: &str) -> Result<(), String> {
        if !is_local(host) {
            return Err(format!(
                "'{host}' is not this machine (shared memory reaches local processes only)"
            ));
        }
        if !listening(self.uid, key) {
            return Err(format!(
                "no process of uid {} listens for shared memory with key '{key}' on this machine",
                self.uid
            ));
        }
        Ok(())
    }

    fn submit(&mut self, mut irb: Irb) -> Disposition {
        // Any operation may queue sends or open, end or unmap a connection: the host reads
        // no ring until the next poll has listed them again.
        self.lent.set_busy();
        match irb.op() {
            Op::Send => self.send(irb),
            Op::Connect => self.connect(irb),
            Op::Accept | Op::Reject => {
                let Some(&idx) = self.by_vmi.get(&irb.conn()) else {
                    irb.set_detail("the connecting peer went away");
                    return Disposition::Complete(irb, Status::ConnectionLost);
                };
                let reply: Vec<u8> = (0..irb.segments().len())
                    .flat_map(|i| irb.segment(i).to_vec())
                    .collect();
                let accept = irb.op() == Op::Accept;
                let c = self.conns[idx].as_mut().expect("live");
                let mut probe = [0u8; 16];
                let can_read = self.cfg.single_copy
                    && read_peer(c.peer_pid, &[(c.peer_probe, 16)], &mut probe)
                        .is_ok_and(|n| n == 16)
                    && probe == PROBE;
                let status = if accept { ACCEPT } else { REJECT };
                let caps = self.caps();
                let c = self.conns[idx].as_mut().expect("live");
                c.i_reach_peer = reaches(self.cfg.one_sided, c.peer_pid, c.peer_probe);
                c.i_write_peer = can_read;
                let sent = if accept {
                    send_with_fds(
                        &c.sock,
                        &Answer::emit(status, "", &reply, can_read, caps, &PROBE),
                        &[&self.bell],
                    )
                } else {
                    send_with_fds(
                        &c.sock,
                        &Answer::emit(status, "", &reply, false, Caps::default(), &PROBE),
                        &[],
                    )
                };
                if let Err(e) = sent {
                    irb.set_detail(&format!("cannot answer '{}': {e}", c.peer_key));
                    self.end(idx, Status::ConnectionLost, "answer failed", true);
                    return Disposition::Complete(irb, Status::ConnectionLost);
                }
                if accept {
                    c.state = State::Open;
                    log::info!(
                        "shmem: accepted '{}': {} KiB ring per direction; this process {} its memory",
                        c.peer_key,
                        c.region.as_ref().map_or(0, |r| r.ring_size()) >> 10,
                        if can_read {
                            "reads large fragments straight from"
                        } else {
                            "cannot read (single copy off) from"
                        }
                    );
                } else {
                    self.end(idx, Status::Ok, "rejected", true);
                }
                Disposition::Complete(irb, Status::Ok)
            }
            Op::Abort => {
                if let Some(&idx) = self.by_vmi.get(&irb.conn()) {
                    let (status, why) = irb.abort_reason();
                    self.end_with(idx, status, &why, true, Some(status));
                }
                // The host completes it after what it ended (queued in this call), so the
                // application hears of those sends first, then of the end.
                Disposition::Complete(irb, Status::Ok)
            }
            Op::Disconnect => {
                let Some(&idx) = self.by_vmi.get(&irb.conn()) else {
                    return Disposition::Complete(irb, Status::Ok);
                };
                if let Some(c) = self.conns[idx].as_mut() {
                    c.state = State::Closing;
                    c.tx.push_back(Tx::Close { irb });
                }
                self.flush_tx(idx);
                Disposition::Pending
            }
            other => {
                irb.set_detail(&format!("shmem does not handle {other:?}"));
                Disposition::Complete(irb, Status::Invalid)
            }
        }
    }

    fn complete(&mut self, irb: &mut CompletingIrb) {
        // Only a buffer goes back to the pool: the lent rings stay as they are.
        let held = std::mem::take(&mut irb.frame::<ShmemFrame>().held);
        self.pool.release(held);
    }

    fn peer_close_released(&mut self, conn: u64) {
        self.lent.set_busy();
        // What the host sent in answer to the peer's last fragments is queued here: the
        // goodbye is answered at the next poll.
        if let Some(&idx) = self.by_vmi.get(&conn)
            && self.conns[idx].as_ref().is_some_and(|c| c.peer_done)
        {
            self.finishing.push(idx);
        }
    }

    #[inline]
    fn poll(&mut self, budget: usize) -> usize {
        // The polls the host skipped while it read the lent rings count as this device's,
        // so the control sockets are looked at as often in the host's polls (`cadence`).
        self.cadence.count(self.lent.take_skipped());
        // An idle poll (every ring quiet, nothing to send, no goodbye to answer, no control
        // look due) is a few loads here, at the caller; the work is out of line.
        if self.finishing.is_empty()
            && !self.slept.get()
            && !self.cadence.due(Instant::now)
            && self.conns.iter().all(|c| c.as_ref().is_none_or(Conn::idle))
        {
            self.cadence.count(1);
            // Nothing changed here: rings still lent need only the next skips.
            if self.lent.is_lent() {
                if self.lent.busy() {
                    self.relend();
                } else {
                    self.lent.grant(self.skips());
                }
            }
            return 0;
        }
        let n = self.poll_work(budget);
        if self.lent.is_lent() {
            self.relend();
        }
        n
    }

    fn wait_fd(&self) -> (Option<RawFd>, Option<Duration>) {
        // The next poll ends the sleep (`slept`): the host must call it.
        self.lent.set_busy();
        self.slept.set(true);
        let mut busy = false;
        let mut next: Option<Duration> = None;
        let now = Instant::now();
        // The doorbell protocol: every receive ring's flag is set, then one barrier, then
        // the last look at each ring.
        let mut light = false;
        for c in self.conns.iter().flatten() {
            if let Some(r) = c.region.as_ref() {
                let (tail, head) = c.rx_pos.get();
                Consumer::resume(r.ring(c.rx_ring).shared(), tail, head).announce_sleep();
                light |= c.light;
            }
        }
        if light {
            // Some peers send without a fence: the barrier must reach their threads.
            if let Err(e) = crate::barrier::heavy()
                && !self.barrier_failed.replace(true)
            {
                log::warn!(
                    "shmem: membarrier(2) failed before a sleep ({e}); sleeps are cut to 1 ms from now on, so a wake-up it could miss costs at most that"
                );
            }
            if self.barrier_failed.get() {
                next = Some(Duration::from_millis(1));
            }
        } else {
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        }
        for c in self.conns.iter().flatten() {
            if let Some(r) = c.region.as_ref() {
                let (tail, head) = c.rx_pos.get();
                if !Consumer::resume(r.ring(c.rx_ring).shared(), tail, head).still_empty() {
                    busy = true;
                }
            }
            if !c.tx.is_empty() || !c.acks.is_empty() {
                // Waiting for ring space: the peer rings no bell for that, so look again soon.
                next = Some(next.map_or(Duration::from_micros(200), |n: Duration| {
                    n.min(Duration::from_micros(200))
                }));
            }
            if let Some(d) = c.deadline {
                let left = d.saturating_duration_since(now);
                next = Some(next.map_or(left, |n| n.min(left)));
            }
        }
        // Data waits: do not sleep, unless the application holds every receive IRB (a
        // release wakes the host).
        if (busy && self.host.irbs_available() > 0) || !self.finishing.is_empty() {
            next = Some(Duration::ZERO);
        }
        (Some(self.poll.as_raw_fd()), next)
    }
}

impl Drop for ShmemDevice {
    fn drop(&mut self) {
        // The regions are unmapped below, before the loan ends with `lent`.
        self.lent.set_busy();
        // Every goodbye not answered yet is answered now (the host may not have released
        // its report before it let go of this device).
        self.finishing.clear();
        for idx in 0..self.conns.len() {
            if self.conns[idx].as_ref().is_some_and(|c| c.peer_done) {
                self.finish(idx);
            }
        }
        for idx in 0..self.conns.len() {
            if let Some(c) = self.conns[idx].as_ref()
                && matches!(c.state, State::Open | State::Closing)
            {
                let _ = send_with_fds(&c.sock, b"B", &[]);
            }
            self.end(
                idx,
                Status::Cancelled,
                "this process shut down its vmi",
                true,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_local;

    #[test]
    fn only_this_machine_is_local() {
        for h in [
            "",
            "localhost",
            "127.0.0.1",
            "127.0.0.1:9000",
            "::1",
            "[::1]:7",
        ] {
            assert!(is_local(h), "{h}");
        }
        let name = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        assert!(is_local(&name), "this machine's own name");
        for h in ["otherhost.invalid", "10.1.2.3", "192.0.2.1:5000"] {
            assert!(!is_local(h), "{h}");
        }
        // This machine's address on its route out (where it has one) is local.
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
        if probe.connect("192.0.2.1:9").is_ok()
            && let Ok(addr) = probe.local_addr()
        {
            assert!(is_local(&addr.ip().to_string()), "{addr}");
        }
    }
}
