//! What the verbs device needs of an RDMA NIC, and nothing more: one port, one completion
//! queue with a descriptor to sleep on, reliable-connected queue pairs, memory registration,
//! and three work requests (receive, send, RDMA READ).
//!
//! Two NICs implement it: [`crate::ibv::IbvNic`], the hardware through libibverbs (loaded at
//! run time), and [`crate::sim::SimNic`], a software NIC inside one process that behaves as
//! RC does (in order, receive buffers consumed one per SEND, READs checked against the remote
//! key and range, error completions) so the whole device runs in tests without hardware.

// One unsafe method is declared: registration is where memory is promised to the NIC.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

/// Why a NIC operation failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum NicError {
    /// libibverbs is not installed.
    #[error(
        "libibverbs.so.1 could not be loaded ({0}); install libibverbs1 and the providers (Debian: apt-get install ibverbs-providers)"
    )]
    NoLibrary(String),
    /// libibverbs found no device.
    #[error(
        "no RDMA device found (libibverbs: 0 devices); check `ibv_devinfo`, or use the tcp or shmem transport"
    )]
    NoDevice,
    /// libibverbs could not list devices (no kernel support).
    #[error(
        "libibverbs could not list RDMA devices: {0} (the kernel has no RDMA support here); use the tcp or shmem transport"
    )]
    NoKernelSupport(String),
    /// The named device is not there.
    #[error(
        "no RDMA device named '{name}' (found: {found}); set the verbs 'device' parameter to one of them"
    )]
    UnknownDevice {
        /// Asked for.
        name: String,
        /// What there is.
        found: String,
    },
    /// A verbs call failed.
    #[error("{call} failed: {why}")]
    Call {
        /// The verbs call.
        call: &'static str,
        /// errno text or the reason.
        why: String,
    },
    /// The port is not up.
    #[error(
        "port {port} of {device} is not active (state {state}); check the cable and the subnet manager (`ibv_devinfo`)"
    )]
    PortDown {
        /// Device.
        device: String,
        /// Port.
        port: u8,
        /// Its state code.
        state: u32,
    },
    /// The peer cannot be reached by this NIC.
    #[error("{0}")]
    Unreachable(String),
}

/// A queue pair's address, as the peer needs it to connect: LID (InfiniBand) or GID (RoCE),
/// the path MTU code (1–5: 256–4096 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    /// Local identifier (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Global identifier (RoCE, or routed InfiniBand).
    pub gid: [u8; 16],
    /// Path MTU code.
    pub mtu: u8,
}

/// The far end of a queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    /// Its queue pair number.
    pub qpn: u32,
    /// Its first packet sequence number.
    pub psn: u32,
    /// Its address.
    pub addr: Address,
}

/// What a registration allows beyond the local NIC's access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Only this side's work requests (the NIC writes it for receives and reads).
    Local,
    /// Also the peer's RDMA READ (a large fragment the peer fetches).
    RemoteRead,
    /// Also the peer's RDMA READ and WRITE (a published RDMA buffer).
    RemoteReadWrite,
}

/// A registration: the keys work requests name it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mr {
    /// The NIC's handle, for [`Nic::deregister`].
    pub id: u64,
    /// Local key.
    pub lkey: u32,
    /// Remote key.
    pub rkey: u32,
}

/// The peer's registered memory an RDMA READ or WRITE names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteMem {
    /// Its address in the peer.
    pub addr: u64,
    /// The peer's remote key for it.
    pub rkey: u32,
}

/// Registered local memory for one work request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sge {
    /// Address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Local key of its registration.
    pub lkey: u32,
}

/// What a completion was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A SEND posted here.
    Send,
    /// A receive buffer filled by the peer's SEND.
    Recv,
    /// An RDMA READ posted here.
    Read,
    /// An RDMA WRITE posted here.
    Write,
}

/// A work completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The id the work request was posted with.
    pub wr_id: u64,
    /// The queue pair.
    pub qpn: u32,
    /// What it was.
    pub kind: Kind,
    /// Bytes received (receives only).
    pub len: u32,
    /// `None` on success, or the NIC's words for the failure.
    pub error: Option<&'static str>,
}

/// An RDMA NIC as the device uses it. Not `Send`: it lives on the polling thread.
pub trait Nic {
    /// One line: which device and port, for logs and `vmi-info`.
    fn describe(&self) -> String;
    /// This port's address.
    fn address(&self) -> Address;
    /// A new protection domain: a queue pair reaches only registrations of its own domain,
    /// and its peer only registrations of that domain too (the device makes one per
    /// connection, so a peer cannot reach what another connection registered, whatever key
    /// it tries).
    fn alloc_domain(&mut self) -> Result<u32, NicError>;
    /// Frees a domain once no queue pair or registration is left in it.
    fn free_domain(&mut self, domain: u32);
    /// Creates a queue pair in `domain` able to hold `send` and `recv` outstanding work
    /// requests, ready for receives to be posted (INIT); returns its number.
    fn create_qp(&mut self, domain: u32, send: u32, recv: u32) -> Result<u32, NicError>;
    /// Connects queue pair `qpn`, whose first sequence number is `psn`, to `remote` (RTR then
    /// RTS).
    fn connect_qp(&mut self, qpn: u32, psn: u32, remote: &Remote) -> Result<(), NicError>;
    /// Destroys a queue pair; its outstanding work requests are dropped.
    fn destroy_qp(&mut self, qpn: u32);
    /// Registers `len` bytes at `addr` in `domain` for local writes and what `access` adds. Work requests are checked against registrations (key and range), so
    /// posting them is safe; registering is where the promise is made.
    ///
    /// # Safety
    /// `addr..addr+len` must be valid for reads and writes, and not read or written through
    /// Rust references, whenever a work request naming it is outstanding, and whenever the
    /// peer may reach it (a registration with remote access). A registration with local
    /// access alone may outlive its memory as long as no work request names it afterwards (a
    /// registration cache's entries do: the cache drops them when the memory goes away). A
    /// NIC touches registered memory only for work requests (hardware: through the pages it
    /// pinned at registration). Memory the NIC only reads (a [`Access::RemoteRead`]
    /// registration that the peer reads and no local work request writes into) need only be
    /// valid for reads, and may be read through Rust references meanwhile; it must not be
    /// written while the peer may reach it.
    unsafe fn register(
        &mut self,
        domain: u32,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<Mr, NicError>;
    /// Undoes [`Nic::register`].
    fn deregister(&mut self, mr: Mr);
    /// Posts a receive buffer.
    fn post_recv(&mut self, qpn: u32, wr_id: u64, sge: Sge) -> Result<(), NicError>;
    /// Posts a SEND of `sge` (signalled).
    fn post_send(&mut self, qpn: u32, wr_id: u64, sge: Sge) -> Result<(), NicError>;
    /// Posts an RDMA WRITE of `sge` to the peer's memory at `remote` (`write`), or an RDMA
    /// READ of `sge.len` bytes from there into `sge` (signalled).
    fn post_rdma(
        &mut self,
        qpn: u32,
        wr_id: u64,
        sge: Sge,
        remote: RemoteMem,
        write: bool,
    ) -> Result<(), NicError>;
    /// Appends at most `max` completions to `out`; returns how many.
    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize;
    /// The descriptor that becomes readable when a completion arrives (after
    /// [`Nic::rearm`]).
    fn fd(&self) -> Option<RawFd>;
    /// Consumes the descriptor's events and asks for the next one; call before sleeping and
    /// after the descriptor fired, then poll again (a completion may have come in between).
    fn rearm(&mut self);
}
