//! One verbs connection's state: its side-channel socket and bootstrap stage, its queue pair
//! with the registered receive and send buffers, the protocol endpoint, and the IRBs and
//! buffers in flight. No decisions here; `device/` drives it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use vmi_device::Irb;
use vmi_device::dial::Dial;

use crate::bootstrap::Hello;
use crate::buf::DmaBuf;
use crate::nic::{Access, Mr, Nic, NicError, Sge};
use crate::proto::Endpoint;
use crate::wire::{HEADER, Meta};

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Connector: the side channel's TCP connect is in progress.
    Dialing,
    /// Connector: the hello is sent; waiting for the answer.
    Hello,
    /// Acceptor: waiting for the peer's hello.
    Accepted,
    /// Acceptor: challenged an authenticating hello; waiting for the connector's proof.
    Proving,
    /// Acceptor: the connect request is with the application.
    Requested,
    /// Acceptor: answered; waiting for the connector's `ready`.
    AwaitReady,
    /// Both queue pairs can talk.
    Open,
    /// This side said bye (or refused): waiting for the peer to close the side channel.
    Lingering,
}

/// A connect in progress (connector side).
pub struct Attempt {
    /// The ports still to try.
    pub dial: Dial,
    /// The application's Connect IRB.
    pub irb: Option<Irb>,
    /// Connect data.
    pub data: Vec<u8>,
}

/// Registered memory the device owns.
pub struct Staged {
    /// The bytes.
    pub buf: DmaBuf,
    /// Its registration.
    pub mr: Mr,
}

impl Staged {
    /// A registered buffer of `len` bytes with `access`, in protection domain `domain`.
    pub fn new(
        nic: &mut dyn Nic,
        domain: u32,
        len: usize,
        access: Access,
    ) -> Result<Staged, NicError> {
        let buf = DmaBuf::new(len);
        // SAFETY: the buffer is owned by the returned `Staged`, which is deregistered
        // (`release`) before it is dropped; its bytes are only reached through `DmaBuf`'s raw
        // pointer, and the device reads or writes a range only when no work request on it is
        // outstanding.
        #[allow(unsafe_code)]
        let mr = unsafe { nic.register(domain, buf.as_ptr(), len.max(1), access)? };
        Ok(Staged { buf, mr })
    }

    /// `len` bytes at `off`, for a work request.
    pub fn sge(&self, off: usize, len: usize) -> Sge {
        Sge {
            addr: self.buf.addr(off),
            len: len as u32,
            lkey: self.mr.lkey,
        }
    }

    /// Deregisters and frees.
    pub fn release(self, nic: &mut dyn Nic) {
        nic.deregister(self.mr);
    }
}

/// Registered buffers kept for reuse by power-of-two size class (registering and zeroing
/// a large buffer per fragment costs more than the transfer): at most `max` bytes idle.
pub struct StagePool {
    free: HashMap<usize, Vec<Staged>>,
    idle: usize,
    max: usize,
    access: Access,
}

impl StagePool {
    /// A pool of buffers registered with `access`, keeping at most `max` bytes idle.
    pub fn new(access: Access, max: usize) -> StagePool {
        StagePool {
            free: HashMap::new(),
            idle: 0,
            max,
            access,
        }
    }

    /// A buffer of at least `len` bytes (its class), reused or new (registered in
    /// `domain`: one pool serves one connection). Its bytes are whatever the last use left.
    pub fn take(&mut self, nic: &mut dyn Nic, domain: u32, len: usize) -> Result<Staged, NicError> {
        let class = len.max(4096).next_power_of_two();
        if let Some(s) = self.free.get_mut(&class).and_then(|v| v.pop()) {
            self.idle -= class;
            return Ok(s);
        }
        Staged::new(nic, domain, class, self.access)
    }

    /// Gives a buffer back (released when the pool holds enough).
    pub fn give(&mut self, nic: &mut dyn Nic, s: Staged) {
        let class = s.buf.len();
        if self.idle + class <= self.max && class.is_power_of_two() {
            self.idle += class;
            self.free.entry(class).or_default().push(s);
        } else {
            s.release(nic);
        }
    }

    /// Releases every idle buffer.
    pub fn clear(&mut self, nic: &mut dyn Nic) {
        for (_, v) in self.free.drain() {
            for s in v {
                s.release(nic);
            }
        }
        self.idle = 0;
    }
}

/// The queue pair and its fixed buffers.
pub struct Qp {
    /// Queue pair number.
    pub qpn: u32,
    /// First packet sequence number of this side.
    pub psn: u32,
    /// Bytes of each receive and send slot: a frame header and the local eager limit.
    pub slot: usize,
    /// Receive slots (one per credit posted).
    pub recv: Staged,
    /// Number of receive slots.
    pub recv_slots: usize,
    /// Send slots.
    pub send: Staged,
    /// Free send slots.
    pub free_send: Vec<u32>,
    /// The protocol's work request id of each busy send slot.
    pub send_wr: HashMap<u32, u64>,
}

impl Qp {
    /// Creates a queue pair in `domain` with `credits` receive slots posted and twice as many
    /// send slots.
    pub fn new(
        nic: &mut dyn Nic,
        domain: u32,
        credits: u32,
        eager_max: u32,
        idx: usize,
        psn: u32,
    ) -> Result<Qp, NicError> {
        let slot = HEADER + eager_max as usize;
        let recv_slots = credits as usize;
        let send_slots = 2 * credits as usize;
        let qpn = nic.create_qp(domain, send_slots as u32 + 64, recv_slots as u32)?;
        let made = (|| {
            let recv = Staged::new(nic, domain, slot * recv_slots, Access::Local)?;
            let send = match Staged::new(nic, domain, slot * send_slots, Access::Local) {
                Ok(s) => s,
                Err(e) => {
                    recv.release(nic);
                    return Err(e);
                }
            };
            Ok((recv, send))
        })();
        let (recv, send) = match made {
            Ok(x) => x,
            Err(e) => {
                nic.destroy_qp(qpn);
                return Err(e);
            }
        };
        let qp = Qp {
            qpn,
            psn,
            slot,
            recv,
            recv_slots,
            send,
            free_send: (0..send_slots as u32).rev().collect(),
            send_wr: HashMap::new(),
        };
        for s in 0..recv_slots {
            if let Err(e) = nic.post_recv(qpn, wr_id(idx, WR_RECV, s as u64), qp.recv_sge(s)) {
                qp.release(nic);
                return Err(e);
            }
        }
        Ok(qp)
    }

    /// Receive slot `s`.
    pub fn recv_sge(&self, s: usize) -> Sge {
        self.recv.sge(s * self.slot, self.slot)
    }

    /// Destroys the queue pair first (no more DMA), then frees the buffers.
    pub fn release(self, nic: &mut dyn Nic) {
        nic.destroy_qp(self.qpn);
        self.recv.release(nic);
        self.send.release(nic);
    }
}

/// A fragment waiting to be handed up.
pub enum Up {
    /// Received in a SEND (copied out of the receive slot).
    Eager(Vec<u8>, Meta),
    /// Read by RDMA READ into the first `len` bytes of this buffer.
    Read(Staged, usize, Meta),
}

/// One connection.
pub struct Conn {
    /// The host's connection id (0 once the host is done with it).
    pub vmi: u64,
    /// Side channel.
    pub sock: mio::net::TcpStream,
    /// Its peer address.
    pub peer: SocketAddr,
    /// Where it is.
    pub stage: Stage,
    /// Side-channel bytes read and not yet parsed.
    pub rx: Vec<u8>,
    /// Side-channel bytes not yet written.
    pub tx: Vec<u8>,
    /// When the current stage must be over.
    pub deadline: Option<Instant>,
    /// Connector: the connect in progress.
    pub attempt: Option<Attempt>,
    /// Acceptor: the peer's hello (its queue pair's address).
    pub hello: Option<Hello>,
    /// Authentication: this side's nonce (connector: sent in the hello; acceptor: in the
    /// challenge), and for the connector whether the listener proved itself.
    pub nonce: Option<[u8; vmi_device::auth::NONCE_LEN]>,
    /// Connector: the listener proved it holds the key.
    pub proven: bool,
    /// The queue pair, once made.
    pub qp: Option<Qp>,
    /// The protocol, once both sides agreed.
    pub ep: Option<Endpoint>,
    /// Send IRBs the endpoint has, by token.
    pub pending: HashMap<u64, Irb>,
    /// Large fragments the peer reads, by token.
    pub staged: HashMap<u64, Staged>,
    /// Buffers for large fragments the peer reads, kept for reuse. Per connection: a buffer
    /// the peer could read once (it knows the key) never carries another peer's data.
    pub stage_pool: StagePool,
    /// RDMA READs in flight, by local id: the peer's fragment id, the target and the length.
    pub reads: HashMap<u64, (u64, Staged, usize)>,
    /// Bytes of read buffers this connection holds (in flight, done, or waiting to go up).
    pub read_bytes: usize,
    /// Reads the peer asked for beyond [`READ_BUDGET`], posted as earlier ones go up:
    /// (fragment id, address, key, length).
    pub deferred_reads: VecDeque<(u64, u64, u32, u64)>,
    /// Reads done, by the peer's fragment id (the buffer and the length read), until the
    /// endpoint hands them up.
    pub read_done: HashMap<u64, (Staged, usize)>,
    /// Send IRBs not yet given to the endpoint (not open yet, or the endpoint was busy).
    pub waiting: VecDeque<Irb>,
    /// SENDs waiting for a free send slot: (protocol work request, bytes).
    pub unsent: VecDeque<(u64, Vec<u8>)>,
    /// Fragments to hand up as the budget allows.
    pub up: VecDeque<Up>,
    /// The peer's bye: frames it sent in all.
    pub bye_at: Option<u32>,
    /// The host's Disconnect, until the peer's bye answers this side's.
    pub closing: Option<Irb>,
    /// This side said bye (its Disconnect, once everything it sent was done).
    pub bye_sent: bool,
    /// The peer said bye and the application heard of it: say bye in turn once this side's
    /// last sends (the host's notices) are done, then close.
    pub peer_done: bool,
    /// The host released the report of the peer's close (`peer_close_released`): every
    /// fragment before the bye went up first, and the host's notices about them (over as many
    /// polls as it took) were sent first.
    pub released: bool,
    /// The side channel reached its end.
    pub eof: bool,
    /// Next send token.
    pub next_token: u64,
    /// The connection's protection domain (0 until its queue pair is made): everything
    /// registered for it lives there, out of other peers' reach.
    pub domain: u32,
    /// Buffers large fragments are read into, kept for reuse.
    pub read_pool: StagePool,
    /// Registered memory small RDMA transfers are copied through.
    pub bounce: Option<Staged>,
    /// Registrations of the host's memory for this connection's RDMA WRITEs and READs.
    pub regcache: vmi_device::regcache::RegCache<Mr>,
    /// Registrations (remote read) of the host's memory of large fragments the peer reads
    /// where they lie, by send token: each for its send alone, dropped when the peer
    /// finished reading, or with the queue pair (first) when the connection ends.
    pub lent: HashMap<u64, Mr>,
}

impl Conn {
    /// Nothing of this side's is on its way: no send waiting, unsent, posted or being read.
    pub fn is_idle(&self) -> bool {
        self.ep.as_ref().is_none_or(|e| e.is_idle())
            && self.unsent.is_empty()
            && self.waiting.is_empty()
            && self.pending.is_empty()
    }

    /// A connection on `sock` at `stage`.
    pub fn new(sock: mio::net::TcpStream, peer: SocketAddr, stage: Stage, vmi: u64) -> Conn {
        Conn {
            vmi,
            sock,
            peer,
            stage,
            rx: Vec::new(),
            tx: Vec::new(),
            deadline: None,
            attempt: None,
            hello: None,
            nonce: None,
            proven: false,
            qp: None,
            ep: None,
            pending: HashMap::new(),
            staged: HashMap::new(),
            stage_pool: StagePool::new(Access::RemoteRead, 16 << 20),
            reads: HashMap::new(),
            read_bytes: 0,
            deferred_reads: VecDeque::new(),
            read_done: HashMap::new(),
            waiting: VecDeque::new(),
            unsent: VecDeque::new(),
            up: VecDeque::new(),
            bye_at: None,
            closing: None,
            bye_sent: false,
            peer_done: false,
            released: false,
            eof: false,
            next_token: 1,
            domain: 0,
            read_pool: StagePool::new(Access::Local, 16 << 20),
            bounce: None,
            regcache: vmi_device::regcache::RegCache::new(256),
            lent: HashMap::new(),
        }
    }

    /// Gives back the memory a large send `token` was offered from: its staging buffer, or
    /// the registration of the host's own bytes (the peer's access to them ends here).
    pub fn end_send(&mut self, token: u64, nic: &mut dyn Nic) {
        if let Some(s) = self.staged.remove(&token) {
            self.stage_pool.give(nic, s);
        }
        if let Some(mr) = self.lent.remove(&token) {
            nic.deregister(mr);
        }
    }

    /// Frees every registration and the queue pair (queue pair first).
    pub fn release(&mut self, nic: &mut dyn Nic) {
        if let Some(qp) = self.qp.take() {
            qp.release(nic);
        }
        for (_, s) in self.staged.drain() {
            s.release(nic);
        }
        for (_, mr) in self.lent.drain() {
            nic.deregister(mr);
        }
        for (_, (_, s, _)) in self.reads.drain() {
            s.release(nic);
        }
        for (_, (s, _)) in self.read_done.drain() {
            s.release(nic);
        }
        for up in self.up.drain(..) {
            if let Up::Read(s, _, _) = up {
                s.release(nic);
            }
        }
        self.stage_pool.clear(nic);
        self.read_pool.clear(nic);
        if let Some(b) = self.bounce.take() {
            b.release(nic);
        }
        self.regcache.clear(&mut |mr| nic.deregister(mr));
    }
}

/// The most bytes of read buffers one connection holds before the reads the peer asks for
/// wait (a peer offering many large fragments at once cannot make this side allocate more);
/// one read is always allowed, however large (up to `max_fragment`).
pub const READ_BUDGET: usize = 64 << 20;

/// Work request kinds in the id's bits 36..40.
pub const WR_RECV: u64 = 1;
/// A SEND from a send slot.
pub const WR_SEND: u64 = 2;
/// An RDMA READ.
pub const WR_READ: u64 = 3;
/// A one-sided RDMA WRITE or READ of the host's (an RDMA put or get).
pub const WR_RDMA: u64 = 4;
/// Bits of the id proper.
pub const WR_ID_BITS: u32 = 36;

/// A work request id: connection index, kind, id.
pub fn wr_id(idx: usize, kind: u64, id: u64) -> u64 {
    ((idx as u64) << 40) | (kind << WR_ID_BITS) | (id & ((1 << WR_ID_BITS) - 1))
}

/// The parts of a work request id.
pub fn wr_parts(wr: u64) -> (usize, u64, u64) {
    (
        (wr >> 40) as usize,
        (wr >> WR_ID_BITS) & 0xf,
        wr & ((1 << WR_ID_BITS) - 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimNic;

    #[test]
    fn stage_pools_reuse_registered_buffers_by_class_and_keep_at_most_their_limit() {
        let mut nic = SimNic::new().unwrap();
        let mut pool = StagePool::new(Access::Local, 64 * 1024);
        let a = pool.take(&mut nic, 0, 10_000).unwrap();
        assert_eq!(a.buf.len(), 16 * 1024, "a power-of-two class");
        let key = a.mr.lkey;
        pool.give(&mut nic, a);
        let b = pool.take(&mut nic, 0, 16 * 1024).unwrap();
        assert_eq!(b.mr.lkey, key, "the same registration, reused");
        let big = pool.take(&mut nic, 0, 100_000).unwrap();
        assert_eq!(big.buf.len(), 128 * 1024);
        pool.give(&mut nic, b);
        pool.give(&mut nic, big);
        assert_eq!(pool.idle, 16 * 1024, "over the limit: released, not kept");
        pool.clear(&mut nic);
        assert_eq!(pool.idle, 0);
    }
}
