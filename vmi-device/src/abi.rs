//! The C ABI between the host (`vmi-core`) and device plugins.
//!
//! Nothing Rust-specific crosses a shared object's boundary: a plugin exports one
//! [`VmiDeviceDescriptor`] under the symbol `vmi_device_<type>`, and talks to the host only
//! through the [`VmiHostServices`] table and raw [`VmiIrb`] pointers the host owns.
//! The same layout is published for C in `vmi-device/include/vmi_device.h`; keep both in step.
//!
//! ## Versioning
//! - The host refuses a descriptor of another [`VMI_ABI_MAJOR`], naming both versions.
//! - Within a major, structs only grow at the end, and every table says its own size
//!   (`struct_size`, `VmiDeviceVtable::size`, `VmiHostServices::size`).
//! - A host reads an older minor's shorter descriptor and vtable: it copies the prefix the
//!   device has and treats the missing entries as absent (NULL). The smallest accepted sizes
//!   are the 1.0 ones ([`VMI_DESCRIPTOR_SIZE_1_0`], [`VMI_VTABLE_SIZE_1_0`]).
//! - A device of a newer minor loads into an older host: the host reads the prefix it knows
//!   and ignores the rest. Such a device must look at `VmiHostServices::size` before calling
//!   a service newer than the host (the SDK's [`crate::Host`] does).
//!
//! ## Threads
//! - The host calls a device instance (every vtable entry) from one thread at a time, and
//!   the host services a device calls during such a call run on that same thread.
//! - Which thread that is may change between calls: an application may build a `Vmi` on one
//!   thread and move it to another. A device must not keep anything tied to the calling
//!   thread across calls (a thread-local, a thread id, a `pthread_self` check).
//! - A device's own threads reach the host only through `complete_from_thread` and `wake`,
//!   which any thread may call at any time.
//!
//! ## History
//! - 1.0: first edition.
//! - 1.1: vtable entry `poll_budget` (bounded progress); host service `irb_available`
//!   (receive IRBs a transport may still allocate: back-pressure before a failed allocation).
//! - 1.2: vtable entries `send_inline` (a transport writes a small whole message at once,
//!   with no IRB, when nothing is queued ahead of it) and `poll_direct` (a transport hands
//!   received fragments straight to the host, with no IRB).
//! - 1.3: vtable entry `rdma_access` (a transport reads or writes the peer's memory
//!   one-sided, for RDMA puts and gets).
//! - 1.4: vtable entry `register_conn` (a transport registers a buffer the application
//!   publishes to the peer on one connection, so it can scope the registration to it).
//! - 1.5: IRB operation `VMI_OP_ABORT` (close a connection at once, ending what the device
//!   holds for it with the given status: send and disconnect timeouts, cancels).
//! - 1.6: no new entry; a host of 1.6 or later passes `poll_budget` and `poll_direct` a
//!   `budget` already bounded by the receive IRBs it can hand out (what `irb_available`
//!   would return), so a transport need not ask at every poll. A device checks
//!   `VmiHostServices::abi_minor` before relying on it (the SDK's `Host::receive_credit`).
//! - 1.7: host service `lend_rings` (a transport lends the host its receive rings, so the
//!   host's poll reads small records itself and calls the transport's poll only when it has
//!   other work: [`VmiRingSet`]); checked through `size`.
//! - 1.8: host service `lend_streams` (a byte-stream transport lends the host its sockets,
//!   so the host's poll reads them and takes whole small data frames itself: [`VmiStreamSet`]);
//!   checked through `size`.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void};

/// Magic at the start of every device descriptor ("VMID" little-endian).
pub const VMI_DEVICE_MAGIC: u32 = 0x4449_4d56;
/// ABI major version: a descriptor of another major is refused.
pub const VMI_ABI_MAJOR: u16 = 1;
/// ABI minor version: newer minors only append fields.
pub const VMI_ABI_MINOR: u16 = 8;
/// Size of a 1.0 descriptor: the smallest a host of this major accepts.
pub const VMI_DESCRIPTOR_SIZE_1_0: u32 = 88;
/// Size of a 1.0 vtable: the smallest a host of this major accepts.
pub const VMI_VTABLE_SIZE_1_0: u32 = 104;
/// Size of a 1.1 vtable (1.2 appended `send_inline`).
pub const VMI_VTABLE_SIZE_1_1: u32 = 112;
/// Size of a 1.2 vtable (1.3 appended `rdma_access`).
pub const VMI_VTABLE_SIZE_1_2: u32 = 128;
/// Size of a 1.3 vtable (1.4 appended `register_conn`).
pub const VMI_VTABLE_SIZE_1_3: u32 = 136;
/// Size of a 1.0 host services table: a device checks `size` against larger offsets before
/// calling a newer service.
pub const VMI_HOST_SERVICES_SIZE_1_0: u32 = 128;
/// Size of a 1.1 to 1.6 host services table (1.7 appended `lend_rings`).
pub const VMI_HOST_SERVICES_SIZE_1_1: u32 = 136;
/// Size of a 1.7 host services table (1.8 appended `lend_streams`).
pub const VMI_HOST_SERVICES_SIZE_1_7: u32 = 144;
/// Prefix of the exported descriptor symbol; the device type name follows.
pub const VMI_SYMBOL_PREFIX: &str = "vmi_device_";
/// Maximum number of data segments one IRB carries.
pub const VMI_IRB_MAX_SEGS: usize = 16;
/// Maximum frame alignment a device may ask for.
pub const VMI_MAX_FRAME_ALIGN: usize = 64;

/// Device kind: a filter looks at and changes data.
pub const VMI_KIND_FILTER: u32 = 1;
/// Device kind: a transport moves bytes to a peer.
pub const VMI_KIND_TRANSPORT: u32 = 2;

/// Descriptor flag: the filter does not change the bytes on the wire (tracing, delays), so it
/// is left out of the filter signature and may sit on one side only.
pub const VMI_DEVICE_WIRE_NEUTRAL: u32 = 1;

/// `submit`/`receive` result: hand the IRB to the next device.
pub const VMI_PASS: i32 = 0;
/// `submit`/`receive` result: the device finished the IRB; `irb.status` holds the status.
pub const VMI_COMPLETE: i32 = 1;
/// `submit`/`receive` result: the device keeps the IRB and will call `pass` or `complete` later.
pub const VMI_PENDING: i32 = 2;

/// IRB operation: one fragment of a stream (send direction).
pub const VMI_OP_SEND: u32 = 1;
/// IRB operation: open a connection to `peer_host`/`peer_key`; segments hold connect data.
pub const VMI_OP_CONNECT: u32 = 2;
/// IRB operation: accept an incoming connection; segments hold reply data.
pub const VMI_OP_ACCEPT: u32 = 3;
/// IRB operation: reject an incoming connection; segments hold reply data.
pub const VMI_OP_REJECT: u32 = 4;
/// IRB operation: orderly close of a connection.
pub const VMI_OP_DISCONNECT: u32 = 5;
/// IRB operation (ABI 1.5): close a connection at once. Every IRB the device holds for the
/// connection (sends queued or partly written, a pending disconnect) completes with the
/// status the abort IRB carries in `status` on submit (`VMI_STATUS_CANCELLED` or
/// `VMI_STATUS_TIMEOUT`), nothing more of it goes to the peer, and the peer sees the
/// connection lost (never a message cut short as if whole). No `PEER_DISCONNECT` goes up for
/// it; the abort IRB itself completes with `VMI_STATUS_OK`. Filters pass it down. A device
/// of an older minor completes it with `VMI_STATUS_INVALID`, and the host then closes in order.
pub const VMI_OP_ABORT: u32 = 6;
/// IRB operation: a received fragment (receive direction).
pub const VMI_OP_RECV: u32 = 16;
/// IRB operation: a peer asks to connect; segments hold its connect data (receive direction).
pub const VMI_OP_CONNECT_REQUEST: u32 = 17;
/// IRB operation: the peer closed the connection or it failed; `status` says which.
pub const VMI_OP_PEER_DISCONNECT: u32 = 18;

/// Fragment flag: last fragment of a stream.
pub const VMI_FLAG_END: u32 = 1;
/// Fragment flags reserved for filters to mark what they did (e.g. "compressed"). Filters
/// take bits from the lowest up; the highest, [`VMI_FLAG_HOST`], belongs to the host.
pub const VMI_FLAG_FILTER_MASK: u32 = 0xffff_0000;
/// Fragment flag: a one-fragment message between the two hosts' engines (for instance "your
/// message N failed here"), never shown to the application. Transports carry it as one of the
/// filter flag bits and filters transform the fragment like any other.
pub const VMI_FLAG_HOST: u32 = 1 << 31;
/// Fragment flag: a one-fragment message of the hosts' message passing (QNX-style requests,
/// replies and pulses), delivered to the application through its request, reply and pulse
/// callbacks instead of `receive`. Like [`VMI_FLAG_HOST`] it belongs to the host: transports
/// carry it as one of the filter flag bits and filters transform the fragment like any
/// other (so a request is compressed and checked as stream data is). Filters take bits from
/// the lowest up and must leave bits 30 and 31 alone.
pub const VMI_FLAG_MSG: u32 = 1 << 30;

/// The IRB flags of a received fragment: [`VMI_FLAG_END`] when `end`, and the sender's filter
/// flags, which transports carry on the wire as 16 bits (see [`wire_flags`]).
pub const fn recv_flags(end: bool, wire: u16) -> u32 {
    (if end { VMI_FLAG_END } else { 0 }) | ((wire as u32) << 16)
}

/// The filter-flag bits of an IRB's `flags` ([`VMI_FLAG_FILTER_MASK`]) as the 16 bits a
/// transport carries on the wire.
pub const fn wire_flags(flags: u32) -> u16 {
    (flags >> 16) as u16
}

/// Parameter type: boolean (`true`/`false`/`1`/`0`/`yes`/`no`).
pub const VMI_PARAM_BOOL: u32 = 1;
/// Parameter type: unsigned 64-bit integer (accepts `k`, `m`, `g` binary suffixes).
pub const VMI_PARAM_UINT: u32 = 2;
/// Parameter type: signed 64-bit integer.
pub const VMI_PARAM_INT: u32 = 3;
/// Parameter type: free text.
pub const VMI_PARAM_STRING: u32 = 4;

/// Log levels passed to `VmiHostServices::log` (same numbering as the `log` crate).
pub const VMI_LOG_ERROR: u32 = 1;
/// Warning level.
pub const VMI_LOG_WARN: u32 = 2;
/// Info level.
pub const VMI_LOG_INFO: u32 = 3;
/// Debug level.
pub const VMI_LOG_DEBUG: u32 = 4;
/// Trace level.
pub const VMI_LOG_TRACE: u32 = 5;

/// Return codes of `create`.
pub const VMI_CREATE_OK: i32 = 0;
/// `create` failed; the error buffer holds the reason.
pub const VMI_CREATE_FAILED: i32 = 1;
/// `create` panicked; the error buffer holds the panic message.
pub const VMI_CREATE_PANICKED: i32 = 2;

/// A byte string that is not NUL-terminated.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VmiStr {
    /// First byte (may be dangling when `len` is 0).
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl VmiStr {
    /// The empty string.
    pub const EMPTY: VmiStr = VmiStr {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// Borrows a Rust string.
    pub fn new(s: &str) -> VmiStr {
        VmiStr {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// Views the bytes.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that outlive `'a`.
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        if self.len == 0 || self.ptr.is_null() {
            &[]
        } else {
            // SAFETY: the caller guarantees ptr/len describe live memory.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }

    /// Views the bytes as text, replacing invalid UTF-8.
    ///
    /// # Safety
    /// As for [`VmiStr::as_bytes`].
    pub unsafe fn to_string_lossy(&self) -> String {
        // SAFETY: forwarded to the caller.
        String::from_utf8_lossy(unsafe { self.as_bytes() }).into_owned()
    }
}

/// One contiguous piece of an IRB's data.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VmiSeg {
    /// First byte.
    pub base: *mut u8,
    /// Length in bytes.
    pub len: usize,
}

impl VmiSeg {
    /// An empty segment.
    pub const EMPTY: VmiSeg = VmiSeg {
        base: std::ptr::null_mut(),
        len: 0,
    };
}

/// An I/O request block as devices see it. The host owns it; a device only holds the
/// pointer between returning [`VMI_PENDING`] and calling `pass` or `complete`.
#[repr(C)]
pub struct VmiIrb {
    /// One of the `VMI_OP_*` operations.
    pub op: u32,
    /// `VMI_FLAG_*` bits; the upper 16 bits belong to filters.
    pub flags: u32,
    /// Completion status (`VMI_STATUS_*` in the header; 0 is success).
    pub status: i32,
    /// Number of valid entries in `segs`.
    pub nseg: u32,
    /// The host's connection handle.
    pub conn: u64,
    /// Data segments; a device may rewrite them (a filter appends a trailer, a transport
    /// points them at received bytes).
    pub segs: [VmiSeg; VMI_IRB_MAX_SEGS],
    /// Peer host name (for `CONNECT` and `CONNECT_REQUEST`).
    pub peer_host: VmiStr,
    /// Peer key (for `CONNECT` and `CONNECT_REQUEST`).
    pub peer_key: VmiStr,
}

impl VmiIrb {
    /// An IRB with no operation, no data and no peer (what hosts start a fresh one from).
    pub const EMPTY: VmiIrb = VmiIrb {
        op: 0,
        flags: 0,
        status: 0,
        nseg: 0,
        conn: 0,
        segs: [VmiSeg::EMPTY; VMI_IRB_MAX_SEGS],
        peer_host: VmiStr::EMPTY,
        peer_key: VmiStr::EMPTY,
    };
}

/// Capabilities a device reports; filters adjust them for what they add.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VmiCapabilities {
    /// Largest fragment payload the device accepts (0: no limit of its own).
    pub max_fragment: u64,
    /// Bytes of header the device adds in front of each fragment.
    pub headroom: u32,
    /// Bytes the device adds after each fragment.
    pub tailroom: u32,
    /// Largest connect or reply data (0: no limit of its own).
    pub max_connect_data: u32,
}

/// A resolved parameter handed to `create`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VmiParam {
    /// Parameter name.
    pub name: VmiStr,
    /// Effective value, already checked against the declared type.
    pub value: VmiStr,
}

/// A parameter a device declares, with its type, default and meaning.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VmiParamSpec {
    /// Name (NUL-terminated, lower case, `_` separated).
    pub name: *const c_char,
    /// One of `VMI_PARAM_*`.
    pub kind: u32,
    /// Default value as text (NUL-terminated).
    pub default_value: *const c_char,
    /// One line saying what it does (NUL-terminated).
    pub doc: *const c_char,
}

// SAFETY: a VmiParamSpec only points at immutable, 'static NUL-terminated strings.
unsafe impl Sync for VmiParamSpec {}

/// Creates a device instance. Writes the instance pointer to `out`; on failure writes a
/// NUL-terminated reason into `err` (at most `err_len` bytes) and returns
/// [`VMI_CREATE_FAILED`] or [`VMI_CREATE_PANICKED`].
pub type VmiCreateFn = unsafe extern "C" fn(
    services: *const VmiHostServices,
    host: *mut c_void,
    params: *const VmiParam,
    nparams: usize,
    out: *mut *mut c_void,
    err: *mut c_char,
    err_len: usize,
) -> i32;

/// A device's operations. Any entry may be NULL: the host then passes IRBs through
/// (`submit`, `receive`) or skips the step.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VmiDeviceVtable {
    /// `size_of::<VmiDeviceVtable>()` as the device was built.
    pub size: u32,
    /// Frees the instance.
    pub destroy: Option<unsafe extern "C" fn(dev: *mut c_void)>,
    /// Fills in the device's capabilities given those of the devices below it.
    pub capabilities: Option<unsafe extern "C" fn(dev: *mut c_void, caps: *mut VmiCapabilities)>,
    /// Send direction: an IRB coming down from the application (a live IRB, never NULL, and
    /// the device's own frame in it). Returns `VMI_PASS`, `VMI_COMPLETE` or `VMI_PENDING`.
    pub submit:
        Option<unsafe extern "C" fn(dev: *mut c_void, irb: *mut VmiIrb, frame: *mut u8) -> i32>,
    /// Receive direction: an IRB coming up from a transport. Same results as `submit`.
    pub receive:
        Option<unsafe extern "C" fn(dev: *mut c_void, irb: *mut VmiIrb, frame: *mut u8) -> i32>,
    /// Completion step, run in reverse order of processing when an IRB completes
    /// (and, for the transport that allocated a received IRB, when the application lets it go).
    pub complete: Option<unsafe extern "C" fn(dev: *mut c_void, irb: *mut VmiIrb, frame: *mut u8)>,
    /// Makes progress without blocking; returns how many events it produced.
    pub poll: Option<unsafe extern "C" fn(dev: *mut c_void) -> i32>,
    /// Reports a file descriptor to sleep on (or -1) and the milliseconds until the device's
    /// next deadline (or -1 for none).
    pub wait_fd: Option<unsafe extern "C" fn(dev: *mut c_void, fd: *mut i32, timeout_ms: *mut i64)>,
    /// Transports: can this device reach `host`/`key`? Returns 1 for yes, 0 for no, and on no
    /// may write a NUL-terminated reason into `why`.
    pub reach: Option<
        unsafe extern "C" fn(
            dev: *mut c_void,
            host: VmiStr,
            key: VmiStr,
            why: *mut c_char,
            why_len: usize,
        ) -> i32,
    >,
    /// Registers `len` bytes at `base` for sending (pinning, placement); returns an opaque
    /// registration handle (0: nothing to undo).
    pub register: Option<unsafe extern "C" fn(dev: *mut c_void, base: *mut u8, len: usize) -> u64>,
    /// Undoes `register`.
    pub deregister: Option<unsafe extern "C" fn(dev: *mut c_void, handle: u64)>,
    /// Reads a runtime attribute (Globus XIO `attr_cntl` style) as text into `out`
    /// (NUL-terminated). Returns the full length of the value (which may exceed `out_len`),
    /// or -1 when the device has no such attribute.
    pub get_attr: Option<
        unsafe extern "C" fn(
            dev: *mut c_void,
            name: VmiStr,
            out: *mut c_char,
            out_len: usize,
        ) -> i64,
    >,
    /// Changes a runtime attribute on a live chain. Returns 0, or -1 with a NUL-terminated
    /// reason in `err`.
    pub set_attr: Option<
        unsafe extern "C" fn(
            dev: *mut c_void,
            name: VmiStr,
            value: VmiStr,
            err: *mut c_char,
            err_len: usize,
        ) -> i32,
    >,
    // ---- ABI 1.1 ----
    /// Makes progress without blocking, handing at most `budget` IRBs up the receive chain;
    /// returns how many events it produced. A host prefers it to `poll`; a 1.0 device lacks it
    /// and is polled without a bound. From host ABI 1.6 on, `budget` is also at most the
    /// receive IRBs the host can hand out at the time of the call (see the history above).
    pub poll_budget: Option<unsafe extern "C" fn(dev: *mut c_void, budget: u32) -> i32>,
    // ---- ABI 1.2 ----
    /// Transports: sends `len` bytes at `data` on connection `conn` as one fragment with IRB
    /// `flags` (always `VMI_FLAG_END`: a whole message), at once and with no IRB, copying
    /// the bytes before it returns. Returns `VMI_COMPLETE` when sent, or `VMI_PASS` when it
    /// cannot now (something is queued ahead on the connection, the bytes do not fit, the
    /// connection is not open): the host then sends the same bytes as an IRB, which reports
    /// any error. The host calls it only when no device above the transport has a `submit`
    /// step, and never with an application completion to deliver.
    pub send_inline: Option<
        unsafe extern "C" fn(
            dev: *mut c_void,
            conn: u64,
            flags: u32,
            data: *const u8,
            len: usize,
        ) -> i32,
    >,
    /// Transports: as `poll_budget`, but received fragments go to `deliver(ctx, conn, flags,
    /// data, len)` instead of up the chain as IRBs; the bytes are valid for that call only.
    /// `deliver` returns `VMI_COMPLETE` (taken) or `VMI_PASS` (the host cannot take it
    /// directly now): the device then hands that fragment, and everything it receives for
    /// the rest of this call, up as IRBs, so order is kept. The host calls it instead of
    /// `poll_budget` only when no device above the transports has a `receive` step.
    pub poll_direct: Option<
        unsafe extern "C" fn(
            dev: *mut c_void,
            budget: u32,
            deliver: VmiDeliverFn,
            ctx: *mut c_void,
        ) -> i32,
    >,
    // ---- ABI 1.3 ----
    /// Transports: one-sided access to the peer's memory on connection `conn` (RDMA put and
    /// get): writes the `nsegs` local segments one after another to the peer's addresses from
    /// `remote` on (`write` = 1), or reads them from there (`write` = 0), before it returns.
    /// `key`, when not NULL, names the memory object behind `remote` in the peer (see
    /// [`VmiRdmaKey`]) for a transport that attaches it instead of copying through the
    /// kernel. Returns `VMI_COMPLETE` with `*status` set (a `VmiStatus` code: 0 when every
    /// byte moved), or `VMI_PASS` when this connection cannot now (the host then moves the
    /// bytes as messages). The host calls it only for addresses the peer published, and only
    /// when no device above the transport on the connection's chain has a submit step.
    pub rdma_access: Option<
        unsafe extern "C" fn(
            dev: *mut c_void,
            conn: u64,
            write: u32,
            remote: u64,
            key: *const VmiRdmaKey,
            segs: *const VmiSeg,
            nsegs: usize,
            status: *mut i32,
        ) -> i32,
    >,
    // ---- ABI 1.4 ----
    /// Transports with `rdma_access`: registers `len` bytes at `base`, a buffer the
    /// application publishes to the peer of connection `conn`, for that peer's one-sided
    /// reads and writes; returns a handle for `deregister` (0: none), whose low 32 bits are
    /// the key the peer names the memory by. Preferred over `register` for published
    /// buffers: the transport can scope the registration to the connection (an RDMA NIC's
    /// protection domain). The host keeps the memory mapped until `deregister`.
    pub register_conn:
        Option<unsafe extern "C" fn(dev: *mut c_void, conn: u64, base: *mut u8, len: usize) -> u64>,
}

/// The memory object behind a peer's published address (ABI 1.3 `rdma_access`): a sealed
/// memfd in the peer, as the peer's vmi published it, and the remote key the peer's
/// transport registered it under. A transport on the same host may attach the memfd (take a
/// duplicate of descriptor `fd` of the peer, check that it is the memfd of inode `inode`,
/// sealed against shrinking, and map it) and copy at `offset` with no system call; an RDMA
/// NIC names the memory by `remote_key` and the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmiRdmaKey {
    /// The descriptor number of the memfd in the peer.
    pub fd: i32,
    /// The remote key the peer's transport registered the buffer under when the peer
    /// published it (an RDMA NIC's rkey: the low 32 bits of the handle the transport's
    /// `register` returned for the published range), 0 when it registered none.
    pub remote_key: u32,
    /// The memfd's inode number (so a descriptor number reused for another file is told
    /// apart).
    pub inode: u64,
    /// The offset in the memfd of the first byte accessed (the byte at `remote`).
    pub offset: u64,
}

/// The host's receiver of fragments a transport hands over with no IRB (ABI 1.2
/// `poll_direct`): `ctx`, the connection, the IRB flags the fragment would have had, and its
/// bytes (valid during the call). Returns `VMI_COMPLETE` or `VMI_PASS`.
pub type VmiDeliverFn = unsafe extern "C" fn(
    ctx: *mut c_void,
    conn: u64,
    flags: u32,
    data: *const u8,
    len: usize,
) -> i32;

/// The descriptor a plugin exports as `vmi_device_<type>`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VmiDeviceDescriptor {
    /// [`VMI_DEVICE_MAGIC`].
    pub magic: u32,
    /// [`VMI_ABI_MAJOR`] the device was built against.
    pub abi_major: u16,
    /// [`VMI_ABI_MINOR`] the device was built against.
    pub abi_minor: u16,
    /// `size_of::<VmiDeviceDescriptor>()` as the device was built.
    pub struct_size: u32,
    /// [`VMI_KIND_FILTER`] or [`VMI_KIND_TRANSPORT`].
    pub kind: u32,
    /// `VMI_DEVICE_*` flags.
    pub flags: u32,
    /// Device type name (NUL-terminated), e.g. `tcp`.
    pub name: *const c_char,
    /// Device version (NUL-terminated), e.g. `0.1.0`.
    pub version: *const c_char,
    /// One line saying what the device does (NUL-terminated).
    pub description: *const c_char,
    /// Per-IRB frame size in bytes.
    pub frame_size: u32,
    /// Per-IRB frame alignment (power of two, at most [`VMI_MAX_FRAME_ALIGN`]).
    pub frame_align: u32,
    /// Declared parameters.
    pub params: *const VmiParamSpec,
    /// Number of entries in `params`.
    pub nparams: usize,
    /// Creates an instance.
    pub create: Option<VmiCreateFn>,
    /// The device's operations (never NULL in a valid descriptor). A raw pointer, not a
    /// reference: a device of an older minor points at a shorter table than this struct.
    pub vtable: *const VmiDeviceVtable,
}

// SAFETY: a descriptor is immutable and only points at 'static data and functions.
unsafe impl Sync for VmiDeviceDescriptor {}

/// Services the host offers a device. Every function takes the `host` pointer the device
/// was created with. All are for the thread that is inside a call into the device (see
/// "Threads" above), except `complete_from_thread` and `wake`, which any thread may call.
#[repr(C)]
pub struct VmiHostServices {
    /// `size_of::<VmiHostServices>()` as the host was built.
    pub size: u32,
    /// The host's ABI minor.
    pub abi_minor: u32,
    /// Hands a pended IRB on to the next device in its direction.
    pub pass: unsafe extern "C" fn(host: *mut c_void, irb: *mut VmiIrb),
    /// Completes an IRB with `status`; completion steps run from the host's loop.
    pub complete: unsafe extern "C" fn(host: *mut c_void, irb: *mut VmiIrb, status: i32),
    /// As `complete`, from any thread; `poll` picks it up.
    pub complete_from_thread:
        unsafe extern "C" fn(host: *mut c_void, irb: *mut VmiIrb, status: i32),
    /// Allocates a receive-direction IRB originated by the calling device (a transport), or
    /// NULL when none can be had. Hand it up with `pass`.
    pub irb_alloc: unsafe extern "C" fn(host: *mut c_void, op: u32, conn: u64) -> *mut VmiIrb,
    /// The calling device's frame in `irb`.
    pub irb_frame: unsafe extern "C" fn(host: *mut c_void, irb: *mut VmiIrb) -> *mut u8,
    /// Copies `len` bytes into host memory owned by the IRB and appends a segment for them.
    /// Returns 0, or -1 when the IRB has no free segment.
    pub irb_attach: unsafe extern "C" fn(
        host: *mut c_void,
        irb: *mut VmiIrb,
        data: *const u8,
        len: usize,
    ) -> i32,
    /// Sets the IRB's peer host and key (copied into host memory).
    pub irb_set_peer: unsafe extern "C" fn(
        host: *mut c_void,
        irb: *mut VmiIrb,
        peer_host: VmiStr,
        peer_key: VmiStr,
    ),
    /// Attaches a human-readable detail to an IRB's status (copied).
    pub irb_set_detail: unsafe extern "C" fn(host: *mut c_void, irb: *mut VmiIrb, detail: VmiStr),
    /// Creates a connection handle for an incoming connection owned by the calling device.
    pub conn_new: unsafe extern "C" fn(host: *mut c_void) -> u64,
    /// This process's key.
    pub local_key: unsafe extern "C" fn(host: *mut c_void) -> VmiStr,
    /// The chains' filter signature, exchanged in the connect handshake.
    pub signature: unsafe extern "C" fn(host: *mut c_void) -> VmiStr,
    /// Logs a message through the host's logger.
    pub log: unsafe extern "C" fn(host: *mut c_void, level: u32, target: VmiStr, msg: VmiStr),
    /// Wakes a `wait` in progress (any thread).
    pub wake: unsafe extern "C" fn(host: *mut c_void),
    /// The host's maximum enabled log level (`VMI_LOG_*`, 0 for off).
    pub max_log_level: u32,
    /// An address inside the host's copy of `vmi-core`; a statically linked device sees the
    /// same address and so knows it shares the host's logger.
    pub host_marker: *const u8,
    // ---- ABI 1.1 (check `size` before use) ----
    /// How many receive IRBs the calling device may still allocate before `irb_alloc` returns
    /// NULL. A transport stops reading when it reaches 0 and resumes on a later poll, so a slow
    /// application pushes back on the peer instead of growing memory.
    pub irb_available: unsafe extern "C" fn(host: *mut c_void) -> u32,
    // ---- ABI 1.7 (check `size` before use) ----
    /// Lends the host the calling transport's receive rings (`set`), or ends the loan (NULL).
    /// From then on the host's poll may read whole small data records from those rings
    /// itself, and skip the transport's poll while `set->busy` is 0 and `set->skips` is not.
    /// The transport keeps `set`, every ring it lists and every cursor valid until it ends
    /// the loan or sets `busy` (see [`VmiRingSet`]). The host reads the receive rings only
    /// where it would call the transport's `poll_direct`, and writes the send rings only where
    /// it would call its `send_inline`; a host may also leave them alone.
    pub lend_rings: unsafe extern "C" fn(host: *mut c_void, set: *mut VmiRingSet),
    // ---- ABI 1.8 (check `size` before use) ----
    /// Lends the host the calling transport's stream sockets (`set`), or ends the loan
    /// (NULL). From then on the host's poll may read those sockets itself and take whole
    /// small data frames from what it read, and skip the transport's poll while `set->busy`
    /// is 0 and `set->skips` is not. Everything else it read it leaves to the transport (see
    /// [`VmiStreamSet`]). The transport keeps `set`, every stream it lists, each socket open
    /// and each buffer and rest valid until it ends the loan or sets `busy`. The host reads
    /// the sockets only where it would call the transport's `poll_direct`; a host may also
    /// leave them alone.
    pub lend_streams: unsafe extern "C" fn(host: *mut c_void, set: *mut VmiStreamSet),
}

/// Ring record kind: a fragment, its payload inline (the lent ring's record format).
pub const VMI_RING_DATA: u8 = 1;
/// Ring record kind: the last fragment of a message, its payload inline.
pub const VMI_RING_DATA_END: u8 = 2;
/// Length of a lent ring's record header.
pub const VMI_RING_RECORD_LEN: usize = 16;
/// [`VmiTxRing::flags`]: the ring's consumer issues a process-wide memory barrier
/// (`membarrier(2)`, `MEMBARRIER_CMD_GLOBAL_EXPEDITED`, which reaches this process's
/// threads: the transport registered the process) between setting `sleeping` and its last
/// look before it sleeps, so the host's write needs only a compiler barrier between its
/// publication of `head` and its look at `sleeping`, not a fence.
pub const VMI_TX_LIGHT_BARRIER: u32 = 1;

/// A transport's receive rings, lent to the host (ABI 1.7 `lend_rings`).
///
/// A ring is a single-producer single-consumer byte ring in memory the peer writes: `head`
/// (the producer's free-running byte position, written by the peer) and `tail` (the
/// consumer's, written by this process) are 8-byte words, `data` holds `cap` bytes (a power
/// of two) and position `p` lies at `data[p % cap]`. Records follow one another with no
/// padding and may wrap around the end: a 16-byte header (`0` kind u8, `1` zero, `2` filter
/// flags u16, `4` payload length u32, `8` id u64, little-endian) and, for kinds
/// [`VMI_RING_DATA`] and [`VMI_RING_DATA_END`], the payload. The host takes only whole data
/// records of at most `max_len` bytes and stops at anything else, which the transport's own
/// poll then reads. Every position read from the ring is checked before use; a bad one stops
/// the host's read, and the transport's poll finds and reports it.
///
/// The transport may lend its send rings too (`tx`, see [`VmiTxRing`]): the host then
/// writes small whole messages into them itself instead of calling `send_inline`, under the
/// same `busy` rule (a transport with sends queued on a connection is busy).
///
/// Fields the host writes: `skips` (counted down at each poll it skips), `taken`, `sent` and
/// every ring's cursor. Both sides touch the set only on the polling thread, never at the same time.
#[repr(C)]
#[derive(Debug)]
pub struct VmiRingSet {
    /// Nonzero while the transport has work besides the records of its rings (queued
    /// sends, a connection in its handshake or ending, a sleep to end): the host then calls
    /// its poll at every poll and reads no ring itself.
    pub busy: u32,
    /// How many more polls the host may skip the transport's poll (when it has read the
    /// rings itself and found nothing it could not take); the host counts it down.
    pub skips: u32,
    /// Records the host has read from the rings, in all (the host adds to it).
    pub taken: u64,
    /// The lent rings (`count` of them).
    pub rings: *const VmiRing,
    /// Number of rings.
    pub count: usize,
    /// Messages the host has written into the send rings, in all (the host adds to it).
    pub sent: u64,
    /// The lent send rings (`tx_count` of them), sorted by connection, at most one each.
    pub tx: *const VmiTxRing,
    /// Number of send rings.
    pub tx_count: usize,
}

/// Length of a lent stream's frame header (see [`VmiStreamSet`]).
pub const VMI_STREAM_HEADER_LEN: usize = 8;
/// A lent stream's rest ([`VmiStreamRest::kind`]): nothing waits for the transport.
pub const VMI_REST_NONE: u32 = 0;
/// A rest: bytes the host read and did not take, `buf[off..len]` (with `len == cap`, the
/// read filled the buffer and more may wait in the socket).
pub const VMI_REST_BYTES: u32 = 1;
/// A rest: the host's read found the end of the stream.
pub const VMI_REST_END: u32 = 2;
/// A rest: the host's read failed with `error` (an errno value, EAGAIN excepted).
pub const VMI_REST_ERROR: u32 = 3;

/// A byte-stream transport's sockets, lent to the host (ABI 1.8 `lend_streams`).
///
/// Each stream is a connected, non-blocking socket whose bytes are frames: an 8-byte header
/// (`0` kind u8, `1` ignored, `2` filter flags u16, `4` payload length u32, little-endian,
/// the first 8 bytes of a ring record header, see [`VmiRingSet`]) and the payload. While
/// `busy` is 0 and `skips` is not, the host may, at a poll, read each stream whose rest is
/// [`VMI_REST_NONE`] once into that stream's `buf` (`cap` bytes), and take from the start
/// of what it read every whole data frame (kind [`VMI_RING_DATA`] or [`VMI_RING_DATA_END`],
/// at most `max_len` payload bytes, no `VMI_FLAG_HOST` in its flags), as the transport would
/// have offered it to the host's receiver. A read that would block leaves nothing. Anything
/// else the read produced is the transport's, written to the stream's rest: the bytes from
/// the first frame not taken on (also when the read filled the buffer, or the poll's budget
/// ran out), the end of the stream, or an error. Streams may share one buffer: after writing
/// a rest the host reads no other stream and calls the transport's poll at once, which
/// takes the rest before anything else. Every header is checked before use; what the host
/// does not take, the transport's decoder reads and reports.
///
/// Fields the host writes: `skips` (counted down at each poll it skips), `taken`, and each
/// stream's rest. Both sides touch the set only on the polling thread, never at the same
/// time.
#[repr(C)]
#[derive(Debug)]
pub struct VmiStreamSet {
    /// Nonzero while the transport has work besides reading its streams (queued sends, a
    /// connection in its handshake or ending, a frame half read, a sleep to end): the host
    /// then calls its poll at every poll and reads no stream itself.
    pub busy: u32,
    /// How many more polls the host may skip the transport's poll; the host counts it down.
    pub skips: u32,
    /// Frames the host has taken from the streams, in all (the host adds to it).
    pub taken: u64,
    /// The lent streams (`count` of them).
    pub streams: *const VmiStream,
    /// Number of streams.
    pub count: usize,
}

/// One lent stream (see [`VmiStreamSet`]).
#[repr(C)]
#[derive(Debug)]
pub struct VmiStream {
    /// The host's connection the stream's frames belong to.
    pub conn: u64,
    /// The socket (connected, non-blocking; its bytes come from the peer: untrusted).
    pub fd: i32,
    /// Zero.
    pub reserved: u32,
    /// Where the host reads into (`cap` bytes; may be shared with the set's other streams).
    pub buf: *mut u8,
    /// Size of `buf`, more than 0.
    pub cap: u64,
    /// Largest payload the host may take (larger frames are the transport's).
    pub max_len: u64,
    /// Where the host leaves what it did not take.
    pub rest: *mut VmiStreamRest,
}

/// What the host's read of a lent stream left to the transport (see [`VmiStreamSet`]).
#[repr(C)]
#[derive(Debug, Default)]
pub struct VmiStreamRest {
    /// [`VMI_REST_NONE`], [`VMI_REST_BYTES`], [`VMI_REST_END`] or [`VMI_REST_ERROR`]; the
    /// transport sets it back to [`VMI_REST_NONE`] once it took the rest.
    pub kind: u32,
    /// The errno of a [`VMI_REST_ERROR`].
    pub error: i32,
    /// Start of the bytes left in `buf` ([`VMI_REST_BYTES`]).
    pub off: u64,
    /// End of the bytes left in `buf`: what the read returned ([`VMI_REST_BYTES`]).
    pub len: u64,
    /// Bytes the host read from the stream since the transport last cleared it (the peer
    /// was heard from).
    pub heard: u64,
}

/// One lent send ring (see [`VmiRingSet`]): the host writes a small whole message into it
/// as one record (kind [`VMI_RING_DATA_END`] or [`VMI_RING_DATA`] by `VMI_FLAG_END`, the
/// filter flags, the length, id 0, then the payload), publishes `head` (Release), and then
/// follows the doorbell protocol: a sequentially consistent fence (only a compiler barrier
/// when `flags` has [`VMI_TX_LIGHT_BARRIER`]), a look at `sleeping`, and when it is nonzero
/// an 8-byte write of 1 to the eventfd `bell`. The consumer's position is
/// read only when the cached one leaves too little room, and checked (never behind the last
/// one seen, never past `head`): a bad one, or too little room, and the host leaves the
/// message to the transport's `send_inline`.
#[repr(C)]
#[derive(Debug)]
pub struct VmiTxRing {
    /// The host's connection.
    pub conn: u64,
    /// The producer's position (written here).
    pub head: *mut u64,
    /// The consumer's position (written by the peer: untrusted).
    pub tail: *const u64,
    /// Nonzero while the peer sleeps (written by the peer).
    pub sleeping: *const u64,
    /// The ring's bytes.
    pub data: *mut u8,
    /// Capacity in bytes, a power of two.
    pub cap: u64,
    /// Largest payload the host may write (larger messages are the transport's).
    pub max_len: u64,
    /// Where both sides keep the producer's positions.
    pub cursor: *mut VmiRingCursor,
    /// The peer's doorbell (an eventfd), or -1.
    pub bell: i32,
    /// [`VMI_TX_LIGHT_BARRIER`] or 0 (ABI 1.7 hosts read it as reserved and always fence,
    /// which stays correct).
    pub flags: u32,
}

/// One lent ring (see [`VmiRingSet`]).
#[repr(C)]
#[derive(Debug)]
pub struct VmiRing {
    /// The host's connection the ring's records belong to.
    pub conn: u64,
    /// The producer's position (written by the peer: untrusted).
    pub head: *const u64,
    /// The consumer's position, published after each batch read.
    pub tail: *mut u64,
    /// The ring's bytes.
    pub data: *const u8,
    /// Capacity in bytes, a power of two.
    pub cap: u64,
    /// Largest payload the host may take (larger records are the transport's).
    pub max_len: u64,
    /// Where both sides keep the consumer's positions.
    pub cursor: *mut VmiRingCursor,
}

/// One side's positions in a lent ring, shared by the transport and the host: for a receive
/// ring the consumer's, for a send ring the producer's.
#[repr(C)]
#[derive(Debug, Default)]
pub struct VmiRingCursor {
    /// This side's own position (what was read from a receive ring, written into a send
    /// ring).
    pub own: u64,
    /// The other side's position as last read and checked (a receive ring's producer: at
    /// most a ring ahead of `own`; a send ring's consumer: never past `own`).
    pub seen: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C header (`include/vmi_device.h`) must describe the same layout; these sizes are
    /// what a C compiler reports for it on x86-64 and aarch64 Linux.
    #[test]
    fn layout_matches_the_c_header() {
        assert_eq!(std::mem::size_of::<VmiIrb>(), 312);
        assert_eq!(std::mem::size_of::<VmiDeviceVtable>(), 144);
        assert_eq!(std::mem::size_of::<VmiDeviceDescriptor>(), 88);
        assert_eq!(std::mem::size_of::<VmiHostServices>(), 152);
        assert_eq!(std::mem::size_of::<VmiStreamSet>(), 32);
        assert_eq!(std::mem::size_of::<VmiStream>(), 48);
        assert_eq!(std::mem::size_of::<VmiStreamRest>(), 32);
        assert_eq!(std::mem::size_of::<VmiRingSet>(), 56);
        assert_eq!(std::mem::size_of::<VmiRing>(), 56);
        assert_eq!(std::mem::size_of::<VmiRingCursor>(), 16);
        assert_eq!(std::mem::size_of::<VmiTxRing>(), 72);
        assert_eq!(std::mem::size_of::<VmiCapabilities>(), 24);
        assert_eq!(std::mem::size_of::<VmiRdmaKey>(), 24);
        // The 1.0 prefixes are unchanged: entries were only appended.
        assert_eq!(
            std::mem::offset_of!(VmiDeviceVtable, poll_budget),
            VMI_VTABLE_SIZE_1_0 as usize
        );
        assert_eq!(
            std::mem::offset_of!(VmiDeviceVtable, send_inline),
            VMI_VTABLE_SIZE_1_1 as usize
        );
        assert_eq!(
            std::mem::offset_of!(VmiDeviceVtable, rdma_access),
            VMI_VTABLE_SIZE_1_2 as usize
        );
        assert_eq!(
            std::mem::offset_of!(VmiDeviceVtable, register_conn),
            VMI_VTABLE_SIZE_1_3 as usize
        );
        assert_eq!(
            std::mem::offset_of!(VmiHostServices, irb_available),
            VMI_HOST_SERVICES_SIZE_1_0 as usize
        );
        assert_eq!(
            std::mem::offset_of!(VmiHostServices, lend_rings),
            VMI_HOST_SERVICES_SIZE_1_1 as usize
        );
        assert_eq!(
            std::mem::offset_of!(VmiHostServices, lend_streams),
            VMI_HOST_SERVICES_SIZE_1_7 as usize
        );
    }
}
