//! Property-based fuzzing of the protocol decoder: arbitrary bytes in arbitrary pieces never
//! panic and never allocate past the limits; valid streams decode the same however they are cut.

use proptest::prelude::*;

use std::time::{Duration, Instant};

use crate::proto::{Connection, Decoder, Event, Local};
use crate::wire::{AnswerRepr, AnswerStatus, FrameRepr, HelloRepr};

const MAX_FRAGMENT: u64 = 1 << 16;
const MAX_DATA: u32 = 1024;

/// Feeds `bytes` cut at `cuts`, returning the events, or the first error.
fn run(mut d: Decoder, bytes: &[u8], cuts: &[usize]) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    let mut alloc = |n: usize| {
        assert!(
            n as u64 <= MAX_FRAGMENT,
            "allocated {n} bytes, over the limit"
        );
        vec![0u8; n]
    };
    let mut pos = 0;
    let mut cut_iter = cuts.iter().copied().cycle();
    while pos < bytes.len() {
        let step = cut_iter
            .next()
            .unwrap_or(bytes.len())
            .clamp(1, bytes.len() - pos);
        let mut piece = &bytes[pos..pos + step];
        while !piece.is_empty() {
            let (used, ev) = d.feed(piece, &mut alloc).map_err(|e| e.to_string())?;
            piece = &piece[used..];
            events.extend(ev);
            if used == 0 && piece.is_empty() {
                break;
            }
        }
        pos += step;
    }
    Ok(events)
}

fn frame_strategy() -> impl Strategy<Value = (bool, u16, Vec<u8>)> {
    (
        any::<bool>(),
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                   cuts in proptest::collection::vec(1usize..64, 1..8)) {
        let _ = run(Decoder::listener(MAX_FRAGMENT, MAX_DATA), &bytes, &cuts);
        let _ = run(Decoder::connector(MAX_FRAGMENT, MAX_DATA), &bytes, &cuts);
    }

    #[test]
    fn a_valid_prefix_then_garbage_never_panics(garbage in proptest::collection::vec(any::<u8>(), 0..512),
                                                 cuts in proptest::collection::vec(1usize..32, 1..6)) {
        let mut bytes = HelloRepr::emit("a", "b", "send=;recv=", b"x");
        bytes.extend_from_slice(&garbage);
        let _ = run(Decoder::listener(MAX_FRAGMENT, MAX_DATA), &bytes, &cuts);
        let mut bytes = AnswerRepr::emit(AnswerStatus::Accept, "", b"");
        bytes.extend_from_slice(&garbage);
        let _ = run(Decoder::connector(MAX_FRAGMENT, MAX_DATA), &bytes, &cuts);
    }

    #[test]
    fn valid_streams_decode_the_same_however_cut(frames in proptest::collection::vec(frame_strategy(), 0..12),
                                                 data in proptest::collection::vec(any::<u8>(), 0..64),
                                                 cuts in proptest::collection::vec(1usize..100, 1..8)) {
        let mut bytes = HelloRepr::emit("from", "to", "send=;recv=", &data);
        for (end, flags, payload) in &frames {
            bytes.extend_from_slice(&FrameRepr { end: *end, filter_flags: *flags, len: payload.len() as u32 }.emit());
            bytes.extend_from_slice(payload);
        }
        let events = run(Decoder::listener(MAX_FRAGMENT, MAX_DATA), &bytes, &cuts).unwrap();
        prop_assert_eq!(events.len(), frames.len() + 1);
        prop_assert_eq!(&events[0], &Event::Hello { nonce: None, lanes: false, from_key: "from".into(), to_key: "to".into(), signature: "send=;recv=".into(), data });
        for (ev, (end, flags, payload)) in events[1..].iter().zip(&frames) {
            prop_assert_eq!(ev, &Event::Frame { end: *end, filter_flags: *flags, payload: payload.clone(), at: 0 });
        }
    }

    /// The handshake state machine on both sides, fed arbitrary bytes (after a valid
    /// opening or not), with the clock moving: it never panics, never allocates past the
    /// limits, and anything it decides to send back is a well-formed answer or heartbeat.
    #[test]
    fn handshakes_survive_arbitrary_bytes(garbage in proptest::collection::vec(any::<u8>(), 0..1024),
                                          valid_start in any::<bool>(),
                                          cuts in proptest::collection::vec(1usize..64, 1..6)) {
        let now = Instant::now();
        let mut alloc = |n: usize| {
            assert!(n as u64 <= MAX_FRAGMENT, "allocated {n} bytes");
            vec![0u8; n]
        };
        let key = vmi_device::auth::AuthKey::from_bytes(b"fuzzing key, sixteen+", "fuzz").unwrap();
        for (listener, auth) in [(true, false), (false, false), (true, true), (false, true)] {
            let local = Local {
                key: "kb".into(),
                signature: Default::default(),
                auth: auth.then(|| key.clone()),
            };
            let mut c = if listener {
                Connection::listener("peer", MAX_FRAGMENT, MAX_DATA, now, Duration::from_secs(1))
            } else {
                let mut c = Connection::connector("peer", "kb", MAX_FRAGMENT, MAX_DATA, now, Duration::from_secs(1));
                let nonce = auth.then(vmi_device::auth::nonce);
                c.connected(HelloRepr::emit_with("ka", "kb", "send=;recv=", b"", nonce.as_ref(), false));
                c
            }
            .with_peer_timeout(Duration::from_secs(3));
            let mut bytes = match (valid_start, listener) {
                (true, true) => HelloRepr::emit_with("ka", "kb", "send=;recv=", b"d", auth.then(vmi_device::auth::nonce).as_ref(), false),
                (true, false) => AnswerRepr::emit(AnswerStatus::Accept, "", b""),
                _ => Vec::new(),
            };
            bytes.extend_from_slice(&garbage);
            if listener && valid_start {
                let (used, _) = c.feed(&bytes, &local, now, &mut alloc);
                bytes.drain(..used);
                c.answer(true, b"", now);
            }
            let mut pos = 0;
            let mut t = now;
            for &cut in cuts.iter().cycle() {
                if pos >= bytes.len() {
                    break;
                }
                let end = (pos + cut).min(bytes.len());
                let (used, out) = c.feed(&bytes[pos..end], &local, t, &mut alloc);
                pos += used.max(1);
                t += Duration::from_millis(400);
                let _ = c.tick(t, false);
                let _ = c.timeout(t);
                if out.as_ref().is_some_and(|o| o.is_terminal()) {
                    break;
                }
            }
            while let Some(reply) = c.poll_transmit() {
                prop_assert!(
                    reply.starts_with(b"VMIA") || reply.starts_with(b"VMIT") || reply.starts_with(b"VMIC")
                        || reply.starts_with(b"VMIP") || reply == crate::wire::HEARTBEAT,
                    "sent something that is not an answer, hello or heartbeat: {:?}", &reply[..reply.len().min(8)]
                );
            }
        }
    }
}
