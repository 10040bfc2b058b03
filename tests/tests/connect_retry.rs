//! Connect retry (issue: launch and scale): with a connect wait, a connect to a peer that is
//! not there yet keeps trying, with backoff, until the peer appears (start-up order does not
//! matter), fails for another reason at once, or gives up at the deadline with the reason.

use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_core::{ConnectOutcome, Options};
use vmi_tests::{Proc, register_all, root, unique_key};

const WAIT: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Side {
    outcome: Option<Result<(), (Status, String)>>,
    rejected: bool,
    conn: Option<ConnId>,
    received: Vec<Vec<u8>>,
    reject_all: bool,
}

impl Handler for Side {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, _req: &mut ConnectRequest<'_>) -> Decision {
        if self.reject_all {
            Decision::Reject(b"not today".to_vec())
        } else {
            Decision::Accept(Vec::new())
        }
    }
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        self.conn = Some(conn);
        self.outcome = Some(match o {
            ConnectOutcome::Accepted(_) => Ok(()),
            ConnectOutcome::Rejected(_) => {
                self.rejected = true;
                Err((Status::Rejected, String::new()))
            }
            ConnectOutcome::Failed { status, detail } => Err((status, detail.to_string())),
        });
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _cmd: Recv, slab: &mut Slab<'_>) {
        self.received.push(slab.read_to_vec());
    }
}

fn spec(transports: &[(&str, &str)]) -> Spec {
    register_all();
    let devs: String = transports
        .iter()
        .map(|(n, t)| format!("<device name=\"{n}\" type=\"{t}\"/>"))
        .collect();
    let uses: String = transports
        .iter()
        .map(|(n, _)| format!("<use device=\"{n}\"/>"))
        .collect();
    let text = format!(
        "<vmi>{devs}<chain name=\"send\">{uses}</chain><chain name=\"receive\">{uses}</chain></vmi>"
    );
    Spec::parse_str(&text, "retry.xml").expect("spec")
}

fn start(sp: &Spec, key: &str, wait: Duration) -> Vmi {
    Vmi::with_spec_options(
        sp.clone(),
        key,
        Options::default().with_connect_wait(wait),
        &|_| None,
    )
    .expect("start")
}

fn poll_until(
    label: &str,
    parts: &mut [(&mut Vmi, &mut Side)],
    done: impl Fn(&[(&mut Vmi, &mut Side)]) -> bool,
) {
    let start = Instant::now();
    while !done(parts) {
        for (v, h) in parts.iter_mut() {
            v.poll(*h);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{label}: no progress"
        );
    }
}

/// A connects first; B appears 300 ms later; the connection is made and a message arrives.
fn late_peer(label: &str, sp: &Spec) -> Vmi {
    let kb = unique_key("retry-b");
    let mut a = start(sp, &unique_key("retry-a"), WAIT);
    let mut ha = Side::default();
    let conn = a
        .connect("localhost", &kb, b"hello", 0)
        .expect("connect is accepted for later");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(300) {
        a.poll(&mut ha);
        assert!(
            ha.outcome.is_none(),
            "{label}: the connect ended early: {:?}",
            ha.outcome
        );
    }
    let mut b = start(sp, &kb, Duration::ZERO);
    let mut hb = Side::default();
    poll_until(label, &mut [(&mut a, &mut ha), (&mut b, &mut hb)], |p| {
        p[0].1.outcome.is_some()
    });
    assert_eq!(ha.outcome, Some(Ok(())), "{label}");
    a.send_inline(conn, b"after the wait").expect("send");
    poll_until(label, &mut [(&mut a, &mut ha), (&mut b, &mut hb)], |p| {
        !p[1].1.received.is_empty()
    });
    assert_eq!(hb.received[0], b"after the wait", "{label}");
    a
}

#[test]
fn a_connect_waits_for_a_peer_that_starts_later() {
    late_peer("tcp", &spec(&[("t", "tcp")]));
    late_peer(
        "shmem (no transport reaches it at first)",
        &spec(&[("s", "shmem")]),
    );
    // Over [shmem, tcp] the first attempts go over TCP (shared memory finds no peer); once
    // the peer is there, shared memory reaches it, and the attempt that succeeds uses it.
    let a = late_peer("shmem then tcp", &spec(&[("s", "shmem"), ("t", "tcp")]));
    let inline: u64 = a
        .attr_get("s", "inline_sends")
        .expect("attribute")
        .parse()
        .expect("count");
    assert_eq!(inline, 1, "the connection runs over shared memory");
}

#[test]
fn a_missing_peer_fails_at_the_deadline_with_the_reason() {
    for sp in [spec(&[("t", "tcp")]), spec(&[("s", "shmem")])] {
        let mut a = start(&sp, &unique_key("retry-a"), Duration::from_millis(400));
        let mut ha = Side::default();
        let t0 = Instant::now();
        a.connect("localhost", &unique_key("nobody"), b"", 0)
            .expect("connect");
        while ha.outcome.is_none() {
            a.wait(&mut ha, Duration::from_millis(50));
            assert!(t0.elapsed() < Duration::from_secs(10), "no answer");
        }
        let waited = t0.elapsed();
        let Some(Err((status, detail))) = ha.outcome else {
            panic!("{:?}", ha.outcome)
        };
        assert_eq!(status, Status::Unreachable, "{detail}");
        assert!(
            detail.contains("connect wait") && detail.contains("time(s)"),
            "{detail}"
        );
        assert!(
            waited >= Duration::from_millis(350),
            "gave up after {waited:?}"
        );
        assert_eq!(a.connection_count(), 0, "the connection was released");
    }
    // Without a wait, as before: at once.
    let mut a = start(
        &spec(&[("s", "shmem")]),
        &unique_key("retry-a"),
        Duration::ZERO,
    );
    let e = a
        .connect("localhost", &unique_key("nobody"), b"", 0)
        .unwrap_err();
    assert!(matches!(e, VmiError::Unreachable { .. }), "{e}");
}

#[test]
fn a_rejection_is_not_retried_and_a_waiting_connect_can_be_cancelled() {
    let sp = spec(&[("t", "tcp")]);
    let kb = unique_key("retry-b");
    let mut b = start(&sp, &kb, Duration::ZERO);
    let mut hb = Side {
        reject_all: true,
        ..Side::default()
    };
    let mut a = start(&sp, &unique_key("retry-a"), WAIT);
    let mut ha = Side::default();
    let t0 = Instant::now();
    a.connect("localhost", &kb, b"", 0).expect("connect");
    poll_until("reject", &mut [(&mut a, &mut ha), (&mut b, &mut hb)], |p| {
        p[0].1.outcome.is_some()
    });
    assert!(ha.rejected, "{:?}", ha.outcome);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "a rejection is final at once"
    );

    let mut a = start(&spec(&[("s", "shmem")]), &unique_key("retry-a"), WAIT);
    let mut ha = Side::default();
    let conn = a
        .connect("localhost", &unique_key("nobody"), b"", 0)
        .expect("connect");
    a.poll(&mut ha);
    a.disconnect(conn)
        .expect("a waiting connect can be disconnected");
    a.poll(&mut ha);
    match &ha.outcome {
        Some(Err((Status::Cancelled, d))) => assert!(d.contains("waiting for the peer"), "{d}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.connection_count(), 0);
}

#[test]
fn a_bad_connect_timeout_variable_is_refused_with_the_remedy() {
    let e = Vmi::with_spec_options(
        spec(&[("t", "tcp")]),
        &unique_key("retry-a"),
        Options::default(),
        &|v| (v == "VMI_CONNECT_TIMEOUT").then(|| "soon".to_string()),
    )
    .err()
    .expect("refused");
    let text = e.to_string();
    assert!(
        text.contains("VMI_CONNECT_TIMEOUT") && text.contains("number of seconds"),
        "{text}"
    );
}

#[test]
fn vmisend_started_before_vmirecv_waits_for_it() {
    let spec = root().join("specfiles/shmem-tcp.xml");
    let key = unique_key("late-recv");
    let sender = Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &unique_key("early-send"),
            &key,
            "localhost",
            "-n",
            "3",
            "--wait",
            "30",
            "-t",
            "60",
        ],
        &spec,
        &[],
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = Proc::spawn(
        "vmirecv",
        &[&key, "-n", "3", "--verify", "-t", "60"],
        &spec,
        &[],
    );
    let (ok, out) = sender.finish(Duration::from_secs(60));
    assert!(ok, "{out}");
    let (ok, rout) = r.finish(Duration::from_secs(60));
    assert!(ok && rout.contains("received 3 message(s)"), "{rout}");
}

/// `connect_with` gives one connect its own wait, whatever the process's.
#[test]
fn a_connect_has_its_own_wait() {
    for sp in [spec(&[("t", "tcp")]), spec(&[("s", "shmem")])] {
        // No process-wide wait: this connect still waits for its peer, which starts later.
        let kb = unique_key("own-b");
        let mut a = start(&sp, &unique_key("own-a"), Duration::ZERO);
        let mut ha = Side::default();
        a.connect_with("localhost", &kb, b"", 0, WAIT).unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(200) {
            a.poll(&mut ha);
        }
        assert!(ha.outcome.is_none(), "ended early: {:?}", ha.outcome);
        let mut b = start(&sp, &kb, Duration::ZERO);
        let mut hb = Side::default();
        poll_until(
            "own wait",
            &mut [(&mut a, &mut ha), (&mut b, &mut hb)],
            |p| p[0].1.outcome.is_some(),
        );
        assert_eq!(ha.outcome, Some(Ok(())));

        // A short wait ends with the reason, long before the process's 20 s.
        let mut a = start(&sp, &unique_key("own-c"), WAIT);
        let mut ha = Side::default();
        a.connect_with(
            "localhost",
            &unique_key("nobody"),
            b"",
            0,
            Duration::from_millis(300),
        )
        .unwrap();
        poll_until("short wait", &mut [(&mut a, &mut ha)], |p| {
            p[0].1.outcome.is_some()
        });
        let (status, detail) = ha.outcome.clone().unwrap().unwrap_err();
        assert_ne!(status, Status::Ok);
        // The note says how long it tried: this connect's wait, not the process's 20 s.
        let tried: f64 = detail
            .split(" over ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no duration in: {detail}"));
        assert!(tried < 5.0, "{detail}");

        // No wait at all: it fails at once, although the process would wait.
        let mut ha = Side::default();
        let r = a.connect_with("localhost", &unique_key("nobody"), b"", 0, Duration::ZERO);
        if r.is_ok() {
            poll_until("no wait", &mut [(&mut a, &mut ha)], |p| {
                p[0].1.outcome.is_some()
            });
            assert!(matches!(ha.outcome, Some(Err(_))), "{:?}", ha.outcome);
        }
    }
}
