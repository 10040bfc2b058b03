//! Two-endpoint harness: a sender and a receiver joined by simulated rails (each a FIFO of
//! records), with rails that fail mid-transfer, seeded randomness (the seed is printed), and
//! a check that every fragment arrives once, whole and in order.

use std::collections::VecDeque;
use std::sync::Arc;

use super::receiver::{Place, Ready, Receiver, ReceiverConfig};
use super::sender::{Sender, SenderConfig};
use super::wire::Record;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn content(id: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (id as usize * 31 + i * 7) as u8).collect()
}

struct Run {
    delivered: Vec<(u64, Vec<u8>)>,
    resent: u64,
    per_rail: Vec<u64>,
}

/// Sends `count` fragments over `rails` rails; rail `kill` (if any) fails after `kill_at`
/// steps, losing some of what it carried. Returns what the receiver delivered.
fn run(seed: u64, rails: usize, count: u64, kill: Option<(usize, u64)>) -> Run {
    println!("bond pair: seed {seed}");
    let mut rng = Rng(seed | 1);
    let mut tx: Sender<u64> = Sender::new(
        SenderConfig {
            chunk: 700,
            stripe_min: 500,
            rail_window: 2000,
            rail_chunks: 4,
            max_unacked: 32,
            max_retries: 3,
        },
        rails,
    );
    let mut rx = Receiver::new(ReceiverConfig {
        max_fragment: 5000,
        max_pending_bytes: 40_000,
        max_ahead: 64,
    });
    for r in 0..rails {
        tx.rail_up(r);
    }
    // Per rail: records on their way, with a completion not yet reported to the sender.
    let mut wire: Vec<VecDeque<([u8; 32], Vec<u8>)>> = vec![VecDeque::new(); rails];
    let mut unreported: Vec<VecDeque<u64>> = vec![VecDeque::new(); rails];
    let mut acks: VecDeque<u64> = VecDeque::new();
    let mut dead = vec![false; rails];
    let mut pushed = 0u64;
    let mut acked = 0u64;
    let mut delivered = Vec::new();
    let mut step = 0u64;
    while acked < count {
        step += 1;
        assert!(step < 1_000_000, "no progress (seed {seed})");
        if let Some((k, at)) = kill
            && step == at
            && !dead[k]
        {
            dead[k] = true;
            // Part of what was on the wire still arrives; the rest is lost with the rail.
            let keep = rng.below(wire[k].len() as u64 + 1) as usize;
            wire[k].truncate(keep);
            unreported[k].clear();
            tx.rail_down(k, step);
        }
        match rng.below(6) {
            0 if pushed < count => {
                let len = match rng.below(4) {
                    0 => 0,
                    1 => rng.below(100),
                    _ => rng.below(5000),
                } as usize;
                if tx
                    .push(Arc::from(content(pushed, len)), true, pushed)
                    .is_ok()
                {
                    pushed += 1;
                }
            }
            1 => {
                if let Some(o) = tx.next(step) {
                    let (a, b) = (o.offset as usize, (o.offset + o.len) as usize);
                    if !dead[o.rail] {
                        wire[o.rail].push_back((o.header, o.data[a..b].to_vec()));
                        unreported[o.rail].push_back(o.len);
                    }
                }
            }
            2 => {
                let r = rng.below(rails as u64) as usize;
                if let Some(len) = unreported[r].pop_front() {
                    tx.sent(r, len, true, step);
                }
            }
            3 | 4 => {
                let r = rng.below(rails as u64) as usize;
                if let Some((h, bytes)) = wire[r].pop_front() {
                    let Record::Data {
                        seq,
                        offset,
                        total,
                        end,
                    } = Record::decode(&h).unwrap()
                    else {
                        panic!("only data records travel this way");
                    };
                    let len = bytes.len() as u64;
                    if let Place::Into(d) = rx.place(seq, offset, len, total, end).unwrap() {
                        d.copy_from_slice(&bytes);
                        rx.placed(seq, offset, len);
                    }
                    while let Some(ready) = rx.pop() {
                        let Ready::Data { data, .. } = ready else {
                            panic!("nothing fails here");
                        };
                        let id = delivered.len() as u64;
                        delivered.push((id, data));
                    }
                    if let Some(a) = rx.ack_due() {
                        acks.push_back(a);
                    }
                }
            }
            _ => {
                if let Some(a) = acks.pop_front() {
                    acked += tx.ack(a).unwrap().len() as u64;
                }
            }
        }
    }
    Run {
        delivered,
        resent: tx.rails().iter().map(|r| r.resent).sum(),
        per_rail: tx.rails().iter().map(|r| r.bytes).collect(),
    }
}

fn check(run: &Run, count: u64, seed: u64) {
    assert_eq!(run.delivered.len() as u64, count, "seed {seed}");
    for (id, data) in &run.delivered {
        assert_eq!(
            data,
            &content(*id, data.len()),
            "fragment {id}, seed {seed}"
        );
    }
}

#[test]
fn fragments_arrive_once_in_order_over_two_rails() {
    for seed in 1..=20u64 {
        let r = run(seed * 0x9E37_79B9, 2, 300, None);
        check(&r, 300, seed);
        assert!(r.per_rail.iter().all(|&b| b > 0), "both rails carried data");
    }
}

#[test]
fn a_rail_that_fails_mid_transfer_loses_nothing() {
    let mut resent = 0;
    for seed in 1..=20u64 {
        let r = run(
            seed * 0x51_7CC1,
            3,
            300,
            Some(((seed % 3) as usize, 200 + seed * 37)),
        );
        check(&r, 300, seed);
        resent += r.resent;
    }
    assert!(resent > 0, "failover sent chunks again");
}

#[test]
fn the_last_rail_alone_carries_everything_after_the_others_fail() {
    let r = run(42, 2, 200, Some((0, 50)));
    check(&r, 200, 42);
}
