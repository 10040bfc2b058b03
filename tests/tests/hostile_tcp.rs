//! Hostile TCP peers (issue: hostile input), each written here with raw sockets against a
//! real `vmirecv`: frame headers that promise 256 MiB, more connections than allowed, a
//! descriptor limit reached, a scanner guessing keys, a second process with the same key, an
//! over-limit hello. Each asserts the victim survives with bounded memory and keeps serving
//! good peers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::Duration;

use vmi_core::Disconnect;
use vmi_core::prelude::*;
use vmi_tcp::wire::{ANSWER_LEN, AnswerRepr, AnswerStatus, FrameRepr, HelloRepr};
use vmi_tests::{Proc, root, tcp_frame, unique_key};

const T: Duration = Duration::from_secs(60);

fn spec() -> PathBuf {
    root().join("specfiles/tcp.xml")
}

fn receiver(key: &str, n: &str, env: &[(&str, &str)]) -> Proc {
    let p = Proc::spawn("vmirecv", &[key, "--timeout", "60", "-n", n], &spec(), env);
    p.wait_for("waiting for connections", T);
    p
}

fn good_sender(recv_key: &str) -> (bool, String) {
    let key = unique_key("good");
    Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &key,
            recv_key,
            "localhost",
            "--timeout",
            "30",
            "-q",
        ],
        &spec(),
        &[],
    )
    .finish(T)
}

fn port_of(p: &Proc) -> u16 {
    let out = p.wait_for("listening on", T);
    let line = out.lines().find(|l| l.contains("listening on")).unwrap();
    line.rsplit(':').next().unwrap().trim().parse().unwrap()
}

/// Makes the child start with these soft and hard limits on open descriptors.
fn nofile(cmd: &mut std::process::Command, soft: u64, hard: u64) {
    // SAFETY: setrlimit is async-signal-safe; the child runs nothing else before exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The largest resident set the process has had, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Reads one answer (status and reason) from a raw connection.
fn read_answer(s: &mut TcpStream) -> Option<(u8, String)> {
    read_answer_within(s, Duration::from_secs(10))
}

fn read_answer_within(s: &mut TcpStream, t: Duration) -> Option<(u8, String)> {
    s.set_read_timeout(Some(t)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if got.len() >= ANSWER_LEN {
            let a = AnswerRepr::parse(got[..ANSWER_LEN].try_into().unwrap(), 1 << 20).ok()?;
            let need = ANSWER_LEN + a.reason_len as usize + a.reply_len as usize;
            if got.len() >= need {
                let reason = &got[ANSWER_LEN..ANSWER_LEN + a.reason_len as usize];
                return Some((a.status as u8, String::from_utf8_lossy(reason).into_owned()));
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn frame_headers_promising_256_mib_commit_no_memory() {
    let key = unique_key("victim");
    let r = receiver(&key, "1", &[]);
    let port = port_of(&r);
    let mut attackers = Vec::new();
    for i in 0..6 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&HelloRepr::emit(
            &format!("bloat-{i}"),
            &key,
            "send=;recv=",
            b"",
        ))
        .unwrap();
        let (status, _) = read_answer(&mut s).expect("accepted");
        assert_eq!(status, AnswerStatus::Accept as u8);
        let header = FrameRepr {
            end: true,
            filter_flags: 0,
            len: 256 << 20,
        }
        .emit();
        s.write_all(&header).unwrap();
        s.write_all(&[0u8; 16]).unwrap();
        attackers.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let peak = peak_rss_kib(r.pid());
    assert!(
        peak < 64 * 1024,
        "six 256 MiB promises took the receiver to {peak} KiB"
    );
    drop(attackers);
    let (ok, out) = good_sender(&key);
    assert!(ok, "{out}");
    assert!(r.finish(T).0);
}

#[test]
fn a_wrong_key_answer_does_not_reveal_the_key() {
    let key = unique_key("secret-key");
    let r = receiver(&key, "1", &[]);
    let port = port_of(&r);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&HelloRepr::emit("scanner", "guess", "send=;recv=", b""))
        .unwrap();
    let (status, reason) = read_answer(&mut s).expect("an answer");
    assert_eq!(status, AnswerStatus::WrongKey as u8);
    assert!(!reason.contains(&key), "the answer leaks the key: {reason}");
    assert!(reason.contains("'guess'"), "{reason}");
    let (ok, out) = good_sender(&key);
    assert!(ok, "{out}");
    assert!(r.finish(T).0);
}

#[test]
fn connections_over_the_cap_are_told_busy_and_serving_goes_on() {
    let key = unique_key("capped");
    let r = receiver(&key, "1", &[("VMI_TCP_MAX_CONNECTIONS", "4")]);
    let port = port_of(&r);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (status, reason) = read_answer(&mut extra).expect("a busy answer");
    assert_eq!(status, AnswerStatus::Busy as u8);
    assert!(reason.contains("max_connections"), "{reason}");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let (ok, out) = good_sender(&key);
    assert!(ok, "{out}");
    assert!(r.finish(T).0);
}

#[test]
fn accepting_resumes_after_the_descriptor_limit() {
    let key = unique_key("fdlimit");
    // Soft and hard limit 64: vmi cannot raise it, and 300 connections exhaust it.
    let r = Proc::spawn_with(
        "vmirecv",
        &[&key, "--timeout", "60", "-n", "4"],
        &spec(),
        &[],
        |cmd| nofile(cmd, 64, 64),
    );
    r.wait_for("waiting for connections", T);
    let port = port_of(&r);
    let mut flood = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => flood.push(s),
            Err(_) => break,
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let busy = flood
        .iter_mut()
        .rev()
        .take(20)
        .filter_map(|s| read_answer_within(s, Duration::from_millis(100)))
        .count();
    drop(flood);
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..4 {
        let (ok, out) = good_sender(&key);
        assert!(ok, "good sender {i} after the flood: {out}");
    }
    let (ok, out) = r.finish(T);
    assert!(ok, "{out}");
    assert!(busy > 0 || out.contains("out of file descriptors"), "{out}");
}

#[test]
fn a_second_process_with_the_same_key_refuses_to_start() {
    let key = unique_key("dupkey");
    let r = receiver(&key, "1", &[]);
    let (ok, out) = Proc::spawn("vmirecv", &[&key, "--timeout", "5"], &spec(), &[]).finish(T);
    assert!(!ok, "{out}");
    assert!(out.contains("already listens with key"), "{out}");
    let (ok, out) = good_sender(&key);
    assert!(ok, "{out}");
    assert!(r.finish(T).0);
}

#[test]
fn a_sender_does_not_listen_and_an_over_limit_hello_is_answered() {
    let key = unique_key("limits");
    let r = receiver(&key, "1", &[("VMI_TCP_MAX_CONNECT_DATA", "32")]);
    let skey = unique_key("big-hello");
    let (ok, out) = Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &skey,
            &key,
            "localhost",
            "--timeout",
            "10",
            "--cookie",
            &"c".repeat(100),
        ],
        &spec(),
        &[],
    )
    .finish(T);
    assert!(!ok, "{out}");
    assert!(
        out.contains("found our hello invalid") && out.contains("over the limit"),
        "the sender hears why, not 'nobody listens': {out}"
    );
    assert!(
        !out.contains("listening on"),
        "vmisend accepts nothing, so it must not listen: {out}"
    );
    drop(r);
}

/// A link cut without a word (a proxy that stops forwarding but keeps both sockets open, so
/// the kernels see nothing wrong): both sides notice through heartbeats within the peer
/// timeout and report it, instead of waiting for the application's own timeout.
#[test]
fn a_silently_cut_link_is_noticed_on_both_sides() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let key = unique_key("cut");
    let env = [("VMI_TCP_PEER_TIMEOUT_MS", "1500")];
    let r = receiver(&key, "0", &env);
    let port = port_of(&r);
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = proxy.local_addr().unwrap().port();
    let cut = Arc::new(AtomicBool::new(false));
    let cut2 = cut.clone();
    std::thread::spawn(move || {
        let (down, _) = proxy.accept().unwrap();
        let up = TcpStream::connect(("127.0.0.1", port)).unwrap();
        for (mut from, mut to) in [
            (down.try_clone().unwrap(), up.try_clone().unwrap()),
            (up, down),
        ] {
            let cut = cut2.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let mut silent_ticks = 0;
                loop {
                    if cut.load(Ordering::Relaxed) {
                        // Keep the sockets open, move nothing: a silent link (for a minute).
                        std::thread::sleep(Duration::from_millis(100));
                        silent_ticks += 1;
                        if silent_ticks > 600 {
                            return;
                        }
                        continue;
                    }
                    match from.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    let s = Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &unique_key("cut-send"),
            &key,
            &format!("127.0.0.1:{proxy_port}"),
            "-n",
            "100000000",
            "-s",
            "1k",
            "-t",
            "60",
        ],
        &spec(),
        &env,
    );
    s.wait_for("connected to", T);
    std::thread::sleep(Duration::from_millis(300));
    cut.store(true, Ordering::Relaxed);
    let cut_at = std::time::Instant::now();
    let (ok, out) = s.finish(T);
    let took = cut_at.elapsed();
    assert!(!ok && out.contains("heard nothing from"), "{out}");
    // Not a performance assertion: the application's own timeout is 60 s; the peer timeout
    // is 1.5 s (plus the time for the proxy's buffers to stop draining).
    assert!(
        took < Duration::from_secs(30),
        "noticed only after {took:?}"
    );
    r.wait_for("heard nothing from", T);
}

/// At start vmi raises the soft descriptor limit to the hard one, and says so.
#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let key = unique_key("rlimit");
    let r = Proc::spawn_with(
        "vmirecv",
        &[&key, "--timeout", "30", "-n", "1"],
        &spec(),
        &[("VMI_LOG", "info")],
        |cmd| nofile(cmd, 64, 4096),
    );
    r.wait_for(
        "raised the open-descriptor limit from 64 to its hard limit 4096",
        T,
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", r.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(line.contains("4096                 4096"), "{line}");
    let (ok, out) = good_sender(&key);
    assert!(ok, "{out}");
    assert!(r.finish(T).0);
}

/// What a busy-polling victim in this process saw: each connection's messages, and how
/// connections ended.
#[derive(Default)]
struct Victim {
    messages: Vec<(ConnId, Vec<u8>)>,
    ended: Vec<(ConnId, Disconnect)>,
}

impl Handler for Victim {
    fn receive(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, _cmd: Recv, slab: &mut Slab<'_>) {
        self.messages.push((conn, slab.read_to_vec()));
    }
    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, reason: Disconnect) {
        self.ended.push((conn, reason));
    }
}

/// Peers that turn hostile on an open connection, against a victim that busy-polls with its
/// sockets lent to the host (its poll reads them itself and takes whole small frames): what
/// came before the bad frame is delivered whole and in order, the bad frame ends that
/// connection with the reason, and the victim goes on serving another peer. Each bad frame
/// is written in the same write as good ones, so the host's reader meets it first.
#[test]
fn a_peer_turning_hostile_on_an_open_connection_meets_the_hosts_checks() {
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "an unknown frame kind",
            vec![9, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4],
        ),
        (
            "a length of 4 GiB",
            FrameRepr {
                end: true,
                filter_flags: 0,
                len: u32::MAX,
            }
            .emit()
            .to_vec(),
        ),
        (
            "a handshake message again",
            HelloRepr::emit("again", "x", "send=;recv=", b""),
        ),
        ("a header cut by the end of the stream", vec![2, 0, 0, 0, 8]),
    ];
    for (what, bad) in cases {
        let key = unique_key("lent-victim");
        let (mut vmi, port) = vmi_tests::tcp_on_free_port(&key);
        let mut h = Victim::default();
        // The burst must meet the host's reader, not the transport's own poll (which reads
        // the socket itself once in 64 of the host's polls): a burst the transport read is
        // played again on a new connection, up to five times.
        let mut met_by_host = false;
        for attempt in 0..5 {
            h.messages.clear();
            h.ended.clear();
            let mut s = vmi_tests::tcp_raw_peer(&mut vmi, &mut h, port, &key, "turncoat");
            // Some polls with nothing to read: the socket is lent to the host by now.
            for _ in 0..200 {
                vmi.poll(&mut h);
            }
            let taken_before: u64 = vmi.attr_get("tcp", "lent_taken").unwrap().parse().unwrap();
            let mut burst = Vec::new();
            for i in 0..20u8 {
                burst.extend_from_slice(&tcp_frame(true, &[i; 12]));
            }
            burst.extend_from_slice(&bad);
            burst.extend_from_slice(&tcp_frame(true, b"never delivered"));
            s.write_all(&burst).unwrap();
            if what.contains("end of the stream") {
                s.shutdown(std::net::Shutdown::Write).unwrap();
            }
            let deadline = std::time::Instant::now() + T;
            while h.ended.is_empty() {
                vmi.poll(&mut h);
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: the connection goes on"
                );
            }
            let got: Vec<&[u8]> = h.messages.iter().map(|(_, m)| m.as_slice()).collect();
            let want: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 12]).collect();
            assert_eq!(
                got, want,
                "{what}: what came before, whole and in order, nothing after"
            );
            match &h.ended[0].1 {
                Disconnect::Error { detail, .. } => {
                    assert!(!detail.is_empty(), "{what}: a reason")
                }
                other => panic!("{what}: ended as {other:?}, not as an error"),
            }
            let taken: u64 = vmi.attr_get("tcp", "lent_taken").unwrap().parse().unwrap();
            if taken > taken_before {
                met_by_host = true;
                break;
            }
            eprintln!("{what}: attempt {attempt}: the transport read the burst itself; again");
        }
        assert!(
            met_by_host,
            "{what}: the host's reader took none of the good frames in five attempts"
        );
        // Another peer is served.
        let mut good = vmi_tests::tcp_raw_peer(&mut vmi, &mut h, port, &key, "good");
        good.write_all(&tcp_frame(true, b"still serving")).unwrap();
        let deadline = std::time::Instant::now() + T;
        while h.messages.last().map(|(_, m)| m.as_slice()) != Some(b"still serving".as_slice()) {
            vmi.poll(&mut h);
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: the good peer is not served"
            );
        }
    }
}
