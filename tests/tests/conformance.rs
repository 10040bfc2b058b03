//! The conformance kit (`vmi-conformance`) run against every shipped device, statically
//! registered and loaded from its shared object: filters alone in the one-device harness and
//! over the loopback transport, transports bare. Each device crate also runs the kit from its
//! own `cargo test`; this file adds the shared-object mode and the cross-device cases.

use vmi_conformance::suite::{self, Subject};
use vmi_core::Status;
use vmi_tests::harness::{Dev, Mode, Pair, dev, in_mode, spec};

fn subjects(mode: Mode) -> Vec<Subject> {
    let m = |d: Dev| in_mode(&d, mode);
    let lo = m(dev("t", "loopback", &[("max_fragment", "1m")]));
    let filter = |label: &str, d: Dev, overhead| Subject {
        label: format!("{label} ({mode:?})"),
        filters: vec![m(d)],
        transport: lo.clone(),
        overhead,
    };
    let transport = |label: &str, d: Dev| Subject::transport(&format!("{label} ({mode:?})"), m(d));
    vec![
        transport("loopback", dev("t", "loopback", &[("max_fragment", "1m")])),
        transport("tcp", dev("t", "tcp", &[("max_fragment", "1m")])),
        transport("shmem", dev("t", "shmem", &[("max_fragment", "1m")])),
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

#[test]
fn every_device_in_chains_static_and_shared() {
    vmi_tests::ensure_built();
    vmi_tests::register_all();
    for mode in [Mode::Static, Mode::Shared] {
        for s in subjects(mode) {
            suite::chain(&s);
        }
    }
}

#[test]
fn every_filter_alone_in_the_harness() {
    suite::filter_alone::<vmi_skeleton::SkeletonFilter>(&[]);
    suite::filter_alone::<vmi_crc::CrcFilter>(&[]);
    suite::filter_alone::<vmi_compress::CompressFilter>(&[("threshold", "64")]);
    suite::filter_alone::<vmi_compress::CompressFilter>(&[
        ("algorithm", "zstd"),
        ("threshold", "64"),
    ]);
    suite::filter_alone::<vmi_fault::FaultFilter>(&[("seed", "42")]);
    suite::filter_alone::<vmi_trace::TraceFilter>(&[]);
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
            vmi_core::Operations::send_inline(&mut p.a, p.ha.conn.unwrap(), &[i; 333]).unwrap();
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
