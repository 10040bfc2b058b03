//! vmi over TCP on 127.0.0.1 against a raw non-blocking, busy-polling TCP socket (the floor):
//! half-round-trip ping-pong latency and one-way streaming bandwidth, 8 B to 1 MiB.
//!
//! Run: `cargo bench -p vmi-benches --bench tcp` (add `-- --quick` for a short run).

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use vmi_core::Operations;

use vmi_benches::{key, register, size_name, spec};
use vmi_core::{Buffer, ConnId, ConnectOutcome, Ctx, Handler, Recv, SendCompletion, Slab, Vmi};

const SIZES: [usize; 4] = [8, 4096, 65536, 1 << 20];

/// The echoing / counting side.
struct Server {
    stash: Vec<Buffer>,
    size: usize,
    echo: bool,
    expect: u64,
    got: u64,
}

impl Handler for Server {
    fn receive(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, cmd: Recv, _slab: &mut Slab<'_>) {
        if cmd != Recv::End {
            return;
        }
        self.got += 1;
        if self.echo {
            let buf = self
                .stash
                .pop()
                .unwrap_or_else(|| Buffer::zeroed(self.size));
            ctx.send(conn, [buf], 0).unwrap();
        } else if self.got == self.expect {
            ctx.send_inline(conn, b"done").unwrap();
        }
    }
    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, done: &mut SendCompletion<'_>) {
        self.stash.extend(done.take_buffers());
    }
}

/// The measuring side.
#[derive(Default)]
struct Client {
    conn: Option<ConnId>,
    stash: Vec<Buffer>,
    replies: u64,
}

impl Handler for Client {
    fn connected(
        &mut self,
        _ctx: &mut Ctx<'_>,
        conn: ConnId,
        outcome: ConnectOutcome<'_>,
        _t: u64,
    ) {
        match outcome {
            ConnectOutcome::Accepted(_) => self.conn = Some(conn),
            ConnectOutcome::Rejected(_) => panic!("rejected"),
            ConnectOutcome::Failed { status, detail } => {
                panic!("connect failed: {status}: {detail}")
            }
        }
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, cmd: Recv, _slab: &mut Slab<'_>) {
        if cmd == Recv::End {
            self.replies += 1;
        }
    }
    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, done: &mut SendCompletion<'_>) {
        assert!(done.status.is_ok(), "{}: {}", done.status, done.detail);
        self.stash.extend(done.take_buffers());
    }
}

/// Runs a vmi server thread; returns (stop flag, join handle).
fn vmi_server(
    server_key: String,
    size: usize,
    echo: bool,
    expect: u64,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let s = stop.clone();
    let h = std::thread::spawn(move || {
        let mut vmi = Vmi::with_spec(spec("tcp", 0), &server_key).unwrap();
        tx.send(()).unwrap();
        let mut server = Server {
            stash: Vec::new(),
            size,
            echo,
            expect,
            got: 0,
        };
        while !s.load(Ordering::Relaxed) {
            vmi.poll(&mut server);
        }
    });
    rx.recv().unwrap();
    (stop, h)
}

fn vmi_client(server_key: &str, tag: &str) -> (Vmi, Client) {
    let mut vmi = Vmi::with_spec(spec("tcp", 0), &key(tag)).unwrap();
    let mut c = Client::default();
    vmi.connect("127.0.0.1", server_key, b"", 0).unwrap();
    let start = Instant::now();
    while c.conn.is_none() {
        vmi.poll(&mut c);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "connect timed out"
        );
    }
    (vmi, c)
}

fn vmi_latency_us(size: usize, iters: u64) -> f64 {
    let sk = key(&format!("lat-s-{size}"));
    let (stop, h) = vmi_server(sk.clone(), size, true, 0);
    let (mut vmi, mut c) = vmi_client(&sk, &format!("lat-c-{size}"));
    let conn = c.conn.unwrap();
    c.stash.push(Buffer::zeroed(size));
    let run = |n: u64, vmi: &mut Vmi, c: &mut Client| {
        let start = Instant::now();
        for i in 0..n {
            while c.stash.is_empty() {
                vmi.poll(c);
            }
            let b = c.stash.pop().unwrap();
            vmi.send(conn, [b], 0).unwrap();
            while c.replies <= i {
                vmi.poll(c);
            }
        }
        start.elapsed()
    };
    run(iters / 10 + 1, &mut vmi, &mut c);
    c.replies = 0;
    let t = run(iters, &mut vmi, &mut c);
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    t.as_secs_f64() * 1e6 / (2.0 * iters as f64)
}

fn vmi_bandwidth_mbs(size: usize, messages: u64) -> f64 {
    let sk = key(&format!("bw-s-{size}"));
    let (stop, h) = vmi_server(sk.clone(), size, false, messages);
    let (mut vmi, mut c) = vmi_client(&sk, &format!("bw-c-{size}"));
    let conn = c.conn.unwrap();
    for _ in 0..16 {
        c.stash.push(Buffer::zeroed(size));
    }
    let start = Instant::now();
    for _ in 0..messages {
        while c.stash.is_empty() {
            vmi.poll(&mut c);
        }
        let b = c.stash.pop().unwrap();
        vmi.send(conn, [b], 0).unwrap();
    }
    while c.replies == 0 {
        vmi.poll(&mut c);
    }
    let t = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    (size as u64 * messages) as f64 / t.as_secs_f64() / 1e6
}

fn spin_write(s: &mut TcpStream, mut buf: &[u8]) {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("{e}"),
        }
    }
}

fn spin_read(s: &mut TcpStream, buf: &mut [u8]) {
    let mut off = 0;
    while off < buf.len() {
        match s.read(&mut buf[off..]) {
            Ok(0) => panic!("closed"),
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Raw non-blocking sockets, busy polling: the floor for TCP.
fn raw_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    for s in [&a, &b] {
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
    }
    (a, b)
}

fn raw_latency_us(size: usize, iters: u64) -> f64 {
    let (mut a, mut b) = raw_pair();
    let total = iters + iters / 10 + 1;
    let h = std::thread::spawn(move || {
        let mut buf = vec![0u8; size];
        for _ in 0..total {
            spin_read(&mut b, &mut buf);
            spin_write(&mut b, &buf);
        }
    });
    let mut buf = vec![0u8; size];
    for _ in 0..iters / 10 + 1 {
        spin_write(&mut a, &buf.clone());
        spin_read(&mut a, &mut buf);
    }
    let start = Instant::now();
    let out = vec![0u8; size];
    for _ in 0..iters {
        spin_write(&mut a, &out);
        spin_read(&mut a, &mut buf);
    }
    let t = start.elapsed();
    h.join().unwrap();
    t.as_secs_f64() * 1e6 / (2.0 * iters as f64)
}

fn raw_bandwidth_mbs(size: usize, messages: u64) -> f64 {
    let (mut a, mut b) = raw_pair();
    let h = std::thread::spawn(move || {
        let mut buf = vec![0u8; size];
        for _ in 0..messages {
            spin_read(&mut b, &mut buf);
        }
        spin_write(&mut b, b"done");
    });
    let buf = vec![0u8; size];
    let start = Instant::now();
    for _ in 0..messages {
        spin_write(&mut a, &buf);
    }
    let mut ack = [0u8; 4];
    spin_read(&mut a, &mut ack);
    let t = start.elapsed();
    h.join().unwrap();
    (size as u64 * messages) as f64 / t.as_secs_f64() / 1e6
}

fn main() {
    register();
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 20 } else { 1 };
    println!(
        "TCP on 127.0.0.1: vmi (tcp.xml chain, busy-polling poll()) vs raw non-blocking busy-polling socket"
    );
    println!(
        "{:>8} {:>14} {:>14} {:>7} {:>14} {:>14} {:>7}",
        "size", "vmi lat (us)", "raw lat (us)", "ratio", "vmi MB/s", "raw MB/s", "ratio"
    );
    for size in SIZES {
        let iters = match size {
            s if s <= 4096 => 20_000,
            s if s <= 65536 => 5_000,
            _ => 500,
        } / scale;
        let messages = ((1u64 << 30) / size as u64).clamp(2_000, 200_000) / scale as u64;
        let (vl, rl) = (vmi_latency_us(size, iters), raw_latency_us(size, iters));
        let (vb, rb) = (
            vmi_bandwidth_mbs(size, messages),
            raw_bandwidth_mbs(size, messages),
        );
        println!(
            "{:>8} {vl:>14.2} {rl:>14.2} {:>7.2} {vb:>14.1} {rb:>14.1} {:>7.2}",
            size_name(size),
            vl / rl,
            vb / rb
        );
    }
}
