//! An idle TCP connection stays up: each side sends a heartbeat when it has sent nothing for
//! a third of the peer timeout, also while the application only blocks in `wait`, so a peer
//! that is quiet but alive is never declared lost (found by 64 processes of vmi-alltoall
//! that sat in `wait` while rank 0 measured other pairs: every TCP connection died after the
//! 10 s timeout).

use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_core::{ConnectOutcome, Disconnect, Options};
use vmi_tests::{register_all, spec_text, unique_key};

#[derive(Default)]
struct Side {
    open: bool,
    lost: Option<String>,
    received: u64,
}

impl Handler for Side {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, _req: &mut ConnectRequest<'_>) -> Decision {
        self.open = true;
        Decision::Accept(Vec::new())
    }
    fn connected(&mut self, _ctx: &mut Ctx<'_>, _c: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        self.open = matches!(o, ConnectOutcome::Accepted(_));
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _c: ConnId, _cmd: Recv, _slab: &mut Slab<'_>) {
        self.received += 1;
    }
    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, _c: ConnId, reason: Disconnect) {
        self.lost = Some(format!("{reason:?}"));
    }
}

#[test]
fn an_idle_connection_outlives_the_peer_timeout() {
    register_all();
    let sp = Spec::parse_str(&spec_text("tcp", &[], ""), "idle.xml").expect("spec");
    let env = |v: &str| (v == "VMI_TCP_PEER_TIMEOUT_MS").then(|| "600".to_string());
    let start = |key: &str| {
        Vmi::with_spec_options(sp.clone(), key, Options::default(), &env).expect("start")
    };
    let kb = unique_key("idle-b");
    let (mut a, mut b) = (start(&unique_key("idle-a")), start(&kb));
    let (mut ha, mut hb) = (Side::default(), Side::default());
    let conn = a.connect("localhost", &kb, b"", 0).expect("connect");
    let t0 = Instant::now();
    while !(ha.open && hb.open) {
        a.poll(&mut ha);
        b.poll(&mut hb);
        assert!(t0.elapsed() < Duration::from_secs(10), "no connection");
    }
    // Four peer timeouts with no traffic, both sides blocking in `wait`.
    let idle = Instant::now();
    while idle.elapsed() < Duration::from_millis(2400) {
        a.wait(&mut ha, Duration::from_millis(20));
        b.wait(&mut hb, Duration::from_millis(20));
        assert!(
            ha.lost.is_none() && hb.lost.is_none(),
            "lost while idle: {:?} {:?}",
            ha.lost,
            hb.lost
        );
    }
    a.send_inline(conn, b"still here").expect("send");
    while hb.received == 0 {
        a.poll(&mut ha);
        b.poll(&mut hb);
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the message did not arrive"
        );
    }
}
