//! Timeouts and cancel of sends and disconnects (issue "Beyond streams"): a send timeout, a
//! disconnect with a wait and an abort, over every transport and through a filter, against a
//! receiver that stops reading. Every send issued gets exactly one completion, the sender
//! hears why the connection ended, and the receiver gets only whole messages, in order.

use std::time::{Duration, Instant};

use vmi_core::Options;
use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_tests::{register_all, spec_text, unique_key};

/// Bytes per message: large enough that a receiver that stops reading blocks the sender
/// after a few (rings and socket buffers fill)...
const MESSAGE: usize = 256 * 1024;
/// ... except over loopback, whose inbox counts messages (4,096): small ones fill it.
const LOOPBACK_MESSAGE: usize = 64;
/// Most sends the sender issues.
const MOST: u64 = 8_000;

fn size_for(transport: &str) -> usize {
    if transport == "loopback" {
        LOOPBACK_MESSAGE
    } else {
        MESSAGE
    }
}

#[derive(Default)]
struct Side {
    /// Bytes per message.
    size: usize,
    conn: Option<ConnId>,
    /// Send completions: (token, status, detail).
    completions: Vec<(u64, Status, String)>,
    ended: Option<Disconnect>,
    /// Send completions heard before the end.
    completions_at_end: usize,
    connect_failed: Option<Status>,
    /// The sequence numbers of whole messages received, and problems seen.
    received: Vec<u64>,
    errors: Vec<String>,
    partial: Vec<u8>,
}

impl Handler for Side {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, _r: &mut ConnectRequest<'_>) -> Decision {
        Decision::Accept(Vec::new())
    }

    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        match o {
            ConnectOutcome::Accepted(_) => self.conn = Some(conn),
            ConnectOutcome::Rejected(_) => self.connect_failed = Some(Status::Rejected),
            ConnectOutcome::Failed { status, .. } => self.connect_failed = Some(status),
        }
    }

    fn receive(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        self.conn.get_or_insert(conn);
        slab.read_into(&mut self.partial);
        if cmd != Recv::End {
            return;
        }
        let msg = std::mem::take(&mut self.partial);
        if msg.len() != self.size {
            self.errors
                .push(format!("a message of {} bytes", msg.len()));
            return;
        }
        let seq = u64::from_le_bytes(msg[..8].try_into().unwrap());
        if msg[8..].iter().any(|&b| b != seq as u8) {
            self.errors.push(format!("message {seq} is corrupt"));
        }
        if seq != self.received.len() as u64 {
            self.errors.push(format!(
                "message {seq} came as number {}",
                self.received.len()
            ));
        }
        self.received.push(seq);
    }

    fn receive_failed(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _s: Status, _d: &str) {
        // A message cut short by the abort: its fragments are thrown away.
        self.partial.clear();
    }

    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, c: &mut SendCompletion<'_>) {
        self.completions
            .push((c.token, c.status, c.detail.to_string()));
    }

    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, reason: Disconnect) {
        self.completions_at_end = self.completions.len();
        self.ended = Some(reason);
    }
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

fn message(seq: u64, size: usize) -> Buffer {
    let mut v = vec![seq as u8; size];
    v[..8].copy_from_slice(&seq.to_le_bytes());
    Buffer::from_vec(v)
}

struct Pair {
    a: Vmi,
    b: Vmi,
    ha: Side,
    hb: Side,
    conn: ConnId,
    label: String,
}

impl Pair {
    fn new(transport: &str, filters: &[&str], options: Options) -> Pair {
        register_all();
        let label = format!("{transport} {filters:?}");
        // The verbs transport on its software NIC (this machine has no RDMA NIC).
        let text = spec_text(transport, filters, "").replace(
            "name=\"verbs\" />",
            "name=\"verbs\"><param name=\"nic\" value=\"sim\"/></device>",
        );
        let spec = Spec::parse_str(&text, "timeouts.xml").unwrap();
        let (ka, kb) = (unique_key("to-a"), unique_key("to-b"));
        let mut a = Vmi::with_spec_options(spec.clone(), &ka, options, &env).expect("a");
        let mut b = Vmi::with_spec(spec, &kb).expect("b");
        let size = size_for(transport);
        let mut ha = Side {
            size,
            ..Side::default()
        };
        let mut hb = Side {
            size,
            ..Side::default()
        };
        a.connect("localhost", &kb, b"", 0).expect("connect");
        let start = Instant::now();
        while ha.conn.is_none() {
            a.poll(&mut ha);
            b.poll(&mut hb);
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{label}: connect"
            );
        }
        // Let the connect's own exchanges (latency ping and pong) settle on both sides.
        for _ in 0..200 {
            a.poll(&mut ha);
            b.poll(&mut hb);
        }
        let conn = ha.conn.unwrap();
        Pair {
            a,
            b,
            ha,
            hb,
            conn,
            label,
        }
    }

    /// Sends until the receiver (which does not poll) holds the sender back: returns the
    /// number of sends issued.
    fn fill(&mut self) -> u64 {
        let mut issued = 0;
        let mut quiet = 0;
        while issued < MOST && quiet < 200 && self.ha.ended.is_none() {
            match self
                .a
                .send(self.conn, [message(issued, self.ha.size)], issued)
            {
                Ok(()) => issued += 1,
                Err(VmiError::Busy { .. }) => {}
                Err(e) => panic!("{}: send {issued}: {e}", self.label),
            }
            let before = self.ha.completions.len();
            self.a.poll(&mut self.ha);
            if self.ha.completions.len() == before {
                quiet += 1;
            } else {
                quiet = 0;
            }
        }
        assert!(
            (issued as usize) > self.ha.completions.len(),
            "{}: a receiver that does not read must hold sends back ({issued} issued, all completed)",
            self.label
        );
        issued
    }

    /// Both sides poll until the connection ended on both: an orderly close, every one of
    /// the `n` sends completed with success, and every message arrived, in order.
    fn closed_in_order(&mut self, n: u64) {
        let start = Instant::now();
        while self.ha.ended.is_none() || self.hb.ended.is_none() {
            self.a.poll(&mut self.ha);
            self.b.poll(&mut self.hb);
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{}: close",
                self.label
            );
        }
        assert_eq!(self.ha.ended, Some(Disconnect::Local), "{}", self.label);
        assert_eq!(self.hb.ended, Some(Disconnect::Peer), "{}", self.label);
        assert_eq!(self.ha.completions.len(), n as usize, "{}", self.label);
        assert!(
            self.ha.completions.iter().all(|c| c.1 == Status::Ok),
            "{}",
            self.label
        );
        assert_eq!(
            self.hb.received,
            (0..n).collect::<Vec<_>>(),
            "{}",
            self.label
        );
    }

    /// Polls the sender until its connection ended.
    fn until_ended(&mut self) -> Disconnect {
        let start = Instant::now();
        while self.ha.ended.is_none() {
            self.a.wait(&mut self.ha, Duration::from_millis(20));
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{}: the connection never ended",
                self.label
            );
        }
        self.ha.ended.clone().unwrap()
    }

    /// Every send issued completed exactly once, before the end; some ended with `status`,
    /// and none succeeded after one failed.
    fn completions(&self, issued: u64, status: Status) {
        let mut tokens: Vec<u64> = self.ha.completions.iter().map(|c| c.0).collect();
        tokens.sort_unstable();
        assert_eq!(
            tokens,
            (0..issued).collect::<Vec<_>>(),
            "{}: one completion per send",
            self.label
        );
        assert_eq!(
            self.ha.completions_at_end, issued as usize,
            "{}: every send completed before the end was reported",
            self.label
        );
        let ok = self
            .ha
            .completions
            .iter()
            .take_while(|c| c.1 == Status::Ok)
            .count();
        for (token, s, detail) in &self.ha.completions[ok..] {
            assert_eq!(*s, status, "{}: send {token}: {detail}", self.label);
        }
        assert!(
            ok < issued as usize,
            "{}: some sends were ended",
            self.label
        );
    }

    /// The receiver, reading again, gets whole messages, the first ones in order (a send
    /// that ended `Timeout` or `Cancelled` may or may not have reached it), and then the end
    /// of the connection.
    fn receiver_sees_whole_messages_then_the_end(&mut self) {
        let start = Instant::now();
        while self.hb.ended.is_none() {
            self.b.wait(&mut self.hb, Duration::from_millis(20));
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{}: the receiver never saw the end",
                self.label
            );
        }
        assert!(
            self.hb.errors.is_empty(),
            "{}: {:?}",
            self.label,
            self.hb.errors
        );
        assert!(
            self.hb.received.len() <= self.ha.completions.len(),
            "{}: {} received, {} sent",
            self.label,
            self.hb.received.len(),
            self.ha.completions.len()
        );
        assert!(
            !matches!(self.hb.ended, Some(Disconnect::Peer)),
            "{}: an aborted connection must not look closed in order to the peer",
            self.label
        );
    }
}

fn send_timeout(transport: &str, filters: &[&str]) {
    let mut p = Pair::new(transport, filters, Options::default());
    p.a.set_send_timeout(p.conn, Some(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(p.a.send_timeout(p.conn), Some(Duration::from_millis(300)));
    let issued = p.fill();
    match p.until_ended() {
        Disconnect::Error { status, detail } => {
            assert_eq!(status, Status::Timeout, "{}: {detail}", p.label);
            assert!(
                detail.contains("no send completed"),
                "{}: {detail}",
                p.label
            );
        }
        other => panic!("{}: ended as {other:?}", p.label),
    }
    p.completions(issued, Status::Timeout);
    assert!(
        p.a.send(p.conn, [message(0, p.ha.size)], 0).is_err(),
        "{}: the connection is gone",
        p.label
    );
    p.receiver_sees_whole_messages_then_the_end();
}

#[test]
fn a_send_timeout_aborts_a_connection_whose_receiver_stopped_reading() {
    for (transport, filters) in [
        ("shmem", &[][..]),
        ("tcp", &[]),
        ("loopback", &[]),
        ("verbs", &[]),
        ("tcp", &["crc"]),
    ] {
        send_timeout(transport, filters);
    }
}

#[test]
fn abort_cancels_the_waiting_sends_and_the_peer_sees_the_connection_lost() {
    for (transport, filters) in [
        ("shmem", &[][..]),
        ("tcp", &[]),
        ("verbs", &[]),
        ("loopback", &["crc"]),
    ] {
        let mut p = Pair::new(transport, filters, Options::default());
        let issued = p.fill();
        p.a.abort(p.conn).expect("abort");
        assert_eq!(p.until_ended(), Disconnect::Local, "{}", p.label);
        p.completions(issued, Status::Cancelled);
        assert!(p.a.abort(p.conn).is_err(), "{}: aborted already", p.label);
        p.receiver_sees_whole_messages_then_the_end();
    }
}

#[test]
fn a_disconnect_with_a_wait_gives_up_on_a_receiver_that_does_not_read() {
    for transport in ["shmem", "tcp", "loopback", "verbs"] {
        let mut p = Pair::new(transport, &[], Options::default());
        let issued = p.fill();
        p.a.disconnect_with(p.conn, Duration::from_millis(300))
            .expect("disconnect");
        match p.until_ended() {
            Disconnect::Error { status, detail } => {
                assert_eq!(status, Status::Timeout, "{}: {detail}", p.label);
                assert!(detail.contains("orderly close"), "{}: {detail}", p.label);
            }
            other => panic!("{}: ended as {other:?}", p.label),
        }
        p.completions(issued, Status::Timeout);
        p.receiver_sees_whole_messages_then_the_end();
    }
}

#[test]
fn a_disconnect_with_a_wait_closes_in_order_when_the_receiver_reads() {
    for transport in ["shmem", "tcp", "loopback", "verbs"] {
        let mut p = Pair::new(
            transport,
            &[],
            Options::default().with_send_timeout(Duration::from_secs(30)),
        );
        assert_eq!(
            p.a.send_timeout(p.conn),
            Some(Duration::from_secs(30)),
            "{}: the process's send timeout",
            p.label
        );
        for seq in 0..20 {
            p.a.send(p.conn, [message(seq, p.ha.size)], seq).unwrap();
        }
        p.a.disconnect_with(p.conn, Duration::from_secs(30))
            .unwrap();
        p.closed_in_order(20);
    }
}

#[test]
fn abort_cancels_a_connect_still_in_progress() {
    register_all();
    let spec = Spec::parse_str(&spec_text("tcp", &[], ""), "timeouts.xml").unwrap();
    let mut a = Vmi::with_spec_options(
        spec,
        &unique_key("to-lone"),
        Options::default().with_connect_wait(Duration::from_secs(30)),
        &env,
    )
    .unwrap();
    let mut ha = Side::default();
    let conn = a
        .connect("localhost", &unique_key("to-nobody"), b"", 7)
        .unwrap();
    a.poll(&mut ha);
    a.abort(conn).unwrap();
    let start = Instant::now();
    while ha.connect_failed.is_none() {
        a.wait(&mut ha, Duration::from_millis(20));
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the connect never ended"
        );
    }
    assert_eq!(ha.connect_failed, Some(Status::Cancelled));
    // It never opened: the connect's outcome is the whole story, no disconnect follows.
    for _ in 0..50 {
        a.wait(&mut ha, Duration::from_millis(2));
    }
    assert!(ha.ended.is_none(), "{:?}", ha.ended);
}

#[test]
fn timeouts_out_of_range_and_unknown_connections_are_refused_with_the_reason() {
    let mut p = Pair::new("loopback", &[], Options::default());
    for bad in [Duration::ZERO, Duration::from_secs(200_000)] {
        let e = p.a.set_send_timeout(p.conn, Some(bad)).unwrap_err();
        assert!(matches!(e, VmiError::BadTimeout { .. }), "{e}");
        assert!(e.to_string().contains("at most"), "{e}");
        let e = p.a.disconnect_with(p.conn, bad).unwrap_err();
        assert!(matches!(e, VmiError::BadTimeout { .. }), "{e}");
    }
    let spec = Spec::parse_str(&spec_text("loopback", &[], ""), "timeouts.xml").unwrap();
    let e = Vmi::with_spec_options(
        spec,
        &unique_key("to-bad"),
        Options::default().with_send_timeout(Duration::ZERO),
        &env,
    )
    .err()
    .expect("refused");
    assert!(matches!(e, VmiError::BadTimeout { .. }), "{e}");
    p.a.disconnect(p.conn).unwrap();
    let start = Instant::now();
    while p.ha.ended.is_none() {
        p.a.poll(&mut p.ha);
        p.b.poll(&mut p.hb);
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    assert!(p.a.set_send_timeout(p.conn, None).is_err());
    assert!(p.a.abort(p.conn).is_err());
    assert_eq!(p.a.send_timeout(p.conn), None);
}

#[test]
fn a_connection_opens_again_at_once_after_an_abort() {
    // The peer is busy with the aborted connection's end while the next connect arrives:
    // every new connect must still be answered (over TCP with no connect retry).
    for transport in ["tcp", "shmem"] {
        let mut p = Pair::new(transport, &[], Options::default());
        for round in 0..30 {
            for _ in 0..5 {
                p.a.send_inline(p.conn, b"hello").unwrap();
            }
            p.a.abort(p.conn).unwrap();
            p.ha.conn = None;
            p.ha.ended = None;
            let kb = p.b.key().to_string();
            p.a.connect("localhost", &kb, b"", 0).unwrap();
            let start = Instant::now();
            while p.ha.conn.is_none() {
                p.a.poll(&mut p.ha);
                p.b.poll(&mut p.hb);
                assert!(
                    p.ha.connect_failed.is_none(),
                    "{} round {round}: the connect after an abort failed: {:?}",
                    p.label,
                    p.ha.connect_failed
                );
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "{}: connect",
                    p.label
                );
            }
            p.conn = p.ha.conn.unwrap();
        }
    }
}

#[test]
fn a_chain_whose_device_cannot_abort_closes_in_order_instead() {
    // A device of device ABI 1.4 or older answers VMI_OP_ABORT with Invalid: the host
    // closes the connection in order instead; every send still completes, and the peer gets
    // every message and an orderly close.
    let mut p = Pair::new("tcp", &["oldabi"], Options::default());
    for seq in 0..20 {
        p.a.send(p.conn, [message(seq, p.ha.size)], seq).unwrap();
    }
    p.a.abort(p.conn).expect("abort");
    p.closed_in_order(20);
}
