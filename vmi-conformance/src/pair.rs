//! Two [`Vmi`] in one thread, driven by polling both (quinn's two-endpoint `Pair`), with a
//! handler that records everything; and the specfiles that put devices in their chains.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vmi_core::spec::Spec;
use vmi_core::{
    ConnId, ConnectOutcome, ConnectRequest, Ctx, Decision, Disconnect, Handler, Operations, Recv,
    SendCompletion, Slab, Status, Vmi,
};

/// A device in a specfile: instance name, type, parameters, and the shared object to load
/// (`None`: the statically registered device of that type).
#[derive(Clone, Debug)]
pub struct Dev {
    /// Instance name.
    pub name: String,
    /// Device type.
    pub ty: String,
    /// Parameters.
    pub params: Vec<(String, String)>,
    /// Shared object, or `None` for the statically registered device.
    pub library: Option<PathBuf>,
}

impl Dev {
    /// Instance `name` of the statically registered device type `ty`.
    pub fn new(name: &str, ty: &str) -> Dev {
        Dev {
            name: name.into(),
            ty: ty.into(),
            params: Vec::new(),
            library: None,
        }
    }

    /// With a parameter.
    pub fn param(mut self, name: &str, value: &str) -> Dev {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Loaded from this shared object instead.
    pub fn library(mut self, path: impl Into<PathBuf>) -> Dev {
        self.library = Some(path.into());
        self
    }

    fn xml(&self) -> String {
        let lib = self
            .library
            .as_ref()
            .map(|p| format!(" library=\"{}\"", p.display()))
            .unwrap_or_default();
        let params: String = self
            .params
            .iter()
            .map(|(k, v)| format!("<param name=\"{k}\" value=\"{v}\"/>"))
            .collect();
        format!(
            "<device name=\"{}\" type=\"{}\"{lib}>{params}</device>",
            self.name, self.ty
        )
    }
}

/// A spec whose send chain is `filters` (application first) then `transport`, and whose
/// receive chain is the mirror image.
pub fn spec(filters: &[Dev], transport: &Dev) -> Spec {
    let devs: String = filters.iter().chain([transport]).map(Dev::xml).collect();
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
        &format!(
            "<vmi>{devs}<chain name=\"send\">{send}</chain><chain name=\"receive\">{recv}</chain></vmi>"
        ),
        "conformance.xml",
    )
    .unwrap_or_else(|e| panic!("conformance spec: {e}"))
}

/// A key no other test (or test run) uses.
pub fn unique_key(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// How a connect ended: (accepted, reply data) or (status, detail).
pub type Outcome = Result<(bool, Vec<u8>), (Status, String)>;

/// A handler that records every callback.
#[derive(Default)]
pub struct Rec {
    /// Reject connect requests (with reply data "no thanks").
    pub reject: bool,
    /// Connect data of each accepted request.
    pub accepted: Vec<Vec<u8>>,
    /// The last connection this side accepted.
    pub accepted_conn: Option<ConnId>,
    /// How this side's connect ended.
    pub outcome: Option<Outcome>,
    /// The connection this side opened.
    pub conn: Option<ConnId>,
    /// Fragments received.
    pub received: Vec<(Recv, Vec<u8>)>,
    /// Receives that failed.
    pub failed: Vec<(Status, String)>,
    /// Send completions.
    pub completions: Vec<Status>,
    /// How connections ended, with the number of send completions heard before.
    pub ended: Vec<(Disconnect, usize)>,
}

impl Handler for Rec {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, req: &mut ConnectRequest<'_>) -> Decision {
        self.accepted.push(req.data.read_to_vec());
        self.accepted_conn = Some(req.conn);
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
    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, reason: Disconnect) {
        self.ended.push((reason, self.completions.len()));
    }
}

/// Two processes' worth of vmi in one thread: `a` connected to `b` (or refused by it).
pub struct Pair {
    /// The connecting side.
    pub a: Vmi,
    /// The accepting side.
    pub b: Vmi,
    /// `a`'s handler.
    pub ha: Rec,
    /// `b`'s handler.
    pub hb: Rec,
    /// Names the pair in failure messages.
    pub label: String,
}

impl Pair {
    /// Starts both sides and connects `a` to `b` with connect data "conformance"; `b`
    /// rejects when `reject`. Panics (naming `label`) if either side cannot start.
    pub fn new(sa: Spec, sb: Spec, label: String, reject: bool) -> Pair {
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

    /// Polls both sides until `done`, at most 20 seconds.
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

    /// The open connection from `a` to `b`.
    pub fn conn(&self) -> ConnId {
        self.ha.conn.expect("connected")
    }

    /// The same connection, as `b` knows it.
    pub fn conn_b(&self) -> ConnId {
        self.hb.accepted_conn.expect("accepted")
    }
}
