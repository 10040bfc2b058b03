//! Filter throughput on 1 MiB fragments: CRC32C and LZ4 through the chain (loopback
//! transport, send + receive), against calling `crc32c` and `lz4_flex` directly in the same
//! run. The chain's own cost is removed by subtracting a run without the filter.
//!
//! Run: `cargo bench -p vmi-benches --bench filters` (add `-- --quick` for a short run).

use std::time::Instant;
use vmi_core::Operations;

use vmi_benches::{key, register, spec_with};
use vmi_core::{Buffer, ConnId, ConnectOutcome, Ctx, Handler, Recv, SendCompletion, Slab, Vmi};

const SIZE: usize = 1 << 20;

#[derive(Default)]
struct H {
    conn: Option<ConnId>,
    got: u64,
    stash: Vec<Buffer>,
}

impl Handler for H {
    fn connected(
        &mut self,
        _ctx: &mut Ctx<'_>,
        conn: ConnId,
        outcome: ConnectOutcome<'_>,
        _t: u64,
    ) {
        assert!(matches!(outcome, ConnectOutcome::Accepted(_)));
        self.conn = Some(conn);
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        assert_eq!(cmd, Recv::End);
        assert_eq!(slab.len(), SIZE);
        self.got += 1;
    }
    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, done: &mut SendCompletion<'_>) {
        self.stash.extend(done.take_buffers());
    }
}

/// Text-like data: compressible, but not trivially.
fn data() -> Vec<u8> {
    let words = [
        "vmi ",
        "send ",
        "chain ",
        "fragment ",
        "slab ",
        "receive ",
        "device ",
        "poll ",
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(SIZE);
    while v.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(words[(x % 8) as usize].as_bytes());
        if x.is_multiple_of(5) {
            v.extend_from_slice(&x.to_le_bytes()[..3]);
        }
    }
    v.truncate(SIZE);
    v
}

/// Seconds per 1 MiB message through `[filters..., loopback]`, best of `reps`.
fn chain_secs(filters: &[&str], messages: u64, reps: usize) -> f64 {
    let payload = data();
    (0..reps)
        .map(|r| {
            let tag = format!("{}{r}", filters.join("-"));
            let (ka, kb) = (key(&format!("fa{tag}")), key(&format!("fb{tag}")));
            let mut a = Vmi::with_spec(spec_with("loopback", filters), &ka).unwrap();
            let mut b = Vmi::with_spec(spec_with("loopback", filters), &kb).unwrap();
            let (mut ha, mut hb) = (H::default(), H::default());
            a.connect("localhost", &kb, b"", 0).unwrap();
            while ha.conn.is_none() {
                a.poll(&mut ha);
                b.poll(&mut hb);
            }
            ha.stash.push(Buffer::from(payload.clone()));
            let conn = ha.conn.unwrap();
            let mut step = |ha: &mut H, hb: &mut H| {
                while ha.stash.is_empty() {
                    a.poll(ha);
                }
                let buf = ha.stash.pop().unwrap();
                a.send(conn, [buf], 0).unwrap();
                b.poll(hb);
                a.poll(ha);
            };
            for _ in 0..5 {
                step(&mut ha, &mut hb);
            }
            let start = Instant::now();
            for _ in 0..messages {
                step(&mut ha, &mut hb);
            }
            start.elapsed().as_secs_f64() / messages as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn direct_secs(messages: u64, f: impl Fn()) -> f64 {
    f();
    (0..3)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..messages {
                f();
            }
            start.elapsed().as_secs_f64() / messages as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    register();
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 20 } else { 300 };
    let payload = data();
    let gbs = |secs: f64, passes: f64| passes * SIZE as f64 / secs / 1e9;

    let base = chain_secs(&[], n, 3);
    let crc = chain_secs(&["crc"], n, 3) - base;
    let crc_direct = direct_secs(n, || {
        std::hint::black_box(crc32c::crc32c(std::hint::black_box(&payload)));
    });
    println!(
        "1 MiB fragments, loopback transport; chain cost without filters: {:.1} us/message",
        base * 1e6
    );
    println!(
        "CRC32C (hardware: {}):",
        if cfg!(target_arch = "x86_64") {
            "SSE4.2 when the CPU has it"
        } else {
            "ARMv8 CRC when available"
        }
    );
    println!(
        "  direct crc32c:             {:>8.2} GB/s",
        gbs(crc_direct, 1.0)
    );
    println!(
        "  crc filter (send+verify):  {:>8.2} GB/s per pass ({:.1} us per message for both passes)",
        gbs(crc, 2.0),
        crc * 1e6
    );

    let compressed = lz4_flex::block::compress(&payload);
    println!("LZ4 (ratio {:.2}):", SIZE as f64 / compressed.len() as f64);
    let lz4_direct = direct_secs(n, || {
        let c = lz4_flex::block::compress(std::hint::black_box(&payload));
        let d = lz4_flex::block::decompress(&c, SIZE).unwrap();
        std::hint::black_box(d);
    });
    let lz4 = chain_secs(&["compress"], n, 3) - base;
    println!(
        "  direct lz4_flex (compress + decompress): {:>8.1} us/message, {:>6.2} GB/s",
        lz4_direct * 1e6,
        gbs(lz4_direct, 1.0)
    );
    println!(
        "  compress filter (send + receive):        {:>8.1} us/message, {:>6.2} GB/s",
        lz4 * 1e6,
        gbs(lz4, 1.0)
    );
    println!("  filter / direct throughput: {:.2}", lz4_direct / lz4);
}
