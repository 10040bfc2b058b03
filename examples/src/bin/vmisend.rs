//! vmisend: connects to a receiver by host + key with connect data, then sends messages as
//! streams of fragments: the VMI tutorial's text ("All work and no play makes Jack a dull
//! boy #1. …", NUL-terminated), or with `--pattern` the test pattern `vmirecv --verify` checks.
//!
//! ```text
//! VMI_SPECFILE=specfiles/tcp.xml vmisend sendkey recvkey localhost
//! ```
#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmi_core::Operations;
use vmi_examples::quiet_println as println;

use clap::Parser;
use vmi_core::{
    Buffer, ConnId, ConnectOutcome, Ctx, Disconnect, Handler, SendCompletion, Status, Vmi,
};
use vmi_examples::{fill, fill_text, fragment_sizes, init_logging, parse_seconds, parse_size};

/// Send messages over vmi. The chain comes from the specfile named by VMI_SPECFILE.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "Environment: VMI_SPECFILE (required), VMI_LOG (log filter), VMI_DEVICE_PATH, VMI_<DEVICE>_<PARAM>. See `vmi-info --env`."
)]
struct Args {
    /// This process's key.
    sendkey: String,
    /// The receiver's key.
    recvkey: String,
    /// The receiver's host (name, address, or host:port to skip the key-derived port search).
    recvhost: String,
    /// Message size (suffixes k, m, g).
    #[arg(short, long, default_value = "1k", value_parser = parse_size)]
    size: u64,
    /// Fragments per message.
    #[arg(short, long, default_value_t = 1)]
    fragments: u64,
    /// Messages per connection.
    #[arg(short = 'n', long, default_value_t = 1)]
    count: u64,
    /// Connections to open to the receiver (messages go on each).
    #[arg(short, long, default_value_t = 1)]
    connections: u32,
    /// Connect data sent with the connection request.
    #[arg(long, default_value = "vmisend")]
    cookie: String,
    /// Messages in flight per connection.
    #[arg(short, long, default_value_t = 8)]
    window: u64,
    /// Give up (exit 1) after this many seconds.
    #[arg(short, long, default_value_t = 60.0, value_parser = parse_seconds)]
    timeout: f64,
    /// Keep trying to connect for up to this many seconds while the receiver is not there
    /// yet (start vmisend first); 0: fail at once. VMI_CONNECT_TIMEOUT overrides it.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0, value_parser = parse_seconds)]
    wait: f64,
    /// The specfile (default: the one VMI_SPECFILE names).
    #[arg(long, value_name = "FILE")]
    spec: Option<std::path::PathBuf>,
    /// Send vmi's test pattern (a length prefix, then bytes that never repeat), which
    /// `vmirecv --verify` checks, instead of the VMI tutorial's text.
    #[arg(long)]
    pattern: bool,
    /// Print only errors and the summary.
    #[arg(short, long)]
    quiet: bool,
    /// Log at info level (VMI_LOG overrides).
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Default)]
struct Outbound {
    open: bool,
    next_message: u64,
    in_flight: u64,
    done_messages: u64,
    closed: bool,
}

struct Sender {
    conns: HashMap<ConnId, Outbound>,
    error: Option<String>,
    connected: u32,
    sent_bytes: u64,
    /// Messages that did not arrive whole: a send failed here, or the receiver said so.
    failed: Vec<String>,
    failed_ids: HashSet<(ConnId, u64)>,
    /// Every message is sent and completed: a receiver that closes now closes in order.
    all_sent: bool,
}

/// Fragments per message carry a token: message index << 20 | fragment index, last-fragment bit.
const LAST: u64 = 1 << 63;
/// Most fragments per message (the fragment index has 20 bits of the token).
const MAX_FRAGMENTS: u64 = (1 << 20) - 1;

impl Handler for Sender {
    fn connected(
        &mut self,
        _ctx: &mut Ctx<'_>,
        conn: ConnId,
        outcome: ConnectOutcome<'_>,
        _token: u64,
    ) {
        match outcome {
            ConnectOutcome::Accepted(mut reply) => {
                let text = String::from_utf8_lossy(&reply.read_to_vec()).into_owned();
                log::info!("{conn} accepted, reply data '{text}'");
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.open = true;
                }
                self.connected += 1;
            }
            ConnectOutcome::Rejected(mut reply) => {
                let text = String::from_utf8_lossy(&reply.read_to_vec()).into_owned();
                self.error.get_or_insert(format!(
                    "the receiver rejected the connection (reply: '{text}')"
                ));
            }
            ConnectOutcome::Failed { status, detail } => {
                self.error
                    .get_or_insert(format!("cannot connect: {status}: {detail}"));
            }
        }
    }

    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, done: &mut SendCompletion<'_>) {
        let message = (done.token & !LAST) >> 20;
        if !done.status.is_ok() {
            if matches!(done.status, Status::ConnectionLost | Status::Cancelled) {
                self.error
                    .get_or_insert(format!("send failed: {}: {}", done.status, done.detail));
                return;
            }
            // This fragment's message is lost; the connection goes on.
            if self.failed_ids.insert((conn, message)) {
                self.failed.push(format!(
                    "message {} on {conn}: {}: {}",
                    message + 1,
                    done.status,
                    done.detail
                ));
            }
        } else {
            let bytes: u64 = done.take_buffers().map(|b| b.len() as u64).sum();
            self.sent_bytes += bytes;
        }
        if done.token & LAST != 0
            && let Some(c) = self.conns.get_mut(&conn)
        {
            c.in_flight -= 1;
            c.done_messages += 1;
        }
    }

    fn message_failed(
        &mut self,
        _ctx: &mut Ctx<'_>,
        conn: ConnId,
        message: u64,
        status: Status,
        detail: &str,
    ) {
        if self.failed_ids.insert((conn, message)) {
            self.failed.push(format!(
                "message {} on {conn}: the receiver could not deliver it: {status}: {detail}",
                message + 1
            ));
        }
    }

    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, reason: Disconnect) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.closed = true;
            c.open = false;
        }
        match reason {
            Disconnect::Local => {}
            Disconnect::Peer if self.all_sent => {}
            Disconnect::Peer => {
                self.error.get_or_insert(
                    "the receiver closed the connection before all messages were sent".into(),
                );
            }
            Disconnect::Error { status, detail } => {
                self.error
                    .get_or_insert(format!("connection lost: {status}: {detail}"));
            }
        }
    }
}

/// Polls until a send may be issued (the process's sends in flight are bounded).
fn wait_for_room(vmi: &mut Vmi, s: &mut Sender, deadline: Instant) -> Result<(), String> {
    while vmi.sends_available() == 0 {
        vmi.wait(s, Duration::from_millis(10));
        if let Some(e) = s.error.take() {
            return Err(e);
        }
        if Instant::now() > deadline {
            return Err("timed out waiting for earlier sends to complete".into());
        }
    }
    Ok(())
}

fn send_message(
    vmi: &mut Vmi,
    s: &mut Sender,
    conn: ConnId,
    message: u64,
    args: &Args,
    deadline: Instant,
) -> Result<(), String> {
    let stream = vmi.stream_begin(conn).map_err(|e| e.to_string())?;
    let mut offset = 0u64;
    let sizes: Vec<u64> = fragment_sizes(args.size, args.fragments).collect();
    let last = sizes.len() - 1;
    for (i, len) in sizes.into_iter().enumerate() {
        let mut buf: Buffer = vmi.buffer_alloc(len as usize);
        if args.pattern {
            fill(&mut buf, message, args.size, offset);
        } else {
            fill_text(&mut buf, args.size, offset);
        }
        offset += len;
        let token = (message << 20) | i as u64;
        wait_for_room(vmi, s, deadline)?;
        if i == last {
            vmi.stream_end(stream, Some(buf), token | LAST)
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        vmi.stream_send(&stream, Some(buf), token)
            .map_err(|e| e.to_string())?;
    }
    unreachable!("at least one fragment")
}

fn run(args: &Args) -> Result<(u64, Duration), String> {
    if args.fragments == 0 || args.fragments > MAX_FRAGMENTS {
        return Err(format!(
            "--fragments must be from 1 to {MAX_FRAGMENTS}, not {}",
            args.fragments
        ));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    let mut vmi = vmi_examples::open(
        args.spec.as_deref(),
        &args.sendkey,
        vmi_core::Options::connect_only().with_connect_wait(Duration::from_secs_f64(args.wait)),
    )?;
    // Checked before any memory is filled: the largest fragment must fit the chain and this
    // machine's address space.
    let largest = args.size.div_ceil(args.fragments);
    let max = vmi.capabilities().max_fragment;
    if largest > max || usize::try_from(largest).is_err() {
        return Err(format!(
            "a message of {} bytes in {} fragment(s) makes fragments of {largest} bytes, over the chain's largest fragment of {max} bytes; use more fragments (-f {})",
            args.size,
            args.fragments,
            args.size.div_ceil(max.max(1)).min(MAX_FRAGMENTS)
        ));
    }
    let mut s = Sender {
        conns: HashMap::new(),
        error: None,
        connected: 0,
        sent_bytes: 0,
        failed: Vec::new(),
        failed_ids: HashSet::new(),
        all_sent: false,
    };
    for _ in 0..args.connections {
        let conn = vmi
            .connect(&args.recvhost, &args.recvkey, args.cookie.as_bytes(), 0)
            .map_err(|e| e.to_string())?;
        s.conns.insert(conn, Outbound::default());
    }
    let timed_out = |what: &str| format!("timed out after {:.1} s {what}", args.timeout);
    while s.connected < args.connections {
        vmi.wait(&mut s, Duration::from_millis(50));
        if let Some(e) = s.error.take() {
            return Err(e);
        }
        if Instant::now() > deadline {
            return Err(timed_out(&format!(
                "waiting for {} connection(s) to be accepted",
                args.connections - s.connected
            )));
        }
    }
    if !args.quiet {
        println!(
            "vmisend: connected to '{}' at {} ({} connection(s))",
            args.recvkey, args.recvhost, args.connections
        );
    }
    let start = Instant::now();
    let ids: Vec<ConnId> = s.conns.keys().copied().collect();
    loop {
        for &conn in &ids {
            loop {
                let c = s.conns.get_mut(&conn).expect("known");
                if !c.open || c.next_message >= args.count || c.in_flight >= args.window.max(1) {
                    break;
                }
                let m = c.next_message;
                c.next_message += 1;
                c.in_flight += 1;
                send_message(&mut vmi, &mut s, conn, m, args, deadline)?;
            }
        }
        if s.conns.values().all(|c| c.done_messages >= args.count) {
            break;
        }
        vmi.wait(&mut s, Duration::from_millis(50));
        if let Some(e) = s.error.take() {
            return Err(e);
        }
        if Instant::now() > deadline {
            let done: u64 = s.conns.values().map(|c| c.done_messages).sum();
            return Err(timed_out(&format!(
                "with {done} of {} message(s) sent",
                args.count * args.connections as u64
            )));
        }
    }
    let elapsed = start.elapsed();
    s.all_sent = true;
    for &conn in &ids {
        if !s.conns[&conn].closed {
            vmi.disconnect(conn).map_err(|e| e.to_string())?;
        }
    }
    while !s.conns.values().all(|c| c.closed) {
        vmi.wait(&mut s, Duration::from_millis(50));
        if let Some(e) = s.error.take() {
            return Err(e);
        }
        if Instant::now() > deadline {
            return Err(timed_out("closing the connection(s)"));
        }
    }
    if !s.failed.is_empty() {
        return Err(format!(
            "{} message(s) did not arrive whole; first: {}",
            s.failed.len(),
            s.failed[0]
        ));
    }
    Ok((s.sent_bytes, elapsed))
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    match run(&args) {
        Ok((bytes, elapsed)) => {
            let secs = elapsed.as_secs_f64().max(1e-9);
            println!(
                "vmisend: sent {} message(s) of {} bytes in {} fragment(s) on {} connection(s): {bytes} bytes in {:.3} s ({:.1} MB/s)",
                args.count * args.connections as u64,
                args.size,
                args.fragments,
                args.connections,
                secs,
                bytes as f64 / secs / 1e6
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmisend: error: {e}");
            ExitCode::FAILURE
        }
    }
}
