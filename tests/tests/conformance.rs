//! The conformance suite: the same cases run against every device, statically registered
//! and loaded from its shared object. Filters run on top of the loopback transport;
//! transports run bare.

use vmi_core::Operations;
use vmi_core::{Buffer, Recv, Status, VmiError};
use vmi_tests::Rng;
use vmi_tests::harness::{Dev, Mode, Pair, dev, spec};

const MAX: u64 = 1 << 20;

/// A device under test: its filters (application first), transport, and the bytes its
/// filters take from the transport's maximum fragment.
struct Subject {
    label: &'static str,
    filters: Vec<Dev>,
    transport: Dev,
    overhead: u64,
}

fn subjects() -> Vec<Subject> {
    let lo = || dev("t", "loopback", &[("max_fragment", "1m")]);
    let filter = |label, d: Dev, overhead| Subject {
        label,
        filters: vec![d],
        transport: lo(),
        overhead,
    };
    vec![
        Subject {
            label: "loopback",
            filters: vec![],
            transport: lo(),
            overhead: 0,
        },
        Subject {
            label: "tcp",
            filters: vec![],
            transport: dev("t", "tcp", &[("max_fragment", "1m")]),
            overhead: 0,
        },
        filter("skeleton", dev("f", "skeleton", &[]), 0),
        filter("crc", dev("f", "crc", &[]), 4),
        filter(
            "compress-lz4",
            dev("f", "compress", &[("threshold", "64")]),
            0,
        ),
        filter(
            "compress-zstd",
            dev(
                "f",
                "compress",
                &[("algorithm", "zstd"), ("threshold", "64")],
            ),
            0,
        ),
        filter("fault-idle", dev("f", "fault", &[("seed", "42")]), 0),
        filter("trace", dev("f", "trace", &[]), 0),
    ]
}

fn pair(s: &Subject, mode: Mode) -> Pair {
    let sp = || spec(&s.filters, &s.transport, mode);
    let p = Pair::new(sp(), sp(), format!("{} ({mode:?})", s.label), false);
    assert!(p.ha.conn.is_some(), "{}: {:?}", p.label, p.ha.outcome);
    p
}

fn payload(rng: &mut Rng, len: usize, compressible: bool) -> Vec<u8> {
    if compressible {
        (0..len).map(|i| (i / 64) as u8).collect()
    } else {
        (0..len).map(|_| rng.next_u64() as u8).collect()
    }
}

fn for_each(case: impl Fn(&Subject, Mode)) {
    vmi_tests::ensure_built();
    for s in subjects() {
        for mode in [Mode::Static, Mode::Shared] {
            case(&s, mode);
        }
    }
}

#[test]
fn round_trip() {
    for_each(|s, mode| {
        let mut rng = Rng::new(&format!("round_trip {}", s.label));
        let mut p = pair(s, mode);
        assert_eq!(p.hb.accepted, vec![b"conformance".to_vec()], "{}", p.label);
        assert_eq!(
            p.ha.outcome,
            Some(Ok((true, b"hi".to_vec()))),
            "{}",
            p.label
        );
        let mut sent = Vec::new();
        for (len, c) in [
            (1, false),
            (100, true),
            (4096, false),
            (100_000, true),
            (200_000, false),
        ] {
            let data = payload(&mut rng, len, c);
            p.a.send(p.conn(), [Buffer::from(data.clone())], 0).unwrap();
            sent.push(data);
        }
        let n = sent.len();
        p.pump(|p| p.hb.received.len() == n && p.ha.completions.len() == n);
        for (i, data) in sent.iter().enumerate() {
            assert_eq!(
                p.hb.received[i],
                (Recv::End, data.clone()),
                "{}: message {i}",
                p.label
            );
        }
        assert!(
            p.ha.completions.iter().all(|s| *s == Status::Ok),
            "{}",
            p.label
        );
    });
}

#[test]
fn empty_payload() {
    for_each(|s, mode| {
        let mut p = pair(s, mode);
        p.a.send(p.conn(), [], 0).unwrap();
        p.a.send_inline(p.conn(), b"").unwrap();
        p.pump(|p| p.hb.received.len() == 2);
        assert!(
            p.hb.received.iter().all(|r| *r == (Recv::End, vec![])),
            "{}",
            p.label
        );
    });
}

#[test]
fn maximum_fragment_and_capability_overhead() {
    for_each(|s, mode| {
        let mut rng = Rng::new(&format!("max {}", s.label));
        let mut p = pair(s, mode);
        let max = p.a.capabilities().max_fragment;
        assert_eq!(
            max,
            MAX - s.overhead,
            "{}: the filter reports its overhead",
            p.label
        );
        let data = payload(&mut rng, max as usize, false);
        p.a.send(p.conn(), [Buffer::from(data.clone())], 0).unwrap();
        p.pump(|p| p.hb.received.len() == 1);
        assert!(
            p.hb.received[0].1 == data,
            "{}: a maximum fragment arrives intact",
            p.label
        );
        let over = p.a.send(p.conn(), [Buffer::zeroed(max as usize + 1)], 0);
        assert!(
            matches!(over, Err(VmiError::FragmentTooLarge { .. })),
            "{}: {over:?}",
            p.label
        );
    });
}

#[test]
fn many_fragments() {
    for_each(|s, mode| {
        let mut rng = Rng::new(&format!("many {}", s.label));
        let mut p = pair(s, mode);
        let stream = p.a.stream_begin(p.conn()).unwrap();
        let mut expect = Vec::new();
        for i in 0..999 {
            let data = payload(&mut rng, 1 + (i % 300), i % 2 == 0);
            expect.push(data.clone());
            p.a.stream_send(&stream, [Buffer::from(data)], i as u64)
                .unwrap();
        }
        p.a.stream_end(stream, [Buffer::from(b"last".to_vec())], 0)
            .unwrap();
        expect.push(b"last".to_vec());
        p.pump(|p| p.hb.received.len() == 1000);
        for (i, (cmd, data)) in p.hb.received.iter().enumerate() {
            assert_eq!(
                *cmd,
                if i == 999 { Recv::End } else { Recv::Fragment },
                "{}",
                p.label
            );
            assert_eq!(*data, expect[i], "{}: fragment {i}", p.label);
        }
    });
}

#[test]
fn transports_connect_accept_and_reject() {
    vmi_tests::ensure_built();
    for s in subjects().into_iter().filter(|s| s.filters.is_empty()) {
        for mode in [Mode::Static, Mode::Shared] {
            let sp = || spec(&s.filters, &s.transport, mode);
            let p = Pair::new(sp(), sp(), format!("{} ({mode:?})", s.label), true);
            assert_eq!(
                p.ha.outcome,
                Some(Ok((false, b"no thanks".to_vec()))),
                "{}",
                p.label
            );
            assert_eq!(p.a.connection_count(), 0, "{}", p.label);
        }
    }
}

#[test]
fn corruption_is_detected_by_crc() {
    vmi_tests::ensure_built();
    for mode in [Mode::Static, Mode::Shared] {
        let t = dev("t", "loopback", &[]);
        let crc = dev("crc", "crc", &[]);
        let corrupt = dev(
            "bad",
            "fault",
            &[("corrupt", "1"), ("direction", "send"), ("seed", "7")],
        );
        // The fault filter sits below the CRC on the sending side: it flips a bit after the
        // trailer was computed, as a bad link would.
        let sa = spec(&[crc.clone(), corrupt], &t, mode);
        let sb = spec(&[crc], &t, mode);
        let mut p = Pair::new(sa, sb, format!("crc ({mode:?})"), false);
        for i in 0..20u8 {
            p.a.send_inline(p.conn(), &[i; 333]).unwrap();
        }
        p.pump(|p| p.hb.failed.len() == 20);
        assert!(
            p.hb.received.is_empty(),
            "corrupted data is never delivered"
        );
        assert!(
            p.hb.failed
                .iter()
                .all(|(s, d)| *s == Status::Corrupt && d.contains("CRC32C mismatch")),
            "{:?}",
            p.hb.failed
        );
        assert_eq!(p.b.attr_get("crc", "mismatches").unwrap(), "20");
        assert_eq!(p.a.attr_get("bad", "corrupted").unwrap(), "20");
    }
}
