//! Multi-rail connections (issue: launch and scale): a `<rails>` block makes a connection
//! use several transports at once. Here two TCP instances listen on 127.0.0.1 and 127.0.0.2
//! (two interfaces of one host, no privileges needed); large messages are striped over both,
//! every message arrives once, whole and in order, and when one rail is aborted mid-stream
//! the other carries on with nothing lost. (`multihost.rs` runs rails over two veth pairs
//! between network namespaces, with a link taken down.)

use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_core::{ConnectOutcome, Disconnect};
use vmi_tests::{register_all, unique_key};

fn spec(rails: bool) -> Spec {
    register_all();
    let block = if rails {
        r#"<rails stripe_min="65536" chunk="65536"><rail device="tcp_a"/><rail device="tcp_b"/></rails>"#
    } else {
        ""
    };
    let text = format!(
        r#"<vmi>
  <device name="tcp_a" type="tcp"><param name="listen_addr" value="127.0.0.1"/></device>
  <device name="tcp_b" type="tcp"><param name="listen_addr" value="127.0.0.2"/></device>
  <chain name="send"><use device="tcp_a"/><use device="tcp_b"/></chain>
  <chain name="receive"><use device="tcp_a"/><use device="tcp_b"/></chain>
  {block}
</vmi>"#
    );
    Spec::parse_str(&text, "rails.xml").expect("spec")
}

/// Message `i`: its number, then bytes that depend on it and their position.
fn message(i: u32, len: usize) -> Vec<u8> {
    let mut v = i.to_le_bytes().to_vec();
    v.extend((4..len.max(4)).map(|j| (j as u32).wrapping_mul(2_654_435_761).wrapping_add(i) as u8));
    v
}

#[derive(Default)]
struct Side {
    conn: Option<ConnId>,
    outcome: Option<Result<Vec<u8>, String>>,
    accepted_data: Vec<Vec<u8>>,
    received: Vec<Vec<u8>>,
    completed: Vec<(u64, Status)>,
    disconnected: Vec<Disconnect>,
}

impl Handler for Side {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, req: &mut ConnectRequest<'_>) -> Decision {
        self.conn = Some(req.conn);
        self.accepted_data.push(req.data.read_to_vec());
        Decision::Accept(b"welcome".to_vec())
    }
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        self.conn = Some(conn);
        self.outcome = Some(match o {
            ConnectOutcome::Accepted(mut r) => Ok(r.read_to_vec()),
            ConnectOutcome::Rejected(_) => Err("rejected".into()),
            ConnectOutcome::Failed { status, detail } => Err(format!("{status}: {detail}")),
        });
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        assert_eq!(cmd, Recv::End);
        self.received.push(slab.read_to_vec());
    }
    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, _c: ConnId, done: &mut SendCompletion<'_>) {
        self.completed.push((done.token, done.status));
    }
    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, reason: Disconnect) {
        self.disconnected.push(reason);
    }
}

struct Pair {
    a: Vmi,
    ha: Side,
    b: Vmi,
    hb: Side,
}

impl Pair {
    fn poll_until(&mut self, label: &str, done: impl Fn(&Pair) -> bool) {
        let start = Instant::now();
        while !done(self) {
            self.a.poll(&mut self.ha);
            self.b.poll(&mut self.hb);
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{label}: no progress"
            );
        }
    }
}

/// A connects to B over rails; returns once both rails are up on A's side.
fn connected_pair() -> (Pair, ConnId) {
    let sp = spec(true);
    let kb = unique_key("rails-b");
    let a = Vmi::with_spec(sp.clone(), &unique_key("rails-a")).expect("start a");
    let b = Vmi::with_spec(sp, &kb).expect("start b");
    let mut p = Pair {
        a,
        ha: Side::default(),
        b,
        hb: Side::default(),
    };
    let conn = p.a.connect("127.0.0.1", &kb, b"hello", 0).expect("connect");
    p.poll_until("connect", |p| p.ha.outcome.is_some());
    assert_eq!(
        p.ha.outcome,
        Some(Ok(b"welcome".to_vec())),
        "the application's reply, without the rail offer"
    );
    assert_eq!(
        p.hb.accepted_data,
        vec![b"hello".to_vec()],
        "the application's connect data, without the mark"
    );
    p.poll_until("rails up", |p| {
        p.a.rails(conn)
            .is_some_and(|r| r.iter().all(|r| r.state == "up"))
            && p.hb.conn.is_some_and(|c| {
                p.b.rails(c)
                    .is_some_and(|r| r.iter().all(|r| r.state == "up"))
            })
    });
    (p, conn)
}

fn check_in_order(received: &[Vec<u8>], sizes: &[usize]) {
    assert_eq!(received.len(), sizes.len(), "every message arrived, once");
    for (i, m) in received.iter().enumerate() {
        assert_eq!(
            m,
            &message(i as u32, sizes[i]),
            "message {i} whole and in order"
        );
    }
}

#[test]
fn large_messages_are_striped_over_both_rails_and_arrive_in_order() {
    let (mut p, conn) = connected_pair();
    // Large messages and small ones interleaved: the small ones keep their place.
    let sizes: Vec<usize> = (0..60)
        .map(|i| if i % 3 == 2 { 100 } else { 1 << 20 })
        .collect();
    for (i, &len) in sizes.iter().enumerate() {
        loop {
            match p.a.send(
                conn,
                [Buffer::from_vec(message(i as u32, len))],
                i as u64 + 1,
            ) {
                Ok(()) => break,
                Err(VmiError::Busy { .. }) => {
                    p.a.poll(&mut p.ha);
                    p.b.poll(&mut p.hb);
                }
                Err(e) => panic!("send {i}: {e}"),
            }
        }
    }
    p.poll_until("delivery", |p| {
        p.hb.received.len() == sizes.len() && p.ha.completed.len() == sizes.len()
    });
    check_in_order(&p.hb.received, &sizes);
    assert!(p.ha.completed.iter().all(|&(_, s)| s == Status::Ok));
    let mut tokens: Vec<u64> = p.ha.completed.iter().map(|c| c.0).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, (1..=sizes.len() as u64).collect::<Vec<_>>());
    let rails = p.a.rails(conn).expect("a bond");
    let total: u64 = rails.iter().map(|r| r.bytes).sum();
    println!("rails after striping: {rails:?}");
    assert!(total >= 40 << 20, "{rails:?}");
    for r in &rails {
        assert!(r.bytes >= total / 10, "both rails carry a share: {rails:?}");
        assert!(r.bandwidth > 0, "{rails:?}");
    }
    assert_eq!(p.a.peer_key(conn).as_deref(), p.b.key().into());
    // An orderly close: each side hears of the bond once.
    p.a.disconnect(conn).expect("disconnect");
    p.poll_until("close", |p| {
        !p.ha.disconnected.is_empty() && !p.hb.disconnected.is_empty()
    });
    assert_eq!(p.ha.disconnected, vec![Disconnect::Local]);
    assert_eq!(p.hb.disconnected.len(), 1);
}

#[test]
fn a_rail_aborted_mid_stream_loses_nothing() {
    let (mut p, conn) = connected_pair();
    let sizes: Vec<usize> = (0..120)
        .map(|i| if i % 4 == 0 { 300 } else { 256 << 10 })
        .collect();
    let mut next = 0;
    let mut aborted = false;
    let start = Instant::now();
    while p.hb.received.len() < sizes.len() {
        while next < sizes.len() && p.a.sends_available() > 0 {
            match p.a.send(
                conn,
                [Buffer::from_vec(message(next as u32, sizes[next]))],
                next as u64,
            ) {
                Ok(()) => next += 1,
                Err(VmiError::Busy { .. }) => break,
                Err(e) => panic!("send {next}: {e}"),
            }
        }
        if !aborted && p.hb.received.len() >= 30 {
            // The receiving side's second interface fails with chunks in flight on it.
            p.b.attr_set("tcp_b", "abort", "all").expect("abort");
            aborted = true;
        }
        p.a.poll(&mut p.ha);
        p.b.poll(&mut p.hb);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no progress: {} of {}",
            p.hb.received.len(),
            sizes.len()
        );
    }
    assert!(aborted);
    check_in_order(&p.hb.received, &sizes);
    p.poll_until("acknowledged", |p| p.ha.completed.len() == sizes.len());
    assert!(p.ha.completed.iter().all(|&(_, s)| s == Status::Ok));
    assert!(
        p.ha.disconnected.is_empty() && p.hb.disconnected.is_empty(),
        "the connection lives on one rail"
    );
    let rails = p.a.rails(conn).expect("a bond");
    println!("rails after the abort: {rails:?}");
    assert_eq!(rails[0].state, "up");
    assert_eq!(rails[1].state, "down");
    // Still usable after the failover.
    p.a.send_inline(conn, &message(0, 8))
        .expect("send after failover");
    p.poll_until("after", |p| p.hb.received.len() == sizes.len() + 1);
}

#[test]
fn a_peer_without_the_same_rails_is_refused_with_the_reason() {
    let kb = unique_key("rails-plain");
    let mut a = Vmi::with_spec(spec(true), &unique_key("rails-c")).expect("a");
    let mut b = Vmi::with_spec(spec(false), &kb).expect("b");
    let (mut ha, mut hb) = (Side::default(), Side::default());
    a.connect("127.0.0.1", &kb, b"x", 0).expect("connect");
    let start = Instant::now();
    while ha.outcome.is_none() {
        a.poll(&mut ha);
        b.poll(&mut hb);
        assert!(start.elapsed() < Duration::from_secs(30));
    }
    let err = ha.outcome.unwrap().unwrap_err();
    assert!(err.contains("rails@2"), "{err}");
    assert!(hb.accepted_data.is_empty(), "the application was not asked");
}

#[test]
fn rails_blocks_that_cannot_work_are_refused_with_the_place() {
    register_all();
    let base = r#"<device name="t" type="tcp"/><device name="c" type="crc"/>
      <chain name="send"><use device="c"/><use device="t"/></chain>
      <chain name="receive"><use device="t"/><use device="c"/></chain>"#;
    let one = format!(r#"<vmi>{base}<rails><rail device="t"/></rails></vmi>"#);
    let e = Spec::parse_str(&one, "r.xml").unwrap_err().to_string();
    assert!(e.contains("r.xml:3") && e.contains("at least two"), "{e}");
    let undefined =
        format!(r#"<vmi>{base}<rails><rail device="t"/><rail device="x"/></rails></vmi>"#);
    let e = Spec::parse_str(&undefined, "r.xml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("'x' is not a defined device"), "{e}");
    let filter = format!(r#"<vmi>{base}<rails><rail device="t"/><rail device="c"/></rails></vmi>"#);
    let sp = Spec::parse_str(&filter, "r.xml").expect("parses");
    let e = Vmi::with_spec(sp, &unique_key("rails-f"))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("rail 'c' must be a transport"), "{e}");
    let bad = format!(r#"<vmi>{base}<rails chunk="0"><rail device="t"/></rails></vmi>"#);
    let e = Spec::parse_str(&bad, "r.xml").unwrap_err().to_string();
    assert!(e.contains("chunk"), "{e}");
}

/// Rails over different transports (VMI 2.1's striping across heterogeneous networks):
/// shared memory and TCP on one host, one connection. The TCP rail listens on every
/// interface, so it offers its port alone and is reached at the first rail's host.
#[test]
fn a_connection_stripes_over_shared_memory_and_tcp_at_once() {
    register_all();
    let text = r#"<vmi>
  <device name="shmem"/><device name="tcp"/>
  <chain name="send"><use device="shmem"/><use device="tcp"/></chain>
  <chain name="receive"><use device="shmem"/><use device="tcp"/></chain>
  <rails stripe_min="65536" chunk="65536"><rail device="shmem"/><rail device="tcp"/></rails>
</vmi>"#;
    let sp = Spec::parse_str(text, "hetero.xml").expect("spec");
    let kb = unique_key("rails-hb");
    let mut p = Pair {
        a: Vmi::with_spec(sp.clone(), &unique_key("rails-ha")).expect("a"),
        ha: Side::default(),
        b: Vmi::with_spec(sp, &kb).expect("b"),
        hb: Side::default(),
    };
    let conn = p.a.connect("localhost", &kb, b"", 0).expect("connect");
    p.poll_until("rails up", |p| {
        p.a.rails(conn)
            .is_some_and(|r| r.iter().all(|r| r.state == "up"))
    });
    let sizes: Vec<usize> = (0..40).map(|_| 1 << 20).collect();
    for (i, &len) in sizes.iter().enumerate() {
        p.a.send(conn, [Buffer::from_vec(message(i as u32, len))], 0)
            .expect("send");
    }
    p.poll_until("delivery", |p| {
        p.hb.received.len() == sizes.len() && p.ha.completed.len() == sizes.len()
    });
    check_in_order(&p.hb.received, &sizes);
    let rails = p.a.rails(conn).expect("a bond");
    println!("shmem + tcp rails: {rails:?}");
    assert_eq!(rails[0].device, "shmem");
    assert_eq!(rails[1].device, "tcp");
    assert!(
        rails.iter().all(|r| r.bytes > 0),
        "both carried a share: {rails:?}"
    );
}

/// A connection whose transport is in the chains but no rail stays a plain connection, and
/// the application's reply data arrives whole.
#[test]
fn a_connection_over_a_transport_that_is_no_rail_stays_plain() {
    register_all();
    let text = r#"<vmi>
  <device name="shmem"/>
  <device name="tcp_a" type="tcp"><param name="listen_addr" value="127.0.0.1"/></device>
  <device name="tcp_b" type="tcp"><param name="listen_addr" value="127.0.0.2"/></device>
  <chain name="send"><use device="shmem"/><use device="tcp_a"/><use device="tcp_b"/></chain>
  <chain name="receive"><use device="shmem"/><use device="tcp_a"/><use device="tcp_b"/></chain>
  <rails><rail device="tcp_a"/><rail device="tcp_b"/></rails>
</vmi>"#;
    let sp = Spec::parse_str(text, "plain.xml").expect("spec");
    let kb = unique_key("rails-pb");
    let mut p = Pair {
        a: Vmi::with_spec(sp.clone(), &unique_key("rails-pa")).expect("a"),
        ha: Side::default(),
        b: Vmi::with_spec(sp, &kb).expect("b"),
        hb: Side::default(),
    };
    let conn = p.a.connect("localhost", &kb, b"hello", 0).expect("connect");
    p.poll_until("connect", |p| p.ha.outcome.is_some());
    assert_eq!(p.ha.outcome, Some(Ok(b"welcome".to_vec())));
    assert_eq!(p.hb.accepted_data, vec![b"hello".to_vec()]);
    assert!(p.a.rails(conn).is_none(), "shared memory is no rail here");
    p.a.send_inline(conn, &message(0, 100)).expect("send");
    p.poll_until("delivery", |p| p.hb.received.len() == 1);
    check_in_order(&p.hb.received, &[100]);
}
