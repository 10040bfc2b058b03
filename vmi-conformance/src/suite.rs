//! The conformance suite: the cases every device passes, written once.
//!
//! - [`filter_alone`]: a filter in the one-device [`Harness`].
//! - [`chain`]: a device in real chains between two [`vmi_core::Vmi`] ([`Pair`]).
//!
//! Every case panics with the subject's label and, for random data, the seed to replay.
#![forbid(unsafe_code)]

use vmi_core::abi::{VMI_FLAG_END, VMI_FLAG_FILTER_MASK};
use vmi_core::{Buffer, Disconnect, Operations, Recv, Status, VmiError};
use vmi_device::{Capabilities, Device, Op};

use crate::harness::{Harness, Outcome};
use crate::pair::{Dev, Pair, spec};
use crate::rng::Rng;

/// The largest fragment of the loopback transport filters are tested on.
pub const LOOPBACK_MAX: u64 = 1 << 20;

/// A device under test in a chain: its filters (application first), its transport, and the
/// bytes the filters take from the transport's maximum fragment.
#[derive(Clone, Debug)]
pub struct Subject {
    /// Names the subject in failure messages.
    pub label: String,
    /// Filters, application first.
    pub filters: Vec<Dev>,
    /// The transport.
    pub transport: Dev,
    /// Bytes the filters take from the transport's maximum fragment.
    pub overhead: u64,
}

impl Subject {
    /// A transport alone. Its `max_fragment` parameter should be set to keep the largest
    /// case quick (the suite sends one maximum fragment).
    pub fn transport(label: &str, transport: Dev) -> Subject {
        Subject {
            label: label.into(),
            filters: Vec::new(),
            transport,
            overhead: 0,
        }
    }

    /// A filter over the loopback transport (statically registered: call
    /// `vmi_loopback::register_static()` first), which takes `overhead` bytes per fragment.
    pub fn filter(label: &str, filter: Dev, overhead: u64) -> Subject {
        Subject::filter_over(label, filter, overhead, None)
    }

    /// As [`Subject::filter`], with the loopback transport loaded from `loopback` when given.
    pub fn filter_over(
        label: &str,
        filter: Dev,
        overhead: u64,
        loopback: Option<std::path::PathBuf>,
    ) -> Subject {
        let mut lo = Dev::new("t", "loopback").param("max_fragment", "1m");
        if let Some(l) = loopback {
            lo = lo.library(l);
        }
        Subject {
            label: label.into(),
            filters: vec![filter],
            transport: lo,
            overhead,
        }
    }

    fn pair(&self, reject: bool) -> Pair {
        let sp = || spec(&self.filters, &self.transport);
        let p = Pair::new(sp(), sp(), self.label.clone(), reject);
        if !reject {
            assert!(p.ha.conn.is_some(), "{}: {:?}", p.label, p.ha.outcome);
        }
        p
    }
}

fn payload(rng: &mut Rng, len: usize, compressible: bool) -> Vec<u8> {
    if compressible {
        (0..len).map(|i| (i / 64) as u8).collect()
    } else {
        rng.bytes(len)
    }
}

/// Every chain case for `s`: messages of many sizes, empty payloads, the maximum fragment
/// and one byte over, a stream of a thousand fragments, and (for a transport alone) connect
/// with accept and with reject.
pub fn chain(s: &Subject) {
    round_trip(s);
    empty_payload(s);
    maximum_fragment(s);
    many_fragments(s);
    abort(s);
    if s.filters.is_empty() {
        connect_accept_reject(s);
    }
}

/// Messages from 1 byte to 200 kB, random and compressible, arrive intact and in order, and
/// every send completes with success.
pub fn round_trip(s: &Subject) {
    let mut rng = Rng::new(&format!("round_trip {}", s.label));
    let mut p = s.pair(false);
    assert_eq!(p.hb.accepted, vec![b"conformance".to_vec()], "{}", p.label);
    assert_eq!(
        p.ha.outcome,
        Some(Ok((true, b"hi".to_vec()))),
        "{}: connect data and reply data arrive",
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
        p.a.send(p.conn(), [Buffer::from(data.clone())], 0)
            .unwrap_or_else(|e| panic!("{}: {e}", p.label));
        sent.push(data);
    }
    let n = sent.len();
    p.pump(|p| p.hb.received.len() == n && p.ha.completions.len() == n);
    for (i, data) in sent.iter().enumerate() {
        assert!(
            p.hb.received[i] == (Recv::End, data.clone()),
            "{}: message {i} ({} bytes) arrived changed",
            p.label,
            data.len()
        );
    }
    assert!(
        p.ha.completions.iter().all(|s| *s == Status::Ok),
        "{}: {:?}",
        p.label,
        p.ha.completions
    );
}

/// An empty send and an empty inline send each arrive as one empty last fragment.
pub fn empty_payload(s: &Subject) {
    let mut p = s.pair(false);
    p.a.send(p.conn(), [], 0).unwrap();
    p.a.send_inline(p.conn(), b"").unwrap();
    p.pump(|p| p.hb.received.len() == 2);
    assert!(
        p.hb.received.iter().all(|r| *r == (Recv::End, vec![])),
        "{}",
        p.label
    );
}

/// The chain reports the transport's maximum less the filters' overhead; a fragment of
/// exactly that size arrives intact, and one byte more is refused with a clear error.
pub fn maximum_fragment(s: &Subject) {
    let mut rng = Rng::new(&format!("max {}", s.label));
    let mut p = s.pair(false);
    let max = p.a.capabilities().max_fragment;
    if s.transport.ty == "loopback" {
        assert_eq!(
            max,
            LOOPBACK_MAX - s.overhead,
            "{}: the filter reports its overhead",
            p.label
        );
    }
    assert!(max > 0, "{}: a transport reports its maximum", p.label);
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
}

/// A stream of 1,000 fragments arrives in order, each marked fragment or end.
pub fn many_fragments(s: &Subject) {
    let mut rng = Rng::new(&format!("many {}", s.label));
    let mut p = s.pair(false);
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
}

/// An abort (device ABI 1.5's `VMI_OP_ABORT`) ends the connection at once: every send
/// issued completes (with success, or `Cancelled` if it had not finished: such a send may
/// or may not have reached the peer), all of them before the end is reported as a local
/// close; the peer gets only whole messages, the first ones sent, in order, and sees the
/// connection end other than by an orderly close.
pub fn abort(s: &Subject) {
    let mut p = s.pair(false);
    let conn = p.conn();
    let sent = 200usize;
    for i in 0..sent {
        let data = (i as u32).to_le_bytes().repeat(64);
        p.a.send(conn, [Buffer::from(data)], i as u64)
            .unwrap_or_else(|e| panic!("{}: send {i}: {e}", p.label));
    }
    p.a.abort(conn)
        .unwrap_or_else(|e| panic!("{}: abort: {e}", p.label));
    p.pump(|p| !p.ha.ended.is_empty() && !p.hb.ended.is_empty());
    let (reason, heard) = p.ha.ended[0].clone();
    assert_eq!(
        reason,
        Disconnect::Local,
        "{}: an abort is a local close",
        p.label
    );
    assert_eq!(
        (p.ha.completions.len(), heard),
        (sent, sent),
        "{}: every send completes once, before the end",
        p.label
    );
    let ok =
        p.ha.completions
            .iter()
            .take_while(|s| **s == Status::Ok)
            .count();
    assert!(
        p.ha.completions[ok..]
            .iter()
            .all(|s| *s == Status::Cancelled),
        "{}: after the first unfinished send, all are cancelled: {:?}",
        p.label,
        &p.ha.completions[ok..]
    );
    let whole: Vec<u32> =
        p.hb.received
            .iter()
            .filter(|(cmd, _)| *cmd == Recv::End)
            .map(|(_, d)| u32::from_le_bytes(d[..4].try_into().unwrap()))
            .collect();
    assert!(
        whole.len() <= sent && whole.iter().enumerate().all(|(i, &v)| v == i as u32),
        "{}: the peer got {} messages, not the first ones in order",
        p.label,
        whole.len()
    );
    assert!(
        p.hb.received
            .iter()
            .all(|(cmd, d)| *cmd == Recv::End && d.len() == 256),
        "{}: the peer got a message cut short",
        p.label
    );
    assert!(
        !matches!(p.hb.ended[0].0, Disconnect::Peer),
        "{}: the peer must not take an abort for an orderly close",
        p.label
    );
    assert!(p.a.abort(conn).is_err(), "{}: aborted already", p.label);
}

/// A rejected connect reports the peer's reply data and leaves no connection behind.
pub fn connect_accept_reject(s: &Subject) {
    let p = s.pair(true);
    assert_eq!(
        p.ha.outcome,
        Some(Ok((false, b"no thanks".to_vec()))),
        "{}",
        p.label
    );
    assert_eq!(p.a.connection_count(), 0, "{}", p.label);
}

/// Every harness case for the filter `D` with `params`: round trips through a sending and a
/// receiving instance, control operations passed untouched, hostile received bytes never
/// crashing it, capabilities that only shrink, and nothing kept.
pub fn filter_alone<D: Device>(params: &[(&str, &str)]) {
    let label = D::NAME.to_string_lossy().into_owned();
    let start =
        |what: &str| Harness::new::<D>(params).unwrap_or_else(|e| panic!("{label}: {what}: {e}"));
    let (mut tx, mut rx) = (start("sender"), start("receiver"));
    let mut rng = Rng::new(&format!("filter_alone {label}"));

    // Round trips: what one instance sends, the other restores.
    for (i, len) in [0usize, 1, 63, 100, 4096, 65_536, 100_000]
        .into_iter()
        .enumerate()
    {
        let data = payload(&mut rng, len, i % 2 == 0);
        let split = len / 3;
        let parts: [&[u8]; 2] = [&data[..split], &data[split..]];
        let down = match tx.submit(Op::Send, 7, &parts, VMI_FLAG_END) {
            Outcome::Passed(p) => p,
            other => panic!("{label}: a {len}-byte send was not passed down: {other:?}"),
        };
        assert_eq!(down.op, Op::Send, "{label}");
        assert_eq!(down.conn, 7, "{label}: the connection is kept");
        assert!(down.flags & VMI_FLAG_END != 0, "{label}: END is kept");
        assert!(
            down.flags & !VMI_FLAG_FILTER_MASK & !VMI_FLAG_END == 0,
            "{label}: a filter only sets bits in VMI_FLAG_FILTER_MASK: {:#x}",
            down.flags
        );
        let up = match rx.receive(Op::Recv, 9, &[&down.data], down.flags) {
            Outcome::Passed(p) => p,
            other => panic!("{label}: a {len}-byte receive was not passed up: {other:?}"),
        };
        assert!(
            up.data == data,
            "{label}: a {len}-byte message changed on the way ({} bytes arrived)",
            up.data.len()
        );
        assert!(up.flags & VMI_FLAG_END != 0, "{label}: END is kept");
    }

    // Control operations pass untouched.
    for op in [Op::Connect, Op::Disconnect, Op::Accept, Op::Abort] {
        match tx.submit(op, 3, &[b"connect data"], 0) {
            Outcome::Passed(p) => {
                assert_eq!(p.op, op, "{label}");
                assert_eq!(p.data, b"connect data", "{label}: {op:?} data untouched");
            }
            other => panic!("{label}: {op:?} was not passed down: {other:?}"),
        }
    }
    for op in [Op::ConnectRequest, Op::PeerDisconnect] {
        assert!(
            matches!(rx.receive(op, 3, &[b"x"], 0), Outcome::Passed(_)),
            "{label}: {op:?} is passed up"
        );
    }

    // Hostile bytes from the wire: any content, any filter bits. A filter passes them or
    // fails them with a reason; it never fails internally (a panic) and keeps nothing.
    // `VMI_FUZZ_ROUNDS` sets how many (a long fuzzing run); the seed is printed.
    let rounds: usize = std::env::var("VMI_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    // What this filter really sends, with a few bytes changed: headers that parse, bodies
    // that do not (the inputs that reach the deepest code).
    for round in 0..rounds {
        let len = rng.below(5000) as usize;
        let data = payload(&mut rng, len, round % 2 == 0);
        let Outcome::Passed(mut down) = tx.submit(Op::Send, 7, &[&data], VMI_FLAG_END) else {
            continue;
        };
        for _ in 0..=rng.below(3) {
            if !down.data.is_empty() {
                let at = rng.below(down.data.len() as u64) as usize;
                down.data[at] ^= 1 << rng.below(8);
            }
        }
        if let Outcome::Completed(status, detail) =
            rx.receive(Op::Recv, 1, &[&down.data], down.flags)
        {
            assert!(
                status != Status::Internal,
                "{label}: a mutated fragment (round {round}) failed as {status}: {detail}"
            );
        }
    }
    for round in 0..rounds {
        let len = rng.below(3000) as usize;
        let bytes = rng.bytes(len);
        let bits = (rng.next_u64() as u32) & VMI_FLAG_FILTER_MASK;
        match rx.receive(Op::Recv, 1, &[&bytes], bits | VMI_FLAG_END) {
            Outcome::Passed(_) => {}
            Outcome::Completed(status, detail) => assert!(
                status != Status::Internal,
                "{label}: hostile input {round} ({len} bytes, bits {bits:#x}) failed as {status}: {detail}"
            ),
            Outcome::Pending => {}
        }
    }
    rx.poll(64);
    for e in rx.events() {
        if let crate::harness::Event::Completed { status, detail, .. } = e {
            assert!(
                status != Status::Internal,
                "{label}: hostile input made the filter fail internally: {detail}"
            );
        }
    }

    // Capabilities: a filter may take room from the fragment, never add it.
    let below = Capabilities {
        max_fragment: LOOPBACK_MAX,
        headroom: 8,
        tailroom: 0,
        max_connect_data: 4096,
    };
    let caps = tx.capabilities(below);
    assert!(
        caps.max_fragment <= below.max_fragment && caps.max_fragment > 0,
        "{label}: {caps:?}"
    );
    assert!(caps.headroom >= below.headroom, "{label}: {caps:?}");
    assert!(
        caps.max_connect_data <= below.max_connect_data,
        "{label}: {caps:?}"
    );
    assert_eq!(tx.held(), 0, "{label}: the sender keeps no IRB");
}
