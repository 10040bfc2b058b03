//! A receiver that falls behind holds bounded memory and pushes back on the sender, and
//! nothing is lost: over every transport, a sender streams 20 MB in 1 KiB messages to a
//! receiver that keeps (grabs) everything it is given without releasing it. The receiver's
//! IRBs stop at `MAX_RECEIVES_IN_FLIGHT`, the sender's at `MAX_SENDS_IN_FLIGHT` (further
//! sends are refused with `Busy`); once the receiver lets go, every message arrives, in order.

use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_core::{GrabbedSlab, MAX_RECEIVES_IN_FLIGHT, MAX_SENDS_IN_FLIGHT};
use vmi_tests::harness::{Mode, Pair, dev, spec};

const MESSAGES: u64 = 20_000;
const SIZE: usize = 1024;

#[derive(Default)]
struct Keeper {
    hold: bool,
    kept: Vec<GrabbedSlab>,
    next: u64,
    out_of_order: u64,
}

impl Keeper {
    fn check(&mut self, seq: u64) {
        if seq != self.next {
            self.out_of_order += 1;
        }
        self.next = seq + 1;
    }
}

impl Handler for Keeper {
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _cmd: Recv, slab: &mut Slab<'_>) {
        if self.hold {
            self.kept
                .push(slab.grab().expect("a received slab can be kept"));
        } else {
            let mut seq = [0u8; 8];
            slab.copy_to(&mut seq);
            self.check(u64::from_le_bytes(seq));
        }
    }
}

fn run(label: &str, transport: vmi_conformance::pair::Dev) {
    let _ = env_logger::builder().is_test(true).try_init();
    let sp = || spec(&[], &transport, Mode::Static);
    let mut p = Pair::new(sp(), sp(), label.into(), false);
    let conn = p.conn();
    let mut keeper = Keeper {
        hold: true,
        ..Default::default()
    };
    let mut payload = vec![0u8; SIZE];
    let mut sent = 0u64;
    let mut busy = 0u64;
    let mut max_a = 0;
    let mut max_b = 0;
    let mut stalled_since = Instant::now();
    let mut last = (0, 0);
    let start = Instant::now();
    // Phase 1: the receiver keeps everything; both sides run until nothing moves for 300 ms.
    loop {
        while sent < MESSAGES {
            payload[..8].copy_from_slice(&sent.to_le_bytes());
            match p.a.send_inline(conn, &payload) {
                Ok(()) => sent += 1,
                Err(VmiError::Busy { .. }) => {
                    busy += 1;
                    break;
                }
                Err(e) => panic!("{label}: {e}"),
            }
        }
        p.a.poll(&mut p.ha);
        p.b.poll(&mut keeper);
        max_a = max_a.max(p.a.irbs_in_use());
        max_b = max_b.max(p.b.irbs_in_use());
        let now = (sent, keeper.kept.len());
        if now != last {
            last = now;
            stalled_since = Instant::now();
        } else if stalled_since.elapsed() > Duration::from_millis(300) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{label}: phase 1 took too long"
        );
    }
    assert!(
        keeper.kept.len() <= MAX_RECEIVES_IN_FLIGHT,
        "{label}: the receiver was handed {} slabs",
        keeper.kept.len()
    );
    assert!(
        max_b <= MAX_RECEIVES_IN_FLIGHT + 16,
        "{label}: the receiver held {max_b} IRBs"
    );
    assert!(
        max_a <= MAX_SENDS_IN_FLIGHT + 16,
        "{label}: the sender held {max_a} IRBs"
    );
    assert!(
        sent < MESSAGES && busy > 0,
        "{label}: the sender was pushed back ({sent} sent, {busy} refused, {} kept, max_b {max_b}, max_a {max_a}, failed sends {:?})",
        keeper.kept.len(),
        p.ha.completions
            .iter()
            .filter(|s| !s.is_ok())
            .take(3)
            .collect::<Vec<_>>()
    );
    // Phase 2: the receiver lets go and reads everything; the sender finishes.
    let kept = std::mem::take(&mut keeper.kept);
    keeper.hold = false;
    for mut g in kept {
        let mut seq = [0u8; 8];
        g.copy_to(&mut seq);
        keeper.check(u64::from_le_bytes(seq));
    }
    while keeper.next < MESSAGES {
        while sent < MESSAGES && p.a.sends_available() > 0 {
            payload[..8].copy_from_slice(&sent.to_le_bytes());
            p.a.send_inline(conn, &payload).unwrap();
            sent += 1;
        }
        p.a.poll(&mut p.ha);
        p.b.poll(&mut keeper);
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{label}: only {} of {MESSAGES} arrived",
            keeper.next
        );
    }
    assert_eq!(
        keeper.out_of_order, 0,
        "{label}: messages arrived out of order"
    );
    assert_eq!(keeper.next, MESSAGES, "{label}: every message arrived");
}

#[test]
fn a_receiver_that_keeps_everything_pushes_back_and_loses_nothing_over_loopback() {
    run("loopback", dev("t", "loopback", &[]));
}

#[test]
fn a_receiver_that_keeps_everything_pushes_back_and_loses_nothing_over_tcp() {
    run("tcp", dev("t", "tcp", &[]));
}

#[test]
fn a_receiver_that_keeps_everything_pushes_back_and_loses_nothing_over_shmem() {
    run("shmem", dev("t", "shmem", &[]));
}
