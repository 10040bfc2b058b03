//! The keyed handshake between real processes over TCP and shared memory: peers with the
//! key connect, peers without it (or with another) are refused before the application hears
//! of them, a hostile raw peer that fakes a proof is dropped, and careless key files are
//! refused with the remedy.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmi_tests::{Proc, TempDir, root, unique_key};

const T: Duration = Duration::from_secs(60);

fn key_file(dir: &TempDir, name: &str, content: &str, mode: u32) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn receiver(spec: &Path, key: &str, auth: &Path) -> Proc {
    let r = Proc::spawn(
        "vmirecv",
        &[key, "-n", "1", "-t", "60"],
        spec,
        &[("VMI_AUTH_KEY_FILE", auth.to_str().unwrap())],
    );
    r.wait_for("waiting for connections", T);
    r
}

fn sender(spec: &Path, key: &str, auth: Option<&Path>) -> (bool, String) {
    let mut env = vec![];
    let a;
    if let Some(p) = auth {
        a = p.to_str().unwrap().to_string();
        env.push(("VMI_AUTH_KEY_FILE", a.as_str()));
    }
    Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &unique_key("auth-send"),
            key,
            "localhost",
            "-t",
            "20",
        ],
        spec,
        &env,
    )
    .finish(T)
}

#[test]
fn only_peers_holding_the_key_connect_over_both_transports() {
    let dir = TempDir::new("vmi-auth");
    let good = key_file(&dir, "good", "correct horse battery staple 42\n", 0o600);
    let other = key_file(&dir, "other", "a different secret of some length\n", 0o600);
    for spec in ["specfiles/tcp.xml", "specfiles/shmem.xml"] {
        let spec = root().join(spec);
        let key = unique_key("auth-recv");
        let r = receiver(&spec, &key, &good);
        let (ok, out) = sender(&spec, &key, None);
        assert!(
            !ok && out.contains("requires authentication"),
            "{spec:?}: {out}"
        );
        let (ok, out) = sender(&spec, &key, Some(&other));
        assert!(
            !ok && out.contains("could not prove it holds the authentication key"),
            "{spec:?}: {out}"
        );
        let (ok, out) = sender(&spec, &key, Some(&good));
        assert!(ok, "{spec:?}: {out}");
        let (ok, rout) = r.finish(T);
        assert!(ok, "{spec:?}: {rout}");
        assert_eq!(
            rout.matches("accepted connection").count(),
            1,
            "{spec:?}: the application heard only of the peer with the key: {rout}"
        );
    }
}

/// A raw TCP peer that asks to authenticate and then sends a forged proof learns a random
/// nonce and nothing else, and is dropped; good peers are served afterwards.
#[test]
fn a_forged_proof_is_dropped() {
    use vmi_tcp::wire::{CHALLENGE_LEN, HelloRepr, emit_proof};
    let dir = TempDir::new("vmi-auth-forge");
    let good = key_file(&dir, "good", "correct horse battery staple 42", 0o600);
    let spec = root().join("specfiles/tcp.xml");
    let key = unique_key("auth-forge");
    let r = receiver(&spec, &key, &good);
    let out = r.wait_for("listening on", T);
    let line = out.lines().find(|l| l.contains("listening on")).unwrap();
    let port: u16 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&HelloRepr::emit_with(
        "forger",
        &key,
        "send=;recv=",
        b"",
        Some(&[7; 32]),
        false,
    ))
    .unwrap();
    let mut challenge = vec![0u8; CHALLENGE_LEN];
    s.read_exact(&mut challenge).unwrap();
    assert_eq!(&challenge[..4], b"VMIC");
    s.write_all(&emit_proof(&[9; 32])).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "nothing more is said to the forger: {rest:?}"
    );
    r.wait_for("failed authentication", T);
    let (ok, out) = sender(&spec, &key, Some(&good));
    assert!(ok, "{out}");
    let (ok, rout) = r.finish(T);
    assert!(ok && !rout.contains("'forger'"), "{rout}");
}

#[test]
fn careless_key_files_are_refused_with_the_remedy() {
    let dir = TempDir::new("vmi-auth-files");
    let open = key_file(&dir, "open", "correct horse battery staple 42", 0o644);
    let short = key_file(&dir, "short", "tiny", 0o600);
    for (file, text) in [(&open, "chmod 600"), (&short, "at least 16")] {
        let (ok, out) = Proc::spawn(
            "vmirecv",
            &[&unique_key("auth-file"), "-t", "5"],
            &root().join("specfiles/tcp.xml"),
            &[("VMI_AUTH_KEY_FILE", file.to_str().unwrap())],
        )
        .finish(T);
        assert!(!ok && out.contains(text), "{out}");
    }
    let good = key_file(&dir, "good", "correct horse battery staple 42", 0o600);
    let (ok, out) = Proc::spawn(
        "vmi-info",
        &[
            "--spec",
            root().join("specfiles/shmem-tcp.xml").to_str().unwrap(),
        ],
        &root().join("specfiles/shmem-tcp.xml"),
        &[("VMI_AUTH_KEY_FILE", good.to_str().unwrap())],
    )
    .finish(T);
    assert!(ok, "{out}");
    let shown = out
        .lines()
        .filter(|l| l.starts_with("  authentication on (key from"))
        .count();
    assert_eq!(shown, 2, "vmi-info shows it for both transports: {out}");
}
