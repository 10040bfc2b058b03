//! Packaging rules, read from `cargo metadata`: the declared MSRV is at least every locked
//! dependency's own `rust-version` (those this platform builds), and every crate meant for
//! crates.io carries what `cargo package` and users need (metadata, versions on path
//! dependencies).

use std::process::Command;

use serde_json::Value;
use vmi_tests::root;

/// `cargo metadata` for the packages this platform builds (a platform's dependencies are
/// downloaded by its build; another platform's, such as Windows-only crates, may not be on a
/// fresh machine). From the local cache first, and from the registry if it lacks some.
fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let host = host_triple();
    let run = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.args(["metadata", "--format-version", "1", "--locked"])
            .args(["--filter-platform", &host])
            .current_dir(root());
        if offline {
            cmd.arg("--offline");
        }
        cmd.output().expect("run cargo metadata")
    };
    let mut out = run(true);
    if !out.status.success() {
        out = run(false);
    }
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metadata JSON")
}

/// The host's target triple, as rustc names it.
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .trim()
        .to_string()
}

fn version(v: &str) -> (u64, u64, u64) {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

fn workspace_packages(m: &Value) -> Vec<&Value> {
    let members: Vec<&str> = m["workspace_members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|v| v.as_str().expect("id"))
        .collect();
    m["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| members.contains(&p["id"].as_str().expect("id")))
        .collect()
}

#[test]
fn the_declared_msrv_covers_every_dependency() {
    let m = metadata();
    let ours = workspace_packages(&m);
    let declared = ours[0]["rust_version"]
        .as_str()
        .expect("rust-version is declared");
    assert!(
        ours.iter()
            .all(|p| p["rust_version"].as_str() == Some(declared)),
        "every crate inherits the workspace's rust-version"
    );
    let ids: Vec<&str> = ours.iter().map(|p| p["id"].as_str().unwrap()).collect();
    let newer: Vec<String> = m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !ids.contains(&p["id"].as_str().unwrap()))
        .filter_map(|p| {
            let rv = p["rust_version"].as_str()?;
            (version(rv) > version(declared))
                .then(|| format!("{} {} needs {rv}", p["name"], p["version"]))
        })
        .collect();
    assert!(
        newer.is_empty(),
        "rust-version {declared} is older than what these locked dependencies need: {newer:?}"
    );
}

#[test]
fn publishable_crates_carry_their_metadata() {
    let m = metadata();
    let ours = workspace_packages(&m);
    let publishable: Vec<&&Value> = ours
        .iter()
        .filter(|p| p["publish"].as_array().is_none_or(|a| !a.is_empty()))
        .collect();
    let names: Vec<&str> = publishable
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for must in [
        "vmi-device",
        "vmi-runtime",
        "vmi-conformance",
        "vmi-tcp",
        "vmi-shmem",
    ] {
        assert!(
            names.contains(&must),
            "{must} is meant for crates.io: {names:?}"
        );
    }
    for taken in ["vmi", "vmi-core"] {
        assert!(
            !names.contains(&taken),
            "'{taken}' belongs to another project on crates.io"
        );
    }
    for p in publishable {
        let name = p["name"].as_str().unwrap();
        for field in ["description", "license", "repository", "readme"] {
            assert!(p[field].is_string(), "{name}: no {field}");
        }
        for field in ["keywords", "categories"] {
            assert!(
                p[field].as_array().is_some_and(|a| !a.is_empty()),
                "{name}: no {field}"
            );
        }
        for d in p["dependencies"].as_array().unwrap() {
            if d["path"].is_string() && d["kind"].is_null() {
                assert_ne!(
                    d["req"].as_str(),
                    Some("*"),
                    "{name}: the path dependency {} has no version",
                    d["name"]
                );
            }
        }
    }
}
