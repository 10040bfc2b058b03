//! Large fragments per poll: shared memory's single-copy reads (`single_copy_poll_bytes`) and
//! TCP's fragments handed up as IRBs (`recv_poll_bytes`). A poll stops once that many bytes
//! were read (at least one fragment), so the buffers they fill stay few and warm in the
//! cache; the rest waits (in the ring, in the socket) for the next poll, and nothing is lost.

use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_tests::{register_all, unique_key};

#[derive(Default)]
struct Side {
    conn: Option<ConnId>,
    received: Vec<Vec<u8>>,
    completed: usize,
}

impl Handler for Side {
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        if let ConnectOutcome::Failed { status, detail } = o {
            panic!("connect failed: {status}: {detail}");
        }
        self.conn = Some(conn);
    }
    fn accept(&mut self, _ctx: &mut Ctx<'_>, r: &mut ConnectRequest<'_>) -> Decision {
        self.conn = Some(r.conn);
        Decision::Accept(Vec::new())
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _cmd: Recv, slab: &mut Slab<'_>) {
        self.received.push(slab.read_to_vec());
    }
    fn send_complete(&mut self, _c: &mut Ctx<'_>, _conn: ConnId, done: &mut SendCompletion<'_>) {
        assert!(done.status.is_ok(), "a send failed: {}", done.detail);
        self.completed += 1;
    }
}

/// Sends `MESSAGES` large messages over `transport` with the receiver idle, then polls the
/// receiver: how many the first poll delivered, after checking that the following polls
/// deliver the rest, whole and in order. `param` caps the bytes per poll.
fn first_poll_delivers(
    transport: &str,
    param: &str,
    poll_bytes: &str,
    size: usize,
    count: usize,
) -> usize {
    register_all();
    let text = format!(
        "<vmi>\n  <device name=\"{transport}\"><param name=\"{param}\" value=\"{poll_bytes}\"/></device>\n  <chain name=\"send\"><use device=\"{transport}\"/></chain>\n  <chain name=\"receive\"><use device=\"{transport}\"/></chain>\n</vmi>\n"
    );
    let spec = Spec::parse_str(&text, "shmem-reads.xml").expect("spec");
    let (ka, kb) = (unique_key("reads-a"), unique_key("reads-b"));
    let mut a = Vmi::with_spec(spec.clone(), &ka).expect("vmi a");
    let mut b = Vmi::with_spec(spec, &kb).expect("vmi b");
    let (mut ha, mut hb) = (Side::default(), Side::default());
    a.connect("localhost", &kb, b"", 0).expect("connect");
    let start = Instant::now();
    while ha.conn.is_none() || hb.conn.is_none() {
        a.poll(&mut ha);
        b.poll(&mut hb);
        assert!(start.elapsed() < Duration::from_secs(20), "no connection");
    }
    // Settle both sides (hellos, the single-copy probe), then send with the receiver idle.
    for _ in 0..20 {
        a.poll(&mut ha);
        b.poll(&mut hb);
    }
    let conn = ha.conn.unwrap();
    let messages: Vec<Vec<u8>> = (0..count)
        .map(|m| (0..size).map(|i| (i * 7 + m * 13) as u8).collect())
        .collect();
    for (m, data) in messages.iter().enumerate() {
        a.send(conn, [Buffer::from_vec(data.clone())], m as u64)
            .expect("send");
    }
    // Shared memory: the records are in the ring once the sender's polls wrote them (its
    // sends complete when the receiver has read them). TCP: a send completes when the
    // socket took it, so all of them are in the kernel when the receiver polls.
    let start = Instant::now();
    for _ in 0..10 {
        a.poll(&mut ha);
    }
    while transport == "tcp" && ha.completed < count {
        a.poll(&mut ha);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "sends not written"
        );
    }
    b.poll(&mut hb);
    let first = hb.received.len();
    let start = Instant::now();
    while hb.received.len() < count {
        a.poll(&mut ha);
        b.poll(&mut hb);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "messages missing"
        );
    }
    assert_eq!(hb.received, messages, "every message whole and in order");
    first
}

/// Shared memory: fragments of 128 KiB go by single copy (from `single_copy_min`, 64 KiB).
#[test]
fn a_shared_memory_poll_stops_single_copy_reads_after_its_byte_budget() {
    let first = |cap| first_poll_delivers("shmem", "single_copy_poll_bytes", cap, 128 << 10, 4);
    assert_eq!(first("0"), 1, "0: one read per poll");
    assert_eq!(first("256k"), 2, "256 KiB: two reads");
    assert_eq!(first("16m"), 4, "16 MiB: all");
}

/// TCP: fragments of 20 KiB go up as IRBs (over the host's 16 KiB arena), three whole ones
/// in each 64 KiB read of the socket.
#[test]
fn a_tcp_poll_stops_handing_up_fragments_after_its_byte_budget() {
    let first = |cap| first_poll_delivers("tcp", "recv_poll_bytes", cap, 20 << 10, 6);
    assert_eq!(first("1"), 1, "1 byte: one fragment per poll");
    assert_eq!(first("40k"), 2, "40 KiB: two fragments");
    assert!(first("16m") >= 3, "16 MiB: at least what one read brought");
}
