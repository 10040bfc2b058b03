//! Send/receive/reply and pulses (issue "Beyond streams"): the same requests, replies,
//! errors, deferred answers, reads and writes at offsets, timeouts, cancels, lost servers and
//! priorities over every transport, with and without filters (the direct receive path and
//! the IRB path).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_core::{Sender, msgpass::ENOSYS};
use vmi_tests::{register_all, spec_text, unique_key};

/// What the server does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Serve {
    /// Reply at once: "re:" + the request, status = its length.
    Echo,
    /// Keep it; the test answers later.
    Defer,
    /// Answer with error code 77.
    Fail,
    /// Use the trait's default (ENOSYS).
    Default,
    /// Read the request at offset 2 in the callback (`Side::read_in_callback`), then keep it.
    ReadThenDefer,
    /// As `Echo`, with the reply given as buffers (`reply_buffers`).
    EchoBuffers,
}

#[derive(Default)]
struct Side {
    conn: Option<ConnId>,
    serve: Option<Serve>,
    /// Requests seen: (id, sender, priority, reply_max, bytes).
    requests: Vec<(ReceiveId, Sender, u8, usize, Vec<u8>)>,
    /// Answers: token -> outcome text.
    replies: HashMap<u64, String>,
    pulses: Vec<(i32, u32, u8)>,
    /// The order of deliveries: "p<code>", "r<first byte>", "s<first byte>".
    order: Vec<String>,
    gone: Vec<(ReceiveId, Status)>,
    received: Vec<Vec<u8>>,
    /// What `msg_read` at offset 2 gave in the request callback (`Serve::ReadThenDefer`).
    read_in_callback: Vec<Vec<u8>>,
}

impl Handler for Side {
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        if let ConnectOutcome::Failed { status, detail } = o {
            panic!("connect failed: {status}: {detail}");
        }
        self.conn = Some(conn);
    }
    fn accept(&mut self, _ctx: &mut Ctx<'_>, r: &mut ConnectRequest<'_>) -> Decision {
        self.conn = Some(r.conn);
        Decision::Accept(Vec::new())
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _cmd: Recv, slab: &mut Slab<'_>) {
        let v = slab.read_to_vec();
        self.order
            .push(format!("s{}", v.first().copied().unwrap_or(0)));
        self.received.push(v);
    }
    fn request(&mut self, ctx: &mut Ctx<'_>, r: &mut Request<'_>) {
        let bytes = r.data.read_to_vec();
        self.order
            .push(format!("r{}", bytes.first().copied().unwrap_or(0)));
        self.requests.push((
            r.id,
            r.sender.clone(),
            r.priority,
            r.reply_max,
            bytes.clone(),
        ));
        match self.serve.unwrap_or(Serve::Echo) {
            Serve::Echo => ctx
                .reply(r.id, bytes.len() as i32, &[b"re:", &bytes])
                .expect("reply"),
            Serve::EchoBuffers => ctx
                .reply_buffers(
                    r.id,
                    bytes.len() as i32,
                    [Buffer::from_vec(b"re:".to_vec()), Buffer::from_vec(bytes)],
                )
                .expect("reply"),
            Serve::Defer => {}
            Serve::ReadThenDefer => {
                let mut buf = [0u8; 64];
                let n = ctx
                    .msg_read(r.id, 2, &mut buf)
                    .expect("a read in the callback");
                self.read_in_callback.push(buf[..n].to_vec());
            }
            Serve::Fail => ctx.reply_error(r.id, 77).expect("error reply"),
            Serve::Default => {
                struct Plain;
                impl Handler for Plain {}
                Plain.request(ctx, r);
            }
        }
    }
    fn replied(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, token: u64, reply: Reply<'_>) {
        let text = match reply {
            Reply::Data { status, mut data } => {
                format!("{status}:{}", String::from_utf8_lossy(&data.read_to_vec()))
            }
            Reply::Error { code } => format!("error {code}"),
            Reply::Failed { status, detail } => format!("failed {status:?}: {detail}"),
        };
        assert!(
            self.replies.insert(token, text).is_none(),
            "token {token} answered twice"
        );
    }
    fn pulse(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, p: Pulse) {
        self.order.push(format!("p{}", p.code));
        self.pulses.push((p.code, p.value, p.priority));
    }
    fn request_gone(&mut self, _ctx: &mut Ctx<'_>, id: ReceiveId, status: Status) {
        self.gone.push((id, status));
    }
}

struct Pair {
    a: Vmi,
    b: Vmi,
    ha: Side,
    hb: Side,
    conn: ConnId,
}

impl Pair {
    fn new(transport: &str, filters: &[&str]) -> Pair {
        register_all();
        let mut text = spec_text(transport, filters, "");
        // The fault injector (when used) bends sends only, at rates the tests set.
        text = text.replace(
            "name=\"fault\"/>",
            "name=\"fault\"><param name=\"direction\" value=\"send\"/></device>",
        );
        let spec = Spec::parse_str(&text, "msgpass.xml").expect("spec");
        let (ka, kb) = (unique_key("mp-a"), unique_key("mp-b"));
        let mut a = Vmi::with_spec(spec.clone(), &ka).expect("a");
        let mut b = Vmi::with_spec(spec, &kb).expect("b");
        let (mut ha, mut hb) = (Side::default(), Side::default());
        a.connect("localhost", &kb, b"", 0).expect("connect");
        let start = Instant::now();
        while ha.conn.is_none() || hb.conn.is_none() {
            a.poll(&mut ha);
            b.poll(&mut hb);
            assert!(start.elapsed() < Duration::from_secs(20), "no connection");
        }
        let conn = ha.conn.unwrap();
        let mut p = Pair { a, b, ha, hb, conn };
        // The engines' latency ping and pong at connect are host messages, which take the
        // IRB path and with them the rest of their poll: let them pass first, so the tests
        // of the direct path see it.
        let bconn = p.hb.conn.unwrap();
        let start = Instant::now();
        while p.a.one_way_latency(conn).is_none() || p.b.one_way_latency(bconn).is_none() {
            p.a.poll(&mut p.ha);
            p.b.poll(&mut p.hb);
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no latency measured"
            );
        }
        p
    }

    fn pump_until(&mut self, what: &str, mut done: impl FnMut(&Pair) -> bool) {
        let start = Instant::now();
        while !done(self) {
            self.a.poll(&mut self.ha);
            self.b.poll(&mut self.hb);
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no progress waiting for {what}"
            );
        }
    }

    fn reply_of(&mut self, token: u64) -> String {
        self.pump_until("a reply", |p| p.ha.replies.contains_key(&token));
        self.ha.replies[&token].clone()
    }
}

fn options() -> RequestOptions {
    RequestOptions::default()
}

/// Every transport, and one with filters on the chain (requests then take the IRB path).
const CASES: &[(&str, &[&str])] = &[
    ("loopback", &[]),
    ("shmem", &[]),
    ("tcp", &[]),
    ("tcp", &["crc", "compress"]),
    ("shmem", &["crc"]),
];

#[test]
fn requests_are_answered_with_replies_and_errors_on_every_chain() {
    for &(transport, filters) in CASES {
        let label = format!("{transport} {filters:?}");
        let mut p = Pair::new(transport, filters);
        let conn = p.conn;
        p.a.request(conn, &[b"hel", b"lo"], &options(), 1)
            .expect("request");
        assert_eq!(p.reply_of(1), "5:re:hello", "{label}");
        let (_, sender, priority, reply_max, bytes) = p.hb.requests[0].clone();
        assert_eq!(bytes, b"hello", "{label}");
        assert_eq!(sender.key, p.a.key(), "{label}: the sender's key");
        assert_eq!((priority, reply_max), (0, 64 * 1024), "{label}");
        let own_uid = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap();
        // Shared memory checks the peer's uid (SO_PEERCRED); the others do not report one.
        let uid = (transport == "shmem").then_some(own_uid);
        assert_eq!(sender.uid, uid, "{label}: the sender's uid");

        p.hb.serve = Some(Serve::Fail);
        p.a.request(conn, &[b"x"], &options(), 2).unwrap();
        assert_eq!(p.reply_of(2), "error 77", "{label}");
        p.hb.serve = Some(Serve::Default);
        p.a.request(conn, &[b"y"], &options(), 3).unwrap();
        assert_eq!(p.reply_of(3), format!("error {ENOSYS}"), "{label}");

        // A request from inside a callback, and a large one (the IRB path).
        p.hb.serve = Some(Serve::Echo);
        let big = vec![b'z'; 200_000];
        let opts = RequestOptions {
            reply_max: 300_000,
            ..options()
        };
        p.a.request(conn, &[&big], &opts, 4).unwrap();
        let r = p.reply_of(4);
        assert!(
            r.starts_with("200000:re:zzz") && r.len() == 7 + 3 + 200_000,
            "{label}"
        );
        // Streams and requests share the connection.
        p.a.send_inline(conn, &[9, 9]).unwrap();
        p.a.request(conn, &[b"after"], &options(), 5).unwrap();
        assert_eq!(p.reply_of(5), "5:re:after", "{label}");
        p.pump_until("the stream", |p| !p.hb.received.is_empty());
        assert_eq!(p.hb.received, vec![vec![9, 9]], "{label}");
    }
}

/// Requests and replies whose bytes are given as buffers (`request_buffers`,
/// `reply_buffers`): copied when small, sent from the buffers themselves when large (shared
/// memory reads them in place); either way they arrive whole and in order, on every chain.
#[test]
fn requests_and_replies_given_as_buffers_arrive_whole_on_every_chain() {
    for &(transport, filters) in CASES {
        let label = format!("{transport} {filters:?}");
        let mut p = Pair::new(transport, filters);
        let conn = p.conn;
        p.hb.serve = Some(Serve::EchoBuffers);
        let opts = RequestOptions {
            reply_max: 2 << 20,
            ..options()
        };
        // Below and above the 4 KiB where given buffers stop being copied, and over the
        // 16 KiB the direct receive path takes.
        for (token, len) in [(1u64, 100usize), (2, 70_000), (3, 1 << 20)] {
            let bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let half = len / 2;
            let given = [
                Buffer::shared(std::sync::Arc::from(&bytes[..half])),
                Buffer::from_vec(bytes[half..].to_vec()),
            ];
            p.a.request_buffers(conn, given, &opts, token)
                .expect("request");
            let r = p.reply_of(token);
            let want = format!("{len}:re:{}", String::from_utf8_lossy(&bytes));
            assert!(r == want, "{label}: the reply to {len} bytes differs");
            assert!(
                p.hb.requests.last().is_some_and(|q| q.4 == bytes),
                "{label}: the server got other bytes than the {len} sent"
            );
        }
        // More buffers than an IRB has segments for (one is the header's): refused, and
        // nothing is left waiting.
        let many = (0..16).map(|_| Buffer::from_vec(vec![b'm'; 10]));
        let err = p.a.request_buffers(conn, many, &opts, 9).unwrap_err();
        assert!(
            matches!(err, VmiError::TooManyBuffers { given: 16, max: 15 }),
            "{label}: {err}"
        );
        // A reply given as buffers lands over bytes written ahead of it (QNX MsgWrite).
        p.hb.serve = Some(Serve::Defer);
        p.a.request(conn, &[b"q"], &options(), 10).unwrap();
        p.pump_until("the deferred request", |p| p.hb.requests.len() == 4);
        let id = p.hb.requests[3].0;
        assert_eq!(p.b.msg_write(id, 0, b"0123456789").unwrap(), 10, "{label}");
        p.b.reply_buffers(id, 0, [Buffer::from_vec(b"ab".to_vec())])
            .expect("reply");
        assert_eq!(p.reply_of(10), "0:ab23456789", "{label}");
        assert!(
            !p.ha.replies.contains_key(&9),
            "{label}: a refused request was answered"
        );
    }
}

/// A small request, which the direct receive path delivers where it arrived (no copy while
/// the callback runs), reads the same in its callback and, kept, after it.
#[test]
fn a_small_request_reads_the_same_in_its_callback_and_after_it() {
    for &(transport, filters) in CASES {
        let label = format!("{transport} {filters:?}");
        let mut p = Pair::new(transport, filters);
        p.hb.serve = Some(Serve::ReadThenDefer);
        p.a.request(p.conn, &[b"0123", b"456789"], &options(), 1)
            .unwrap();
        p.pump_until("the request", |p| !p.hb.requests.is_empty());
        assert_eq!(p.hb.read_in_callback, vec![b"23456789".to_vec()], "{label}");
        // Another request arrives meanwhile and overwrites what the first arrived in.
        p.a.request(p.conn, &[b"abcdefghij"], &options(), 2)
            .unwrap();
        p.pump_until("the second request", |p| p.hb.requests.len() == 2);
        let (first, second) = (p.hb.requests[0].0, p.hb.requests[1].0);
        let mut buf = [0u8; 16];
        let n = p.b.msg_read(first, 0, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"0123456789", "{label}: the first, kept");
        let n = p.b.msg_read(second, 5, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"fghij", "{label}: the second, kept");
        p.b.reply(second, 0, &[b"two"]).unwrap();
        p.b.reply(first, 0, &[b"one"]).unwrap();
        assert_eq!(p.reply_of(1), "0:one", "{label}");
        assert_eq!(p.reply_of(2), "0:two", "{label}");
        assert!(matches!(
            p.b.msg_read(first, 0, &mut buf),
            Err(VmiError::UnknownRequest(_))
        ));
    }
}

#[test]
fn a_deferred_request_is_read_at_offsets_written_ahead_and_answered_later() {
    for &(transport, filters) in CASES {
        let label = format!("{transport} {filters:?}");
        let mut p = Pair::new(transport, filters);
        p.hb.serve = Some(Serve::Defer);
        let request: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let opts = RequestOptions {
            reply_max: 16,
            ..options()
        };
        p.a.request(p.conn, &[&request], &opts, 7).unwrap();
        p.pump_until("the request", |p| !p.hb.requests.is_empty());
        let id = p.hb.requests[0].0;
        assert_eq!(p.hb.requests[0].3, 16, "{label}: the client's reply size");
        // Read at an offset, as a subserver would, after the callback returned.
        let mut buf = [0u8; 4];
        assert_eq!(p.b.msg_read(id, 99_998, &mut buf).unwrap(), 2, "{label}");
        assert_eq!(&buf[..2], &request[99_998..], "{label}");
        assert_eq!(p.b.msg_read(id, 200_000, &mut buf).unwrap(), 0, "{label}");
        // Written ahead, cut at the client's size.
        assert_eq!(p.b.msg_write(id, 10, b"ABCDEFGHIJ").unwrap(), 6, "{label}");
        assert!(matches!(
            p.b.reply(id, 0, &[&[0u8; 17]]),
            Err(VmiError::ReplyTooLarge { len: 17, max: 16 })
        ));
        assert!(!p.ha.replies.contains_key(&7), "{label}: no answer yet");
        p.b.reply(id, 3, &[b"abc"]).expect("a later reply");
        assert_eq!(
            p.reply_of(7),
            "3:abc\0\0\0\0\0\0\0ABCDEF",
            "{label}: the reply over the bytes written ahead"
        );
        assert!(matches!(
            p.b.reply(id, 0, &[]),
            Err(VmiError::UnknownRequest(_))
        ));
    }
}

#[test]
fn timeouts_cancels_and_lost_servers_end_requests_and_free_the_server() {
    for &(transport, filters) in CASES {
        let label = format!("{transport} {filters:?}");
        let mut p = Pair::new(transport, filters);
        p.hb.serve = Some(Serve::Defer);
        let short = RequestOptions {
            timeout: Some(Duration::from_millis(50)),
            ..options()
        };
        p.a.request(p.conn, &[b"t"], &short, 1).unwrap();
        let r = p.reply_of(1);
        assert!(r.starts_with("failed Timeout"), "{label}: {r}");
        p.pump_until("the server forgets", |p| p.hb.gone.len() == 1);
        assert_eq!(p.hb.gone[0].1, Status::Cancelled, "{label}");
        let id = p.hb.requests[0].0;
        assert!(
            matches!(p.b.reply(id, 0, &[]), Err(VmiError::UnknownRequest(_))),
            "{label}: a late answer is refused"
        );

        let rid = p.a.request(p.conn, &[b"c"], &options(), 2).unwrap();
        p.pump_until("the request", |p| p.hb.requests.len() == 2);
        assert!(p.a.request_cancel(rid), "{label}");
        assert!(!p.a.request_cancel(rid), "{label}: cancelled once");
        let r = p.reply_of(2);
        assert!(r.starts_with("failed Cancelled"), "{label}: {r}");
        p.pump_until("the server forgets", |p| p.hb.gone.len() == 2);

        // The server goes away with a request held: the client hears, no hang.
        p.a.request(p.conn, &[b"l"], &options(), 3).unwrap();
        p.pump_until("the request", |p| p.hb.requests.len() == 3);
        drop(std::mem::replace(
            &mut p.b,
            Vmi::with_spec(
                Spec::parse_str(&spec_text(transport, filters, ""), "x.xml").unwrap(),
                &unique_key("mp-c"),
            )
            .unwrap(),
        ));
        let r = p.reply_of(3);
        assert!(r.starts_with("failed ConnectionLost"), "{label}: {r}");
    }
}

#[test]
fn pulses_and_requests_go_by_priority_and_ahead_of_the_stream() {
    for &(transport, filters) in CASES {
        let label = format!("{transport} {filters:?}");
        let mut p = Pair::new(transport, filters);
        let conn = p.conn;
        p.hb.serve = Some(Serve::Defer);
        // All sent before the server polls, so they arrive in one poll.
        p.a.send_inline(conn, &[1]).unwrap();
        p.a.pulse(
            conn,
            Pulse {
                code: 10,
                value: 100,
                priority: 0,
            },
        )
        .unwrap();
        let prio = |priority| RequestOptions {
            priority,
            ..options()
        };
        p.a.request(conn, &[&[20]], &prio(5), 1).unwrap();
        p.a.send_inline(conn, &[2]).unwrap();
        p.a.pulse(
            conn,
            Pulse {
                code: 30,
                value: 300,
                priority: 9,
            },
        )
        .unwrap();
        p.a.pulse(
            conn,
            Pulse {
                code: 40,
                value: 400,
                priority: 5,
            },
        )
        .unwrap();
        // Let the sender's transport write everything, then one poll of the server.
        for _ in 0..50 {
            p.a.poll(&mut p.ha);
            std::thread::sleep(Duration::from_millis(2));
        }
        p.pump_until("everything", |p| p.hb.order.len() == 6);
        let order = p.hb.order.join(" ");
        if filters.is_empty() && transport != "loopback" {
            // The direct path: priority above 0 goes ahead of the stream of the same poll.
            assert_eq!(order, "p30 r20 p40 s1 s2 p10", "{label}");
        } else {
            // The IRB path: the stream as it comes, then the rest by priority.
            let (stream, rest): (Vec<&str>, Vec<&str>) =
                p.hb.order
                    .iter()
                    .map(|s| s.as_str())
                    .partition(|s| s.starts_with('s'));
            assert_eq!(stream, ["s1", "s2"], "{label}");
            assert_eq!(rest, ["p30", "r20", "p40", "p10"], "{label}");
        }
        assert_eq!(p.hb.pulses[0], (30, 300, 9), "{label}");
    }
}

#[test]
fn a_server_holds_a_bounded_number_of_requests_and_refuses_the_rest() {
    let mut p = Pair::new("shmem", &[]);
    p.hb.serve = Some(Serve::Defer);
    let n = 300;
    for t in 0..n {
        p.a.request(p.conn, &[b"q"], &options(), t).unwrap();
        p.a.poll(&mut p.ha);
        p.b.poll(&mut p.hb);
    }
    p.pump_until("the refusals", |p| p.ha.replies.len() == 300 - 256);
    assert_eq!(p.hb.requests.len(), 256);
    assert!(
        p.ha.replies
            .values()
            .all(|r| r.starts_with("failed NoResources")),
        "{:?}",
        p.ha.replies.values().next()
    );
    // Answering frees room.
    let first = p.hb.requests[0].0;
    p.b.reply(first, 0, &[]).unwrap();
    p.pump_until("the reply", |p| p.ha.replies.contains_key(&0));
    p.a.request(p.conn, &[b"more"], &options(), 1000).unwrap();
    p.pump_until("the new request", |p| p.hb.requests.len() == 257);
}

#[test]
fn misuse_is_refused_with_a_reason() {
    let mut p = Pair::new("loopback", &[]);
    let too_high = RequestOptions {
        priority: 64,
        ..options()
    };
    assert!(matches!(
        p.a.request(p.conn, &[b"x"], &too_high, 0),
        Err(VmiError::Priority(64))
    ));
    let too_big = RequestOptions {
        reply_max: vmi_core::MAX_MESSAGE + 1,
        ..options()
    };
    assert!(matches!(
        p.a.request(p.conn, &[b"x"], &too_big, 0),
        Err(VmiError::MessageTooLarge { .. })
    ));
    let s = p.a.stream_begin(p.conn).unwrap();
    assert!(matches!(
        p.a.request(p.conn, &[b"x"], &options(), 0),
        Err(VmiError::StreamBusy(_))
    ));
    p.a.stream_end(s, [], 0).unwrap();
    p.a.disconnect(p.conn).unwrap();
    let err = p.a.request(p.conn, &[b"x"], &options(), 0);
    assert!(
        matches!(
            err,
            Err(VmiError::UnknownConnection(_)) | Err(VmiError::NotOpen { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn request_wait_blocks_until_the_answer_over_shared_memory_and_tcp() {
    for transport in ["shmem", "tcp"] {
        register_all();
        let text = spec_text(transport, &[], "");
        let spec = Spec::parse_str(&text, "msgpass.xml").expect("spec");
        let kb = unique_key("mp-srv");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let server = {
            let (spec, kb) = (spec.clone(), kb.clone());
            std::thread::spawn(move || {
                let mut b = Vmi::with_spec(spec, &kb).expect("server");
                let mut hb = Side::default();
                ready_tx.send(()).unwrap();
                let start = Instant::now();
                while stop_rx.try_recv().is_err() && start.elapsed() < Duration::from_secs(30) {
                    b.wait(&mut hb, Duration::from_millis(20));
                }
                hb.requests.len()
            })
        };
        ready_rx.recv().unwrap();
        let mut a = Vmi::with_spec(spec, &unique_key("mp-cli")).expect("client");
        let mut ha = Side::default();
        a.connect("localhost", &kb, b"", 0).unwrap();
        let start = Instant::now();
        while ha.conn.is_none() {
            a.wait(&mut ha, Duration::from_millis(20));
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{transport}: connect"
            );
        }
        let conn = ha.conn.unwrap();
        for i in 0..20u8 {
            let answer = a
                .request_wait(&mut ha, conn, &[&[i; 3]], &options())
                .expect("an answer");
            assert_eq!(
                answer,
                Answer::Reply {
                    status: 3,
                    data: [b"re:".as_slice(), &[i; 3]].concat()
                },
                "{transport}"
            );
        }
        stop_tx.send(()).unwrap();
        assert_eq!(server.join().unwrap(), 20, "{transport}");
        // The server is gone: a blocking request ends, it does not hang.
        let t = Instant::now();
        let short = RequestOptions {
            timeout: Some(Duration::from_secs(5)),
            ..options()
        };
        let err = a.request_wait(&mut ha, conn, &[b"anyone?"], &short);
        assert!(
            matches!(
                err,
                Err(VmiError::RequestFailed { .. })
                    | Err(VmiError::NotOpen { .. })
                    | Err(VmiError::UnknownConnection(_))
            ),
            "{transport}: {err:?}"
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{transport}");
    }
}

#[test]
fn a_request_or_reply_that_fails_on_the_way_fails_its_request_not_the_stream() {
    // CRC below the fault injector: a corrupted request or reply fails the receiver's CRC.
    let mut p = Pair::new("tcp", &["crc", "fault"]);
    p.a.attr_set("fault", "corrupt", "1").unwrap();
    p.a.request(p.conn, &[b"bent"], &options(), 1).unwrap();
    let r = p.reply_of(1);
    assert!(
        r.starts_with("failed Corrupt: the server could not receive the request"),
        "{r}"
    );
    assert!(p.hb.requests.is_empty());
    p.a.attr_set("fault", "corrupt", "0").unwrap();

    // Now the reply: the server's injector bends it, the client's CRC fails it, and the
    // server's vmi tells the client which request it answered.
    p.b.attr_set("fault", "corrupt", "1").unwrap();
    p.a.request(p.conn, &[b"ok"], &options(), 2).unwrap();
    p.pump_until("the request", |p| p.hb.requests.len() == 1);
    p.b.attr_set("fault", "corrupt", "0").unwrap();
    let r = p.reply_of(2);
    assert!(r.starts_with("failed Corrupt"), "{r}");
    // Nothing of this reached the stream callbacks, and the connection still works.
    p.a.request(p.conn, &[b"again"], &options(), 3).unwrap();
    assert_eq!(p.reply_of(3), "5:re:again");
    assert!(p.ha.received.is_empty() && p.hb.received.is_empty());
}

#[test]
fn a_hostile_peer_s_message_passing_frames_are_checked_and_bounded() {
    use std::io::{Read, Write};
    use vmi_core::msgpass::wire::{HEADER, Kind};
    use vmi_tcp::wire::{FrameRepr, HelloRepr};

    register_all();
    let spec = Spec::parse_str(&spec_text("tcp", &[], ""), "msgpass.xml").expect("spec");
    let key = unique_key("mp-victim");
    let mut b = Vmi::with_spec(spec.clone(), &key).expect("server");
    let mut hb = Side {
        serve: Some(Serve::Defer),
        ..Side::default()
    };
    let port: u16 = b.attr_get("tcp", "rail_address").unwrap()[1..]
        .parse()
        .expect("a port");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&HelloRepr::emit("mallory", &key, "send=;recv=", b""))
        .unwrap();
    s.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    while answer.is_empty() {
        b.poll(&mut hb);
        let mut buf = [0u8; 512];
        if let Ok(n) = s.read(&mut buf) {
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no answer");
    }
    let msg_flags = (vmi_core::abi::VMI_FLAG_MSG >> 16) as u16;
    let frame = |end: bool, body: &[u8]| {
        let mut f = FrameRepr {
            end,
            filter_flags: msg_flags,
            len: body.len() as u32,
        }
        .emit()
        .to_vec();
        f.extend_from_slice(body);
        f
    };
    let request = |id: u64| {
        Kind::Request {
            id,
            reply_max: u32::MAX,
            priority: 63,
        }
        .encode()
        .to_vec()
    };
    let mut bytes = Vec::new();
    bytes.extend(frame(true, &[1; 10])); // shorter than a header
    let mut unknown = request(1);
    unknown[0] = 99;
    bytes.extend(frame(true, &unknown)); // an unknown kind
    bytes.extend(frame(
        true,
        &Kind::Reply {
            id: 12345,
            status: 0,
        }
        .encode(),
    )); // nobody asked
    bytes.extend(frame(true, &Kind::Cancel { id: 777 }.encode())); // nothing to cancel
    bytes.extend(frame(false, &request(2))); // not the end of its message
    let mut pulse_with_payload = Kind::Pulse {
        code: 1,
        value: 2,
        priority: 3,
    }
    .encode()
    .to_vec();
    pulse_with_payload.push(0);
    bytes.extend(frame(true, &pulse_with_payload));
    for id in 10..310 {
        bytes.extend(frame(true, &request(id))); // 300 requests: 44 over the limit
    }
    bytes.extend(frame(true, &request(10))); // a duplicate id
    s.set_nonblocking(false).unwrap();
    s.write_all(&bytes).unwrap();
    let start = Instant::now();
    while hb.requests.len() < 256 || start.elapsed() < Duration::from_millis(300) {
        b.poll(&mut hb);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{} requests",
            hb.requests.len()
        );
    }
    assert_eq!(hb.requests.len(), 256, "only the limit is held");
    assert!(hb.pulses.is_empty(), "the pulse with a payload was refused");
    assert!(
        hb.requests
            .iter()
            .all(|r| r.3 == vmi_core::MAX_MESSAGE && r.2 == 63 && r.1.key == "mallory"),
        "reply sizes are capped"
    );
    assert_eq!(HEADER, 24);
    // The server still serves an honest client.
    hb.serve = Some(Serve::Echo);
    let mut a = Vmi::with_spec(spec, &unique_key("mp-honest")).expect("client");
    let mut ha = Side::default();
    a.connect("localhost", &key, b"", 0).unwrap();
    let start = Instant::now();
    while ha.conn.is_none() {
        a.poll(&mut ha);
        b.poll(&mut hb);
        assert!(start.elapsed() < Duration::from_secs(20), "no connection");
    }
    a.request(ha.conn.unwrap(), &[b"hi"], &options(), 9)
        .unwrap();
    while !ha.replies.contains_key(&9) {
        a.poll(&mut ha);
        b.poll(&mut hb);
        assert!(start.elapsed() < Duration::from_secs(20), "no reply");
    }
    assert_eq!(ha.replies[&9], "2:re:hi");
    drop(s);
}

#[test]
fn a_pool_of_threads_serves_the_requests_of_one_endpoint() {
    use std::sync::Arc;
    use vmi_core::msgpass::{OwnedRequest, RequestPool};

    struct Pooled(Arc<RequestPool>);
    impl Handler for Pooled {
        fn request(&mut self, _ctx: &mut Ctx<'_>, r: &mut Request<'_>) {
            self.0.submit(r);
        }
    }

    for transport in ["shmem", "tcp"] {
        register_all();
        let spec = Spec::parse_str(&spec_text(transport, &[], ""), "pool.xml").unwrap();
        let key = unique_key("mp-pool");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let server = {
            let (spec, key) = (spec.clone(), key.clone());
            std::thread::spawn(move || {
                let mut vmi = Vmi::with_spec(spec, &key).unwrap();
                // Each worker holds its request a while, so several are busy at once.
                let pool = Arc::new(RequestPool::new(4, vmi.waker(), |r: &OwnedRequest| {
                    std::thread::sleep(Duration::from_millis(30));
                    let me = std::thread::current().name().unwrap_or("?").to_string();
                    if r.data == b"fail" {
                        return Err(22);
                    }
                    Ok((r.data.len() as i32, me.into_bytes()))
                }));
                let mut h = Pooled(pool.clone());
                ready_tx.send(()).unwrap();
                let start = Instant::now();
                while stop_rx.try_recv().is_err() && start.elapsed() < Duration::from_secs(30) {
                    vmi.wait(&mut h, Duration::from_millis(100));
                    pool.flush(&mut vmi);
                }
                drop(h);
                Arc::try_unwrap(pool)
                    .ok()
                    .expect("the only handle")
                    .shutdown(&mut vmi)
            })
        };
        ready_rx.recv().unwrap();
        let mut a = Vmi::with_spec(spec, &unique_key("mp-pool-c")).unwrap();
        let mut ha = Side::default();
        a.connect("localhost", &key, b"", 0).unwrap();
        let start = Instant::now();
        while ha.conn.is_none() {
            a.wait(&mut ha, Duration::from_millis(10));
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{transport}: connect"
            );
        }
        let conn = ha.conn.unwrap();
        for t in 0..16 {
            a.request(conn, &[b"work"], &options(), t).unwrap();
        }
        a.request(conn, &[b"fail"], &options(), 99).unwrap();
        while ha.replies.len() < 17 {
            a.wait(&mut ha, Duration::from_millis(10));
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{transport}: answers"
            );
        }
        stop_tx.send(()).unwrap();
        assert_eq!(
            server.join().unwrap(),
            0,
            "{transport}: nothing left at shutdown"
        );
        assert_eq!(ha.replies[&99], "error 22", "{transport}");
        let workers: std::collections::BTreeSet<&str> = (0..16)
            .map(|t| ha.replies[&t].as_str())
            .inspect(|r| assert!(r.starts_with("4:vmi-pool-"), "{transport}: {r}"))
            .collect();
        assert!(
            workers.len() > 1,
            "{transport}: one worker served everything: {workers:?}"
        );
    }
}
