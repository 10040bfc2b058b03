//! Simultaneous connects (issue: launch and scale): two processes that connect to each other
//! at the same moment end with one connection, known on each side by the handle its own
//! `connect` returned, whatever order the handshakes cross in; neither accept handler runs.
//! Run over TCP and shared memory, with the two sides polled in different interleavings.

use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_core::{ConnectOutcome, Disconnect};
use vmi_tests::{register_all, unique_key};

fn spec(transport: &str) -> Spec {
    register_all();
    let text = format!(
        r#"<vmi><device name="{transport}"/>
  <chain name="send"><use device="{transport}"/></chain>
  <chain name="receive"><use device="{transport}"/></chain></vmi>"#
    );
    Spec::parse_str(&text, "crossing.xml").expect("spec")
}

#[derive(Default)]
struct Side {
    accepted: usize,
    connected: Vec<(ConnId, Result<(), String>, u64)>,
    received: Vec<(ConnId, Vec<u8>)>,
    disconnected: Vec<(ConnId, Disconnect)>,
}

impl Handler for Side {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, _req: &mut ConnectRequest<'_>) -> Decision {
        self.accepted += 1;
        Decision::Accept(Vec::new())
    }
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, token: u64) {
        let r = match o {
            ConnectOutcome::Accepted(_) => Ok(()),
            ConnectOutcome::Rejected(mut r) => Err(format!("rejected: {:?}", r.read_to_vec())),
            ConnectOutcome::Failed { status, detail } => Err(format!("{status}: {detail}")),
        };
        self.connected.push((conn, r, token));
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, _cmd: Recv, slab: &mut Slab<'_>) {
        self.received.push((conn, slab.read_to_vec()));
    }
    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, reason: Disconnect) {
        self.disconnected.push((conn, reason));
    }
}

/// `pattern[i]` says which side polls at step i (cycled): different interleavings make the
/// handshakes cross in different orders.
fn cross_once(transport: &str, pattern: &[u8], swap: bool) {
    let sp = spec(transport);
    let (mut ka, mut kb) = (unique_key("cross-a"), unique_key("cross-b"));
    if swap {
        std::mem::swap(&mut ka, &mut kb);
    }
    let mut a = Vmi::with_spec(sp.clone(), &ka).expect("a");
    let mut b = Vmi::with_spec(sp, &kb).expect("b");
    let (mut ha, mut hb) = (Side::default(), Side::default());
    let ca = a
        .connect("localhost", &kb, b"from a", 11)
        .expect("a connects");
    let cb = b
        .connect("localhost", &ka, b"from b", 22)
        .expect("b connects");
    let label = format!("{transport} {pattern:?} swap={swap}");
    let start = Instant::now();
    let mut i = 0;
    while ha.connected.is_empty() || hb.connected.is_empty() {
        match pattern[i % pattern.len()] {
            0 => a.poll(&mut ha),
            _ => b.poll(&mut hb),
        };
        i += 1;
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{label}: no progress"
        );
    }
    assert_eq!(
        ha.connected,
        vec![(ca, Ok(()), 11)],
        "{label}: a's own connect, once"
    );
    assert_eq!(
        hb.connected,
        vec![(cb, Ok(()), 22)],
        "{label}: b's own connect, once"
    );
    // One connection carries both handles.
    a.send_inline(ca, b"a to b").expect("a sends");
    b.send_inline(cb, b"b to a").expect("b sends");
    let start = Instant::now();
    while ha.received.is_empty()
        || hb.received.is_empty()
        || a.connection_count() > 1
        || b.connection_count() > 1
    {
        a.poll(&mut ha);
        b.poll(&mut hb);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{label}: no delivery"
        );
    }
    assert_eq!(ha.received, vec![(ca, b"b to a".to_vec())], "{label}");
    assert_eq!(hb.received, vec![(cb, b"a to b".to_vec())], "{label}");
    assert_eq!(
        (ha.accepted, hb.accepted),
        (0, 0),
        "{label}: no accept handler ran"
    );
    assert_eq!(
        (a.connection_count(), b.connection_count()),
        (1, 1),
        "{label}"
    );
    assert_eq!(a.peer_key(ca).as_deref(), Some(kb.as_str()));
    // Closing by either handle closes the one connection on both sides.
    a.disconnect(ca).expect("disconnect");
    let start = Instant::now();
    while ha.disconnected.is_empty() || hb.disconnected.is_empty() {
        a.poll(&mut ha);
        b.poll(&mut hb);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{label}: no close"
        );
    }
    assert_eq!(ha.disconnected, vec![(ca, Disconnect::Local)], "{label}");
    assert_eq!(hb.disconnected[0].0, cb, "{label}");
    assert!(
        ha.connected.len() == 1 && hb.connected.len() == 1,
        "{label}: nothing more was reported"
    );
}

#[test]
fn simultaneous_connects_become_one_connection_over_tcp() {
    for pattern in [
        &[0u8, 1][..],
        &[1, 0],
        &[0, 0, 0, 1],
        &[1, 1, 1, 0],
        &[0, 1, 1],
        &[1, 0, 0],
    ] {
        for swap in [false, true] {
            cross_once("tcp", pattern, swap);
        }
    }
}

#[test]
fn simultaneous_connects_become_one_connection_over_shared_memory() {
    for pattern in [&[0u8, 1][..], &[1, 0], &[0, 0, 0, 1], &[1, 1, 1, 0]] {
        for swap in [false, true] {
            cross_once("shmem", pattern, swap);
        }
    }
}

/// A connect to a peer that is not connecting to this process is untouched: its accept
/// handler runs and sees the application's connect data.
#[test]
fn an_ordinary_connect_still_asks_the_accept_handler() {
    let sp = spec("tcp");
    let kb = unique_key("cross-plain-b");
    let mut a = Vmi::with_spec(sp.clone(), &unique_key("cross-plain-a")).expect("a");
    let mut b = Vmi::with_spec(sp, &kb).expect("b");
    let (mut ha, mut hb) = (Side::default(), Side::default());
    let ca = a.connect("localhost", &kb, b"hello", 5).expect("connect");
    let start = Instant::now();
    while ha.connected.is_empty() {
        a.poll(&mut ha);
        b.poll(&mut hb);
        assert!(start.elapsed() < Duration::from_secs(30));
    }
    assert_eq!(ha.connected, vec![(ca, Ok(()), 5)]);
    assert_eq!(hb.accepted, 1);
}
