//! The C API end to end, as a C user meets it: vmi is installed into a temporary prefix, C
//! programs are built against the installed `vmi.h` and libvmi through pkg-config (shared,
//! and statically with `vmi-static`), and they run from a directory outside the source tree
//! with no `LD_LIBRARY_PATH` or `VMI_DEVICE_PATH`: the installed programs and libvmi find
//! the installed devices by themselves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vmi_tests::{Proc, TempDir, ensure_built, root, target_dir, unique_key};

const T: Duration = Duration::from_secs(60);

struct Installed {
    _dir: TempDir,
    prefix: PathBuf,
    work: PathBuf,
}

impl Installed {
    fn new() -> Installed {
        ensure_built();
        let dir = TempDir::new("vmi-install");
        let prefix = dir.path().join("prefix");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).expect("work dir");
        let profile = target_dir()
            .file_name()
            .expect("profile")
            .to_string_lossy()
            .into_owned();
        let out = Command::new(root().join("install.sh"))
            .args(["--prefix", prefix.to_str().expect("utf-8 path")])
            .args(["--profile", &profile, "--no-build"])
            .env("CARGO_TARGET_DIR", target_dir().parent().expect("target"))
            .output()
            .expect("run install.sh");
        assert!(
            out.status.success(),
            "install.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Installed {
            _dir: dir,
            prefix,
            work,
        }
    }

    fn spec(&self, name: &str) -> PathBuf {
        self.prefix.join("share/vmi/specfiles").join(name)
    }

    /// Builds a C program with the installed header and library, through pkg-config.
    fn cc(&self, source: &Path, package: &str) -> PathBuf {
        let pc = Command::new("pkg-config")
            .args(["--cflags", "--libs", package])
            .env("PKG_CONFIG_PATH", self.prefix.join("lib/pkgconfig"))
            .output()
            .expect(
                "pkg-config is needed to build C programs against vmi (apt-get install pkg-config)",
            );
        assert!(pc.status.success(), "pkg-config {package} failed");
        let flags = String::from_utf8(pc.stdout).expect("utf-8 flags");
        assert!(
            !flags.contains(root().to_str().expect("utf-8 root")),
            "the flags name the source tree: {flags}"
        );
        let stem = source.file_stem().expect("stem").to_string_lossy();
        let exe = self.work.join(format!("{stem}-{package}"));
        let out = Command::new("cc")
            .args(["-Wall", "-Wextra", "-o"])
            .arg(&exe)
            .arg(source)
            .args(flags.split_whitespace())
            .output()
            .expect("the system C compiler (cc) is needed");
        assert!(
            out.status.success(),
            "cc {} failed:\n{}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        exe
    }

    /// Starts an installed or freshly built program from the work directory, with nothing
    /// pointing into the build tree.
    fn run(&self, exe: &Path, args: &[&str], spec: &str) -> Proc {
        self.run_env(exe, args, spec, &[])
    }

    /// As `run`, with more environment.
    fn run_env(&self, exe: &Path, args: &[&str], spec: &str, env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .current_dir(&self.work)
            .env("VMI_SPECFILE", self.spec(spec))
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("VMI_DEVICE_PATH")
            .env_remove("VMI_DISABLE_REGCACHE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn_command(&exe.file_name().expect("name").to_string_lossy(), cmd)
    }
}

/// The line the last transport of a shipped spec logs when it listens.
fn listening(key: &str) -> String {
    format!("tcp: key '{key}' listening")
}

#[test]
fn installed_c_programs_and_tools_run_from_the_prefix() {
    let inst = Installed::new();
    let examples = inst.prefix.join("share/vmi/examples");
    let vmisend = inst.cc(&examples.join("vmisend.c"), "vmi");
    let vmirecv = inst.cc(&examples.join("vmirecv.c"), "vmi");
    let check_src = root().join("tests/c/capi/capi_check.c");
    let check = inst.cc(&check_src, "vmi");
    let rdma = inst.cc(&root().join("tests/c/capi/rdma_check.c"), "vmi");
    let timeouts = inst.cc(&root().join("tests/c/capi/timeout_check.c"), "vmi");
    let cache = inst.cc(&root().join("tests/c/capi/cache_check.c"), "vmi");

    // VMI 2.1's registration cache: found again, never served for other memory mapped at
    // the same address; and with the cache switched off, every registration for one use.
    let run = inst.run_env(&cache, &[&unique_key("ccache")], "tcp.xml", &[]);
    let (ok, out) = run.finish(T);
    assert!(ok && out.contains("CACHE OK"), "cache check:\n{out}");
    assert!(
        out.contains("vmi registration cache:"),
        "VMI_Cache_Stats prints:\n{out}"
    );
    if !out.contains("caching=1") {
        println!(
            "NOTE: the registration cache does not cache here (memory cannot be watched):\n{out}"
        );
    }
    let run = inst.run_env(
        &cache,
        &[&unique_key("ccache")],
        "tcp.xml",
        &[("VMI_DISABLE_REGCACHE", "1")],
    );
    let (ok, out) = run.finish(T);
    assert!(
        ok && out.contains("CACHE OK caching=0") && out.contains("VMI_DISABLE_REGCACHE=1"),
        "cache check with the cache off:\n{out}"
    );
    let check_static = inst.cc(&check_src, "vmi-static");
    let ldd = Command::new("ldd").arg(&check_static).output();
    if let Ok(ldd) = ldd {
        let text = String::from_utf8_lossy(&ldd.stdout);
        assert!(
            !text.contains("libvmi"),
            "the static program loads libvmi:\n{text}"
        );
    }

    for spec in ["tcp.xml", "shmem-tcp.xml"] {
        // The tutorial's programs, unchanged: the receiver prints each fragment's text.
        let rkey = unique_key("crecv");
        let recv = inst.run(&vmirecv, &[&rkey], spec);
        recv.wait_for(&listening(&rkey), T);
        let send = inst.run(&vmisend, &[&unique_key("csend"), &rkey, "localhost"], spec);
        let (ok, out) = send.finish(T);
        assert!(ok, "{spec}: vmisend failed:\n{out}");
        let (ok, out) = recv.finish(T);
        assert!(ok, "{spec}: vmirecv failed:\n{out}");
        let lines = out
            .lines()
            .filter(|l| l.starts_with("All work and no play makes Jack a dull boy #1.  "))
            .count();
        assert_eq!(lines, 4, "{spec}: expected 4 fragments of text:\n{out}");

        // Connect data, rejection, gather, inline, a stream, a grabbed slab, a reply sent
        // from a callback, bad handles: a static server and shared clients.
        let skey = unique_key("cserver");
        let server = inst.run(&check_static, &["server", &skey], spec);
        server.wait_for(&listening(&skey), T);
        let reject = inst.run(
            &check,
            &["reject", &unique_key("creject"), &skey, "localhost"],
            spec,
        );
        let (ok, out) = reject.finish(T);
        assert!(
            ok && out.contains("REJECTED OK"),
            "{spec}: reject client:\n{out}"
        );
        let client = inst.run(
            &check,
            &["client", &unique_key("cclient"), &skey, "localhost"],
            spec,
        );
        let (ok, out) = client.finish(T);
        assert!(
            ok && out.contains("CLIENT OK")
                && out.contains("LATENCY OK")
                && out.contains("POOLS OK"),
            "{spec}: client:\n{out}"
        );
        let (ok, out) = server.finish(T);
        assert!(ok, "{spec}: server failed:\n{out}");
        for line in [
            "REFUSED cookie 7",
            "MSG 1: alpha|beta|gamma",
            "MSG 2: inline-one",
            "GRABBED OK",
            "MSG 3: s1s2s3",
            "MSG 4: ping",
            "PEER CLOSED",
            "SERVER OK",
        ] {
            assert!(
                out.contains(line),
                "{spec}: server did not print '{line}':\n{out}"
            );
        }

        // VMI 2.1's RDMA calls from C: publish, put with a gather list, get with a scatter
        // list, notifications, misuse refused (one-sided over shared memory, messages over
        // TCP).
        let skey = unique_key("crdmas");
        let server = inst.run(&rdma, &["server", &skey], spec);
        server.wait_for(&listening(&skey), T);
        let client = inst.run(
            &rdma,
            &["client", &unique_key("crdmac"), &skey, "localhost"],
            spec,
        );
        let (ok, out) = client.finish(T);
        assert!(
            ok && out.contains("CLIENT OK"),
            "{spec}: rdma client:\n{out}"
        );
        let (ok, out) = server.finish(T);
        assert!(
            ok && out.contains("SERVER OK"),
            "{spec}: rdma server:\n{out}"
        );

        // vmi's timeouts and abort from C: an abort, and a send timeout against a server
        // that stops reading.
        let skey = unique_key("ctos");
        let server = inst.run(&timeouts, &["server", &skey], spec);
        server.wait_for(&listening(&skey), T);
        // Connects keep trying for a while: on a loaded machine the server may answer the
        // second connect late, while it still handles the first one's abort.
        let client = inst.run_env(
            &timeouts,
            &["client", &unique_key("ctoc"), &skey, "localhost"],
            spec,
            &[("VMI_CONNECT_TIMEOUT", "20")],
        );
        let (ok, out) = client.finish(T);
        if !(ok && out.contains("CLIENT OK")) {
            let (_, server_out) = server.finish(Duration::from_secs(5));
            panic!("{spec}: timeout client:\n{out}\nserver:\n{server_out}");
        }
        let (ok, out) = server.finish(T);
        assert!(
            ok && out.contains("SERVER OK"),
            "{spec}: timeout server:\n{out}"
        );
    }

    // A specfile of the user's own in the installed specfile directory names its library
    // relatively: it resolves to the installed devices. And a program linked without the
    // rpath finds libvmi through LD_LIBRARY_PATH.
    let own = inst.prefix.join("share/vmi/specfiles/own.xml");
    std::fs::write(
        &own,
        r#"<vmi version="1"><device name="t" type="tcp" library="libvmi_tcp.so"/><chain name="send"><use device="t"/></chain><chain name="receive"><use device="t"/></chain></vmi>"#,
    )
    .expect("write a specfile");
    let plain = inst.work.join("vmirecv-plain");
    let out = Command::new("cc")
        .arg("-o")
        .arg(&plain)
        .arg(examples.join("vmirecv.c"))
        .arg(format!("-I{}", inst.prefix.join("include").display()))
        .arg(format!("-L{}", inst.prefix.join("lib").display()))
        .arg("-lvmi")
        .output()
        .expect("cc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rkey = unique_key("plain");
    let mut cmd = Command::new(&plain);
    cmd.arg(&rkey)
        .current_dir(&inst.work)
        .env("VMI_SPECFILE", &own)
        .env("LD_LIBRARY_PATH", inst.prefix.join("lib"))
        .env_remove("VMI_DEVICE_PATH");
    let recv = Proc::spawn_command("vmirecv-plain", cmd);
    recv.wait_for(&format!("tcp: key '{rkey}' listening"), T);
    let send = inst.run(
        &vmisend,
        &[&unique_key("csend"), &rkey, "localhost"],
        "own.xml",
    );
    let (ok, out) = send.finish(T);
    assert!(ok, "vmisend over own.xml:\n{out}");
    let (ok, out) = recv.finish(T);
    assert!(ok && out.contains("All work and no play"), "{out}");

    // The installed Rust tools find the installed devices too.
    let bin = inst.prefix.join("bin");
    let mut cmd = Command::new(bin.join("vmi-info"));
    cmd.current_dir(&inst.work)
        .env_remove("VMI_SPECFILE")
        .env_remove("VMI_DEVICE_PATH");
    let (ok, out) = Proc::spawn_command("vmi-info", cmd).finish(T);
    assert!(ok, "{out}");
    let installed = inst.prefix.join("lib/vmi/libvmi_tcp.so");
    assert!(
        out.contains(&format!("library       {}", installed.display())),
        "the installed vmi-info lists the installed devices:\n{out}"
    );
    let rkey = unique_key("rrecv");
    let recv = inst.run(&bin.join("vmirecv"), &[&rkey, "-n", "1"], "shmem.xml");
    recv.wait_for("waiting for connections", T);
    let send = inst.run(
        &bin.join("vmisend"),
        &[&unique_key("rsend"), &rkey, "localhost", "-n", "1"],
        "shmem.xml",
    );
    let (ok, out) = send.finish(T);
    assert!(ok, "installed vmisend failed:\n{out}");
    let (ok, out) = recv.finish(T);
    assert!(ok, "installed vmirecv failed:\n{out}");
}

#[test]
fn a_c_program_gets_clear_errors() {
    let inst = Installed::new();
    let check = inst.cc(&root().join("tests/c/capi/capi_check.c"), "vmi");
    // No peer: the connect fails with a reason, not a hang or a crash.
    let client = inst.run(
        &check,
        &[
            "client",
            &unique_key("lonely"),
            &unique_key("nobody"),
            "localhost",
        ],
        "tcp.xml",
    );
    let (ok, out) = client.finish(T);
    assert!(!ok, "a client with no server must fail:\n{out}");
    assert!(out.contains("expected acceptance, got 3"), "{out}");
    assert!(
        out.contains("last error: VMI_Connection_Issue:"),
        "the reason is missing:\n{out}"
    );
    // A missing specfile names the variable to set.
    let mut cmd = Command::new(&check);
    cmd.args(["server", "k"])
        .current_dir(&inst.work)
        .env_remove("VMI_SPECFILE");
    let (ok, out) = Proc::spawn_command("capi_check", cmd).finish(T);
    assert!(!ok, "{out}");
    assert!(out.contains("VMI_SPECFILE"), "{out}");
}
