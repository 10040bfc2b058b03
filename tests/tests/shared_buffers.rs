//! A shared buffer (`Buffer::shared`): the same read-only bytes sent by many sends at once,
//! over every transport and through a filter, arrive intact every time, are never written,
//! and are let go once every send has completed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_tests::harness::{Mode, Pair, dev, spec};

const SENDS: usize = 200;
const SIZE: usize = 64 * 1024;

fn run(label: &str, transport: &str, filters: &[&str]) {
    let filters: Vec<_> = filters.iter().map(|f| dev(f, f, &[])).collect();
    let t = dev("t", transport, &[]);
    let sp = || spec(&filters, &t, Mode::Static);
    let mut p = Pair::new(sp(), sp(), label.into(), false);
    let conn = p.conn();
    let bytes: Arc<[u8]> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    let start = Instant::now();
    let mut sent = 0;
    while p.hb.received.len() < SENDS {
        while sent < SENDS && p.a.sends_available() > 0 {
            p.a.send(conn, [Buffer::shared(bytes.clone())], sent as u64)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            sent += 1;
        }
        p.a.poll(&mut p.ha);
        p.b.poll(&mut p.hb);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{label}: {} of {SENDS} arrived",
            p.hb.received.len()
        );
    }
    p.pump(|p| p.ha.completions.len() >= SENDS);
    for (i, (cmd, got)) in p.hb.received.iter().enumerate() {
        assert_eq!(*cmd, Recv::End, "{label}: message {i} is one fragment");
        assert!(got[..] == bytes[..], "{label}: message {i} differs");
    }
    assert!(
        p.ha.completions.iter().all(|s| s.is_ok()),
        "{label}: a send failed"
    );
    assert_eq!(
        Arc::strong_count(&bytes),
        1,
        "{label}: every send let the shared bytes go"
    );
}

#[test]
fn one_shared_buffer_in_many_sends_arrives_intact_everywhere() {
    run("loopback", "loopback", &[]);
    run("shmem", "shmem", &[]);
    run("tcp", "tcp", &[]);
    run("crc over shmem", "shmem", &["crc"]);
    run("compress over tcp", "tcp", &["compress"]);
}
