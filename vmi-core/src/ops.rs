//! The operation surface shared by [`crate::Vmi`] (operations run now) and [`crate::Ctx`]
//! (operations issued from a callback, run when it returns): one implementation, in the
//! [`Operations`] trait, for both.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::abi::{VMI_FLAG_END, VMI_OP_CONNECT, VMI_OP_DISCONNECT, VMI_OP_SEND};
use crate::assembly;
use crate::buffer::Buffer;
use crate::conn::{ConnId, SendKind};
use crate::engine::Engine;
use crate::error::VmiError;
use crate::retry::Retries;
use crate::slot::{DevIndex, Purpose, Slot};
use crate::status::Status;
use vmi_device::hostmsg::HostMsg;

/// How often a connection's one-way latency is measured again, at most.
pub const LATENCY_REFRESH: Duration = Duration::from_secs(5);

/// Largest connect or reply data, whatever the transports allow.
pub const MAX_CONNECT_DATA: usize = 64 * 1024;

/// An open stream on a connection (VMI 2.1: `VMI_Stream_Begin` … `VMI_Stream_End`).
#[derive(Debug)]
#[must_use = "a stream must be ended with stream_end"]
pub struct Stream {
    conn: ConnId,
}

impl Stream {
    /// The connection.
    pub fn conn(&self) -> ConnId {
        self.conn
    }
}

/// When an issued operation runs.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Now: the caller is the application, outside any callback.
    Now,
    /// After the running callback returns (no re-entrancy into devices).
    Deferred,
}

/// The engine and the operations waiting for the running callback to return.
#[doc(hidden)]
pub struct Core {
    pub(crate) engine: Engine,
    pub(crate) deferred: VecDeque<Slot>,
    /// Connects that keep trying a peer that is not there yet (see `retry`).
    pub(crate) retries: Retries,
    /// Multi-rail connections (see `rails`); inert without a `<rails>` block.
    pub(crate) rails: crate::rails::Rails,
    /// Simultaneous connects (see `cross`).
    pub(crate) cross: crate::cross::Crossings,
    /// Things the next poll must see to even when no device has anything: connects waiting
    /// for their peer, bonds, connects waiting for a crossing peer (see `refresh`).
    pub(crate) background: usize,
    /// True when a handle may stand for another connection (a bond, a crossed connect):
    /// sends and deliveries then go the long way (see `refresh`).
    pub(crate) routed: bool,
    /// Send/receive/reply and pulses (see `msgpass`).
    pub(crate) msg: crate::msgpass::MsgPass,
    /// Remote memory access (see `rdma`).
    pub(crate) rdma: crate::rdma::Rdma,
    /// The named chains (see `chains`).
    pub(crate) chains: crate::chains::Chains,
    /// Work for the end of the running poll: requests or pulses to deliver, an announced
    /// sleep to end (one flag, so a poll with neither checks one field).
    pub(crate) after: bool,
    /// The clock of latency pings' stamps.
    epoch: Instant,
}

impl Core {
    pub(crate) fn new(
        engine: Engine,
        connect_wait: Duration,
        rails: crate::rails::Rails,
        cross: crate::cross::Crossings,
    ) -> Core {
        Core {
            engine,
            deferred: VecDeque::with_capacity(64),
            retries: Retries::new(connect_wait),
            routed: rails.on(),
            rails,
            cross,
            background: 0,
            msg: crate::msgpass::MsgPass::default(),
            rdma: crate::rdma::Rdma::default(),
            chains: crate::chains::Chains::default(),
            after: false,
            epoch: Instant::now(),
        }
    }

    /// Recomputes `background` and `routed` after what can change them (retries, bonds,
    /// aliases), so that `poll` and the send and receive fast paths check one field each.
    pub(crate) fn refresh(&mut self) {
        self.background = self.retries.waiting()
            + self.rails.busy()
            + self.cross.waits()
            + self.msg.waits()
            + self.rdma.waits()
            + self.engine.conns().timers();
        self.routed = self.rails.on() || self.cross.aliased();
    }

    /// Nanoseconds on the stamps' clock.
    pub(crate) fn clock_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos().min(u64::MAX as u128) as u64
    }

    /// Pings the peer's engine on `conn` when a latency measurement is due (at most one per
    /// `LATENCY_REFRESH`); the pong updates the connection's one-way latency.
    pub(crate) fn ping_if_due(&mut self, conn: ConnId) {
        let now = Instant::now();
        let stamp = self.clock_ns();
        if self
            .engine
            .conns_mut()
            .ping_due(conn, now, LATENCY_REFRESH, stamp)
        {
            crate::dispatch::send_host_msg(
                self,
                conn,
                &HostMsg::Ping {
                    stamp: stamp.max(1),
                },
            );
        }
    }

    /// Issues the connect attempts that are due (connects waiting for their peer).
    pub(crate) fn run_retries(&mut self, now: Instant) {
        for (conn, host, key, data, token) in self.retries.due(now) {
            match self.engine.choose_transport(&host, &key) {
                Ok(transport) => {
                    self.engine.conns_mut().set_transport(conn, transport);
                    let s = self.connect_slot(conn, transport, &host, &key, &data, token);
                    self.engine.submit(s);
                }
                Err(refusals) => {
                    if let Some(text) = self.retries.unreachable(conn, &join(&refusals), now) {
                        self.fail_connect(conn, token, Status::Unreachable, text);
                    }
                }
            }
        }
    }

    /// Tells the application, through the ordinary outcome path, that a connect with no
    /// attempt in flight ended.
    fn fail_connect(&mut self, conn: ConnId, token: u64, status: Status, detail: String) {
        let mut s = self.connect_base(conn, token);
        s.set_detail(detail);
        self.engine.finish_now(s, status);
    }

    /// A connect IRB for `conn` carrying the application's `token`.
    fn connect_base(&mut self, conn: ConnId, token: u64) -> Slot {
        let mut s = self.engine.new_slot();
        s.set_op(VMI_OP_CONNECT);
        s.set_conn_raw(conn.raw());
        s.set_purpose(Purpose::Connect);
        s.set_token(token);
        s
    }

    /// An inline send as an IRB (the transport's direct entry did not take it). The copy is
    /// made only once the send is known to go: a refused send (busy, closed, too large) takes
    /// no pooled buffer and copies nothing.
    #[inline(never)]
    fn send_inline_irb(&mut self, conn: ConnId, data: &[u8], mode: Mode) -> Result<(), VmiError> {
        let mut s = self.prepare_send(conn, 0, SendKind::Whole, |engine, s, max| {
            if max > 0 && data.len() as u64 > max {
                return Err(VmiError::FragmentTooLarge {
                    len: data.len() as u64,
                    max,
                });
            }
            let b = engine.inline_buffer(data);
            s.push_buffer(b).map_err(|_| VmiError::TooManyBuffers {
                given: 1,
                max: crate::abi::VMI_IRB_MAX_SEGS,
            })
        })?;
        s.set_purpose(Purpose::SendInline);
        self.issue(s, mode);
        Ok(())
    }

    /// A connect request for `conn` over `transport`.
    pub(crate) fn connect_slot(
        &mut self,
        conn: ConnId,
        transport: DevIndex,
        host: &str,
        key: &str,
        data: &[u8],
        token: u64,
    ) -> Slot {
        let mut s = self.connect_base(conn, token);
        s.set_transport(transport);
        s.set_chain(self.engine.conns().chain(conn));
        s.set_peer(host.to_string(), key.to_string());
        s.attach_copy(data);
        s
    }

    /// `connect`, with its IRB issued in `mode`.
    fn connect_now_or_later(
        &mut self,
        mode: Mode,
        (host, key, data, token): (&str, &str, &[u8], u64),
        how: (Duration, u8),
    ) -> Result<ConnId, VmiError> {
        let (conn, s) = self.connect(host, key, data, token, how)?;
        if let Some(s) = s {
            self.issue(s, mode);
        }
        Ok(conn)
    }

    pub(crate) fn issue(&mut self, s: Slot, mode: Mode) {
        match mode {
            Mode::Now => self.engine.submit(s),
            Mode::Deferred => self.deferred.push_back(s),
        }
    }

    /// An inline send that did not go straight to the transport: a handle standing for
    /// another connection, a bond, or the IRB path.
    #[inline(never)]
    fn send_inline_other(&mut self, conn: ConnId, data: &[u8], mode: Mode) -> Result<(), VmiError> {
        let conn = self.cross.real(conn);
        if self.rails.on() && self.rails.is_bond(conn) {
            let bufs = vec![Buffer::from_vec(data.to_vec())];
            return self.bond_send(conn, bufs, 0, true, true, mode);
        }
        if self.routed
            && (mode == Mode::Now || self.deferred.is_empty())
            && self.send_direct(conn, VMI_FLAG_END, data)
        {
            return Ok(());
        }
        self.send_inline_irb(conn, data, mode)
    }

    /// A send on a bonded connection (see `rails`).
    fn bond_send(
        &mut self,
        conn: ConnId,
        bufs: Vec<Buffer>,
        token: u64,
        end: bool,
        inline: bool,
        mode: Mode,
    ) -> Result<(), VmiError> {
        crate::rails::send(self, conn, bufs, token, end, inline)?;
        if mode == Mode::Now {
            self.run_deferred();
        }
        Ok(())
    }

    /// Runs operations issued from a callback.
    pub(crate) fn run_deferred(&mut self) {
        while let Some(s) = self.deferred.pop_front() {
            self.engine.submit(s);
        }
    }

    /// Checks that a send may go now, takes a send slot, lets `fill` put the data in, and
    /// checks its size. Every refusal undoes the stream change and frees the slot, which also
    /// hands pooled (inline) buffers back.
    pub(crate) fn prepare_send(
        &mut self,
        conn: ConnId,
        token: u64,
        kind: SendKind,
        fill: impl FnOnce(&mut Engine, &mut Slot, u64) -> Result<(), VmiError>,
    ) -> Result<Slot, VmiError> {
        // One borrow of the table for the check and for whether any connection has a timer.
        let (transport, timers) = {
            let mut conns = self.engine.conns_mut();
            let t = conns
                .send_checked(conn, kind)
                .map_err(|r| VmiError::refused(conn, r))?;
            (t, conns.timers() > 0)
        };
        let max = self.engine.top_caps().max_fragment;
        let mut s = match self.engine.new_send_slot() {
            Ok(s) => s,
            Err(limit) => {
                self.engine.conns_mut().send_undone(conn, kind);
                return Err(VmiError::Busy { limit });
            }
        };
        let checked = fill(&mut self.engine, &mut s, max).and_then(|()| {
            let total = s.buffers_len();
            if max > 0 && total > max {
                return Err(VmiError::FragmentTooLarge { len: total, max });
            }
            Ok(())
        });
        if let Err(e) = checked {
            self.engine.free(s);
            self.engine.conns_mut().send_undone(conn, kind);
            return Err(e);
        }
        s.set_op(VMI_OP_SEND);
        s.set_conn_raw(conn.raw());
        s.set_flags(if kind == SendKind::Fragment {
            0
        } else {
            VMI_FLAG_END
        });
        s.set_purpose(Purpose::Send);
        s.set_transport(transport);
        s.set_token(token);
        if self.engine.has_chains() {
            s.set_chain(self.engine.conns().chain(conn));
        }
        if timers && self.engine.conns_mut().timed_send(conn) {
            s.set_timed();
        }
        Ok(s)
    }

    /// Sends a small whole message through the transport's `send_inline` (ABI 1.2) when the
    /// chain and the transport allow it: no IRB, no buffer, no completion. False: send it
    /// as an IRB (nothing was changed).
    #[inline]
    pub(crate) fn send_direct(&mut self, conn: ConnId, flags: u32, data: &[u8]) -> bool {
        self.engine.send_whole_direct(conn, flags, data)
    }

    /// A send of the application's buffers.
    fn prepare_buffers(
        &mut self,
        conn: ConnId,
        buffers: impl IntoIterator<Item = Buffer>,
        token: u64,
        kind: SendKind,
    ) -> Result<Slot, VmiError> {
        self.prepare_send(conn, token, kind, |_, s, _| {
            let mut given = 0;
            let mut refused = false;
            for b in buffers {
                given += 1;
                refused |= !refused && s.push_buffer(b).is_err();
            }
            if refused {
                let max = crate::abi::VMI_IRB_MAX_SEGS;
                return Err(VmiError::TooManyBuffers { given, max });
            }
            Ok(())
        })
    }

    fn connect(
        &mut self,
        host: &str,
        key: &str,
        data: &[u8],
        token: u64,
        (wait, chain): (Duration, u8),
    ) -> Result<(ConnId, Option<Slot>), VmiError> {
        if chain != 0 && self.rails.on() {
            return Err(VmiError::Unsupported {
                what: "named chains",
                on: "a process with rails",
            });
        }
        let caps = self.engine.top_caps();
        let mut max = if caps.max_connect_data > 0 {
            (caps.max_connect_data as usize).min(MAX_CONNECT_DATA)
        } else {
            MAX_CONNECT_DATA
        };
        // Every connect carries a header (see `cross`); a bond's first connection a mark
        // too, so the peer offers its other rails.
        max = max.saturating_sub(crate::cross::HEADER);
        if self.rails.on() {
            max = max.saturating_sub(crate::rails::BOND_MAGIC.len());
        }
        let named = (chain != 0).then(|| self.chains.wrap(chain, data));
        if let Some(n) = &named {
            max = max.saturating_sub(n.len() - data.len());
        }
        if data.len() > max {
            return Err(VmiError::ConnectDataTooLarge {
                len: data.len(),
                max,
            });
        }
        let data = named.as_deref().unwrap_or(data);
        let id = self.cross.new_id();
        let wrapped = if chain != 0 {
            // Not a crossing candidate: a connect on a named chain is never merged with one
            // the peer makes at the same moment (it may be on another chain).
            crate::cross::wrap(crate::cross::NAMED, id, data)
        } else if self.rails.on() {
            crate::cross::wrap(
                crate::cross::PLAIN,
                id,
                &crate::rails::wrap_connect_data(data),
            )
        } else {
            crate::cross::wrap(crate::cross::PLAIN, id, data)
        };
        let data = &wrapped[..];
        assembly::check_key(key)?;
        let transport = match self.engine.choose_transport(host, key) {
            Ok(t) => t,
            Err(refusals) if !wait.is_zero() => {
                // No transport reaches the peer yet: wait for it (the first transport holds
                // the place until one does).
                log::info!(
                    "connect to '{key}' at {host}: {}; waiting up to {:.1} s for the peer (connect wait)",
                    join(&refusals),
                    wait.as_secs_f64()
                );
                let placeholder = self.engine.first_transport();
                let conn = self
                    .engine
                    .conns_mut()
                    .connect_issued(placeholder, host, key);
                self.engine.conns_mut().set_chain(conn, chain);
                self.retries
                    .track(conn, host, key, data, token, (Instant::now(), wait), false);
                if chain == 0 {
                    self.cross.issued(conn, id, token);
                }
                self.refresh();
                return Ok((conn, None));
            }
            Err(refusals) => {
                return Err(VmiError::Unreachable {
                    host: host.into(),
                    key: key.into(),
                    reasons: join(&refusals),
                });
            }
        };
        let conn = self.engine.conns_mut().connect_issued(transport, host, key);
        self.engine.conns_mut().set_chain(conn, chain);
        if chain == 0 {
            self.cross.issued(conn, id, token);
        }
        if !wait.is_zero() {
            self.retries
                .track(conn, host, key, data, token, (Instant::now(), wait), true);
        }
        let s = self.connect_slot(conn, transport, host, key, data, token);
        self.refresh();
        Ok((conn, Some(s)))
    }

    fn disconnect(&mut self, conn: ConnId) -> Result<Option<Slot>, VmiError> {
        if self.rails.on() && self.rails.is_bond(conn) {
            let slots = crate::rails::disconnect(self, conn)?;
            self.deferred.extend(slots);
            return Ok(None);
        }
        if let Some((p, true)) = self.retries.remove(conn) {
            // Waiting for its peer, with no attempt in flight: the connect ends here.
            self.engine.conns_mut().disconnect_issued(conn).ok();
            self.fail_connect(
                conn,
                p.token,
                Status::Cancelled,
                "disconnected while waiting for the peer".into(),
            );
            return Ok(None);
        }
        let transport = self
            .engine
            .conns_mut()
            .disconnect_issued(conn)
            .map_err(|r| VmiError::refused(conn, r))?;
        let mut s = self.engine.new_slot();
        s.set_op(VMI_OP_DISCONNECT);
        s.set_conn_raw(conn.raw());
        s.set_purpose(Purpose::Disconnect);
        s.set_transport(transport);
        s.set_chain(self.engine.conns().chain(conn));
        Ok(Some(s))
    }
}

impl Core {
    /// Multi-rail connections have no aborts or timeouts (their rails close on their own).
    pub(crate) fn no_timers_on_bonds(&self, conn: ConnId) -> Result<(), VmiError> {
        if self.rails.on() && self.rails.is_bond(conn) {
            return Err(VmiError::Unsupported {
                what: "abort and timeouts",
                on: "a multi-rail connection",
            });
        }
        Ok(())
    }

    /// An abort of `conn` ending it as `status` with `detail` (see `timeouts`): the slot to
    /// issue, or none when the connect was still waiting for its peer (it ended here).
    pub(crate) fn abort(
        &mut self,
        conn: ConnId,
        status: Status,
        detail: String,
    ) -> Result<Option<Slot>, VmiError> {
        self.no_timers_on_bonds(conn)?;
        let state = self.engine.conns().state(conn);
        if state == Some(crate::conn::ConnState::Connecting) {
            // Not open yet: a disconnect cancels the connect, which is the whole abort.
            return self.disconnect(conn);
        }
        let transport = self
            .engine
            .conns_mut()
            .abort_issued(conn, status, detail)
            .map_err(|r| VmiError::refused(conn, r))?;
        let mut s = self.engine.new_slot();
        s.set_op(crate::abi::VMI_OP_ABORT);
        s.set_conn_raw(conn.raw());
        s.set_purpose(Purpose::Abort);
        s.set_transport(transport);
        s.set_chain(self.engine.conns().chain(conn));
        s.set_status_code(status.code());
        Ok(Some(s))
    }
}

mod sealed {
    /// Gives the operation surface its engine; implemented by `Vmi` and `Ctx` only.
    pub trait Sealed {
        /// The core and when operations issued through it run.
        fn core(&mut self) -> (&mut super::Core, super::Mode);
        /// The core, to read.
        fn core_ref(&self) -> &super::Core;
        /// The request of the running `request` callback whose bytes are lent, if any.
        fn lent(&self) -> Option<(crate::ReceiveId, &[u8])> {
            None
        }
    }
}

pub(crate) use sealed::Sealed;

/// What an application can ask of vmi, the same from the main loop ([`crate::Vmi`]: runs
/// now) and from a callback ([`crate::Ctx`]: queued, runs when the callback returns, so no
/// device is ever re-entered). Bring it into scope with `use vmi_core::Operations;` (or
/// `vmi_core::prelude::*`).
pub trait Operations: Sealed {
    /// Opens a connection to `key` at `host` with connect data (VMI 2.1:
    /// `VMI_Connection_Create` + `VMI_Connection_Bind` + `VMI_Connection_Issue`). The
    /// transport is chosen now (the first in chain order that can reach the peer); the result
    /// arrives in [`crate::Handler::connected`] with `token`. `host` may be `host:port` to
    /// skip the key-derived port search. With `<route>` rules in the specfile, the first
    /// that matches the peer's key and host runs the connection on its named chain (as
    /// [`Operations::connect_on`]).
    fn connect(
        &mut self,
        host: &str,
        key: &str,
        data: &[u8],
        token: u64,
    ) -> Result<ConnId, VmiError> {
        let wait = self.core_ref().retries.wait();
        self.connect_with(host, key, data, token, wait)
    }

    /// As [`Operations::connect`], waiting up to `wait` for a peer that is not there yet
    /// (no transport reaches it, nobody listens, an attempt timed out) instead of the
    /// process's connect wait ([`crate::Options::connect_wait`]): the connect's own timeout
    /// (Globus XIO's open timeout). Zero fails at once. The outcome comes by about `wait`
    /// plus one attempt's own time (the transport's connect timeout); `disconnect` cancels
    /// it sooner ([`Status::Cancelled`]).
    fn connect_with(
        &mut self,
        host: &str,
        key: &str,
        data: &[u8],
        token: u64,
        wait: Duration,
    ) -> Result<ConnId, VmiError> {
        let (core, mode) = self.core();
        let chain = core.chains.route(key, host);
        core.connect_now_or_later(mode, (host, key, data, token), (wait, chain))
    }

    /// As [`Operations::connect`], over the named chain `chain` (a `<chain name="…">` of
    /// the specfile besides send and receive): the connection's messages pass that chain's
    /// filters both ways (VMI 2.1: filters chosen per connection). The peer must have a
    /// chain of that name with the same filters; else it refuses the connection with the
    /// reason. [`crate::ConnectRequest::chain`] names it on the accepting side.
    fn connect_on(
        &mut self,
        chain: &str,
        host: &str,
        key: &str,
        data: &[u8],
        token: u64,
    ) -> Result<ConnId, VmiError> {
        let (core, mode) = self.core();
        let Some((n, _)) = core.chains.find(chain) else {
            return Err(VmiError::UnknownChain {
                chain: chain.to_string(),
                known: core.chains.list(),
            });
        };
        let wait = core.retries.wait();
        core.connect_now_or_later(mode, (host, key, data, token), (wait, n))
    }

    /// Closes a connection in order (VMI 2.1: `VMI_Connection_Disconnect`); sends already
    /// issued are finished first. [`crate::Handler::disconnected`] reports
    /// [`crate::Disconnect::Local`]. A connect still in progress ends instead, with
    /// [`Status::Cancelled`] in [`crate::Handler::connected`]; the connection never opened,
    /// so no `disconnected` follows.
    fn disconnect(&mut self, conn: ConnId) -> Result<(), VmiError> {
        let (core, mode) = self.core();
        let conn = core.cross.real(conn);
        if let Some(s) = core.disconnect(conn)? {
            core.issue(s, mode);
        }
        if mode == Mode::Now {
            core.run_deferred();
        }
        Ok(())
    }

    /// As [`Operations::disconnect`], giving the orderly close at most `wait` (Globus XIO's
    /// close timeout): if the sends queued before it have not all reached the peer by then
    /// (it does not read), the connection is aborted ([`Operations::abort`]): they complete
    /// with [`Status::Timeout`] and [`crate::Handler::disconnected`] reports a
    /// [`crate::Disconnect::Error`] with [`Status::Timeout`] and the reason.
    fn disconnect_with(&mut self, conn: ConnId, wait: Duration) -> Result<(), VmiError> {
        let wait = crate::timeouts::checked("a disconnect wait", wait)?;
        let (core, _) = self.core();
        let real = core.cross.real(conn);
        core.no_timers_on_bonds(real)?;
        self.disconnect(conn)?;
        let (core, _) = self.core();
        core.engine.conns_mut().close_by(real, wait);
        core.refresh();
        Ok(())
    }

    /// Closes a connection at once (Globus XIO's cancel of everything on a handle; VMI 2.1
    /// had none): every send not yet finished, a partly written one included, completes with
    /// [`Status::Cancelled`], nothing more goes to the peer, and the peer sees the connection
    /// lost (a message cut short is never delivered there as whole).
    /// [`crate::Handler::disconnected`] reports [`crate::Disconnect::Local`]. Also ends an
    /// orderly close in progress, and cancels a connect still in progress (as `disconnect` does: no `disconnected` then). A connection's
    /// sends go in order, so a single waiting send cannot be taken back alone: this is how a
    /// send is cancelled.
    fn abort(&mut self, conn: ConnId) -> Result<(), VmiError> {
        let (core, mode) = self.core();
        let real = core.cross.real(conn);
        let detail = "aborted by this process".to_string();
        if let Some(s) = core.abort(real, Status::Cancelled, detail)? {
            core.issue(s, mode);
        }
        if mode == Mode::Now {
            core.run_deferred();
        }
        Ok(())
    }

    /// Gives `conn` a send timeout, or takes it away with `None` (Globus XIO's write timeout,
    /// TCP's user timeout): when sends are waiting on the connection and none of them has
    /// completed for `timeout`, the peer is taken to be stuck or gone and the connection is
    /// aborted: the waiting sends complete with [`Status::Timeout`], and
    /// [`crate::Handler::disconnected`] reports a [`crate::Disconnect::Error`] with
    /// [`Status::Timeout`] and the reason. [`crate::Options::send_timeout`] sets one for every
    /// connection. Sends that a transport took whole at once (inline sends it wrote
    /// immediately) never wait, so they never time out.
    fn set_send_timeout(
        &mut self,
        conn: ConnId,
        timeout: Option<Duration>,
    ) -> Result<(), VmiError> {
        let timeout = timeout
            .map(|t| crate::timeouts::checked("a send timeout", t))
            .transpose()?;
        let (core, _) = self.core();
        let real = core.cross.real(conn);
        core.no_timers_on_bonds(real)?;
        if !core.engine.conns_mut().set_send_timeout(real, timeout) {
            return Err(VmiError::UnknownConnection(conn));
        }
        core.refresh();
        Ok(())
    }

    /// A live connection's send timeout (see [`Operations::set_send_timeout`]).
    fn send_timeout(&self, conn: ConnId) -> Option<Duration> {
        let core = self.core_ref();
        core.engine.conns().send_timeout(core.cross.real(conn))
    }

    /// The connection's one-way latency, half a measured round trip between the two
    /// engines (VMI 2.1: `VMI_CONNECT_ONE_WAY_LATENCY`): measured when the connection opens
    /// and again, at most every 5 s, when asked (while it is open); `None` until the first
    /// measurement is in, or for a closed connection. Smoothed over samples as TCP smooths
    /// its RTT.
    fn one_way_latency(&mut self, conn: ConnId) -> Option<Duration> {
        let (core, mode) = self.core();
        let conn = core.cross.real(conn);
        core.ping_if_due(conn);
        if mode == Mode::Now {
            core.run_deferred();
        }
        match core.engine.conns().latency_ns(conn) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Sends a one-fragment stream gathered from `buffers` (VMI 2.1: `VMI_Stream_Send`).
    /// The buffers come back in [`crate::Handler::send_complete`] with `token`. A refused send
    /// drops them: check [`Operations::sends_available`] first to keep them when the process
    /// may be at its limit.
    fn send(
        &mut self,
        conn: ConnId,
        buffers: impl IntoIterator<Item = Buffer>,
        token: u64,
    ) -> Result<(), VmiError> {
        let (core, mode) = self.core();
        let conn = core.cross.real(conn);
        if core.rails.on() && core.rails.is_bond(conn) {
            return core.bond_send(
                conn,
                buffers.into_iter().collect(),
                token,
                true,
                false,
                mode,
            );
        }
        let s = core.prepare_buffers(conn, buffers, token, SendKind::Whole)?;
        core.issue(s, mode);
        Ok(())
    }

    /// Sends a small one-fragment stream by copying it; no buffer needed
    /// (VMI 2.1: `VMI_Stream_Send_Inline`). Like VMI's, it has no completion: the
    /// application hears of it only if it fails (`send_complete` with `token` 0 and the
    /// status), so a stream of inline sends costs no callback per message.
    #[inline]
    fn send_inline(&mut self, conn: ConnId, data: &[u8]) -> Result<(), VmiError> {
        let (core, mode) = self.core();
        // Straight to the transport when nothing issued earlier waits to run (from a
        // callback, operations queued before this one must go first).
        if core.routed {
            return core.send_inline_other(conn, data, mode);
        }
        if (mode == Mode::Now || core.deferred.is_empty())
            && core.send_direct(conn, VMI_FLAG_END, data)
        {
            return Ok(());
        }
        core.send_inline_irb(conn, data, mode)
    }

    /// Begins a stream of fragments (VMI 2.1: `VMI_Stream_Begin`).
    fn stream_begin(&mut self, conn: ConnId) -> Result<Stream, VmiError> {
        let (core, _) = self.core();
        let real = core.cross.real(conn);
        if core.rails.on() && core.rails.is_bond(real) {
            return Ok(Stream { conn });
        }
        core.engine
            .conns_mut()
            .stream_begin(real)
            .map_err(|r| VmiError::refused(conn, r))?;
        Ok(Stream { conn })
    }

    /// Sends one fragment of an open stream (VMI 2.1: `VMI_Stream_Send_Fragment`).
    fn stream_send(
        &mut self,
        stream: &Stream,
        buffers: impl IntoIterator<Item = Buffer>,
        token: u64,
    ) -> Result<(), VmiError> {
        let (core, mode) = self.core();
        let conn = core.cross.real(stream.conn);
        if core.rails.on() && core.rails.is_bond(conn) {
            let bufs = buffers.into_iter().collect();
            return core.bond_send(conn, bufs, token, false, false, mode);
        }
        let s = core.prepare_buffers(conn, buffers, token, SendKind::Fragment)?;
        core.issue(s, mode);
        Ok(())
    }

    /// Sends the last fragment (possibly empty) and ends the stream (VMI 2.1:
    /// `VMI_Stream_End`).
    fn stream_end(
        &mut self,
        stream: Stream,
        buffers: impl IntoIterator<Item = Buffer>,
        token: u64,
    ) -> Result<(), VmiError> {
        let (core, mode) = self.core();
        let conn = core.cross.real(stream.conn);
        if core.rails.on() && core.rails.is_bond(conn) {
            let bufs = buffers.into_iter().collect();
            return core.bond_send(conn, bufs, token, true, false, mode);
        }
        let s = core.prepare_buffers(conn, buffers, token, SendKind::End)?;
        core.issue(s, mode);
        Ok(())
    }

    /// How many more sends may be issued before one is refused with
    /// [`VmiError::Busy`] (at most [`crate::MAX_SENDS_IN_FLIGHT`]); when 0, poll or wait until
    /// send completions arrive.
    fn sends_available(&self) -> usize {
        self.core_ref().engine.sends_available()
    }

    /// Attaches the application's value to a connection (VMI 2.1:
    /// `VMI_CONNECT_SET_RECEIVE_CONTEXT`), for example an index into its own table; read it
    /// back with [`Operations::conn_context`] in any callback. Refused for a connection that
    /// is not live.
    fn set_conn_context(&mut self, conn: ConnId, context: u64) -> Result<(), VmiError> {
        let (core, _) = self.core();
        let real = core.cross.real(conn);
        if core.engine.conns_mut().set_context(real, context) {
            Ok(())
        } else {
            Err(VmiError::UnknownConnection(conn))
        }
    }

    /// The application's value of a live connection (0 until set; VMI 2.1:
    /// `VMI_CONNECT_GET_RECEIVE_CONTEXT`).
    fn conn_context(&self, conn: ConnId) -> Option<u64> {
        let core = self.core_ref();
        core.engine.conns().context(core.cross.real(conn))
    }

    /// The peer's key for a live connection.
    fn peer_key(&self, conn: ConnId) -> Option<String> {
        let conn = self.core_ref().cross.real(conn);
        if let Some(k) = self.core_ref().rails.peer_key(conn) {
            return Some(k.to_string());
        }
        self.core_ref()
            .engine
            .conns()
            .peer_key(conn)
            .map(str::to_string)
    }

    /// Allocates a send buffer through the chain, so transports can register or place it
    /// (VMI 2.1: `VMI_Buffer_Allocate`).
    fn buffer_alloc(&mut self, len: usize) -> Buffer {
        self.buffer_register(vec![0; len])
    }

    /// Registers application memory with the transports (VMI 2.1: `VMI_Buffer_Register`).
    fn buffer_register(&mut self, data: Vec<u8>) -> Buffer {
        let (core, _) = self.core();
        let mut b = Buffer::from_vec(data);
        core.engine.register(&mut b);
        b
    }

    /// Undoes the registration and returns the memory (VMI 2.1: `VMI_Buffer_Deregister`).
    fn buffer_free(&mut self, mut buffer: Buffer) -> Vec<u8> {
        let (core, _) = self.core();
        core.engine.deregister(&mut buffer);
        buffer.into_vec()
    }

    /// Sends a request gathered from `parts` (QNX `MsgSendv`, not blocking): the answer
    /// arrives in [`crate::Handler::replied`] with `token` — the server's reply, its error
    /// code, or a failure (timeout, cancel, lost connection). [`crate::Vmi::request_wait`]
    /// blocks instead. A request is one message of at most [`crate::MAX_MESSAGE`] bytes (and
    /// the chain's largest fragment); it cannot be sent while a stream is open on the
    /// connection.
    fn request(
        &mut self,
        conn: ConnId,
        parts: &[&[u8]],
        options: &crate::RequestOptions,
        token: u64,
    ) -> Result<crate::RequestId, VmiError> {
        let (core, mode) = self.core();
        let id = crate::msgpass::request(core, conn, parts, options, token, mode, false)?;
        if mode == Mode::Now {
            core.run_deferred();
        }
        Ok(id)
    }

    /// [`Operations::request`] with the request's bytes given as buffers (QNX `MsgSendv`
    /// with the vector handed over): a request of more than 4 KiB is sent from the buffers
    /// themselves, with no copy (over shared memory the server's side reads them in place),
    /// as [`Operations::send`] sends a stream's; a smaller one is copied, which costs less
    /// than an IRB. At most 15 buffers. They are dropped once the request went (keep an
    /// `Arc` with [`Buffer::shared`] to send the same bytes again).
    fn request_buffers(
        &mut self,
        conn: ConnId,
        buffers: impl IntoIterator<Item = Buffer>,
        options: &crate::RequestOptions,
        token: u64,
    ) -> Result<crate::RequestId, VmiError> {
        let (core, mode) = self.core();
        let given = buffers.into_iter().collect();
        let id = crate::msgpass::request_given(core, conn, given, options, token, mode)?;
        if mode == Mode::Now {
            core.run_deferred();
        }
        Ok(id)
    }

    /// Gives up a waiting request: it ends with [`Status::Cancelled`] in
    /// [`crate::Handler::replied`] at the next poll, and the server is told to forget it.
    /// False when it does not wait (answered already).
    fn request_cancel(&mut self, id: crate::RequestId) -> bool {
        let (core, mode) = self.core();
        let done = crate::msgpass::cancel(core, id, mode);
        if mode == Mode::Now {
            core.run_deferred();
        }
        done
    }

    /// Answers a request with a status value and a reply gathered from `parts` (QNX
    /// `MsgReplyv`), at most the client's `reply_max` bytes with any written ahead by
    /// [`Operations::msg_write`].
    fn reply(
        &mut self,
        id: crate::ReceiveId,
        status: i32,
        parts: &[&[u8]],
    ) -> Result<(), VmiError> {
        let (core, mode) = self.core();
        crate::msgpass::answer(core, id, Ok((status, parts)), mode)?;
        if mode == Mode::Now {
            core.run_deferred();
        }
        Ok(())
    }

    /// [`Operations::reply`] with the reply's bytes given as buffers: more than 4 KiB is
    /// sent from the buffers themselves, with no copy (see [`Operations::request_buffers`]),
    /// unless bytes written ahead with [`Operations::msg_write`] reach past the reply (then
    /// the two are put together in a copy). At most 15 buffers, dropped once the reply went.
    fn reply_buffers(
        &mut self,
        id: crate::ReceiveId,
        status: i32,
        buffers: impl IntoIterator<Item = Buffer>,
    ) -> Result<(), VmiError> {
        let (core, mode) = self.core();
        let given = buffers.into_iter().collect();
        crate::msgpass::answer_given(core, id, status, given, mode)?;
        if mode == Mode::Now {
            core.run_deferred();
        }
        Ok(())
    }

    /// Answers a request with an error code (QNX `MsgError`).
    fn reply_error(&mut self, id: crate::ReceiveId, code: i32) -> Result<(), VmiError> {
        let (core, mode) = self.core();
        crate::msgpass::answer(core, id, Err(code), mode)?;
        if mode == Mode::Now {
            core.run_deferred();
        }
        Ok(())
    }

    /// Reads a held request's bytes from `offset` into `buf` (QNX `MsgRead`); returns how
    /// many were copied (0 past its end).
    fn msg_read(
        &self,
        id: crate::ReceiveId,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<usize, VmiError> {
        crate::msgpass::read(self.core_ref(), self.lent(), id, offset, buf)
    }

    /// Writes reply bytes at `offset` ahead of the reply (QNX `MsgWrite`); the reply then
    /// lands over their start. Returns how many fit in the client's `reply_max`.
    fn msg_write(
        &mut self,
        id: crate::ReceiveId,
        offset: usize,
        data: &[u8],
    ) -> Result<usize, VmiError> {
        let (core, _) = self.core();
        crate::msgpass::write(core, id, offset, data)
    }

    /// Publishes `range` of `region` to the peer on `conn` with a payload of at most
    /// [`crate::rdma::MAX_PUBLISH_PAYLOAD`] bytes (VMI 2.1: `VMI_RDMA_Publish_Buffer`): the
    /// peer's [`crate::Handler::rdma_published`] gets a [`crate::RemoteBuffer`] of
    /// `range.len()` bytes, `ctx` (given back in this side's notifications), `tag` (VMI's
    /// `remoteCtx`) and the payload. vmi keeps a handle to the region until the
    /// peer releases the buffer or the connection closes
    /// ([`crate::Handler::rdma_released`]).
    fn rdma_publish(
        &mut self,
        conn: ConnId,
        region: &crate::Region,
        range: std::ops::Range<usize>,
        ctx: u32,
        tag: u64,
        payload: &[u8],
    ) -> Result<crate::PublishId, VmiError> {
        let (core, mode) = self.core();
        let id = crate::rdma::publish(core, conn, region, range, (ctx, tag), payload, mode)?;
        if mode == Mode::Now {
            core.run_deferred();
        }
        Ok(id)
    }

    /// Withdraws a buffer this process published: the peer's puts and gets on it fail from
    /// now on, and the peer is told ([`crate::Handler::rdma_withdrawn`]); vmi lets go of the
    /// region once the peer confirms ([`crate::Handler::rdma_released`]).
    fn rdma_withdraw(&mut self, id: crate::PublishId) -> Result<(), VmiError> {
        let (core, mode) = self.core();
        crate::rdma::withdraw(core, id, mode)?;
        if mode == Mode::Now {
            core.run_deferred();
        }
        Ok(())
    }

    /// Writes `parts`, one after another, at `offset` of the peer's buffer (VMI 2.1:
    /// `VMI_RDMA_Put` with the op's gather list, `roffset` and `notify`). The bytes are taken
    /// now; [`crate::Handler::rdma_done`] tells with `token` when they landed.
    fn rdma_put(
        &mut self,
        remote: &crate::RemoteBuffer,
        offset: u64,
        parts: &[&[u8]],
        options: &crate::RdmaOptions,
        token: u64,
    ) -> Result<crate::RdmaOpId, VmiError> {
        let (core, mode) = self.core();
        let id = crate::rdma::put(core, remote, offset, parts, options, token, mode)?;
        if mode == Mode::Now {
            core.run_deferred();
        }
        Ok(id)
    }

    /// Reads the peer's buffer from `offset` into `into`, segment after segment (VMI 2.1:
    /// `VMI_RDMA_Get`); [`crate::Handler::rdma_done`] tells with `token` when the bytes are
    /// there. vmi keeps handles to the regions until then.
    fn rdma_get(
        &mut self,
        remote: &crate::RemoteBuffer,
        offset: u64,
        into: &[crate::Segment<'_>],
        options: &crate::RdmaOptions,
        token: u64,
    ) -> Result<crate::RdmaOpId, VmiError> {
        let (core, mode) = self.core();
        let id = crate::rdma::get(core, remote, offset, into, options, token, mode)?;
        if mode == Mode::Now {
            core.run_deferred();
        }
        Ok(id)
    }

    /// Gives up a waiting put or get: it ends with [`Status::Cancelled`] at the next poll and
    /// its answers are ignored (a get's late bytes land nowhere; a put's bytes may still
    /// land). False when it does not wait.
    fn rdma_cancel(&mut self, id: crate::RdmaOpId) -> bool {
        let (core, _) = self.core();
        crate::rdma::cancel(core, id)
    }

    /// Tells the peer this process no longer uses a buffer it published (VMI 2.1:
    /// `VMI_RDMA_Dealloc_Buffer`), so it can free it.
    fn rdma_release(&mut self, remote: &crate::RemoteBuffer) -> Result<(), VmiError> {
        let (core, mode) = self.core();
        crate::rdma::release(core, remote, mode)?;
        if mode == Mode::Now {
            core.run_deferred();
        }
        Ok(())
    }

    /// Sends a pulse: a code and a value with a priority, no reply (QNX `MsgSendPulse`).
    fn pulse(&mut self, conn: ConnId, pulse: crate::Pulse) -> Result<(), VmiError> {
        let (core, mode) = self.core();
        crate::msgpass::pulse(core, conn, pulse, mode)?;
        if mode == Mode::Now {
            core.run_deferred();
        }
        Ok(())
    }
}

/// Transports' refusals as one line: "name: reason; name: reason".
fn join(refusals: &[(String, String)]) -> String {
    refusals
        .iter()
        .map(|(n, r)| format!("{n}: {r}"))
        .collect::<Vec<_>>()
        .join("; ")
}
