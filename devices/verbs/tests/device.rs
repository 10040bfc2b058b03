//! The verbs device on the software NIC, beyond the conformance suite: flow control with a
//! receiver that falls behind, the ordered close, a peer that vanishes, and hostile peers on
//! the side channel and on the queue pair itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use vmi_conformance::pair::{Dev, spec, unique_key};
use vmi_conformance::rng::Rng;
use vmi_core::prelude::*;
use vmi_core::{ConnectOutcome, ConnectRequest, Decision, Disconnect, SendCompletion};
use vmi_verbs::bootstrap::{Answer, Control, Hello, QpInfo};
use vmi_verbs::buf::DmaBuf;
use vmi_verbs::nic::{Nic, Remote, Sge};
use vmi_verbs::sim::SimNic;
use vmi_verbs::wire::{Body, Frame, Meta};

fn dev() -> Dev {
    Dev::new("t", "verbs")
        .param("nic", "sim")
        .param("eager_max", "1k")
        .param("credits", "8")
}

fn start(tag: &str) -> (Vmi, String) {
    vmi_verbs::register_static();
    let key = unique_key(tag);
    let v = Vmi::with_spec(spec(&[], &dev()), &key).unwrap();
    (v, key)
}

#[derive(Default)]
struct H {
    conn: Option<ConnId>,
    /// The connection this side accepted.
    accepted: Option<ConnId>,
    /// Buffers published to this side.
    published: Vec<vmi_core::RemoteBuffer>,
    refused: Option<(Status, String)>,
    received: Vec<Vec<u8>>,
    completions: Vec<Status>,
    gone: Vec<Disconnect>,
    requests: usize,
}

impl Handler for H {
    fn accept(&mut self, _: &mut Ctx<'_>, req: &mut ConnectRequest<'_>) -> Decision {
        self.requests += 1;
        self.accepted = Some(req.conn);
        Decision::Accept(vec![])
    }
    fn rdma_published(
        &mut self,
        _: &mut Ctx<'_>,
        _: ConnId,
        remote: vmi_core::RemoteBuffer,
        _: &mut Slab<'_>,
    ) {
        // Kept, not released: the publisher's registration stays.
        self.published.push(remote);
    }
    fn connected(&mut self, _: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _: u64) {
        match o {
            ConnectOutcome::Accepted(_) => self.conn = Some(conn),
            ConnectOutcome::Rejected(_) => self.refused = Some((Status::Rejected, String::new())),
            ConnectOutcome::Failed { status, detail } => {
                self.refused = Some((status, detail.to_string()))
            }
        }
    }
    fn receive(&mut self, _: &mut Ctx<'_>, _: ConnId, _: Recv, slab: &mut Slab<'_>) {
        self.received.push(slab.read_to_vec());
    }
    fn send_complete(&mut self, _: &mut Ctx<'_>, _: ConnId, done: &mut SendCompletion<'_>) {
        self.completions.push(done.status);
    }
    fn disconnected(&mut self, _: &mut Ctx<'_>, _: ConnId, why: Disconnect) {
        self.gone.push(why);
    }
}

fn pump(a: &mut Vmi, ha: &mut H, b: &mut Vmi, hb: &mut H, done: impl Fn(&H, &H) -> bool) {
    let start = Instant::now();
    while !done(ha, hb) {
        a.poll(ha);
        b.poll(hb);
        assert!(start.elapsed() < Duration::from_secs(20), "timed out");
    }
}

fn connected() -> (Vmi, H, Vmi, H) {
    let (mut a, _) = start("verbs-a");
    let (mut b, kb) = start("verbs-b");
    let (mut ha, mut hb) = (H::default(), H::default());
    a.connect("127.0.0.1", &kb, b"", 0).unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |ha, _| {
        ha.conn.is_some() || ha.refused.is_some()
    });
    assert!(ha.conn.is_some(), "connect failed: {:?}", ha.refused);
    (a, ha, b, hb)
}

fn message(rng: &mut Rng, i: usize) -> Vec<u8> {
    // Mostly eager, every seventh over the 1 KiB eager limit (RDMA READ rendezvous).
    let len = if i % 7 == 3 {
        1024 + rng.below(8000) as usize
    } else {
        rng.below(1000) as usize
    };
    let mut m = rng.bytes(len);
    m.extend_from_slice(&(i as u32).to_le_bytes());
    m
}

#[test]
fn a_receiver_that_falls_behind_holds_the_sender_back_and_loses_nothing() {
    let mut rng = Rng::new("verbs slow receiver");
    let (mut a, mut ha, mut b, mut hb) = connected();
    let conn = ha.conn.unwrap();
    let mut sent = Vec::new();
    // The receiver does not poll while the sender sends 3,000 messages: 8 credits run out at
    // once, and the rest wait at the sender (IRBs pended, nothing dropped).
    for i in 0..3000 {
        let m = message(&mut rng, i);
        loop {
            match a.send(conn, [Buffer::from(m.clone())], i as u64) {
                Ok(()) => break,
                Err(VmiError::Busy { .. }) => {
                    a.poll(&mut ha);
                }
                Err(e) => panic!("send {i}: {e}"),
            }
        }
        sent.push(m);
        if i % 100 == 0 {
            a.poll(&mut ha);
        }
    }
    assert!(hb.received.is_empty());
    assert!(
        ha.completions.len() < 100,
        "sends cannot complete while the receiver is behind ({} did)",
        ha.completions.len()
    );
    pump(&mut a, &mut ha, &mut b, &mut hb, |ha, hb| {
        hb.received.len() == 3000 && ha.completions.len() == 3000
    });
    assert!(hb.received == sent, "every message, intact and in order");
    assert!(ha.completions.iter().all(|s| *s == Status::Ok));
    let delivered: u64 = b.attr_get("t", "delivered").unwrap().parse().unwrap();
    assert!(
        delivered >= 3000,
        "the device counted {delivered} fragments up"
    );
}

#[test]
fn a_close_right_after_sending_delivers_everything_before_the_peer_hears_of_it() {
    let mut rng = Rng::new("verbs ordered close");
    let (mut a, mut ha, mut b, mut hb) = connected();
    let conn = ha.conn.unwrap();
    let sent: Vec<Vec<u8>> = (0..200).map(|i| message(&mut rng, i)).collect();
    for (i, m) in sent.iter().enumerate() {
        a.send(conn, [Buffer::from(m.clone())], i as u64).unwrap();
    }
    a.disconnect(conn).unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |_, hb| {
        !hb.gone.is_empty()
    });
    assert_eq!(hb.received.len(), 200, "every message before the close");
    assert!(hb.received == sent);
    assert!(matches!(hb.gone[..], [Disconnect::Peer]), "{:?}", hb.gone);
    pump(&mut a, &mut ha, &mut b, &mut hb, |ha, _| {
        !ha.gone.is_empty()
    });
    assert!(ha.completions.iter().all(|s| *s == Status::Ok));
    assert_eq!(ha.completions.len(), 200);
}

#[test]
fn a_peer_that_vanishes_is_reported_as_lost() {
    let (a, mut ha, mut b, mut hb) = connected();
    let mut pumps = 0;
    while hb.requests == 0 && pumps < 1000 {
        b.poll(&mut hb);
        pumps += 1;
    }
    drop(a);
    ha.conn = None;
    let start = Instant::now();
    while hb.gone.is_empty() {
        b.poll(&mut hb);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no disconnect reported"
        );
    }
    assert!(
        matches!(&hb.gone[0], Disconnect::Error { status: Status::ConnectionLost, detail } if detail.contains("without a bye")),
        "{:?}",
        hb.gone
    );
}

fn listen_port(v: &Vmi) -> u16 {
    v.attr_get("t", "listen_port").unwrap().parse().unwrap()
}

fn pump_one(v: &mut Vmi, h: &mut H, for_ms: u64) {
    let end = Instant::now() + Duration::from_millis(for_ms);
    while Instant::now() < end {
        v.poll(h);
    }
}

#[test]
fn hostile_bytes_on_the_side_channel_are_refused_without_harm() {
    let mut rng = Rng::new("verbs hostile side channel");
    let (mut b, kb) = start("verbs-hostile");
    let mut hb = H::default();
    let port = listen_port(&b);
    for round in 0..40 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let n = 1 + rng.below(300) as usize;
        let mut junk = rng.bytes(n);
        if round % 2 == 0 {
            // Starts like a hello, then lies about its lengths.
            let mut h = Hello {
                from_key: "x".into(),
                to_key: kb.clone(),
                signature: String::new(),
                data: vec![],
                qp: QpInfo::none(),
                nonce: None,
            }
            .emit();
            h.truncate(8);
            h.extend_from_slice(&junk);
            junk = h;
        }
        let _ = s.write_all(&junk);
        drop(s);
        pump_one(&mut b, &mut hb, 5);
    }
    // A hello for another key is answered "wrong key".
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let hello = Hello {
        from_key: "x".into(),
        to_key: "someone-else".into(),
        signature: String::new(),
        data: vec![],
        qp: QpInfo {
            qpn: 1,
            psn: 1,
            lid: 0,
            mtu: 5,
            gid: [0; 16],
            credits: 8,
            eager_max: 1024,
        },
        nonce: None,
    };
    s.write_all(&hello.emit()).unwrap();
    let answer = read_answer(&mut s, &mut b, &mut hb);
    assert!(
        !answer.accept && answer.reason.starts_with("wrong key"),
        "{answer:?}"
    );
    assert_eq!(hb.requests, 0, "nothing reached the application");
    assert_eq!(b.connection_count(), 0);
}

fn read_answer(s: &mut TcpStream, b: &mut Vmi, hb: &mut H) -> Answer {
    s.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    loop {
        b.poll(hb);
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => panic!("closed before answering"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        if let Ok(Ok((a, _))) = Answer::parse(&got) {
            return a;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no answer");
    }
}

/// A peer of its own making: a software NIC and queue pair bootstrapped by hand against `b`,
/// with a registered buffer to send frames from.
struct Evil {
    nic: SimNic,
    domain: u32,
    qpn: u32,
    buf: DmaBuf,
    mr: vmi_verbs::nic::Mr,
    /// Receive buffers posted for what the receiver sends back (credits, finishes).
    rx: DmaBuf,
    rx_mr: vmi_verbs::nic::Mr,
    _side: TcpStream,
    next_wr: u64,
}

impl Evil {
    fn connect(b: &mut Vmi, hb: &mut H, kb: &str) -> Evil {
        let port = listen_port(b);
        let mut nic = SimNic::new().unwrap();
        let domain = nic.alloc_domain().unwrap();
        let qpn = nic.create_qp(domain, 64, 64).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let hello = Hello {
            from_key: "evil".into(),
            to_key: kb.to_string(),
            // The filter signature of chains with no filters.
            signature: "send=;recv=".into(),
            data: vec![],
            qp: QpInfo {
                qpn,
                psn: 0,
                lid: 0,
                mtu: 5,
                gid: nic.address().gid,
                credits: 8,
                eager_max: 1024,
            },
            nonce: None,
        };
        s.write_all(&hello.emit()).unwrap();
        let answer = read_answer(&mut s, b, hb);
        assert!(answer.accept, "{answer:?}");
        nic.connect_qp(
            qpn,
            0,
            &Remote {
                qpn: answer.qp.qpn,
                psn: answer.qp.psn,
                addr: nic_addr(&answer.qp),
            },
        )
        .unwrap();
        s.write_all(&Control::Ready.emit()).unwrap();
        let buf = DmaBuf::new(1 << 16);
        // SAFETY: `buf` outlives the registration (`Evil::drop` deregisters first).
        let mr = unsafe {
            nic.register(
                domain,
                buf.as_ptr(),
                1 << 16,
                vmi_verbs::nic::Access::RemoteRead,
            )
            .unwrap()
        };
        let rx = DmaBuf::new(64 * 2048);
        // SAFETY: as for `buf`.
        let rx_mr = unsafe {
            nic.register(domain, rx.as_ptr(), rx.len(), vmi_verbs::nic::Access::Local)
                .unwrap()
        };
        for i in 0..64 {
            let sge = Sge {
                addr: rx.addr(i * 2048),
                len: 2048,
                lkey: rx_mr.lkey,
            };
            nic.post_recv(qpn, 1 << 40 | i as u64, sge).unwrap();
        }
        Evil {
            nic,
            domain,
            qpn,
            buf,
            mr,
            rx,
            rx_mr,
            _side: s,
            next_wr: 1,
        }
    }

    /// SENDs `bytes` (at most 64 KiB) as one message on the queue pair.
    fn send(&mut self, bytes: &[u8]) {
        // SAFETY: sends complete at once on the software NIC: nothing is posted on it now.
        unsafe { assert!(self.buf.write(0, bytes)) };
        self.next_wr += 1;
        self.nic
            .post_send(
                self.qpn,
                self.next_wr,
                Sge {
                    addr: self.buf.addr(0),
                    len: bytes.len() as u32,
                    lkey: self.mr.lkey,
                },
            )
            .unwrap();
    }
}

impl Drop for Evil {
    fn drop(&mut self) {
        self.nic.destroy_qp(self.qpn);
        self.nic.deregister(self.mr);
        self.nic.deregister(self.rx_mr);
    }
}

/// A peer that bootstraps correctly and then breaks the protocol on its queue pair: the
/// connection ends with a protocol error, and nothing panics.
#[test]
fn a_hostile_queue_pair_peer_loses_its_connection() {
    for (case, frame) in [
        (
            "a frame out of sequence",
            Frame {
                seq: 5,
                credits: 0,
                body: Body::Credit,
            },
        ),
        (
            "more credits returned than used",
            Frame {
                seq: 0,
                credits: 9,
                body: Body::Credit,
            },
        ),
        (
            "a finish for nothing",
            Frame {
                seq: 0,
                credits: 0,
                body: Body::Fin { msg: 77 },
            },
        ),
        (
            "a read of memory never registered",
            Frame {
                seq: 0,
                credits: 0,
                body: Body::Rts {
                    msg: 1,
                    addr: 0x1000,
                    rkey: 0xdead,
                    len: 4096,
                    meta: Meta::default(),
                },
            },
        ),
    ] {
        let (mut b, kb) = start("verbs-qp-hostile");
        let mut hb = H::default();
        let mut evil = Evil::connect(&mut b, &mut hb, &kb);
        evil.send(&frame.encode());
        let start = Instant::now();
        while hb.gone.is_empty() {
            b.poll(&mut hb);
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{case}: not detected"
            );
        }
        assert!(
            matches!(
                &hb.gone[0],
                Disconnect::Error {
                    status: Status::Protocol | Status::ConnectionLost,
                    ..
                }
            ),
            "{case}: {:?}",
            hb.gone
        );
        assert_eq!(hb.requests, 1);
        assert!(hb.received.is_empty(), "{case}: nothing went up");
    }
}

/// Random frames from a bootstrapped peer, mostly well-formed and in sequence with a random
/// corruption here and there (seeded; the seed is printed): the process never panics, every
/// fragment it hands up is the payload of an eager frame the peer sent, in the order sent,
/// and a connection that ends, ends with a reason.
#[test]
fn random_frames_from_a_hostile_peer_never_harm_the_receiver() {
    let mut rng = Rng::new("verbs random hostile frames");
    for round in 0..30 {
        let (mut b, kb) = start("verbs-qp-fuzz");
        let mut hb = H::default();
        let mut evil = Evil::connect(&mut b, &mut hb, &kb);
        let mut sent_eager = Vec::new();
        let mut seq = 0u32;
        for _ in 0..(1 + rng.below(12)) {
            let len = rng.below(1100) as usize;
            let payload = rng.bytes(len);
            let body = match rng.below(6) {
                0 => Body::Credit,
                1 => Body::Fin { msg: rng.below(4) },
                2 => Body::Rts {
                    msg: rng.below(4),
                    addr: evil.buf.addr(rng.below(1 << 16) as usize),
                    // A key no registration has (reads with the peer's real keys are tested above).
                    rkey: evil.mr.rkey ^ 0x8000_0000,
                    len: rng.below(70_000),
                    meta: Meta::default(),
                },
                _ => Body::Eager {
                    len: len as u32,
                    meta: Meta {
                        end: true,
                        filter: 0,
                    },
                },
            };
            let frame = Frame {
                seq,
                credits: if rng.below(8) == 0 {
                    rng.below(20) as u32
                } else {
                    0
                },
                body,
            };
            let mut bytes = frame.encode().to_vec();
            if matches!(body, Body::Eager { .. }) {
                bytes.extend_from_slice(&payload);
            }
            match rng.below(10) {
                // Corruptions: a flipped byte, a cut frame, bytes that are no frame at all.
                0 => {
                    let i = rng.below(bytes.len() as u64) as usize;
                    bytes[i] ^= 1 << rng.below(8);
                }
                1 => bytes.truncate(rng.below(bytes.len() as u64) as usize),
                2 => {
                    let n = rng.below(100) as usize;
                    bytes = rng.bytes(n);
                }
                _ => {}
            }
            // What could go up: the payload of what still reads as an eager frame.
            if let Ok((
                Frame {
                    body: Body::Eager { .. },
                    ..
                },
                p,
            )) = Frame::decode(&bytes)
            {
                sent_eager.push(p.to_vec());
            }
            evil.send(&bytes);
            seq = seq.wrapping_add(1);
            for _ in 0..20 {
                b.poll(&mut hb);
            }
        }
        let end = Instant::now() + Duration::from_millis(50);
        while Instant::now() < end {
            b.poll(&mut hb);
        }
        // Whatever went up is eager payloads the peer sent, in the order it sent them.
        let mut rest = sent_eager.iter();
        assert!(
            hb.received.iter().all(|r| rest.any(|s| s == r)),
            "round {round}: handed up {} fragments that the peer did not send in that order",
            hb.received.len()
        );
        if let Some(g) = hb.gone.first() {
            assert!(
                matches!(g, Disconnect::Error { .. }),
                "round {round}: {g:?}"
            );
        }
    }
}

fn nic_addr(q: &QpInfo) -> vmi_verbs::nic::Address {
    vmi_verbs::nic::Address {
        lid: q.lid,
        gid: q.gid,
        mtu: q.mtu,
    }
}

#[test]
fn a_connect_to_a_key_nobody_holds_fails_with_what_was_tried() {
    let (mut a, _) = start("verbs-lonely");
    let mut ha = H::default();
    a.connect("127.0.0.1", "verbs-nobody-has-this-key", b"", 0)
        .unwrap();
    let start = Instant::now();
    while ha.refused.is_none() && ha.conn.is_none() {
        a.poll(&mut ha);
        assert!(start.elapsed() < Duration::from_secs(20), "no outcome");
    }
    let (status, detail) = ha.refused.clone().expect("refused");
    assert_eq!(status, Status::Unreachable, "{detail}");
    assert!(
        detail.contains("verbs-nobody-has-this-key") && detail.contains("refused"),
        "{detail}"
    );
    assert_eq!(a.connection_count(), 0);
}

#[test]
fn a_connect_to_the_wrong_kind_of_listener_moves_on() {
    // A TCP listener that answers garbage where a verbs answer is due, on the port the key
    // would be found at first: the connector tries the next port and finally says why.
    let (mut a, _) = start("verbs-garbage");
    let mut ha = H::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answerer = std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            let mut sink = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.read(&mut sink);
        }
    });
    a.connect(&format!("127.0.0.1:{port}"), "some-key", b"", 0)
        .unwrap();
    let start = Instant::now();
    while ha.refused.is_none() && ha.conn.is_none() {
        a.poll(&mut ha);
        assert!(start.elapsed() < Duration::from_secs(20), "no outcome");
    }
    let (status, detail) = ha.refused.clone().expect("refused");
    assert_eq!(status, Status::Unreachable, "{detail}");
    assert!(detail.contains("1 other keys"), "{detail}");
    answerer.join().unwrap();
}

/// A peer that offers many large fragments at once cannot make the receiver hold more than
/// its read budget of buffers: the reads beyond it wait, and every fragment still arrives
/// intact and in order.
#[test]
fn large_fragments_offered_at_once_are_read_within_the_budget() {
    let (mut b, kb) = start("verbs-read-budget");
    let mut hb = H::default();
    let mut evil = Evil::connect(&mut b, &mut hb, &kb);
    let each = 24 << 20;
    let n = 6u64;
    let big = DmaBuf::new(each * n as usize);
    // SAFETY: `big` outlives the registration (deregistered at the end of the test).
    let mr = unsafe {
        evil.nic
            .register(
                evil.domain,
                big.as_ptr(),
                big.len(),
                vmi_verbs::nic::Access::RemoteRead,
            )
            .unwrap()
    };
    for i in 0..n {
        let fill = vec![i as u8 + 1; each];
        // SAFETY: no work request names `big` yet.
        unsafe { assert!(big.write(i as usize * each, &fill)) };
        let frame = Frame {
            seq: i as u32,
            credits: 0,
            body: Body::Rts {
                msg: i + 1,
                addr: big.addr(i as usize * each),
                rkey: mr.rkey,
                len: each as u64,
                meta: Meta {
                    end: true,
                    filter: 0,
                },
            },
        };
        evil.send(&frame.encode());
    }
    let start = Instant::now();
    while hb.received.len() < n as usize {
        b.poll(&mut hb);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} arrived",
            hb.received.len()
        );
        assert!(hb.gone.is_empty(), "{:?}", hb.gone);
    }
    for (i, r) in hb.received.iter().enumerate() {
        assert_eq!(r.len(), each);
        assert!(r.iter().all(|&x| x == i as u8 + 1), "fragment {i} intact");
    }
    let peak: usize = b.attr_get("t", "read_bytes_peak").unwrap().parse().unwrap();
    assert!(
        peak <= vmi_verbs::conn::READ_BUDGET,
        "{peak} bytes of read buffers held at once"
    );
    assert!(peak >= each, "the reads ran");
    evil.nic.deregister(mr);
}

/// A side-channel key file of `content` in `dir`, readable by its owner alone.
fn key_file(dir: &std::path::Path, name: &str, content: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.to_str().unwrap().to_string()
}

fn start_with_key(tag: &str, key_file: Option<&str>) -> (Vmi, String) {
    vmi_verbs::register_static();
    let key = unique_key(tag);
    let mut d = dev();
    if let Some(f) = key_file {
        d = d.param("auth_key_file", f);
    }
    (Vmi::with_spec(spec(&[], &d), &key).unwrap(), key)
}

/// The keyed handshake over the side channel: peers holding the key connect; a peer
/// without it, with another one, or a listener without one are refused with the remedy
/// before the listening application hears of anything.
#[test]
fn only_peers_holding_the_key_connect() {
    let dir = std::env::temp_dir().join(format!("vmi-verbs-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = key_file(&dir, "good", "correct horse battery staple 42\n");
    let other = key_file(&dir, "other", "a different secret of some length\n");
    let cases: [(Option<&str>, Option<&str>, Option<&str>); 4] = [
        (None, Some(&good), Some("requires authentication")),
        (
            Some(&other),
            Some(&good),
            Some("could not prove it holds the authentication key"),
        ),
        (Some(&good), None, Some("does not use authentication")),
        (Some(&good), Some(&good), None),
    ];
    for (connector, listener, refusal) in cases {
        let (mut a, _) = start_with_key("verbs-auth-a", connector);
        let (mut b, kb) = start_with_key("verbs-auth-b", listener);
        let (mut ha, mut hb) = (H::default(), H::default());
        a.connect("127.0.0.1", &kb, b"", 0).unwrap();
        pump(&mut a, &mut ha, &mut b, &mut hb, |ha, _| {
            ha.conn.is_some() || ha.refused.is_some()
        });
        match refusal {
            Some(text) => {
                let (status, detail) = ha.refused.clone().expect("refused");
                assert!(
                    detail.contains(text) && status != Status::Ok,
                    "{connector:?} -> {listener:?}: {status:?} {detail}"
                );
                // Give the listener time to see the rest: it never asks its application.
                pump_one(&mut b, &mut hb, 50);
                assert_eq!(hb.requests, 0, "{connector:?} -> {listener:?}");
            }
            None => {
                let conn = ha.conn.expect("connected");
                a.send(conn, [Buffer::from(b"proven".to_vec())], 1).unwrap();
                pump(&mut a, &mut ha, &mut b, &mut hb, |_, hb| {
                    !hb.received.is_empty()
                });
                assert_eq!(hb.received[0], b"proven");
                assert_eq!(hb.requests, 1);
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn connections_stop_at_what_the_completion_queue_holds() {
    vmi_verbs::register_static();
    // 256 entries hold (256 / (3 x 8 + 64)) = 2 connections of 8 credits.
    let small = dev().param("cq_entries", "256");
    let (ka, kb) = (unique_key("verbs-cq-a"), unique_key("verbs-cq-b"));
    let mut a = Vmi::with_spec(spec(&[], &small), &ka).unwrap();
    let (mut b, kb2) = (Vmi::with_spec(spec(&[], &dev()), &kb).unwrap(), kb);
    let (mut ha, mut hb) = (H::default(), H::default());
    for _ in 0..2 {
        a.connect("127.0.0.1", &kb2, b"", 0).unwrap();
    }
    pump(&mut a, &mut ha, &mut b, &mut hb, |_, hb| hb.requests == 2);
    a.connect("127.0.0.1", &kb2, b"", 0).unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |ha, _| {
        ha.refused.is_some()
    });
    let (status, detail) = ha.refused.clone().unwrap();
    assert_eq!(status, Status::NoResources, "{detail}");
    assert!(detail.contains("cq_entries"), "{detail}");
}

#[test]
fn the_side_channel_probes_an_idle_peer() {
    let (a, ha, b, _hb) = connected();
    assert!(ha.conn.is_some());
    assert_eq!(a.attr_get("t", "keepalive").unwrap(), "on (10 s idle)");
    assert_eq!(b.attr_get("t", "keepalive").unwrap(), "on (10 s idle)");
}

/// ABI 1.2's fast paths: small whole messages sent inline (no IRB, no completion) and
/// handed over to the receiving host directly (no IRB), in order with everything else.
#[test]
fn small_messages_take_the_fast_paths_and_keep_their_order() {
    let mut rng = Rng::new("verbs fast paths");
    let (mut a, mut ha, mut b, mut hb) = connected();
    let conn = ha.conn.unwrap();
    let mut sent = Vec::new();
    for i in 0..500 {
        let m = message(&mut rng, i);
        if m.len() <= 1024 && i % 2 == 0 {
            // Refused when it cannot go at once (credits out): then as an IRB, in order.
            if a.send_inline(conn, &m).is_err() {
                a.send(conn, [Buffer::from(m.clone())], i as u64).unwrap();
            }
        } else {
            a.send(conn, [Buffer::from(m.clone())], i as u64).unwrap();
        }
        sent.push(m);
        a.poll(&mut ha);
        b.poll(&mut hb);
    }
    pump(&mut a, &mut ha, &mut b, &mut hb, |_, hb| {
        hb.received.len() == 500
    });
    assert!(hb.received == sent, "every message, in order");
    let inline: u64 = a.attr_get("t", "inline_sends").unwrap().parse().unwrap();
    let direct: u64 = b.attr_get("t", "direct_receives").unwrap().parse().unwrap();
    assert!(inline > 0 && direct > 0, "inline {inline}, direct {direct}");
}

/// Each connection's registrations live in a protection domain of its own: a peer that
/// guesses the key and address of a buffer published to another peer reaches nothing.
#[test]
fn a_peer_cannot_reach_a_buffer_published_to_another_with_a_guessed_key() {
    let (mut a, mut ha, mut b, mut hb) = connected();
    let to_a = hb.accepted.expect("b accepted a");
    let region = vmi_core::Region::new(8192).unwrap();
    region.write(0, b"for a only").unwrap();
    b.rdma_publish(to_a, &region, 0..4096, 0, 0, b"").unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |ha, _| {
        !ha.published.is_empty()
    });
    // A reaches it one-sided.
    let mine = vmi_core::Region::new(64).unwrap();
    let seg = [vmi_core::Segment {
        region: &mine,
        offset: 0,
        len: 10,
    }];
    a.rdma_get(
        &ha.published[0],
        0,
        &seg,
        &vmi_core::RdmaOptions::default(),
        1,
    )
    .unwrap();
    assert_eq!(mine.to_vec(0, 10).unwrap(), b"for a only");
    assert_eq!(a.rdma_path(ha.conn.unwrap()), vmi_core::RdmaPath::OneSided);

    // Another peer of b, knowing the address and trying every key near the ones in use.
    let kb = b.key().to_string();
    let mut evil = Evil::connect(&mut b, &mut hb, &kb);
    let target = DmaBuf::new(64);
    // SAFETY: `target` outlives the registration (deregistered below).
    let tmr = unsafe {
        evil.nic
            .register(
                evil.domain,
                target.as_ptr(),
                64,
                vmi_verbs::nic::Access::Local,
            )
            .unwrap()
    };
    let around = evil.mr.rkey;
    let mut out = Vec::new();
    let mut reached = 0;
    for key in around.saturating_sub(3000)..around + 100 {
        let sge = Sge {
            addr: target.addr(0),
            len: 10,
            lkey: tmr.lkey,
        };
        evil.nic
            .post_rdma(
                evil.qpn,
                u64::from(key),
                sge,
                vmi_verbs::nic::RemoteMem {
                    addr: region.addr() as u64,
                    rkey: key,
                },
                false,
            )
            .unwrap();
        out.clear();
        evil.nic.poll(&mut out, 8);
        reached += out.iter().filter(|c| c.error.is_none()).count();
    }
    assert_eq!(reached, 0, "a guessed key reached another peer's buffer");
    evil.nic.deregister(tmr);
    drop(evil);
}

/// A large fragment in one piece is read by the peer where it lies, with no copy into a
/// staging buffer, and the peer's access to that memory ends with the send: once the peer
/// said it finished reading, a second read with the same key fails.
#[test]
fn a_large_fragment_is_read_where_it_lies_and_only_during_its_send() {
    use vmi_verbs::nic::{Access, Kind, RemoteMem};
    let (mut b, kb) = start("verbs-zero-copy");
    let mut hb = H::default();
    let mut evil = Evil::connect(&mut b, &mut hb, &kb);
    let conn = hb.accepted.expect("accepted");
    let len = 2 << 20;
    let message: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let sent = message.clone();
    let lies_at = sent.as_ptr() as u64;
    b.send(conn, [Buffer::from(sent)], 7).unwrap();
    // The receiver's side: the read-to-send frame names the application's own memory.
    let start = Instant::now();
    let mut comps = Vec::new();
    let (msg, addr, rkey) = loop {
        b.poll(&mut hb);
        comps.clear();
        evil.nic.poll(&mut comps, 16);
        let rts = comps.iter().find_map(|c| {
            assert_eq!(c.error, None);
            if c.kind != Kind::Recv {
                return None;
            }
            let slot = (c.wr_id & 0xffff) as usize;
            // SAFETY: the receive into this slot completed; it is not reposted.
            let bytes = unsafe { evil.rx.slice(slot * 2048, c.len as usize) }.unwrap();
            match Frame::decode(bytes).unwrap().0.body {
                Body::Rts {
                    msg,
                    addr,
                    rkey,
                    len: l,
                    ..
                } => {
                    assert_eq!(l, len as u64);
                    Some((msg, addr, rkey))
                }
                // The host's own messages go first (eager).
                Body::Eager { .. } => None,
                other => panic!("{other:?}"),
            }
        });
        if let Some(r) = rts {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no frame came");
    };
    assert_eq!(addr, lies_at, "the peer reads the fragment where it lies");
    let zero: u64 = b.attr_get("t", "zero_copy_sends").unwrap().parse().unwrap();
    assert_eq!(zero, 1);
    let dst = DmaBuf::new(len);
    // SAFETY: `dst` outlives the registration (deregistered at the end of the test).
    let dst_mr = unsafe {
        evil.nic
            .register(evil.domain, dst.as_ptr(), len, Access::Local)
            .unwrap()
    };
    let mut read = |evil: &mut Evil, wr: u64| -> Option<&'static str> {
        let sge = Sge {
            addr: dst.addr(0),
            len: len as u32,
            lkey: dst_mr.lkey,
        };
        evil.nic
            .post_rdma(evil.qpn, wr, sge, RemoteMem { addr, rkey }, false)
            .unwrap();
        let start = Instant::now();
        loop {
            comps.clear();
            evil.nic.poll(&mut comps, 16);
            if let Some(c) = comps.iter().find(|c| c.wr_id == wr) {
                return c.error;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the read never ended"
            );
        }
    };
    assert_eq!(read(&mut evil, 900), None);
    // SAFETY: the read completed; nothing else is posted on `dst`.
    assert!(unsafe { dst.slice(0, len) }.unwrap() == &message[..]);
    for _ in 0..10 {
        b.poll(&mut hb);
    }
    assert!(
        hb.completions.is_empty(),
        "the send waits for the reader's finish"
    );
    let fin = Frame {
        seq: 0,
        credits: 0,
        body: Body::Fin { msg },
    };
    evil.send(&fin.encode());
    let start = Instant::now();
    while hb.completions.is_empty() {
        b.poll(&mut hb);
        assert!(start.elapsed() < Duration::from_secs(10), "never completed");
    }
    assert_eq!(hb.completions, vec![Status::Ok]);
    assert!(hb.gone.is_empty(), "{:?}", hb.gone);
    assert_eq!(
        read(&mut evil, 901),
        Some("remote access error"),
        "the peer's access ended with the send"
    );
    evil.nic.deregister(dst_mr);
}

/// Large fragments in one piece go where they lie, those in several pieces (or under
/// `send_zero_copy_min`) through a staging copy; the receiver gets each whole either way.
#[test]
fn large_fragments_in_one_piece_or_several_arrive_whole() {
    let (mut a, mut ha, mut b, mut hb) = connected();
    let conn = ha.conn.unwrap();
    let mut rng = Rng::new("verbs zero copy");
    let one = rng.bytes(3 << 20);
    let two = rng.bytes(3 << 20);
    let small = rng.bytes(200 << 10);
    a.send(conn, [Buffer::from(one.clone())], 1).unwrap();
    let (x, y) = two.split_at(1 << 20);
    a.send(
        conn,
        [Buffer::from(x.to_vec()), Buffer::from(y.to_vec())],
        2,
    )
    .unwrap();
    a.send(conn, [Buffer::from(small.clone())], 3).unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |ha, hb| {
        hb.received.len() == 3 && ha.completions.len() == 3
    });
    assert!(
        hb.received == vec![one, two, small],
        "every fragment whole, in order"
    );
    assert_eq!(ha.completions, vec![Status::Ok; 3]);
    let zero: u64 = a.attr_get("t", "zero_copy_sends").unwrap().parse().unwrap();
    assert_eq!(zero, 1, "only the one-piece fragment over the threshold");
}
