//! A two-endpoint harness (quinn-proto's test `Pair`): a connector and a listener wired
//! back to back in memory, with a clock the test moves, and byte streams cut into pieces of
//! any size. No sockets, no threads, no sleeping: every run is the same.

use std::time::{Duration, Instant};

use vmi_device::Status;
use vmi_device::auth::AuthKey;
use vmi_device::signature::Signature;

use super::connection::{Connection, Local, Output, State};
use crate::wire::{FrameRepr, HelloRepr};

const MAX_FRAGMENT: u64 = 1 << 20;
const MAX_DATA: u32 = 4096;
const HANDSHAKE: Duration = Duration::from_millis(500);

/// One side: its protocol state, identity, and what it produced.
struct Side {
    conn: Connection,
    local: Local,
    /// Bytes it sent that the other side has not read yet.
    outbox: Vec<u8>,
    outputs: Vec<Output>,
    /// Its close was requested after what it transmitted.
    closed: bool,
}

impl Side {
    fn drain_transmit(&mut self) {
        while let Some(b) = self.conn.poll_transmit() {
            self.outbox.extend_from_slice(&b);
        }
        if self.conn.take_close() {
            self.closed = true;
        }
    }
}

struct Pair {
    a: Side,
    b: Side,
    now: Instant,
    /// Largest piece a read returns.
    chunk: usize,
}

fn local(key: &str, send: &[&str]) -> Local {
    let list: Vec<String> = send.iter().map(|s| s.to_string()).collect();
    Local {
        key: key.into(),
        signature: Signature {
            send: list.clone(),
            recv: list,
        },
        auth: None,
    }
}

impl Pair {
    /// `a` (key "ka", filters `a_filters`) dials key `want` at `b` (key "kb", `b_filters`).
    fn new(want: &str, a_filters: &[&str], b_filters: &[&str], chunk: usize) -> Pair {
        Pair::with_keys(want, a_filters, b_filters, chunk, None, None)
    }

    /// As [`Pair::new`], each side holding an authentication key or none.
    fn with_keys(
        want: &str,
        a_filters: &[&str],
        b_filters: &[&str],
        chunk: usize,
        a_key: Option<&[u8]>,
        b_key: Option<&[u8]>,
    ) -> Pair {
        let now = Instant::now();
        let key = |k: Option<&[u8]>| k.map(|k| AuthKey::from_bytes(k, "test").unwrap());
        let mut a_local = local("ka", a_filters);
        a_local.auth = key(a_key);
        let mut b_local = local("kb", b_filters);
        b_local.auth = key(b_key);
        let mut a = Connection::connector(
            "b:7000",
            want,
            MAX_FRAGMENT,
            MAX_DATA,
            now + HANDSHAKE,
            HANDSHAKE,
        );
        let b = Connection::listener("a:5555", MAX_FRAGMENT, MAX_DATA, now, HANDSHAKE);
        let nonce = a_local.auth.as_ref().map(|_| vmi_device::auth::nonce());
        let hello = HelloRepr::emit_with(
            "ka",
            want,
            &a_local.signature.encode(),
            b"connect data",
            nonce.as_ref(),
            false,
        );
        a.connected(hello);
        let side = |conn, local| Side {
            conn,
            local,
            outbox: Vec::new(),
            outputs: Vec::new(),
            closed: false,
        };
        let mut p = Pair {
            a: side(a, a_local),
            b: side(b, b_local),
            now,
            chunk,
        };
        p.a.drain_transmit(); // the hello goes first
        p
    }

    /// Moves bytes both ways, `chunk` at a time, until neither side has anything to say.
    fn drive(&mut self) {
        loop {
            self.a.drain_transmit();
            self.b.drain_transmit();
            let moved = Self::deliver(&mut self.a, &mut self.b, self.now, self.chunk)
                | Self::deliver(&mut self.b, &mut self.a, self.now, self.chunk);
            if !moved {
                return;
            }
        }
    }

    fn deliver(from: &mut Side, to: &mut Side, now: Instant, chunk: usize) -> bool {
        if from.outbox.is_empty() {
            return false;
        }
        let n = from.outbox.len().min(chunk);
        let piece: Vec<u8> = from.outbox.drain(..n).collect();
        let mut off = 0;
        while off < piece.len() {
            let (used, out) = to
                .conn
                .feed(&piece[off..], &to.local, now, &mut |len| vec![0; len]);
            off += used;
            if let Some(o) = out {
                let terminal = o.is_terminal();
                to.outputs.push(o);
                if terminal {
                    // The device drops a connection after a terminal output.
                    from.outbox.clear();
                    return true;
                }
            }
            assert!(
                used > 0 || off == piece.len(),
                "the connection made no progress"
            );
        }
        true
    }

    /// The application on `a` (or `b`) sends a frame, as the device's writev would.
    fn frame(side: &mut Side, end: bool, flags: u16, payload: &[u8]) {
        let header = FrameRepr {
            end,
            filter_flags: flags,
            len: payload.len() as u32,
        }
        .emit();
        side.outbox.extend_from_slice(&header);
        side.outbox.extend_from_slice(payload);
    }
}

fn frames(outputs: &[Output]) -> Vec<(bool, u16, Vec<u8>)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Frame {
                end,
                filter_flags,
                payload,
                at,
            } => Some((*end, *filter_flags, payload[*at..].to_vec())),
            _ => None,
        })
        .collect()
}

#[test]
fn accepted_connection_carries_frames_both_ways_however_the_bytes_are_cut() {
    for chunk in [1, 3, 8, 25, 64, 4096] {
        let mut p = Pair::new("kb", &["crc@1"], &["crc@1"], chunk);
        p.drive();
        assert_eq!(
            p.b.outputs,
            vec![Output::Request {
                from_key: "ka".into(),
                data: b"connect data".to_vec()
            }],
            "chunk {chunk}"
        );
        assert_eq!(p.b.conn.state(), State::AwaitDecision);
        assert!(p.b.conn.answer(true, b"welcome", p.now));
        assert!(!p.b.conn.answer(true, b"again", p.now), "one answer only");
        p.drive();
        assert_eq!(
            p.a.outputs,
            vec![Output::Accepted {
                reply: b"welcome".to_vec()
            }],
            "chunk {chunk}"
        );
        assert!(p.a.conn.is_open() && p.b.conn.is_open());
        assert_eq!(p.a.conn.deadline(), None, "no deadline once open");
        Pair::frame(&mut p.a, false, 0x0001, b"first");
        Pair::frame(&mut p.a, true, 0, b"");
        Pair::frame(&mut p.b, true, 7, &[9; 300]);
        p.drive();
        assert_eq!(
            frames(&p.b.outputs),
            vec![(false, 1, b"first".to_vec()), (true, 0, vec![])],
            "chunk {chunk}"
        );
        assert_eq!(frames(&p.a.outputs), vec![(true, 7, vec![9; 300])]);
    }
}

#[test]
fn rejection_reaches_the_connector_with_reply_data_and_the_listener_closes() {
    let mut p = Pair::new("kb", &[], &[], 16);
    p.drive();
    assert!(p.b.conn.answer(false, b"no thanks", p.now));
    p.drive();
    assert!(p.b.closed, "the listener closes after its answer");
    assert_eq!(p.b.conn.state(), State::Closing);
    match &p.a.outputs[..] {
        [
            Output::Refused {
                status: Status::Rejected,
                detail,
                reply,
            },
        ] => {
            assert_eq!(reply, b"no thanks");
            assert!(detail.contains("'kb' at b:7000 rejected"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_listener_with_another_key_sends_the_connector_to_the_next_port() {
    let mut p = Pair::new("someone-else", &[], &[], 1000);
    p.drive();
    assert!(p.b.outputs.is_empty(), "the application never hears of it");
    assert!(p.b.closed);
    match &p.a.outputs[..] {
        [
            Output::TryNext {
                wrong_key: true,
                why,
                ..
            },
        ] => {
            assert!(
                why.contains("no process with key 'someone-else'") && !why.contains("'kb'"),
                "the answer names only the key asked for, never the one here: {why}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn different_filter_chains_are_refused_naming_both_sides() {
    let mut p = Pair::new("kb", &["lz4@1"], &[], 1000);
    p.drive();
    assert!(p.b.outputs.is_empty());
    match &p.a.outputs[..] {
        [
            Output::Refused {
                status: Status::Mismatch,
                detail,
                ..
            },
        ] => assert!(detail.contains("lz4"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn data_before_the_accept_and_a_second_hello_are_protocol_violations() {
    let mut p = Pair::new("kb", &[], &[], 1000);
    Pair::frame(&mut p.a, true, 0, b"too early");
    p.drive();
    match &p.b.outputs[..] {
        [
            Output::Request { .. },
            Output::Failed {
                status: Status::Protocol,
                detail,
                tell: true,
            },
        ] => assert!(
            detail.contains("before the connection was accepted"),
            "{detail}"
        ),
        other => panic!("{other:?}"),
    }

    let mut p = Pair::new("kb", &[], &[], 1000);
    p.drive();
    p.b.conn.answer(true, b"", p.now);
    p.drive();
    // After the handshake only frames are valid: a hello reads as a frame of an unknown kind.
    let again = HelloRepr::emit("ka", "kb", "send=;recv=", b"");
    p.a.outbox.extend_from_slice(&again);
    p.drive();
    assert!(
        matches!(
            p.b.outputs.last(),
            Some(Output::Failed { status: Status::Protocol, detail, tell: true }) if detail.contains("protocol violation by a:5555")
        ),
        "{:?}",
        p.b.outputs
    );
}

#[test]
fn end_of_stream_is_orderly_between_frames_and_a_loss_inside_one() {
    let mut p = Pair::new("kb", &[], &[], 1000);
    p.drive();
    p.b.conn.answer(true, b"", p.now);
    p.drive();
    assert_eq!(
        p.b.conn.eof(),
        Output::Failed {
            status: Status::Ok,
            detail: "the peer closed the connection".into(),
            tell: true
        }
    );
    let mut p = Pair::new("kb", &[], &[], 1000);
    p.drive();
    p.b.conn.answer(true, b"", p.now);
    p.drive();
    Pair::frame(&mut p.a, true, 0, &[1; 100]);
    p.a.outbox.truncate(50); // the peer dies mid-frame
    p.drive();
    assert!(
        matches!(
            p.b.conn.eof(),
            Output::Failed {
                status: Status::ConnectionLost,
                tell: true,
                ..
            }
        ),
        "a half frame is a loss"
    );
}

#[test]
fn handshakes_time_out_on_the_clock_the_test_moves() {
    let mut p = Pair::new("kb", &[], &[], 1000);
    // Nothing delivered: the listener waits for a hello, the connector for an answer.
    let later = p.now + HANDSHAKE;
    assert_eq!(p.b.conn.timeout(p.now + HANDSHAKE / 2), None, "not yet");
    assert!(
        matches!(p.b.conn.timeout(later), Some(Output::Dropped { why }) if why.contains("no complete hello within 500 ms"))
    );
    assert!(matches!(
        p.a.conn.timeout(later),
        Some(Output::TryNext { why, .. }) if why == "timed out"
    ));
    assert_eq!(p.a.conn.timeout(later), None, "reported once");
}

#[test]
fn garbage_is_dropped_by_a_listener_and_skipped_by_a_connector() {
    let now = Instant::now();
    let l = local("kb", &[]);
    let mut b = Connection::listener("x:1", MAX_FRAGMENT, MAX_DATA, now, HANDSHAKE);
    let (_, out) = b.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &l, now, &mut |n| {
        vec![0; n]
    });
    assert!(matches!(out, Some(Output::Dropped { why }) if why.contains("invalid handshake")));
    let mut a = Connection::connector("x:1", "kb", MAX_FRAGMENT, MAX_DATA, now, HANDSHAKE);
    a.connected(Vec::new());
    let (_, out) = a.feed(b"SSH-2.0-OpenSSH_9.2\r\n\0\0\0\0", &l, now, &mut |n| {
        vec![0; n]
    });
    assert!(matches!(out, Some(Output::TryNext { why, .. }) if why.contains("not a vmi peer")));
}

/// Heartbeats keep an idle connection alive on the clock the test moves; a peer that goes
/// silent (a cut link: its bytes stop arriving) is declared lost after the timeout, while a
/// side that is not reading (no receive buffers) accuses no one.
#[test]
fn heartbeats_keep_idle_peers_alive_and_silence_ends_the_connection() {
    let timeout = Duration::from_secs(9);
    let tick = timeout / 3;
    let mut p = Pair::new("kb", &[], &[], 4096);
    p.a.conn = std::mem::replace(
        &mut p.a.conn,
        Connection::listener("x", 1, 1, p.now, HANDSHAKE),
    )
    .with_peer_timeout(timeout);
    p.b.conn = std::mem::replace(
        &mut p.b.conn,
        Connection::listener("x", 1, 1, p.now, HANDSHAKE),
    )
    .with_peer_timeout(timeout);
    p.drive();
    p.b.conn.answer(true, b"", p.now);
    p.drive();
    assert_eq!(p.a.conn.state(), State::Open);
    p.a.outputs.clear();
    p.b.outputs.clear();
    // An hour of idleness, ticking both sides and moving their heartbeats.
    for _ in 0..(3600 / tick.as_secs()) {
        p.now += tick;
        assert_eq!(p.a.conn.tick(p.now, false), None);
        assert_eq!(p.b.conn.tick(p.now, false), None);
        p.drive();
    }
    assert!(
        p.a.outputs.is_empty() && p.b.outputs.is_empty(),
        "heartbeats are invisible"
    );
    // The link is cut: nothing moves any more. `b` is not reading (paused): it waits; `a`
    // declares `b` lost once the timeout has passed, not before.
    let mut lost_at = None;
    for i in 1..=6 {
        p.now += tick;
        assert_eq!(
            p.b.conn.tick(p.now, true),
            None,
            "a paused reader accuses no one"
        );
        if let Some(out) = p.a.conn.tick(p.now, false) {
            lost_at = Some(i);
            match out {
                Output::Failed {
                    status: Status::ConnectionLost,
                    detail,
                    tell: true,
                } => assert!(detail.contains("heard nothing from b:7000"), "{detail}"),
                other => panic!("{other:?}"),
            }
            break;
        }
        // Its heartbeats are queued but never arrive.
        p.a.drain_transmit();
        p.a.outbox.clear();
    }
    assert_eq!(
        lost_at,
        Some(3),
        "lost after the timeout (3 ticks of 3 s), not before"
    );
}

const KEY: &[u8] = b"the shared key of this test pair";
const OTHER: &[u8] = b"a different key, just as long!!!";

/// With the same key on both sides the handshake goes through the challenge and the proof
/// and then works as without; the application sees the same request and frames.
#[test]
fn peers_with_the_same_key_authenticate_and_carry_frames() {
    for chunk in [1, 7, 4096] {
        let mut p = Pair::with_keys("kb", &[], &[], chunk, Some(KEY), Some(KEY));
        p.drive();
        assert_eq!(
            p.b.outputs,
            vec![Output::Request {
                from_key: "ka".into(),
                data: b"connect data".to_vec()
            }],
            "chunk {chunk}"
        );
        assert!(p.b.conn.answer(true, b"hi", p.now));
        p.drive();
        assert!(
            p.a.outputs.iter().any(|o| *o
                == Output::Accepted {
                    reply: b"hi".to_vec()
                }),
            "chunk {chunk}: {:?}",
            p.a.outputs
        );
        Pair::frame(&mut p.a, true, 0, b"payload");
        p.drive();
        assert_eq!(
            frames(&p.b.outputs[1..]),
            vec![(true, 0, b"payload".to_vec())]
        );
    }
}

/// A listener with another key cannot prove itself: the connector refuses it and sends no
/// proof; the listener's application never hears of the attempt.
#[test]
fn different_keys_are_refused_and_the_application_hears_nothing() {
    let mut p = Pair::with_keys("kb", &[], &[], 4096, Some(KEY), Some(OTHER));
    p.drive();
    match &p.a.outputs[..] {
        [
            Output::Refused {
                status: Status::Mismatch,
                detail,
                ..
            },
        ] => {
            assert!(
                detail.contains("could not prove it holds the authentication key"),
                "{detail}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(p.b.outputs.is_empty(), "{:?}", p.b.outputs);
}

/// A peer without the key (it skips authentication, or fakes a proof) learns nothing but
/// that a key is needed, and is dropped; the application hears nothing.
#[test]
fn peers_without_the_key_are_dropped_before_the_application_hears() {
    // No key at all: refused with the remedy, before the keys or filters are compared.
    let mut p = Pair::with_keys("kb-wrong", &[], &[], 4096, None, Some(KEY));
    p.drive();
    match &p.a.outputs[..] {
        [Output::Refused { detail, .. }] => {
            assert!(detail.contains("requires authentication"), "{detail}");
            assert!(
                !detail.contains("'kb'"),
                "the key is not revealed: {detail}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(p.b.outputs.is_empty());
    // A forged proof after a genuine-looking hello.
    let mut p = Pair::with_keys("kb", &[], &[], 4096, Some(OTHER), Some(KEY));
    // `a` holds another key: it refuses the listener's proof itself. Play the attacker by
    // hand instead: answer the challenge with garbage.
    p.a.drain_transmit();
    let hello: Vec<u8> = std::mem::take(&mut p.a.outbox);
    let local_b = p.b.local.clone();
    let (_, out) = p.b.conn.feed(&hello, &local_b, p.now, &mut |n| vec![0; n]);
    assert!(out.is_none());
    let challenge = p.b.conn.poll_transmit().expect("a challenge");
    assert!(challenge.starts_with(b"VMIC"));
    let forged = crate::wire::emit_proof(&[0x5a; 32]);
    let (_, out) = p.b.conn.feed(&forged, &local_b, p.now, &mut |n| vec![0; n]);
    match out {
        Some(Output::Dropped { why }) => assert!(why.contains("failed authentication"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(
        p.b.conn.poll_transmit().is_none(),
        "nothing more is said to it"
    );
}

/// A connector that requires authentication takes no answer from a listener that did not
/// prove itself (an impostor answering "accepted" at once).
#[test]
fn an_unauthenticated_answer_is_not_taken() {
    let mut p = Pair::with_keys("kb", &[], &[], 4096, Some(KEY), None);
    p.drive();
    match &p.a.outputs[..] {
        [Output::Refused { detail, .. }] => assert!(
            detail.contains("does not use authentication") || detail.contains("without proving"),
            "{detail}"
        ),
        other => panic!("{other:?}"),
    }
    // An impostor's immediate acceptance.
    let mut p = Pair::with_keys("kb", &[], &[], 4096, Some(KEY), Some(KEY));
    p.a.drain_transmit();
    p.a.outbox.clear();
    let accept = crate::wire::AnswerRepr::emit(crate::wire::AnswerStatus::Accept, "", b"");
    let local_a = p.a.local.clone();
    let (_, out) = p.a.conn.feed(&accept, &local_a, p.now, &mut |n| vec![0; n]);
    match out {
        Some(Output::Refused { detail, .. }) => {
            assert!(detail.contains("without proving"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_local_close_waits_while_the_peer_still_sends_and_gives_up_only_after_its_silence() {
    // The application closed; the peer is slow to drain its backlog (the notices of failed
    // messages among its last bytes). Each arrival restarts the wait: only a peer silent for
    // the whole handshake timeout is cut off.
    let mut p = Pair::new("kb", &[], &[], 4096);
    p.drive();
    assert!(p.b.conn.answer(true, b"", p.now));
    p.drive();
    assert!(p.a.conn.is_open());
    p.a.conn.close(p.now);
    let first = p.a.conn.deadline().expect("a close waits for the peer");
    for step in 1..=4u32 {
        // Most of a timeout later, the peer sends something: the wait starts again.
        p.now += HANDSHAKE * 3 / 4;
        assert_eq!(
            p.a.conn.timeout(p.now),
            None,
            "step {step}: cut off while sending"
        );
        Pair::frame(&mut p.b, true, 0, b"late notice");
        p.drive();
        assert_eq!(
            p.a.conn.deadline(),
            Some(p.now + HANDSHAKE),
            "step {step}: the wait restarts at the peer's last bytes"
        );
    }
    assert!(p.a.conn.deadline().unwrap() > first + HANDSHAKE * 2);
    assert_eq!(
        frames(&p.a.outputs).len(),
        4,
        "every late frame was delivered"
    );
    // Silent for the whole timeout: the close ends.
    p.now += HANDSHAKE;
    assert_eq!(p.a.conn.timeout(p.now), Some(Output::Closed));
}
