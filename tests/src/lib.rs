//! Support for vmi's integration tests: locating the built binaries and device libraries,
//! child processes that are killed when the test ends, unique keys, seeded randomness, and
//! small test devices for the engine tests.
#![allow(missing_docs)]

pub mod devices;
pub mod harness;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// The cargo target profile directory the test binary runs from (e.g. target/debug).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// Builds the workspace's binaries and device libraries once per test process, so tests can
/// run them even under a plain `cargo test -p vmi-tests`.
pub fn ensure_built() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Always ask cargo: it is a no-op when everything is fresh, and stale shared objects
        // (a test run with -p vmi-tests does not rebuild cdylibs) would fail the ABI check.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let release = target_dir().file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--workspace", "--bins", "--lib"])
            .current_dir(root());
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --workspace failed; build the workspace first"
        );
    });
}

/// Path of a built binary.
pub fn bin(name: &str) -> PathBuf {
    ensure_built();
    target_dir().join(name)
}

/// Path of a built device library.
pub fn device_lib(type_name: &str) -> PathBuf {
    ensure_built();
    target_dir().join(format!("libvmi_{type_name}.so"))
}

pub use vmi_conformance::pair::unique_key;
pub use vmi_conformance::rng::Rng;

/// A child process that is killed when dropped, with its output collected.
pub struct Proc {
    pub name: String,
    child: Child,
    output: Arc<Mutex<String>>,
    /// The threads reading its stdout and stderr; they end when the pipes close.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    /// Starts `program` with `args` and `VMI_SPECFILE=spec`.
    pub fn spawn(program: &str, args: &[&str], spec: &Path, env: &[(&str, &str)]) -> Proc {
        Proc::spawn_with(program, args, spec, env, |_| {})
    }

    /// As [`Proc::spawn`], letting `setup` adjust the command first (limits, user).
    pub fn spawn_with(
        program: &str,
        args: &[&str],
        spec: &Path,
        env: &[(&str, &str)],
        setup: impl FnOnce(&mut Command),
    ) -> Proc {
        let mut cmd = Command::new(bin(program));
        cmd.args(args).env("VMI_SPECFILE", spec);
        for (k, v) in env {
            cmd.env(k, v);
        }
        setup(&mut cmd);
        Proc::spawn_command(program, cmd)
    }

    /// Starts a prepared command (any program), collecting its output; `VMI_KEY` is removed
    /// and `VMI_LOG=info` set unless the command sets them (or the test's environment sets
    /// `VMI_LOG`).
    pub fn spawn_command(program: &str, mut cmd: Command) -> Proc {
        if !cmd.get_envs().any(|(k, _)| k == "VMI_KEY") {
            cmd.env_remove("VMI_KEY");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let log_set = cmd.get_envs().any(|(k, _)| k == "VMI_LOG");
        if !log_set && std::env::var_os("VMI_LOG").is_none() {
            cmd.env("VMI_LOG", "info");
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = output.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            }));
        }
        Proc {
            name: program.to_string(),
            child,
            output,
            readers,
        }
    }

    /// Everything printed so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the output contains `needle`; panics with the output after `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let out = self.output();
            if out.contains(needle) {
                return out;
            }
            assert!(
                start.elapsed() < timeout,
                "{} did not print '{needle}' within {timeout:?}; output:\n{out}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for exit; kills the process and panics after `timeout`. Returns (success, output).
    pub fn finish(mut self, timeout: Duration) -> (bool, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.drain();
                return (status.success(), self.output());
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not exit within {timeout:?}; output:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the reader threads to take the last of the output: they end at the pipes'
    /// end of file, which comes with the exit (a fixed pause lost the output of a process
    /// that exited on a loaded machine). Bounded, in case a child of the process still holds
    /// a pipe.
    fn drain(&mut self) {
        let start = Instant::now();
        while self.readers.iter().any(|r| !r.is_finished())
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        for r in std::mem::take(&mut self.readers) {
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.drain();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique_key(prefix));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A specfile with one transport on both chains and `filters` (type names) on top.
pub fn spec_text(transport: &str, filters: &[&str], transport_attrs: &str) -> String {
    let mut s = String::from("<vmi>\n");
    for f in filters {
        s.push_str(&format!("  <device name=\"{f}\"/>\n"));
    }
    s.push_str(&format!(
        "  <device name=\"{transport}\" {transport_attrs}/>\n"
    ));
    s.push_str("  <chain name=\"send\">");
    for f in filters {
        s.push_str(&format!("<use device=\"{f}\"/>"));
    }
    s.push_str(&format!("<use device=\"{transport}\"/></chain>\n"));
    s.push_str(&format!(
        "  <chain name=\"receive\"><use device=\"{transport}\"/>"
    ));
    for f in filters.iter().rev() {
        s.push_str(&format!("<use device=\"{f}\"/>"));
    }
    s.push_str("</chain>\n</vmi>\n");
    s
}

/// A vmi instance with key `key` over one TCP transport listening on 127.0.0.1 at a port
/// that was free a moment ago, and that port: for tests whose raw-socket peer must know where
/// to connect.
pub fn tcp_on_free_port(key: &str) -> (vmi_core::Vmi, u16) {
    tcp_on_free_port_with(key, &[])
}

/// A TCP data frame as the tcp transport writes it: the header (`end`, no filter flags, the
/// length) and `payload`.
pub fn tcp_frame(end: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vmi_tcp::wire::FrameRepr {
        end,
        filter_flags: 0,
        len: payload.len() as u32,
    }
    .emit()
    .to_vec();
    f.extend_from_slice(payload);
    f
}

/// A raw TCP peer of the vmi in this process listening on `port` under `key`: connects,
/// sends a hello from `name`, and polls `vmi` (with `h`) until the answer accepts it.
/// Returns the blocking socket, its answer read, for the test to write frames into.
pub fn tcp_raw_peer(
    vmi: &mut vmi_core::Vmi,
    h: &mut dyn vmi_core::Handler,
    port: u16,
    key: &str,
    name: &str,
) -> std::net::TcpStream {
    use std::io::{Read, Write};
    use vmi_tcp::wire::{ANSWER_LEN, AnswerRepr, AnswerStatus, HelloRepr};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&HelloRepr::emit(name, key, "send=;recv=", b""))
        .unwrap();
    s.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    loop {
        vmi.poll(h);
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => panic!("{name}: closed before the answer"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{name}: {e}"),
        }
        if got.len() >= ANSWER_LEN {
            let a = AnswerRepr::parse(got[..ANSWER_LEN].try_into().unwrap(), 1 << 20).unwrap();
            assert_eq!(a.status, AnswerStatus::Accept, "{name}");
            break;
        }
        assert!(Instant::now() < deadline, "{name}: no answer");
    }
    s.set_nonblocking(false).unwrap();
    s
}

/// The error with which a vmi over the tcp transport refuses to start when tcp parameter
/// `param` is `value` (given through its environment override, `VMI_TCP_<PARAM>`). Panics
/// if it starts.
pub fn tcp_start_error(param: &str, value: &str) -> String {
    register_all();
    let sp = vmi_core::spec::Spec::parse_str(&spec_text("tcp", &[], ""), "x.xml").expect("spec");
    let var = format!("VMI_TCP_{}", param.to_ascii_uppercase());
    let env = |v: &str| (v == var).then(|| value.to_string());
    let started = vmi_core::Vmi::with_spec_options(
        sp,
        &unique_key("refused"),
        vmi_core::Options::default(),
        &env,
    );
    match started {
        Ok(_) => panic!("tcp parameter {param} = {value} was taken"),
        Err(e) => e.to_string(),
    }
}

/// Serves `vmi`'s peers until `done(h)`: busy polling, or when `sleeping` in `wait` 200 ms
/// at a time. Fails (naming `what`) as soon as `lost(h)` says a peer was dropped, and after
/// 60 s. For tests of peers that stream slowly, which must be heard however the host waits.
pub fn serve_until<H: vmi_core::Handler>(
    vmi: &mut vmi_core::Vmi,
    h: &mut H,
    sleeping: bool,
    what: &str,
    done: impl Fn(&H) -> bool,
    lost: impl Fn(&H) -> Option<String>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(h) {
        if sleeping {
            vmi.wait(h, Duration::from_millis(200));
        } else {
            vmi.poll(h);
        }
        if let Some(why) = lost(h) {
            panic!("sleeping {sleeping}: the slow peer was dropped: {why}");
        }
        assert!(Instant::now() < deadline, "sleeping {sleeping}: no {what}");
    }
}

/// Sends `data` on `conn` as one fragment with token `token`: in one buffer, or when
/// `three` in three pieces (a third, half the rest, the rest), so that whatever the transport
/// cuts the fragment into may span pieces.
pub fn send_in_pieces(
    vmi: &mut vmi_core::Vmi,
    conn: vmi_core::ConnId,
    data: &[u8],
    token: u64,
    three: bool,
) {
    use vmi_core::{Buffer, Operations};
    if three {
        let (x, rest) = data.split_at(data.len() / 3);
        let (y, z) = rest.split_at(rest.len() / 2);
        let pieces = [x, y, z].map(|v| Buffer::from_vec(v.to_vec()));
        vmi.send(conn, pieces, token).expect("send");
    } else {
        vmi.send(conn, [Buffer::from_vec(data.to_vec())], token)
            .expect("send");
    }
}

/// [`tcp_on_free_port`] with more tcp parameters (`(name, value)` pairs).
///
/// The port is probed free and then bound by the transport, so another test running in
/// parallel can take it in between: a start that fails is tried again on a newly probed
/// port, up to ten times, before the last error is reported.
pub fn tcp_on_free_port_with(key: &str, params: &[(&str, &str)]) -> (vmi_core::Vmi, u16) {
    register_all();
    let mut last = None;
    for _ in 0..10 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let text = format!(
            r#"<vmi><device name="tcp"><param name="listen_addr" value="127.0.0.1"/><param name="port" value="{port}"/>{extra}</device>
  <chain name="send"><use device="tcp"/></chain><chain name="receive"><use device="tcp"/></chain></vmi>"#,
            extra = params
                .iter()
                .map(|(n, v)| format!(r#"<param name="{n}" value="{v}"/>"#))
                .collect::<String>()
        );
        let spec = vmi_core::spec::Spec::parse_str(&text, "tcp.xml").expect("spec");
        match vmi_core::Vmi::with_spec(spec, key) {
            Ok(vmi) => return (vmi, port),
            Err(e) => last = Some(e),
        }
    }
    panic!(
        "start on a free port, ten tries: {:?}",
        last.expect("ten tries")
    )
}

/// Registers every device of this workspace statically (idempotent).
pub fn register_all() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = env_logger::Builder::from_env(env_logger::Env::new().filter_or("VMI_LOG", "warn"))
            .is_test(true)
            .try_init();
        vmi_loopback::register_static();
        vmi_skeleton::register_static();
        vmi_tcp::register_static();
        vmi_crc::register_static();
        vmi_compress::register_static();
        vmi_fault::register_static();
        vmi_trace::register_static();
        vmi_shmem::register_static();
        vmi_verbs::register_static();
        devices::register();
    });
}
