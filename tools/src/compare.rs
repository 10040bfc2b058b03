//! `vmi-perf compare`: vmi over TCP (and shared memory, once a `shmem` specfile exists)
//! against `ucx_perftest` (UCX_TLS=tcp / sm), `fi_pingpong` (tcp / shm providers) and the
//! project's raw socket floor, on one machine, same sizes; one table with ratios, and an SVG
//! plot of latency and bandwidth against size on log axes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::perf::{Op, Sweep, Test, raw_sweep, run_local, size_name};

/// Which family a peer belongs to (ratios compare within a family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// TCP on 127.0.0.1.
    Tcp,
    /// Shared memory.
    Shm,
}

/// One measured point: the median over the rounds, and each round's value.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Point {
    /// Message size.
    pub size: usize,
    /// Half round trip, microseconds (median over rounds).
    pub latency_us: Option<f64>,
    /// Streaming bandwidth, 10^6 bytes per second (median over rounds).
    pub bandwidth_mbs: Option<f64>,
    /// Each round's latency (None where that round had no result).
    pub latency_rounds: Vec<Option<f64>>,
    /// Each round's bandwidth.
    pub bandwidth_rounds: Vec<Option<f64>>,
}

/// `YYYY-MM-DD` of a day number since 1970-01-01 (Howard Hinnant's civil-from-days).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The median of the values present.
fn median(values: &[Option<f64>]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().flatten().copied().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// Median and range of the per-round ratios a / b (rounds where both have a value).
fn ratio_stats(a: &[Option<f64>], b: &[Option<f64>]) -> Option<(f64, f64, f64)> {
    let mut r: Vec<f64> = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) if *y > 0.0 => Some(x / y),
            _ => None,
        })
        .collect();
    if r.is_empty() {
        return None;
    }
    r.sort_by(f64::total_cmp);
    Some((r[r.len() / 2], r[0], r[r.len() - 1]))
}

/// One peer's results, or why it was skipped.
#[derive(Clone, Debug, Serialize)]
pub struct Peer {
    /// Display name.
    pub name: String,
    /// Family.
    pub family: Family,
    /// Points by size.
    pub points: Vec<Point>,
    /// Why it did not run.
    pub skipped: Option<String>,
}

/// Compare settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Sizes.
    pub sizes: Vec<usize>,
    /// Short runs.
    pub quick: bool,
    /// Install missing peers with apt-get (as root).
    pub install: bool,
    /// Output directory.
    pub out: PathBuf,
    /// The TCP specfile.
    pub tcp_spec: PathBuf,
    /// The shared-memory specfile (skipped when absent).
    pub shm_spec: PathBuf,
    /// Rounds: every peer runs once per round, interleaved, so slow drifts of a noisy
    /// machine touch all of them alike.
    pub rounds: usize,
    /// Messages, or RDMA puts or gets (then against ucx_perftest's ucp_put_lat and
    /// ucp_put_bw, or ucp_get, and without the peers that have no one-sided operations).
    pub op: Op,
}

/// Parses the `Final:` line of `ucx_perftest`: (latency average µs, bandwidth MB/s as 10^6).
pub fn parse_ucx(out: &str) -> Option<(f64, f64)> {
    let line = out
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("Final:"))?;
    let cols: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|c| c.parse().ok())
        .collect();
    // iterations, 50%ile, average, overall, bw average, bw overall, rate average, rate overall
    if cols.len() < 8 {
        return None;
    }
    // ucx_perftest's "MB/s" is 2^20 bytes per second.
    Some((cols[2], cols[4] * 1.048_576))
}

/// Parses `fi_pingpong`'s result row: usec/xfer (a half round trip).
pub fn parse_fi(out: &str) -> Option<f64> {
    let mut lines = out.lines();
    lines.by_ref().find(|l| l.contains("usec/xfer"))?;
    let row = lines.next()?;
    let cols: Vec<&str> = row.split_whitespace().collect();
    cols.get(6)?.parse().ok()
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Makes `program` available, installing `package` if allowed; the reason when not.
fn ensure(program: &str, package: &str, install: bool) -> Result<(), String> {
    if have(program) {
        return Ok(());
    }
    if !install {
        return Err(format!(
            "{program} not installed (Debian package {package}; run without --no-install as root to install it)"
        ));
    }
    if !is_root() || !have("apt-get") {
        return Err(format!(
            "{program} not installed and cannot install {package} (needs root and apt-get)"
        ));
    }
    eprintln!("vmi-perf compare: installing {package} ...");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    let ok = apt(&["install", "-y", "-qq", package]).is_ok_and(|s| s.success())
        || (apt(&["update", "-qq"]).is_ok_and(|s| s.success())
            && apt(&["install", "-y", "-qq", package]).is_ok_and(|s| s.success()));
    if ok && have(program) {
        Ok(())
    } else {
        Err(format!("installing {package} with apt-get failed"))
    }
}

/// A free TCP port on 127.0.0.1 (probed by binding).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(23_456)
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a server/client pair of an external tool; returns the client's output.
fn pair(server: &mut Command, client: &mut Command, timeout: Duration) -> Result<String, String> {
    let _server = Killed(
        server
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let mut child = Killed(
        client
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    loop {
        if let Some(status) = child.0.try_wait().map_err(|e| e.to_string())? {
            let mut out = String::new();
            use std::io::Read;
            if let Some(mut s) = child.0.stdout.take() {
                let _ = s.read_to_string(&mut out);
            }
            if let Some(mut s) = child.0.stderr.take() {
                let _ = s.read_to_string(&mut out);
            }
            return if status.success() {
                Ok(out)
            } else {
                Err(format!(
                    "exit {status}: {}",
                    out.lines().last().unwrap_or("")
                ))
            };
        }
        if start.elapsed() > timeout {
            return Err(format!("no result within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// UCX's setting for its one-connection peer (`ucx tcp1`): by default UCX stripes a large
/// message over one connection per network interface it finds (`lo` and `eth0` on a host
/// with one NIC: two TCP connections over loopback), where vmi's plain TCP chain uses one.
const UCX_ONE_RAIL: (&str, &str) = ("UCX_MAX_RNDV_RAILS", "1");

fn ucx(tls: &str, opts: &Options) -> Peer {
    ucx_with(&format!("ucx {tls}"), tls, None, opts)
}

/// `ucx_perftest` over `tls`, named `name`, with `env` set in both processes.
fn ucx_with(name: &str, tls: &str, env: Option<(&str, &str)>, opts: &Options) -> Peer {
    let name = name.to_string();
    let family = if tls == "tcp" {
        Family::Tcp
    } else {
        Family::Shm
    };
    let mut peer = Peer {
        name,
        family,
        points: vec![],
        skipped: None,
    };
    if let Err(why) = ensure("ucx_perftest", "ucx-utils", opts.install) {
        peer.skipped = Some(why);
        return peer;
    }
    // As many round trips and streamed messages as vmi's own run of each size.
    let counts = sweep(opts);
    for &size in &opts.sizes {
        let run = |test: &str, n: u64| -> Result<(f64, f64), String> {
            let port = free_port().to_string();
            let n = n.to_string();
            let s = size.to_string();
            let args = ["-t", test, "-s", &s, "-n", &n, "-p", &port];
            let perftest = || {
                let mut c = Command::new("ucx_perftest");
                c.env("UCX_TLS", tls);
                if let Some((key, value)) = env {
                    c.env(key, value);
                }
                c
            };
            let out = pair(
                perftest().args(args),
                perftest().arg("127.0.0.1").args(args),
                Duration::from_secs(60),
            )?;
            parse_ucx(&out).ok_or_else(|| {
                format!(
                    "cannot read ucx_perftest output: {}",
                    out.lines().last().unwrap_or("")
                )
            })
        };
        let (lat, bw) = match opts.op {
            Op::Stream => ("tag_lat", "tag_bw"),
            Op::Put => ("ucp_put_lat", "ucp_put_bw"),
            Op::Get => ("ucp_get", "ucp_get"),
        };
        match (
            run(lat, counts.iters_for(size)),
            run(bw, counts.messages_for(size)),
        ) {
            (Ok((lat, _)), Ok((_, bw))) => peer.points.push(Point {
                size,
                latency_us: Some(lat),
                bandwidth_mbs: Some(bw),
                ..Point::default()
            }),
            (Err(e), _) | (_, Err(e)) => {
                peer.skipped = Some(format!("ucx_perftest failed at {}: {e}", size_name(size)));
                break;
            }
        }
    }
    peer
}

fn fi(provider: &str, opts: &Options) -> Peer {
    let family = if provider == "tcp" {
        Family::Tcp
    } else {
        Family::Shm
    };
    let mut peer = Peer {
        name: format!("fi {provider}"),
        family,
        points: vec![],
        skipped: None,
    };
    if let Err(why) = ensure("fi_pingpong", "libfabric-bin", opts.install) {
        peer.skipped = Some(why);
        return peer;
    }
    let ep = if provider == "tcp" { "msg" } else { "rdm" };
    let counts = sweep(opts);
    for &size in &opts.sizes {
        let port = free_port().to_string();
        let n = counts.iters_for(size).to_string();
        let s = size.to_string();
        let common = ["-p", provider, "-e", ep, "-S", &s, "-I", &n];
        let out = pair(
            Command::new("fi_pingpong").args(common).args(["-B", &port]),
            Command::new("fi_pingpong")
                .args(common)
                .args(["-P", &port, "127.0.0.1"]),
            Duration::from_secs(60),
        );
        match out
            .map(|o| parse_fi(&o).ok_or_else(|| format!("cannot read fi_pingpong output: {o}")))
        {
            Ok(Ok(lat)) => peer.points.push(Point {
                size,
                latency_us: Some(lat),
                bandwidth_mbs: None,
                ..Point::default()
            }),
            Ok(Err(e)) | Err(e) => {
                peer.skipped = Some(format!("fi_pingpong failed at {}: {e}", size_name(size)));
                break;
            }
        }
    }
    peer
}

fn sweep(opts: &Options) -> Sweep {
    Sweep {
        op: opts.op,
        sizes: opts.sizes.clone(),
        fragments: 1,
        test: Test::Both,
        iters: None,
        messages: None,
        window: 16,
        quick: opts.quick,
        progress: true,
        warmup: None,
    }
}

fn vmi(name: &str, family: Family, spec: &Path, opts: &Options) -> Peer {
    let mut peer = Peer {
        name: name.into(),
        family,
        points: vec![],
        skipped: None,
    };
    if !spec.is_file() {
        peer.skipped = Some(format!(
            "no specfile {} (name one with --shm-spec or --tcp-spec)",
            spec.display()
        ));
        return peer;
    }
    let run = vmi_core::spec::Spec::from_file(spec)
        .map_err(|e| e.to_string())
        .and_then(|s| run_local(s, &sweep(opts), Duration::from_secs(60), &|| Ok(())));
    match run {
        Ok(results) => {
            peer.points = results
                .into_iter()
                .map(|r| Point {
                    size: r.size,
                    latency_us: r.latency.map(|l| l.mean_us),
                    bandwidth_mbs: r.bandwidth.map(|b| b.mb_per_s),
                    ..Point::default()
                })
                .collect()
        }
        Err(e) => peer.skipped = Some(e),
    }
    peer
}

fn raw(opts: &Options) -> Peer {
    let mut peer = Peer {
        name: "raw tcp".into(),
        family: Family::Tcp,
        points: vec![],
        skipped: None,
    };
    match raw_sweep(&sweep(opts)) {
        Ok(results) => {
            peer.points = results
                .into_iter()
                .map(|r| Point {
                    size: r.size,
                    latency_us: r.latency.map(|l| l.mean_us),
                    bandwidth_mbs: r.bandwidth.map(|b| b.mb_per_s),
                    ..Point::default()
                })
                .collect()
        }
        Err(e) => peer.skipped = Some(e.to_string()),
    }
    peer
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// How the bytes moved (messages, puts or gets).
    pub op: Op,
    /// Sizes.
    pub sizes: Vec<usize>,
    /// Rounds run.
    pub rounds: usize,
    /// Host name.
    pub host: String,
    /// Start, seconds since 1970 (UTC).
    pub started_unix_s: u64,
    /// Every peer, vmi first in each family.
    pub peers: Vec<Peer>,
}

/// One round of every peer, in a fixed order.
fn round(opts: &Options, r: usize) -> Vec<Peer> {
    let say = |what: &str| {
        eprintln!(
            "vmi-perf compare: round {} of {}: {what}",
            r + 1,
            opts.rounds
        )
    };
    let mut peers = Vec::new();
    say(&format!("vmi over {}", opts.tcp_spec.display()));
    peers.push(vmi("vmi tcp", Family::Tcp, &opts.tcp_spec, opts));
    let streams = opts.op == Op::Stream;
    if streams {
        say("raw socket floor");
        peers.push(raw(opts));
    }
    say("ucx_perftest (UCX_TLS=tcp)");
    peers.push(ucx("tcp", opts));
    if streams {
        say("ucx_perftest (UCX_TLS=tcp, one rail)");
        peers.push(ucx_with("ucx tcp1", "tcp", Some(UCX_ONE_RAIL), opts));
        say("fi_pingpong (tcp)");
        peers.push(fi("tcp", opts));
    }
    say(&format!("vmi over {}", opts.shm_spec.display()));
    peers.push(vmi("vmi shm", Family::Shm, &opts.shm_spec, opts));
    say("ucx_perftest (UCX_TLS=sm)");
    peers.push(ucx("sm", opts));
    if streams {
        say("fi_pingpong (shm)");
        peers.push(fi("shm", opts));
    }
    peers
}

/// Folds rounds of the same peers into medians with every round's value kept.
fn merge(sizes: &[usize], rounds: Vec<Vec<Peer>>) -> Vec<Peer> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, p0)| {
            let runs: Vec<&Peer> = rounds.iter().filter_map(|r| r.get(i)).collect();
            let points: Vec<Point> = sizes
                .iter()
                .map(|&size| {
                    let at = |p: &Peer| p.points.iter().find(|x| x.size == size).cloned();
                    let lat: Vec<Option<f64>> = runs
                        .iter()
                        .map(|p| at(p).and_then(|x| x.latency_us))
                        .collect();
                    let bw: Vec<Option<f64>> = runs
                        .iter()
                        .map(|p| at(p).and_then(|x| x.bandwidth_mbs))
                        .collect();
                    Point {
                        size,
                        latency_us: median(&lat),
                        bandwidth_mbs: median(&bw),
                        latency_rounds: lat,
                        bandwidth_rounds: bw,
                    }
                })
                .filter(|p| p.latency_us.is_some() || p.bandwidth_mbs.is_some())
                .collect();
            Peer {
                name: p0.name.clone(),
                family: p0.family,
                skipped: if points.is_empty() {
                    runs.iter().find_map(|p| p.skipped.clone())
                } else {
                    None
                },
                points,
            }
        })
        .collect()
}

/// Runs every peer, `opts.rounds` times, interleaved.
pub fn run(opts: &Options) -> Comparison {
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let rounds: Vec<Vec<Peer>> = (0..opts.rounds.max(1)).map(|r| round(opts, r)).collect();
    Comparison {
        op: opts.op,
        sizes: opts.sizes.clone(),
        rounds: opts.rounds.max(1),
        host: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
        started_unix_s,
        peers: merge(&opts.sizes, rounds),
    }
}

impl Comparison {
    fn point(&self, peer: &str, size: usize) -> Option<&Point> {
        self.peers
            .iter()
            .find(|p| p.name == peer)?
            .points
            .iter()
            .find(|p| p.size == size)
    }

    /// The table, with vmi's ratio to each peer of its family.
    pub fn table(&self) -> String {
        let mut t = String::new();
        t.push_str(match self.op {
            Op::Stream => {
                "latency: half round trip, us (mean); bandwidth: one-way streaming, MB/s (10^6 B/s)\n"
            }
            Op::Put => {
                "RDMA puts. latency, us (mean): vmi from issue to completion, ucx_perftest ucp_put_lat's one-way; bandwidth: ucp_put_bw, MB/s (10^6 B/s)\n"
            }
            Op::Get => {
                "RDMA gets. latency, us (mean): vmi from issue to completion, ucx_perftest ucp_get's time per get; bandwidth: MB/s (10^6 B/s)\n"
            }
        });
        t.push_str("ratios are vmi / peer within a family (tcp, shm): latency < 1 and bandwidth > 1 favour vmi\n");
        if self.peers.iter().any(|p| p.name == "ucx tcp1") {
            t.push_str(&format!(
                "ucx tcp1: UCX_TLS=tcp with {}={}, one TCP connection per message as vmi's tcp chain; plain ucx tcp stripes a large message over one connection per interface\n",
                UCX_ONE_RAIL.0, UCX_ONE_RAIL.1
            ));
        }
        t.push_str(&format!(
            "values are medians over {} interleaved round(s); a ratio is the median of the per-round ratios, [min-max] beside it\n",
            self.rounds
        ));
        t.push_str("noise: on a shared 2-core VM wall-clock ratios move by tens of percent between runs; trust the range, not one number\n\n");
        t.push_str(&format!(
            "{:>8}  {:<9} {:>10} {:>19} {:>11} {:>19}\n",
            "size", "peer", "latency", "vmi/peer", "bandwidth", "vmi/peer"
        ));
        for &size in &self.sizes {
            for p in &self.peers {
                let vmi_name = if p.family == Family::Tcp {
                    "vmi tcp"
                } else {
                    "vmi shm"
                };
                let Some(pt) = p.points.iter().find(|x| x.size == size) else {
                    if size == self.sizes[0] {
                        let why = p.skipped.as_deref().unwrap_or("no result");
                        t.push_str(&format!("{:>8}  {:<9} skipped: {why}\n", "", p.name));
                    }
                    continue;
                };
                let v = self.point(vmi_name, size);
                let fmt =
                    |x: Option<f64>, d: usize| x.map_or("-".to_string(), |x| format!("{x:.d$}"));
                let ratio = |a: Option<&Vec<Option<f64>>>, b: &Vec<Option<f64>>| match a
                    .and_then(|a| ratio_stats(a, b))
                {
                    Some((m, lo, hi)) if p.name != vmi_name => {
                        format!("{m:.2} [{lo:.2}-{hi:.2}]")
                    }
                    _ => "-".into(),
                };
                t.push_str(&format!(
                    "{:>8}  {:<9} {:>10} {:>19} {:>11} {:>19}\n",
                    size_name(size),
                    p.name,
                    fmt(pt.latency_us, 2),
                    ratio(v.map(|v| &v.latency_rounds), &pt.latency_rounds),
                    fmt(pt.bandwidth_mbs, 1),
                    ratio(v.map(|v| &v.bandwidth_rounds), &pt.bandwidth_rounds),
                ));
            }
        }
        t
    }

    /// The targets the issues set, each with its measured ratio and verdict: the median of
    /// the per-round ratios and their range, as in the table.
    pub fn targets(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |what: &str,
                         a: Option<&Vec<Option<f64>>>,
                         b: Option<&Vec<Option<f64>>>,
                         ok: fn(f64) -> bool,
                         goal: &str| {
            match a.zip(b).and_then(|(a, b)| ratio_stats(a, b)) {
                Some((r, lo, hi)) => out.push(format!(
                    "{what}: {r:.2}x [{lo:.2}-{hi:.2}] (target {goal}): {}",
                    if ok(r) { "met" } else { "NOT met" }
                )),
                None => out.push(format!("{what}: not measured")),
            }
        };
        let (small, large) = if self.op == Op::Stream {
            // The targets are at 8 B and 1 MiB: other sizes are not judged by them.
            (8, 1 << 20)
        } else {
            (
                self.sizes.iter().copied().min().unwrap_or(8),
                self.sizes.iter().copied().max().unwrap_or(1 << 20),
            )
        };
        let lat = |p: &str, s| self.point(p, s).map(|x| &x.latency_rounds);
        let bw = |p: &str, s| self.point(p, s).map(|x| &x.bandwidth_rounds);
        let (sn, ln) = (size_name(small), size_name(large));
        if self.op != Op::Stream {
            // The RDMA issue's targets: shared-memory put latency and bandwidth against UCX.
            let what = if self.op == Op::Put { "put" } else { "get" };
            check(
                &format!("shm {sn} {what} latency vs UCX sm"),
                lat("vmi shm", small),
                lat("ucx sm", small),
                |r| r <= 1.0,
                "<= 1.00",
            );
            check(
                &format!("shm {ln} {what} bandwidth vs UCX sm"),
                bw("vmi shm", large),
                bw("ucx sm", large),
                |r| r >= 1.0,
                ">= 1.00",
            );
            return out;
        }
        // The issue "Core v2 (2 of 2)": its wall-clock targets, in its words.
        check(
            &format!("TCP {sn} latency vs raw floor"),
            lat("vmi tcp", small),
            lat("raw tcp", small),
            |r| r <= 1.15,
            "<= 1.15",
        );
        check(
            &format!("TCP {sn} message rate vs UCX tcp"),
            bw("vmi tcp", small),
            bw("ucx tcp", small),
            |r| r >= 2.0,
            ">= 2.00",
        );
        check(
            &format!("TCP {ln} bandwidth vs UCX tcp"),
            bw("vmi tcp", large),
            bw("ucx tcp", large),
            |r| r >= 1.0,
            ">= 1.00",
        );
        if self.point("ucx tcp1", large).is_some() {
            // Not a target of its own: the same comparison, one connection on each side.
            check(
                &format!("TCP {ln} bandwidth vs UCX tcp on one rail (reference)"),
                bw("vmi tcp", large),
                bw("ucx tcp1", large),
                |r| r >= 1.0,
                ">= 1.00",
            );
        }
        check(
            &format!("shm {sn} latency vs UCX sm"),
            lat("vmi shm", small),
            lat("ucx sm", small),
            |r| r <= 0.8,
            "<= 0.80",
        );
        check(
            &format!("shm {sn} message rate vs UCX sm"),
            bw("vmi shm", small),
            bw("ucx sm", small),
            |r| r >= 1.5,
            ">= 1.50",
        );
        check(
            &format!("shm {ln} bandwidth vs UCX sm"),
            bw("vmi shm", large),
            bw("ucx sm", large),
            |r| r >= 1.0,
            ">= 1.00",
        );
        out
    }

    /// Writes an SVG with latency and bandwidth against size, log axes.
    pub fn plot(&self, path: &Path) -> Result<(), String> {
        use plotters::coord::combinators::BindKeyPoints;
        use plotters::prelude::*;
        let root = SVGBackend::new(path, (1100, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let day = self.started_unix_s / 86_400;
        let root = root
            .titled(
                &format!(
                    "vmi-perf compare on {} ({}; medians of {} interleaved rounds)",
                    if self.host.is_empty() {
                        "?"
                    } else {
                        &self.host
                    },
                    civil_date(day),
                    self.rounds
                ),
                ("sans-serif", 16),
            )
            .map_err(|e| e.to_string())?;
        let panels = root.split_evenly((1, 2));
        let colors = [
            RGBColor(0, 90, 200),
            RGBColor(120, 120, 120),
            RGBColor(220, 90, 0),
            RGBColor(0, 150, 80),
            RGBColor(150, 0, 150),
            RGBColor(200, 160, 0),
            RGBColor(0, 170, 200),
        ];
        let xmin = *self.sizes.iter().min().unwrap_or(&8) as f64;
        let xmax = *self.sizes.iter().max().unwrap_or(&(1 << 20)) as f64;
        let series = |get: &dyn Fn(&Point) -> Option<f64>| -> Vec<(usize, Vec<(f64, f64)>)> {
            self.peers
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    (
                        i,
                        p.points
                            .iter()
                            .filter_map(|pt| get(pt).map(|v| (pt.size as f64, v)))
                            .collect::<Vec<_>>(),
                    )
                })
                .filter(|(_, v)| !v.is_empty())
                .collect()
        };
        let lat = series(&|p| p.latency_us);
        let bw = series(&|p| p.bandwidth_mbs);
        for (area, (title, data, unit)) in panels.iter().zip([
            ("latency (half round trip)", &lat, "us"),
            ("bandwidth (streaming)", &bw, "MB/s"),
        ]) {
            let ys: Vec<f64> = data
                .iter()
                .flat_map(|(_, v)| v.iter().map(|p| p.1))
                .filter(|y| *y > 0.0)
                .collect();
            if ys.is_empty() {
                continue;
            }
            let ymin = ys.iter().copied().fold(f64::INFINITY, f64::min) / 1.5;
            let ymax = ys.iter().copied().fold(0.0, f64::max) * 1.5;
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(56)
                .build_cartesian_2d(
                    (xmin / 1.5..xmax * 1.5)
                        .log_scale()
                        .with_key_points(self.sizes.iter().map(|&s| s as f64).collect()),
                    (ymin..ymax).log_scale(),
                )
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("message size (bytes)")
                .y_desc(unit)
                .x_label_formatter(&|x| size_name(x.round() as usize))
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, pts) in data.iter() {
                let c = colors[*i % colors.len()];
                // vmi: thick line, filled circles; peers: thin line, hollow triangles. Told
                // apart by marker as well as colour.
                let is_vmi = self.peers[*i].name.starts_with("vmi");
                let width = if is_vmi { 3 } else { 1 };
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(width)))
                    .map_err(|e| e.to_string())?
                    .label(self.peers[*i].name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(width))
                    });
                if is_vmi {
                    chart
                        .draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))
                        .map_err(|e| e.to_string())?;
                } else {
                    chart
                        .draw_series(
                            pts.iter()
                                .map(|p| TriangleMarker::new(*p, 5, c.stroke_width(1))),
                        )
                        .map_err(|e| e.to_string())?;
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UCX: &str = "+--------------+--------------+------------------------------+---------------------+-----------------------+
|    Stage     | # iterations | 50.0%ile | average | overall |  average |  overall |  average  |  overall  |
+--------------+--------------+----------+---------+---------+----------+----------+-----------+-----------+
Final:                  2000      7.233     7.460     7.460        1.02       1.02      134048      134048
";

    const FI: &str =
        "bytes   #sent   #ack     total       time     MB/sec    usec/xfer   Mxfers/sec
8       2k      =2k      31k         0.02s      1.40       5.70       0.18
";

    #[test]
    fn parses_the_peers_output() {
        let (lat, bw) = parse_ucx(UCX).unwrap();
        assert_eq!(lat, 7.460);
        assert!(
            (bw - 1.02 * 1.048_576).abs() < 1e-9,
            "MiB/s converted to MB/s"
        );
        assert_eq!(parse_fi(FI), Some(5.70));
        assert_eq!(parse_ucx("garbage"), None);
        assert_eq!(parse_fi("bytes usec/xfer\n"), None);
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(20_779), "2026-11-22");
        assert_eq!(civil_date(11_016), "2000-02-29");
    }

    #[test]
    fn table_ratios_and_targets() {
        // Three rounds of each peer, merged: medians, and the per-round ratios' range.
        let p = |name: &str, family, lat, bw| Peer {
            name: name.into(),
            family,
            points: vec![Point {
                size: 8,
                latency_us: Some(lat),
                bandwidth_mbs: Some(bw),
                ..Point::default()
            }],
            skipped: None,
        };
        let skipped = Peer {
            name: "ucx sm".into(),
            family: Family::Shm,
            points: vec![],
            skipped: Some("not installed".into()),
        };
        let rounds = vec![
            vec![
                p("vmi tcp", Family::Tcp, 5.0, 2.0),
                p("raw tcp", Family::Tcp, 4.0, 2.0),
                skipped.clone(),
            ],
            vec![
                p("vmi tcp", Family::Tcp, 6.0, 2.0),
                p("raw tcp", Family::Tcp, 4.0, 2.0),
                skipped.clone(),
            ],
            vec![
                p("vmi tcp", Family::Tcp, 4.0, 2.0),
                p("raw tcp", Family::Tcp, 4.0, 2.0),
                skipped,
            ],
        ];
        let c = Comparison {
            op: Op::Stream,
            sizes: vec![8],
            rounds: 3,
            host: "h".into(),
            started_unix_s: 0,
            peers: merge(&[8], rounds),
        };
        assert_eq!(
            c.peers[0].points[0].latency_us,
            Some(5.0),
            "median of 5, 6, 4"
        );
        let t = c.table();
        assert!(
            t.contains("raw tcp         4.00    1.25 [1.00-1.50]"),
            "{t}"
        );
        assert!(
            t.contains("3 interleaved round(s)") && t.contains("noise:"),
            "{t}"
        );
        assert!(t.contains("ucx sm    skipped: not installed"), "{t}");
        let targets = c.targets();
        assert!(
            targets[0].contains("1.25x [1.00-1.50] (target <= 1.15): NOT met"),
            "{targets:?}"
        );
        assert!(targets[1].contains("not measured"));
        assert!(
            targets[2].starts_with("TCP 1 MiB bandwidth") && targets[2].contains("not measured"),
            "only 8 B was measured: {targets:?}"
        );
    }
}
