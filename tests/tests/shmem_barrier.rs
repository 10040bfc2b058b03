//! The doorbell never loses a wake-up, with or without the asymmetric barrier
//! (`vmi_shmem::barrier`): where both processes registered for `membarrier(2)`, a send skips
//! the fence between its publication and its look at the peer's sleep flag, and a process
//! about to sleep issues one process-wide barrier instead. Two sides that sleep in `wait`
//! before every message (the case the doorbell exists for) exchange thousands of messages;
//! a lost wake-up leaves a message in the ring while its reader sleeps the whole timeout of
//! its wait (10 s), which the test reports. Each side's `send_barrier` attribute shows which
//! protocol the connection agreed on.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmi_conformance::pair::{Dev, spec, unique_key};
use vmi_core::prelude::*;
use vmi_tests::register_all;

const ROUND_TRIPS: u64 = 3_000;
/// A wait's timeout: what a lost wake-up would cost.
const NAP: Duration = Duration::from_secs(10);
/// Far above any round trip between two sleeping threads, far below [`NAP`].
const LOST: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Side {
    conn: Option<ConnId>,
    got: VecDeque<(ConnId, Vec<u8>)>,
}

impl Handler for Side {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, _req: &mut ConnectRequest<'_>) -> Decision {
        Decision::Accept(Vec::new())
    }
    fn connected(&mut self, _c: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        match o {
            ConnectOutcome::Accepted(_) => self.conn = Some(conn),
            ConnectOutcome::Failed { status, detail } => {
                panic!("connect failed: {status}: {detail}")
            }
            _ => {}
        }
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, _cmd: Recv, slab: &mut Slab<'_>) {
        self.got.push_back((conn, slab.read_to_vec()));
    }
}

/// Sends `data` inline, waiting out a full ring (never expected with one message in flight).
fn send(vmi: &mut Vmi, h: &mut Side, conn: ConnId, data: &[u8]) {
    let start = Instant::now();
    loop {
        match vmi.send_inline(conn, data) {
            Ok(()) => return,
            Err(VmiError::Busy { .. }) => {
                vmi.wait(h, Duration::from_millis(1));
            }
            Err(e) => panic!("send: {e}"),
        }
        assert!(start.elapsed() < LOST, "a send found the ring full for 5 s");
    }
}

/// Sleeps in `wait` until a message arrives; panics when one wait took [`LOST`] or more
/// (its wake-up was lost).
fn next(vmi: &mut Vmi, h: &mut Side, label: &str, what: &str, i: u64) -> (ConnId, Vec<u8>) {
    let start = Instant::now();
    loop {
        if let Some(m) = h.got.pop_front() {
            return m;
        }
        vmi.wait(h, NAP);
        assert!(
            start.elapsed() < LOST,
            "{label}: the {what} of round trip {i} waited {:?}: a wake-up was lost",
            start.elapsed()
        );
    }
}

/// `ROUND_TRIPS` messages echoed between a client and a server thread that both sleep
/// before each message; returns both sides' `send_barrier` attributes.
fn sleeping_ping_pong(label: &str, client: Dev, server: Dev) -> (String, String) {
    register_all();
    let key = unique_key("barrier-srv");
    let (ready_tx, ready_rx) = mpsc::channel();
    let (attr_tx, attr_rx) = mpsc::channel();
    let server = {
        let (key, label) = (key.clone(), label.to_string());
        std::thread::spawn(move || {
            let mut vmi = Vmi::with_spec(spec(&[], &server), &key).expect("server");
            let mut h = Side::default();
            ready_tx.send(()).unwrap();
            for i in 0..ROUND_TRIPS {
                let (conn, m) = next(&mut vmi, &mut h, &label, "request", i);
                if i == 0 {
                    attr_tx
                        .send(vmi.attr_get("t", "send_barrier").expect("attribute"))
                        .unwrap();
                }
                send(&mut vmi, &mut h, conn, &m);
            }
            // Stay until the client has the last answer (it closes first).
            let start = Instant::now();
            while vmi.connection_count() > 0 && start.elapsed() < LOST {
                vmi.wait(&mut h, Duration::from_millis(10));
            }
        })
    };
    ready_rx.recv().unwrap();
    let mut vmi = Vmi::with_spec(spec(&[], &client), &unique_key("barrier-cli")).expect("client");
    let mut h = Side::default();
    vmi.connect("localhost", &key, b"", 0).expect("connect");
    let start = Instant::now();
    while h.conn.is_none() {
        vmi.wait(&mut h, Duration::from_millis(20));
        assert!(start.elapsed() < LOST, "{label}: connect");
    }
    let conn = h.conn.unwrap();
    for i in 0..ROUND_TRIPS {
        let m = i.to_le_bytes();
        send(&mut vmi, &mut h, conn, &m);
        let (_, back) = next(&mut vmi, &mut h, label, "answer", i);
        assert_eq!(back, m, "{label}: round trip {i} came back changed");
    }
    let mine = vmi.attr_get("t", "send_barrier").expect("attribute");
    let theirs = attr_rx.recv().unwrap();
    vmi.disconnect(conn).expect("disconnect");
    let start = Instant::now();
    while vmi.connection_count() > 0 && start.elapsed() < LOST {
        vmi.wait(&mut h, Duration::from_millis(10));
    }
    drop(vmi);
    server.join().expect("server");
    (mine, theirs)
}

/// Both sides registered: the connection sends without fences both ways, and no wake-up is
/// lost, whether the host writes the lent send rings or the transport writes its own.
#[test]
fn sleeping_peers_miss_no_message_when_sends_skip_the_fence() {
    let registered = vmi_shmem::barrier::register();
    for lend in ["true", "false"] {
        let dev = Dev::new("t", "shmem").param("lend_rings", lend);
        let label = format!("lend_rings={lend}");
        let (client, server) = sleeping_ping_pong(&label, dev.clone(), dev);
        match &registered {
            Ok(()) => {
                for attr in [&client, &server] {
                    assert!(
                        attr.contains("1 of 1 connections send without a fence"),
                        "{label}: {attr}"
                    );
                }
            }
            Err(why) => {
                println!("membarrier unavailable here ({why}): both sides fenced");
                assert!(client.starts_with("fence after every send"), "{client}");
            }
        }
    }
}

/// One side does not register (`membarrier = false`): both keep the fence on that
/// connection, the other side's registration notwithstanding, and no wake-up is lost.
#[test]
fn a_peer_without_the_barrier_gets_fenced_sends_both_ways() {
    let off = Dev::new("t", "shmem").param("membarrier", "false");
    let on = Dev::new("t", "shmem");
    let (client, server) = sleeping_ping_pong("mixed", on.clone(), off.clone());
    assert!(
        server.contains("fence after every send (parameter 'membarrier' is false)"),
        "{server}"
    );
    if vmi_shmem::barrier::register().is_ok() {
        assert!(
            client.contains("0 of 1 connections send without a fence"),
            "{client}"
        );
    }
    let (client, _) = sleeping_ping_pong("mixed, reversed", off, on);
    assert!(client.starts_with("fence after every send"), "{client}");
}
