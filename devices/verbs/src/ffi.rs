//! libibverbs, loaded at run time: the structures the device reads or fills, written out
//! from `<infiniband/verbs.h>` (rdma-core, stable ABI `IBVERBS_1.1`), and the functions
//! looked up by name. Nothing links against libibverbs, so the device builds and its tests run
//! where no RDMA library is installed.
//!
//! Only the fields the device uses are named; where it never touches the rest of a structure
//! that libibverbs allocates (`ibv_context`, `ibv_qp`, `ibv_mr`, …) only the prefix up to the
//! last field read is declared, and such structures are only ever read through pointers
//! libibverbs returned. Structures the device allocates itself (`ibv_qp_attr`,
//! `ibv_send_wr`, …) are declared whole. `tests/layout.rs` compiles a C program against the
//! real header and checks every size and offset here against it.
//!
//! `ibv_post_send`, `ibv_post_recv`, `ibv_poll_cq` and `ibv_req_notify_cq` are inline
//! functions in the header that call through the context's operations table; the device
//! does the same ([`ctx_ops`]).
#![allow(unsafe_code)]
#![allow(missing_docs)] // Field names are libibverbs' own; see verbs.h.

use std::ffi::{c_char, c_int, c_uint, c_void};

/// Opaque.
pub enum IbvDevice {}
/// Opaque.
pub enum IbvPd {}

/// `struct ibv_context_ops`: 32 function pointers; the device calls four of them.
#[repr(C)]
pub struct IbvContextOps {
    pub _compat_before_poll: [*mut c_void; 11],
    pub poll_cq: unsafe extern "C" fn(cq: *mut IbvCq, n: c_int, wc: *mut IbvWc) -> c_int,
    pub req_notify_cq: unsafe extern "C" fn(cq: *mut IbvCq, solicited_only: c_int) -> c_int,
    pub _compat_before_post: [*mut c_void; 12],
    pub post_send:
        unsafe extern "C" fn(qp: *mut IbvQp, wr: *mut IbvSendWr, bad: *mut *mut IbvSendWr) -> c_int,
    pub post_recv:
        unsafe extern "C" fn(qp: *mut IbvQp, wr: *mut IbvRecvWr, bad: *mut *mut IbvRecvWr) -> c_int,
    pub _compat_after: [*mut c_void; 5],
}

/// `struct ibv_context`, up to its operations table.
#[repr(C)]
pub struct IbvContext {
    pub device: *mut IbvDevice,
    pub ops: IbvContextOps,
}

/// `struct ibv_comp_channel`.
#[repr(C)]
pub struct IbvCompChannel {
    pub context: *mut IbvContext,
    pub fd: c_int,
    pub refcnt: c_int,
}

/// `struct ibv_cq`, up to `cqe`.
#[repr(C)]
pub struct IbvCq {
    pub context: *mut IbvContext,
    pub channel: *mut IbvCompChannel,
    pub cq_context: *mut c_void,
    pub handle: u32,
    pub cqe: c_int,
}

/// `struct ibv_mr`.
#[repr(C)]
pub struct IbvMr {
    pub context: *mut IbvContext,
    pub pd: *mut IbvPd,
    pub addr: *mut c_void,
    pub length: usize,
    pub handle: u32,
    pub lkey: u32,
    pub rkey: u32,
}

/// `struct ibv_qp`, up to `qp_num`.
#[repr(C)]
pub struct IbvQp {
    pub context: *mut IbvContext,
    pub qp_context: *mut c_void,
    pub pd: *mut IbvPd,
    pub send_cq: *mut IbvCq,
    pub recv_cq: *mut IbvCq,
    pub srq: *mut c_void,
    pub handle: u32,
    pub qp_num: u32,
}

/// `struct ibv_qp_cap`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct IbvQpCap {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

/// `struct ibv_qp_init_attr`.
#[repr(C)]
pub struct IbvQpInitAttr {
    pub qp_context: *mut c_void,
    pub send_cq: *mut IbvCq,
    pub recv_cq: *mut IbvCq,
    pub srq: *mut c_void,
    pub cap: IbvQpCap,
    pub qp_type: c_uint,
    pub sq_sig_all: c_int,
}

/// `union ibv_gid` (16 bytes, 8-aligned).
#[repr(C, align(8))]
#[derive(Clone, Copy, Default)]
pub struct IbvGid {
    pub raw: [u8; 16],
}

/// `struct ibv_global_route`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct IbvGlobalRoute {
    pub dgid: IbvGid,
    pub flow_label: u32,
    pub sgid_index: u8,
    pub hop_limit: u8,
    pub traffic_class: u8,
}

/// `struct ibv_ah_attr`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct IbvAhAttr {
    pub grh: IbvGlobalRoute,
    pub dlid: u16,
    pub sl: u8,
    pub src_path_bits: u8,
    pub static_rate: u8,
    pub is_global: u8,
    pub port_num: u8,
}

/// `struct ibv_qp_attr`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct IbvQpAttr {
    pub qp_state: c_uint,
    pub cur_qp_state: c_uint,
    pub path_mtu: c_uint,
    pub path_mig_state: c_uint,
    pub qkey: u32,
    pub rq_psn: u32,
    pub sq_psn: u32,
    pub dest_qp_num: u32,
    pub qp_access_flags: c_uint,
    pub cap: IbvQpCap,
    pub ah_attr: IbvAhAttr,
    pub alt_ah_attr: IbvAhAttr,
    pub pkey_index: u16,
    pub alt_pkey_index: u16,
    pub en_sqd_async_notify: u8,
    pub sq_draining: u8,
    pub max_rd_atomic: u8,
    pub max_dest_rd_atomic: u8,
    pub min_rnr_timer: u8,
    pub port_num: u8,
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    pub alt_port_num: u8,
    pub alt_timeout: u8,
    pub rate_limit: u32,
}

/// `struct ibv_port_attr`, with room to spare at the end (a newer library may write more).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IbvPortAttr {
    pub state: c_uint,
    pub max_mtu: c_uint,
    pub active_mtu: c_uint,
    pub gid_tbl_len: c_int,
    pub port_cap_flags: u32,
    pub max_msg_sz: u32,
    pub bad_pkey_cntr: u32,
    pub qkey_viol_cntr: u32,
    pub pkey_tbl_len: u16,
    pub lid: u16,
    pub sm_lid: u16,
    pub lmc: u8,
    pub max_vl_num: u8,
    pub sm_sl: u8,
    pub subnet_timeout: u8,
    pub init_type_reply: u8,
    pub active_width: u8,
    pub active_speed: u8,
    pub phys_state: u8,
    pub link_layer: u8,
    pub flags: u8,
    pub port_cap_flags2: u16,
    pub _spare: [u8; 64],
}

/// `struct ibv_sge`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct IbvSge {
    pub addr: u64,
    pub length: u32,
    pub lkey: u32,
}

/// `struct ibv_send_wr` (128 bytes): the `wr.rdma` member of its union named, the rest
/// kept as padding.
#[repr(C)]
pub struct IbvSendWr {
    pub wr_id: u64,
    pub next: *mut IbvSendWr,
    pub sg_list: *mut IbvSge,
    pub num_sge: c_int,
    pub opcode: c_uint,
    pub send_flags: c_uint,
    pub imm_data: u32,
    pub rdma_remote_addr: u64,
    pub rdma_rkey: u32,
    pub _wr_rest: [u32; 5],
    pub qp_type: u32,
    pub _pad: u32,
    pub _bind_mw_or_tso: [u64; 6],
}

/// `struct ibv_recv_wr`.
#[repr(C)]
pub struct IbvRecvWr {
    pub wr_id: u64,
    pub next: *mut IbvRecvWr,
    pub sg_list: *mut IbvSge,
    pub num_sge: c_int,
}

/// `struct ibv_wc`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct IbvWc {
    pub wr_id: u64,
    pub status: c_uint,
    pub opcode: c_uint,
    pub vendor_err: u32,
    pub byte_len: u32,
    pub imm_data: u32,
    pub qp_num: u32,
    pub src_qp: u32,
    pub wc_flags: c_uint,
    pub pkey_index: u16,
    pub slid: u16,
    pub sl: u8,
    pub dlid_path_bits: u8,
}

// Constants from verbs.h.
pub const IBV_QPT_RC: c_uint = 2;
pub const IBV_QPS_INIT: c_uint = 1;
pub const IBV_QPS_RTR: c_uint = 2;
pub const IBV_QPS_RTS: c_uint = 3;
pub const IBV_QP_STATE: c_int = 1;
pub const IBV_QP_ACCESS_FLAGS: c_int = 1 << 3;
pub const IBV_QP_PKEY_INDEX: c_int = 1 << 4;
pub const IBV_QP_PORT: c_int = 1 << 5;
pub const IBV_QP_AV: c_int = 1 << 7;
pub const IBV_QP_PATH_MTU: c_int = 1 << 8;
pub const IBV_QP_TIMEOUT: c_int = 1 << 9;
pub const IBV_QP_RETRY_CNT: c_int = 1 << 10;
pub const IBV_QP_RNR_RETRY: c_int = 1 << 11;
pub const IBV_QP_RQ_PSN: c_int = 1 << 12;
pub const IBV_QP_MAX_QP_RD_ATOMIC: c_int = 1 << 13;
pub const IBV_QP_MIN_RNR_TIMER: c_int = 1 << 15;
pub const IBV_QP_SQ_PSN: c_int = 1 << 16;
pub const IBV_QP_MAX_DEST_RD_ATOMIC: c_int = 1 << 17;
pub const IBV_QP_DEST_QPN: c_int = 1 << 20;
pub const IBV_ACCESS_LOCAL_WRITE: c_int = 1;
pub const IBV_ACCESS_REMOTE_WRITE: c_int = 1 << 1;
pub const IBV_ACCESS_REMOTE_READ: c_int = 1 << 2;
pub const IBV_WR_RDMA_WRITE: c_uint = 0;
pub const IBV_WR_SEND: c_uint = 2;
pub const IBV_WR_RDMA_READ: c_uint = 4;
pub const IBV_SEND_SIGNALED: c_uint = 1 << 1;
pub const IBV_WC_SUCCESS: c_uint = 0;
pub const IBV_WC_SEND: c_uint = 0;
pub const IBV_WC_RDMA_WRITE: c_uint = 1;
pub const IBV_WC_RDMA_READ: c_uint = 2;
pub const IBV_WC_RECV: c_uint = 1 << 7;
pub const IBV_PORT_ACTIVE: c_uint = 4;
pub const IBV_LINK_LAYER_ETHERNET: u8 = 2;

/// The libibverbs functions the device calls, resolved once from the loaded library.
#[derive(Clone, Copy)]
pub struct Fns {
    pub get_device_list: unsafe extern "C" fn(num: *mut c_int) -> *mut *mut IbvDevice,
    pub free_device_list: unsafe extern "C" fn(list: *mut *mut IbvDevice),
    pub get_device_name: unsafe extern "C" fn(dev: *mut IbvDevice) -> *const c_char,
    pub open_device: unsafe extern "C" fn(dev: *mut IbvDevice) -> *mut IbvContext,
    pub close_device: unsafe extern "C" fn(ctx: *mut IbvContext) -> c_int,
    pub query_port:
        unsafe extern "C" fn(ctx: *mut IbvContext, port: u8, attr: *mut IbvPortAttr) -> c_int,
    pub query_gid: unsafe extern "C" fn(
        ctx: *mut IbvContext,
        port: u8,
        index: c_int,
        gid: *mut IbvGid,
    ) -> c_int,
    pub alloc_pd: unsafe extern "C" fn(ctx: *mut IbvContext) -> *mut IbvPd,
    pub dealloc_pd: unsafe extern "C" fn(pd: *mut IbvPd) -> c_int,
    pub reg_mr: unsafe extern "C" fn(
        pd: *mut IbvPd,
        addr: *mut c_void,
        len: usize,
        access: c_int,
    ) -> *mut IbvMr,
    pub dereg_mr: unsafe extern "C" fn(mr: *mut IbvMr) -> c_int,
    pub create_comp_channel: unsafe extern "C" fn(ctx: *mut IbvContext) -> *mut IbvCompChannel,
    pub destroy_comp_channel: unsafe extern "C" fn(ch: *mut IbvCompChannel) -> c_int,
    pub create_cq: unsafe extern "C" fn(
        ctx: *mut IbvContext,
        cqe: c_int,
        cq_context: *mut c_void,
        channel: *mut IbvCompChannel,
        comp_vector: c_int,
    ) -> *mut IbvCq,
    pub destroy_cq: unsafe extern "C" fn(cq: *mut IbvCq) -> c_int,
    pub get_cq_event: unsafe extern "C" fn(
        ch: *mut IbvCompChannel,
        cq: *mut *mut IbvCq,
        cq_context: *mut *mut c_void,
    ) -> c_int,
    pub ack_cq_events: unsafe extern "C" fn(cq: *mut IbvCq, n: c_uint),
    pub create_qp: unsafe extern "C" fn(pd: *mut IbvPd, attr: *mut IbvQpInitAttr) -> *mut IbvQp,
    pub modify_qp: unsafe extern "C" fn(qp: *mut IbvQp, attr: *mut IbvQpAttr, mask: c_int) -> c_int,
    pub destroy_qp: unsafe extern "C" fn(qp: *mut IbvQp) -> c_int,
    pub wc_status_str: unsafe extern "C" fn(status: c_uint) -> *const c_char,
}

/// The loaded library and its functions.
pub struct Verbs {
    /// Resolved functions; valid while `_lib` is loaded.
    pub fns: Fns,
    _lib: libloading::Library,
}

/// The file loaded: the runtime library's soname, never the development symlink.
pub const LIBRARY: &str = "libibverbs.so.1";

impl Verbs {
    /// Loads libibverbs and resolves every function, or says what is missing.
    pub fn load() -> Result<Verbs, String> {
        // SAFETY: loading runs libibverbs' initialisers, which only read its configuration
        // and register its providers.
        let lib = unsafe { libloading::Library::new(LIBRARY) }.map_err(|e| e.to_string())?;
        macro_rules! sym {
            ($name:literal) => {{
                // SAFETY: the symbol's type is the one verbs.h declares for it (checked by
                // tests/layout.rs where the header is installed).
                let s = unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| format!("{}: {e}", $name))?;
                *s
            }};
        }
        let fns = Fns {
            get_device_list: sym!("ibv_get_device_list"),
            free_device_list: sym!("ibv_free_device_list"),
            get_device_name: sym!("ibv_get_device_name"),
            open_device: sym!("ibv_open_device"),
            close_device: sym!("ibv_close_device"),
            query_port: sym!("ibv_query_port"),
            query_gid: sym!("ibv_query_gid"),
            alloc_pd: sym!("ibv_alloc_pd"),
            dealloc_pd: sym!("ibv_dealloc_pd"),
            reg_mr: sym!("ibv_reg_mr"),
            dereg_mr: sym!("ibv_dereg_mr"),
            create_comp_channel: sym!("ibv_create_comp_channel"),
            destroy_comp_channel: sym!("ibv_destroy_comp_channel"),
            create_cq: sym!("ibv_create_cq"),
            destroy_cq: sym!("ibv_destroy_cq"),
            get_cq_event: sym!("ibv_get_cq_event"),
            ack_cq_events: sym!("ibv_ack_cq_events"),
            create_qp: sym!("ibv_create_qp"),
            modify_qp: sym!("ibv_modify_qp"),
            destroy_qp: sym!("ibv_destroy_qp"),
            wc_status_str: sym!("ibv_wc_status_str"),
        };
        Ok(Verbs { fns, _lib: lib })
    }
}

/// The operations table of the context behind a queue pair or completion queue.
///
/// # Safety
/// `ctx` must be a live context opened by libibverbs.
pub unsafe fn ctx_ops<'a>(ctx: *mut IbvContext) -> &'a IbvContextOps {
    // SAFETY: the caller's promise; libibverbs fills the table when it opens the device and
    // never changes it afterwards.
    unsafe { &(*ctx).ops }
}

/// Sizes and offsets of everything declared here, by the C names, for `tests/layout.rs`.
pub fn layout() -> Vec<(&'static str, usize)> {
    use std::mem::{offset_of, size_of};
    vec![
        (
            "offsetof(struct ibv_context, ops)",
            offset_of!(IbvContext, ops),
        ),
        (
            "offsetof(struct ibv_context_ops, poll_cq)",
            offset_of!(IbvContextOps, poll_cq),
        ),
        (
            "offsetof(struct ibv_context_ops, req_notify_cq)",
            offset_of!(IbvContextOps, req_notify_cq),
        ),
        (
            "offsetof(struct ibv_context_ops, post_send)",
            offset_of!(IbvContextOps, post_send),
        ),
        (
            "offsetof(struct ibv_context_ops, post_recv)",
            offset_of!(IbvContextOps, post_recv),
        ),
        ("sizeof(struct ibv_context_ops)", size_of::<IbvContextOps>()),
        (
            "offsetof(struct ibv_comp_channel, fd)",
            offset_of!(IbvCompChannel, fd),
        ),
        ("offsetof(struct ibv_cq, cqe)", offset_of!(IbvCq, cqe)),
        ("offsetof(struct ibv_mr, lkey)", offset_of!(IbvMr, lkey)),
        ("offsetof(struct ibv_mr, rkey)", offset_of!(IbvMr, rkey)),
        ("offsetof(struct ibv_qp, qp_num)", offset_of!(IbvQp, qp_num)),
        ("sizeof(struct ibv_qp_cap)", size_of::<IbvQpCap>()),
        (
            "offsetof(struct ibv_qp_init_attr, cap)",
            offset_of!(IbvQpInitAttr, cap),
        ),
        (
            "offsetof(struct ibv_qp_init_attr, qp_type)",
            offset_of!(IbvQpInitAttr, qp_type),
        ),
        (
            "offsetof(struct ibv_qp_init_attr, sq_sig_all)",
            offset_of!(IbvQpInitAttr, sq_sig_all),
        ),
        (
            "sizeof(struct ibv_qp_init_attr)",
            size_of::<IbvQpInitAttr>(),
        ),
        ("sizeof(union ibv_gid)", size_of::<IbvGid>()),
        (
            "sizeof(struct ibv_global_route)",
            size_of::<IbvGlobalRoute>(),
        ),
        (
            "offsetof(struct ibv_global_route, sgid_index)",
            offset_of!(IbvGlobalRoute, sgid_index),
        ),
        (
            "offsetof(struct ibv_global_route, hop_limit)",
            offset_of!(IbvGlobalRoute, hop_limit),
        ),
        ("sizeof(struct ibv_ah_attr)", size_of::<IbvAhAttr>()),
        (
            "offsetof(struct ibv_ah_attr, dlid)",
            offset_of!(IbvAhAttr, dlid),
        ),
        (
            "offsetof(struct ibv_ah_attr, is_global)",
            offset_of!(IbvAhAttr, is_global),
        ),
        (
            "offsetof(struct ibv_ah_attr, port_num)",
            offset_of!(IbvAhAttr, port_num),
        ),
        ("sizeof(struct ibv_qp_attr)", size_of::<IbvQpAttr>()),
        (
            "offsetof(struct ibv_qp_attr, path_mtu)",
            offset_of!(IbvQpAttr, path_mtu),
        ),
        (
            "offsetof(struct ibv_qp_attr, rq_psn)",
            offset_of!(IbvQpAttr, rq_psn),
        ),
        (
            "offsetof(struct ibv_qp_attr, sq_psn)",
            offset_of!(IbvQpAttr, sq_psn),
        ),
        (
            "offsetof(struct ibv_qp_attr, dest_qp_num)",
            offset_of!(IbvQpAttr, dest_qp_num),
        ),
        (
            "offsetof(struct ibv_qp_attr, qp_access_flags)",
            offset_of!(IbvQpAttr, qp_access_flags),
        ),
        (
            "offsetof(struct ibv_qp_attr, ah_attr)",
            offset_of!(IbvQpAttr, ah_attr),
        ),
        (
            "offsetof(struct ibv_qp_attr, pkey_index)",
            offset_of!(IbvQpAttr, pkey_index),
        ),
        (
            "offsetof(struct ibv_qp_attr, max_rd_atomic)",
            offset_of!(IbvQpAttr, max_rd_atomic),
        ),
        (
            "offsetof(struct ibv_qp_attr, max_dest_rd_atomic)",
            offset_of!(IbvQpAttr, max_dest_rd_atomic),
        ),
        (
            "offsetof(struct ibv_qp_attr, min_rnr_timer)",
            offset_of!(IbvQpAttr, min_rnr_timer),
        ),
        (
            "offsetof(struct ibv_qp_attr, port_num)",
            offset_of!(IbvQpAttr, port_num),
        ),
        (
            "offsetof(struct ibv_qp_attr, timeout)",
            offset_of!(IbvQpAttr, timeout),
        ),
        (
            "offsetof(struct ibv_qp_attr, retry_cnt)",
            offset_of!(IbvQpAttr, retry_cnt),
        ),
        (
            "offsetof(struct ibv_qp_attr, rnr_retry)",
            offset_of!(IbvQpAttr, rnr_retry),
        ),
        (
            "offsetof(struct ibv_qp_attr, rate_limit)",
            offset_of!(IbvQpAttr, rate_limit),
        ),
        (
            "offsetof(struct ibv_port_attr, active_mtu)",
            offset_of!(IbvPortAttr, active_mtu),
        ),
        (
            "offsetof(struct ibv_port_attr, lid)",
            offset_of!(IbvPortAttr, lid),
        ),
        (
            "offsetof(struct ibv_port_attr, link_layer)",
            offset_of!(IbvPortAttr, link_layer),
        ),
        (
            "offsetof(struct ibv_port_attr, port_cap_flags2)",
            offset_of!(IbvPortAttr, port_cap_flags2),
        ),
        ("sizeof(struct ibv_sge)", size_of::<IbvSge>()),
        ("sizeof(struct ibv_send_wr)", size_of::<IbvSendWr>()),
        (
            "offsetof(struct ibv_send_wr, sg_list)",
            offset_of!(IbvSendWr, sg_list),
        ),
        (
            "offsetof(struct ibv_send_wr, num_sge)",
            offset_of!(IbvSendWr, num_sge),
        ),
        (
            "offsetof(struct ibv_send_wr, opcode)",
            offset_of!(IbvSendWr, opcode),
        ),
        (
            "offsetof(struct ibv_send_wr, send_flags)",
            offset_of!(IbvSendWr, send_flags),
        ),
        (
            "offsetof(struct ibv_send_wr, wr.rdma.remote_addr)",
            offset_of!(IbvSendWr, rdma_remote_addr),
        ),
        (
            "offsetof(struct ibv_send_wr, wr.rdma.rkey)",
            offset_of!(IbvSendWr, rdma_rkey),
        ),
        (
            "offsetof(struct ibv_send_wr, qp_type)",
            offset_of!(IbvSendWr, qp_type),
        ),
        ("sizeof(struct ibv_recv_wr)", size_of::<IbvRecvWr>()),
        (
            "offsetof(struct ibv_recv_wr, num_sge)",
            offset_of!(IbvRecvWr, num_sge),
        ),
        ("sizeof(struct ibv_wc)", size_of::<IbvWc>()),
        ("offsetof(struct ibv_wc, status)", offset_of!(IbvWc, status)),
        ("offsetof(struct ibv_wc, opcode)", offset_of!(IbvWc, opcode)),
        (
            "offsetof(struct ibv_wc, byte_len)",
            offset_of!(IbvWc, byte_len),
        ),
        ("offsetof(struct ibv_wc, qp_num)", offset_of!(IbvWc, qp_num)),
        (
            "offsetof(struct ibv_wc, dlid_path_bits)",
            offset_of!(IbvWc, dlid_path_bits),
        ),
        ("IBV_QPT_RC", IBV_QPT_RC as usize),
        ("IBV_QPS_INIT", IBV_QPS_INIT as usize),
        ("IBV_QPS_RTR", IBV_QPS_RTR as usize),
        ("IBV_QPS_RTS", IBV_QPS_RTS as usize),
        ("IBV_QP_STATE", IBV_QP_STATE as usize),
        ("IBV_QP_ACCESS_FLAGS", IBV_QP_ACCESS_FLAGS as usize),
        ("IBV_QP_PKEY_INDEX", IBV_QP_PKEY_INDEX as usize),
        ("IBV_QP_PORT", IBV_QP_PORT as usize),
        ("IBV_QP_AV", IBV_QP_AV as usize),
        ("IBV_QP_PATH_MTU", IBV_QP_PATH_MTU as usize),
        ("IBV_QP_TIMEOUT", IBV_QP_TIMEOUT as usize),
        ("IBV_QP_RETRY_CNT", IBV_QP_RETRY_CNT as usize),
        ("IBV_QP_RNR_RETRY", IBV_QP_RNR_RETRY as usize),
        ("IBV_QP_RQ_PSN", IBV_QP_RQ_PSN as usize),
        ("IBV_QP_MAX_QP_RD_ATOMIC", IBV_QP_MAX_QP_RD_ATOMIC as usize),
        ("IBV_QP_MIN_RNR_TIMER", IBV_QP_MIN_RNR_TIMER as usize),
        ("IBV_QP_SQ_PSN", IBV_QP_SQ_PSN as usize),
        (
            "IBV_QP_MAX_DEST_RD_ATOMIC",
            IBV_QP_MAX_DEST_RD_ATOMIC as usize,
        ),
        ("IBV_QP_DEST_QPN", IBV_QP_DEST_QPN as usize),
        ("IBV_ACCESS_LOCAL_WRITE", IBV_ACCESS_LOCAL_WRITE as usize),
        ("IBV_ACCESS_REMOTE_WRITE", IBV_ACCESS_REMOTE_WRITE as usize),
        ("IBV_ACCESS_REMOTE_READ", IBV_ACCESS_REMOTE_READ as usize),
        ("IBV_WR_RDMA_WRITE", IBV_WR_RDMA_WRITE as usize),
        ("IBV_WR_SEND", IBV_WR_SEND as usize),
        ("IBV_WR_RDMA_READ", IBV_WR_RDMA_READ as usize),
        ("IBV_SEND_SIGNALED", IBV_SEND_SIGNALED as usize),
        ("IBV_WC_SUCCESS", IBV_WC_SUCCESS as usize),
        ("IBV_WC_SEND", IBV_WC_SEND as usize),
        ("IBV_WC_RDMA_WRITE", IBV_WC_RDMA_WRITE as usize),
        ("IBV_WC_RDMA_READ", IBV_WC_RDMA_READ as usize),
        ("IBV_WC_RECV", IBV_WC_RECV as usize),
        ("IBV_PORT_ACTIVE", IBV_PORT_ACTIVE as usize),
        ("IBV_LINK_LAYER_ETHERNET", IBV_LINK_LAYER_ETHERNET as usize),
    ]
}
