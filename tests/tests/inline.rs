//! The transports' fast paths (device ABI 1.2): `send_inline` puts a small whole message
//! straight into the shared-memory ring, with no IRB, when nothing is queued ahead of it;
//! otherwise (the ring is full, a stream's fragments wait, a filter is on the chain) it takes
//! the IRB path. `poll_direct` hands received fragments to the host with no IRB, unless a
//! filter is on the receive chain or the host must deliver something else first. Order is
//! kept either way, nothing is lost, and a grabbed slab stays readable.

use std::time::{Duration, Instant};

use vmi_core::GrabbedSlab;
use vmi_core::prelude::*;
use vmi_tests::harness::{Mode, Pair, dev, spec};

const MESSAGES: u64 = 6_000;
const SIZE: usize = 1024;

/// Every message carries its sequence number in its first 8 bytes, and its length. Every
/// 100th fragment is grabbed and checked only after the next 50 messages arrived.
#[derive(Default)]
struct Checker {
    current: Vec<u8>,
    next: u64,
    bad: Vec<String>,
    fragments: u64,
    kept: Vec<(u64, Vec<u8>, GrabbedSlab)>,
}

impl Handler for Checker {
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        self.fragments += 1;
        let bytes = slab.read_to_vec();
        if self.fragments.is_multiple_of(100) {
            slab.rewind();
            let g = slab.grab().expect("a received slab can be kept");
            self.kept.push((self.next, bytes.clone(), g));
        }
        let next = self.next;
        self.kept.retain_mut(|(at, expect, g)| {
            if next < *at + 50 {
                return true;
            }
            let again = g.read_to_vec();
            assert_eq!(
                &again, expect,
                "a grabbed slab changed after 50 more messages"
            );
            false
        });
        self.current.extend(bytes);
        if cmd != Recv::End {
            return;
        }
        let msg = std::mem::take(&mut self.current);
        let seq = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
        if seq != self.next || msg.len() != SIZE || msg[8..].iter().any(|&b| b != seq as u8) {
            self.bad.push(format!(
                "expected {} got {seq} ({} bytes)",
                self.next,
                msg.len()
            ));
        }
        self.next = seq + 1;
    }
}

fn message(seq: u64) -> Vec<u8> {
    let mut m = vec![seq as u8; SIZE];
    m[..8].copy_from_slice(&seq.to_le_bytes());
    m
}

/// Streams MESSAGES messages, every 7th as a 3-fragment stream (IRB path), the rest inline;
/// the receiver reads only every 500 sends, so the ring fills and sends fall back. Returns
/// the sender's `inline_sends` attribute and the fragments the receiver took with no IRB:
/// handed over by the transport's poll (`direct_receives`), and read by the host from lent
/// rings (`lent_receives`, shared memory only). Checks that the sends the host wrote into
/// lent send rings itself (`lent_sends`) are among the inline sends.
fn run(
    label: &str,
    transport: vmi_conformance::pair::Dev,
    filters: &[vmi_conformance::pair::Dev],
) -> (u64, u64, u64) {
    let sp = || spec(filters, &transport, Mode::Static);
    let mut p = Pair::new(sp(), sp(), label.into(), false);
    let conn = p.conn();
    let mut rx = Checker::default();
    let start = Instant::now();
    let mut seq = 0;
    while seq < MESSAGES {
        let m = message(seq);
        let sent = if seq % 7 == 0 {
            let parts = [&m[..100], &m[100..600], &m[600..]];
            p.a.sends_available() >= 3 && {
                let s = p.a.stream_begin(conn).expect("begin");
                p.a.stream_send(&s, [Buffer::from_vec(parts[0].to_vec())], 1)
                    .expect("fragment");
                p.a.stream_send(&s, [Buffer::from_vec(parts[1].to_vec())], 2)
                    .expect("fragment");
                p.a.stream_end(s, [Buffer::from_vec(parts[2].to_vec())], 3)
                    .expect("end");
                true
            }
        } else {
            match p.a.send_inline(conn, &m) {
                Ok(()) => true,
                Err(VmiError::Busy { .. }) => false,
                Err(e) => panic!("{label}: {e}"),
            }
        };
        if sent {
            seq += 1;
        }
        if !sent || seq % 500 == 0 {
            p.a.poll(&mut p.ha);
            p.b.poll(&mut rx);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{label}: too slow"
        );
    }
    while rx.next < MESSAGES {
        p.a.poll(&mut p.ha);
        p.b.poll(&mut rx);
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{label}: only {} of {MESSAGES} arrived",
            rx.next
        );
    }
    assert!(
        rx.bad.is_empty(),
        "{label}: {:?}",
        &rx.bad[..rx.bad.len().min(5)]
    );
    assert!(
        p.ha.completions.iter().all(|s| s.is_ok()),
        "{label}: a send failed"
    );
    let count = |v: &Vmi, name: &str| -> u64 {
        v.attr_get("t", name)
            .expect("shmem reports its fast paths")
            .parse()
            .expect("a number")
    };
    let lent = |v: &Vmi, name: &str| -> u64 {
        v.attr_get("t", name)
            .map_or(0, |v| v.parse().expect("a number"))
    };
    let inline = count(&p.a, "inline_sends");
    let written = lent(&p.a, "lent_sends");
    assert!(
        written <= inline,
        "{label}: the host's writes count as inline sends"
    );
    (
        inline,
        count(&p.b, "direct_receives"),
        lent(&p.b, "lent_receives"),
    )
}

#[test]
fn inline_sends_skip_the_irb_when_they_can_and_keep_order_when_they_cannot() {
    let _ = env_logger::builder().is_test(true).try_init();
    let inline = MESSAGES - MESSAGES.div_ceil(7);
    let (direct, received, lent) = run("shmem", shmem(), &[]);
    assert!(direct > 0, "no message took the fast path");
    assert!(received > 0, "no fragment was handed over with no IRB");
    assert!(lent > 0, "the host read no fragment from a lent ring");
    assert!(
        direct < inline,
        "every inline message took the fast path ({direct}): the ring never filled, so the fallback was not tested"
    );
}

/// One message at a time, each polled through before the next: nothing queues, so the
/// rings stay lent, and the host writes the sends into the send ring itself and reads them
/// from the receive ring itself; every message arrives whole and in order.
#[test]
fn shmem_one_at_a_time_goes_through_lent_rings_both_ways() {
    let sp = || spec(&[], &shmem(), Mode::Static);
    let mut p = Pair::new(sp(), sp(), "shmem-lent".into(), false);
    let conn = p.conn();
    let mut rx = Checker::default();
    let start = Instant::now();
    for seq in 0..200 {
        p.a.send_inline(conn, &message(seq))
            .expect("an inline send");
        while rx.next <= seq {
            p.a.poll(&mut p.ha);
            p.b.poll(&mut rx);
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "message {seq} never arrived"
            );
        }
    }
    assert!(rx.bad.is_empty(), "{:?}", &rx.bad[..rx.bad.len().min(5)]);
    let attr = |v: &Vmi, name: &str| -> u64 {
        v.attr_get("t", name)
            .expect("shmem reports it")
            .parse()
            .expect("a number")
    };
    let (written, read) = (attr(&p.a, "lent_sends"), attr(&p.b, "lent_receives"));
    assert!(
        written > 150,
        "the host wrote {written} of 200 sends itself"
    );
    assert!(read > 150, "the host read {read} of 200 fragments itself");
    assert_eq!(attr(&p.a, "inline_sends"), 200);
}

/// With `lend_rings = false` the transport reads every ring itself: the same stream arrives
/// the same, and the host reads nothing.
#[test]
fn shmem_without_lent_rings_reads_every_ring_itself() {
    let t = dev(
        "t",
        "shmem",
        &[("ring_size", "64k"), ("lend_rings", "false")],
    );
    let (direct, received, lent) = run("shmem-unlent", t, &[]);
    assert!(direct > 0, "no message took the fast path");
    assert_eq!(lent, 0, "a ring was read by the host although not lent");
    assert!(received > 0, "no fragment was handed over with no IRB");
}

/// TCP writes inline only the first send of a poll turn (later ones are batched into one
/// writev through the IRB path); fragments are received directly.
#[test]
fn tcp_takes_the_fast_paths_where_they_fit() {
    let inline = MESSAGES - MESSAGES.div_ceil(7);
    let (direct, received, _) = run("tcp", dev("t", "tcp", &[]), &[]);
    assert!(
        direct > 0 && direct < inline,
        "{direct} of {inline} inline sends took the fast path"
    );
    assert!(received > 0, "no fragment was received with no IRB");
}

fn shmem() -> vmi_conformance::pair::Dev {
    dev("t", "shmem", &[("ring_size", "64k")])
}

#[test]
fn a_filter_on_the_chain_turns_the_fast_path_off() {
    let crc = dev("crc", "crc", &[]);
    for (label, t) in [
        ("shmem + crc", shmem()),
        ("tcp + crc", dev("t", "tcp", &[])),
    ] {
        let (direct, received, lent) = run(label, t, std::slice::from_ref(&crc));
        assert_eq!(direct, 0, "{label}: the CRC filter must see every send");
        assert_eq!(
            (received, lent),
            (0, 0),
            "{label}: the CRC filter must see every fragment received"
        );
    }
}
