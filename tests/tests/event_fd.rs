//! The event-loop descriptor (issue "Beyond streams"): a server that sleeps only in its own
//! `poll(2)` on `Vmi::event_fd`, arming before each sleep, receives every message and answers
//! every request over shared memory and TCP; an idle, armed process's descriptor stays quiet.

use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_core::{Arm, Request};
use vmi_tests::{register_all, spec_text, unique_key};

#[derive(Default)]
struct Server {
    received: usize,
    requests: usize,
}

impl Handler for Server {
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _cmd: Recv, _slab: &mut Slab<'_>) {
        self.received += 1;
    }
    fn request(&mut self, ctx: &mut Ctx<'_>, r: &mut Request<'_>) {
        self.requests += 1;
        let data = r.data.read_to_vec();
        ctx.reply(r.id, 0, &[&data]).expect("reply");
    }
}

#[derive(Default)]
struct Client {
    conn: Option<ConnId>,
}

impl Handler for Client {
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        if let ConnectOutcome::Failed { status, detail } = o {
            panic!("connect failed: {status}: {detail}");
        }
        self.conn = Some(conn);
    }
}

/// Waits until `fd` is readable or `timeout` passes; true when readable.
fn readable(fd: i32, timeout: Option<Duration>) -> bool {
    let ms = timeout.map_or(1000, |t| t.as_millis().min(1000) as i32);
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

const MESSAGES: usize = 200;
const REQUESTS: usize = 50;

#[test]
fn a_server_sleeping_on_the_event_fd_misses_nothing_and_idles_quietly() {
    for transport in ["shmem", "tcp"] {
        register_all();
        let spec = Spec::parse_str(&spec_text(transport, &[], ""), "efd.xml").expect("spec");
        let key = unique_key("efd-srv");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = {
            let (spec, key) = (spec.clone(), key.clone());
            std::thread::spawn(move || {
                let mut vmi = Vmi::with_spec(spec, &key).expect("server");
                let mut h = Server::default();
                let fd = std::os::fd::AsRawFd::as_raw_fd(&vmi.event_fd().expect("event fd"));
                ready_tx.send(()).unwrap();
                let (mut sleeps, mut woken) = (0, 0);
                let start = Instant::now();
                while h.received < MESSAGES || h.requests < REQUESTS {
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "{transport}: stuck at {} messages, {} requests",
                        h.received,
                        h.requests
                    );
                    match vmi.arm().expect("arm") {
                        Arm::Busy => {}
                        Arm::Sleep { timeout } => {
                            sleeps += 1;
                            woken += usize::from(readable(fd, timeout));
                        }
                    }
                    vmi.poll(&mut h);
                }
                // Idle now: armed, the descriptor stays quiet (a few polls first let the
                // last sends' completions and the peer's acknowledgements settle).
                let settle = Instant::now();
                while settle.elapsed() < Duration::from_millis(200) {
                    vmi.poll(&mut h);
                }
                let mut quiet = false;
                for _ in 0..20 {
                    match vmi.arm().expect("arm") {
                        Arm::Busy => {
                            vmi.poll(&mut h);
                        }
                        Arm::Sleep { .. } => {
                            quiet = !readable(fd, Some(Duration::from_millis(100)));
                            if quiet {
                                break;
                            }
                            vmi.poll(&mut h);
                        }
                    }
                }
                (sleeps, woken, quiet)
            })
        };
        ready_rx.recv().unwrap();
        let mut vmi = Vmi::with_spec(spec, &unique_key("efd-cli")).expect("client");
        let mut h = Client::default();
        vmi.connect("localhost", &key, b"", 0).unwrap();
        let start = Instant::now();
        while h.conn.is_none() {
            vmi.wait(&mut h, Duration::from_millis(20));
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{transport}: connect"
            );
        }
        let conn = h.conn.unwrap();
        for i in 0..MESSAGES {
            // Spaced out, so the server goes to sleep between them.
            if i % 20 == 0 {
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(5) {
                    vmi.wait(&mut h, Duration::from_millis(1));
                }
            }
            while vmi.send_inline(conn, &[i as u8; 16]).is_err() {
                vmi.wait(&mut h, Duration::from_millis(1));
            }
            vmi.poll(&mut h);
        }
        for i in 0..REQUESTS {
            let answer = vmi
                .request_wait(&mut h, conn, &[&[i as u8; 4]], &RequestOptions::default())
                .expect("answer");
            assert_eq!(
                answer,
                Answer::Reply {
                    status: 0,
                    data: vec![i as u8; 4]
                }
            );
        }
        let (sleeps, woken, quiet) = server.join().expect("server");
        assert!(
            sleeps > 0 && woken > 0,
            "{transport}: the server never slept on the fd"
        );
        assert!(quiet, "{transport}: an idle, armed descriptor kept waking");
    }
}
