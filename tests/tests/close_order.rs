//! A sender that closes right after its last send still hears of every message the
//! receiver could not deliver: the receiver's "message N failed" notices come after the
//! sender's close was issued, and every transport must carry them up before the close ends.

use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_tests::{register_all, spec_text, unique_key};

#[derive(Default)]
struct Side {
    conn: Option<ConnId>,
    failed: Vec<u64>,
    received_failed: usize,
    ended: Option<(Disconnect, usize)>,
}

impl Handler for Side {
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        if let ConnectOutcome::Accepted(_) = o {
            self.conn = Some(conn);
        }
    }

    fn receive_failed(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _s: Status, _d: &str) {
        self.received_failed += 1;
    }

    fn message_failed(
        &mut self,
        _ctx: &mut Ctx<'_>,
        _conn: ConnId,
        message: u64,
        _status: Status,
        _detail: &str,
    ) {
        self.failed.push(message);
    }

    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, reason: Disconnect) {
        self.ended = Some((reason, self.failed.len()));
    }
}

/// Messages sent before the close.
const MESSAGES: u64 = 40;

/// Two instances over `transport` with `filters` (the verbs transport on its software NIC;
/// `tune` adjusts the spec text), `a` connecting to `b`.
fn instances(transport: &str, filters: &[&str], tune: impl Fn(String) -> String) -> (Vmi, Vmi) {
    register_all();
    let text = tune(spec_text(transport, filters, "")).replace(
        "name=\"verbs\" />",
        "name=\"verbs\"><param name=\"nic\" value=\"sim\"/></device>",
    );
    let spec = Spec::parse_str(&text, "close_order.xml").expect("spec");
    let (ka, kb) = (unique_key("co-a"), unique_key("co-b"));
    let mut a = Vmi::with_spec(spec.clone(), &ka).expect("a");
    let b = Vmi::with_spec(spec, &kb).expect("b");
    a.connect("localhost", &kb, b"", 0).expect("connect");
    (a, b)
}

/// Polls both until `done`, at most 20 s.
fn pump<A: Handler, B: Handler>(
    (a, ha): (&mut Vmi, &mut A),
    (b, hb): (&mut Vmi, &mut B),
    what: &str,
    done: impl Fn(&A, &B) -> bool,
) {
    let start = Instant::now();
    while !done(ha, hb) {
        a.poll(ha);
        b.poll(hb);
        assert!(start.elapsed() < Duration::from_secs(20), "{what}");
    }
}

fn sender_closes_first(transport: &str) {
    // CRC above a fault injector that corrupts every received data fragment: every message
    // fails at the receiver, which tells the sender (host messages are never faulted).
    let (mut a, mut b) = instances(transport, &["crc", "fault"], |t| {
        t.replace(
            "name=\"fault\"/>",
            "name=\"fault\"><param name=\"direction\" value=\"receive\"/><param name=\"corrupt\" value=\"1\"/></device>",
        )
    });
    let (mut ha, mut hb) = (Side::default(), Side::default());
    let what = format!("{transport}: connect");
    pump((&mut a, &mut ha), (&mut b, &mut hb), &what, |ha, _| {
        ha.conn.is_some()
    });
    let conn = ha.conn.unwrap();
    for i in 0..MESSAGES {
        a.send(conn, [Buffer::from(vec![i as u8; 100])], i).unwrap();
    }
    // Closed before the receiver has looked at anything.
    a.disconnect(conn).unwrap();
    let what = format!("{transport}: the close never ended");
    pump((&mut a, &mut ha), (&mut b, &mut hb), &what, |ha, _| {
        ha.ended.is_some()
    });
    assert_eq!(
        hb.received_failed, MESSAGES as usize,
        "{transport}: every message failed at the receiver"
    );
    let (reason, heard) = ha.ended.clone().unwrap();
    assert_eq!(reason, Disconnect::Local, "{transport}");
    assert_eq!(
        heard, MESSAGES as usize,
        "{transport}: the sender heard of every failed message before its close ended ({:?})",
        ha.failed
    );
    assert_eq!(ha.failed, (0..MESSAGES).collect::<Vec<_>>(), "{transport}");
}

#[test]
fn a_sender_that_closes_first_hears_of_every_failed_message_over_tcp() {
    sender_closes_first("tcp");
}

#[test]
fn a_sender_that_closes_first_hears_of_every_failed_message_over_shared_memory() {
    sender_closes_first("shmem");
}

#[test]
fn a_sender_that_closes_first_hears_of_every_failed_message_over_loopback() {
    sender_closes_first("loopback");
}

#[test]
fn a_sender_that_closes_first_hears_of_every_failed_message_over_verbs() {
    sender_closes_first("verbs");
}

#[derive(Default)]
struct Closer {
    conn: Option<ConnId>,
    ended: Vec<Disconnect>,
}

impl Handler for Closer {
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        if let ConnectOutcome::Accepted(_) = o {
            self.conn = Some(conn);
        }
    }

    fn receive(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, _cmd: Recv, _slab: &mut Slab<'_>) {
        self.conn.get_or_insert(conn);
    }

    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, reason: Disconnect) {
        self.ended.push(reason);
    }
}

#[test]
fn both_sides_closing_at_once_end_once_each_on_every_transport() {
    for transport in ["tcp", "shmem", "loopback", "verbs"] {
        let (mut a, mut b) = instances(transport, &[], |t| t);
        let (mut ha, mut hb) = (Closer::default(), Closer::default());
        let what = format!("{transport}: connect");
        pump((&mut a, &mut ha), (&mut b, &mut hb), &what, |ha, _| {
            ha.conn.is_some()
        });
        // b learns its handle from a first message.
        a.send(ha.conn.unwrap(), [Buffer::from(b"hi".to_vec())], 0)
            .unwrap();
        let what = format!("{transport}: first message");
        pump((&mut a, &mut ha), (&mut b, &mut hb), &what, |_, hb| {
            hb.conn.is_some()
        });
        a.disconnect(ha.conn.unwrap()).unwrap();
        b.disconnect(hb.conn.unwrap()).unwrap();
        let what = format!("{transport}: a close at once never ended");
        pump((&mut a, &mut ha), (&mut b, &mut hb), &what, |ha, hb| {
            !ha.ended.is_empty() && !hb.ended.is_empty()
        });
        for _ in 0..200 {
            a.poll(&mut ha);
            b.poll(&mut hb);
        }
        assert_eq!(ha.ended, vec![Disconnect::Local], "{transport}: a");
        assert_eq!(hb.ended, vec![Disconnect::Local], "{transport}: b");
    }
}
