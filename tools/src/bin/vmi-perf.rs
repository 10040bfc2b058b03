//! vmi-perf: the benchmark users quote, in the style of `ucx_perftest` and `fi_pingpong`.
//!
//! ```text
//! VMI_SPECFILE=specfiles/tcp.xml vmi-perf server perfkey            # host A
//! VMI_SPECFILE=specfiles/tcp.xml vmi-perf client me perfkey hostA   # host B
//! vmi-perf local --spec specfiles/loopback.xml                      # both ends in one process
//! VMI_SPECFILE=specfiles/shmem.xml vmi-perf local --op put --sizes 8,4k,64k,1m   # RDMA puts
//! vmi-perf raw                                                      # the raw TCP socket floor
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vmi_tools::quiet_println as println;

use clap::{Args as ClapArgs, Parser, Subcommand};
use vmi_core::Vmi;
use vmi_core::spec::Spec;
use vmi_tools::perf::{
    Inputs, Op, PerfClient, Report, Server, SizeResult, Sweep, Test, parse_sizes, raw_sweep,
    run_local,
};

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
        #[arg(long, default_value_t = 0.0, value_parser = vmi_core::params::parse_seconds)]
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
    /// Compare vmi with ucx_perftest, fi_pingpong and the raw floor: one table, one SVG plot.
    Compare {
        /// Message sizes.
        #[arg(long, default_value = "8,4k,64k,1m", value_parser = sizes_arg)]
        sizes: Sizes,
        /// Short runs.
        #[arg(long)]
        quick: bool,
        /// Do not install missing peers (ucx-utils, libfabric-bin) with apt-get.
        #[arg(long)]
        no_install: bool,
        /// Directory for compare.txt, compare.json and compare.svg.
        #[arg(long, default_value = "target/compare")]
        out: PathBuf,
        /// The TCP specfile.
        #[arg(long, default_value = "specfiles/tcp.xml")]
        tcp_spec: PathBuf,
        /// The shared-memory specfile (skipped when it does not exist).
        #[arg(long, default_value = "specfiles/shmem.xml")]
        shm_spec: PathBuf,
        /// Rounds: every peer runs once per round, interleaved; medians and ranges are
        /// reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Messages, or RDMA puts or gets (against ucx_perftest's ucp_put_lat/ucp_put_bw or
        /// ucp_get).
        #[arg(long, value_enum, default_value_t = Op::Stream)]
        op: Op,
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
    /// How the bytes move: messages, or RDMA puts or gets into a buffer the server publishes.
    #[arg(long, value_enum, default_value_t = Op::Stream)]
    op: Op,
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
    /// Print JSON (results and every input of the run) instead of a table.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV, one line per size, instead of a table.
    #[arg(long)]
    csv: bool,
    /// Ping-pong iterations before the measured ones (default: a tenth of them).
    #[arg(long)]
    warmup: Option<u64>,
    /// Pin the measuring thread to this CPU (like ucx_perftest -c), for steadier numbers (in
    /// `local` mode only the client thread; the server thread runs where the system puts it).
    #[arg(long)]
    cpu: Option<usize>,
    /// Give up after this many seconds without progress.
    #[arg(long, default_value_t = 30.0, value_parser = vmi_core::params::parse_seconds)]
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
            op: self.op,
            sizes: self.sizes.0.clone(),
            fragments: self.fragments.max(1),
            test: self.test,
            iters: self.iters,
            messages: self.messages,
            window: self.window,
            quick: self.quick,
            progress: !self.json && !self.csv,
            warmup: self.warmup,
        }
    }

    /// Pins this thread to `--cpu`, if given.
    fn pin(&self) -> Result<(), String> {
        let Some(cpu) = self.cpu else {
            return Ok(());
        };
        if cpu >= rustix::thread::CpuSet::MAX_CPU {
            return Err(format!(
                "--cpu {cpu}: CPU numbers go up to {}",
                rustix::thread::CpuSet::MAX_CPU - 1
            ));
        }
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set).map_err(|e| {
            format!("--cpu {cpu}: cannot pin to that CPU: {e} (see nproc for the CPUs there are)")
        })?;
        Ok(())
    }

    fn report(&self, tool: &str, spec: Option<String>, results: Vec<SizeResult>) -> Report {
        Report {
            tool: tool.into(),
            spec,
            inputs: Inputs::of(&self.sweep(), self.cpu),
            results,
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

fn output(report: &Report, json: bool, csv: bool) {
    if csv {
        print!("{}", report.csv());
    } else if json {
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
            sweep.pin()?;
            let vmi = Vmi::with_spec(spec, &key).map_err(|e| e.to_string())?;
            let mut client = PerfClient::connect(
                vmi,
                &host,
                &server_key,
                Duration::from_secs_f64(sweep.timeout),
            )?;
            let results = client.run(&sweep.sweep())?;
            client.close();
            output(&sweep.report("vmi", name, results), sweep.json, sweep.csv);
            Ok(())
        }
        Mode::Local { sweep } => {
            let spec = sweep.spec()?;
            let name = spec_name(&spec);
            let results = run_local(
                spec,
                &sweep.sweep(),
                Duration::from_secs_f64(sweep.timeout),
                &|| sweep.pin(),
            )?;
            output(&sweep.report("vmi", name, results), sweep.json, sweep.csv);
            Ok(())
        }
        Mode::Compare {
            sizes,
            quick,
            no_install,
            out,
            tcp_spec,
            shm_spec,
            rounds,
            op,
        } => {
            use vmi_tools::compare;
            let opts = compare::Options {
                sizes: sizes.0,
                quick,
                install: !no_install,
                out: out.clone(),
                tcp_spec,
                shm_spec,
                rounds,
                op,
            };
            let c = compare::run(&opts);
            std::fs::create_dir_all(&out)
                .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
            let mut text = c.table();
            text.push_str("\ntargets:\n");
            for t in c.targets() {
                text.push_str(&format!("  {t}\n"));
            }
            print!("{text}");
            let write = |name: &str, data: String| {
                std::fs::write(out.join(name), data)
                    .map_err(|e| format!("cannot write {}: {e}", out.join(name).display()))
            };
            write("compare.txt", text.clone())?;
            write(
                "compare.json",
                serde_json::to_string_pretty(&c).expect("serialisable"),
            )?;
            c.plot(&out.join("compare.svg"))?;
            println!(
                "\nwrote {0}/compare.txt, {0}/compare.json, {0}/compare.svg",
                out.display()
            );
            Ok(())
        }
        Mode::Raw { sweep } => {
            sweep.pin()?;
            let results =
                raw_sweep(&sweep.sweep()).map_err(|e| format!("raw socket run failed: {e}"))?;
            output(
                &sweep.report("raw-tcp", None, results),
                sweep.json,
                sweep.csv,
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
