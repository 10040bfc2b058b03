//! The TCP transport's receive low-water mark (`recv_lowat`): while a large fragment streams
//! in, its socket is read only once `recv_lowat` bytes (or all that is left of it) are there.
//! The mark must never cost a byte or a wakeup: a peer that streams slower than the mark fills
//! is still heard by the liveness checks, and a message after a large fragment wakes a
//! receiver that sleeps in `wait`.

use std::io::Write;
use std::time::{Duration, Instant};

use vmi_conformance::pair::Rec;
use vmi_tests::{tcp_frame, unique_key};

const T: Duration = Duration::from_secs(60);

/// The fragments `h` received.
fn messages(h: &Rec) -> Vec<&[u8]> {
    h.received.iter().map(|(_, m)| m.as_slice()).collect()
}

/// The payloads `vmi`'s tcp device read under a mark.
fn marked(vmi: &vmi_core::Vmi) -> u64 {
    vmi.attr_get("tcp", "marked_payloads")
        .expect("the tcp device reports marked_payloads")
        .parse()
        .unwrap()
}

/// A raw peer sends a 256 KiB fragment 4 KiB every 40 ms (about 2.6 s) to a victim whose
/// peer timeout is 600 ms: the mark (128 KiB) fills only every 1.3 s, and no heartbeat can
/// come in the middle of a frame. The victim must still hear the bytes as they come (its
/// liveness tick reads the socket whatever the mark), keep the connection, and deliver the
/// fragment whole: once busy polling, once sleeping in `wait`.
#[test]
fn a_peer_that_streams_a_fragment_slower_than_the_mark_is_heard() {
    for sleeping in [false, true] {
        let key = unique_key("lowat-slow");
        let (mut vmi, port) = vmi_tests::tcp_on_free_port_with(&key, &[("peer_timeout_ms", "600")]);
        let mut h = Rec::default();
        let mut s = vmi_tests::tcp_raw_peer(&mut vmi, &mut h, port, &key, "slow");
        let payload: Vec<u8> = (0..256 * 1024).map(|i: usize| (i * 13) as u8).collect();
        let frame = tcp_frame(true, &payload);
        let writer = std::thread::spawn(move || {
            for piece in frame.chunks(4096) {
                s.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(40));
            }
            s
        });
        vmi_tests::serve_until(
            &mut vmi,
            &mut h,
            sleeping,
            "fragment",
            |h| !h.received.is_empty(),
            |h| (!h.ended.is_empty()).then(|| format!("{:?}", h.ended)),
        );
        let _s = writer.join().unwrap();
        assert_eq!(messages(&h), [&payload[..]], "sleeping {sleeping}");
        assert_eq!(marked(&vmi), 1, "sleeping {sleeping}: read under a mark");
    }
}

/// After a 1 MiB fragment read under the mark (sent in two halves, so the mark is raised), a
/// small message that arrives while the receiver sleeps in `wait` must wake it: the mark is
/// back at one byte between frames. With no liveness ticks (`peer_timeout_ms` 0) nothing
/// else would wake it before its 30 s timeout.
#[test]
fn a_message_after_a_large_fragment_wakes_a_sleeping_receiver() {
    let key = unique_key("lowat-wake");
    let (mut vmi, port) = vmi_tests::tcp_on_free_port_with(&key, &[("peer_timeout_ms", "0")]);
    let mut h = Rec::default();
    let mut s = vmi_tests::tcp_raw_peer(&mut vmi, &mut h, port, &key, "waker");
    let big: Vec<u8> = (0..1usize << 20).map(|i| (i * 7) as u8).collect();
    let t0 = Instant::now();
    for round in 0..3 {
        let before = h.received.len();
        let frame = tcp_frame(true, &big);
        // In two halves 50 ms apart, so that a read finds half the payload still to come
        // and raises the mark (one that found it all would need none).
        let writer = std::thread::spawn(move || {
            let (x, y) = frame.split_at(frame.len() / 2);
            s.write_all(x).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            s.write_all(y).unwrap();
            s
        });
        while h.received.len() == before {
            vmi.poll(&mut h);
            assert!(t0.elapsed() < T, "round {round}: the large fragment");
        }
        s = writer.join().unwrap();
        assert!(messages(&h).last() == Some(&&big[..]), "round {round}");
        // The small message comes while the receiver sleeps.
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            s.write_all(&tcp_frame(true, b"small")).unwrap();
            s
        });
        let slept = Instant::now();
        while h.received.len() == before + 1 {
            vmi.wait(&mut h, Duration::from_secs(30));
            assert!(
                slept.elapsed() < Duration::from_secs(20),
                "round {round}: the small message did not wake the receiver"
            );
        }
        s = writer.join().unwrap();
        assert_eq!(messages(&h).last().unwrap(), b"small", "round {round}");
        assert!(h.ended.is_empty(), "{:?}", h.ended);
        assert_eq!(
            marked(&vmi),
            round + 1,
            "round {round}: the fragment was read under a mark"
        );
    }
}

/// `recv_lowat` = 1 turns marks off (a 1 MiB fragment arrives with none), and a mark over
/// 16 MiB is refused at start with the remedy.
#[test]
fn recv_lowat_1_turns_marks_off_and_one_over_16m_is_refused() {
    let key = unique_key("lowat-off");
    let (mut vmi, port) = vmi_tests::tcp_on_free_port_with(&key, &[("recv_lowat", "1")]);
    let mut h = Rec::default();
    let mut s = vmi_tests::tcp_raw_peer(&mut vmi, &mut h, port, &key, "unmarked");
    let big: Vec<u8> = (0..1usize << 20).map(|i| (i * 11) as u8).collect();
    let frame = tcp_frame(true, &big);
    let writer = std::thread::spawn(move || {
        s.write_all(&frame).unwrap();
        s
    });
    let t0 = Instant::now();
    while h.received.is_empty() {
        vmi.poll(&mut h);
        assert!(t0.elapsed() < T, "the fragment");
    }
    let _s = writer.join().unwrap();
    assert!(messages(&h) == [&big[..]]);
    assert_eq!(marked(&vmi), 0, "recv_lowat = 1: no mark");

    let e = vmi_tests::tcp_start_error("recv_lowat", "17m");
    assert!(
        e.contains("'recv_lowat'") && e.contains("1 turns it off"),
        "{e}"
    );
}
