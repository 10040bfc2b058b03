//! Two "hosts" on one machine (issue: launch and scale): two network namespaces joined by a
//! veth pair, each with its own address, loopback and abstract-socket space. `vmisend` in one
//! reaches `vmirecv` in the other over TCP through `shmem-tcp.xml` (shared memory cannot
//! cross), and a `vmi-alltoall` job with two ranks on each host uses shared memory within a
//! host and TCP between them. Needs root (CI runs as root); otherwise it says SKIPPED and why.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use vmi_tests::{Proc, bin, root, unique_key};

const T: Duration = Duration::from_secs(120);

/// Two namespaces `a` and `b` joined by veth, with 10.<x>.<y>.1 in `a` and .2 in `b`;
/// removed when dropped.
struct Hosts {
    a: String,
    b: String,
    ip_a: String,
    ip_b: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    fn new() -> Result<Hosts, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{n}", pid % 100_000);
        let h = Hosts {
            a: format!("vmia{tag}"),
            b: format!("vmib{tag}"),
            ip_a: format!("10.{}.{}.1", 100 + (pid % 100), n % 250),
            ip_b: format!("10.{}.{}.2", 100 + (pid % 100), n % 250),
        };
        let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
        ip(&["netns", "add", &h.a])?;
        // From here `h` is dropped on error, which removes what was made.
        ip(&["netns", "add", &h.b])?;
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        ip(&["link", "set", &va, "netns", &h.a])?;
        ip(&["link", "set", &vb, "netns", &h.b])?;
        for (ns, dev, addr) in [(&h.a, &va, &h.ip_a), (&h.b, &vb, &h.ip_b)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(h)
    }

    /// `program` with `args` in namespace `ns`.
    fn spawn(&self, ns: &str, program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(bin(program))
            .args(args)
            .env("VMI_SPECFILE", root().join("specfiles/shmem-tcp.xml"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn_command(program, cmd)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth pair, and with it the other.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

fn hosts_or_skip() -> Option<Hosts> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: creating network namespaces needs root");
        return None;
    }
    match Hosts::new() {
        Ok(h) => Some(h),
        Err(e) => {
            println!("SKIPPED: cannot create network namespaces here: {e}");
            None
        }
    }
}

#[test]
fn vmisend_reaches_vmirecv_on_another_host() {
    let Some(h) = hosts_or_skip() else { return };
    let key = unique_key("mh-recv");
    let r = h.spawn(
        &h.a,
        "vmirecv",
        &[&key, "-n", "3", "--verify", "-t", "60"],
        &[],
    );
    r.wait_for("waiting for connections", T);
    let s = h.spawn(
        &h.b,
        "vmisend",
        &[
            "--pattern",
            &unique_key("mh-send"),
            &key,
            &h.ip_a,
            "-n",
            "3",
            "-s",
            "1m",
            "-f",
            "4",
            "-t",
            "60",
        ],
        &[],
    );
    let (ok, out) = s.finish(T);
    assert!(ok, "{out}");
    assert!(
        out.contains("transport 'tcp' (tcp) can reach it")
            && out.contains(&format!("'{}' is not this machine", h.ip_a)),
        "shared memory must not claim another host:\n{out}"
    );
    let (ok, rout) = r.finish(T);
    assert!(ok && rout.contains("received 3 message(s)"), "{rout}");
}

#[test]
fn a_job_across_two_hosts_uses_shared_memory_within_each() {
    let Some(h) = hosts_or_skip() else { return };
    let job = unique_key("mh-job");
    let hosts = format!("{}*2,{}*2", h.ip_a, h.ip_b);
    let mut ranks: Vec<(u32, Proc)> = Vec::new();
    for r in (0..4u32).rev() {
        if r == 0 {
            // Rank 0's choice of transport is checked below: start it once the others
            // listen (a connect that finds no shared-memory peer yet goes over TCP).
            for (_, p) in &ranks {
                p.wait_for("tcp: key", T);
            }
        }
        let ns = if r < 2 { &h.a } else { &h.b };
        let rank = r.to_string();
        ranks.push((
            r,
            h.spawn(
                ns,
                "vmi-alltoall",
                &["--verify", "-n", "10", "--iters", "20", "-t", "100"],
                &[
                    ("VMI_PROCS", "4"),
                    ("VMI_RANK", &rank),
                    ("VMI_JOB", &job),
                    ("VMI_HOSTS", &hosts),
                    ("VMI_LOG", "info"),
                ],
            ),
        ));
    }
    let mut outs = Vec::new();
    for (r, p) in ranks {
        let (ok, out) = p.finish(T);
        assert!(ok, "rank {r}:\n{out}");
        outs.push((r, out));
    }
    let out0 = &outs.iter().find(|(r, _)| *r == 0).expect("rank 0").1;
    assert!(
        out0.contains("summary: 6 pair(s), 120 message(s), 120 verified, 0 bad"),
        "{out0}"
    );
    // Rank 0 reaches rank 1 (same host) over shared memory and ranks 2 and 3 over TCP.
    assert!(
        out0.contains(&format!("{job}.1@{}: transport 'shmem'", h.ip_a)),
        "{out0}"
    );
    for r in [2, 3] {
        assert!(
            out0.contains(&format!("{job}.{r}@{}: transport 'tcp'", h.ip_b)),
            "{out0}"
        );
    }
}

/// Rails over two veth pairs between the hosts, each shaped to 100 Mbit/s; the second
/// pair's link goes down mid-stream: the rail is found dead by its heartbeats (1 s here) and
/// the first carries on. Every message arrives once, verified, in order.
#[test]
fn a_rail_whose_link_goes_down_mid_stream_loses_nothing() {
    let Some(h) = hosts_or_skip() else { return };
    let n = h.a.trim_start_matches("vmia").to_string();
    let (va2, vb2) = (format!("vc{n}"), format!("vd{n}"));
    // The second pair's subnet: 172.<x>.<y> beside the first's 10.<x>.<y>.
    let second = h
        .ip_a
        .rsplit_once('.')
        .expect("dotted")
        .0
        .replacen("10.", "172.", 1);
    let (ip_a2, ip_b2) = (format!("{second}.1"), format!("{second}.2"));
    let setup = || -> Result<(), String> {
        ip(&["link", "add", &va2, "type", "veth", "peer", "name", &vb2])?;
        ip(&["link", "set", &va2, "netns", &h.a])?;
        ip(&["link", "set", &vb2, "netns", &h.b])?;
        for (ns, dev, addr) in [(&h.a, &va2, &ip_a2), (&h.b, &vb2, &ip_b2)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(())
    };
    if let Err(e) = setup() {
        println!("SKIPPED: cannot add the second veth pair: {e}");
        return;
    }
    let shape = |ns: &str, dev: &str| {
        Command::new("ip")
            .args([
                "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
            ])
            .args([
                "tbf", "rate", "100mbit", "burst", "256kb", "latency", "50ms",
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    let va1 = format!("va{n}");
    let vb1 = format!("vb{n}");
    if !(shape(&h.a, &va1) && shape(&h.b, &vb1) && shape(&h.a, &va2) && shape(&h.b, &vb2)) {
        println!("SKIPPED: tc cannot shape the veth links here");
        return;
    }
    let spec = root().join("specfiles/tcp-rails.xml");
    let spec = spec.to_str().expect("utf-8 path");
    let env = |a: &str, b: &str| -> Vec<(String, String)> {
        vec![
            ("VMI_SPECFILE".into(), spec.into()),
            ("VMI_TCP_A_LISTEN_ADDR".into(), a.into()),
            ("VMI_TCP_B_LISTEN_ADDR".into(), b.into()),
            ("VMI_TCP_A_PEER_TIMEOUT_MS".into(), "1000".into()),
            ("VMI_TCP_B_PEER_TIMEOUT_MS".into(), "1000".into()),
            ("VMI_LOG".into(), "info".into()),
        ]
    };
    let spawn = |ns: &str, program: &str, args: &[&str], env: Vec<(String, String)>| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(bin(program)).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn_command(program, cmd)
    };
    let key = unique_key("mh-rails-recv");
    let r = spawn(
        &h.a,
        "vmirecv",
        &[&key, "-n", "120", "--verify", "-t", "100"],
        env(&h.ip_a, &ip_a2),
    );
    r.wait_for("waiting for connections", T);
    let s = spawn(
        &h.b,
        "vmisend",
        &[
            "--pattern",
            &unique_key("mh-rails-send"),
            &key,
            &h.ip_a,
            "-n",
            "120",
            "-s",
            "256k",
            "-t",
            "100",
        ],
        env(&h.ip_b, &ip_b2),
    );
    // 30 MiB at 2 x 100 Mbit/s take more than a second: the second link fails during it.
    r.wait_for("rail 'tcp_b'", T);
    std::thread::sleep(Duration::from_millis(400));
    ip(&["-n", &h.a, "link", "set", &va2, "down"]).expect("link down");
    let (ok, out) = s.finish(T);
    assert!(ok, "{out}");
    let (ok, rout) = r.finish(T);
    assert!(ok && rout.contains("received 120 message(s)"), "{rout}");
    assert!(
        out.contains("rail 'tcp_b' closed") || rout.contains("rail 'tcp_b' closed"),
        "the rail was found dead and the connection went on:\n{out}\n{rout}"
    );
}
