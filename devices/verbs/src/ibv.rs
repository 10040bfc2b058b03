//! The hardware NIC through libibverbs (loaded at run time, see [`crate::ffi`]): one device
//! context, one protection domain, one completion queue with its completion channel, and RC
//! queue pairs moved INIT → RTR → RTS with the peer's address from the bootstrap.
//!
//! Nothing here has run on an RDMA NIC in this project's CI (its machines have none); the
//! structure layouts are checked against the installed header, and the device above runs
//! on [`crate::sim::SimNic`] in the tests.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::{CStr, c_int};
use std::os::fd::RawFd;
use std::ptr;

use crate::ffi::*;
use crate::nic::{Access, Address, Completion, Kind, Mr, Nic, NicError, Remote, RemoteMem, Sge};

/// Where the NIC is and how it is used.
#[derive(Clone, Debug)]
pub struct IbvOptions {
    /// Device name (`mlx5_0`); empty: the first.
    pub device: String,
    /// Port (from 1).
    pub port: u8,
    /// GID table index (RoCE: the entry of the address and RoCE version wanted).
    pub gid_index: u8,
    /// Completion queue entries.
    pub cq_entries: u32,
}

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

fn call(call: &'static str) -> NicError {
    NicError::Call { call, why: errno() }
}

/// An RDMA NIC port through libibverbs.
pub struct IbvNic {
    verbs: Verbs,
    name: String,
    port: u8,
    gid_index: u8,
    addr: Address,
    ethernet: bool,
    ctx: *mut IbvContext,
    pd: *mut IbvPd,
    channel: *mut IbvCompChannel,
    cq: *mut IbvCq,
    qps: HashMap<u32, *mut IbvQp>,
    mrs: HashMap<u64, *mut IbvMr>,
    /// Protection domains beyond the default one (domain 0), by number.
    pds: HashMap<u32, *mut IbvPd>,
    next_domain: u32,
    next_mr: u64,
    wc: Vec<IbvWc>,
}

impl IbvNic {
    /// Opens the device and port, or says precisely why not.
    pub fn open(o: &IbvOptions) -> Result<IbvNic, NicError> {
        let verbs = Verbs::load().map_err(NicError::NoLibrary)?;
        let f = verbs.fns;
        let mut n: c_int = 0;
        // SAFETY: a valid out-pointer; the list is freed below.
        let list = unsafe { (f.get_device_list)(&mut n) };
        if list.is_null() {
            return Err(NicError::NoKernelSupport(errno()));
        }
        let mut names = Vec::new();
        let mut chosen: *mut IbvDevice = ptr::null_mut();
        for i in 0..n.max(0) as usize {
            // SAFETY: `list` holds `n` device pointers.
            let dev = unsafe { *list.add(i) };
            // SAFETY: a device from the list; the name lives as long as the list.
            let name = unsafe { CStr::from_ptr((f.get_device_name)(dev)) }
                .to_string_lossy()
                .into_owned();
            if chosen.is_null() && (o.device.is_empty() || o.device == name) {
                chosen = dev;
            }
            names.push(name);
        }
        let ctx = if chosen.is_null() {
            ptr::null_mut()
        } else {
            // SAFETY: a device from the live list.
            unsafe { (f.open_device)(chosen) }
        };
        let open_err = errno();
        // SAFETY: the list from get_device_list, freed once; the opened context does not
        // depend on it.
        unsafe { (f.free_device_list)(list) };
        if names.is_empty() {
            return Err(NicError::NoDevice);
        }
        if chosen.is_null() {
            return Err(NicError::UnknownDevice {
                name: o.device.clone(),
                found: names.join(", "),
            });
        }
        if ctx.is_null() {
            return Err(NicError::Call {
                call: "ibv_open_device",
                why: open_err,
            });
        }
        let name = if o.device.is_empty() {
            names[0].clone()
        } else {
            o.device.clone()
        };
        let mut nic = IbvNic {
            verbs,
            name,
            port: o.port,
            gid_index: o.gid_index,
            addr: Address {
                lid: 0,
                gid: [0; 16],
                mtu: 3,
            },
            ethernet: false,
            ctx,
            pd: ptr::null_mut(),
            channel: ptr::null_mut(),
            cq: ptr::null_mut(),
            qps: HashMap::new(),
            mrs: HashMap::new(),
            pds: HashMap::new(),
            next_domain: 0,
            next_mr: 1,
            wc: vec![IbvWc::default(); 32],
        };
        nic.setup(o.cq_entries)?;
        Ok(nic)
    }

    /// Port, GID, protection domain, channel and completion queue. On error `Drop` frees
    /// what was made.
    fn setup(&mut self, cq_entries: u32) -> Result<(), NicError> {
        let f = self.verbs.fns;
        // SAFETY: zeroed plain data is a valid port attribute buffer.
        let mut pa: IbvPortAttr = unsafe { std::mem::zeroed() };
        // SAFETY: a live context; the buffer is at least as large as libibverbs writes.
        if unsafe { (f.query_port)(self.ctx, self.port, &mut pa) } != 0 {
            return Err(call("ibv_query_port"));
        }
        if pa.state != IBV_PORT_ACTIVE {
            return Err(NicError::PortDown {
                device: self.name.clone(),
                port: self.port,
                state: pa.state,
            });
        }
        let mut gid = IbvGid::default();
        // SAFETY: a live context and a valid out-pointer.
        if unsafe { (f.query_gid)(self.ctx, self.port, self.gid_index.into(), &mut gid) } != 0 {
            return Err(call("ibv_query_gid"));
        }
        self.ethernet = pa.link_layer == IBV_LINK_LAYER_ETHERNET;
        self.addr = Address {
            lid: pa.lid,
            gid: gid.raw,
            mtu: pa.active_mtu.clamp(1, 5) as u8,
        };
        // SAFETY: a live context.
        self.pd = unsafe { (f.alloc_pd)(self.ctx) };
        if self.pd.is_null() {
            return Err(call("ibv_alloc_pd"));
        }
        // SAFETY: a live context.
        self.channel = unsafe { (f.create_comp_channel)(self.ctx) };
        if self.channel.is_null() {
            return Err(call("ibv_create_comp_channel"));
        }
        // SAFETY: the channel was just created; its fd is ours to make non-blocking.
        let fd = unsafe { (*self.channel).fd };
        // SAFETY: fcntl on a descriptor we own.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(call("fcntl(O_NONBLOCK) on the completion channel"));
        }
        let entries = cq_entries.clamp(64, 1 << 22) as c_int;
        // SAFETY: a live context and channel.
        self.cq = unsafe { (f.create_cq)(self.ctx, entries, ptr::null_mut(), self.channel, 0) };
        if self.cq.is_null() {
            return Err(call("ibv_create_cq"));
        }
        self.rearm();
        Ok(())
    }

    fn pd(&self, domain: u32) -> Result<*mut IbvPd, NicError> {
        if domain == 0 {
            return Ok(self.pd);
        }
        self.pds.get(&domain).copied().ok_or(NicError::Call {
            call: "ibv_alloc_pd",
            why: format!("no protection domain {domain}"),
        })
    }

    fn qp(&self, qpn: u32, what: &'static str) -> Result<*mut IbvQp, NicError> {
        self.qps.get(&qpn).copied().ok_or(NicError::Call {
            call: what,
            why: format!("no queue pair {qpn}"),
        })
    }

    fn modify(&self, qp: *mut IbvQp, attr: &mut IbvQpAttr, mask: c_int) -> Result<(), NicError> {
        // SAFETY: a live queue pair and a fully initialised attribute structure.
        let rc = unsafe { (self.verbs.fns.modify_qp)(qp, attr, mask) };
        if rc != 0 {
            return Err(NicError::Call {
                call: "ibv_modify_qp",
                why: std::io::Error::from_raw_os_error(rc).to_string(),
            });
        }
        Ok(())
    }

    fn post(&self, qp: *mut IbvQp, wr: &mut IbvSendWr) -> Result<(), NicError> {
        let mut bad = ptr::null_mut();
        // SAFETY: a live queue pair of this context; the work request and its scatter list
        // live across the call (the NIC copies them), and the memory they name is registered
        // (`Nic::register`'s contract).
        let rc = unsafe { (ctx_ops(self.ctx).post_send)(qp, wr, &mut bad) };
        if rc != 0 {
            return Err(NicError::Call {
                call: "ibv_post_send",
                why: std::io::Error::from_raw_os_error(rc).to_string(),
            });
        }
        Ok(())
    }

    /// Posts one signalled work request of `opcode` on `sge` (at the peer's `remote_addr`
    /// with `rkey` for RDMA READ and WRITE).
    fn post_op(
        &mut self,
        qpn: u32,
        wr_id: u64,
        sge: Sge,
        opcode: u32,
        remote_addr: u64,
        rkey: u32,
    ) -> Result<(), NicError> {
        let qp = self.qp(qpn, "ibv_post_send")?;
        let mut s = IbvSge::from(sge);
        let mut wr = IbvSendWr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: &mut s,
            num_sge: 1,
            opcode,
            send_flags: IBV_SEND_SIGNALED,
            imm_data: 0,
            rdma_remote_addr: remote_addr,
            rdma_rkey: rkey,
            _wr_rest: [0; 5],
            qp_type: 0,
            _pad: 0,
            _bind_mw_or_tso: [0; 6],
        };
        self.post(qp, &mut wr)
    }
}

impl Drop for IbvNic {
    fn drop(&mut self) {
        let f = self.verbs.fns;
        // SAFETY: every handle below was created by this NIC and is destroyed once, in the
        // order libibverbs requires (queue pairs, registrations, queue, channel, domain,
        // context).
        unsafe {
            for (_, qp) in self.qps.drain() {
                (f.destroy_qp)(qp);
            }
            for (_, mr) in self.mrs.drain() {
                (f.dereg_mr)(mr);
            }
            for (_, pd) in self.pds.drain() {
                (f.dealloc_pd)(pd);
            }
            if !self.cq.is_null() {
                (f.destroy_cq)(self.cq);
            }
            if !self.channel.is_null() {
                (f.destroy_comp_channel)(self.channel);
            }
            if !self.pd.is_null() {
                (f.dealloc_pd)(self.pd);
            }
            (f.close_device)(self.ctx);
        }
    }
}

impl Nic for IbvNic {
    fn describe(&self) -> String {
        format!(
            "{} port {} ({}, MTU {})",
            self.name,
            self.port,
            if self.ethernet { "RoCE" } else { "InfiniBand" },
            128u32 << self.addr.mtu
        )
    }

    fn address(&self) -> Address {
        self.addr
    }

    fn alloc_domain(&mut self) -> Result<u32, NicError> {
        // SAFETY: a live context.
        let pd = unsafe { (self.verbs.fns.alloc_pd)(self.ctx) };
        if pd.is_null() {
            return Err(call("ibv_alloc_pd"));
        }
        self.next_domain = self.next_domain.wrapping_add(1).max(1);
        while self.pds.contains_key(&self.next_domain) {
            self.next_domain = self.next_domain.wrapping_add(1).max(1);
        }
        self.pds.insert(self.next_domain, pd);
        Ok(self.next_domain)
    }

    fn free_domain(&mut self, domain: u32) {
        if let Some(pd) = self.pds.remove(&domain) {
            // SAFETY: a live domain of this NIC with nothing left in it (the caller's
            // promise), freed once.
            if unsafe { (self.verbs.fns.dealloc_pd)(pd) } != 0 {
                log::error!("verbs: ibv_dealloc_pd failed: {}", errno());
            }
        }
    }

    fn create_qp(&mut self, domain: u32, send: u32, recv: u32) -> Result<u32, NicError> {
        let pd = self.pd(domain)?;
        let mut init = IbvQpInitAttr {
            qp_context: ptr::null_mut(),
            send_cq: self.cq,
            recv_cq: self.cq,
            srq: ptr::null_mut(),
            cap: IbvQpCap {
                max_send_wr: send,
                max_recv_wr: recv,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            qp_type: IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: a live protection domain and a complete attribute structure.
        let qp = unsafe { (self.verbs.fns.create_qp)(pd, &mut init) };
        if qp.is_null() {
            return Err(call("ibv_create_qp"));
        }
        // SAFETY: a live queue pair just returned.
        let qpn = unsafe { (*qp).qp_num };
        self.qps.insert(qpn, qp);
        let mut attr = IbvQpAttr {
            qp_state: IBV_QPS_INIT,
            pkey_index: 0,
            port_num: self.port,
            qp_access_flags: (IBV_ACCESS_LOCAL_WRITE
                | IBV_ACCESS_REMOTE_READ
                | IBV_ACCESS_REMOTE_WRITE) as u32,
            ..Default::default()
        };
        let mask = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
        if let Err(e) = self.modify(qp, &mut attr, mask) {
            self.destroy_qp(qpn);
            return Err(e);
        }
        Ok(qpn)
    }

    fn connect_qp(&mut self, qpn: u32, psn: u32, remote: &Remote) -> Result<(), NicError> {
        let qp = self.qp(qpn, "ibv_modify_qp")?;
        let global = self.ethernet || remote.addr.lid == 0;
        let mut attr = IbvQpAttr {
            qp_state: IBV_QPS_RTR,
            path_mtu: self.addr.mtu.min(remote.addr.mtu).into(),
            dest_qp_num: remote.qpn,
            rq_psn: remote.psn,
            max_dest_rd_atomic: 16,
            min_rnr_timer: 12,
            ah_attr: IbvAhAttr {
                grh: IbvGlobalRoute {
                    dgid: IbvGid {
                        raw: remote.addr.gid,
                    },
                    flow_label: 0,
                    sgid_index: self.gid_index,
                    hop_limit: 64,
                    traffic_class: 0,
                },
                dlid: remote.addr.lid,
                sl: 0,
                src_path_bits: 0,
                static_rate: 0,
                is_global: u8::from(global),
                port_num: self.port,
            },
            ..Default::default()
        };
        let mask = IBV_QP_STATE
            | IBV_QP_AV
            | IBV_QP_PATH_MTU
            | IBV_QP_DEST_QPN
            | IBV_QP_RQ_PSN
            | IBV_QP_MAX_DEST_RD_ATOMIC
            | IBV_QP_MIN_RNR_TIMER;
        self.modify(qp, &mut attr, mask)?;
        let mut attr = IbvQpAttr {
            qp_state: IBV_QPS_RTS,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            sq_psn: psn,
            max_rd_atomic: 16,
            ..Default::default()
        };
        let mask = IBV_QP_STATE
            | IBV_QP_TIMEOUT
            | IBV_QP_RETRY_CNT
            | IBV_QP_RNR_RETRY
            | IBV_QP_SQ_PSN
            | IBV_QP_MAX_QP_RD_ATOMIC;
        self.modify(qp, &mut attr, mask)
    }

    fn destroy_qp(&mut self, qpn: u32) {
        if let Some(qp) = self.qps.remove(&qpn) {
            // SAFETY: a live queue pair of this NIC, destroyed once.
            unsafe { (self.verbs.fns.destroy_qp)(qp) };
        }
    }

    unsafe fn register(
        &mut self,
        domain: u32,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<Mr, NicError> {
        let access = IBV_ACCESS_LOCAL_WRITE
            | match access {
                Access::Local => 0,
                Access::RemoteRead => IBV_ACCESS_REMOTE_READ,
                Access::RemoteReadWrite => IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE,
            };
        let pd = self.pd(domain)?;
        // SAFETY: a live protection domain; the caller's contract covers the memory.
        let mr = unsafe { (self.verbs.fns.reg_mr)(pd, addr.cast(), len, access) };
        if mr.is_null() {
            return Err(call("ibv_reg_mr"));
        }
        let id = self.next_mr;
        self.next_mr += 1;
        self.mrs.insert(id, mr);
        // SAFETY: a live registration just returned.
        let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
        Ok(Mr { id, lkey, rkey })
    }

    fn deregister(&mut self, mr: Mr) {
        if let Some(m) = self.mrs.remove(&mr.id) {
            // SAFETY: a live registration of this NIC, deregistered once.
            unsafe { (self.verbs.fns.dereg_mr)(m) };
        }
    }

    fn post_recv(&mut self, qpn: u32, wr_id: u64, sge: Sge) -> Result<(), NicError> {
        let qp = self.qp(qpn, "ibv_post_recv")?;
        let mut s = IbvSge::from(sge);
        let mut wr = IbvRecvWr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: &mut s,
            num_sge: 1,
        };
        let mut bad = ptr::null_mut();
        // SAFETY: as in `post`.
        let rc = unsafe { (ctx_ops(self.ctx).post_recv)(qp, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(NicError::Call {
                call: "ibv_post_recv",
                why: std::io::Error::from_raw_os_error(rc).to_string(),
            });
        }
        Ok(())
    }

    fn post_send(&mut self, qpn: u32, wr_id: u64, sge: Sge) -> Result<(), NicError> {
        self.post_op(qpn, wr_id, sge, IBV_WR_SEND, 0, 0)
    }

    fn post_rdma(
        &mut self,
        qpn: u32,
        wr_id: u64,
        sge: Sge,
        remote: RemoteMem,
        write: bool,
    ) -> Result<(), NicError> {
        let opcode = if write {
            IBV_WR_RDMA_WRITE
        } else {
            IBV_WR_RDMA_READ
        };
        self.post_op(qpn, wr_id, sge, opcode, remote.addr, remote.rkey)
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        let want = max.min(self.wc.len()) as c_int;
        // SAFETY: a live completion queue; `wc` holds `want` entries.
        let n = unsafe { (ctx_ops(self.ctx).poll_cq)(self.cq, want, self.wc.as_mut_ptr()) };
        if n <= 0 {
            if n < 0 {
                log::error!("verbs: ibv_poll_cq failed ({n})");
            }
            return 0;
        }
        for wc in &self.wc[..n as usize] {
            let error = (wc.status != IBV_WC_SUCCESS).then(|| {
                // SAFETY: libibverbs returns a static string for any status value.
                let s = unsafe { CStr::from_ptr((self.verbs.fns.wc_status_str)(wc.status)) };
                // Status strings are static in libibverbs; keep one copy per distinct text.
                leak_once(s.to_string_lossy().into_owned())
            });
            // The opcode is valid only on success; the device goes by the work request id.
            let kind = if wc.opcode & IBV_WC_RECV != 0 {
                Kind::Recv
            } else if wc.opcode == IBV_WC_RDMA_READ {
                Kind::Read
            } else if wc.opcode == IBV_WC_RDMA_WRITE {
                Kind::Write
            } else {
                Kind::Send
            };
            out.push(Completion {
                wr_id: wc.wr_id,
                qpn: wc.qp_num,
                kind,
                len: wc.byte_len,
                error,
            });
        }
        n as usize
    }

    fn fd(&self) -> Option<RawFd> {
        // SAFETY: the channel lives as long as the NIC.
        Some(unsafe { (*self.channel).fd })
    }

    fn rearm(&mut self) {
        let f = self.verbs.fns;
        let mut events = 0u32;
        loop {
            let mut cq = ptr::null_mut();
            let mut cq_ctx = ptr::null_mut();
            // SAFETY: a live, non-blocking channel; out-pointers valid.
            if unsafe { (f.get_cq_event)(self.channel, &mut cq, &mut cq_ctx) } != 0 {
                break;
            }
            events += 1;
        }
        if events > 0 {
            // SAFETY: the events just taken from this queue's channel.
            unsafe { (f.ack_cq_events)(self.cq, events) };
        }
        // SAFETY: a live completion queue.
        if unsafe { (ctx_ops(self.ctx).req_notify_cq)(self.cq, 0) } != 0 {
            log::error!("verbs: ibv_req_notify_cq failed; sleeping may miss completions");
        }
    }
}

impl From<Sge> for IbvSge {
    fn from(s: Sge) -> IbvSge {
        IbvSge {
            addr: s.addr,
            length: s.len,
            lkey: s.lkey,
        }
    }
}

/// A `'static` copy of a status text, made once per distinct text (there are about 25).
fn leak_once(s: String) -> &'static str {
    use std::sync::Mutex;
    static SEEN: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(&t) = seen.iter().find(|&&t| t == s) {
        return t;
    }
    let t: &'static str = Box::leak(s.into_boxed_str());
    seen.push(t);
    t
}
