//! vmisend and vmirecv as two real processes over TCP on 127.0.0.1, for every shipped TCP
//! specfile. Every process is killed when its test ends (see `Proc`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmi_tests::{Proc, root, unique_key};

const T: Duration = Duration::from_secs(60);

fn tcp_specs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("specfiles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name().unwrap().to_string_lossy().starts_with("tcp")
                && p.extension().is_some_and(|x| x == "xml")
        })
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

fn recv(spec: &Path, key: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut args = vec![key, "--timeout", "60"];
    args.extend_from_slice(extra);
    let p = Proc::spawn("vmirecv", &args, spec, env);
    p.wait_for("waiting for connections", T);
    p
}

fn send(spec: &Path, recv_key: &str, extra: &[&str]) -> (bool, String) {
    let key = unique_key("send");
    let mut args = vec![
        "--pattern",
        key.as_str(),
        recv_key,
        "localhost",
        "--timeout",
        "60",
    ];
    args.extend_from_slice(extra);
    Proc::spawn("vmisend", &args, spec, &[]).finish(T)
}

#[test]
fn messages_of_every_size_and_fragment_count_arrive_verified() {
    let runs: &[(&str, &str)] = &[
        ("0", "1"),
        ("1", "1"),
        ("4099", "1"),
        ("4099", "16"),
        ("1m", "16"),
        ("64m", "1"),
        ("64m", "16"),
    ];
    for spec in tcp_specs() {
        let key = unique_key("recv");
        let total = runs.len() * 2;
        let r = recv(
            &spec,
            &key,
            &[
                "--verify",
                "-n",
                &total.to_string(),
                "--cookie",
                "open-sesame",
            ],
            &[],
        );
        for (size, frags) in runs {
            let (ok, out) = send(
                &spec,
                &key,
                &[
                    "-s",
                    size,
                    "-f",
                    frags,
                    "-n",
                    "2",
                    "--cookie",
                    "open-sesame",
                ],
            );
            assert!(ok, "{}: size {size} x{frags}: {out}", spec.display());
        }
        let (ok, out) = r.finish(T);
        assert!(ok, "{}: {out}", spec.display());
        assert!(out.contains("connect data: 'open-sesame'"), "{out}");
        assert!(
            out.contains("67108864 bytes in 16 fragment(s), verified"),
            "{out}"
        );
        assert!(out.contains("0 bytes in 1 fragment(s), verified"), "{out}");
        assert!(
            out.contains(&format!("received {total} message(s)")),
            "{out}"
        );
    }
}

#[test]
fn rejected_connections_and_wrong_cookies_fail_the_sender() {
    for spec in tcp_specs() {
        let key = unique_key("recv");
        let r = recv(&spec, &key, &["--reject"], &[]);
        let (ok, out) = send(&spec, &key, &[]);
        assert!(!ok, "vmisend must fail on rejection: {out}");
        assert!(out.contains("vmisend: error: the receiver rejected the connection (reply: 'rejected by vmirecv --reject')"), "{out}");
        assert!(r.finish(T).0);

        let key = unique_key("recv");
        let r = recv(&spec, &key, &["--cookie", "right", "-n", "1"], &[]);
        let (ok, out) = send(&spec, &key, &["--cookie", "wrong"]);
        assert!(!ok && out.contains("wrong cookie 'wrong'"), "{out}");
        let (ok, out) = send(&spec, &key, &["--cookie", "right"]);
        assert!(ok, "{out}");
        assert!(r.finish(T).0);
    }
}

#[test]
fn an_absent_receiver_is_reported_at_once() {
    let spec = &tcp_specs()[0];
    let (ok, out) = send(spec, &unique_key("nobody"), &[]);
    assert!(!ok);
    assert!(
        out.contains("peer unreachable: no process with key"),
        "{out}"
    );
}

#[test]
fn mismatched_filter_chains_are_refused_naming_both_sides() {
    let specs = tcp_specs();
    let plain = specs.iter().find(|p| p.ends_with("tcp.xml")).unwrap();
    let filtered = specs
        .iter()
        .find(|p| p.ends_with("tcp-skeleton.xml"))
        .unwrap();
    let key = unique_key("recv");
    let r = recv(filtered, &key, &["-n", "1"], &[]);
    let (ok, out) = send(plain, &key, &[]);
    assert!(!ok);
    assert!(
        out.contains("filter chains do not match")
            && out.contains(&format!("'{key}' sends through [skeleton@0]")),
        "{out}"
    );
    drop(r);
}

#[test]
fn two_hundred_fifty_six_connections_from_one_process() {
    let spec = &tcp_specs()[0];
    let key = unique_key("recv");
    let r = recv(spec, &key, &["-q", "--verify", "-n", "512"], &[]);
    let (ok, out) = send(
        spec,
        &key,
        &["-c", "256", "-n", "2", "-s", "3000", "-f", "2", "-q"],
    );
    assert!(ok, "{out}");
    let (ok, out) = r.finish(T);
    assert!(ok && out.contains("received 512 message(s)"), "{out}");
}

#[test]
fn the_sender_reports_a_receiver_killed_mid_stream() {
    for spec in tcp_specs() {
        let key = unique_key("recv");
        let mut r = recv(&spec, &key, &["-n", "0"], &[]);
        let skey = unique_key("send");
        let s = Proc::spawn(
            "vmisend",
            &[
                "--pattern",
                &skey,
                &key,
                "localhost",
                "-s",
                "16m",
                "-f",
                "4",
                "-n",
                "1000",
                "--timeout",
                "60",
            ],
            &spec,
            &[],
        );
        r.wait_for("message 2 from", T);
        r.kill();
        let (ok, out) = s.finish(Duration::from_secs(30));
        assert!(!ok, "the sender must fail: {out}");
        assert!(
            out.contains("vmisend: error: connection lost")
                || out.contains("vmisend: error: send failed")
                || out.contains("closed the connection"),
            "one-line cause: {out}"
        );
    }
}

fn listening_port(p: &Proc) -> u16 {
    let out = p.wait_for("listening on", T);
    let line = out.lines().find(|l| l.contains("listening on")).unwrap();
    line.rsplit(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no port in '{line}'"))
}

/// Waits until the server closes `s` (read returns 0 or an error).
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

#[test]
fn garbage_and_truncated_handshakes_are_dropped_and_serving_goes_on() {
    let spec = &tcp_specs()[0];
    let key = unique_key("recv");
    let r = recv(
        spec,
        &key,
        &["-n", "1", "--verify"],
        &[("VMI_TCP_HANDSHAKE_TIMEOUT_MS", "500")],
    );
    let port = listening_port(&r);

    let mut g = TcpStream::connect(("127.0.0.1", port)).unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .unwrap();
    assert!(closed_by_server(&mut g), "garbage is dropped");
    r.wait_for("invalid handshake: bad magic", T);

    let hello = {
        let mut v = b"VMIT".to_vec();
        v.extend_from_slice(&[vmi_tcp::wire::WIRE_VERSION, 0, 4, 0]);
        v
    };
    let mut t = TcpStream::connect(("127.0.0.1", port)).unwrap();
    t.write_all(&hello).unwrap();
    assert!(
        closed_by_server(&mut t),
        "a stalled, truncated hello is dropped at the handshake timeout"
    );
    r.wait_for("no complete hello within 500 ms", T);

    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(&hello).unwrap();
    drop(c);
    r.wait_for("closed before finishing its hello", T);

    let mut huge = b"VMIT".to_vec();
    huge.extend_from_slice(&[
        vmi_tcp::wire::WIRE_VERSION,
        0,
        1,
        0,
        1,
        0,
        0,
        0,
        0xff,
        0xff,
        0xff,
        0x7f,
    ]);
    huge.extend_from_slice(&[0; 8]);
    let mut h = TcpStream::connect(("127.0.0.1", port)).unwrap();
    h.write_all(&huge).unwrap();
    assert!(
        closed_by_server(&mut h),
        "an over-limit length is refused before allocating"
    );
    r.wait_for("connect data of 2147483647 bytes is over the limit", T);

    let (ok, out) = send(spec, &key, &["-s", "100k", "-f", "3"]);
    assert!(ok, "the receiver still serves after bad peers: {out}");
    let (ok, out) = r.finish(T);
    assert!(ok, "{out}");
}
