//! TCP lanes (`lanes` > 1): extra sockets of one connection that carry parts of large
//! fragments. Striped fragments arrive byte for byte and in order with the small ones around
//! them, both ways and for every number of lanes; a side with one socket needs none; and a
//! raw peer that lies in the lane handshake or in a striped frame is refused, while a raw
//! peer that follows the wire format is served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use vmi_conformance::pair::{Dev, Pair, spec};
use vmi_core::prelude::*;
use vmi_tcp::wire::{
    ANSWER_LEN, AnswerRepr, AnswerStatus, FRAME_LEN, HelloRepr, KIND_LANES, LANE_ANSWER_LEN,
    StripeRepr, TOKEN_LEN, emit_lane_hello, emit_piece, lane_answer_attached,
};
use vmi_tests::{Rng, register_all, tcp_frame, unique_key};

const T: Duration = Duration::from_secs(20);

fn attr(vmi: &Vmi, name: &str) -> u64 {
    vmi.attr_get("tcp", name)
        .unwrap_or_else(|e| panic!("tcp has attribute {name}: {e}"))
        .parse()
        .expect("a number")
}

/// Large fragments (in one piece or several), with small ones between them, both ways.
fn exchange(lanes_a: &str, lanes_b: &str, name: &str) -> (u64, u64, u64, u64) {
    register_all();
    let mut rng = Rng::new(name);
    let a = Dev::new("tcp", "tcp").param("lanes", lanes_a);
    let b = Dev::new("tcp", "tcp").param("lanes", lanes_b);
    let mut p = Pair::new(spec(&[], &a), spec(&[], &b), name.into(), false);
    let conn = p.conn();
    // The listener's lanes join after the connect completes: wait for them (or for none).
    let want_lanes = lanes_a
        .parse::<u64>()
        .unwrap()
        .min(lanes_b.parse().unwrap())
        - 1;
    let deadline = Instant::now() + T;
    while attr(&p.a, "lanes") < want_lanes || attr(&p.b, "lanes") < want_lanes {
        p.a.poll(&mut p.ha);
        p.b.poll(&mut p.hb);
        assert!(Instant::now() < deadline, "{name}: lanes did not attach");
    }
    let sizes = [
        1 << 20,
        8,
        (1 << 20) + 5,
        256 << 10,
        3,
        (256 << 10) - 1,
        (3 << 20) + 12345,
        100,
        (1 << 20) - 1,
        1,
        (2 << 20) + 7 * 4096,
    ];
    let mut sent_ab = Vec::new();
    let mut sent_ba = Vec::new();
    let back = p.conn_b();
    for (m, &size) in sizes.iter().enumerate() {
        let data = rng.bytes(size);
        // Every third in three pieces of one fragment: a part may span pieces.
        vmi_tests::send_in_pieces(&mut p.a, conn, &data, m as u64, m % 3 == 2);
        sent_ab.push(data);
        let data = rng.bytes(sizes[sizes.len() - 1 - m]);
        p.b.send(back, [Buffer::from_vec(data.clone())], m as u64)
            .expect("send back");
        sent_ba.push(data);
    }
    let n = sizes.len();
    p.pump(|p| {
        p.hb.received.len() == n
            && p.ha.received.len() == n
            && p.ha.completions.len() == n
            && p.hb.completions.len() == n
    });
    assert!(
        p.ha.completions
            .iter()
            .chain(&p.hb.completions)
            .all(|s| s.is_ok())
    );
    for (dir, got, want) in [
        ("a to b", &p.hb.received, &sent_ab),
        ("b to a", &p.ha.received, &sent_ba),
    ] {
        for (m, ((cmd, got), want)) in got.iter().zip(want).enumerate() {
            assert_eq!(*cmd, Recv::End, "{name} {dir}: message {m} is one fragment");
            assert!(
                got == want,
                "{name} {dir}: message {m} of {} bytes differs ({} arrived)",
                want.len(),
                got.len()
            );
        }
    }
    (
        attr(&p.a, "striped_sends"),
        attr(&p.b, "striped_sends"),
        attr(&p.a, "lanes"),
        attr(&p.b, "lanes"),
    )
}

#[test]
fn large_fragments_stripe_over_the_lanes_both_ways_whole_and_in_order() {
    for (a, b) in [("2", "2"), ("4", "3"), ("4", "4")] {
        let name = format!("lanes_{a}_{b}");
        let (sa, sb, la, lb) = exchange(a, b, &name);
        let want = a.parse::<u64>().unwrap().min(b.parse().unwrap()) - 1;
        assert_eq!((la, lb), (want, want), "{name}: lanes on each side");
        // Six of the eleven sizes are at least stripe_min (256 KiB), each way.
        assert_eq!((sa, sb), (6, 6), "{name}: striped sends");
    }
}

#[test]
fn one_socket_on_either_side_means_no_lanes() {
    for (a, b) in [("1", "3"), ("3", "1")] {
        let name = format!("no_lanes_{a}_{b}");
        assert_eq!(exchange(a, b, &name), (0, 0, 0, 0), "{name}");
    }
}

// ---- a raw peer against a listener with lanes ----

#[derive(Default)]
struct Victim {
    messages: Vec<Vec<u8>>,
    ended: Vec<Disconnect>,
}

impl Handler for Victim {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, _req: &mut ConnectRequest<'_>) -> Decision {
        Decision::Accept(vec![])
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _cmd: Recv, slab: &mut Slab<'_>) {
        self.messages.push(slab.read_to_vec());
    }
    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, reason: Disconnect) {
        self.ended.push(reason);
    }
}

/// Reads exactly `n` bytes from `s` while the victim polls.
fn read_polling(vmi: &mut Vmi, h: &mut Victim, s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    s.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + T;
    let mut got = Vec::new();
    while got.len() < n {
        vmi.poll(h);
        let mut buf = vec![0u8; n - got.len()];
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
        assert!(Instant::now() < deadline, "no answer");
    }
    s.set_nonblocking(false).unwrap();
    Some(got)
}

/// A raw connector that says it can open lanes: its socket, and the offer's lanes and token.
fn raw_peer(
    vmi: &mut Vmi,
    h: &mut Victim,
    port: u16,
    key: &str,
) -> (TcpStream, u8, [u8; TOKEN_LEN]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&HelloRepr::emit_with(
        "raw",
        key,
        "send=;recv=",
        b"",
        None,
        true,
    ))
    .unwrap();
    let answer = read_polling(vmi, h, &mut s, ANSWER_LEN).expect("an answer");
    let a = AnswerRepr::parse(answer[..].try_into().unwrap(), 1 << 20).unwrap();
    assert_eq!(a.status, AnswerStatus::Accept);
    // The reason and the reply data (the host's own record).
    let rest = a.reason_len as usize + a.reply_len as usize;
    if rest > 0 {
        read_polling(vmi, h, &mut s, rest).expect("the answer's body");
    }
    let offer = read_polling(vmi, h, &mut s, FRAME_LEN + TOKEN_LEN).expect("a lane offer");
    assert_eq!(
        offer[0],
        KIND_LANES,
        "the listener offers lanes: {:?} after {:?}",
        String::from_utf8_lossy(&offer),
        a
    );
    let mut token = [0u8; TOKEN_LEN];
    token.copy_from_slice(&offer[FRAME_LEN..]);
    (s, offer[1], token)
}

/// Opens lane `lane` with `token`: whether the listener attached it.
fn join(
    vmi: &mut Vmi,
    h: &mut Victim,
    port: u16,
    lane: u8,
    token: &[u8; TOKEN_LEN],
) -> (TcpStream, bool) {
    let mut l = TcpStream::connect(("127.0.0.1", port)).unwrap();
    l.set_nodelay(true).unwrap();
    l.write_all(&emit_lane_hello(lane, token)).unwrap();
    let attached = read_polling(vmi, h, &mut l, LANE_ANSWER_LEN)
        .is_some_and(|a| lane_answer_attached(a[..].try_into().unwrap()));
    (l, attached)
}

fn striped(len: usize, sockets: u8) -> [u8; FRAME_LEN] {
    StripeRepr {
        end: true,
        filter_flags: 0,
        sockets,
        len: len as u32,
    }
    .emit()
}

fn poll_until(vmi: &mut Vmi, h: &mut Victim, what: &str, done: impl Fn(&Victim) -> bool) {
    let deadline = Instant::now() + T;
    while !done(h) {
        vmi.poll(h);
        assert!(Instant::now() < deadline, "{what}");
    }
}

#[test]
fn a_raw_peer_that_follows_the_lane_wire_format_is_served() {
    let key = unique_key("lanes-raw");
    let (mut vmi, port) = vmi_tests::tcp_on_free_port_with(&key, &[("lanes", "3")]);
    let mut h = Victim::default();
    let (mut s, offered, token) = raw_peer(&mut vmi, &mut h, port, &key);
    assert_eq!(offered, 2, "lanes = 3: two lanes offered");
    let (mut l1, ok1) = join(&mut vmi, &mut h, port, 1, &token);
    let (mut l2, ok2) = join(&mut vmi, &mut h, port, 2, &token);
    assert!(ok1 && ok2, "both lanes attached");
    // 1 MiB + 5 over three sockets: parts of 86 pages (a third, rounded up to a page),
    // 86 pages, and the rest.
    let payload: Vec<u8> = (0..(1usize << 20) + 5)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let part = 86 * 4096;
    // Lane 2's part goes first, then a small frame and the striped one on the connection
    // (the small one before it in order) and another small one, then lane 1's part.
    let mut main = tcp_frame(true, b"first");
    main.extend_from_slice(&striped(payload.len(), 3));
    main.extend_from_slice(&payload[..part]);
    main.extend_from_slice(&tcp_frame(true, b"last"));
    let writer = std::thread::spawn(move || {
        l2.write_all(&emit_piece(2, (payload.len() - 2 * part) as u32))
            .unwrap();
        l2.write_all(&payload[2 * part..]).unwrap();
        s.write_all(&main).unwrap();
        l1.write_all(&emit_piece(1, part as u32)).unwrap();
        l1.write_all(&payload[part..2 * part]).unwrap();
        (s, l1, l2, payload)
    });
    poll_until(&mut vmi, &mut h, "three messages", |h| {
        h.messages.len() == 3
    });
    let (_s, _l1, _l2, payload) = writer.join().unwrap();
    assert_eq!(h.messages[0], b"first");
    assert!(h.messages[1] == payload, "the striped message whole");
    assert_eq!(h.messages[2], b"last");
    assert!(h.ended.is_empty());
}

#[test]
fn lies_in_the_lane_handshake_are_refused_and_serving_goes_on() {
    let key = unique_key("lanes-lies");
    let (mut vmi, port) = vmi_tests::tcp_on_free_port_with(&key, &[("lanes", "3")]);
    let mut h = Victim::default();
    let (mut s, _, token) = raw_peer(&mut vmi, &mut h, port, &key);
    let mut wrong = token;
    wrong[0] ^= 1;
    assert!(!join(&mut vmi, &mut h, port, 1, &wrong).1, "a wrong token");
    assert!(
        !join(&mut vmi, &mut h, port, 2, &token).1,
        "lane 2 before lane 1"
    );
    let (_l1, ok) = join(&mut vmi, &mut h, port, 1, &token);
    assert!(ok, "lane 1 with the token");
    assert!(!join(&mut vmi, &mut h, port, 1, &token).1, "lane 1 twice");
    // The connection still works.
    s.write_all(&tcp_frame(true, b"still open")).unwrap();
    poll_until(&mut vmi, &mut h, "the message", |h| h.messages.len() == 1);
    assert!(h.ended.is_empty());
}

#[test]
fn lies_in_striped_frames_end_the_connection_with_the_reason() {
    // Each case: the frame on the connection, and what lane 1 sends.
    let len = 1usize << 20;
    let cases: [(&str, Vec<u8>, Vec<u8>); 4] = [
        ("more sockets than lanes", striped(len, 3).to_vec(), vec![]),
        (
            "a piece of another length",
            striped(len, 2).to_vec(),
            emit_piece(1, 1000).to_vec(),
        ),
        (
            "a piece of another lane",
            striped(len, 2).to_vec(),
            emit_piece(2, (len / 2) as u32).to_vec(),
        ),
        (
            "a data frame on a lane",
            striped(len, 2).to_vec(),
            tcp_frame(true, b"x"),
        ),
    ];
    for (what, frame, lane_bytes) in cases {
        let key = unique_key("lanes-bad");
        let (mut vmi, port) = vmi_tests::tcp_on_free_port_with(&key, &[("lanes", "2")]);
        let mut h = Victim::default();
        let (mut s, _, token) = raw_peer(&mut vmi, &mut h, port, &key);
        let (mut l1, ok) = join(&mut vmi, &mut h, port, 1, &token);
        assert!(ok, "{what}: lane 1 attached");
        let mut main = tcp_frame(true, b"before");
        main.extend_from_slice(&frame);
        s.write_all(&main).unwrap();
        l1.write_all(&lane_bytes).unwrap();
        poll_until(&mut vmi, &mut h, what, |h| !h.ended.is_empty());
        assert_eq!(h.messages, vec![b"before".to_vec()], "{what}");
        match &h.ended[0] {
            Disconnect::Error { detail, .. } => {
                assert!(detail.contains("protocol violation"), "{what}: {detail}")
            }
            other => panic!("{what}: ended as {other:?}"),
        }
        // Another peer is served.
        let (mut good, _, _) = raw_peer(&mut vmi, &mut h, port, &key);
        good.write_all(&tcp_frame(true, b"still serving")).unwrap();
        poll_until(&mut vmi, &mut h, "the good peer", |h| {
            h.messages.last().map(Vec::as_slice) == Some(b"still serving".as_slice())
        });
    }
}

// ---- receive low-water marks on striped parts ----

/// Sends striped frame `payload` over the connection and lane 1 (two sockets): the
/// connection's header and part at once from this thread (the part is small enough for the
/// socket buffers, so the victim finds it whole), and lane 1's piece from a thread, `piece`
/// bytes every `every`.
fn stripe_slowly(
    s: &mut TcpStream,
    mut l1: TcpStream,
    payload: &[u8],
    piece: usize,
    every: Duration,
) -> std::thread::JoinHandle<TcpStream> {
    let part = vmi_tcp::proto::stripe::part_len(payload.len(), 2).expect("two parts");
    let mut main = striped(payload.len(), 2).to_vec();
    main.extend_from_slice(&payload[..part]);
    s.write_all(&main).unwrap();
    let mut lane = emit_piece(1, (payload.len() - part) as u32).to_vec();
    lane.extend_from_slice(&payload[part..]);
    std::thread::spawn(move || {
        for p in lane.chunks(piece) {
            l1.write_all(p).unwrap();
            std::thread::sleep(every);
        }
        l1
    })
}

/// A victim with two sockets per connection, `recv_lowat` 16k (parts of 32 KiB and more get
/// a mark) and peer timeout `peer_timeout_ms`, and a raw peer's connection and lane 1.
fn marked_victim(name: &str, peer_timeout_ms: &str) -> (Vmi, Victim, TcpStream, TcpStream) {
    let key = unique_key(name);
    let (mut vmi, port) = vmi_tests::tcp_on_free_port_with(
        &key,
        &[
            ("lanes", "2"),
            ("recv_lowat", "16k"),
            ("peer_timeout_ms", peer_timeout_ms),
        ],
    );
    let mut h = Victim::default();
    let (s, _, token) = raw_peer(&mut vmi, &mut h, port, &key);
    let (l1, ok) = join(&mut vmi, &mut h, port, 1, &token);
    assert!(ok, "{name}: lane 1 attached");
    (vmi, h, s, l1)
}

/// A striped frame's part on a lane streams in under a mark too, and a peer whose lane
/// part comes slower than the mark fills is still heard. The victim (`recv_lowat` 16k, so
/// parts of 32 KiB get a mark; peer timeout 600 ms) gets a 64 KiB frame over two sockets:
/// the connection's part at once, lane 1's at 1 KiB every 60 ms (the mark fills only every
/// 960 ms, and no heartbeat can come inside a frame). It must keep the peer, read the lane
/// part under a mark, and deliver the frame whole: busy polling, and sleeping in `wait`.
#[test]
fn a_lane_part_streams_in_under_a_mark_and_a_slow_one_is_heard() {
    for sleeping in [false, true] {
        let (mut vmi, mut h, mut s, l1) = marked_victim("lanes-lowat", "600");
        let payload: Vec<u8> = (0..64 * 1024)
            .map(|i: usize| (i * 17 % 253) as u8)
            .collect();
        let writer = stripe_slowly(&mut s, l1, &payload, 1024, Duration::from_millis(60));
        vmi_tests::serve_until(
            &mut vmi,
            &mut h,
            sleeping,
            "message",
            |h| !h.messages.is_empty(),
            |h| (!h.ended.is_empty()).then(|| format!("{:?}", h.ended)),
        );
        let _l1 = writer.join().unwrap();
        assert!(
            h.messages == [payload],
            "sleeping {sleeping}: the frame whole"
        );
        // The connection's part was whole at the first read: only the lane's was marked.
        assert_eq!(
            attr(&vmi, "marked_payloads"),
            1,
            "sleeping {sleeping}: the lane part was read under a mark"
        );
    }
}

/// A lane's mark is back at one byte once its part is in: a later striped frame whose parts
/// are too small for a mark (8 KiB each) wakes a receiver that sleeps in `wait` with no
/// liveness ticks (`peer_timeout_ms` 0), as does a small message after it.
#[test]
fn a_small_striped_frame_after_a_marked_one_wakes_a_sleeping_receiver() {
    let (mut vmi, mut h, mut s, l1) = marked_victim("lanes-lowat-wake", "0");
    let big: Vec<u8> = (0..64 * 1024)
        .map(|i: usize| (i * 29 % 251) as u8)
        .collect();
    // Lane 1's part in two halves 50 ms apart: the first read leaves enough for a mark.
    let writer = stripe_slowly(&mut s, l1, &big, 16 * 1024 + 4, Duration::from_millis(50));
    poll_until(&mut vmi, &mut h, "the large frame", |h| {
        h.messages.len() == 1
    });
    let mut l1 = writer.join().unwrap();
    assert!(h.messages[0] == big);
    assert_eq!(attr(&vmi, "marked_payloads"), 1, "the lane part was marked");
    let small: Vec<u8> = (0..16 * 1024).map(|i: usize| (i * 3 % 241) as u8).collect();
    let part = vmi_tcp::proto::stripe::part_len(small.len(), 2).unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let mut main = striped(small.len(), 2).to_vec();
        main.extend_from_slice(&small[..part]);
        main.extend_from_slice(&tcp_frame(true, b"after"));
        s.write_all(&main).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        l1.write_all(&emit_piece(1, (small.len() - part) as u32))
            .unwrap();
        l1.write_all(&small[part..]).unwrap();
        (s, l1, small)
    });
    let slept = Instant::now();
    while h.messages.len() < 3 {
        vmi.wait(&mut h, Duration::from_secs(30));
        assert!(
            slept.elapsed() < Duration::from_secs(20),
            "the small striped frame did not wake the receiver ({} messages)",
            h.messages.len()
        );
    }
    let (_s, _l1, small) = writer.join().unwrap();
    assert!(h.messages[1] == small, "the small striped frame whole");
    assert_eq!(h.messages[2], b"after");
    assert!(h.ended.is_empty(), "{:?}", h.ended);
    assert_eq!(attr(&vmi, "marked_payloads"), 1, "no mark for 8 KiB parts");
}
