//! The library's state. VMI 2.1 is single-threaded and polled, so everything lives with the
//! thread that called `VMI_Init`; another thread's calls are refused with
//! `VMI_STATUS_WRONG_THREAD`.
//!
//! Two cells, never both held across a call into C: the [`Runtime`] (the running `Vmi`), held
//! by `VMI_Poll` for the whole poll, and the [`Tables`] (handles and callbacks), held only for
//! moments. While a callback runs, [`CTX`] points at the callback's `Ctx`, and operations
//! called from the callback go through it: they are checked at once and run when the
//! callback returns (no device is re-entered).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use vmi_core::{ConnId, Ctx, GrabbedSlab, Slab, Stream, Vmi};

use crate::handle::{Handle, Table};
use crate::status::CapiError;
use crate::types::*;

/// The running instance.
pub(crate) struct Runtime {
    pub vmi: Vmi,
}

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// Created, maybe bound, not issued.
    Created,
    /// `VMI_Connection_Issue` ran; waiting for the peer's answer.
    Connecting,
    /// An incoming connection being (or just) accepted.
    Accepted,
    /// Open.
    Open,
    /// `VMI_Connection_Disconnect` ran.
    Closing,
}

/// A connection (`PVMI_CONNECT`).
pub(crate) struct Conn {
    pub state: ConnState,
    /// The peer's host and key, from `VMI_Connection_Bind`.
    pub remote: Option<(String, String)>,
    pub id: Option<ConnId>,
    pub issued: Option<(VMIConnectIssue, PVOID)>,
    pub closing: Option<(VMIConnectDisconnect, PVOID)>,
    /// `VMI_CONNECT_SET_RECEIVE_CONTEXT`.
    pub recv_context: PVOID,
    /// The RDMA callbacks set on this connection.
    pub rdma: RdmaCallbacks,
}

/// A connection's RDMA callbacks (`VMI_RDMA_Set_*_Callback`).
#[derive(Clone, Copy, Default)]
pub(crate) struct RdmaCallbacks {
    pub publish: crate::rdma::VMIRDMAPublishNotification,
    pub put: crate::rdma::VMIRDMAPutNotification,
    pub get: crate::rdma::VMIRDMAGetNotification,
}

/// A put or get waiting for its completion: the op, the caller's context, the callback.
pub(crate) struct RdmaPending {
    pub op: crate::rdma::PVMI_RDMA_OP,
    pub context: PVOID,
    pub cb: crate::rdma::VMIRDMACompleteNotification,
}

impl Conn {
    pub fn new(state: ConnState) -> Conn {
        Conn {
            state,
            remote: None,
            id: None,
            issued: None,
            closing: None,
            recv_context: std::ptr::null_mut(),
            rdma: RdmaCallbacks::default(),
        }
    }
}

/// Memory the application sends from (`PVMI_BUFFER`).
pub(crate) struct Buf {
    pub addr: *mut u8,
    pub len: usize,
    /// The memory, when vmi allocated it (`VMI_Buffer_Allocate`, a pool): a region and the
    /// buffer's offset in it; `addr` points there. Only such buffers can be published.
    pub region: Option<(vmi_core::Region, usize)>,
    /// The pool slot it came from (`VMI_Buffer_Allocate` of up to `SMALL_ALLOC` bytes), given
    /// back when the buffer is freed.
    pub _slot: Option<vmi_core::PoolBuffer>,
}

/// A stream being sent (`PVMI_STREAM`).
pub(crate) struct StreamEntry {
    pub conn: Handle,
    /// The core's stream until `VMI_Stream_End`.
    pub stream: Option<Stream>,
    pub done: (VMIStreamNotification, PVOID),
    /// Fragment sends not completed yet.
    pub outstanding: u32,
    /// The first failure among its fragments.
    pub status: VMI_STATUS,
}

/// Who hears of a send's completion: the send's token is a handle into this table.
pub(crate) enum Pending {
    /// `VMI_Stream_Send`'s callback.
    Callback(VMIStreamNotification, PVOID),
    /// A fragment of a stream.
    Stream(Handle),
}

/// A slab (`PVMI_SLAB`).
pub(crate) enum SlabView {
    /// The slab of the running callback: valid until it returns, when the entry goes.
    Borrowed(*mut Slab<'static>),
    /// A slab the application grabbed; `origin` is its cursor at the first byte.
    Grabbed {
        slab: Box<GrabbedSlab>,
        origin: vmi_core::SlabState,
    },
}

/// A slab and the copies `VMI_Slab_Read` made of bytes that span segments (kept until the
/// slab goes, so every pointer handed out stays valid that long).
pub(crate) struct SlabEntry {
    pub view: SlabView,
    pub copies: Vec<Vec<u8>>,
}

/// Handles and callbacks.
#[derive(Default)]
pub(crate) struct Tables {
    pub conns: Table<Conn>,
    pub by_id: HashMap<ConnId, Handle>,
    pub buffers: Table<Buf>,
    pub streams: Table<StreamEntry>,
    pub pending: Table<Pending>,
    pub slabs: Table<SlabEntry>,
    pub pools: Table<crate::pool::PoolEntry>,
    /// `VMI_Buffer_Allocate`'s pools, by size class (a power of two), so small buffers share
    /// regions (one memfd per chunk, not per buffer).
    pub alloc_pools: HashMap<usize, vmi_core::BufferPool>,
    /// RDMA ops libvmi allocated (`VMI_RDMA_Alloc_Op`), by address; the table owns them.
    pub rdma_ops: HashMap<usize, Box<crate::rdma::VMI_RDMA_OP>>,
    /// Remote buffers libvmi made for C, by address: the C view (owned here) and the core's.
    pub rdma_remotes: HashMap<usize, (Box<crate::rdma::VMI_REMOTE_BUFFER>, vmi_core::RemoteBuffer)>,
    /// The registration cache (`VMI_Cache_*`) and the entries C holds.
    pub cache: crate::cache::CacheTables,
    /// Puts and gets waiting for their completion, by token.
    pub rdma_pending: Table<RdmaPending>,
    pub recv_fn: VMIStreamRecv,
    pub accept_fn: VMIConnectAccept,
    pub peer_disconnect_fn: VMIDisconnectNotification,
    /// Send copies come back here for reuse.
    pub spare: Vec<Vec<u8>>,
}

thread_local! {
    static RUNTIME: RefCell<Option<Runtime>> = const { RefCell::new(None) };
    static TABLES: RefCell<Tables> = RefCell::new(Tables::default());
    /// The running callback's `Ctx`, or null outside callbacks.
    static CTX: Cell<*mut Ctx<'static>> = const { Cell::new(std::ptr::null_mut()) };
}

/// True from `VMI_Init` to `VMI_Terminate`, in whichever thread called them.
static INITIALISED: AtomicBool = AtomicBool::new(false);

/// Claims the process-wide instance before it starts.
pub(crate) fn reserve() -> Result<(), CapiError> {
    if INITIALISED.swap(true, Ordering::AcqRel) {
        return Err(CapiError::AlreadyInitialized);
    }
    Ok(())
}

/// Gives the claim back (the start failed).
pub(crate) fn unreserve() {
    INITIALISED.store(false, Ordering::Release);
}

/// Installs the started instance in this thread (after [`reserve`]).
pub(crate) fn install(rt: Runtime) {
    RUNTIME.with(|r| *r.borrow_mut() = Some(rt));
}

/// Takes the instance away (`VMI_Terminate`), with the tables.
pub(crate) fn uninstall() -> Option<(Runtime, Tables)> {
    let rt = RUNTIME.with(|r| r.borrow_mut().take())?;
    let tables = TABLES.with(|t| std::mem::take(&mut *t.borrow_mut()));
    INITIALISED.store(false, Ordering::Release);
    Some((rt, tables))
}

/// Why this thread has no instance.
pub(crate) fn absent() -> CapiError {
    if INITIALISED.load(Ordering::Acquire) {
        CapiError::WrongThread
    } else {
        CapiError::NotInitialized
    }
}

/// Whether this thread holds the instance (checked by every call that needs it).
pub(crate) fn check() -> Result<(), CapiError> {
    let here = RUNTIME.with(|r| match r.try_borrow() {
        Ok(g) => g.is_some(),
        // Borrowed: a poll is running on this thread, so the instance is here.
        Err(_) => true,
    });
    if here { Ok(()) } else { Err(absent()) }
}

/// Runs `f` with the tables (never across a call into C).
pub(crate) fn tables<R>(f: impl FnOnce(&mut Tables) -> R) -> R {
    TABLES.with(|t| f(&mut t.borrow_mut()))
}

/// True while a callback runs.
pub(crate) fn in_callback() -> bool {
    CTX.with(|c| !c.get().is_null())
}

/// Runs `f` with the running instance for a poll (refused inside callbacks).
pub(crate) fn with_runtime<R>(
    name: &'static str,
    f: impl FnOnce(&mut Runtime) -> R,
) -> Result<R, CapiError> {
    if in_callback() {
        return Err(CapiError::Reentrant(name));
    }
    RUNTIME.with(|r| match r.try_borrow_mut() {
        Ok(mut g) => match g.as_mut() {
            Some(rt) => Ok(f(rt)),
            None => Err(absent()),
        },
        Err(_) => Err(CapiError::Reentrant(name)),
    })
}

/// Calls into C as a callback: operations the callback calls go through `ctx`.
pub(crate) fn as_callback<R>(ctx: &mut Ctx<'_>, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CTX.with(|c| c.set(std::ptr::null_mut()));
        }
    }
    let p = std::ptr::from_mut(ctx).cast::<Ctx<'static>>();
    CTX.with(|c| c.set(p));
    let _reset = Reset;
    f()
}

/// The operation surface for a call: the callback's `Ctx` inside a callback, the instance
/// otherwise. Expands to a `Result<R, CapiError>`.
macro_rules! with_ops {
    (|$o:ident| $body:expr) => {{
        let ctx = $crate::state::current_ctx();
        if !ctx.is_null() {
            // SAFETY: `current_ctx` is non-null only inside `as_callback`, whose caller holds
            // the `Ctx` borrowed mutably for the whole call into C and clears the pointer
            // before the borrow ends; this thread is the only one that can see it.
            let $o: &mut vmi_core::Ctx<'static> = unsafe { &mut *ctx };
            Ok($body)
        } else {
            $crate::state::with_vmi(|$o| $body)
        }
    }};
}
pub(crate) use with_ops;

#[doc(hidden)]
pub(crate) fn current_ctx() -> *mut Ctx<'static> {
    CTX.with(|c| c.get())
}

#[doc(hidden)]
pub(crate) fn with_vmi<R>(f: impl FnOnce(&mut Vmi) -> R) -> Result<R, CapiError> {
    RUNTIME.with(|r| match r.try_borrow_mut() {
        Ok(mut g) => match g.as_mut() {
            Some(rt) => Ok(f(&mut rt.vmi)),
            None => Err(absent()),
        },
        Err(_) => Err(CapiError::Reentrant("this call")),
    })
}
