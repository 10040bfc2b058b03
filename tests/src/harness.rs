//! A two-endpoint harness (quinn's `Pair`): two `Vmi` in one thread, driven by polling both,
//! with a recording handler. Used by the conformance and filter tests.
#![allow(missing_docs)]

use std::time::{Duration, Instant};
use vmi_core::Operations;

use vmi_core::spec::Spec;
use vmi_core::{
    ConnId, ConnectOutcome, ConnectRequest, Ctx, Decision, Handler, Recv, SendCompletion, Slab,
    Status, Vmi,
};

use crate::{device_lib, register_all, unique_key};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Static,
    Shared,
}

#[derive(Clone, Debug)]
pub struct Dev {
    pub name: &'static str,
    pub ty: &'static str,
    pub params: Vec<(&'static str, &'static str)>,
}

pub fn dev(name: &'static str, ty: &'static str, params: &[(&'static str, &'static str)]) -> Dev {
    Dev {
        name,
        ty,
        params: params.to_vec(),
    }
}

pub fn xml(d: &Dev, mode: Mode) -> String {
    let lib = match mode {
        Mode::Static => String::new(),
        Mode::Shared => format!(" library=\"{}\"", device_lib(d.ty).display()),
    };
    let params: String = d
        .params
        .iter()
        .map(|(k, v)| format!("<param name=\"{k}\" value=\"{v}\"/>"))
        .collect();
    format!(
        "<device name=\"{}\" type=\"{}\"{lib}>{params}</device>",
        d.name, d.ty
    )
}

pub fn spec(filters: &[Dev], transport: &Dev, mode: Mode) -> Spec {
    let devs: String = filters
        .iter()
        .chain([transport])
        .map(|d| xml(d, mode))
        .collect();
    let send: String = filters
        .iter()
        .chain([transport])
        .map(|d| format!("<use device=\"{}\"/>", d.name))
        .collect();
    let recv: String = [transport]
        .into_iter()
        .chain(filters.iter().rev())
        .map(|d| format!("<use device=\"{}\"/>", d.name))
        .collect();
    Spec::parse_str(
        &format!("<vmi>{devs}<chain name=\"send\">{send}</chain><chain name=\"receive\">{recv}</chain></vmi>"),
        "conformance.xml",
    )
    .unwrap()
}

/// How a connect ended: (accepted, reply data) or (status, detail).
pub type Outcome = Result<(bool, Vec<u8>), (Status, String)>;

#[derive(Default)]
pub struct Rec {
    pub reject: bool,
    pub accepted: Vec<Vec<u8>>,
    pub outcome: Option<Outcome>,
    pub conn: Option<ConnId>,
    pub received: Vec<(Recv, Vec<u8>)>,
    pub failed: Vec<(Status, String)>,
    pub completions: Vec<Status>,
}

impl Handler for Rec {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, req: &mut ConnectRequest<'_>) -> Decision {
        self.accepted.push(req.data.read_to_vec());
        if self.reject {
            Decision::Reject(b"no thanks".to_vec())
        } else {
            Decision::Accept(b"hi".to_vec())
        }
    }
    fn connected(
        &mut self,
        _ctx: &mut Ctx<'_>,
        conn: ConnId,
        outcome: ConnectOutcome<'_>,
        _t: u64,
    ) {
        self.outcome = Some(match outcome {
            ConnectOutcome::Accepted(mut s) => {
                self.conn = Some(conn);
                Ok((true, s.read_to_vec()))
            }
            ConnectOutcome::Rejected(mut s) => Ok((false, s.read_to_vec())),
            ConnectOutcome::Failed { status, detail } => Err((status, detail.to_string())),
        });
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        self.received.push((cmd, slab.read_to_vec()));
    }
    fn receive_failed(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, status: Status, detail: &str) {
        self.failed.push((status, detail.to_string()));
    }
    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, done: &mut SendCompletion<'_>) {
        self.completions.push(done.status);
    }
}

pub struct Pair {
    pub a: Vmi,
    pub b: Vmi,
    pub ha: Rec,
    pub hb: Rec,
    pub label: String,
}

impl Pair {
    pub fn new(sa: Spec, sb: Spec, label: String, reject: bool) -> Pair {
        register_all();
        let (ka, kb) = (unique_key("conf-a"), unique_key("conf-b"));
        let a = Vmi::with_spec(sa, &ka).unwrap_or_else(|e| panic!("{label}: {e}"));
        let b = Vmi::with_spec(sb, &kb).unwrap_or_else(|e| panic!("{label}: {e}"));
        let mut p = Pair {
            a,
            b,
            ha: Rec::default(),
            hb: Rec {
                reject,
                ..Default::default()
            },
            label,
        };
        p.a.connect("127.0.0.1", &kb, b"conformance", 0)
            .unwrap_or_else(|e| panic!("{}: {e}", p.label));
        p.pump(|p| p.ha.outcome.is_some());
        p
    }

    pub fn pump(&mut self, done: impl Fn(&Pair) -> bool) {
        let start = Instant::now();
        while !done(self) {
            self.a.poll(&mut self.ha);
            self.b.poll(&mut self.hb);
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{}: timed out",
                self.label
            );
        }
    }

    pub fn conn(&self) -> ConnId {
        self.ha.conn.expect("connected")
    }
}
