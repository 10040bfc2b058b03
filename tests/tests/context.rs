//! The application's value per connection (VMI 2.1's `VMI_CONNECT_SET_RECEIVE_CONTEXT`): set
//! on either side, read back in callbacks, gone with the connection.

use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_tests::{register_all, spec_text, unique_key};

#[derive(Default)]
struct Side {
    conn: Option<ConnId>,
    seen: Vec<Option<u64>>,
}

impl Handler for Side {
    fn accept(&mut self, ctx: &mut Ctx<'_>, r: &mut ConnectRequest<'_>) -> Decision {
        ctx.set_conn_context(r.conn, 42).expect("set in accept");
        self.conn = Some(r.conn);
        Decision::Accept(Vec::new())
    }
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, _o: ConnectOutcome<'_>, _t: u64) {
        self.conn = Some(conn);
    }
    fn receive(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, _cmd: Recv, _slab: &mut Slab<'_>) {
        self.seen.push(ctx.conn_context(conn));
    }
}

#[test]
fn a_connection_carries_the_application_s_value() {
    for transport in ["loopback", "shmem", "tcp"] {
        register_all();
        let spec = Spec::parse_str(&spec_text(transport, &[], ""), "ctx.xml").unwrap();
        let kb = unique_key("ctx-b");
        let mut a = Vmi::with_spec(spec.clone(), &unique_key("ctx-a")).unwrap();
        let mut b = Vmi::with_spec(spec, &kb).unwrap();
        let (mut ha, mut hb) = (Side::default(), Side::default());
        let conn = a.connect("localhost", &kb, b"", 0).unwrap();
        assert_eq!(a.conn_context(conn), Some(0), "{transport}: 0 until set");
        a.set_conn_context(conn, 7).unwrap();
        let start = Instant::now();
        while ha.conn.is_none() || hb.conn.is_none() {
            a.poll(&mut ha);
            b.poll(&mut hb);
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{transport}: connect"
            );
        }
        assert_eq!(a.conn_context(conn), Some(7), "{transport}");
        a.send_inline(conn, b"x").unwrap();
        while hb.seen.is_empty() {
            a.poll(&mut ha);
            b.poll(&mut hb);
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{transport}: receive"
            );
        }
        assert_eq!(
            hb.seen,
            vec![Some(42)],
            "{transport}: set in accept, read in receive"
        );
        a.disconnect(conn).unwrap();
        let bconn = hb.conn.unwrap();
        while b.conn_context(bconn).is_some() || a.conn_context(conn).is_some() {
            a.poll(&mut ha);
            b.poll(&mut hb);
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{transport}: close"
            );
        }
        assert!(matches!(
            a.set_conn_context(conn, 1),
            Err(VmiError::UnknownConnection(_))
        ));
    }
}
