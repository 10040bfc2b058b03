//! What each filter promises beyond the conformance cases: compression bounds and choices,
//! fault injection per kind with seeded replay, trace counters, and runtime attributes.

use vmi_core::Operations;
use vmi_core::{Buffer, Recv, Status, VmiError};
use vmi_tests::harness::{Dev, Mode, Pair, dev, spec};

fn lo() -> Dev {
    dev("t", "loopback", &[])
}

fn pair(a: &[Dev], b: &[Dev], label: &str) -> Pair {
    let p = Pair::new(
        spec(a, &lo(), Mode::Static),
        spec(b, &lo(), Mode::Static),
        label.to_string(),
        false,
    );
    assert!(p.ha.conn.is_some(), "{label}: {:?}", p.ha.outcome);
    p
}

fn compressible(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i / 100) as u8).collect()
}

#[test]
fn compression_bombs_are_refused_before_allocating() {
    let a = [dev("z", "compress", &[])];
    let b = [dev("z", "compress", &[("max_message", "64k")])];
    let mut p = pair(&a, &b, "bomb");
    p.a.send(p.conn(), [Buffer::from(compressible(1 << 20))], 0)
        .unwrap();
    p.a.send(p.conn(), [Buffer::from(compressible(60_000))], 0)
        .unwrap();
    p.pump(|p| p.hb.failed.len() == 1 && p.hb.received.len() == 1);
    let (status, detail) = &p.hb.failed[0];
    assert_eq!(*status, Status::TooLarge);
    assert!(
        detail.contains("1048576 bytes after decompression")
            && detail.contains("compression bomb refused"),
        "{detail}"
    );
    assert_eq!(
        p.hb.received[0].1,
        compressible(60_000),
        "fragments under the bound still arrive"
    );
    assert_eq!(p.b.attr_get("z", "refused").unwrap(), "1");
}

#[test]
fn compression_only_when_it_pays_and_either_algorithm_decodes() {
    let a = [dev(
        "z",
        "compress",
        &[("algorithm", "zstd"), ("threshold", "1k")],
    )];
    let b = [dev("z", "compress", &[("algorithm", "lz4")])];
    let mut p = pair(&a, &b, "choices");
    let mut rng = vmi_tests::Rng::new("compression choices");
    let random: Vec<u8> = (0..50_000).map(|_| rng.next_u64() as u8).collect();
    p.a.send(p.conn(), [Buffer::from(compressible(100_000))], 0)
        .unwrap();
    p.a.send(p.conn(), [Buffer::from(random.clone())], 0)
        .unwrap();
    p.a.send(p.conn(), [Buffer::from(compressible(500))], 0)
        .unwrap();
    p.pump(|p| p.hb.received.len() == 3);
    assert_eq!(
        p.hb.received[0].1,
        compressible(100_000),
        "zstd sender, lz4-configured receiver"
    );
    assert_eq!(p.hb.received[1].1, random);
    assert_eq!(p.hb.received[2].1, compressible(500));
    assert_eq!(
        p.a.attr_get("z", "compressed").unwrap(),
        "1",
        "only the compressible, large fragment"
    );
    assert_eq!(
        p.a.attr_get("z", "skipped").unwrap(),
        "1",
        "random data would not shrink"
    );
    let out: u64 = p.a.attr_get("z", "bytes_out").unwrap().parse().unwrap();
    assert!(out < 10_000, "100 KB of runs compressed to {out} bytes");
}

#[test]
fn attributes_change_a_live_chain() {
    let a = [
        dev("z", "compress", &[("algorithm", "zstd")]),
        dev("f", "fault", &[("seed", "1")]),
    ];
    let b = [dev("z", "compress", &[])];
    let mut p = pair(&a, &b, "attrs");
    p.a.attr_set("z", "level", "19").unwrap();
    assert_eq!(p.a.attr_get("z", "level").unwrap(), "19");
    let e = p.a.attr_set("z", "level", "99").unwrap_err();
    assert!(
        matches!(e, VmiError::Attribute { .. }) && e.to_string().contains("expected 1 to 19"),
        "{e}"
    );
    let e = p.a.attr_get("nosuch", "level").unwrap_err();
    assert!(e.to_string().contains("running devices: z, f, t"), "{e}");
    assert!(p.a.attr_get("z", "nosuch").is_err());

    p.a.attr_set("f", "drop", "1").unwrap();
    for i in 0..5u8 {
        p.a.send(p.conn(), [Buffer::from(vec![i])], u64::from(i))
            .unwrap();
    }
    p.pump(|p| p.ha.completions.len() == 5);
    for _ in 0..10 {
        p.b.poll(&mut p.hb);
    }
    assert!(p.hb.received.is_empty(), "dropped while drop=1");
    assert!(
        p.ha.completions.iter().all(|s| *s == Status::Ok),
        "a drop looks like a successful send"
    );
    p.a.attr_set("f", "drop", "0").unwrap();
    p.a.send_inline(p.conn(), b"through").unwrap();
    p.pump(|p| p.hb.received.len() == 1);
    assert_eq!(p.a.attr_get("f", "dropped").unwrap(), "5");
}

fn delivered(p: &mut Pair, n: u8) -> Vec<u8> {
    // Buffer sends: each completes (inline sends that succeed have no completion).
    for i in 0..n {
        p.a.send(p.conn(), [Buffer::from(vec![i])], u64::from(i))
            .unwrap();
    }
    p.pump(|p| p.ha.completions.len() == n as usize);
    for _ in 0..50 {
        p.a.poll(&mut p.ha);
        p.b.poll(&mut p.hb);
    }
    p.hb.received.iter().map(|r| r.1[0]).collect()
}

#[test]
fn fault_drop_is_seeded_and_replayable() {
    let run = |seed| {
        let b = [dev(
            "f",
            "fault",
            &[("drop", "0.5"), ("seed", seed), ("direction", "receive")],
        )];
        let mut p = pair(&[], &b, "drop");
        delivered(&mut p, 100)
    };
    let first = run("99");
    assert!(
        first.len() > 20 && first.len() < 80,
        "about half delivered: {}",
        first.len()
    );
    assert_eq!(first, run("99"), "the same seed drops the same fragments");
    assert_ne!(first, run("100"));
}

#[test]
fn fault_duplicate_reorder_delay_and_corrupt() {
    let mut p = pair(
        &[],
        &[dev(
            "f",
            "fault",
            &[("duplicate", "1"), ("direction", "receive")],
        )],
        "dup",
    );
    let mut got = delivered(&mut p, 3);
    got.sort_unstable();
    assert_eq!(
        got,
        [0, 0, 1, 1, 2, 2],
        "each fragment arrives twice (duplicates trail, like a network's)"
    );

    let mut p = pair(
        &[dev(
            "f",
            "fault",
            &[("reorder", "1"), ("direction", "send")],
        )],
        &[],
        "reorder",
    );
    let got = delivered(&mut p, 6);
    assert_eq!(
        got,
        [1, 0, 3, 2, 5, 4],
        "each held fragment passes after the next one"
    );

    let mut p = pair(
        &[],
        &[dev("f", "fault", &[("delay", "1"), ("delay_ms", "30")])],
        "delay",
    );
    let start = std::time::Instant::now();
    p.a.send_inline(p.conn(), b"slow").unwrap();
    p.pump(|p| p.hb.received.len() == 1);
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(30),
        "held for delay_ms"
    );
    assert_eq!(p.b.attr_get("f", "delayed").unwrap(), "1");

    let original = vec![0u8; 64];
    let mut p = pair(
        &[dev(
            "f",
            "fault",
            &[("corrupt", "1"), ("direction", "send")],
        )],
        &[],
        "corrupt",
    );
    let buf = Buffer::from(original.clone());
    p.a.send(p.conn(), [buf], 0).unwrap();
    p.pump(|p| p.hb.received.len() == 1);
    let got = &p.hb.received[0].1;
    let flipped: u32 = got
        .iter()
        .zip(&original)
        .map(|(a, b)| (a ^ b).count_ones())
        .sum();
    assert_eq!(flipped, 1, "exactly one bit differs");
}

#[test]
fn trace_counts_per_connection_and_direction() {
    let t = [dev("tr", "trace", &[])];
    let mut p = pair(&t, &t, "trace");
    for _ in 0..3 {
        let s = p.a.stream_begin(p.conn()).unwrap();
        p.a.stream_send(&s, [Buffer::from(vec![1u8; 60])], 0)
            .unwrap();
        p.a.stream_end(s, [Buffer::from(vec![2u8; 40])], 0).unwrap();
    }
    p.pump(|p| p.hb.received.iter().filter(|r| r.0 == Recv::End).count() == 3);
    let get = |v: &vmi_core::Vmi, n: &str| v.attr_get("tr", n).unwrap();
    assert_eq!(
        (
            get(&p.a, "sent_messages"),
            get(&p.a, "sent_fragments"),
            get(&p.a, "sent_bytes")
        ),
        ("3".into(), "6".into(), "300".into())
    );
    assert_eq!(
        (get(&p.b, "received_messages"), get(&p.b, "received_bytes")),
        ("3".into(), "300".into())
    );
    let lines = get(&p.a, "counters");
    assert_eq!(lines.lines().count(), 1);
    assert!(
        lines.contains("sent: messages=3 fragments=6 bytes=300 errors=0"),
        "{lines}"
    );
    p.a.attr_set("tr", "log", "true").unwrap();
    assert_eq!(get(&p.a, "log"), "true");
}
