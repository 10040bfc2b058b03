//! Each connection's one-way latency (VMI 2.1: `VMI_CONNECT_ONE_WAY_LATENCY`): the two
//! engines ping each other when the connection opens, so both sides know it shortly after,
//! over every transport and past any filter.

use std::time::{Duration, Instant};

use vmi_core::ConnectOutcome;
use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_tests::{register_all, spec_text, unique_key};

#[derive(Default)]
struct Side {
    conn: Option<ConnId>,
}

impl Handler for Side {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, req: &mut ConnectRequest<'_>) -> Decision {
        self.conn = Some(req.conn);
        Decision::Accept(Vec::new())
    }
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        assert!(matches!(o, ConnectOutcome::Accepted(_)));
        self.conn = Some(conn);
    }
}

#[test]
fn both_sides_know_the_latency_soon_after_the_connection_opens() {
    register_all();
    for (transport, filters) in [("tcp", ""), ("shmem", ""), ("loopback", ""), ("tcp", "crc")] {
        let filters: &[&str] = if filters.is_empty() { &[] } else { &[filters] };
        let sp = Spec::parse_str(&spec_text(transport, filters, ""), "latency.xml").expect("spec");
        let kb = unique_key("lat-b");
        let mut a = Vmi::with_spec(sp.clone(), &unique_key("lat-a")).expect("a");
        let mut b = Vmi::with_spec(sp, &kb).expect("b");
        let (mut ha, mut hb) = (Side::default(), Side::default());
        let conn = a.connect("localhost", &kb, b"", 0).expect("connect");
        let t0 = Instant::now();
        loop {
            a.poll(&mut ha);
            b.poll(&mut hb);
            let la = ha.conn.and_then(|c| a.one_way_latency(c));
            let lb = hb.conn.and_then(|c| b.one_way_latency(c));
            if let (Some(la), Some(lb)) = (la, lb) {
                assert!(la < Duration::from_secs(1) && lb < Duration::from_secs(1));
                println!("{transport} {filters:?}: one-way latency {la:?} / {lb:?}");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{transport} {filters:?}: no latency measured ({la:?}, {lb:?})"
            );
        }
        assert_eq!(ha.conn, Some(conn));
        a.disconnect(conn).expect("disconnect");
        while a.connection_count() > 0 {
            a.poll(&mut ha);
            b.poll(&mut hb);
            assert!(t0.elapsed() < Duration::from_secs(20), "no close");
        }
        assert_eq!(a.one_way_latency(conn), None, "not for a closed connection");
    }
}
