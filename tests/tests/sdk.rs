//! The device SDK as a third party uses it: a device built outside the workspace, and one
//! written in C, each named in a specfile and loaded by the already-built vmisend/vmirecv.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vmi_tests::{Proc, TempDir, root, target_dir, unique_key};

const T: Duration = Duration::from_secs(120);

/// Runs vmirecv + vmisend with `spec`; returns both outputs.
fn exchange(spec: &Path) -> (String, String) {
    let key = unique_key("sdk-recv");
    let r = Proc::spawn(
        "vmirecv",
        &[&key, "--verify", "-n", "3", "--timeout", "60"],
        spec,
        &[],
    );
    r.wait_for("waiting for connections", T);
    let s = Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &unique_key("sdk-send"),
            &key,
            "localhost",
            "-s",
            "100k",
            "-f",
            "3",
            "-n",
            "3",
        ],
        spec,
        &[],
    );
    let (ok, sout) = s.finish(T);
    assert!(ok, "vmisend: {sout}");
    let (ok, rout) = r.finish(T);
    assert!(ok, "vmirecv: {rout}");
    assert!(rout.contains("received 3 message(s)"), "{rout}");
    (sout, rout)
}

fn write_spec(dir: &Path, filter_type: &str, library: &Path) -> PathBuf {
    let spec = dir.join("spec.xml");
    std::fs::write(
        &spec,
        format!(
            "<vmi>\n  <device name=\"x\" type=\"{filter_type}\" library=\"{}\"/>\n  <device name=\"tcp\"/>\n  <chain name=\"send\"><use device=\"x\"/><use device=\"tcp\"/></chain>\n  <chain name=\"receive\"><use device=\"tcp\"/><use device=\"x\"/></chain>\n</vmi>\n",
            library.display()
        ),
    )
    .unwrap();
    spec
}

#[test]
fn an_out_of_tree_device_loads_into_unchanged_programs() {
    vmi_tests::ensure_built();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = target_dir().join("out-of-tree");
    let out = Command::new(cargo)
        .args(["build", "--quiet", "--manifest-path"])
        .arg(root().join("examples/out-of-tree-device/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        // The nested build keeps to the workspace's disk budget: no debug information.
        .env("CARGO_PROFILE_DEV_DEBUG", "false")
        .env("CARGO_PROFILE_TEST_DEBUG", "false")
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building the out-of-tree device failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = target.join("debug/libvmi_invert.so");
    assert!(lib.is_file(), "{} missing", lib.display());
    let dir = TempDir::new("vmi-sdk");
    let spec = write_spec(dir.path(), "invert", &lib);
    let (sout, rout) = exchange(&spec);
    assert!(
        sout.contains("invert: ready for key"),
        "the sender loaded it: {sout}"
    );
    assert!(
        rout.contains("invert: ready for key"),
        "the receiver loaded it: {rout}"
    );
    assert!(
        rout.contains("verified"),
        "inverted on the wire, restored on receive: {rout}"
    );
}

#[test]
fn an_out_of_tree_device_runs_the_conformance_kit_from_its_own_cargo_test() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "--manifest-path"])
        .arg(root().join("examples/out-of-tree-device/Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir().join("out-of-tree"))
        .env_remove("CARGO_TARGET_DIR")
        // The nested build keeps to the workspace's disk budget: no debug information.
        .env("CARGO_PROFILE_DEV_DEBUG", "false")
        .env("CARGO_PROFILE_TEST_DEBUG", "false")
        .output()
        .expect("run cargo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the device's own tests failed:\n{text}"
    );
    assert!(
        text.contains("test alone_in_the_harness ... ok") && text.contains("test in_chains ... ok"),
        "both conformance tests ran:\n{text}"
    );
}

#[test]
fn a_device_written_in_c_loads_into_unchanged_programs() {
    vmi_tests::ensure_built();
    let dir = TempDir::new("vmi-sdk-c");
    let lib = dir.path().join("libvmi_cfilter.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-I"])
        .arg(root().join("vmi-device/include"))
        .arg(root().join("tests/c/cfilter.c"))
        .arg("-o")
        .arg(&lib)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{cc} failed: {s}"),
        Err(e) => {
            println!("SKIPPED: no C compiler ({e}); install gcc to run this test");
            return;
        }
    }
    let spec = write_spec(dir.path(), "cfilter", &lib);
    let (_, rout) = exchange(&spec);
    assert!(rout.contains("verified"), "{rout}");
}

#[test]
fn device_crates_depend_on_the_sdk_alone() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for dev in [
        "tcp", "shmem", "loopback", "crc", "compress", "fault", "trace", "skeleton",
    ] {
        let out = Command::new(&cargo)
            .args([
                "tree",
                "--offline",
                "-e",
                "normal",
                "--prefix",
                "none",
                "-p",
            ])
            .arg(format!("vmi-{dev}"))
            .current_dir(root())
            .output()
            .expect("run cargo tree");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cargo tree: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("vmi-device "), "{dev} uses the SDK:\n{text}");
        for host_only in ["vmi-core ", "quick-xml ", "libloading "] {
            assert!(
                !text.lines().any(|l| l.starts_with(host_only)),
                "vmi-{dev} links {host_only}(host code) into its shared object:\n{text}"
            );
        }
    }
}
