//! The measurement engine behind `vmi-perf`: a server that echoes ping messages and
//! acknowledges streams, a client that measures half-round-trip latency and streaming
//! bandwidth over a sweep of sizes, and a raw-socket floor measured the same way.
//!
//! Protocol over vmi: the first byte of each message says what the server does with it:
//! `P` echo it (same size and fragment count), `S` count it, `F` count it and answer `A`.

use crate::quiet_println as println;
use std::io::{ErrorKind, IsTerminal, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmi_core::Operations;

use serde::Serialize;
use std::collections::HashMap;
use vmi_core::sdk::ConnMap;
use vmi_core::{
    Buffer, ConnId, ConnectOutcome, Ctx, Handler, Recv, Reply, Request, RequestOptions,
    SendCompletion, Slab, Status, Vmi,
};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Test {
    /// Ping-pong half round trip.
    Latency,
    /// One-way streaming.
    Bandwidth,
    /// Both.
    Both,
    /// Send/receive/reply round trip (QNX-style request and reply of the size), reported
    /// as the latency's half round trip, like the ping-pong.
    Request,
}

/// How the bytes move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Messages (streams, or requests with `--test request`).
    #[default]
    Stream,
    /// RDMA puts into a buffer the server published (like ucx_perftest's ucp_put_lat and
    /// ucp_put_bw): latency is from issue to completion (one-sided: the write is done; as
    /// messages: the target's answer arrived).
    Put,
    /// RDMA gets from a buffer the server published (like ucp_get): latency is from issue to
    /// completion.
    Get,
}

/// Sweep settings.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// How the bytes move.
    pub op: Op,
    /// Message sizes in bytes (each at least 1).
    pub sizes: Vec<usize>,
    /// Fragments per message.
    pub fragments: usize,
    /// What to measure.
    pub test: Test,
    /// Ping-pong iterations (None: by size).
    pub iters: Option<u64>,
    /// Streamed messages (None: by size).
    pub messages: Option<u64>,
    /// Messages in flight while streaming.
    pub window: usize,
    /// Divide the default counts by 20.
    pub quick: bool,
    /// Print a progress line on a terminal.
    pub progress: bool,
    /// Ping-pong iterations before the measured ones (None: a tenth of them).
    pub warmup: Option<u64>,
}

impl Sweep {
    /// Ping-pong iterations for `size`: given, or by size (100,000 up to 4 KiB: some 15 ms
    /// over shared memory, long enough that a timer tick or a migration moves the mean little).
    pub fn iters_for(&self, size: usize) -> u64 {
        self.iters.unwrap_or_else(|| {
            let n: u64 = match size {
                s if s <= 4096 => 100_000,
                s if s <= 65536 => 2_000,
                _ => 200,
            };
            if self.quick { (n / 20).max(10) } else { n }
        })
    }

    /// Streamed messages for `size`: given, or about 256 MiB (1,000 to 100,000 messages).
    pub fn messages_for(&self, size: usize) -> u64 {
        self.messages.unwrap_or_else(|| {
            let n = ((256u64 << 20) / size as u64).clamp(1_000, 100_000);
            if self.quick { (n / 20).max(20) } else { n }
        })
    }
}

/// Latency statistics, microseconds of half round trip.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub median_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Minimum.
    pub min_us: f64,
    /// Maximum.
    pub max_us: f64,
    /// Samples.
    pub samples: u64,
}

impl Latency {
    fn from_samples(mut half_rtts_ns: Vec<u64>) -> Latency {
        half_rtts_ns.sort_unstable();
        let n = half_rtts_ns.len().max(1);
        let at = |q: f64| half_rtts_ns[((n as f64 * q) as usize).min(n - 1)] as f64 / 1e3;
        Latency {
            mean_us: half_rtts_ns.iter().sum::<u64>() as f64 / n as f64 / 1e3,
            median_us: at(0.5),
            p99_us: at(0.99),
            min_us: half_rtts_ns.first().copied().unwrap_or(0) as f64 / 1e3,
            max_us: half_rtts_ns.last().copied().unwrap_or(0) as f64 / 1e3,
            samples: half_rtts_ns.len() as u64,
        }
    }
}

/// Streaming results.
#[derive(Clone, Debug, Serialize)]
pub struct Bandwidth {
    /// Megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Messages per second.
    pub msg_per_s: f64,
    /// Messages streamed.
    pub messages: u64,
}

/// One size's results.
#[derive(Clone, Debug, Serialize)]
pub struct SizeResult {
    /// Message size in bytes.
    pub size: usize,
    /// Fragments per message.
    pub fragments: usize,
    /// Ping-pong results.
    pub latency: Option<Latency>,
    /// Streaming results.
    pub bandwidth: Option<Bandwidth>,
}

/// Everything that went into a run, so a result can be reproduced and compared.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Inputs {
    /// vmi-perf's version.
    pub version: String,
    /// How the bytes moved.
    pub op: Op,
    /// Host name.
    pub host: String,
    /// Start of the run, seconds since 1970 (UTC).
    pub started_unix_s: u64,
    /// Fragments per message.
    pub fragments: usize,
    /// Streaming window (messages in flight).
    pub window: usize,
    /// Ping-pong warm-up iterations (None: a tenth of the measured ones).
    pub warmup: Option<u64>,
    /// Ping-pong iterations asked for (None: by size).
    pub iters: Option<u64>,
    /// Streamed messages asked for (None: by size).
    pub messages: Option<u64>,
    /// The CPU the measuring thread was pinned to, if any.
    pub cpu: Option<usize>,
    /// Short run.
    pub quick: bool,
}

impl Inputs {
    /// The inputs of `sweep`, pinned to `cpu`.
    pub fn of(sweep: &Sweep, cpu: Option<usize>) -> Inputs {
        Inputs {
            version: env!("CARGO_PKG_VERSION").into(),
            op: sweep.op,
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            fragments: sweep.fragments,
            window: sweep.window,
            warmup: sweep.warmup,
            iters: sweep.iters,
            messages: sweep.messages,
            cpu,
            quick: sweep.quick,
        }
    }
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What was measured ("vmi" or "raw-tcp").
    pub tool: String,
    /// Specfile, for vmi.
    pub spec: Option<String>,
    /// What went into the run.
    pub inputs: Inputs,
    /// Results by size.
    pub results: Vec<SizeResult>,
}

impl Report {
    /// The results as CSV, one line per size, with a header line.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "tool,spec,size,fragments,mean_us,median_us,p99_us,min_us,max_us,samples,mb_per_s,msg_per_s,messages\n",
        );
        let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.3}"));
        for r in &self.results {
            let l = r.latency.as_ref();
            let b = r.bandwidth.as_ref();
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                self.tool,
                self.spec.as_deref().unwrap_or(""),
                r.size,
                r.fragments,
                f(l.map(|l| l.mean_us)),
                f(l.map(|l| l.median_us)),
                f(l.map(|l| l.p99_us)),
                f(l.map(|l| l.min_us)),
                f(l.map(|l| l.max_us)),
                l.map_or(String::new(), |l| l.samples.to_string()),
                f(b.map(|b| b.mb_per_s)),
                f(b.map(|b| b.msg_per_s)),
                b.map_or(String::new(), |b| b.messages.to_string()),
            ));
        }
        out
    }

    /// Prints the table.
    pub fn print(&self) {
        let what = match &self.spec {
            Some(s) => format!("{} over {s}", self.tool),
            None => self.tool.clone(),
        };
        let frags = self.results.first().map_or(1, |r| r.fragments);
        let latency = match self.inputs.op {
            Op::Stream => "latency is half a round trip",
            Op::Put => "RDMA puts; latency is from issue to completion (the bytes landed)",
            Op::Get => "RDMA gets; latency is from issue to completion (the bytes arrived)",
        };
        println!("vmi-perf: {what}, {frags} fragment(s) per message; {latency}");
        println!(
            "{:>9} {:>10} {:>10} {:>11} {:>10} {:>10} {:>11} {:>11}",
            "size", "min (us)", "mean (us)", "median (us)", "p99 (us)", "max (us)", "MB/s", "msg/s"
        );
        for r in &self.results {
            let lat = |f: fn(&Latency) -> f64| {
                r.latency
                    .as_ref()
                    .map_or("-".to_string(), |l| format!("{:.2}", f(l)))
            };
            let (mbs, rate) = r.bandwidth.as_ref().map_or(("-".into(), "-".into()), |b| {
                (format!("{:.1}", b.mb_per_s), format!("{:.0}", b.msg_per_s))
            });
            println!(
                "{:>9} {:>10} {:>10} {:>11} {:>10} {:>10} {mbs:>11} {rate:>11}",
                size_name(r.size),
                lat(|l| l.min_us),
                lat(|l| l.mean_us),
                lat(|l| l.median_us),
                lat(|l| l.p99_us),
                lat(|l| l.max_us),
            );
        }
    }
}

/// Human-readable size.
pub fn size_name(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// Parses `8,4k,64k,1m`.
pub fn parse_sizes(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|p| {
            let n = vmi_core::params::parse_uint(p.trim())
                .ok_or_else(|| format!("'{p}' is not a size (8, 4k, 1m)"))?;
            if n == 0 || n > 1 << 30 {
                return Err(format!("size {p} must be between 1 byte and 1 GiB"));
            }
            Ok(n as usize)
        })
        .collect()
}

struct Progress {
    on: bool,
    last: Instant,
}

impl Progress {
    fn new(on: bool) -> Progress {
        Progress {
            on: on && std::io::stderr().is_terminal(),
            last: Instant::now(),
        }
    }

    fn tick(&mut self, what: &str, done: u64, total: u64) {
        if self.on && done.is_multiple_of(256) && self.last.elapsed() > Duration::from_millis(250) {
            self.last = Instant::now();
            eprint!("\rvmi-perf: {what} {done}/{total}      ");
        }
    }

    fn clear(&self) {
        if self.on {
            eprint!("\r{:60}\r", "");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Server

/// Echoes `P` messages, counts `S`, answers `F` with `A`.
#[derive(Default)]
pub struct Server {
    /// Per connection: the message's kind, fragments and bytes so far (no hashing per
    /// message: the handle's dense index finds it).
    streams: ConnMap<(u8, usize, usize)>,
    /// The bytes of echoes, shared by every echo of a length (a few lengths per run: a short
    /// scan, no hashing).
    shared: Vec<(usize, u8, Arc<[u8]>)>,
    /// The bytes of a small echo, sent inline.
    echo: Vec<u8>,
    /// Connections accepted so far.
    pub accepted: u64,
    /// Connections still open.
    pub open: u64,
    /// Regions published for RDMA runs, by connection (one per size asked for).
    regions: HashMap<u64, Vec<vmi_core::Region>>,
}

impl Handler for Server {
    fn accept(
        &mut self,
        _ctx: &mut Ctx<'_>,
        req: &mut vmi_core::ConnectRequest<'_>,
    ) -> vmi_core::Decision {
        let data = req.data.read_to_vec();
        if data != b"vmi-perf 1" {
            return vmi_core::Decision::Reject(b"not a vmi-perf 1 client".to_vec());
        }
        self.accepted += 1;
        self.open += 1;
        vmi_core::Decision::Accept(Vec::new())
    }

    fn receive(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        let starts = self.streams.get(&conn.raw()).is_none_or(|e| e.1 == 0);
        if cmd == Recv::End && starts && slab.len() == RDMA_ASK_LEN {
            let at = slab.save();
            if slab.read(1) == b"R" {
                // An RDMA run asks for a buffer of a size: publish one to it.
                let mut size = [0u8; 8];
                slab.copy_to(&mut size);
                self.publish(ctx, conn, u64::from_le_bytes(size) as usize);
                return;
            }
            slab.restore(at);
        }
        if !self.streams.contains_key(&conn.raw()) {
            self.streams.insert(conn.raw(), (0, 0, 0));
        }
        let Some(entry) = self.streams.get_mut(&conn.raw()) else {
            return;
        };
        if entry.1 == 0 {
            entry.0 = slab.read(1).first().copied().unwrap_or(b'S');
        }
        entry.1 += 1;
        entry.2 += slab.len();
        if cmd != Recv::End {
            return;
        }
        let (kind, frags, bytes) = std::mem::take(entry);
        match kind {
            b'P' if frags == 1 && bytes <= INLINE_MAX => {
                // A small message is echoed as the client sent it: inline, no completion.
                self.echo.resize(bytes, b'p');
                let _ = ctx.send_inline(conn, &self.echo);
            }
            b'P' => {
                let stream = ctx.stream_begin(conn);
                let Ok(stream) = stream else { return };
                let sizes = split(bytes, frags);
                let last = sizes.len() - 1;
                for (i, len) in sizes.into_iter().enumerate() {
                    let buf = Buffer::shared(shared_bytes(&mut self.shared, len, 0));
                    if i == last {
                        let _ = ctx.stream_end(stream, [buf], len as u64);
                        break;
                    }
                    let _ = ctx.stream_send(&stream, [buf], len as u64);
                }
            }
            b'F' => {
                let _ = ctx.send_inline(conn, b"A");
            }
            _ => {}
        }
    }

    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, done: &mut SendCompletion<'_>) {
        // The echo's bytes are shared: what comes back is only a reference to drop.
        drop(done.take_buffers());
    }

    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, _reason: vmi_core::Disconnect) {
        self.streams.remove(&conn.raw());
        self.regions.remove(&conn.raw());
        self.open = self.open.saturating_sub(1);
    }

    fn request(&mut self, ctx: &mut Ctx<'_>, request: &mut Request<'_>) {
        // A reply of the request's size, sent as the ping-pong's echo is: copied up to
        // INLINE_MAX, from a shared buffer above it.
        let len = request.data.len().min(request.reply_max);
        if len <= INLINE_MAX {
            self.echo.resize(len, b'r');
            let _ = ctx.reply(request.id, 0, &[&self.echo]);
        } else {
            let buf = Buffer::shared(shared_bytes(&mut self.shared, len, b'r'));
            let _ = ctx.reply_buffers(request.id, 0, [buf]);
        }
    }
}

impl Server {
    /// Publishes a fresh region of `size` bytes to the client on `conn` (an RDMA run's ask).
    fn publish(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, size: usize) {
        match vmi_core::Region::new(size) {
            Ok(region) => {
                if let Err(e) = ctx.rdma_publish(conn, &region, 0..size, 0, 0, b"vmi-perf") {
                    log::warn!("{conn}: cannot publish {size} bytes: {e}");
                }
                self.regions.entry(conn.raw()).or_default().push(region);
            }
            Err(e) => log::warn!("{conn}: cannot make a region of {size} bytes: {e}"),
        }
    }
}

/// The bytes of `len` starting with `first` (a fixed pattern after it), made once and shared
/// by every send of them (a few lengths per run: a short scan). Written, not zeroed: a large
/// zeroed allocation is the kernel's shared zero page until written, which every copy out of
/// it would read from one cached page, as no application's data is.
fn shared_bytes(cache: &mut Vec<(usize, u8, Arc<[u8]>)>, len: usize, first: u8) -> Arc<[u8]> {
    if let Some((_, _, a)) = cache.iter().find(|(l, f, _)| *l == len && *f == first) {
        return a.clone();
    }
    let mut v = vec![0x5au8; len];
    if let Some(b) = v.first_mut() {
        *b = first;
    }
    let a: Arc<[u8]> = Arc::from(v);
    cache.push((len, first, a.clone()));
    a
}

/// The length of an RDMA run's request for a buffer: `R` and the size (u64, little-endian).
const RDMA_ASK_LEN: usize = 9;

/// Messages of one fragment up to this size go as inline sends (copied, no completion), both
/// ways; larger ones as streams of buffers.
pub const INLINE_MAX: usize = 4096;

fn split(total: usize, frags: usize) -> Vec<usize> {
    let frags = frags.max(1);
    (0..frags)
        .map(|i| total / frags + usize::from(i < total % frags))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Client

#[derive(Default)]
struct Client {
    conn: Option<ConnId>,
    failed: Option<String>,
    ends: u64,
    /// The bytes of messages by length and first byte (see `shared_bytes`).
    shared: Vec<(usize, u8, Arc<[u8]>)>,
    in_flight: usize,
    /// The bytes of a small message, sent inline.
    small: Vec<u8>,
    /// Replies to requests received.
    replies: u64,
    /// The buffer the server published for the running RDMA size.
    remote: Option<vmi_core::RemoteBuffer>,
    /// RDMA ops ended.
    rdma_done: u64,
    /// Every callback that means progress (the poll loop's deadline watches it).
    events: u64,
    /// The connection ended (any reason).
    closed: bool,
}

impl Handler for Client {
    fn connected(
        &mut self,
        _ctx: &mut Ctx<'_>,
        conn: ConnId,
        outcome: ConnectOutcome<'_>,
        _t: u64,
    ) {
        match outcome {
            ConnectOutcome::Accepted(_) => self.conn = Some(conn),
            ConnectOutcome::Rejected(mut r) => {
                self.failed = Some(format!(
                    "server rejected: {}",
                    String::from_utf8_lossy(&r.read_to_vec())
                ))
            }
            ConnectOutcome::Failed { status, detail } => {
                self.failed = Some(format!("{status}: {detail}"))
            }
        }
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, cmd: Recv, _slab: &mut Slab<'_>) {
        self.events += 1;
        if cmd == Recv::End {
            self.ends += 1;
        }
    }
    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, done: &mut SendCompletion<'_>) {
        self.events += 1;
        if !done.status.is_ok() {
            self.failed
                .get_or_insert(format!("send failed: {}: {}", done.status, done.detail));
        }
        if done.token == 1 {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        drop(done.take_buffers());
    }
    fn replied(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _token: u64, reply: Reply<'_>) {
        self.events += 1;
        match reply {
            Reply::Data { .. } => self.replies += 1,
            Reply::Error { code } => {
                self.failed
                    .get_or_insert(format!("the server answered with error {code}"));
            }
            Reply::Failed { status, detail } => {
                self.failed
                    .get_or_insert(format!("request failed: {status}: {detail}"));
            }
        }
    }
    fn rdma_published(
        &mut self,
        _ctx: &mut Ctx<'_>,
        _conn: ConnId,
        remote: vmi_core::RemoteBuffer,
        _payload: &mut Slab<'_>,
    ) {
        self.events += 1;
        self.remote = Some(remote);
    }
    fn rdma_done(&mut self, _ctx: &mut Ctx<'_>, _c: ConnId, _t: u64, status: Status, detail: &str) {
        if status != Status::Ok {
            self.failed
                .get_or_insert(format!("RDMA op failed: {status}: {detail}"));
        }
        self.rdma_done += 1;
        self.events += 1;
        self.in_flight = self.in_flight.saturating_sub(1);
    }
    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, reason: vmi_core::Disconnect) {
        self.closed = true;
        if reason != vmi_core::Disconnect::Local {
            self.failed
                .get_or_insert(format!("connection lost: {reason:?}"));
        }
    }
}

/// Times consecutive round trips with one read of the TSC each (`quanta`, calibrated against
/// the monotonic clock; about 11 ns here against 30 for `clock_gettime`), as `ucx_perftest`
/// reads its `ucs_get_time`: each read ends one round trip and starts the next.
struct Laps {
    clock: quanta::Clock,
    last: u64,
}

impl Laps {
    /// Starts the first lap now.
    fn new(clock: &quanta::Clock) -> Laps {
        Laps {
            clock: clock.clone(),
            last: clock.raw(),
        }
    }

    /// Nanoseconds since the last lap ended (or the start); the next lap starts now.
    #[inline]
    fn lap(&mut self) -> u64 {
        let now = self.clock.raw();
        let ns = self.clock.delta_as_nanos(self.last, now);
        self.last = now;
        ns
    }
}

/// A connected measuring client.
pub struct PerfClient {
    vmi: Vmi,
    h: Client,
    deadline: Duration,
    polls: u32,
    /// `h.events` at the last look at the clock, and when that look was.
    progress: (u64, Instant),
    /// The samples' clock (the TSC, calibrated).
    clock: quanta::Clock,
}

impl PerfClient {
    /// Connects to `server_key` at `host`.
    pub fn connect(
        mut vmi: Vmi,
        host: &str,
        server_key: &str,
        timeout: Duration,
    ) -> Result<PerfClient, String> {
        let mut h = Client::default();
        vmi.connect(host, server_key, b"vmi-perf 1", 0)
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        while h.conn.is_none() {
            vmi.poll(&mut h);
            if let Some(e) = h.failed.take() {
                return Err(e);
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "no answer from '{server_key}' at {host} within {timeout:?}"
                ));
            }
        }
        Ok(PerfClient {
            vmi,
            h,
            deadline: timeout,
            polls: 0,
            progress: (0, Instant::now()),
            clock: quanta::Clock::new(),
        })
    }

    /// One poll. Fails when no callback came for `deadline`: the clock is read once in 1,024
    /// polls (reading it at every poll would cost as much as the poll itself), and not once
    /// per message.
    fn poll(&mut self) -> Result<(), String> {
        self.vmi.poll(&mut self.h);
        if let Some(e) = self.h.failed.take() {
            return Err(e);
        }
        self.polls = self.polls.wrapping_add(1);
        if self.polls.is_multiple_of(1024) {
            let now = Instant::now();
            if self.h.events != self.progress.0 {
                self.progress = (self.h.events, now);
            } else if now.duration_since(self.progress.1) > self.deadline {
                return Err(format!("no progress within {:?}", self.deadline));
            }
        }
        Ok(())
    }

    /// Starts a measurement: the deadline counts from now.
    fn begin(&mut self) {
        self.progress = (self.h.events, Instant::now());
    }

    /// Sends one message; returns whether a completion will come for it (not for an inline
    /// send).
    fn send_message(
        &mut self,
        kind: u8,
        size: usize,
        frags: usize,
        token: u64,
    ) -> Result<bool, String> {
        let conn = self.h.conn.expect("connected");
        if frags == 1 && size <= INLINE_MAX {
            // A small message goes as VMI's inline send (`VMI_Stream_Send_Inline`): copied,
            // with no buffer and no completion, as ucx_perftest's short and bcopy sends.
            while self.vmi.sends_available() == 0 {
                self.poll()?;
            }
            self.h.small.resize(size, 0);
            if size > 0 {
                self.h.small[0] = kind;
            }
            self.vmi
                .send_inline(conn, &self.h.small)
                .map_err(|e| e.to_string())?;
            return Ok(false);
        }
        let stream = self.vmi.stream_begin(conn).map_err(|e| e.to_string())?;
        let sizes = split(size, frags);
        let last = sizes.len() - 1;
        for (i, len) in sizes.into_iter().enumerate() {
            // A process has a bounded number of sends in flight: wait for room.
            while self.vmi.sends_available() == 0 {
                self.poll()?;
            }
            // Every message of a size sends the same bytes, as ucx_perftest does: many sends
            // of one shared buffer in flight, not a window of distinct buffers cycling
            // through the cache.
            let first = if i == 0 { kind } else { 0 };
            let buf = Buffer::shared(shared_bytes(&mut self.h.shared, len, first));
            if i == last {
                return self
                    .vmi
                    .stream_end(stream, [buf], token)
                    .map(|()| true)
                    .map_err(|e| e.to_string());
            }
            self.vmi
                .stream_send(&stream, [buf], 0)
                .map_err(|e| e.to_string())?;
        }
        unreachable!("split returns at least one fragment")
    }

    fn latency(
        &mut self,
        warmup: Option<u64>,
        size: usize,
        frags: usize,
        iters: u64,
        progress: &mut Progress,
    ) -> Result<Latency, String> {
        let warmup = warmup.unwrap_or((iters / 10).max(1));
        let label = format!("{} latency", size_name(size));
        let mut samples = Vec::with_capacity(iters as usize);
        self.begin();
        let mut laps = Laps::new(&self.clock);
        for i in 0..warmup + iters {
            let want = self.h.ends + 1;
            self.send_message(b'P', size, frags, 0)?;
            while self.h.ends < want {
                self.poll()?;
            }
            let ns = laps.lap();
            if i >= warmup {
                samples.push(ns / 2);
                progress.tick(&label, i - warmup + 1, iters);
            }
        }
        Ok(Latency::from_samples(samples))
    }

    /// Request/reply round trips of `size` bytes each way (half the round trip reported).
    fn request_latency(
        &mut self,
        warmup: Option<u64>,
        size: usize,
        iters: u64,
        progress: &mut Progress,
    ) -> Result<Latency, String> {
        let warmup = warmup.unwrap_or((iters / 10).max(1));
        let label = format!("{} request", size_name(size));
        let conn = self.h.conn.expect("connected");
        // No deadline: a timeout would read the clock on every poll, which a ping-pong
        // does not; a lost server still ends the request (its connection closes).
        let options = RequestOptions {
            reply_max: size,
            timeout: None,
            priority: 0,
        };
        // Sent as the ping-pong's messages are: copied up to INLINE_MAX, given as one shared
        // buffer above it (no copy).
        self.h.small.resize(size, b'q');
        let shared = (size > INLINE_MAX).then(|| shared_bytes(&mut self.h.shared, size, b'q'));
        let mut samples = Vec::with_capacity(iters as usize);
        self.begin();
        let mut laps = Laps::new(&self.clock);
        for i in 0..warmup + iters {
            let want = self.h.replies + 1;
            match &shared {
                None => self.vmi.request(conn, &[&self.h.small], &options, 0),
                Some(bytes) => {
                    let buf = Buffer::shared(bytes.clone());
                    self.vmi.request_buffers(conn, [buf], &options, 0)
                }
            }
            .map_err(|e| e.to_string())?;
            while self.h.replies < want {
                self.poll()?;
            }
            let ns = laps.lap();
            if i >= warmup {
                samples.push(ns / 2);
                progress.tick(&label, i - warmup + 1, iters);
            }
        }
        Ok(Latency::from_samples(samples))
    }

    /// Asks the server for a buffer of `size` bytes and waits until it is published.
    fn remote_of(&mut self, size: usize) -> Result<vmi_core::RemoteBuffer, String> {
        if let Some(r) = self.h.remote.filter(|r| r.size == size as u64) {
            return Ok(r);
        }
        let conn = self.h.conn.expect("connected");
        if let Some(old) = self.h.remote.take() {
            let _ = self.vmi.rdma_release(&old);
        }
        let mut ask = vec![b'R'];
        ask.extend_from_slice(&(size as u64).to_le_bytes());
        self.vmi
            .send_inline(conn, &ask)
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        self.begin();
        while self.h.remote.is_none() {
            self.poll()?;
            if start.elapsed() > self.deadline {
                return Err(format!(
                    "the server published no buffer of {size} bytes within {:?}",
                    self.deadline
                ));
            }
        }
        self.h.remote.ok_or_else(|| "no buffer".into())
    }

    /// Issues one put of `size` bytes or one get into `local`.
    fn rdma_op(
        &mut self,
        op: Op,
        remote: &vmi_core::RemoteBuffer,
        local: &vmi_core::Region,
        size: usize,
    ) -> Result<(), String> {
        // No deadline and no notify, as ucx_perftest: the clock is not read per op.
        let options = vmi_core::RdmaOptions {
            notify: false,
            timeout: None,
        };
        let r = if op == Op::Put {
            self.h.small.resize(size, b'w');
            self.vmi.rdma_put(remote, 0, &[&self.h.small], &options, 0)
        } else {
            let into = [vmi_core::Segment {
                region: local,
                offset: 0,
                len: size,
            }];
            self.vmi.rdma_get(remote, 0, &into, &options, 0)
        };
        r.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Put or get latency: one op at a time, to its completion.
    fn rdma_latency(
        &mut self,
        op: Op,
        warmup: Option<u64>,
        size: usize,
        iters: u64,
        progress: &mut Progress,
    ) -> Result<Latency, String> {
        let remote = self.remote_of(size)?;
        let local = vmi_core::Region::new(size).map_err(|e| e.to_string())?;
        let warmup = warmup.unwrap_or((iters / 10).max(1));
        let label = format!("{} {op:?} latency", size_name(size));
        let mut samples = Vec::with_capacity(iters as usize);
        self.begin();
        let mut laps = Laps::new(&self.clock);
        for i in 0..warmup + iters {
            let want = self.h.rdma_done + 1;
            self.rdma_op(op, &remote, &local, size)?;
            while self.h.rdma_done < want {
                self.poll()?;
            }
            let ns = laps.lap();
            if i >= warmup {
                samples.push(ns);
                progress.tick(&label, i - warmup + 1, iters);
            }
        }
        Ok(Latency::from_samples(samples))
    }

    /// Put or get bandwidth: `window` ops in flight.
    fn rdma_bandwidth(
        &mut self,
        op: Op,
        size: usize,
        messages: u64,
        window: usize,
        progress: &mut Progress,
    ) -> Result<Bandwidth, String> {
        let remote = self.remote_of(size)?;
        let local = vmi_core::Region::new(size).map_err(|e| e.to_string())?;
        let label = format!("{} {op:?} bandwidth", size_name(size));
        let want = self.h.rdma_done + messages;
        self.h.in_flight = 0;
        let start = Instant::now();
        self.begin();
        for i in 0..messages {
            while self.h.in_flight >= window.max(1) {
                self.poll()?;
            }
            self.rdma_op(op, &remote, &local, size)?;
            self.h.in_flight += 1;
            progress.tick(&label, i + 1, messages);
        }
        while self.h.rdma_done < want {
            self.poll()?;
        }
        let secs = start.elapsed().as_secs_f64();
        Ok(Bandwidth {
            mb_per_s: (size as u64 * messages) as f64 / secs / 1e6,
            msg_per_s: messages as f64 / secs,
            messages,
        })
    }

    fn bandwidth(
        &mut self,
        size: usize,
        frags: usize,
        messages: u64,
        window: usize,
        progress: &mut Progress,
    ) -> Result<Bandwidth, String> {
        let want = self.h.ends + 1;
        let label = format!("{} bandwidth", size_name(size));
        let start = Instant::now();
        self.begin();
        for i in 0..messages {
            while self.h.in_flight >= window.max(1) {
                self.poll()?;
            }
            let kind = if i + 1 == messages { b'F' } else { b'S' };
            if self.send_message(kind, size, frags, 1)? {
                self.h.in_flight += 1;
            }
            progress.tick(&label, i + 1, messages);
        }
        while self.h.ends < want {
            self.poll()?;
        }
        let secs = start.elapsed().as_secs_f64();
        Ok(Bandwidth {
            mb_per_s: (size as u64 * messages) as f64 / secs / 1e6,
            msg_per_s: messages as f64 / secs,
            messages,
        })
    }

    /// Runs the sweep.
    pub fn run(&mut self, sweep: &Sweep) -> Result<Vec<SizeResult>, String> {
        let mut progress = Progress::new(sweep.progress);
        let mut out = Vec::new();
        for &size in &sweep.sizes {
            let frags = sweep.fragments.clamp(1, size.max(1));
            if sweep.op != Op::Stream {
                let latency = match sweep.test {
                    Test::Latency | Test::Both | Test::Request => Some(self.rdma_latency(
                        sweep.op,
                        sweep.warmup,
                        size,
                        sweep.iters_for(size),
                        &mut progress,
                    )?),
                    Test::Bandwidth => None,
                };
                let bandwidth = match sweep.test {
                    Test::Bandwidth | Test::Both => Some(self.rdma_bandwidth(
                        sweep.op,
                        size,
                        sweep.messages_for(size),
                        sweep.window,
                        &mut progress,
                    )?),
                    _ => None,
                };
                out.push(SizeResult {
                    size,
                    fragments: 1,
                    latency,
                    bandwidth,
                });
                continue;
            }
            let latency = match sweep.test {
                Test::Latency | Test::Both => Some(self.latency(
                    sweep.warmup,
                    size,
                    frags,
                    sweep.iters_for(size),
                    &mut progress,
                )?),
                Test::Request => Some(self.request_latency(
                    sweep.warmup,
                    size,
                    sweep.iters_for(size),
                    &mut progress,
                )?),
                Test::Bandwidth => None,
            };
            let bandwidth = match sweep.test {
                Test::Bandwidth | Test::Both => Some(self.bandwidth(
                    size,
                    frags,
                    sweep.messages_for(size),
                    sweep.window,
                    &mut progress,
                )?),
                Test::Latency | Test::Request => None,
            };
            out.push(SizeResult {
                size,
                fragments: frags,
                latency,
                bandwidth,
            });
        }
        progress.clear();
        Ok(out)
    }

    /// Closes the connection: polls until its end is reported, for 200 ms at most (a
    /// profile of the run then holds no idle polls after it).
    pub fn close(mut self) {
        if let Some(c) = self.h.conn {
            let _ = self.vmi.disconnect(c);
            let start = Instant::now();
            while !self.h.closed && start.elapsed() < Duration::from_millis(200) {
                self.vmi.poll(&mut self.h);
            }
        }
    }
}

/// Runs a server thread and the client in this process over `spec` (the loopback device
/// needs both ends in one process) and measures the sweep.
/// Runs a server thread and the client in this thread. `pin`, called once the server thread
/// exists, pins the client (so the server does not inherit the pinning and share its CPU).
pub fn run_local(
    spec: vmi_core::spec::Spec,
    sweep: &Sweep,
    timeout: Duration,
    pin: &dyn Fn() -> Result<(), String>,
) -> Result<Vec<SizeResult>, String> {
    let server_key = format!("vmi-perf-server-{}", std::process::id());
    let (tx, rx) = std::sync::mpsc::channel();
    let sspec = spec.clone();
    let skey = server_key.clone();
    let server = std::thread::spawn(move || {
        let mut vmi = match Vmi::with_spec(sspec, &skey) {
            Ok(v) => {
                let _ = tx.send(Ok(()));
                v
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        let mut s = Server::default();
        let start = Instant::now();
        loop {
            vmi.poll(&mut s);
            if s.accepted > 0 && s.open == 0 {
                return;
            }
            if s.accepted == 0 && start.elapsed() > timeout {
                return;
            }
        }
    });
    rx.recv().map_err(|_| "server thread died".to_string())??;
    pin()?;
    let vmi = Vmi::with_spec(spec, &format!("vmi-perf-client-{}", std::process::id()))
        .map_err(|e| e.to_string())?;
    let mut client = PerfClient::connect(vmi, "localhost", &server_key, timeout)?;
    let results = client.run(sweep);
    client.close();
    let _ = server.join();
    results
}

// ---------------------------------------------------------------------------------------
// Raw TCP floor

fn spin_write(s: &mut TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn spin_read(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        match s.read(&mut buf[off..]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The floor for TCP: the same sweep over a raw non-blocking, busy-polling socket pair on
/// 127.0.0.1 with TCP_NODELAY (an echo thread plays the server).
pub fn raw_sweep(sweep: &Sweep) -> std::io::Result<Vec<SizeResult>> {
    let mut progress = Progress::new(sweep.progress);
    let mut out = Vec::new();
    for &size in &sweep.sizes {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let mut a = TcpStream::connect(l.local_addr()?)?;
        let (mut b, _) = l.accept()?;
        for s in [&a, &b] {
            s.set_nodelay(true)?;
            s.set_nonblocking(true)?;
        }
        let iters = if sweep.test == Test::Bandwidth {
            0
        } else {
            sweep.iters_for(size)
        };
        let warmup = match (iters, sweep.warmup) {
            (0, _) => 0,
            (_, Some(w)) => w,
            (_, None) => (iters / 10).max(1),
        };
        let messages = if sweep.test == Test::Latency {
            0
        } else {
            sweep.messages_for(size)
        };
        let echo = std::thread::spawn(move || -> std::io::Result<()> {
            let mut buf = vec![0u8; size];
            for _ in 0..warmup + iters {
                spin_read(&mut b, &mut buf)?;
                spin_write(&mut b, &buf)?;
            }
            for _ in 0..messages {
                spin_read(&mut b, &mut buf)?;
            }
            if messages > 0 {
                spin_write(&mut b, b"A")?;
            }
            Ok(())
        });
        let mut buf = vec![0u8; size];
        // Written, as vmi's messages are (see `shared_bytes`).
        let out_buf = vec![0x5au8; size];
        let mut samples = Vec::with_capacity(iters as usize);
        let label = format!("raw {} latency", size_name(size));
        // Timed as vmi's round trips are: one read of the TSC per round trip.
        let mut laps = Laps::new(&quanta::Clock::new());
        for i in 0..warmup + iters {
            spin_write(&mut a, &out_buf)?;
            spin_read(&mut a, &mut buf)?;
            let ns = laps.lap();
            if i >= warmup {
                samples.push(ns / 2);
                progress.tick(&label, i - warmup + 1, iters);
            }
        }
        let mut bandwidth = None;
        if messages > 0 {
            let start = Instant::now();
            for _ in 0..messages {
                spin_write(&mut a, &out_buf)?;
            }
            let mut ack = [0u8; 1];
            spin_read(&mut a, &mut ack)?;
            let secs = start.elapsed().as_secs_f64();
            bandwidth = Some(Bandwidth {
                mb_per_s: (size as u64 * messages) as f64 / secs / 1e6,
                msg_per_s: messages as f64 / secs,
                messages,
            });
        }
        echo.join()
            .map_err(|_| std::io::Error::other("echo thread panicked"))??;
        out.push(SizeResult {
            size,
            fragments: 1,
            latency: (iters > 0).then(|| Latency::from_samples(samples)),
            bandwidth,
        });
    }
    progress.clear();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        let l = Latency::from_samples((1..=100).map(|x| x * 1000).collect());
        assert_eq!(l.samples, 100);
        assert!((l.mean_us - 50.5).abs() < 1e-9);
        assert_eq!(l.median_us, 51.0);
        assert_eq!(l.p99_us, 100.0);
        assert_eq!(l.min_us, 1.0);
    }

    #[test]
    fn sizes_and_splits() {
        assert_eq!(parse_sizes("8,4k, 1m").unwrap(), vec![8, 4096, 1 << 20]);
        assert!(parse_sizes("0").is_err());
        assert!(parse_sizes("x").is_err());
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(1, 1), vec![1]);
        assert_eq!(size_name(65536), "64 KiB");
    }
}
