//! Shared single copies over shared memory (`coop_copy`): the receiver reads a large
//! fragment's chunks from the front while the sender, when it polls, writes chunks from the
//! back into the receiver's buffer. Every byte arrives whole and in order whether the sender
//! helps, does not poll at all, or sharing is turned off on one side.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vmi_conformance::pair::{Dev, Pair, Rec, spec, unique_key};
use vmi_core::prelude::*;
use vmi_tests::register_all;

const T: Duration = Duration::from_secs(60);

/// The numbers in the shmem device's `coop_copies` attribute: fragments received shared, of
/// them with chunks the sender wrote, chunks written for peers.
fn coop(vmi: &Vmi) -> (u64, u64, u64) {
    let text = vmi.attr_get("shm", "coop_copies").expect("coop_copies");
    let nums: Vec<u64> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    (nums[0], nums[1], nums[2])
}

fn message(size: usize, m: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i * 31 + m * 7 + (i >> 12)) as u8)
        .collect()
}

/// The sender in this thread, the receiver busy-polling in another: the sender's polls
/// find the shares the receiver opens and write their back halves. Messages of 256 KiB,
/// 1 MiB + 3 and 4 MiB (the largest in three pieces) arrive byte for byte; sends continue
/// (at most 200 or 20 s) until the sender has written chunks of some of them.
#[test]
fn both_ends_copy_a_shared_fragment_and_every_byte_arrives() {
    register_all();
    let dev = Dev::new("shm", "shmem");
    let server_key = unique_key("coop-b");
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let receiver = {
        let (key, dev, stop) = (server_key.clone(), dev.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut b = Vmi::with_spec(spec(&[], &dev), &key).expect("receiver");
            let mut h = Rec::default();
            tx.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                b.poll(&mut h);
            }
            let stats = coop(&b);
            (h, stats)
        })
    };
    rx.recv().unwrap();
    let mut a = Vmi::with_spec(spec(&[], &dev), &unique_key("coop-a")).expect("sender");
    let mut ha = Rec::default();
    a.connect("localhost", &server_key, b"", 0).unwrap();
    let start = Instant::now();
    while ha.outcome.is_none() {
        a.poll(&mut ha);
        assert!(start.elapsed() < T, "no connection");
    }
    let conn = ha.conn.expect("connected");
    // The handshake's last control byte is read at a control look (every 200 us at most).
    let settled = Instant::now();
    while settled.elapsed() < Duration::from_millis(50) {
        a.poll(&mut ha);
    }
    let sizes = [256 << 10, (1 << 20) + 3, 4 << 20];
    let mut sent: Vec<Vec<u8>> = Vec::new();
    while sent.len() < 6 || (coop(&a).2 == 0 && sent.len() < 200) {
        let m = sent.len();
        let data = message(sizes[m % sizes.len()], m);
        if data.len() == 4 << 20 {
            // Three pieces of one fragment: the sender's chunks cross their edges.
            let (x, rest) = data.split_at(1_000_001);
            let (y, z) = rest.split_at(7);
            a.send(
                conn,
                [
                    Buffer::from_vec(x.to_vec()),
                    Buffer::from_vec(y.to_vec()),
                    Buffer::from_vec(z.to_vec()),
                ],
                m as u64,
            )
            .unwrap();
        } else {
            a.send(conn, [Buffer::from_vec(data.clone())], m as u64)
                .unwrap();
        }
        sent.push(data);
        while ha.completions.len() < sent.len() {
            a.poll(&mut ha);
            assert!(start.elapsed() < T, "a send never completed");
        }
        if start.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    assert!(
        ha.completions.iter().all(|s| s.is_ok()),
        "{:?}",
        ha.completions
    );
    let wrote = coop(&a).2;
    stop.store(true, Ordering::Relaxed);
    let (hb, (shared, helped, _)) = receiver.join().unwrap();
    let got: Vec<Vec<u8>> = hb.received.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(got.len(), sent.len());
    for (m, (g, s)) in got.iter().zip(&sent).enumerate() {
        assert!(g == s, "message {m} of {} bytes differs", s.len());
    }
    assert_eq!(shared as usize, sent.len(), "every fragment went shared");
    assert!(
        wrote > 0 && helped > 0,
        "the sender wrote no chunk in {} messages (wrote {wrote}, helped {helped})",
        sent.len()
    );
    println!(
        "{} messages, {helped} with the sender's chunks, {wrote} chunks written by it",
        sent.len()
    );
}

/// Polls both sides for 50 ms: the handshake's last control byte (whether the connector can
/// read and write the listener's memory) is read at a control look, every 200 us at most.
fn settle(p: &mut Pair) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(50) {
        p.a.poll(&mut p.ha);
        p.b.poll(&mut p.hb);
    }
}

/// A sender that does not poll while the receiver reads: the receiver claims every chunk
/// itself, and the fragment is whole.
#[test]
fn a_sender_that_does_not_poll_leaves_every_chunk_to_the_receiver() {
    register_all();
    let dev = Dev::new("shm", "shmem");
    let mut p = Pair::new(spec(&[], &dev), spec(&[], &dev), "shmem coop".into(), false);
    let conn = p.conn();
    settle(&mut p);
    let data = message(3 << 20, 1);
    p.a.send(conn, [Buffer::from_vec(data.clone())], 1).unwrap();
    // The sender's polls write the record; then only the receiver polls.
    for _ in 0..10 {
        p.a.poll(&mut p.ha);
    }
    let start = Instant::now();
    while p.hb.received.is_empty() {
        p.b.poll(&mut p.hb);
        assert!(start.elapsed() < T, "the fragment never arrived");
    }
    assert!(p.hb.received[0].1 == data, "the fragment differs");
    assert_eq!(
        coop(&p.b),
        (1, 0, 0),
        "shared, and no chunk from the sender"
    );
    p.pump(|p| !p.ha.completions.is_empty());
    assert_eq!(p.ha.completions, vec![Status::Ok]);
    assert_eq!(coop(&p.a).2, 0);
}

/// `coop_copy = false` on either side: fragments go by one read, as before sharing.
#[test]
fn coop_copy_false_on_either_side_turns_sharing_off() {
    register_all();
    for off_on_receiver in [true, false] {
        let on = Dev::new("shm", "shmem");
        let off = Dev::new("shm", "shmem").param("coop_copy", "false");
        let (sa, sb) = if off_on_receiver {
            (spec(&[], &on), spec(&[], &off))
        } else {
            (spec(&[], &off), spec(&[], &on))
        };
        let mut p = Pair::new(
            sa,
            sb,
            format!("coop off, receiver {off_on_receiver}"),
            false,
        );
        let conn = p.conn();
        settle(&mut p);
        let data = message(1 << 20, 2);
        p.a.send(conn, [Buffer::from_vec(data.clone())], 1).unwrap();
        p.pump(|p| !p.hb.received.is_empty() && !p.ha.completions.is_empty());
        assert!(p.hb.received[0].1 == data);
        assert_eq!(
            coop(&p.b).0,
            0,
            "receiver {off_on_receiver}: no share opened"
        );
    }
}
