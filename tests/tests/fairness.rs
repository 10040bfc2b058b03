//! A poll hands up a bounded number of fragments (its budget), over all of a transport's
//! connections together; a peer that keeps its connection full must not starve the others.
//! One receiver, two senders in one thread: the first to connect floods, the second sends one
//! message, and that message must arrive within the receiver's first two polls.

use std::time::{Duration, Instant};

use vmi_conformance::pair::{Dev, spec, unique_key};
use vmi_core::prelude::*;
use vmi_tests::register_all;

/// Records which connection each fragment came in on.
#[derive(Default)]
struct Rx {
    conns: Vec<ConnId>,
    from: Vec<(ConnId, Vec<u8>)>,
}

impl Handler for Rx {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, _req: &mut ConnectRequest<'_>) -> Decision {
        Decision::Accept(Vec::new())
    }
    fn connected(
        &mut self,
        _ctx: &mut Ctx<'_>,
        conn: ConnId,
        outcome: ConnectOutcome<'_>,
        _t: u64,
    ) {
        if let ConnectOutcome::Accepted(_) = outcome {
            self.conns.push(conn);
        }
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, _cmd: Recv, slab: &mut Slab<'_>) {
        self.from.push((conn, slab.read_to_vec()));
    }
}

const FLOOD: usize = 1000;

fn no_starvation(transport: &str) {
    register_all();
    let dev = Dev::new(transport, transport);
    let start = |who: &str| {
        Vmi::with_spec(spec(&[], &dev), &unique_key(who)).unwrap_or_else(|e| panic!("{e}"))
    };
    let (mut r, mut a, mut b) = (start("fair-r"), start("fair-a"), start("fair-b"));
    let (mut hr, mut ha, mut hb) = (Rx::default(), Rx::default(), Rx::default());
    let deadline = Instant::now() + Duration::from_secs(20);
    let pump = |r: &mut Vmi, a: &mut Vmi, b: &mut Vmi, hr: &mut Rx, ha: &mut Rx, hb: &mut Rx| {
        r.poll(hr);
        a.poll(ha);
        b.poll(hb);
        assert!(Instant::now() < deadline, "{transport}: no progress");
    };
    // The flooding peer connects first, so its connection is the receiver's first.
    a.connect("localhost", r.key(), b"", 0).unwrap();
    while ha.conns.is_empty() {
        pump(&mut r, &mut a, &mut b, &mut hr, &mut ha, &mut hb);
    }
    b.connect("localhost", r.key(), b"", 0).unwrap();
    while hb.conns.is_empty() {
        pump(&mut r, &mut a, &mut b, &mut hr, &mut ha, &mut hb);
    }
    for _ in 0..20 {
        pump(&mut r, &mut a, &mut b, &mut hr, &mut ha, &mut hb);
    }
    let (ca, cb) = (ha.conns[0], hb.conns[0]);
    for i in 0..FLOOD {
        a.send_inline(ca, &(i as u64).to_le_bytes()).unwrap();
    }
    b.send_inline(cb, b"let me in").unwrap();
    // Both senders' bytes are on their way (inline sends are written at once; a few polls
    // of the senders alone move anything they queued).
    for _ in 0..10 {
        a.poll(&mut ha);
        b.poll(&mut hb);
    }
    if transport == "tcp" {
        // Wait until the kernel holds everything: the receiver's first poll can read it all.
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..2 {
        r.poll(&mut hr);
    }
    let got_b = hr.from.iter().any(|(_, d)| d == b"let me in");
    let from_a = hr.from.iter().filter(|(_, d)| d.len() == 8).count();
    assert!(
        from_a > 0 && from_a < FLOOD,
        "{transport}: the flood should be partly delivered after two polls, got {from_a} of {FLOOD}"
    );
    assert!(
        got_b,
        "{transport}: the second connection's message waited behind the first's flood ({from_a} delivered)"
    );
    // Nothing is lost, and each connection's messages arrive in order.
    while hr.from.len() < FLOOD + 1 {
        pump(&mut r, &mut a, &mut b, &mut hr, &mut ha, &mut hb);
    }
    let flood: Vec<u64> = hr
        .from
        .iter()
        .filter(|(_, d)| d.len() == 8)
        .map(|(_, d)| u64::from_le_bytes(d[..].try_into().unwrap()))
        .collect();
    assert_eq!(flood, (0..FLOOD as u64).collect::<Vec<_>>(), "{transport}");
}

#[test]
fn a_flooding_peer_does_not_starve_another_over_shmem() {
    no_starvation("shmem");
}

#[test]
fn a_flooding_peer_does_not_starve_another_over_tcp() {
    no_starvation("tcp");
}
