//! A TCP peer that writes valid frames cut into pieces at random places (seeded, seed
//! printed), with pauses between some pieces, to a receiver that busy-polls. The receiver's
//! reads then meet every case: whole small frames (taken from the read itself), several
//! frames in one read, a header or a payload cut by the end of a read (the decoder's way),
//! heartbeats between messages, and the end of the stream. Every message must arrive whole, in
//! order, and the end must be reported once. Run twice: with the sockets lent to the host (its
//! poll reads them and leaves the transport the rest), and with the transport reading them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use std::collections::HashMap;

use vmi_core::Disconnect;
use vmi_core::prelude::*;
use vmi_tcp::wire::{ANSWER_LEN, AnswerRepr, AnswerStatus, HEARTBEAT, HelloRepr};
use vmi_tests::{Rng, tcp_frame, tcp_on_free_port_with, unique_key};

#[derive(Default)]
struct Receiver {
    /// Messages so far, each its fragments' bytes joined.
    messages: Vec<Vec<u8>>,
    /// The message being received.
    partial: Vec<u8>,
    ended: Vec<Disconnect>,
}

impl Handler for Receiver {
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        self.partial.extend_from_slice(&slab.read_to_vec());
        if cmd == Recv::End {
            self.messages.push(std::mem::take(&mut self.partial));
        }
    }
    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, reason: Disconnect) {
        self.ended.push(reason);
    }
}

/// Reads the receiver's answer to the hello; returns its status.
fn answer(s: &mut TcpStream) -> u8 {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        if got.len() >= ANSWER_LEN {
            let a = AnswerRepr::parse(got[..ANSWER_LEN].try_into().unwrap(), 1 << 20)
                .expect("an answer");
            if got.len() >= ANSWER_LEN + a.reason_len as usize + a.reply_len as usize {
                return a.status as u8;
            }
        }
        let n = s.read(&mut buf).expect("the answer");
        assert!(n > 0, "the receiver closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
}

/// A raw peer named `name`, connected to the receiver on `port` and accepted under `key` (the
/// receiver polls meanwhile, on its own thread).
fn accepted_peer(port: u16, key: &str, name: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).unwrap();
    s.write_all(&HelloRepr::emit(name, key, "send=;recv=", b""))
        .expect("hello");
    assert_eq!(
        answer(&mut s),
        AnswerStatus::Accept as u8,
        "{name}: accepted"
    );
    s
}

#[test]
fn frames_cut_anywhere_arrive_whole_through_the_hosts_reads() {
    cut_frames_arrive_whole(
        "frames_cut_anywhere_arrive_whole_through_the_hosts_reads",
        true,
    );
}

#[test]
fn frames_cut_anywhere_arrive_whole_through_the_transports_reads() {
    cut_frames_arrive_whole(
        "frames_cut_anywhere_arrive_whole_through_the_transports_reads",
        false,
    );
}

fn cut_frames_arrive_whole(name: &str, lend: bool) {
    let mut rng = Rng::new(name);
    let key = unique_key("pieces");
    let (mut vmi, port) = tcp_on_free_port_with(
        &key,
        &[("lend_streams", if lend { "true" } else { "false" })],
    );

    // First 20 messages as whole frames, in five writes 20 ms apart: the receiver is
    // between frames when each arrives, so the host (when lent) reads them, unless the
    // transport's own poll (one in 64) happens to read all five. Then the stream: 400
    // messages of 1 to 300 bytes, some in two fragments, heartbeats between some, cut into
    // pieces of 1 to 40 bytes.
    let (mut want, first) = frames_of(&mut rng, 0, 20);
    let batches: Vec<Vec<u8>> = first
        .chunks(first.len().div_ceil(5))
        .map(|c| c.concat())
        .collect();
    let (rest, frames) = frames_of(&mut rng, 0, 400);
    want.extend(rest);
    let stream = frames.concat();
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = (1 + rng.below(40) as usize).min(stream.len() - at);
        pieces.push((stream[at..at + n].to_vec(), rng.below(4) == 0));
        at += n;
    }

    let peer_key = key.clone();
    let peer = std::thread::spawn(move || {
        let mut s = accepted_peer(port, &peer_key, "pieces-peer");
        for batch in batches {
            s.write_all(&batch).expect("write");
            std::thread::sleep(Duration::from_millis(20));
        }
        for (piece, pause) in pieces {
            s.write_all(&piece).expect("write");
            if pause {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        // Leave the socket open until everything is read, then end the stream.
        std::thread::sleep(Duration::from_millis(200));
        drop(s);
    });

    let mut h = Receiver::default();
    let start = Instant::now();
    while h.ended.is_empty() {
        vmi.poll(&mut h);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} of {} messages, no end",
            h.messages.len(),
            want.len()
        );
    }
    peer.join().unwrap();
    assert_eq!(h.messages.len(), want.len(), "every message, nothing more");
    for (i, (got, want)) in h.messages.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "message {i}");
    }
    assert!(h.partial.is_empty(), "no fragment left over");
    assert_eq!(h.ended.len(), 1, "{:?}", h.ended);
    // The whole frames went to the host straight from the reads, the rest through IRBs.
    let direct: u64 = vmi
        .attr_get("tcp", "direct_receives")
        .expect("tcp counts its direct receives")
        .parse()
        .expect("a number");
    assert!(direct > 0, "no frame was handed over from a read");
    let by_host: u64 = vmi
        .attr_get("tcp", "lent_taken")
        .expect("tcp counts what the host took")
        .parse()
        .expect("a number");
    if lend {
        assert!(by_host > 0, "the host took no frame from the lent socket");
    } else {
        assert_eq!(by_host, 0, "nothing lent, nothing taken by the host");
    }
}

/// A peer's valid stream as frames: `count` messages of 1 to 300 bytes, each starting with
/// the peer's number, some in two fragments, heartbeats between some; with the messages.
fn frames_of(rng: &mut Rng, peer: u8, count: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut want = Vec::new();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for i in 0..count {
        let len = 1 + rng.below(300) as usize;
        let mut msg = rng.bytes(len);
        msg[0] = peer;
        let parts: Vec<&[u8]> = if i % 5 == 0 && len > 1 {
            vec![&msg[..len / 2], &msg[len / 2..]]
        } else {
            vec![&msg[..]]
        };
        for (j, part) in parts.iter().enumerate() {
            frames.push(tcp_frame(j + 1 == parts.len(), part));
        }
        if rng.below(8) == 0 {
            frames.push(HEARTBEAT.to_vec());
        }
        want.push(msg);
    }
    (want, frames)
}

/// A peer's valid stream ([`frames_of`]) with the messages, as writes of one to three whole
/// frames, one write in six cut in two at a random place (each piece with whether to pause
/// after it). Writes mostly of whole frames leave the receiver's connections between frames
/// most of the time, so its sockets are lent.
type PeerStream = (Vec<Vec<u8>>, Vec<(Vec<u8>, bool)>);

fn peer_stream(rng: &mut Rng, peer: u8, count: usize) -> PeerStream {
    let (want, frames) = frames_of(rng, peer, count);
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < frames.len() {
        let n = (1 + rng.below(3) as usize).min(frames.len() - at);
        let write: Vec<u8> = frames[at..at + n].concat();
        at += n;
        if rng.below(6) == 0 {
            let cut = 1 + rng.below(write.len() as u64 - 1) as usize;
            pieces.push((write[..cut].to_vec(), true));
            pieces.push((write[cut..].to_vec(), rng.below(4) == 0));
        } else {
            pieces.push((write, rng.below(4) == 0));
        }
    }
    (want, pieces)
}

/// Per connection, what arrived: its messages and whether it ended.
#[derive(Default)]
struct Many {
    messages: HashMap<ConnId, Vec<Vec<u8>>>,
    partial: HashMap<ConnId, Vec<u8>>,
    ended: Vec<(ConnId, Disconnect)>,
    accepted: usize,
}

impl Many {
    /// Polls until `peers` connections ended (30 s from `start` at most).
    fn poll_until_ended(&mut self, vmi: &mut Vmi, peers: usize, start: Instant) {
        while self.ended.len() < peers {
            vmi.poll(self);
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} of {peers} peers ended",
                self.ended.len()
            );
        }
    }
}

impl Handler for Many {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, _r: &mut ConnectRequest<'_>) -> Decision {
        self.accepted += 1;
        Decision::Accept(Vec::new())
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        let partial = self.partial.entry(conn).or_default();
        partial.extend_from_slice(&slab.read_to_vec());
        if cmd == Recv::End {
            let m = std::mem::take(partial);
            self.messages.entry(conn).or_default().push(m);
        }
    }
    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, reason: Disconnect) {
        self.ended.push((conn, reason));
    }
}

/// Three raw peers write their streams at once to one busy-polling receiver whose
/// sockets are lent (they share the transport's buffer, and a rest left on one stops the
/// host's reading of the others until the transport took it); the first ends its stream
/// while the others still write. Every connection's messages arrive whole and in order, and
/// each end is reported once.
#[test]
fn several_peers_cut_anywhere_arrive_whole_through_the_hosts_reads() {
    let mut rng = Rng::new("several_peers_cut_anywhere_arrive_whole_through_the_hosts_reads");
    let key = unique_key("pieces-many");
    let (mut vmi, port) = tcp_on_free_port_with(&key, &[("lend_streams", "true")]);
    let streams: Vec<PeerStream> = (0..3u8)
        .map(|p| peer_stream(&mut rng, p, if p == 0 { 60 } else { 250 }))
        .collect();
    let wants: Vec<Vec<Vec<u8>>> = streams.iter().map(|(w, _)| w.clone()).collect();
    let mut peers = Vec::new();
    for (p, (_, pieces)) in streams.into_iter().enumerate() {
        let peer_key = key.clone();
        peers.push(std::thread::spawn(move || {
            let mut s = accepted_peer(port, &peer_key, &format!("pieces-peer-{p}"));
            for (piece, pause) in pieces {
                s.write_all(&piece).expect("write");
                if pause {
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
            if p > 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
            drop(s);
        }));
    }
    let mut h = Many::default();
    let start = Instant::now();
    h.poll_until_ended(&mut vmi, 3, start);
    for p in peers {
        p.join().unwrap();
    }
    assert_eq!(h.messages.len(), 3, "three connections delivered");
    for (conn, got) in &h.messages {
        let peer = got[0][0] as usize;
        assert!(
            got.iter().all(|m| m[0] as usize == peer),
            "connection {conn:?} mixed peers' messages"
        );
        assert_eq!(got.len(), wants[peer].len(), "peer {peer}: every message");
        for (i, (g, w)) in got.iter().zip(&wants[peer]).enumerate() {
            assert_eq!(g, w, "peer {peer}, message {i}");
        }
        assert!(
            h.partial.get(conn).is_none_or(Vec::is_empty),
            "peer {peer}: no fragment left over"
        );
    }
    let ended: std::collections::HashSet<ConnId> = h.ended.iter().map(|(c, _)| *c).collect();
    assert_eq!(ended.len(), 3, "each end reported once: {:?}", h.ended);
    // How much the host read depends on how the three writers interleave (it reads only
    // while every connection is between frames); the next test makes it certain.
    let by_host: u64 = vmi
        .attr_get("tcp", "lent_taken")
        .expect("tcp counts what the host took")
        .parse()
        .expect("a number");
    eprintln!("the host took {by_host} frames from the lent sockets");
}

/// Three raw peers, accepted while the receiver polls, then each writes its whole stream and
/// closes before the receiver polls again: its first polls find every socket full, so the
/// host's reader meets a frame it must leave (a heartbeat, a cut frame's rest is whole by
/// now) on one stream while the others hold data for the same shared buffer. Every
/// connection's messages arrive whole and in order.
#[test]
fn several_full_sockets_share_the_transports_buffer_without_loss() {
    let mut rng = Rng::new("several_full_sockets_share_the_transports_buffer_without_loss");
    // The first poll after the writes must be the host's: the transport's own poll (one in
    // 64 of the host's) would read the sockets itself. A round where it did is played again.
    for round in 0..4 {
        if full_sockets_round(&mut rng) > 0 {
            return;
        }
        eprintln!("round {round}: the transport read the sockets itself; again");
    }
    panic!("the host took no frame from the lent sockets in four rounds");
}

/// One round of [`several_full_sockets_share_the_transports_buffer_without_loss`]: checks
/// every connection's messages; returns the frames the host took.
fn full_sockets_round(rng: &mut Rng) -> u64 {
    let key = unique_key("pieces-full");
    let (mut vmi, port) = tcp_on_free_port_with(&key, &[("lend_streams", "true")]);
    let streams: Vec<PeerStream> = (0..3u8).map(|p| peer_stream(rng, p, 150)).collect();
    let wants: Vec<Vec<Vec<u8>>> = streams.iter().map(|(w, _)| w.clone()).collect();
    let go = std::sync::Arc::new(std::sync::Barrier::new(4));
    let mut peers = Vec::new();
    for (p, (_, pieces)) in streams.into_iter().enumerate() {
        let (peer_key, go) = (key.clone(), go.clone());
        peers.push(std::thread::spawn(move || {
            let mut s = accepted_peer(port, &peer_key, &format!("full-peer-{p}"));
            go.wait();
            let all: Vec<u8> = pieces.into_iter().flat_map(|(b, _)| b).collect();
            s.write_all(&all).expect("write");
            drop(s);
        }));
    }
    let mut h = Many::default();
    let start = Instant::now();
    // Accept the three; then idle polls, after which the sockets are lent.
    while h.accepted < 3 {
        vmi.poll(&mut h);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the peers were not accepted"
        );
    }
    for _ in 0..1000 {
        vmi.poll(&mut h);
    }
    go.wait();
    for p in peers {
        p.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    h.poll_until_ended(&mut vmi, 3, start);
    assert_eq!(h.messages.len(), 3, "three connections delivered");
    for got in h.messages.values() {
        let peer = got[0][0] as usize;
        let want = &wants[peer];
        if let Some(i) = got.iter().zip(want).position(|(g, w)| g != w) {
            panic!(
                "peer {peer}: message {i} differs ({} bytes arrived, {} sent)",
                got[i].len(),
                want[i].len()
            );
        }
        assert_eq!(got.len(), want.len(), "peer {peer}: every message");
    }
    vmi.attr_get("tcp", "lent_taken").unwrap().parse().unwrap()
}

/// A receiver that busy-polled with its socket lent (the host read everything that came)
/// and then sleeps in `wait` is woken by the next message, whichever side read the bytes
/// before: the sleep ends the loan, and epoll's edges are not lost to the host's reads.
#[test]
fn a_receiver_sleeping_after_lent_reads_wakes_for_the_next_message() {
    let key = unique_key("pieces-sleep");
    let (mut vmi, port) = tcp_on_free_port_with(&key, &[("lend_streams", "true")]);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let peer_key = key.clone();
    let peer = std::thread::spawn(move || {
        let mut s = accepted_peer(port, &peer_key, "sleep-peer");
        // Each write the test asks for, then the end.
        for bytes in rx {
            s.write_all(&bytes).expect("write");
        }
    });
    let frame = |text: &[u8]| tcp_frame(true, text);
    let mut h = Many::default();
    let start = Instant::now();
    while h.accepted < 1 {
        vmi.poll(&mut h);
        assert!(start.elapsed() < Duration::from_secs(30), "not accepted");
    }
    let delivered = |h: &Many| h.messages.values().map(Vec::len).sum::<usize>();
    for round in 0..5 {
        // Busy: messages read by the host from the lent socket.
        for i in 0..20 {
            tx.send(frame(format!("busy {round} {i}").as_bytes()))
                .unwrap();
            let want = round * 21 + i + 1;
            while delivered(&h) < want {
                vmi.poll(&mut h);
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "round {round}: stuck"
                );
            }
        }
        // Asleep: the next message comes 30 ms into the sleep.
        let sender = tx.clone();
        let later = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            sender.send(frame(b"wake up")).unwrap();
        });
        let slept = Instant::now();
        while delivered(&h) < round * 21 + 21 {
            vmi.wait(&mut h, Duration::from_secs(10));
            assert!(
                slept.elapsed() < Duration::from_secs(5),
                "round {round}: the sleeping receiver missed the message"
            );
        }
        later.join().unwrap();
    }
    let by_host: u64 = vmi.attr_get("tcp", "lent_taken").unwrap().parse().unwrap();
    assert!(by_host > 0, "the host took no frame from the lent socket");
    drop(tx);
    peer.join().unwrap();
}
