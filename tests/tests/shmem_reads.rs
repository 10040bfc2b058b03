//! Shared memory's single-copy reads per poll (`single_copy_poll_bytes`): a poll stops
//! reading large fragments from the peer's memory once that many bytes were read (at least
//! one read), so the buffers they fill stay few and warm in the cache; the rest wait in the
//! ring for the next poll, and nothing is lost.

use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_tests::{register_all, unique_key};

/// Fragments of this size go by single copy (the default `single_copy_min` is 64 KiB).
const SIZE: usize = 128 * 1024;
const MESSAGES: usize = 4;

#[derive(Default)]
struct Side {
    conn: Option<ConnId>,
    received: Vec<Vec<u8>>,
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
}

/// Sends `MESSAGES` single-copy messages with the receiver idle, then polls the receiver:
/// how many the first poll delivered, after checking that the following polls deliver the
/// rest, whole and in order.
fn first_poll_delivers(poll_bytes: &str) -> usize {
    register_all();
    let text = format!(
        "<vmi>\n  <device name=\"shmem\"><param name=\"single_copy_poll_bytes\" value=\"{poll_bytes}\"/></device>\n  <chain name=\"send\"><use device=\"shmem\"/></chain>\n  <chain name=\"receive\"><use device=\"shmem\"/></chain>\n</vmi>\n"
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
    let messages: Vec<Vec<u8>> = (0..MESSAGES)
        .map(|m| (0..SIZE).map(|i| (i * 7 + m * 13) as u8).collect())
        .collect();
    for (m, data) in messages.iter().enumerate() {
        a.send(conn, [Buffer::from_vec(data.clone())], m as u64)
            .expect("send");
    }
    for _ in 0..10 {
        a.poll(&mut ha);
    }
    b.poll(&mut hb);
    let first = hb.received.len();
    let start = Instant::now();
    while hb.received.len() < MESSAGES {
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

#[test]
fn a_poll_stops_single_copy_reads_after_its_byte_budget() {
    assert_eq!(first_poll_delivers("0"), 1, "0: one read per poll");
    assert_eq!(first_poll_delivers("256k"), 2, "256 KiB: two 128 KiB reads");
    assert_eq!(first_poll_delivers("16m"), MESSAGES, "16 MiB: all of them");
}
