//! vmi-perf: the benchmark users quote, in the style of `ucx_perftest` and `fi_pingpong`.
//!
//! ```text
//! VMI_SPECFILE=specfiles/tcp.xml vmi-perf server perfkey            # host A
//! VMI_SPECFILE=specfiles/tcp.xml vmi-perf client me perfkey hostA   # host B
//! vmi-perf local --spec specfiles/loopback.xml                      # both ends in one process
//! vmi-perf raw                                                      # the raw TCP socket floor
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args as ClapArgs, Parser, Subcommand};
use vmi_core::Vmi;
use vmi_core::spec::Spec;
use vmi_tools::perf::{PerfClient, Report, Server, Sweep, Test, parse_sizes, raw_sweep};

/// Measure vmi: ping-pong latency (mean, median, p99) and streaming bandwidth over sizes.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "The chain comes from --spec or VMI_SPECFILE; the same binary runs over every specfile."
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Serve clients: echo ping-pong messages, acknowledge streams.
    Server {
        /// This server's key.
        key: String,
        /// Specfile (default: $VMI_SPECFILE).
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Exit after this many seconds (0: serve until killed).
        #[arg(long, default_value_t = 0.0)]
        timeout: f64,
        /// Exit after this many clients disconnected (0: never).
        #[arg(long, default_value_t = 0)]
        clients: u64,
    },
    /// Measure against a running server.
    Client {
        /// This client's key.
        key: String,
        /// The server's key.
        server_key: String,
        /// The server's host (or host:port).
        host: String,
        #[command(flatten)]
        sweep: SweepArgs,
    },
    /// Run a server thread and the client in one process (needed for the loopback device).
    Local {
        #[command(flatten)]
        sweep: SweepArgs,
    },
    /// Measure the floor: a raw non-blocking, busy-polling TCP socket pair on 127.0.0.1.
    Raw {
        #[command(flatten)]
        sweep: SweepArgs,
    },
}

#[derive(ClapArgs, Debug)]
struct SweepArgs {
    /// Specfile (default: $VMI_SPECFILE).
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Message sizes.
    #[arg(long, default_value = "8,4k,64k,1m", value_parser = sizes_arg)]
    sizes: Sizes,
    /// Fragments per message.
    #[arg(long, default_value_t = 1)]
    fragments: usize,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Test::Both)]
    test: Test,
    /// Ping-pong iterations per size (default: by size).
    #[arg(long)]
    iters: Option<u64>,
    /// Streamed messages per size (default: about 256 MiB, 1,000 to 100,000 messages).
    #[arg(long)]
    messages: Option<u64>,
    /// Messages in flight while streaming.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Short run (1/20 of the default counts).
    #[arg(long)]
    quick: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Give up after this many seconds without progress.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

/// A comma-separated list of sizes.
#[derive(Clone, Debug)]
struct Sizes(Vec<usize>);

fn sizes_arg(s: &str) -> Result<Sizes, String> {
    parse_sizes(s).map(Sizes)
}

impl SweepArgs {
    fn sweep(&self) -> Sweep {
        Sweep {
            sizes: self.sizes.0.clone(),
            fragments: self.fragments.max(1),
            test: self.test,
            iters: self.iters,
            messages: self.messages,
            window: self.window,
            quick: self.quick,
            progress: !self.json,
        }
    }

    fn spec(&self) -> Result<Spec, String> {
        load_spec(self.spec.as_ref())
    }
}

fn load_spec(path: Option<&PathBuf>) -> Result<Spec, String> {
    match path {
        Some(p) => Spec::from_file(p),
        None => Spec::from_env(),
    }
    .map_err(|e| e.to_string())
}

fn spec_name(spec: &Spec) -> Option<String> {
    spec.path.as_ref().map(|p| p.display().to_string())
}

fn serve(key: &str, spec: Spec, timeout: f64, clients: u64) -> Result<(), String> {
    let mut vmi = Vmi::with_spec(spec, key).map_err(|e| e.to_string())?;
    println!("vmi-perf: server '{key}' ready");
    let mut server = Server::default();
    let start = Instant::now();
    loop {
        // Busy-poll while clients are connected; sleep otherwise.
        if server.open > 0 {
            vmi.poll(&mut server);
        } else {
            vmi.wait(&mut server, Duration::from_millis(100));
        }
        if clients > 0 && server.accepted >= clients && server.open == 0 {
            return Ok(());
        }
        if timeout > 0.0 && start.elapsed().as_secs_f64() > timeout {
            return Ok(());
        }
    }
}

fn output(report: &Report, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).expect("serialisable")
        );
    } else {
        report.print();
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.mode {
        Mode::Server {
            key,
            spec,
            timeout,
            clients,
        } => serve(&key, load_spec(spec.as_ref())?, timeout, clients),
        Mode::Client {
            key,
            server_key,
            host,
            sweep,
        } => {
            let spec = sweep.spec()?;
            let name = spec_name(&spec);
            let vmi = Vmi::with_spec(spec, &key).map_err(|e| e.to_string())?;
            let mut client = PerfClient::connect(
                vmi,
                &host,
                &server_key,
                Duration::from_secs_f64(sweep.timeout),
            )?;
            let results = client.run(&sweep.sweep())?;
            client.close();
            output(
                &Report {
                    tool: "vmi".into(),
                    spec: name,
                    results,
                },
                sweep.json,
            );
            Ok(())
        }
        Mode::Local { sweep } => {
            let spec = sweep.spec()?;
            let name = spec_name(&spec);
            let server_key = format!("vmi-perf-server-{}", std::process::id());
            let (tx, rx) = std::sync::mpsc::channel();
            let sspec = spec.clone();
            let skey = server_key.clone();
            let server = std::thread::spawn(move || {
                let r = Vmi::with_spec(sspec, &skey).map_err(|e| e.to_string());
                let mut vmi = match r {
                    Ok(v) => {
                        let _ = tx.send(Ok(()));
                        v
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let mut s = Server::default();
                loop {
                    vmi.poll(&mut s);
                    if s.accepted > 0 && s.open == 0 {
                        return;
                    }
                }
            });
            rx.recv().map_err(|_| "server thread died".to_string())??;
            let vmi = Vmi::with_spec(spec, &format!("vmi-perf-client-{}", std::process::id()))
                .map_err(|e| e.to_string())?;
            let mut client = PerfClient::connect(
                vmi,
                "localhost",
                &server_key,
                Duration::from_secs_f64(sweep.timeout),
            )?;
            let results = client.run(&sweep.sweep());
            client.close();
            let _ = server.join();
            output(
                &Report {
                    tool: "vmi".into(),
                    spec: name,
                    results: results?,
                },
                sweep.json,
            );
            Ok(())
        }
        Mode::Raw { sweep } => {
            let results =
                raw_sweep(&sweep.sweep()).map_err(|e| format!("raw socket run failed: {e}"))?;
            output(
                &Report {
                    tool: "raw-tcp".into(),
                    spec: None,
                    results,
                },
                sweep.json,
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    vmi_tools::init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmi-perf: error: {e}");
            ExitCode::FAILURE
        }
    }
}
