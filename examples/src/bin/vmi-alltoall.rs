//! vmi-alltoall: every process of a job connects to every other, exchanges messages (checked
//! byte by byte with `--verify`), measures the one-way latency to each peer, and rank 0
//! prints the latency matrix and a summary. The job comes from the launcher:
//!
//! ```text
//! mpirun -np 8 -x VMI_SPECFILE=specfiles/shmem-tcp.xml vmi-alltoall --verify
//! VMI_PROCS=4 VMI_RANK=0..3 VMI_JOB=j1 vmi-alltoall --verify     # no launcher: one per rank
//! ```
//!
//! Rank r connects to every higher rank and accepts the lower ones (so no two processes
//! connect to each other at once); connects wait for peers that start later. Every loop
//! blocks in `Vmi::wait`, so many processes share few cores.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use vmi_core::{
    ConnId, ConnectOutcome, ConnectRequest, Ctx, Decision, Disconnect, Handler, Job, Operations,
    Recv, SendCompletion, Slab, Vmi,
};
use vmi_examples::quiet_println as println;
use vmi_examples::{init_logging, parse_seconds, parse_size};

/// All-to-all exchange and latency matrix over vmi, for a job started by a launcher.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "The job: mpirun (OMPI_COMM_WORLD_RANK/SIZE), a PMI launcher (PMI_RANK/SIZE), or VMI_RANK + VMI_PROCS [+ VMI_JOB, VMI_HOSTS]. Environment: VMI_SPECFILE, VMI_LOG. See `vmi-info --env`."
)]
struct Args {
    /// Bytes per message.
    #[arg(short, long, default_value = "8", value_parser = parse_size)]
    size: u64,
    /// Messages each process sends to each other process.
    #[arg(short = 'n', long, default_value_t = 100)]
    count: u64,
    /// Check every byte of every message.
    #[arg(long)]
    verify: bool,
    /// Ping-pongs per pair for the latency.
    #[arg(long, default_value_t = 100)]
    iters: u64,
    /// Seconds to wait for peers that start later.
    #[arg(long, default_value_t = 60.0, value_parser = parse_seconds)]
    wait: f64,
    /// Give up (exit 1) after this many seconds.
    #[arg(short, long, default_value_t = 300.0, value_parser = parse_seconds)]
    timeout: f64,
    /// The specfile (default: the one VMI_SPECFILE names).
    #[arg(long, value_name = "FILE")]
    spec: Option<std::path::PathBuf>,
    /// Log at info level (VMI_LOG overrides).
    #[arg(short, long)]
    verbose: bool,
}

/// Control messages start with one of these; data messages are the first `count` of each
/// connection (in order, so they need no mark).
const PING: u8 = b'P';
const PONG: u8 = b'Q';
const COUNTS: u8 = b'V';
const MEASURE: u8 = b'M';
const RESULT: u8 = b'R';
const DONE: u8 = b'D';
/// Messages up to this size are sent inline (copied, no completion).
const INLINE_MAX: usize = 4096;

#[derive(Default)]
struct Peer {
    rank: u32,
    open: bool,
    closed: bool,
    /// Data messages received (the first `count` on the connection).
    received: u64,
    current: Vec<u8>,
}

struct Node {
    job: Job,
    size: usize,
    count: u64,
    verify: bool,
    peers: HashMap<ConnId, Peer>,
    by_rank: HashMap<u32, ConnId>,
    error: Option<String>,
    verified: u64,
    bad: u64,
    pongs: u64,
    /// This rank's results went to rank 0: the job is finishing, and a peer that closes now
    /// got rank 0's word that everyone is done (it comes only after every rank's results).
    finishing: bool,
    done: bool,
    /// Rank 0: each rank's counts of verified and bad messages received.
    counts: HashMap<u32, (u64, u64)>,
    /// Rank 0: the one-way latency of each pair (lower rank first), ns.
    lat: HashMap<(u32, u32), f64>,
    /// Rank 0 asked this rank to measure its latency to this rank.
    measure: Option<u32>,
    /// When a peer last pinged this rank.
    last_ping: Option<Instant>,
    echo: Vec<u8>,
}

/// Byte `i` of data message `seq` from `src` to `dst`.
fn pattern(src: u32, dst: u32, seq: u64, i: usize) -> u8 {
    (src as u64 * 31 + dst as u64 * 17 + seq * 7 + i as u64) as u8
}

impl Node {
    fn fail(&mut self, e: String) {
        self.error.get_or_insert(e);
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, msg: Vec<u8>) {
        let me = self.job.rank;
        let Some(p) = self.peers.get_mut(&conn) else {
            return;
        };
        if p.received < self.count {
            let seq = p.received;
            p.received += 1;
            if self.verify {
                let ok = msg.len() == self.size
                    && msg
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b == pattern(p.rank, me, seq, i));
                if ok {
                    self.verified += 1;
                } else {
                    self.bad += 1;
                    let src = p.rank;
                    self.fail(format!(
                        "message {seq} from rank {src} to rank {me} differs from what was sent ({} bytes)",
                        msg.len()
                    ));
                }
            }
            return;
        }
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(msg.get(at..at + 4)?.try_into().ok()?))
        };
        let long = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(msg.get(at..at + 8)?.try_into().ok()?))
        };
        let src = p.rank;
        match msg.first() {
            Some(&PING) => {
                self.last_ping = Some(Instant::now());
                self.echo.clear();
                self.echo.push(PONG);
                self.echo.extend_from_slice(&msg[1..]);
                if let Err(e) = ctx.send_inline(conn, &self.echo) {
                    self.fail(format!("echo to rank {src}: {e}"));
                }
            }
            Some(&PONG) => self.pongs += 1,
            Some(&COUNTS) if me == 0 && msg.len() == 17 => {
                let (v, b) = (long(1).unwrap_or(0), long(9).unwrap_or(0));
                self.counts.insert(src, (v, b));
            }
            Some(&MEASURE) if src == 0 && msg.len() == 5 => self.measure = word(1),
            Some(&RESULT) if me == 0 && msg.len() == 13 => {
                let (b, l) = (
                    word(1).unwrap_or(0),
                    long(5).map(f64::from_bits).unwrap_or(0.0),
                );
                self.lat.insert((src, b), l);
            }
            Some(&DONE) if src == 0 => self.done = true,
            _ => self.fail(format!(
                "rank {src} sent an unexpected message ({} bytes)",
                msg.len()
            )),
        }
    }
}

impl Handler for Node {
    fn accept(&mut self, ctx: &mut Ctx<'_>, req: &mut ConnectRequest<'_>) -> Decision {
        let data = req.data.read_to_vec();
        let rank = std::str::from_utf8(&data)
            .ok()
            .and_then(|s| s.strip_prefix("vmi-alltoall rank "))
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&r| r < self.job.rank);
        let Some(rank) = rank else {
            return Decision::Reject(b"not a lower rank of this vmi-alltoall job".to_vec());
        };
        if let Some(&old) = self.by_rank.get(&rank) {
            let used = self
                .peers
                .get(&old)
                .is_some_and(|p| p.received > 0 || !p.current.is_empty());
            if used {
                return Decision::Reject(b"this rank is connected already".to_vec());
            }
            // A connect of that rank's that it gave up (it timed out on a loaded machine and
            // tried again) while this side accepted it: the new one replaces it.
            log::info!("rank {rank} connected again; its earlier, unused connection is closed");
            self.peers.remove(&old);
            let _ = ctx.disconnect(old);
        }
        self.by_rank.insert(rank, req.conn);
        self.peers.insert(
            req.conn,
            Peer {
                rank,
                open: true,
                ..Peer::default()
            },
        );
        Decision::Accept(Vec::new())
    }

    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        let rank = self.peers.get(&conn).map(|p| p.rank).unwrap_or(u32::MAX);
        match o {
            ConnectOutcome::Accepted(_) => {
                if let Some(p) = self.peers.get_mut(&conn) {
                    p.open = true;
                }
            }
            ConnectOutcome::Rejected(mut r) => {
                let why = String::from_utf8_lossy(&r.read_to_vec()).into_owned();
                self.fail(format!("rank {rank} refused the connection: {why}"));
            }
            ConnectOutcome::Failed { status, detail } => {
                self.fail(format!("cannot connect to rank {rank}: {status}: {detail}"))
            }
        }
    }

    fn receive(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        let Some(p) = self.peers.get_mut(&conn) else {
            return;
        };
        slab.read_into(&mut p.current);
        if cmd == Recv::End {
            let msg = std::mem::take(&mut p.current);
            self.on_message(ctx, conn, msg);
        }
    }

    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, done: &mut SendCompletion<'_>) {
        if !done.status.is_ok() {
            let rank = self.peers.get(&conn).map_or(u32::MAX, |p| p.rank);
            self.fail(format!(
                "a send to rank {rank} failed: {}: {}",
                done.status, done.detail
            ));
        }
    }

    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, reason: Disconnect) {
        let (done, finishing, me) = (self.done, self.finishing, self.job.rank);
        let unused = self
            .peers
            .get(&conn)
            .is_some_and(|p| p.received == 0 && p.current.is_empty());
        if unused && matches!(reason, Disconnect::Error { .. }) {
            // An accepted connection that never carried anything failed (on a loaded machine
            // the peer may give up its connect before the answer arrives): the peer tries
            // again, and its next connect takes this one's place.
            if let Some(p) = self.peers.remove(&conn) {
                log::info!(
                    "rank {}: an unused connection failed ({reason:?}); waiting for it to connect again",
                    p.rank
                );
                if self.by_rank.get(&p.rank) == Some(&conn) {
                    self.by_rank.remove(&p.rank);
                }
            }
            return;
        }
        if let Some(p) = self.peers.get_mut(&conn) {
            p.closed = true;
            p.open = false;
            // Nobody may leave rank 0 before it said "done", nor rank 0 before that; the
            // others may leave each other once this rank sent its counts (rank 0 judges the
            // rest, and says "done" only when every pair is measured).
            let early = if p.rank == 0 || me == 0 {
                !done
            } else {
                !finishing
            };
            if early && reason != Disconnect::Local {
                let r = p.rank;
                self.fail(format!(
                    "rank {r} went away before the job finished: {reason:?}"
                ));
            }
        }
    }
}

/// Polls (blocking in `wait`) until `done` or an error or the deadline.
fn until(
    vmi: &mut Vmi,
    node: &mut Node,
    deadline: Instant,
    what: &str,
    done: impl Fn(&Node) -> bool,
) -> Result<(), String> {
    while !done(node) {
        if let Some(e) = node.error.take() {
            return Err(e);
        }
        if Instant::now() > deadline {
            return Err(format!("rank {}: timed out {what}", node.job.rank));
        }
        vmi.wait(node, Duration::from_millis(20));
    }
    match node.error.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn run(args: &Args) -> Result<(), String> {
    let job = Job::from_env()
        .map_err(|e| e.to_string())?
        .ok_or("no job: run under mpirun (or a PMI launcher), or set VMI_RANK and VMI_PROCS (and VMI_JOB, the same for every process)")?;
    let size = usize::try_from(args.size).map_err(|_| "--size is too large".to_string())?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    let options =
        vmi_core::Options::default().with_connect_wait(Duration::from_secs_f64(args.wait));
    let mut vmi = vmi_examples::open(args.spec.as_deref(), &job.key(), options)?;
    let me = job.rank;
    let n = job.size;
    let mut node = Node {
        job: job.clone(),
        size,
        count: args.count,
        verify: args.verify,
        peers: HashMap::new(),
        by_rank: HashMap::new(),
        error: None,
        verified: 0,
        bad: 0,
        pongs: 0,
        finishing: false,
        done: false,
        counts: HashMap::new(),
        lat: HashMap::new(),
        measure: None,
        last_ping: None,
        echo: Vec::new(),
    };
    // Connect up, accept from below.
    for p in me + 1..n {
        let data = format!("vmi-alltoall rank {me}");
        let conn = vmi
            .connect(job.host_of(p), &job.key_of(p), data.as_bytes(), 0)
            .map_err(|e| format!("rank {me} to rank {p}: {e}"))?;
        node.by_rank.insert(p, conn);
        node.peers.insert(
            conn,
            Peer {
                rank: p,
                ..Peer::default()
            },
        );
    }
    let others = (n - 1) as usize;
    until(
        &mut vmi,
        &mut node,
        deadline,
        "waiting for every peer to connect",
        |s| s.peers.len() == others && s.peers.values().all(|p| p.open),
    )?;
    log::info!("rank {me}: connected to {others} peer(s)");
    // Exchange: `count` messages to every peer, interleaved across peers.
    let conns: Vec<(u32, ConnId)> = job.peers().map(|r| (r, node.by_rank[&r])).collect();
    let mut msg = vec![0u8; size];
    for seq in 0..args.count {
        for &(r, conn) in &conns {
            for (i, b) in msg.iter_mut().enumerate() {
                *b = pattern(me, r, seq, i);
            }
            while vmi.sends_available() == 0 {
                if let Some(e) = node.error.take() {
                    return Err(e);
                }
                if Instant::now() > deadline {
                    return Err(format!("rank {me}: timed out waiting to send"));
                }
                vmi.wait(&mut node, Duration::from_millis(5));
            }
            let sent = if size <= INLINE_MAX {
                vmi.send_inline(conn, &msg)
            } else {
                vmi.send(conn, [vmi_core::Buffer::from_vec(msg.clone())], 0)
            };
            sent.map_err(|e| format!("send to rank {r}: {e}"))?;
        }
        if seq % 64 == 63 {
            vmi.poll(&mut node);
        }
    }
    let count = args.count;
    until(
        &mut vmi,
        &mut node,
        deadline,
        "receiving the exchange",
        |s| s.peers.values().all(|p| p.received >= count),
    )?;
    // Counts to rank 0. From here a peer that closes was told by rank 0 that all is done
    // (only rank 0 judges the job; its own departure before then is an error).
    node.finishing = true;
    if me == 0 {
        node.counts.insert(0, (node.verified, node.bad));
        until(
            &mut vmi,
            &mut node,
            deadline,
            "collecting the counts",
            |s| s.counts.len() == n as usize,
        )?;
        // One pair at a time, so the two processes measured have the machine to themselves
        // and every other process sleeps in `wait`.
        for a in 0..n {
            for b in a + 1..n {
                if a == 0 {
                    let l = measure(&mut vmi, &mut node, b, args.iters, deadline)?;
                    node.lat.insert((0, b), l);
                } else {
                    let mut m = vec![MEASURE];
                    m.extend_from_slice(&b.to_le_bytes());
                    vmi.send_inline(node.by_rank[&a], &m)
                        .map_err(|e| format!("asking rank {a} to measure: {e}"))?;
                    until(
                        &mut vmi,
                        &mut node,
                        deadline,
                        "waiting for a latency",
                        |s| s.lat.contains_key(&(a, b)),
                    )?;
                }
            }
        }
        node.done = true;
        for &(_, conn) in &conns {
            vmi.send_inline(conn, &[DONE]).map_err(|e| e.to_string())?;
        }
        report(&node, args);
    } else {
        let mut v = vec![COUNTS];
        v.extend_from_slice(&node.verified.to_le_bytes());
        v.extend_from_slice(&node.bad.to_le_bytes());
        vmi.send_inline(node.by_rank[&0], &v)
            .map_err(|e| format!("counts to rank 0: {e}"))?;
        while !node.done {
            if let Some(e) = node.error.take() {
                return Err(e);
            }
            if Instant::now() > deadline {
                return Err(format!("rank {me}: timed out waiting for rank 0 to finish"));
            }
            if let Some(b) = node.measure.take() {
                let l = measure(&mut vmi, &mut node, b, args.iters, deadline)?;
                let mut r = vec![RESULT];
                r.extend_from_slice(&b.to_le_bytes());
                r.extend_from_slice(&l.to_le_bytes());
                vmi.send_inline(node.by_rank[&0], &r)
                    .map_err(|e| format!("result to rank 0: {e}"))?;
            } else if node
                .last_ping
                .is_some_and(|t| t.elapsed() < Duration::from_millis(20))
            {
                // Being measured: answer at once rather than from a sleep.
                vmi.poll(&mut node);
            } else {
                vmi.wait(&mut node, Duration::from_millis(20));
            }
        }
    }
    // Rank 0 leaves last: the others close; it waits for them (bounded).
    if me != 0 {
        for &(_, conn) in &conns {
            let _ = vmi.disconnect(conn);
        }
    }
    let close_by = Instant::now() + Duration::from_secs(10);
    while !node.peers.values().all(|p| p.closed) && Instant::now() < close_by {
        vmi.wait(&mut node, Duration::from_millis(20));
    }
    let bad: u64 = node.counts.values().map(|c| c.1).sum::<u64>();
    if me == 0 && bad > 0 {
        return Err(format!("{bad} message(s) did not verify"));
    }
    if node.bad > 0 {
        return Err(format!(
            "{} message(s) to rank {me} did not verify",
            node.bad
        ));
    }
    Ok(())
}

/// Half the mean round trip of `iters` ping-pongs with rank `peer`, in ns (busy-polling: a
/// sleep would be measured too).
fn measure(
    vmi: &mut Vmi,
    node: &mut Node,
    peer: u32,
    iters: u64,
    deadline: Instant,
) -> Result<f64, String> {
    let me = node.job.rank;
    let conn = *node
        .by_rank
        .get(&peer)
        .ok_or_else(|| format!("rank {me} has no connection to rank {peer}"))?;
    let iters = iters.max(1);
    // Warm-up round trips, not counted: the peer may be asleep in `wait` at the first one.
    let warmup = (iters / 10).max(5);
    let mut total = Duration::ZERO;
    let mut ping = [0u8; 9];
    ping[0] = PING;
    for i in 0..warmup + iters {
        let want = node.pongs + 1;
        ping[1..].copy_from_slice(&i.to_le_bytes());
        let t0 = Instant::now();
        vmi.send_inline(conn, &ping)
            .map_err(|e| format!("ping rank {peer}: {e}"))?;
        while node.pongs < want {
            if let Some(e) = node.error.take() {
                return Err(e);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "rank {me}: timed out measuring the latency to rank {peer}"
                ));
            }
            vmi.poll(node);
        }
        if i >= warmup {
            total += t0.elapsed();
        }
    }
    Ok(total.as_secs_f64() * 1e9 / iters as f64 / 2.0)
}

/// Rank 0's matrix and summary.
fn report(node: &Node, args: &Args) {
    let n = node.job.size as usize;
    let mut m = vec![vec![f64::NAN; n]; n];
    for (&(a, b), &l) in &node.lat {
        m[a as usize][b as usize] = l;
        m[b as usize][a as usize] = l;
    }
    let verified: u64 = node.counts.values().map(|c| c.0).sum();
    let bad: u64 = node.counts.values().map(|c| c.1).sum();
    println!(
        "vmi-alltoall: {n} processes (job '{}', from {:?}), {} message(s) of {} bytes per ordered pair{}",
        node.job.id,
        node.job.source,
        args.count,
        args.size,
        if args.verify { ", verified" } else { "" }
    );
    if n <= 16 {
        println!(
            "one-way latency (us), half the mean round trip of {} ping-pongs:",
            args.iters
        );
        let mut head = String::from("      ");
        for c in 0..n {
            head.push_str(&format!("{c:>8}"));
        }
        println!("{head}");
        for (r, row) in m.iter().enumerate() {
            let mut line = format!("{r:>6}");
            for v in row {
                if v.is_nan() {
                    line.push_str("       -");
                } else {
                    line.push_str(&format!("{:>8.2}", v / 1000.0));
                }
            }
            println!("{line}");
        }
    }
    let mut all: Vec<f64> = m
        .iter()
        .flatten()
        .copied()
        .filter(|v| !v.is_nan())
        .collect();
    all.sort_by(f64::total_cmp);
    let pairs = n * (n - 1) / 2;
    let pct = |q: f64| {
        all.get(((all.len() - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or(0.0)
            / 1000.0
    };
    let messages = n as u64 * (n as u64 - 1) * args.count;
    println!(
        "summary: {pairs} pair(s), {messages} message(s){}; one-way latency min {:.2} us, median {:.2} us, max {:.2} us",
        if args.verify {
            format!(", {verified} verified, {bad} bad")
        } else {
            String::new()
        },
        pct(0.0),
        pct(0.5),
        pct(1.0)
    );
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    if args.verify && args.size == 0 {
        eprintln!("vmi-alltoall: error: --verify needs messages of at least 1 byte (--size)");
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmi-alltoall: error: {e}");
            ExitCode::FAILURE
        }
    }
}
