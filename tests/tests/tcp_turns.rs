//! A TCP sender writes at most `write_turn` bytes to a connection per poll, then lets the
//! socket go until its next poll (the acknowledgements that move the data on need it). Sends
//! queued faster than one turn, large and small and in several pieces, arrive byte for byte
//! and in order, and the sender's `write_turns` attribute shows that turns ended.

use vmi_conformance::pair::{Dev, Pair, spec};
use vmi_core::prelude::*;
use vmi_tests::{Rng, register_all};

fn turns(vmi: &Vmi) -> u64 {
    vmi.attr_get("tcp", "write_turns")
        .expect("tcp counts its write turns")
        .parse()
        .expect("a number")
}

#[test]
fn sends_queued_past_a_turn_arrive_whole_and_in_order() {
    register_all();
    let name = "sends_queued_past_a_turn_arrive_whole_and_in_order";
    let mut rng = Rng::new(name);
    // The smallest turn: 64 KiB per poll, against 8 MiB queued at once.
    let sender = Dev::new("tcp", "tcp").param("write_turn", "64k");
    let receiver = Dev::new("tcp", "tcp");
    let mut p = Pair::new(spec(&[], &sender), spec(&[], &receiver), name.into(), false);
    let conn = p.conn();
    let sizes = [
        1 << 20,
        8,
        (1 << 20) + 5,
        300 << 10,
        3,
        64 << 10,
        (2 << 20) + 1,
        100,
        (1 << 20) - 1,
        1,
        (1 << 20) + 7 * 4096,
    ];
    let mut sent = Vec::new();
    for (m, &size) in sizes.iter().enumerate() {
        let data = rng.bytes(size);
        // Every third in three pieces of one fragment: a part may span pieces.
        vmi_tests::send_in_pieces(&mut p.a, conn, &data, m as u64, m % 3 == 2);
        sent.push(data);
    }
    p.pump(|p| p.hb.received.len() == sizes.len() && p.ha.completions.len() == sizes.len());
    assert!(
        p.ha.completions.iter().all(|s| s.is_ok()),
        "{:?}",
        p.ha.completions
    );
    for (m, ((cmd, got), want)) in p.hb.received.iter().zip(&sent).enumerate() {
        assert_eq!(*cmd, Recv::End, "message {m} is one fragment");
        assert!(
            got == want,
            "message {m} of {} bytes differs ({} arrived)",
            want.len(),
            got.len()
        );
    }
    let ended = turns(&p.a);
    assert!(
        ended > 0,
        "no turn ended at 64 KiB, with about 8 MiB queued at once"
    );
}
