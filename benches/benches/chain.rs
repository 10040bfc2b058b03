//! Per-message cost of the chain engine with 0, 1 and 3 pass-through filters, on the
//! in-process loopback device (one-way messages: send_inline, then poll both sides).
//!
//! Run: `cargo bench -p vmi-benches --bench chain`

use std::time::Instant;
use vmi_core::Operations;

use vmi_benches::{key, register, spec};
use vmi_core::{ConnId, ConnectOutcome, Ctx, Handler, Recv, Slab, Vmi};

#[derive(Default)]
struct H {
    conn: Option<ConnId>,
    got: u64,
}

impl Handler for H {
    fn connected(
        &mut self,
        _ctx: &mut Ctx<'_>,
        conn: ConnId,
        outcome: ConnectOutcome<'_>,
        _token: u64,
    ) {
        assert!(matches!(outcome, ConnectOutcome::Accepted(_)));
        self.conn = Some(conn);
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _cmd: Recv, _slab: &mut Slab<'_>) {
        self.got += 1;
    }
}

fn per_message_ns(filters: usize, messages: u64) -> f64 {
    let (ka, kb) = (key(&format!("ca{filters}")), key(&format!("cb{filters}")));
    let mut a = Vmi::with_spec(spec("loopback", filters), &ka).unwrap();
    let mut b = Vmi::with_spec(spec("loopback", filters), &kb).unwrap();
    let (mut ha, mut hb) = (H::default(), H::default());
    a.connect("localhost", &kb, b"", 0).unwrap();
    while ha.conn.is_none() {
        a.poll(&mut ha);
        b.poll(&mut hb);
    }
    let conn = ha.conn.unwrap();
    let payload = [0u8; 8];
    for _ in 0..10_000 {
        a.send_inline(conn, &payload).unwrap();
        b.poll(&mut hb);
        a.poll(&mut ha);
    }
    let start = Instant::now();
    for _ in 0..messages {
        a.send_inline(conn, &payload).unwrap();
        b.poll(&mut hb);
        a.poll(&mut ha);
    }
    let ns = start.elapsed().as_nanos() as f64 / messages as f64;
    assert_eq!(hb.got, 10_000 + messages);
    ns
}

fn main() {
    register();
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 20_000 } else { 1_000_000 };
    println!(
        "chain overhead, loopback device, 8-byte one-way messages, {n} messages per run (best of 5)"
    );
    println!(
        "{:>8} {:>14} {:>18}",
        "filters", "ns/message", "ns/filter/message"
    );
    let mut base = 0.0;
    for filters in [0usize, 1, 3] {
        let best = (0..5)
            .map(|_| per_message_ns(filters, n))
            .fold(f64::INFINITY, f64::min);
        if filters == 0 {
            base = best;
            println!("{filters:>8} {best:>14.1} {:>18}", "-");
        } else {
            println!(
                "{filters:>8} {best:>14.1} {:>18.1}",
                (best - base) / filters as f64
            );
        }
    }
}
