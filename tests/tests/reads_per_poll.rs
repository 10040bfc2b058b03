//! Large fragments per poll: shared memory's single-copy reads (`single_copy_poll_bytes`) and
//! TCP's fragments handed up as IRBs (`recv_poll_bytes`). A poll stops once that many bytes
//! were read (at least one fragment), so the buffers they fill stay few and warm in the
//! cache; the rest waits (in the ring, in the socket) for the next poll, and nothing is lost.

use std::time::{Duration, Instant};

use vmi_conformance::pair::{Dev, Pair, spec};
use vmi_core::prelude::*;
use vmi_tests::register_all;

/// Sends `count` messages of `size` bytes over `transport` with the receiver idle, then
/// polls the receiver: how many the first poll delivered, after checking that the following
/// polls deliver the rest, whole and in order. `param` = `poll_bytes` caps the bytes per poll.
fn first_poll_delivers(
    transport: &str,
    param: &str,
    poll_bytes: &str,
    size: usize,
    count: usize,
) -> usize {
    register_all();
    let dev = Dev::new(transport, transport).param(param, poll_bytes);
    let mut p = Pair::new(
        spec(&[], &dev),
        spec(&[], &dev),
        format!("{transport} {param}={poll_bytes}"),
        false,
    );
    // Settle both sides (hellos, the single-copy probe), then send with the receiver idle.
    for _ in 0..20 {
        p.a.poll(&mut p.ha);
        p.b.poll(&mut p.hb);
    }
    let conn = p.conn();
    let messages: Vec<Vec<u8>> = (0..count)
        .map(|m| (0..size).map(|i| (i * 7 + m * 13) as u8).collect())
        .collect();
    for (m, data) in messages.iter().enumerate() {
        p.a.send(conn, [Buffer::from_vec(data.clone())], m as u64)
            .expect("send");
    }
    // Shared memory: the records are in the ring once the sender's polls wrote them (its
    // sends complete when the receiver has read them). TCP: a send completes when the
    // socket took it, so all of them are in the kernel when the receiver polls.
    let start = Instant::now();
    for _ in 0..10 {
        p.a.poll(&mut p.ha);
    }
    while transport == "tcp" && p.ha.completions.len() < count {
        p.a.poll(&mut p.ha);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "sends not written"
        );
    }
    p.b.poll(&mut p.hb);
    let first = p.hb.received.len();
    p.pump(|p| p.hb.received.len() >= count);
    assert!(
        p.ha.completions.iter().all(|s| s.is_ok()),
        "a send failed: {:?}",
        p.ha.completions
    );
    let received: Vec<Vec<u8>> = p.hb.received.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(received, messages, "every message whole and in order");
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
