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

use vmi_core::Disconnect;
use vmi_core::prelude::*;
use vmi_tcp::wire::{ANSWER_LEN, AnswerRepr, AnswerStatus, FrameRepr, HEARTBEAT, HelloRepr};
use vmi_tests::{Rng, tcp_on_free_port_with, unique_key};

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

    // The stream: 400 messages of 1 to 300 bytes, some in two fragments, heartbeats between
    // some; then it is cut into pieces of 1 to 40 bytes.
    let mut want = Vec::new();
    let mut stream = Vec::new();
    for i in 0..400 {
        let len = 1 + rng.below(300) as usize;
        let msg = rng.bytes(len);
        let parts: Vec<&[u8]> = if i % 5 == 0 && len > 1 {
            vec![&msg[..len / 2], &msg[len / 2..]]
        } else {
            vec![&msg[..]]
        };
        for (j, part) in parts.iter().enumerate() {
            let header = FrameRepr {
                end: j + 1 == parts.len(),
                filter_flags: 0,
                len: part.len() as u32,
            };
            stream.extend_from_slice(&header.emit());
            stream.extend_from_slice(part);
        }
        if rng.below(8) == 0 {
            stream.extend_from_slice(&HEARTBEAT);
        }
        want.push(msg);
    }
    let mut pieces = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = (1 + rng.below(40) as usize).min(stream.len() - at);
        pieces.push((stream[at..at + n].to_vec(), rng.below(4) == 0));
        at += n;
    }

    let peer_key = key.clone();
    let peer = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).unwrap();
        s.write_all(&HelloRepr::emit(
            "pieces-peer",
            &peer_key,
            "send=;recv=",
            b"",
        ))
        .expect("hello");
        assert_eq!(answer(&mut s), AnswerStatus::Accept as u8, "accepted");
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
