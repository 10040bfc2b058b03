//! vmi-info and vmi-perf as users run them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use vmi_tests::{Proc, TempDir, root, unique_key};

const T: Duration = Duration::from_secs(120);

fn xml_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    v.sort();
    v
}

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    // VMI_SPECFILE is given per call through --spec; point the variable at nothing useful.
    let mut env = env.to_vec();
    env.push(("VMI_LOG", "warn"));
    Proc::spawn(
        program,
        args,
        Path::new("/nonexistent-vmi-specfile.xml"),
        &env,
    )
    .finish(T)
}

fn json(out: &str) -> Value {
    // The JSON document starts on its own line; log lines (stderr) may come before it.
    let start = out
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .chain([0])
        .filter(|&i| out[i..].starts_with(['{', '[']))
        .min()
        .unwrap_or_else(|| panic!("no JSON in: {out}"));
    let end = out.rfind(['}', ']']).unwrap();
    serde_json::from_str(&out[start..=end]).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

#[test]
fn vmi_info_describes_every_shipped_specfile() {
    for f in xml_files("specfiles") {
        let spec = f.to_str().unwrap();
        let (ok, out) = run("vmi-info", &["--spec", spec], &[]);
        assert!(ok, "{spec}: {out}");
        assert!(
            out.contains("send chain (application -> wire):") && out.contains("receive chain"),
            "{out}"
        );
        if spec.ends_with("verbs.xml") {
            // Usable only with an RDMA NIC; elsewhere vmi-info says precisely why not.
            assert!(
                out.contains("usable here   yes")
                    || [
                        "no RDMA device found (libibverbs: 0 devices)",
                        "libibverbs could not list RDMA devices",
                        "libibverbs.so.1 could not be loaded",
                    ]
                    .iter()
                    .any(|why| out
                        .contains("usable here   NO: device 'verbs'")
                        && out.contains(why)),
                "{spec}: {out}"
            );
        } else {
            assert!(
                out.contains("usable here   yes"),
                "{spec}: the transport runs here: {out}"
            );
        }
        assert!(
            out.contains("[default]"),
            "parameters show their source: {out}"
        );
        // Each transport says how RDMA moves over it: shared memory one-sided, the rest as
        // messages.
        if spec.contains("shmem") || spec.contains("verbs") {
            assert!(out.contains("  RDMA          one-sided"), "{spec}: {out}");
        }
        if spec.contains("tcp") || spec.contains("loopback") {
            assert!(out.contains("  RDMA          as messages"), "{spec}: {out}");
        }
        let (ok, out) = run("vmi-info", &["--spec", spec, "--json"], &[]);
        assert!(ok);
        let v = json(&out);
        assert_eq!(v["valid"], true);
        let devices = v["devices"].as_array().unwrap();
        assert!(!devices.is_empty());
        for d in devices {
            assert!(d["library"].as_str().unwrap().ends_with(".so"), "{d}");
            assert_eq!(d["abi"], format!("1.{}", vmi_core::abi::VMI_ABI_MINOR));
            // A transport that cannot start here (verbs without a NIC) has no capabilities.
            if d["usable"] != false {
                assert!(
                    d["capabilities"]["max_fragment"].as_u64().unwrap() > 0,
                    "{d}"
                );
            }
            for p in d["params"].as_array().unwrap() {
                assert!(p["env_var"].as_str().unwrap().starts_with("VMI_"));
            }
        }
    }
}

#[test]
fn vmi_info_reports_every_invalid_specfile_exactly() {
    for f in xml_files("tests/specs/invalid") {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect = text
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("<!-- expect: ")
            .trim_end_matches(" -->")
            .to_string();
        let spec = f.to_str().unwrap();
        let (ok, out) = run("vmi-info", &["--spec", spec], &[]);
        assert!(!ok, "{spec}: must fail");
        let want = if expect.starts_with(|c: char| c.is_ascii_digit()) {
            format!("{spec}:{expect}")
        } else {
            expect.clone()
        };
        assert!(
            out.contains("INVALID: ") && out.contains(&want),
            "{spec}: want '{want}' in:\n{out}"
        );
        let (ok, out) = run("vmi-info", &["--spec", spec, "--json"], &[]);
        assert!(!ok);
        let v = json(&out);
        assert_eq!(v["valid"], false);
        if expect.starts_with(|c: char| c.is_ascii_digit()) {
            let mut lc = expect.split(':');
            let (line, col): (u64, u64) = (
                lc.next().unwrap().parse().unwrap(),
                lc.next().unwrap().parse().unwrap(),
            );
            assert_eq!(v["error"]["location"]["line"], line, "{spec}: {v}");
            assert_eq!(v["error"]["location"]["column"], col, "{spec}: {v}");
        }
    }
}

#[test]
fn vmi_info_env_lists_variables_and_flags_typos() {
    let spec = root().join("specfiles/tcp-crc.xml");
    let (ok, out) = run(
        "vmi-info",
        &["--env", "--spec", spec.to_str().unwrap()],
        &[("VMI_SPECFLE", "x")],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("VMI_SPECFILE") && out.contains("VMI_DEVICE_PATH"),
        "{out}"
    );
    assert!(
        out.contains("VMI_TCP_CONNECT_TIMEOUT_MS") && out.contains("VMI_CRC_VERIFY"),
        "{out}"
    );
    assert!(
        out.contains("VMI_SPECFLE is set but nothing reads it; did you mean VMI_SPECFILE?"),
        "{out}"
    );
}

fn positive(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    let f = x
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"));
    assert!(f > 0.0 && f.is_finite(), "{path:?} = {f}");
    f
}

fn check_report(v: &Value, sizes: &[u64]) {
    let results = v["results"].as_array().unwrap();
    assert_eq!(
        results
            .iter()
            .map(|r| r["size"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        sizes
    );
    for r in results {
        let mean = positive(r, &["latency", "mean_us"]);
        let median = positive(r, &["latency", "median_us"]);
        let p99 = positive(r, &["latency", "p99_us"]);
        assert!(median <= p99 && mean > 0.0, "{r}");
        positive(r, &["bandwidth", "mb_per_s"]);
        positive(r, &["bandwidth", "msg_per_s"]);
    }
}

#[test]
fn vmi_perf_server_and_client_over_tcp() {
    let spec = root().join("specfiles/tcp.xml");
    let key = unique_key("perf-srv");
    let quiet = [("VMI_LOG", "warn")];
    let server = Proc::spawn(
        "vmi-perf",
        &["server", &key, "--clients", "1", "--timeout", "100"],
        &spec,
        &quiet,
    );
    server.wait_for("ready", T);
    let ckey = unique_key("perf-cli");
    let (ok, out) = Proc::spawn(
        "vmi-perf",
        &[
            "client",
            &ckey,
            &key,
            "localhost",
            "--quick",
            "--sizes",
            "8,4k",
            "--fragments",
            "2",
            "--json",
        ],
        &spec,
        &quiet,
    )
    .finish(T);
    assert!(ok, "{out}");
    check_report(&json(&out), &[8, 4096]);
    let (ok, out) = server.finish(T);
    assert!(ok, "the server exits after its client: {out}");
}

#[test]
fn vmi_perf_local_over_loopback_and_the_raw_floor() {
    let spec = root().join("specfiles/loopback.xml");
    let (ok, out) = run(
        "vmi-perf",
        &[
            "local",
            "--spec",
            spec.to_str().unwrap(),
            "--quick",
            "--sizes",
            "8,64k",
            "--json",
        ],
        &[],
    );
    assert!(ok, "{out}");
    let v = json(&out);
    assert_eq!(v["tool"], "vmi");
    check_report(&v, &[8, 65536]);
    let (ok, out) = run(
        "vmi-perf",
        &["raw", "--quick", "--sizes", "8", "--json"],
        &[],
    );
    assert!(ok, "{out}");
    check_report(&json(&out), &[8]);
    let (ok, out) = run(
        "vmi-perf",
        &[
            "local",
            "--spec",
            spec.to_str().unwrap(),
            "--quick",
            "--sizes",
            "8",
        ],
        &[],
    );
    assert!(
        ok && out.contains("median (us)") && out.contains("max (us)") && out.contains("8 B"),
        "table output: {out}"
    );
    // Every input of the run is recorded, min and max beside the rest.
    assert!(
        v["inputs"]["host"].as_str().is_some_and(|h| !h.is_empty())
            && v["inputs"]["window"] == 16
            && v["inputs"]["version"].is_string()
            && v["inputs"]["started_unix_s"].as_u64().unwrap_or(0) > 0,
        "{v}"
    );
    let lat = &v["results"][0]["latency"];
    assert!(
        lat["min_us"].as_f64().unwrap() <= lat["median_us"].as_f64().unwrap()
            && lat["median_us"].as_f64().unwrap() <= lat["max_us"].as_f64().unwrap(),
        "{lat}"
    );
    // Send/receive/reply round trips, reported as latency.
    let (ok, out) = run(
        "vmi-perf",
        &[
            "local",
            "--spec",
            spec.to_str().unwrap(),
            "--quick",
            "--sizes",
            "8,4k",
            "--test",
            "request",
            "--json",
        ],
        &[],
    );
    assert!(ok, "{out}");
    let r = json(&out);
    assert!(
        r["results"][1]["latency"]["median_us"].as_f64().unwrap() > 0.0
            && r["results"][1]["bandwidth"].is_null(),
        "{r}"
    );
    // CSV, pinning and an explicit warm-up.
    let (ok, out) = run(
        "vmi-perf",
        &[
            "local",
            "--spec",
            spec.to_str().unwrap(),
            "--quick",
            "--sizes",
            "8,4k",
            "--csv",
            "--cpu",
            "0",
            "--warmup",
            "5",
        ],
        &[],
    );
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("tool,spec,size,fragments,mean_us") && lines.len() == 3,
        "{out}"
    );
    assert!(
        lines[1].starts_with("vmi,") && lines[2].contains(",4096,1,"),
        "{out}"
    );
    let (ok, out) = run(
        "vmi-perf",
        &["raw", "--quick", "--sizes", "8", "--cpu", "100000"],
        &[],
    );
    assert!(
        !ok && out.contains("--cpu 100000"),
        "a bad CPU is a clear error: {out}"
    );
}

#[test]
fn compare_quick_runs_whatever_peers_are_installed() {
    let dir = TempDir::new("vmi-compare");
    let out_dir = dir.path().to_str().unwrap().to_string();
    let tcp = root().join("specfiles/tcp.xml");
    let (ok, out) = run(
        "vmi-perf",
        &[
            "compare",
            "--quick",
            "--sizes",
            "8",
            "--no-install",
            "--out",
            &out_dir,
            "--tcp-spec",
            tcp.to_str().unwrap(),
            "--rounds",
            "2",
        ],
        &[],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("targets:")
            && out.contains("TCP 8 B latency vs raw floor")
            && out.contains("medians over 2 interleaved round(s)")
            && out.contains("noise:"),
        "{out}"
    );
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("compare.json")).unwrap())
            .unwrap();
    let peers = v["peers"].as_array().unwrap();
    for name in ["vmi tcp", "raw tcp"] {
        let p = peers.iter().find(|p| p["name"] == name).unwrap();
        positive(&p["points"][0], &["latency_us"]);
        assert_eq!(
            p["points"][0]["latency_rounds"].as_array().map(Vec::len),
            Some(2),
            "each round's value is kept: {p}"
        );
    }
    assert_eq!(v["rounds"], 2);
    for p in peers {
        assert!(
            p["skipped"].is_null() || !p["skipped"].as_str().unwrap().is_empty(),
            "a skip says why: {p}"
        );
        if !p["skipped"].is_null() {
            println!("skipped {}: {}", p["name"], p["skipped"]);
        }
    }
    let svg = std::fs::read_to_string(dir.path().join("compare.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("vmi tcp") && svg.contains("vmi-perf compare on"),
        "an SVG plot with a legend and a title naming host and date"
    );
}

/// With no specfile, vmi-info lists every device on the search path with its parameters and
/// whether it is usable here, and prints the configuration as shell assignments.
#[test]
fn vmi_info_without_a_specfile_lists_every_device() {
    let none = |c: &mut std::process::Command| {
        c.env_remove("VMI_SPECFILE");
    };
    // Warnings only: the transports started to see whether they are usable log at info.
    let quiet = [("VMI_LOG", "warn")];
    let p = Proc::spawn_with("vmi-info", &[], Path::new("/unused"), &quiet, none);
    let (ok, out) = p.finish(T);
    assert!(ok, "{out}");
    assert!(out.starts_with("vmi "), "build information first: {out}");
    for line in [
        "tcp 0.1.0 (transport), device ABI 1.",
        "shmem 0.1.0 (transport)",
        "crc 1.0.0 (filter)",
        "compress 1.0.0 (filter)",
        "usable here   yes",
        "(VMI_TCP_PORT)",
    ] {
        assert!(out.contains(line), "missing '{line}':\n{out}");
    }
    let p = Proc::spawn_with("vmi-info", &["--json"], Path::new("/unused"), &quiet, none);
    let (ok, out) = p.finish(T);
    assert!(ok, "{out}");
    let v = json(&out);
    let devices = v["devices"].as_array().expect("devices");
    assert!(
        devices
            .iter()
            .any(|d| d["type_name"] == "tcp" && d["usable"] == true),
        "{v}"
    );

    let (ok, out) = run(
        "vmi-info",
        &[
            "--config",
            "--spec",
            root().join("specfiles/tcp-crc.xml").to_str().unwrap(),
        ],
        &[("VMI_TCP_PORT", "0")],
    );
    assert!(ok, "{out}");
    assert!(out.contains("VMI_CRC_VERIFY='true'  # default"), "{out}");
    assert!(out.contains("VMI_TCP_PORT='0'  # environment"), "{out}");
}

/// A reader that stops early (`vmi-info | head -1`) ends vmi-info quietly, not with a panic
/// about a broken pipe. The pipe is made one page small, so vmi-info (about 6 KB of listing)
/// is still writing when the reader goes.
#[test]
fn vmi_info_piped_into_a_reader_that_stops_early_does_not_panic() {
    use std::io::{BufRead, BufReader};
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};
    let (reader, writer) = std::io::pipe().expect("pipe");
    // SAFETY: fcntl on a pipe descriptor this test owns; F_SETPIPE_SZ only resizes it.
    let sized = unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(sized >= 4096, "F_SETPIPE_SZ failed");
    let child = Command::new(vmi_tests::bin("vmi-info"))
        .env_remove("VMI_SPECFILE")
        .env("VMI_LOG", "warn")
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmi-info");
    let mut first = String::new();
    {
        let mut r = BufReader::with_capacity(64, reader);
        r.read_line(&mut first).expect("read one line");
        // The read end closes here, while vmi-info waits to write the rest.
    }
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(first.starts_with("vmi "), "{first}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "exit {:?}: {err}", out.status);
}

#[test]
fn vmi_info_shows_extra_named_chains() {
    let dir = TempDir::new("vmi-info-chains");
    let path = dir.path().join("named.xml");
    std::fs::write(
        &path,
        r#"<vmi><device name="crc"/><device name="tcp"/>
  <chain name="send"><use device="tcp"/></chain>
  <chain name="receive"><use device="tcp"/></chain>
  <chain name="bulk"><use device="crc"/><use device="tcp"/></chain>
  <route chain="bulk" key="worker-*"/></vmi>"#,
    )
    .unwrap();
    let (ok, out) = run(
        "vmi-info",
        &[
            "--spec",
            path.to_str().unwrap(),
            "--peer",
            "worker-7@10.1.2.3",
        ],
        &[],
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("route to chain 'bulk': peers with key worker-* at host *")
            && out.contains("a connection to 'worker-7' at 10.1.2.3 runs on chain 'bulk'"),
        "{out}"
    );
    assert!(
        out.contains(
            "chain 'bulk' (connections opened with connect_on or chosen by a route): crc -> tcp"
        ),
        "{out}"
    );
    let (ok, out) = run(
        "vmi-info",
        &["--spec", path.to_str().unwrap(), "--json"],
        &[],
    );
    assert!(ok, "{out}");
    let v = json(&out);
    assert_eq!(v["extra_chains"][0]["name"], "bulk", "{v}");
    assert_eq!(v["extra_chains"][0]["devices"][1], "tcp", "{v}");
}

#[test]
fn vmi_info_shows_each_transport_s_eager_and_rendezvous_thresholds_and_their_source() {
    let spec = root().join("specfiles/shmem-tcp.xml");
    let spec = spec.to_str().unwrap();
    let (ok, out) = run("vmi-info", &["--spec", spec], &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("protocols     eager (copied through the ring) below 65536 bytes; rendezvous from 65536 bytes"),
        "{out}"
    );
    assert!(out.contains("protocols     eager for every size"), "{out}");
    // Tuned from the environment: the threshold follows, and its source is shown.
    let var = vmi_core::params::env_var_name("shmem", "single_copy_min");
    let (ok, out) = run("vmi-info", &["--spec", spec], &[(var.as_str(), "4k")]);
    assert!(ok, "{out}");
    assert!(out.contains("rendezvous from 4096 bytes"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("single_copy_min") && l.contains("4096") && l.contains(&var)),
        "the parameter's source: {out}"
    );
}

#[test]
fn vmi_info_shows_the_verbs_eager_limit_on_the_software_nic() {
    let spec = root().join("specfiles/verbs.xml");
    let spec = spec.to_str().unwrap();
    let nic = vmi_core::params::env_var_name("verbs", "nic");
    let (ok, out) = run("vmi-info", &["--spec", spec], &[(nic.as_str(), "sim")]);
    assert!(ok, "{out}");
    assert!(
        out.contains("usable here   yes"),
        "the software NIC runs anywhere: {out}"
    );
    assert!(
        out.contains("up to 8192 bytes (eager_max") && out.contains("RDMA READ"),
        "{out}"
    );
    let eager = vmi_core::params::env_var_name("verbs", "eager_max");
    let (ok, out) = run(
        "vmi-info",
        &["--spec", spec],
        &[(nic.as_str(), "sim"), (eager.as_str(), "2k")],
    );
    assert!(ok, "{out}");
    assert!(out.contains("up to 2048 bytes (eager_max"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("eager_max") && l.contains("2048") && l.contains(&eager)),
        "the parameter's source: {out}"
    );
}
