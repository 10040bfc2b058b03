//! The driver the instruction-count benchmark (`benches/instructions.sh`) runs under
//! callgrind: two vmi instances in one thread, so every run of the same case executes the same
//! instructions (no thread scheduling, no busy-wait loops of varying length).
//!
//! `vmi-msgcost CASE N`: CASE is `stream-<transport>` (N one-way 8-byte inline messages, a
//! window of 64 in flight), `pingpong-<transport>` (N round trips of 8 bytes, counted as 2N
//! hops), `request-<transport>` (N send/receive/reply round trips of 8 bytes each way,
//! counted as 2N hops, the server replying from its request callback), `put-<transport>` and
//! `get-<transport>` (N RDMA puts or gets of 8 bytes, each to its completion, both vmi
//! instances polled while waiting), `async-<transport>`
//! (the ping-pong through the async facade `vmi-async`: each side a tokio task awaiting
//! `recv`, one thread, each driver sleeping on its event descriptor when idle), `filters-<k>` (streaming over loopback with k pass-through skeleton filters), or
//! `idle` (N empty polls, loopback) or `idle-<transport>` (N empty polls of a process with
//! one open connection). Transports: loopback, shmem, tcp.

use std::time::{Duration, Instant};

use vmi_core::prelude::*;

#[derive(Default)]
struct Side {
    conn: Option<ConnId>,
    received: u64,
    completed: u64,
    echo: bool,
    /// The buffer the other side published (put and get cases).
    remote: Option<vmi_core::RemoteBuffer>,
}

impl Handler for Side {
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        if let ConnectOutcome::Failed { status, detail } = o {
            eprintln!("vmi-msgcost: connect failed: {status}: {detail}");
            std::process::exit(1);
        }
        self.conn = Some(conn);
    }
    fn accept(&mut self, _ctx: &mut Ctx<'_>, r: &mut ConnectRequest<'_>) -> Decision {
        self.conn = Some(r.conn);
        Decision::Accept(Vec::new())
    }
    fn receive(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, _cmd: Recv, _slab: &mut Slab<'_>) {
        self.received += 1;
        if self.echo {
            let _ = ctx.send_inline(conn, &[1u8; 8]);
        }
    }
    fn send_complete(&mut self, _c: &mut Ctx<'_>, _conn: ConnId, _d: &mut SendCompletion<'_>) {
        self.completed += 1;
    }
    fn request(&mut self, ctx: &mut Ctx<'_>, request: &mut Request<'_>) {
        let _ = ctx.reply(request.id, 0, &[&[1u8; 8]]);
    }
    fn replied(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _token: u64, _reply: Reply<'_>) {
        self.received += 1;
    }
    fn rdma_published(
        &mut self,
        _ctx: &mut Ctx<'_>,
        _conn: ConnId,
        remote: vmi_core::RemoteBuffer,
        _payload: &mut Slab<'_>,
    ) {
        self.remote = Some(remote);
    }
    fn rdma_done(&mut self, _c: &mut Ctx<'_>, _conn: ConnId, _t: u64, s: Status, d: &str) {
        assert_eq!(s, Status::Ok, "vmi-msgcost: an RDMA op failed: {d}");
        self.received += 1;
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: vmi-msgcost stream-<loopback|shmem|tcp>|pingpong-<loopback|shmem|tcp>|request-<loopback|shmem|tcp>|put-<transport>|get-<transport>|async-<shmem|tcp>|filters-<k>|idle[-<transport>] N"
    );
    std::process::exit(2)
}

/// The harness's turn: each instance polled once, as `ucx-msgcost.c`'s `pump` does. Both are
/// always inlined into their loops, so neither harness counts a call of its own per turn
/// (out of line, this one cost 31 instructions per ping-pong hop).
struct Turns {
    count: u64,
    deadline: Instant,
}

impl Turns {
    #[inline(always)]
    fn pump(&mut self, a: &mut Vmi, ha: &mut Side, b: &mut Vmi, hb: &mut Side) {
        a.poll(ha);
        b.poll(hb);
        self.count += 1;
        // The clock is read rarely, so it adds nothing measurable per message.
        if self.count.is_multiple_of(65_536) {
            self.check();
        }
    }

    #[cold]
    #[inline(never)]
    fn check(&self) {
        assert!(Instant::now() < self.deadline, "vmi-msgcost: no progress");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 || args[1] == "--help" || args[1] == "-h" {
        usage();
    }
    let n: u64 = args[2].parse().unwrap_or_else(|_| usage());
    let case = args[1].as_str();
    let (kind, rest) = case.split_once('-').unwrap_or((case, ""));
    vmi_benches::register();
    vmi_shmem::register_static();
    let spec = match kind {
        "filters" => vmi_benches::spec("loopback", rest.parse().unwrap_or_else(|_| usage())),
        "idle" if rest.is_empty() => vmi_benches::spec("loopback", 0),
        _ => vmi_benches::spec(rest, 0),
    };
    if kind == "async" {
        return async_pingpong(spec, n);
    }
    let tag = std::process::id();
    let (ka, kb) = (format!("cost-a-{tag}"), format!("cost-b-{tag}"));
    let mut a = Vmi::with_spec(spec.clone(), &ka).unwrap_or_else(|e| panic!("{e}"));
    let mut b = Vmi::with_spec(spec, &kb).unwrap_or_else(|e| panic!("{e}"));
    let (mut ha, mut hb) = (Side::default(), Side::default());
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut turns = Turns { count: 0, deadline };
    a.connect("localhost", &kb, b"", 0).unwrap();
    while ha.conn.is_none() {
        turns.pump(&mut a, &mut ha, &mut b, &mut hb);
    }
    let conn = ha.conn.unwrap();
    let msg = [7u8; 8];
    match kind {
        "idle" => {
            for _ in 0..n {
                a.poll(&mut ha);
            }
        }
        "request" => {
            // No deadline: a timeout would add a clock read per poll that a stream
            // ping-pong does not pay.
            let opts = RequestOptions {
                timeout: None,
                reply_max: 8,
                priority: 0,
            };
            for i in 0..n {
                a.request(conn, &[&msg], &opts, i).unwrap();
                while ha.received <= i {
                    turns.pump(&mut a, &mut ha, &mut b, &mut hb);
                }
            }
        }
        "put" | "get" => {
            // `b` publishes 4 KiB; `a` puts 8 bytes into it, or gets 8 bytes from it, one op
            // at a time, each to its completion.
            let region = vmi_core::Region::new(4096).unwrap();
            let bconn = loop {
                if let Some(c) = hb.conn {
                    break c;
                }
                turns.pump(&mut a, &mut ha, &mut b, &mut hb);
            };
            b.rdma_publish(bconn, &region, 0..4096, 0, 0, b"").unwrap();
            while ha.remote.is_none() {
                turns.pump(&mut a, &mut ha, &mut b, &mut hb);
            }
            let remote = ha.remote.unwrap();
            let local = vmi_core::Region::new(64).unwrap();
            let into = [vmi_core::Segment {
                region: &local,
                offset: 0,
                len: 8,
            }];
            let opts = vmi_core::RdmaOptions {
                notify: false,
                timeout: None,
            };
            for i in 0..n {
                if kind == "put" {
                    a.rdma_put(&remote, 0, &[&msg], &opts, i).unwrap();
                } else {
                    a.rdma_get(&remote, 0, &into, &opts, i).unwrap();
                }
                while ha.received <= i {
                    turns.pump(&mut a, &mut ha, &mut b, &mut hb);
                }
            }
        }
        "pingpong" => {
            hb.echo = true;
            for i in 0..n {
                a.send_inline(conn, &msg).unwrap();
                while ha.received <= i {
                    turns.pump(&mut a, &mut ha, &mut b, &mut hb);
                }
            }
        }
        _ => {
            let window = 64;
            let mut sent = 0;
            while hb.received < n {
                // Inline sends have no completion: the window counts what arrived.
                while sent < n && sent - hb.received < window {
                    a.send_inline(conn, &msg).unwrap();
                    sent += 1;
                }
                turns.pump(&mut a, &mut ha, &mut b, &mut hb);
            }
        }
    }
}

/// N round trips of 8 bytes through the async facade (the ping-pong case, awaited).
fn async_pingpong(spec: vmi_core::spec::Spec, n: u64) {
    use vmi_async::AsyncVmi;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    tokio::task::LocalSet::new().block_on(&rt, async {
        let tag = std::process::id();
        let (ka, kb) = (format!("async-a-{tag}"), format!("async-b-{tag}"));
        let a = AsyncVmi::start(Vmi::with_spec(spec.clone(), &ka).unwrap()).unwrap();
        let b = AsyncVmi::start(Vmi::with_spec(spec, &kb).unwrap()).unwrap();
        let conn = a.connect("localhost", &kb, b"").await.expect("connect");
        let bconn = b.accept().await;
        tokio::task::spawn_local(async move {
            while let Ok(m) = b.recv(bconn).await {
                if b.with_vmi(|v| v.send_inline(bconn, &m)).is_err() {
                    break;
                }
            }
        });
        let msg = [7u8; 8];
        for _ in 0..n {
            a.with_vmi(|v| v.send_inline(conn, &msg)).unwrap();
            a.recv(conn).await.expect("the echo");
        }
    });
}
