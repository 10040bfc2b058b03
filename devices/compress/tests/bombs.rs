//! Compression bombs from a hostile peer: fragments whose header or frame claims far more
//! than they hold are refused before memory is committed, and real bombs (8 KB of zstd that
//! truly expand to 256 MiB) are decompressed at most one poll's budget at a time, in order.

use std::time::Instant;

use vmi_compress::CompressFilter;
use vmi_compress::wire::{Algorithm, FLAG_COMPRESSED, Header};
use vmi_conformance::harness::{Event, Harness, Outcome};
use vmi_device::{Op, Status};

fn fragment(alg: Algorithm, claim: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Header {
        algorithm: alg,
        original_len: claim,
    }
    .emit()
    .to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn claims_the_bytes_cannot_hold_are_refused_at_once() {
    let mut h = Harness::new::<CompressFilter>(&[]).unwrap();
    for (alg, body) in [
        (Algorithm::Lz4, vec![0xffu8; 16]),
        // A zstd frame whose own header declares 1 KiB, under a filter header claiming 256 MiB.
        (
            Algorithm::Zstd,
            zstd::bulk::compress(&[0u8; 1024], 3).unwrap(),
        ),
    ] {
        let start = Instant::now();
        let f = fragment(alg, 256 << 20, &body);
        match h.receive(Op::Recv, 1, &[&f], FLAG_COMPRESSED) {
            Outcome::Completed(Status::TooLarge, detail) => {
                assert!(detail.contains("cannot hold"), "{detail}")
            }
            other => panic!("{alg:?}: {other:?}"),
        }
        let took = start.elapsed();
        // Not a timing assertion of performance: a zero-fill of 256 MiB takes ~100 ms, the
        // refusal microseconds; 50 ms leaves room for any machine.
        assert!(took.as_millis() < 50, "{alg:?}: refusing took {took:?}");
    }
}

#[test]
fn real_bombs_are_decompressed_one_budget_per_poll_in_order() {
    let mut h = Harness::new::<CompressFilter>(&[("decompress_per_poll", "64m")]).unwrap();
    let big = vec![0u8; 256 << 20];
    let bomb = zstd::bulk::compress(&big, 19).unwrap();
    drop(big);
    assert!(bomb.len() < 64 * 1024, "a real bomb: {} bytes", bomb.len());
    let f = fragment(Algorithm::Zstd, 256 << 20, &bomb);
    let mut passed = 0;
    let mut pending = 0;
    for _ in 0..10 {
        match h.receive(Op::Recv, 1, &[&f], FLAG_COMPRESSED) {
            Outcome::Passed(p) => {
                assert_eq!(p.data.len(), 256 << 20);
                passed += 1;
            }
            Outcome::Pending => pending += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        (passed, pending),
        (1, 9),
        "one bomb per poll, the rest wait"
    );
    // An uncompressed fragment behind them waits too (order is kept).
    assert_eq!(h.receive(Op::Recv, 1, &[b"plain"], 0), Outcome::Pending);
    let mut order = Vec::new();
    for _ in 0..20 {
        h.poll(64);
        for e in h.events() {
            if let Event::PassedUp(p) = e {
                order.push(p.data.len());
            }
        }
        if order.len() == 10 {
            break;
        }
    }
    assert_eq!(order, [vec![256 << 20; 9], vec![5]].concat());
}
