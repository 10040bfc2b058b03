//! The application API (VMI 2.1: `VMI_Init`, `VMI_Poll`, `VMI_Connection_*`, `VMI_Stream_*`).
//!
//! Progress is explicit: nothing happens unless the application calls [`Vmi::poll`] or
//! [`Vmi::wait`], and every callback of the [`Handler`] runs from inside those calls, never
//! from inside a device. Operations started from a callback through [`Ctx`] are queued and
//! run right after the callback returns.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::abi::{
    VMI_FLAG_END, VMI_OP_ACCEPT, VMI_OP_CONNECT_REQUEST, VMI_OP_PEER_DISCONNECT, VMI_OP_RECV,
    VMI_OP_REJECT,
};
use crate::assembly::{self, AssemblyError};
use crate::buffer::Buffer;
use crate::conn::{ConnId, ConnState};
use crate::ctx::{
    Ctx, SendKind, Stream, prepare_connect, prepare_disconnect, prepare_send, stream_begin,
};
use crate::device::Capabilities;
use crate::engine::Engine;
use crate::error::VmiError;
use crate::handler::{
    ConnectOutcome, ConnectRequest, Decision, Disconnect, Handler, Recv, SendCompletion,
};
use crate::irb::{IrbSlot, Purpose};
use crate::params::ResolvedParam;
use crate::slab::Slab;
use crate::spec::Spec;
use crate::status::Status;

/// Largest connect or reply data, whatever the transports allow.
pub const MAX_CONNECT_DATA: usize = 64 * 1024;

/// What a running device looks like from the application.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    /// Instance name.
    pub name: String,
    /// Type name.
    pub type_name: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: crate::device::DeviceKind,
    /// Library or "statically linked".
    pub origin: String,
    /// Capabilities it reported.
    pub capabilities: Capabilities,
    /// Effective parameters.
    pub params: Vec<ResolvedParam>,
}

/// A vmi process: its chains, devices and connections (VMI 2.1: the state `VMI_Init` creates).
/// Not `Send`: one thread drives it; other threads reach it only through device completers
/// and grabbed slabs.
pub struct Vmi {
    engine: Engine,
    deferred: VecDeque<*mut IrbSlot>,
    key: String,
    spec: Spec,
}

impl Vmi {
    /// Starts from the specfile named by `VMI_SPECFILE` (VMI 2.1: `VMI_Init`). The key is
    /// `key`, or `VMI_KEY` when `None`.
    pub fn init(key: Option<&str>) -> Result<Vmi, VmiError> {
        let spec = Spec::from_env().map_err(AssemblyError::from)?;
        let key = match key {
            Some(k) => k.to_string(),
            None => std::env::var("VMI_KEY").unwrap_or_default(),
        };
        Vmi::with_spec(spec, &key)
    }

    /// Starts from a parsed spec with this key.
    pub fn with_spec(spec: Spec, key: &str) -> Result<Vmi, VmiError> {
        Vmi::with_spec_env(spec, key, &|v| std::env::var(v).ok())
    }

    /// As [`Vmi::with_spec`], with parameter overrides read through `env`.
    pub fn with_spec_env(
        spec: Spec,
        key: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vmi, VmiError> {
        assembly::check_key(key)?;
        let plan = assembly::plan(&spec, env)?;
        let types: Vec<(String, crate::loader::DeviceType)> = plan
            .devices
            .iter()
            .map(|p| (p.name.clone(), p.ty.clone()))
            .collect();
        let known = assembly::known_env_vars(&spec, &types);
        for (var, hint) in crate::params::unknown_env_vars(std::env::vars().map(|(k, _)| k), &known)
        {
            match hint {
                Some(h) => {
                    log::warn!("environment variable {var} is not used by vmi; did you mean {h}?")
                }
                None => {
                    log::warn!("environment variable {var} is not used by vmi (see vmi-info --env)")
                }
            }
        }
        let engine = Engine::start(
            plan.devices,
            plan.send,
            plan.recv,
            key.to_string(),
            plan.signature.encode(),
        )
        .map_err(AssemblyError::from)?;
        log::debug!(
            "vmi started with key '{key}', filter signature {}",
            plan.signature.encode()
        );
        Ok(Vmi {
            engine,
            deferred: VecDeque::with_capacity(64),
            key: key.to_string(),
            spec,
        })
    }

    /// This process's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The spec it runs.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The chain's capabilities as the application sees them.
    pub fn capabilities(&self) -> Capabilities {
        self.engine.top_caps()
    }

    /// The running devices.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.engine
            .devices
            .iter()
            .map(|d| DeviceInfo {
                name: d.name.clone(),
                type_name: d.ty.name.clone(),
                version: d.ty.version.clone(),
                kind: d.ty.kind,
                origin: d.ty.origin(),
                capabilities: d.caps,
                params: d.params.clone(),
            })
            .collect()
    }

    fn device_index(&self, device: &str) -> Result<usize, VmiError> {
        self.engine
            .devices
            .iter()
            .position(|d| d.name == device)
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .engine
                    .devices
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect();
                VmiError::UnknownDevice(device.to_string(), names.join(", "))
            })
    }

    /// Reads a runtime attribute of a running device, by instance name (Globus XIO
    /// `globus_xio_handle_cntl`; VMI 2.1 had no equivalent).
    pub fn attr_get(&self, device: &str, name: &str) -> Result<String, VmiError> {
        let i = self.device_index(device)?;
        self.engine
            .get_attr(i, name)
            .ok_or_else(|| VmiError::Attribute {
                device: device.into(),
                name: name.into(),
                reason: "no such attribute".into(),
            })
    }

    /// Changes a runtime attribute of a running device (e.g. a compression level or fault
    /// rates) on the live chain.
    pub fn attr_set(&mut self, device: &str, name: &str, value: &str) -> Result<(), VmiError> {
        let i = self.device_index(device)?;
        self.engine
            .set_attr(i, name, value)
            .map_err(|reason| VmiError::Attribute {
                device: device.into(),
                name: name.into(),
                reason,
            })
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.engine.shared.conns.borrow().live()
    }

    /// IRBs currently allocated (in flight, pending in devices, or held by the application).
    pub fn irbs_in_use(&self) -> usize {
        self.engine.shared.pool.borrow().live
    }

    /// Runs the devices and delivers callbacks without blocking (VMI 2.1: `VMI_Poll`).
    /// Returns the number of events handled.
    pub fn poll(&mut self, handler: &mut dyn Handler) -> usize {
        let mut n = self.engine.poll_devices();
        n += self.dispatch(handler);
        n
    }

    /// Like `poll`, but sleeps on the devices' descriptors until something happens or
    /// `timeout` passes; an idle process uses no CPU. Returns the number of events handled
    /// (0 on timeout).
    pub fn wait(&mut self, handler: &mut dyn Handler, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.poll(handler);
            if n > 0 {
                return n;
            }
            let now = Instant::now();
            if now >= deadline {
                return 0;
            }
            self.engine.sleep(deadline - now);
        }
    }

    /// Allocates a send buffer through the chain, so transports can register or place it
    /// (VMI 2.1: `VMI_Buffer_Allocate`).
    pub fn buffer_alloc(&mut self, len: usize) -> Buffer {
        self.buffer_register(vec![0; len])
    }

    /// Registers application memory with the transports (VMI 2.1: `VMI_Buffer_Register`).
    pub fn buffer_register(&mut self, data: Vec<u8>) -> Buffer {
        let mut b = Buffer::from_vec(data);
        b.regs = self.engine.register(b.as_ptr() as *mut u8, b.len());
        b
    }

    /// Undoes the registration and returns the memory (VMI 2.1: `VMI_Buffer_Deregister`).
    pub fn buffer_free(&mut self, mut buffer: Buffer) -> Vec<u8> {
        self.engine.deregister(std::mem::take(&mut buffer.regs));
        buffer.into_vec()
    }

    /// Opens a connection to `key` at `host` with connect data (VMI 2.1:
    /// `VMI_Connection_Create` + `VMI_Connection_Bind` + `VMI_Connection_Issue`). The result
    /// arrives in [`Handler::connected`] with `token`. `host` may be `host:port` to skip the
    /// key-derived port search.
    pub fn connect(
        &mut self,
        host: &str,
        key: &str,
        data: &[u8],
        token: u64,
    ) -> Result<ConnId, VmiError> {
        if data.len() > MAX_CONNECT_DATA {
            return Err(VmiError::ConnectDataTooLarge {
                len: data.len(),
                max: MAX_CONNECT_DATA,
            });
        }
        let transport = self
            .engine
            .choose_transport(host, key)
            .map_err(|refusals| VmiError::Unreachable {
                host: host.into(),
                key: key.into(),
                reasons: refusals
                    .iter()
                    .map(|(n, r)| format!("{n}: {r}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            })?;
        let (conn, s) = prepare_connect(&mut self.engine, host, key, data, token, Some(transport))?;
        self.engine.submit(s);
        Ok(conn)
    }

    /// Closes a connection in order (VMI 2.1: `VMI_Connection_Disconnect`); sends already
    /// issued are finished first. [`Handler::disconnected`] reports [`Disconnect::Local`].
    pub fn disconnect(&mut self, conn: ConnId) -> Result<(), VmiError> {
        let s = prepare_disconnect(&mut self.engine, conn)?;
        self.engine.submit(s);
        Ok(())
    }

    /// Sends a one-fragment stream gathered from `buffers` (VMI 2.1: `VMI_Stream_Send`).
    pub fn send(
        &mut self,
        conn: ConnId,
        buffers: impl IntoIterator<Item = Buffer>,
        token: u64,
    ) -> Result<(), VmiError> {
        let s = prepare_send(&mut self.engine, conn, buffers, token, SendKind::Whole)?;
        self.engine.submit(s);
        Ok(())
    }

    /// Sends a small one-fragment stream by copying it; no buffer needed
    /// (VMI 2.1: `VMI_Stream_Send_Inline`). Its completion carries `token` 0 and no buffers.
    pub fn send_inline(&mut self, conn: ConnId, data: &[u8]) -> Result<(), VmiError> {
        let b = self.engine.inline.take(data);
        let s = prepare_send(&mut self.engine, conn, Some(b), 0, SendKind::Whole)?;
        self.engine.submit(s);
        Ok(())
    }

    /// Begins a stream of fragments.
    pub fn stream_begin(&mut self, conn: ConnId) -> Result<Stream, VmiError> {
        stream_begin(&mut self.engine, conn)
    }

    /// Sends one fragment of an open stream.
    pub fn stream_send(
        &mut self,
        stream: &Stream,
        buffers: impl IntoIterator<Item = Buffer>,
        token: u64,
    ) -> Result<(), VmiError> {
        let s = prepare_send(
            &mut self.engine,
            stream.conn,
            buffers,
            token,
            SendKind::Fragment,
        )?;
        self.engine.submit(s);
        Ok(())
    }

    /// Sends the last fragment (possibly empty) and ends the stream.
    pub fn stream_end(
        &mut self,
        stream: Stream,
        buffers: impl IntoIterator<Item = Buffer>,
        token: u64,
    ) -> Result<(), VmiError> {
        let s = prepare_send(&mut self.engine, stream.conn, buffers, token, SendKind::End)?;
        self.engine.submit(s);
        Ok(())
    }

    fn run_deferred(&mut self) {
        while let Some(s) = self.deferred.pop_front() {
            // SAFETY: deferred slots are prepared, owned by the engine, not yet submitted.
            let (purpose, transport) = unsafe { ((*s).purpose, (*s).transport) };
            if purpose == Purpose::Connect && transport == u8::MAX {
                // SAFETY: as above.
                let (host, key) = unsafe { ((*s).peer_host.clone(), (*s).peer_key.clone()) };
                match self.engine.choose_transport(&host, &key) {
                    Ok(t) => {
                        // SAFETY: as above.
                        unsafe { (*s).transport = t as u8 };
                        // SAFETY: as above.
                        let conn = ConnId(unsafe { (*s).abi.conn });
                        if let Some(e) = self.engine.shared.conns.borrow_mut().get_mut(conn) {
                            e.transport = t;
                        }
                    }
                    Err(refusals) => {
                        // SAFETY: as above.
                        unsafe {
                            (*s).abi.status = Status::Unreachable.code();
                            (*s).detail = refusals
                                .iter()
                                .map(|(n, r)| format!("{n}: {r}"))
                                .collect::<Vec<_>>()
                                .join("; ");
                            (*s).unwound = true;
                        }
                        self.engine.out.push_back(s);
                        continue;
                    }
                }
            }
            self.engine.submit(s);
        }
    }

    /// Delivers queued outcomes to the handler.
    fn dispatch(&mut self, handler: &mut dyn Handler) -> usize {
        let mut n = 0;
        // Bound one poll's work so devices keep making progress under a flood of events.
        let budget = self.engine.out.len().max(1) * 4 + 64;
        while let Some(s) = self.engine.out.pop_front() {
            self.deliver(handler, s);
            self.run_deferred();
            n += 1;
            if n >= budget {
                break;
            }
        }
        n
    }

    fn deliver(&mut self, handler: &mut dyn Handler, s: *mut IrbSlot) {
        // SAFETY: slots in `out` are owned by the engine; no device holds them.
        let slot = unsafe { &mut *s };
        let conn = ConnId(slot.abi.conn);
        let status = Status::from_code(slot.abi.status);
        match slot.purpose {
            Purpose::Send => {
                let mut ctx = Ctx {
                    engine: &mut self.engine,
                    deferred: &mut self.deferred,
                };
                let detail = std::mem::take(&mut slot.detail);
                let mut done = SendCompletion {
                    status,
                    token: slot.token,
                    detail: &detail,
                    bufs: &mut slot.bufs,
                };
                handler.send_complete(&mut ctx, conn, &mut done);
                self.engine.free_slot(s);
            }
            Purpose::Connect => {
                {
                    let mut conns = self.engine.shared.conns.borrow_mut();
                    if status == Status::Ok {
                        if let Some(e) = conns.get_mut(conn) {
                            e.state = ConnState::Open;
                        }
                    } else {
                        conns.release(conn);
                    }
                }
                // SAFETY: segments point at host copies owned by the slot.
                let reply = unsafe { Slab::from_segments(slot.segs()) };
                let outcome = match status {
                    Status::Ok => ConnectOutcome::Accepted(reply),
                    Status::Rejected => ConnectOutcome::Rejected(reply),
                    _ => ConnectOutcome::Failed {
                        status,
                        detail: &slot.detail,
                    },
                };
                let mut ctx = Ctx {
                    engine: &mut self.engine,
                    deferred: &mut self.deferred,
                };
                handler.connected(&mut ctx, conn, outcome, slot.token);
                self.engine.free_slot(s);
            }
            Purpose::Answer => {
                let mut conns = self.engine.shared.conns.borrow_mut();
                if slot.abi.op == VMI_OP_ACCEPT && status == Status::Ok {
                    if let Some(e) = conns.get_mut(conn) {
                        e.state = ConnState::Open;
                    }
                } else {
                    if status != Status::Ok {
                        log::warn!(
                            "{conn}: answering the connect request failed: {status}: {}",
                            slot.detail
                        );
                    }
                    conns.release(conn);
                }
                drop(conns);
                self.engine.free_slot(s);
            }
            Purpose::Disconnect => {
                self.engine.shared.conns.borrow_mut().release(conn);
                let reason = if status == Status::Ok {
                    Disconnect::Local
                } else {
                    Disconnect::Error {
                        status,
                        detail: std::mem::take(&mut slot.detail),
                    }
                };
                let mut ctx = Ctx {
                    engine: &mut self.engine,
                    deferred: &mut self.deferred,
                };
                handler.disconnected(&mut ctx, conn, reason);
                self.engine.free_slot(s);
            }
            Purpose::Received => self.deliver_received(handler, s),
        }
    }

    fn deliver_received(&mut self, handler: &mut dyn Handler, s: *mut IrbSlot) {
        // SAFETY: as in `deliver`.
        let slot = unsafe { &mut *s };
        let conn = ConnId(slot.abi.conn);
        let status = Status::from_code(slot.abi.status);
        let mut ctx = Ctx {
            engine: &mut self.engine,
            deferred: &mut self.deferred,
        };
        if slot.unwound {
            // A device finished the IRB on its way up: with success it consumed it (a fault
            // injector dropping a fragment); otherwise it failed it (a CRC mismatch).
            if status != Status::Ok {
                handler.receive_failed(&mut ctx, conn, status, &slot.detail);
            }
            self.engine.free_slot(s);
            return;
        }
        match slot.abi.op {
            VMI_OP_RECV => {
                let live = ctx.engine.shared.conns.borrow().get(conn).is_some();
                if !live {
                    log::debug!(
                        "{conn}: dropping a fragment that arrived after the connection closed"
                    );
                    self.engine.release(s);
                    return;
                }
                let cmd = if slot.abi.flags & VMI_FLAG_END != 0 {
                    Recv::End
                } else {
                    Recv::Fragment
                };
                // SAFETY: the transport keeps the segments valid until the release below or
                // until a grabbed slab is dropped.
                let mut slab = unsafe { Slab::from_segments(slot.segs()) }
                    .with_owner(s as *mut u8, ctx.engine.shared.releases.clone());
                handler.receive(&mut ctx, conn, cmd, &mut slab);
                if !slab.was_grabbed() {
                    drop(slab);
                    self.engine.release(s);
                }
            }
            VMI_OP_CONNECT_REQUEST => {
                {
                    let mut conns = ctx.engine.shared.conns.borrow_mut();
                    if let Some(e) = conns.get_mut(conn) {
                        e.peer_host = slot.peer_host.clone();
                        e.peer_key = slot.peer_key.clone();
                    }
                }
                let peer_key = slot.peer_key.clone();
                let peer_host = slot.peer_host.clone();
                // SAFETY: segments point at host copies owned by the slot.
                let data = unsafe { Slab::from_segments(slot.segs()) };
                let mut req = ConnectRequest {
                    conn,
                    peer_key: &peer_key,
                    peer_host: &peer_host,
                    data,
                };
                let decision = handler.accept(&mut ctx, &mut req);
                drop(req);
                let transport = slot.transport;
                self.engine.release(s);
                let (op, reply) = match decision {
                    Decision::Accept(r) => (VMI_OP_ACCEPT, r),
                    Decision::Reject(r) => (VMI_OP_REJECT, r),
                };
                let reply = if reply.len() > MAX_CONNECT_DATA {
                    log::error!(
                        "{conn}: accept handler's reply data of {} bytes is over the {MAX_CONNECT_DATA}-byte limit; sending none",
                        reply.len()
                    );
                    Vec::new()
                } else {
                    reply
                };
                let a = self.engine.new_slot();
                // SAFETY: fresh slot owned by the engine.
                unsafe {
                    (*a).abi.op = op;
                    (*a).abi.conn = conn.raw();
                    (*a).purpose = Purpose::Answer;
                    (*a).transport = transport;
                    if !reply.is_empty() {
                        let p = reply.as_ptr() as *mut u8;
                        let len = reply.len();
                        (*a).attached.push(reply);
                        (*a).push_seg(p, len);
                    }
                }
                self.deferred.push_back(a);
            }
            VMI_OP_PEER_DISCONNECT => {
                let was_live = ctx.engine.shared.conns.borrow().get(conn).is_some();
                ctx.engine.shared.conns.borrow_mut().release(conn);
                if was_live {
                    let reason = if status == Status::Ok {
                        Disconnect::Peer
                    } else {
                        Disconnect::Error {
                            status,
                            detail: slot.detail.clone(),
                        }
                    };
                    handler.disconnected(&mut ctx, conn, reason);
                }
                self.engine.release(s);
            }
            other => {
                log::error!("a transport handed up an IRB with unknown op {other}; dropped");
                self.engine.release(s);
            }
        }
    }
}
