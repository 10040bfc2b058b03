//! vmirecv: waits for connections, accepts (or rejects) them, and prints each message (its
//! text, when it is text, as the VMI tutorial's receiver does).
//!
//! ```text
//! VMI_SPECFILE=specfiles/tcp.xml vmirecv recvkey
//! ```
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmi_examples::quiet_println as println;

use clap::Parser;
use vmi_core::{
    ConnId, ConnectRequest, Ctx, Decision, Disconnect, Handler, Operations, Recv, Slab, Status,
};
use vmi_examples::{Verifier, init_logging, parse_seconds, printable};

/// Receive messages over vmi. The chain comes from the specfile named by VMI_SPECFILE.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "Environment: VMI_SPECFILE (required), VMI_LOG (log filter), VMI_DEVICE_PATH, VMI_<DEVICE>_<PARAM>. See `vmi-info --env`."
)]
struct Args {
    /// This process's key; senders address it by host + key.
    recvkey: String,
    /// Exit after this many complete messages (0: serve until killed).
    #[arg(short = 'n', long, default_value_t = 1)]
    messages: u64,
    /// Check every byte against the pattern `vmisend --pattern` writes (without --verify,
    /// a text message is printed, as the VMI tutorial's receiver does).
    #[arg(long)]
    verify: bool,
    /// Refuse every connection (for testing rejections); exit after the first.
    #[arg(long)]
    reject: bool,
    /// Accept only connections whose connect data equals this text.
    #[arg(long)]
    cookie: Option<String>,
    /// Give up (exit 1) after this many seconds without finishing [default: 60, or none
    /// with -n 0].
    #[arg(short, long, value_parser = parse_seconds)]
    timeout: Option<f64>,
    /// The specfile (default: the one VMI_SPECFILE names).
    #[arg(long, value_name = "FILE")]
    spec: Option<std::path::PathBuf>,
    /// Print only the readiness line, errors and the summary.
    #[arg(short, long)]
    quiet: bool,
    /// Log at info level (VMI_LOG overrides).
    #[arg(short, long)]
    verbose: bool,
}

#[derive(Default)]
struct Inbound {
    peer: String,
    message: u64,
    offset: u64,
    fragments: u64,
    verifier: Verifier,
    /// The message's first bytes, to print it when it is text.
    head: Vec<u8>,
}

/// The most of a text message that is printed.
const PRINT_MAX: usize = 4096;

struct Receiver {
    args: Args,
    conns: HashMap<ConnId, Inbound>,
    messages: u64,
    bytes: u64,
    rejected: u64,
    /// Messages that failed (not delivered whole).
    failed: u64,
    error: Option<String>,
    live: usize,
}

impl Handler for Receiver {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, req: &mut ConnectRequest<'_>) -> Decision {
        let data = req.data.read_to_vec();
        let text = String::from_utf8_lossy(&data).into_owned();
        if self.args.reject {
            self.rejected += 1;
            println!(
                "vmirecv: rejected connection from '{}' at {} (--reject)",
                req.peer_key, req.peer_host
            );
            return Decision::Reject(b"rejected by vmirecv --reject".to_vec());
        }
        if let Some(c) = &self.args.cookie
            && *c != text
        {
            self.rejected += 1;
            println!(
                "vmirecv: rejected connection from '{}': connect data '{text}' is not the cookie",
                req.peer_key
            );
            return Decision::Reject(format!("wrong cookie '{text}'").into_bytes());
        }
        if !self.args.quiet {
            println!(
                "vmirecv: accepted connection from '{}' at {} (connect data: '{text}')",
                req.peer_key, req.peer_host
            );
        }
        self.conns.insert(
            req.conn,
            Inbound {
                peer: req.peer_key.to_string(),
                ..Default::default()
            },
        );
        self.live += 1;
        Decision::Accept(format!("welcome {}", req.peer_key).into_bytes())
    }

    fn receive(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        let Some(s) = self.conns.get_mut(&conn) else {
            return;
        };
        s.fragments += 1;
        if self.args.verify {
            loop {
                let chunk = slab.read(usize::MAX);
                if chunk.is_empty() {
                    break;
                }
                s.verifier.feed(s.message, chunk);
                s.offset += chunk.len() as u64;
            }
        } else {
            if !self.args.quiet && s.head.len() <= PRINT_MAX {
                let want = (PRINT_MAX + 1 - s.head.len()).min(slab.remaining());
                let at = s.head.len();
                s.head.resize(at + want, 0);
                slab.copy_to(&mut s.head[at..]);
            }
            s.offset += slab.len() as u64;
        }
        let mut verified = self.args.verify;
        if cmd == Recv::End
            && self.args.verify
            && let Err(e) = s.verifier.finish(s.message)
        {
            verified = false;
            self.error
                .get_or_insert(format!("message {} from '{}': {e}", s.message + 1, s.peer));
        }
        if cmd == Recv::End {
            self.messages += 1;
            self.bytes += s.offset;
            if !self.args.quiet {
                println!(
                    "vmirecv: message {} from '{}': {} bytes in {} fragment(s){}",
                    s.message + 1,
                    s.peer,
                    s.offset,
                    s.fragments,
                    if verified { ", verified" } else { "" }
                );
                if let Some(text) = printable(&s.head, PRINT_MAX) {
                    println!("{text}");
                }
            }
            s.head.clear();
            s.message += 1;
            s.offset = 0;
            s.fragments = 0;
        }
    }

    fn receive_failed(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, status: Status, detail: &str) {
        let Some(s) = self.conns.get_mut(&conn) else {
            return;
        };
        // What arrived of the message is thrown away; the sender's next message is next.
        eprintln!(
            "vmirecv: message {} from '{}' failed and was discarded ({} bytes in {} fragment(s) received): {status}: {detail}",
            s.message + 1,
            s.peer,
            s.offset,
            s.fragments
        );
        s.message += 1;
        s.offset = 0;
        s.fragments = 0;
        s.verifier = Verifier::default();
        self.failed += 1;
    }

    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, reason: Disconnect) {
        if let Some(s) = self.conns.remove(&conn) {
            self.live -= 1;
            match reason {
                Disconnect::Error { status, detail } => {
                    if s.offset > 0 || s.fragments > 0 {
                        eprintln!(
                            "vmirecv: connection from '{}' lost in the middle of a message: {status}: {detail}",
                            s.peer
                        );
                    } else if !self.args.quiet {
                        println!(
                            "vmirecv: connection from '{}' ended: {status}: {detail}",
                            s.peer
                        );
                    }
                }
                _ if !self.args.quiet => println!("vmirecv: '{}' disconnected", s.peer),
                _ => {}
            }
        }
    }
}

/// How long senders have to close once every message is in, before this side closes.
const SENDER_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    // -n 0 serves until killed: no timeout unless one is asked for.
    let timeout = match (args.timeout, args.messages) {
        (Some(t), _) => Some(Duration::from_secs_f64(t)),
        (None, 0) => None,
        (None, _) => Some(Duration::from_secs(60)),
    };
    let mut vmi = match vmi_examples::open(
        args.spec.as_deref(),
        &args.recvkey,
        vmi_core::Options::default(),
    ) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("vmirecv: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Always printed: scripts wait for this line before starting senders.
    println!("vmirecv: key '{}' waiting for connections", args.recvkey);
    let want = args.messages;
    let mut r = Receiver {
        args,
        conns: HashMap::new(),
        messages: 0,
        bytes: 0,
        rejected: 0,
        failed: 0,
        error: None,
        live: 0,
    };
    let start = Instant::now();
    let mut done_at: Option<Instant> = None;
    let mut closing = false;
    loop {
        vmi.wait(&mut r, Duration::from_millis(100));
        if let Some(e) = &r.error {
            eprintln!("vmirecv: error: {e}");
            return ExitCode::FAILURE;
        }
        let finished =
            (r.args.reject && r.rejected > 0) || (want > 0 && r.messages + r.failed >= want);
        if finished {
            // Let senders close first so they see their sends through. One that has not
            // closed after a grace period is disconnected here, in order: what this side
            // still owes it (a notice that a message failed) goes out before the close, which
            // leaving with the socket open would lose. Then leave.
            let t = *done_at.get_or_insert_with(Instant::now);
            if r.live == 0 {
                break;
            }
            if t.elapsed() > SENDER_GRACE && !closing {
                closing = true;
                for &conn in r.conns.keys() {
                    if let Err(e) = vmi.disconnect(conn) {
                        log::debug!("vmirecv: closing {conn}: {e}");
                    }
                }
            }
            if t.elapsed() > SENDER_GRACE * 2 {
                eprintln!(
                    "vmirecv: warning: {} sender(s) did not close within {:.0} s; leaving",
                    r.live,
                    (SENDER_GRACE * 2).as_secs_f64()
                );
                break;
            }
        } else if let Some(timeout) = timeout.filter(|t| start.elapsed() > *t) {
            eprintln!(
                "vmirecv: error: timed out after {:.1} s with {} of {want} message(s) received",
                timeout.as_secs_f64(),
                r.messages
            );
            return ExitCode::FAILURE;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if !r.args.reject {
        println!(
            "vmirecv: received {} message(s), {} bytes in {secs:.3} s",
            r.messages, r.bytes
        );
    }
    if r.failed > 0 {
        eprintln!(
            "vmirecv: error: {} message(s) failed and were discarded",
            r.failed
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
