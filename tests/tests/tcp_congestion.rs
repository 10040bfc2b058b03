//! Same-host TCP connections get congestion control `local_congestion` (reno by default):
//! on loopback there is no network to share, and a pacing algorithm (BBR, where it is the
//! system's) spends the sending core on pacing timers. Checked through the tcp attribute
//! `local_congestion_sockets` and in the kernel itself: every connected TCP socket of this
//! process is looked at with `getsockopt(TCP_CONGESTION)` on a duplicate of its descriptor.
//! One test in this file, so no other test's sockets are in the process meanwhile.

use vmi_conformance::pair::{Dev, Pair, spec};
use vmi_core::prelude::*;
use vmi_tests::register_all;

fn attr(vmi: &Vmi, name: &str) -> u64 {
    vmi.attr_get("tcp", name)
        .unwrap_or_else(|e| panic!("tcp has attribute {name}: {e}"))
        .parse()
        .expect("a number")
}

/// The congestion control of every connected TCP socket of this process, as the kernel
/// reports it (each looked at through a duplicate taken with `pidfd_getfd`); `Err` with the
/// reason when this process cannot duplicate its own descriptors that way (a kernel before
/// 5.6, or a seccomp filter that forbids it).
fn connected_tcp_congestion() -> Result<Vec<String>, String> {
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
    use std::os::fd::AsRawFd;
    let me = pidfd_open(getpid(), PidfdFlags::empty()).map_err(|e| format!("pidfd_open: {e}"))?;
    let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    pidfd_getfd(&me, probe.as_raw_fd(), PidfdGetfdFlags::empty())
        .map_err(|e| format!("pidfd_getfd: {e}"))?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").map_err(|e| e.to_string())? {
        let Some(fd) = entry
            .ok()
            .and_then(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        else {
            continue;
        };
        // Closed since the listing: not a connection of the pair.
        let Ok(dup) = pidfd_getfd(&me, fd, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let connected = rustix::net::getpeername(&dup).is_ok_and(|p| p.is_some());
        if let (true, Ok(cc)) = (connected, rustix::net::sockopt::tcp_congestion(&dup)) {
            found.push(cc);
        }
    }
    Ok(found)
}

/// Checks that the kernel reports `want` connected TCP sockets in this process, each with a
/// congestion control `ok` takes; says SKIPPED and why when the kernel cannot be asked.
fn kernel_has(label: &str, want: usize, ok: impl Fn(&str) -> bool) {
    match connected_tcp_congestion() {
        Ok(ccs) => {
            assert_eq!(ccs.len(), want, "{label}: connected sockets {ccs:?}");
            assert!(ccs.iter().all(|c| ok(c)), "{label}: {ccs:?}");
        }
        Err(why) => println!("SKIPPED the kernel check ({label}): {why}"),
    }
}

/// A pair of vmi over 127.0.0.1 with tcp parameters `params` on both sides, its lanes (if
/// any) attached, and one message each way.
fn pair(params: &[(&str, &str)], label: &str, lanes: u64) -> Pair {
    register_all();
    let mut dev = Dev::new("tcp", "tcp");
    for (k, v) in params {
        dev = dev.param(k, v);
    }
    let mut p = Pair::new(spec(&[], &dev), spec(&[], &dev), label.into(), false);
    p.pump(|p| attr(&p.a, "lanes") == lanes && attr(&p.b, "lanes") == lanes);
    let (ab, ba) = (p.conn(), p.conn_b());
    p.a.send(ab, [Buffer::from_vec(b"there".to_vec())], 1)
        .expect("send");
    p.b.send(ba, [Buffer::from_vec(b"back".to_vec())], 2)
        .expect("send back");
    p.pump(|p| p.ha.received.len() == 1 && p.hb.received.len() == 1);
    assert_eq!(p.hb.received[0].1, b"there", "{label}");
    assert_eq!(p.ha.received[0].1, b"back", "{label}");
    p
}

#[test]
fn same_host_connections_get_local_congestion_and_the_kernel_has_it() {
    let system = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    println!("the system's congestion control: {system:?}");

    // The default: each side's one socket, and with lanes each lane's too.
    for (lanes, want) in [("1", 1), ("2", 2)] {
        let label = format!("default, lanes {lanes}");
        let p = pair(&[("lanes", lanes)], &label, want - 1);
        assert_eq!(
            (
                attr(&p.a, "local_congestion_sockets"),
                attr(&p.b, "local_congestion_sockets")
            ),
            (want, want),
            "{label}: sockets given local_congestion on each side"
        );
        kernel_has(&label, 2 * want as usize, |c| c == "reno");
    }

    // Empty: the system's, and none counted.
    let p = pair(&[("local_congestion", "")], "empty", 0);
    assert_eq!(
        (
            attr(&p.a, "local_congestion_sockets"),
            attr(&p.b, "local_congestion_sockets")
        ),
        (0, 0)
    );
    if system.is_empty() || system == "reno" {
        println!("the system's is reno (or unknown): the kernel check cannot tell them apart");
        kernel_has("empty", 2, |_| true);
    } else {
        kernel_has("empty", 2, |c| c == system);
    }
    drop(p);

    // A name the kernel refuses is refused at start, with the remedy.
    let e = vmi_tests::tcp_start_error("local_congestion", "no-such-cc");
    assert!(
        e.contains("'local_congestion'") && e.contains("reno always is"),
        "{e}"
    );
}
