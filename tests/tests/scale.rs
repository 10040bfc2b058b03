//! Many connections in one process (issue: launch and scale): 1,000 TCP connections and 64
//! shared-memory connections between two vmi instances, every one accepted, carrying a
//! message each way, and closed in order. (The descriptor limit is raised at start; running
//! out of descriptors is covered in `hostile_tcp.rs`.)

use std::collections::HashSet;
use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_core::{ConnectOutcome, Disconnect};
use vmi_tests::{register_all, spec_text, unique_key};

#[derive(Default)]
struct Side {
    accepted: u64,
    connected: HashSet<ConnId>,
    failed: Vec<String>,
    received: u64,
    closed: u64,
    echo: bool,
}

impl Handler for Side {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, _req: &mut ConnectRequest<'_>) -> Decision {
        self.accepted += 1;
        Decision::Accept(Vec::new())
    }
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        match o {
            ConnectOutcome::Accepted(_) => {
                self.connected.insert(conn);
            }
            ConnectOutcome::Rejected(_) => self.failed.push("rejected".into()),
            ConnectOutcome::Failed { status, detail } => {
                self.failed.push(format!("{status}: {detail}"))
            }
        }
    }
    fn receive(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, _cmd: Recv, slab: &mut Slab<'_>) {
        self.received += 1;
        if self.echo {
            let bytes = slab.read_to_vec();
            if let Err(e) = ctx.send_inline(conn, &bytes) {
                self.failed.push(format!("echo: {e}"));
            }
        }
    }
    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, reason: Disconnect) {
        if !matches!(reason, Disconnect::Local | Disconnect::Peer) {
            self.failed.push(format!("{reason:?}"));
        }
        self.closed += 1;
    }
}

fn run(transport: &str, connections: u64) {
    register_all();
    let sp = Spec::parse_str(&spec_text(transport, &[], ""), "scale.xml").expect("spec");
    let kb = unique_key("scale-b");
    let mut a = Vmi::with_spec(sp.clone(), &unique_key("scale-a")).expect("a");
    let mut b = Vmi::with_spec(sp, &kb).expect("b");
    let (mut ha, mut hb) = (
        Side::default(),
        Side {
            echo: true,
            ..Side::default()
        },
    );
    let t0 = Instant::now();
    let limit = Duration::from_secs(120);
    let pump = |a: &mut Vmi, ha: &mut Side, b: &mut Vmi, hb: &mut Side, what: &str| {
        a.poll(ha);
        b.poll(hb);
        assert!(
            ha.failed.is_empty() && hb.failed.is_empty(),
            "{transport}: {what}: {:?} {:?}",
            &ha.failed[..ha.failed.len().min(3)],
            &hb.failed[..hb.failed.len().min(3)]
        );
        assert!(t0.elapsed() < limit, "{transport}: too slow {what}");
    };
    let mut issued = 0;
    while (ha.connected.len() as u64) < connections {
        // Keep at most 64 connects in flight, as a real wire-up would.
        while issued < connections
            && issued - ha.connected.len() as u64 - (ha.failed.len() as u64) < 64
        {
            a.connect("localhost", &kb, b"", issued).expect("connect");
            issued += 1;
        }
        pump(&mut a, &mut ha, &mut b, &mut hb, "connecting");
    }
    assert_eq!(hb.accepted, connections);
    assert_eq!(a.connection_count() as u64, connections);
    let conns: Vec<ConnId> = ha.connected.iter().copied().collect();
    for (i, &c) in conns.iter().enumerate() {
        a.send_inline(c, &(i as u64).to_le_bytes()).expect("send");
        if i % 64 == 63 {
            pump(&mut a, &mut ha, &mut b, &mut hb, "sending");
        }
    }
    while ha.received < connections {
        pump(&mut a, &mut ha, &mut b, &mut hb, "exchanging");
    }
    assert_eq!(hb.received, connections, "one message on each connection");
    for &c in &conns {
        a.disconnect(c).expect("disconnect");
    }
    while ha.closed < connections || hb.closed < connections {
        pump(&mut a, &mut ha, &mut b, &mut hb, "closing");
    }
    assert_eq!(a.connection_count(), 0);
    assert_eq!(b.connection_count(), 0);
    println!(
        "{transport}: {connections} connections opened, used and closed in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn a_thousand_tcp_connections_in_one_process() {
    run("tcp", 1000);
}

#[test]
fn sixty_four_shared_memory_connections_in_one_process() {
    run("shmem", 64);
}
