//! The application's handle (VMI 2.1: `VMI_Init`, `VMI_Poll`, `VMI_Terminate`). Operations
//! (connect, streams, buffers) are in [`Operations`], shared with [`crate::Ctx`].
//!
//! Progress is explicit: nothing happens unless the application calls [`Vmi::poll`] or
//! [`Vmi::wait`], and every callback of the [`Handler`] runs from inside those calls, never
//! from inside a device.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use crate::assembly::{self, AssemblyError};
use crate::device::Capabilities;
use crate::dispatch::dispatch;
use crate::engine::{DeviceInfo, Engine};
use crate::error::VmiError;
use crate::handler::Handler;
use crate::ops::{Core, Mode, Operations, Sealed};
use crate::spec::Spec;

/// How a process starts (the defaults suit a process that both connects and accepts).
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Whether this process accepts connections. A process that only connects (a client,
    /// `vmisend`) sets it to false: transports then open no listening socket, so no stranger
    /// can connect to it. Transports learn it through their `listen` parameter.
    pub accept: bool,
    /// How long a connect keeps trying a peer that is not there yet (no transport reaches
    /// it, nobody listens, or the attempt timed out) before the application hears that it
    /// failed; zero (the default) fails at once. `VMI_CONNECT_TIMEOUT` (seconds) overrides
    /// it. With a wait, processes may start in any order.
    pub connect_wait: Duration,
    /// The send timeout every connection starts with (see
    /// [`crate::Operations::set_send_timeout`]); none (the default) waits for ever. At most
    /// one day.
    pub send_timeout: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            accept: true,
            connect_wait: Duration::ZERO,
            send_timeout: None,
        }
    }
}

impl Options {
    /// A process that only connects: nothing listens.
    pub fn connect_only() -> Options {
        Options {
            accept: false,
            ..Options::default()
        }
    }

    /// These options with a send timeout on every connection.
    pub fn with_send_timeout(self, timeout: Duration) -> Options {
        Options {
            send_timeout: Some(timeout),
            ..self
        }
    }

    /// These options with connects that keep trying a missing peer for up to `wait`.
    pub fn with_connect_wait(self, wait: Duration) -> Options {
        Options {
            connect_wait: wait,
            ..self
        }
    }
}

/// A vmi process: its chains, devices and connections (VMI 2.1: the state `VMI_Init` creates;
/// dropping it is `VMI_Terminate`). `Send`, not `Sync`: one thread at a time drives it, and
/// it may move to another thread between calls (build instances on one thread, run each on
/// a thread of its own). Other threads reach it only through device completers, grabbed
/// slabs and its waker.
pub struct Vmi {
    core: Core,
    /// Fragments transports handed over with no IRB, for one poll (see `direct`).
    arena: crate::direct::Arena,
    /// The event-loop descriptor, made on first use (see `eventfd`).
    events: Option<crate::eventfd::EventFd>,
    /// `arm` announced a sleep: the next poll ends it.
    armed: bool,
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

    /// As [`Vmi::init`], with [`Options`] (for example a process that only connects and
    /// must not listen).
    pub fn init_with(key: Option<&str>, options: Options) -> Result<Vmi, VmiError> {
        let spec = Spec::from_env().map_err(AssemblyError::from)?;
        let key = match key {
            Some(k) => k.to_string(),
            None => std::env::var("VMI_KEY").unwrap_or_default(),
        };
        Vmi::with_spec_options(spec, &key, options, &|v| std::env::var(v).ok())
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
        Vmi::with_spec_options(spec, key, Options::default(), env)
    }

    /// The most general start: a parsed spec, a key, [`Options`], and parameter overrides
    /// read through `env`.
    pub fn with_spec_options(
        spec: Spec,
        key: &str,
        options: Options,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vmi, VmiError> {
        assembly::check_key(key)?;
        let connect_wait = crate::retry::wait_from_env(env)
            .map_err(|reason| VmiError::Environment {
                var: "VMI_CONNECT_TIMEOUT".into(),
                reason,
            })?
            .unwrap_or(options.connect_wait);
        if let Some(t) = options.send_timeout {
            crate::timeouts::checked("a send timeout", t)?;
        }
        crate::limits::raise_fd_limit();
        let plan = assembly::plan(&spec, env, options.accept)?;
        let types: Vec<(String, crate::loader::DeviceType)> = plan
            .devices
            .iter()
            .map(|p| (p.name.clone(), p.ty.clone()))
            .collect();
        let known = assembly::known_env_vars(&spec, &types);
        for (var, hint) in crate::params::unknown_env_vars(std::env::vars().map(|(k, _)| k), &known)
        {
            let text = match hint {
                Some(h) => {
                    format!("environment variable {var} is not used by vmi; did you mean {h}?")
                }
                None => {
                    format!("environment variable {var} is not used by vmi (see vmi-info --env)")
                }
            };
            warn_always(&text);
        }
        let plan_rails_none = plan.rails.is_none();
        let rails = crate::rails::Rails::new(
            plan.rails.clone(),
            plan.rails
                .iter()
                .flat_map(|r| r.devices.iter().map(|&d| plan.devices[d].name.clone()))
                .collect(),
        );
        let chains: Vec<crate::assembly::PlannedChain> = plan.extra.clone();
        let named = crate::chains::Chains::new(
            chains
                .iter()
                .map(|c| (c.name.clone(), c.signature.clone()))
                .collect(),
        )
        .with_routes(&spec.routes);
        let engine = Engine::start(
            plan.devices,
            (
                plan.send,
                plan.recv,
                chains.iter().map(|c| c.devices.clone()).collect(),
            ),
            key.to_string(),
            plan.signature.encode(),
        )
        .map_err(AssemblyError::from)?;
        log::debug!(
            "vmi started with key '{key}', filter signature {}",
            plan.signature.encode()
        );
        let mut core = Core::new(
            engine,
            connect_wait,
            rails,
            crate::cross::Crossings::new(plan_rails_none, key),
        );
        core.chains = named;
        core.engine
            .conns_mut()
            .set_default_send_timeout(options.send_timeout);
        Ok(Vmi {
            arena: crate::direct::Arena::new(&core.engine),
            core,
            events: None,
            armed: false,
            key: key.to_string(),
            spec,
        })
    }

    /// The rails of a multi-rail connection (a `<rails>` block in the specfile), with what
    /// each carried and its measured bandwidth; `None` for a connection that is not one.
    pub fn rails(&self, conn: crate::ConnId) -> Option<Vec<crate::rails::RailInfo>> {
        self.core.rails.info(conn)
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
        self.core.engine.top_caps()
    }

    /// The running devices.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.core.engine.device_infos()
    }

    fn device_index(&self, device: &str) -> Result<usize, VmiError> {
        self.core
            .engine
            .device_index(device)
            .map_err(|names| VmiError::UnknownDevice(device.to_string(), names))
    }

    /// Reads a runtime attribute of a running device, by instance name (Globus XIO
    /// `globus_xio_handle_cntl`; VMI 2.1 had no equivalent).
    pub fn attr_get(&self, device: &str, name: &str) -> Result<String, VmiError> {
        let i = self.device_index(device)?;
        self.core
            .engine
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
        self.core
            .engine
            .set_attr(i, name, value)
            .map_err(|reason| VmiError::Attribute {
                device: device.into(),
                name: name.into(),
                reason,
            })
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.core.engine.conns().live()
    }

    /// IRBs currently allocated (in flight, pending in devices, or held by the application).
    pub fn irbs_in_use(&self) -> usize {
        self.core.engine.irbs_in_use()
    }

    /// Runs the devices and delivers callbacks without blocking (VMI 2.1: `VMI_Poll`).
    /// Returns the number of events handled.
    #[inline(always)]
    pub fn poll(&mut self, handler: &mut dyn Handler) -> usize {
        // Inlined at the caller: an idle poll is the devices' calls and a few loads; the
        // rest is out of line.
        let n = self.core.engine.poll_released();
        if let Some(poller) = self.core.engine.lone_direct()
            && self.core.engine.outcomes() == 0
            && self.core.background == 0
            && !self.core.after
        {
            // One transport delivers directly (the usual case), no other device is polled,
            // and nothing else waits: its poll runs here (or its lent rings are read), and
            // what it handed over is delivered out of line (`poll_rest` would do the same,
            // through a larger frame).
            let n = n + crate::direct::poll_one(&mut self.core, &mut self.arena, handler, poller);
            self.core.engine.run_queued();
            if self.arena.is_empty() && self.core.engine.outcomes() == 0 {
                return n;
            }
            return n + self.deliver_direct(handler);
        }
        let n = n + self.core.engine.poll_devices();
        if self.core.engine.outcomes() == 0
            && self.core.background == 0
            && self.core.engine.direct_pollers().is_empty()
        {
            return n;
        }
        n + self.poll_rest(handler)
    }

    /// What the one direct transport's poll in [`Vmi::poll`] handed over: the arena's
    /// fragments, then the outcomes, as `poll_rest` delivers them after its direct poll.
    #[inline(never)]
    fn deliver_direct(&mut self, handler: &mut dyn Handler) -> usize {
        crate::direct::deliver(&mut self.core, &mut self.arena, handler);
        let n = dispatch(&mut self.core, handler);
        if self.core.background != 0 {
            self.background(handler);
        }
        if self.core.after {
            self.after_poll(handler);
        }
        n
    }

    /// Delivers what the devices' polls produced, then polls the transports that deliver
    /// straight to the handler (no IRB) and delivers what they hand up as IRBs instead.
    #[inline(never)]
    fn poll_rest(&mut self, handler: &mut dyn Handler) -> usize {
        if self.core.background != 0 && self.core.retries.waiting() > 0 {
            self.core.run_retries(Instant::now());
        }
        let mut n = dispatch(&mut self.core, handler);
        if !self.core.engine.direct_pollers().is_empty() {
            n += crate::direct::poll(&mut self.core, &mut self.arena, handler);
            n += dispatch(&mut self.core, handler);
        }
        if self.core.background != 0 {
            self.background(handler);
        }
        if self.core.after {
            self.after_poll(handler);
        }
        n
    }

    /// Ends a sleep `arm` announced and delivers the requests and pulses this poll queued.
    #[inline(never)]
    fn after_poll(&mut self, handler: &mut dyn Handler) {
        self.core.after = false;
        if self.armed {
            self.armed = false;
            self.core.engine.disarm();
        }
        if self.core.msg.has_queued() {
            crate::msgpass::deliver(&mut self.core, handler, 0);
        }
    }

    /// Work that waits for no device: bonds' chunks and acknowledgements, connects waiting
    /// for a crossing peer.
    #[inline(never)]
    fn background(&mut self, handler: &mut dyn Handler) {
        if !self.core.rails.idle() {
            crate::rails::pump(&mut self.core);
            self.core.run_deferred();
        }
        if !self.core.cross.idle() {
            crate::dispatch::cross_expired(&mut self.core, handler);
        }
        if self.core.msg.waits() > 0 {
            crate::msgpass::background(&mut self.core, handler);
        }
        if self.core.rdma.waits() > 0 {
            crate::rdma::background(&mut self.core, handler);
        }
        if self.core.engine.conns().timers() > 0 {
            let now = Instant::now();
            if self.core.engine.conns().due().is_some_and(|d| now >= d) {
                crate::timeouts::check(&mut self.core, now);
            }
        }
        self.core.refresh();
    }

    /// Sends a request and blocks until its answer (QNX `MsgSendv`): polls, running
    /// `handler`'s callbacks for everything else meanwhile, and sleeps on the devices'
    /// descriptors while nothing happens. Returns the server's reply or error code; a
    /// timeout ([`crate::RequestOptions::timeout`]), a lost connection or a refusal by the
    /// server's vmi is [`VmiError::RequestFailed`].
    pub fn request_wait(
        &mut self,
        handler: &mut dyn Handler,
        conn: crate::ConnId,
        parts: &[&[u8]],
        options: &crate::RequestOptions,
    ) -> Result<crate::Answer, VmiError> {
        let id = crate::msgpass::request(&mut self.core, conn, parts, options, 0, Mode::Now, true)?;
        self.core.run_deferred();
        loop {
            if let Some(answer) = crate::msgpass::take_parked(&mut self.core, id) {
                return answer;
            }
            if self.poll(handler) > 0 {
                continue;
            }
            // Sleep until something happens, waking for the request's deadline.
            let nap =
                crate::msgpass::deadline(&self.core, id).map_or(Duration::from_millis(100), |d| {
                    d.saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(100))
                });
            self.core.engine.sleep(nap);
        }
    }

    /// Adds a named chain at run time (VMI 2.1: "additional chains can be created
    /// dynamically"): `devices` in send order, filters then the send chain's transports,
    /// all of them devices this process runs already (named in its specfile's chains).
    /// Connections opened on it with `connect_on` pass its filters both ways; a peer must
    /// have a chain of the same name and filters (from its specfile or added the same way).
    pub fn add_chain(&mut self, name: &str, devices: &[&str]) -> Result<(), VmiError> {
        let bad = |reason: String| VmiError::Chain {
            chain: name.to_string(),
            reason,
        };
        if name.is_empty() || name.len() > 64 || ["send", "receive"].contains(&name) {
            return Err(bad(
                "a chain name has 1 to 64 bytes and is not send or receive".into(),
            ));
        }
        if self.core.chains.find(name).is_some() {
            return Err(bad("a chain of that name exists already".into()));
        }
        if self.core.chains.len() >= crate::assembly::MAX_NAMED_CHAINS {
            return Err(bad(format!(
                "the process has {} named chains, the most there may be",
                crate::assembly::MAX_NAMED_CHAINS
            )));
        }
        if self.core.rails.on() {
            return Err(VmiError::Unsupported {
                what: "named chains",
                on: "a process with rails",
            });
        }
        let mut list = Vec::with_capacity(devices.len());
        let mut seen_transport = false;
        for &d in devices {
            let Some((index, transport)) = self.core.engine.device_named(d) else {
                return Err(bad(format!(
                    "device '{d}' does not run in this process (a chain of the specfile must use it)"
                )));
            };
            if list.contains(&index) {
                return Err(bad(format!("device '{d}' is listed twice")));
            }
            if seen_transport && !transport {
                return Err(bad(format!(
                    "filter '{d}' comes after a transport; a chain runs from the application to the wire"
                )));
            }
            seen_transport |= transport;
            list.push(index);
        }
        let mut mine: Vec<_> = list
            .iter()
            .copied()
            .filter(|&d| self.core.engine.is_transport(d))
            .collect();
        let mut send: Vec<_> = self.core.engine.send_transports().to_vec();
        mine.sort_unstable();
        send.sort_unstable();
        if mine != send {
            return Err(bad(
                "a named chain uses the same transports as the send chain".into(),
            ));
        }
        let signature = self.core.engine.signature_of(&list);
        self.core.engine.add_chain(list);
        self.core.chains.push(name, signature);
        Ok(())
    }

    /// A handle that wakes this process's `wait` (or makes its event descriptor readable)
    /// from any thread, for work the application hands back to its polling thread (see
    /// [`crate::msgpass::RequestPool`]).
    pub fn waker(&self) -> VmiWaker {
        VmiWaker(self.core.engine.waker())
    }

    /// How `conn` moves RDMA puts and gets: one-sided (straight into the peer's memory, where
    /// the transport can and no filter must see the bytes) or as messages; decided per
    /// connection at its first put or get (logged then).
    pub fn rdma_path(&self, conn: crate::ConnId) -> crate::rdma::RdmaPath {
        crate::rdma::path(&self.core, conn)
    }

    /// The RDMA puts and gets this process issued that have not ended.
    pub fn rdma_waiting(&self) -> usize {
        self.core.rdma.waiting()
    }

    /// The buffers this process published that vmi still holds (not released by the peer,
    /// connection open).
    pub fn rdma_published(&self) -> usize {
        self.core.rdma.published()
    }

    /// One file descriptor for the application's own event loop (epoll, mio, tokio's
    /// `AsyncFd`; UCX: `ucp_worker_get_efd`, libfabric: `FI_GETWAIT`). It watches the
    /// devices' wait descriptors and the doorbell of other threads. Use it with
    /// [`Vmi::arm`]: poll until `arm` says [`crate::Arm::Sleep`], wait for the descriptor to
    /// be readable (at most the timeout given), poll again. Level-triggered; stays valid
    /// while the `Vmi` lives.
    pub fn event_fd(&mut self) -> Result<std::os::fd::BorrowedFd<'_>, VmiError> {
        if self.events.is_none() {
            let e = crate::eventfd::EventFd::new(self.core.engine.waker_fd()).map_err(|e| {
                VmiError::Environment {
                    var: "(epoll)".into(),
                    reason: format!("cannot create the event-loop descriptor: {e}; raise the process's descriptor limit (ulimit -n)"),
                }
            })?;
            self.events = Some(e);
        }
        Ok(self.events.as_ref().expect("made above").fd())
    }

    /// Prepares to sleep on [`Vmi::event_fd`] (UCX: `ucp_worker_arm`): tells the devices
    /// and peers to ring it when work comes, then looks for work once more. Returns
    /// [`crate::Arm::Busy`] when `poll` has work now (do not sleep), else how long the
    /// application may sleep at most. Every poll ends the announced sleep, so arm again
    /// before each sleep.
    pub fn arm(&mut self) -> Result<crate::Arm, VmiError> {
        self.event_fd()?;
        let core = &mut self.core;
        let events = self.events.as_mut().expect("made above");
        let mut failed = None;
        let (pending, due) = core.engine.arm_devices(|fd| {
            if let Err(e) = events.watch(fd) {
                failed = Some(e);
            }
        });
        self.armed = true;
        core.after = true;
        if let Some(e) = failed {
            return Err(VmiError::Environment {
                var: "(epoll)".into(),
                reason: format!("cannot watch a device's descriptor: {e}"),
            });
        }
        let busy = pending
            || core.engine.outcomes() > 0
            || core.msg.has_queued()
            || core.rails.busy() > 0
            || core.cross.waits() > 0
            || due == Some(Duration::ZERO);
        if busy {
            self.armed = false;
            core.engine.disarm();
            return Ok(crate::Arm::Busy);
        }
        let now = Instant::now();
        let timers = [
            core.retries.next_due(),
            crate::msgpass::next_deadline(core),
            crate::rdma::next_deadline(core),
            crate::timeouts::next_deadline(core),
        ];
        let mut timeout = due;
        for t in timers.into_iter().flatten() {
            let left = t.saturating_duration_since(now);
            timeout = Some(timeout.map_or(left, |d| d.min(left)));
        }
        Ok(crate::Arm::Sleep { timeout })
    }

    /// Like `poll`, but sleeps on the devices' descriptors until something happens or
    /// `timeout` passes; an idle process uses no CPU. Returns the number of events handled
    /// (0 on timeout, or when the application's [`VmiWaker`] rang: its own work is ready).
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
            // Wake for the next connect attempt, and for requests' and RDMA ops' deadlines.
            let until = [
                self.core.retries.next_due(),
                crate::msgpass::next_deadline(&self.core),
                crate::rdma::next_deadline(&mut self.core),
                crate::timeouts::next_deadline(&self.core),
            ]
            .into_iter()
            .flatten()
            .fold(deadline, Instant::min);
            if self.core.engine.sleep(until.saturating_duration_since(now)) {
                return 0;
            }
        }
    }
}

/// Wakes a [`Vmi`]'s `wait` (and makes its event descriptor readable) from any thread.
#[derive(Clone)]
pub struct VmiWaker(std::sync::Arc<crate::waker::Waker>);

impl VmiWaker {
    /// Rings the `Vmi`'s doorbell (one `write` system call): a `wait` in progress returns,
    /// and the next one returns at once, so work handed back just before the polling
    /// thread went to sleep is not missed.
    pub fn wake(&self) {
        self.0.ring();
    }
}

/// A warning the user must see: through the application's logger when it shows warnings,
/// else on stderr (a mistyped variable must not go unnoticed because no logger is set up).
fn warn_always(text: &str) {
    if log::log_enabled!(log::Level::Warn) {
        log::warn!("{text}");
    } else {
        eprintln!("vmi: warning: {text}");
    }
}

impl Sealed for Vmi {
    fn core(&mut self) -> (&mut Core, Mode) {
        (&mut self.core, Mode::Now)
    }

    fn core_ref(&self) -> &Core {
        &self.core
    }
}

impl Operations for Vmi {}

// A `Vmi` moves between threads (one `Vmi` per thread, each made where convenient and sent to
// its thread); the compiler proves every part of it may move except the device-facing raw
// pointers, whose `unsafe impl Send` say why they may.
const _: () = {
    const fn moves<T: Send>() {}
    moves::<Vmi>();
};
