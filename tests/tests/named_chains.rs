//! Named chains (issue "Beyond streams"): a connection opened with `connect_on` runs over a
//! `<chain name="…">` of the specfile, so its messages pass that chain's filters while the
//! process's other connections keep the send and receive chains; a peer without the chain,
//! or with other filters under its name, refuses the connection with the reason.

use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_tests::{register_all, unique_key};

/// Default chains: the transport alone. "checked": CRC over a fault injector that bends
/// sends when told to, so a bent message fails the receiver's CRC on that chain only.
fn spec(transport: &str, named: &str) -> Spec {
    register_all();
    let text = format!(
        r#"<vmi>
  <device name="crc"/>
  <device name="fault"><param name="direction" value="send"/></device>
  <device name="{transport}"/>
  <chain name="send"><use device="{transport}"/></chain>
  <chain name="receive"><use device="{transport}"/></chain>
  {named}
</vmi>"#
    );
    Spec::parse_str(&text, "named.xml").expect("spec")
}

const CHECKED: &str = r#"<chain name="checked"><use device="crc"/><use device="fault"/><use device="TRANSPORT"/></chain>"#;

#[derive(Default)]
struct Side {
    conns: Vec<ConnId>,
    chains: Vec<String>,
    outcomes: Vec<Result<ConnId, String>>,
    received: Vec<(ConnId, Vec<u8>)>,
    failed: Vec<ConnId>,
    replies: Vec<String>,
}

impl Handler for Side {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, r: &mut ConnectRequest<'_>) -> Decision {
        self.conns.push(r.conn);
        self.chains.push(r.chain.to_string());
        Decision::Accept(Vec::new())
    }
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        self.outcomes.push(match o {
            ConnectOutcome::Accepted(_) => Ok(conn),
            ConnectOutcome::Rejected(mut why) => {
                Err(String::from_utf8_lossy(&why.read_to_vec()).into_owned())
            }
            ConnectOutcome::Failed { status, detail } => Err(format!("{status}: {detail}")),
        });
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, _cmd: Recv, slab: &mut Slab<'_>) {
        self.received.push((conn, slab.read_to_vec()));
    }
    fn receive_failed(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, _s: Status, _d: &str) {
        self.failed.push(conn);
    }
    fn request(&mut self, ctx: &mut Ctx<'_>, r: &mut Request<'_>) {
        let data = r.data.read_to_vec();
        ctx.reply(r.id, 0, &[&data]).unwrap();
    }
    fn replied(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _t: u64, reply: Reply<'_>) {
        if let Reply::Data { mut data, .. } = reply {
            self.replies
                .push(String::from_utf8_lossy(&data.read_to_vec()).into_owned());
        }
    }
}

fn pump(
    a: &mut Vmi,
    ha: &mut Side,
    b: &mut Vmi,
    hb: &mut Side,
    what: &str,
    done: impl Fn(&Side, &Side) -> bool,
) {
    let start = Instant::now();
    while !done(ha, hb) {
        a.poll(ha);
        b.poll(hb);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no progress: {what}"
        );
    }
}

#[test]
fn a_connection_on_a_named_chain_passes_its_filters_and_the_others_do_not() {
    for transport in ["tcp", "shmem"] {
        let named = CHECKED.replace("TRANSPORT", transport);
        let sp = spec(transport, &named);
        let kb = unique_key("named-b");
        let mut a = Vmi::with_spec(sp.clone(), &unique_key("named-a")).unwrap();
        let mut b = Vmi::with_spec(sp, &kb).unwrap();
        let (mut ha, mut hb) = (Side::default(), Side::default());
        let plain = a.connect("localhost", &kb, b"", 0).unwrap();
        let checked = a.connect_on("checked", "localhost", &kb, b"", 0).unwrap();
        pump(&mut a, &mut ha, &mut b, &mut hb, "connects", |ha, _| {
            ha.outcomes.len() == 2
        });
        assert!(
            ha.outcomes.iter().all(Result::is_ok),
            "{transport}: {:?}",
            ha.outcomes
        );
        let mut chains = hb.chains.clone();
        chains.sort();
        assert_eq!(
            chains,
            ["", "checked"],
            "{transport}: the acceptor sees the chain"
        );

        // Both carry data intact (the named chain's CRC is added and checked).
        a.send_inline(plain, b"plain").unwrap();
        a.send_inline(checked, b"checked").unwrap();
        pump(&mut a, &mut ha, &mut b, &mut hb, "data", |_, hb| {
            hb.received.len() == 2
        });
        let mut got: Vec<&[u8]> = hb.received.iter().map(|(_, d)| d.as_slice()).collect();
        got.sort();
        assert_eq!(got, [b"checked".as_slice(), b"plain"], "{transport}");

        // The injector bends every send on the named chain only: those fail the receiver's
        // CRC, the plain connection's arrive.
        a.attr_set("fault", "corrupt", "1").unwrap();
        a.send_inline(checked, b"bent").unwrap();
        a.send_inline(plain, b"straight").unwrap();
        pump(&mut a, &mut ha, &mut b, &mut hb, "bent", |_, hb| {
            hb.failed.len() == 1 && hb.received.len() == 3
        });
        assert_eq!(hb.received[2].1, b"straight", "{transport}");
        a.attr_set("fault", "corrupt", "0").unwrap();

        // Requests go over the connection's chain too.
        a.request(checked, &[b"ask"], &RequestOptions::default(), 1)
            .unwrap();
        pump(&mut a, &mut ha, &mut b, &mut hb, "reply", |ha, _| {
            ha.replies.len() == 1
        });
        assert_eq!(ha.replies, ["ask"], "{transport}");
    }
}

#[test]
fn a_peer_without_the_chain_refuses_with_the_reason() {
    let named = CHECKED.replace("TRANSPORT", "tcp");
    let kb = unique_key("named-none");
    let mut a = Vmi::with_spec(spec("tcp", &named), &unique_key("named-c")).unwrap();
    // The peer has a chain of that name with other filters, then none at all.
    let other = r#"<chain name="checked"><use device="fault"/><use device="tcp"/></chain>"#;
    for (peer, expect) in [(other, "differs"), ("", "does not have")] {
        let mut b = Vmi::with_spec(spec("tcp", peer), &kb).unwrap();
        let (mut ha, mut hb) = (Side::default(), Side::default());
        a.connect_on("checked", "localhost", &kb, b"", 0).unwrap();
        pump(&mut a, &mut ha, &mut b, &mut hb, "refusal", |ha, _| {
            !ha.outcomes.is_empty()
        });
        let why = ha.outcomes[0].clone().unwrap_err();
        assert!(why.contains(expect), "{why}");
        assert!(hb.conns.is_empty(), "the peer's application was not asked");
    }
    let err = a.connect_on("bulk", "localhost", &kb, b"", 0).unwrap_err();
    assert!(
        err.to_string().contains("no chain named 'bulk'") && err.to_string().contains("'checked'"),
        "{err}"
    );
}

#[test]
fn a_named_chain_must_use_the_send_chain_s_transports() {
    register_all();
    let text = r#"<vmi><device name="crc"/><device name="tcp"/><device name="shmem"/>
  <chain name="send"><use device="tcp"/></chain>
  <chain name="receive"><use device="tcp"/></chain>
  <chain name="odd"><use device="crc"/><use device="shmem"/></chain></vmi>"#;
    let sp = Spec::parse_str(text, "odd.xml").unwrap();
    let err = Vmi::with_spec(sp, &unique_key("named-odd"))
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("chain 'odd' uses transports [shmem]") && text.contains("[tcp]"),
        "{text}"
    );
}

#[test]
fn a_route_chooses_the_chain_by_the_peer_s_key() {
    let named = CHECKED.replace("TRANSPORT", "tcp");
    let routed = format!(r#"{named}<route chain="checked" key="routed-*"/>"#);
    let sp = spec("tcp", &routed);
    let (k_routed, k_plain) = (unique_key("routed-b"), unique_key("plainpeer-b"));
    let mut a = Vmi::with_spec(sp.clone(), &unique_key("route-a")).unwrap();
    let mut routed_peer = Vmi::with_spec(sp.clone(), &k_routed).unwrap();
    let mut plain_peer = Vmi::with_spec(sp, &k_plain).unwrap();
    let (mut ha, mut hr, mut hp) = (Side::default(), Side::default(), Side::default());
    a.connect("localhost", &k_routed, b"", 0).unwrap();
    a.connect("localhost", &k_plain, b"", 0).unwrap();
    let start = Instant::now();
    while ha.outcomes.len() < 2 {
        a.poll(&mut ha);
        routed_peer.poll(&mut hr);
        plain_peer.poll(&mut hp);
        assert!(start.elapsed() < Duration::from_secs(20), "no connections");
    }
    assert_eq!(hr.chains, ["checked"], "the route chose the named chain");
    assert_eq!(hp.chains, [""], "no route: the send and receive chains");
}

#[test]
fn routes_are_checked() {
    register_all();
    for (route, expect) in [
        (
            r#"<route chain="nope" key="x*"/>"#,
            "names chain 'nope', which is not defined",
        ),
        (r#"<route chain="checked"/>"#, "a key or host pattern"),
        (
            r#"<route chain="send" key="x"/>"#,
            "the name of a named chain",
        ),
    ] {
        let text = format!(
            r#"<vmi><device name="crc"/><device name="tcp"/>
  <chain name="send"><use device="tcp"/></chain>
  <chain name="receive"><use device="tcp"/></chain>
  <chain name="checked"><use device="crc"/><use device="tcp"/></chain>{route}</vmi>"#
        );
        let err = match Spec::parse_str(&text, "route.xml") {
            Err(e) => e.to_string(),
            Ok(sp) => Vmi::with_spec(sp, &unique_key("route-x"))
                .err()
                .expect("refused")
                .to_string(),
        };
        assert!(err.contains(expect) && err.contains("route.xml:"), "{err}");
    }
}

#[test]
fn a_chain_added_at_run_time_carries_connections() {
    for transport in ["tcp", "shmem"] {
        // crc runs (the specfile's "checked" chain uses it), so a run-time chain may too.
        let named = CHECKED.replace("TRANSPORT", transport);
        let sp = spec(transport, &named);
        let kb = unique_key("rt-b");
        let mut a = Vmi::with_spec(sp.clone(), &unique_key("rt-a")).unwrap();
        let mut b = Vmi::with_spec(sp, &kb).unwrap();
        for v in [&mut a, &mut b] {
            v.add_chain("crc-only", &["crc", transport]).unwrap();
        }
        let (mut ha, mut hb) = (Side::default(), Side::default());
        let conn = a.connect_on("crc-only", "localhost", &kb, b"", 0).unwrap();
        pump(&mut a, &mut ha, &mut b, &mut hb, "connect", |ha, _| {
            !ha.outcomes.is_empty()
        });
        assert!(ha.outcomes[0].is_ok(), "{transport}: {:?}", ha.outcomes);
        assert_eq!(hb.chains, ["crc-only"], "{transport}");
        a.send_inline(conn, b"via a new chain").unwrap();
        pump(&mut a, &mut ha, &mut b, &mut hb, "data", |_, hb| {
            !hb.received.is_empty()
        });
        assert_eq!(
            hb.received[0].1, b"via a new chain",
            "{transport}: the CRC was added and taken off"
        );

        // Misuse is refused with the reason.
        let e = a
            .add_chain("crc-only", &["crc", transport])
            .unwrap_err()
            .to_string();
        assert!(e.contains("exists already"), "{e}");
        let e = a
            .add_chain("x", &[transport, "crc"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("after a transport"), "{e}");
        let e = a
            .add_chain("y", &["zstd", transport])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not run in this process"), "{e}");
        let e = a.add_chain("z", &["crc"]).unwrap_err().to_string();
        assert!(e.contains("same transports"), "{e}");
    }
}
