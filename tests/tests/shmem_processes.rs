//! The shared-memory transport between real processes (vmisend/vmirecv), and two endpoints
//! sending to each other at once in one process. Every child is killed when its test ends.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vmi_core::Operations;

use vmi_core::{Buffer, ConnId, ConnectOutcome, Ctx, Handler, Recv, SendCompletion, Slab, Vmi};
use vmi_tests::harness::{Mode, dev, spec};
use vmi_tests::{Proc, bin, register_all, root, unique_key};

const T: Duration = Duration::from_secs(120);

fn shm_spec() -> PathBuf {
    root().join("specfiles/shmem.xml")
}

fn recv(key: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut args = vec![key, "--timeout", "100"];
    args.extend_from_slice(extra);
    let p = Proc::spawn("vmirecv", &args, &shm_spec(), env);
    p.wait_for("waiting for connections", T);
    p
}

fn send(recv_key: &str, extra: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let key = unique_key("shm-send");
    let mut args = vec![
        "--pattern",
        key.as_str(),
        recv_key,
        "localhost",
        "--timeout",
        "100",
    ];
    args.extend_from_slice(extra);
    Proc::spawn("vmisend", &args, &shm_spec(), env).finish(T)
}

fn dev_shm() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn every_size_both_modes_verified() {
    let runs: &[(&str, &str)] = &[
        ("0", "1"),
        ("1", "1"),
        ("4099", "16"),
        ("1m", "1"),
        ("1m", "16"),
        ("256m", "1"),
    ];
    for (mode, env) in [
        ("single copy", [("VMI_SHMEM_SINGLE_COPY", "true")]),
        ("pipelined", [("VMI_SHMEM_SINGLE_COPY", "false")]),
    ] {
        let key = unique_key("shm-recv");
        let r = recv(
            &key,
            &[
                "--verify",
                "-q",
                "-n",
                &runs.len().to_string(),
                "--cookie",
                "s3cret",
            ],
            &env,
        );
        for (size, frags) in runs {
            let (ok, out) = send(
                &key,
                &[
                    "-s", size, "-f", frags, "-n", "1", "--cookie", "s3cret", "-q",
                ],
                &env,
            );
            assert!(ok, "{mode} {size} x{frags}: {out}");
        }
        let (ok, out) = r.finish(T);
        assert!(
            ok && out.contains(&format!("received {} message(s)", runs.len())),
            "{mode}: {out}"
        );
        let expect = if mode == "pipelined" {
            "copied through the ring"
        } else {
            "single copy"
        };
        assert!(
            out.contains(expect) || mode == "pipelined",
            "{mode}: the mode is reported: {out}"
        );
    }
}

#[test]
fn connect_data_accept_reject_and_sixty_four_connections() {
    let key = unique_key("shm-recv");
    let r = recv(&key, &["--reject"], &[]);
    let (ok, out) = send(&key, &[], &[]);
    assert!(
        !ok && out.contains("rejected the connection (reply: 'rejected by vmirecv --reject')"),
        "{out}"
    );
    assert!(r.finish(T).0);

    let key = unique_key("shm-recv");
    let r = recv(&key, &["--verify", "-q", "-n", "128", "--cookie", "c"], &[]);
    let (ok, out) = send(
        &key,
        &[
            "-c", "64", "-n", "2", "-s", "10000", "-f", "2", "--cookie", "c", "-q",
        ],
        &[],
    );
    assert!(ok, "{out}");
    let (ok, out) = r.finish(T);
    assert!(ok && out.contains("received 128 message(s)"), "{out}");
}

#[test]
fn killing_either_side_is_reported_and_leaves_nothing_behind() {
    let before = dev_shm();
    // The receiver dies: the sender fails with a one-line cause.
    let key = unique_key("shm-recv");
    let mut r = recv(&key, &["-n", "0"], &[]);
    let skey = unique_key("shm-send");
    let s = Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &skey,
            &key,
            "localhost",
            "-s",
            "8m",
            "-f",
            "4",
            "-n",
            "100000",
            "--timeout",
            "100",
        ],
        &shm_spec(),
        &[],
    );
    r.wait_for("message 2 from", T);
    r.kill();
    let (ok, out) = s.finish(Duration::from_secs(30));
    assert!(
        !ok && (out.contains("connection lost") || out.contains("send failed")),
        "{out}"
    );
    assert!(
        out.contains("exited or was killed") || out.contains("connection lost"),
        "{out}"
    );

    // The sender dies mid-message: the receiver reports it and keeps serving.
    let key = unique_key("shm-recv");
    let r = recv(
        &key,
        &["-n", "1", "--verify"],
        &[
            ("VMI_SHMEM_SINGLE_COPY", "false"),
            ("VMI_SHMEM_RING_SIZE", "4k"),
        ],
    );
    let skey = unique_key("shm-send");
    let mut s = Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &skey,
            &key,
            "localhost",
            "-s",
            "64m",
            "-n",
            "50",
            "--timeout",
            "100",
        ],
        &shm_spec(),
        &[
            ("VMI_SHMEM_SINGLE_COPY", "false"),
            ("VMI_SHMEM_RING_SIZE", "4k"),
        ],
    );
    s.wait_for("connected to", T);
    std::thread::sleep(Duration::from_millis(200));
    s.kill();
    r.wait_for("the peer process exited or was killed", T);
    let (ok, out) = send(
        &key,
        &["-s", "1k"],
        &[
            ("VMI_SHMEM_SINGLE_COPY", "false"),
            ("VMI_SHMEM_RING_SIZE", "4k"),
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = r.finish(T);
    assert!(ok, "{out}");
    assert_eq!(dev_shm(), before, "nothing left in /dev/shm");
}

#[test]
fn another_user_is_refused() {
    if effective_uid() != 0 {
        println!("SKIPPED: refusing another uid needs root to run a process as another user");
        return;
    }
    let key = unique_key("shm-recv");
    let r = recv(&key, &["-n", "1"], &[]);
    let intruder = bin("shm-intruder");
    let out = std::process::Command::new(intruder)
        .arg(format!("vmi-shmem.0.{key}"))
        .uid(65534)
        .gid(65534)
        .output();
    let out = match out {
        Ok(o) => {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        }
        Err(e) => {
            println!("SKIPPED: cannot run a process as uid 65534: {e}");
            return;
        }
    };
    assert!(
        out.contains("closed by the listener") || out.contains("Connection reset"),
        "{out}"
    );
    r.wait_for("refused a connection from uid 65534", T);
    let (ok, out) = send(&key, &[], &[]);
    assert!(ok, "the receiver keeps serving its own user: {out}");
    assert!(r.finish(T).0);
}

fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(1)
}

/// Sends `count` messages of `size` and expects as many back, while the peer does the same.
#[derive(Default)]
struct Both {
    conn: Option<ConnId>,
    got: Vec<Vec<u8>>,
    done: usize,
}

impl Handler for Both {
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        assert!(matches!(o, ConnectOutcome::Accepted(_)));
        self.conn = Some(conn);
    }
    fn accept(
        &mut self,
        _ctx: &mut Ctx<'_>,
        req: &mut vmi_core::ConnectRequest<'_>,
    ) -> vmi_core::Decision {
        self.conn = Some(req.conn);
        vmi_core::Decision::Accept(vec![])
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        assert_eq!(cmd, Recv::End);
        self.got.push(slab.read_to_vec());
    }
    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, done: &mut SendCompletion<'_>) {
        assert!(done.status.is_ok(), "{}: {}", done.status, done.detail);
        self.done += 1;
    }
}

#[test]
fn both_sides_sending_at_once_with_full_rings_do_not_deadlock() {
    register_all();
    for single in ["true", "false"] {
        let t = dev(
            "t",
            "shmem",
            &[
                ("ring_size", "4k"),
                ("single_copy", single),
                ("single_copy_min", "8k"),
            ],
        );
        let (ka, kb) = (unique_key("both-a"), unique_key("both-b"));
        let (sa, sb) = (spec(&[], &t, Mode::Static), spec(&[], &t, Mode::Static));
        const N: usize = 40;
        let msg = |side: u8, i: usize| -> Vec<u8> {
            (0..20_000 + i * 97)
                .map(|k| (k as u8).wrapping_add(side).wrapping_add(i as u8))
                .collect()
        };
        let kb2 = kb.clone();
        let b = std::thread::spawn(move || {
            let mut vmi = Vmi::with_spec(sb, &kb2).unwrap();
            let mut h = Both::default();
            let start = Instant::now();
            while h.conn.is_none() {
                vmi.poll(&mut h);
                assert!(start.elapsed() < Duration::from_secs(20), "no connection");
            }
            for i in 0..N {
                vmi.send(h.conn.unwrap(), [Buffer::from(msg(2, i))], 0)
                    .unwrap();
            }
            while h.got.len() < N || h.done < N {
                vmi.poll(&mut h);
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "deadlock: b got {} sent {}",
                    h.got.len(),
                    h.done
                );
            }
            for _ in 0..1000 {
                vmi.poll(&mut h);
            }
            h.got
        });
        let mut vmi = Vmi::with_spec(sa, &ka).unwrap();
        let mut h = Both::default();
        let start = Instant::now();
        while vmi.connect("localhost", &kb, b"", 0).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "b never listened"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        while h.conn.is_none() {
            vmi.poll(&mut h);
        }
        for i in 0..N {
            vmi.send(h.conn.unwrap(), [Buffer::from(msg(1, i))], 0)
                .unwrap();
        }
        while h.got.len() < N || h.done < N {
            vmi.poll(&mut h);
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "deadlock: a got {} sent {}",
                h.got.len(),
                h.done
            );
        }
        for _ in 0..1000 {
            vmi.poll(&mut h);
        }
        let got_b = b.join().unwrap();
        for (i, (from_b, from_a)) in h.got.iter().zip(&got_b).enumerate() {
            assert_eq!(*from_b, msg(2, i), "single_copy={single}: a's message {i}");
            assert_eq!(*from_a, msg(1, i), "single_copy={single}: b's message {i}");
        }
    }
}

#[test]
fn each_connection_takes_the_first_transport_that_reaches_the_peer() {
    let both = root().join("specfiles/shmem-tcp.xml");
    let tcp_only = root().join("specfiles/tcp.xml");
    // A peer with shared memory: the connection goes over shmem.
    let key = unique_key("pick-recv");
    let r = Proc::spawn(
        "vmirecv",
        &[&key, "-n", "1", "--verify", "--timeout", "100"],
        &both,
        &[],
    );
    r.wait_for("waiting for connections", T);
    let (ok, out) = Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &unique_key("pick-send"),
            &key,
            "localhost",
            "-s",
            "100k",
        ],
        &both,
        &[],
    )
    .finish(T);
    assert!(ok, "{out}");
    assert!(
        out.contains("transport 'shmem' (shmem) can reach it"),
        "the choice is logged: {out}"
    );
    assert!(r.finish(T).0);
    // A peer that only speaks TCP: the same binary and specfile fall back to TCP, and the log
    // says why shared memory was passed over.
    let key = unique_key("pick-recv");
    let r = Proc::spawn(
        "vmirecv",
        &[&key, "-n", "1", "--verify", "--timeout", "100"],
        &tcp_only,
        &[],
    );
    r.wait_for("waiting for connections", T);
    let (ok, out) = Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &unique_key("pick-send"),
            &key,
            "localhost",
            "-s",
            "100k",
        ],
        &both,
        &[],
    )
    .finish(T);
    assert!(ok, "{out}");
    assert!(out.contains("transport 'tcp' (tcp) can reach it"), "{out}");
    assert!(
        out.contains("transport 'shmem' was passed over: no process of uid"),
        "{out}"
    );
    let (ok, out) = r.finish(T);
    assert!(ok && out.contains("verified"), "{out}");
}
