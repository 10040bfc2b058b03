//! A poll hands up a bounded number of fragments (its budget), over all of a transport's
//! connections together; a peer that keeps its connection full must not starve the others.
//! One receiver and several senders in one thread: the first to connect floods, each of the
//! others sends one message, and those must arrive within the receiver's first two polls.
//! With five peers, TCP's poll asks epoll for ready sockets (past 4 connections it does not
//! read them directly), so both of its ways of reading are covered. A flood of large
//! fragments stops a poll on the transport's other per-poll bound (TCP's `recv_poll_bytes`,
//! shared memory's `single_copy_poll_bytes`) instead of its budget: the others must get their
//! turn then too.

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

/// Small messages the flooding peer sends (more than a poll's budget of 64).
const FLOOD: usize = 1000;
/// Large fragments it sends instead (each over the 16 KiB a host takes without an IRB, the
/// lot well over a poll's byte bound of 256 KiB).
const FLOOD_LARGE: usize = 48;
const LARGE: usize = 100 * 1024;

/// The flood's `i`th message: `size` bytes, its number first.
fn flood_message(i: usize, size: usize) -> Vec<u8> {
    let mut m = vec![0xa5u8; size];
    m[..8].copy_from_slice(&(i as u64).to_le_bytes());
    m
}

fn no_starvation(transport: &str, others: usize, size: usize) {
    register_all();
    let flood = if size > 8 { FLOOD_LARGE } else { FLOOD };
    let label = format!("{transport}, {others} other peer(s), a flood of {flood} x {size} B");
    let dev = Dev::new(transport, transport);
    let start = |who: &str| {
        Vmi::with_spec(spec(&[], &dev), &unique_key(who)).unwrap_or_else(|e| panic!("{e}"))
    };
    let mut r = start("fair-r");
    let mut hr = Rx::default();
    // Peer 0 floods; the others send one message each.
    let mut peers: Vec<(Vmi, Rx)> = (0..=others)
        .map(|_| (start("fair-p"), Rx::default()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pump = |r: &mut Vmi, hr: &mut Rx, peers: &mut Vec<(Vmi, Rx)>| {
        r.poll(hr);
        for (p, h) in peers.iter_mut() {
            p.poll(h);
        }
        assert!(Instant::now() < deadline, "{label}: no progress");
    };
    // One at a time, the flooding peer first: its connection is the receiver's first.
    for i in 0..peers.len() {
        peers[i].0.connect("localhost", r.key(), b"", 0).unwrap();
        while peers[i].1.conns.is_empty() {
            pump(&mut r, &mut hr, &mut peers);
        }
    }
    for _ in 0..20 {
        pump(&mut r, &mut hr, &mut peers);
    }
    let conns: Vec<ConnId> = peers.iter().map(|(_, h)| h.conns[0]).collect();
    for i in 0..flood {
        let m = flood_message(i, size);
        if size > 8 {
            peers[0]
                .0
                .send(conns[0], [Buffer::from_vec(m)], i as u64)
                .unwrap();
        } else {
            peers[0].0.send_inline(conns[0], &m).unwrap();
        }
    }
    for (k, (p, _)) in peers.iter_mut().enumerate().skip(1) {
        p.send_inline(conns[k], format!("let peer {k} in").as_bytes())
            .unwrap();
    }
    // Every sender's bytes are on their way (inline sends are written at once; a few polls
    // of the senders alone move anything they queued).
    for _ in 0..10 {
        for (p, h) in peers.iter_mut() {
            p.poll(h);
        }
    }
    if transport == "tcp" {
        // Wait until the kernel holds everything: the receiver's first poll can read it all.
        std::thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..2 {
        r.poll(&mut hr);
    }
    let from_flood = hr.from.iter().filter(|(_, d)| d.len() == size).count();
    let others_in = hr
        .from
        .iter()
        .filter(|(_, d)| d.starts_with(b"let "))
        .count();
    assert!(
        from_flood > 0 && from_flood < flood,
        "{label}: the flood should be partly delivered after two polls, got {from_flood} of {flood}"
    );
    assert_eq!(
        others_in, others,
        "{label}: the other connections' messages waited behind the first's flood ({from_flood} delivered)"
    );
    // Nothing is lost, and each connection's messages arrive in order.
    while hr.from.len() < flood + others {
        pump(&mut r, &mut hr, &mut peers);
    }
    let got: Vec<&Vec<u8>> = hr
        .from
        .iter()
        .filter(|(_, d)| d.len() == size)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(got.len(), flood, "{label}");
    for (i, d) in got.iter().enumerate() {
        assert!(
            **d == flood_message(i, size),
            "{label}: flood message {i} out of order or damaged"
        );
    }
}

#[test]
fn a_flooding_peer_does_not_starve_another_over_shmem() {
    no_starvation("shmem", 1, 8);
}

#[test]
fn a_flooding_peer_does_not_starve_another_over_tcp() {
    no_starvation("tcp", 1, 8);
}

#[test]
fn a_flooding_peer_does_not_starve_four_others_over_shmem() {
    no_starvation("shmem", 4, 8);
}

#[test]
fn a_flooding_peer_does_not_starve_four_others_over_tcp_through_epoll() {
    no_starvation("tcp", 4, 8);
}

#[test]
fn large_fragments_do_not_starve_another_over_shmem() {
    no_starvation("shmem", 1, LARGE);
}

#[test]
fn large_fragments_do_not_starve_another_over_tcp() {
    no_starvation("tcp", 1, LARGE);
}

#[test]
fn large_fragments_do_not_starve_four_others_over_shmem() {
    no_starvation("shmem", 4, LARGE);
}

#[test]
fn large_fragments_do_not_starve_four_others_over_tcp_through_epoll() {
    no_starvation("tcp", 4, LARGE);
}
