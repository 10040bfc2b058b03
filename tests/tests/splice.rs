//! A message is delivered whole or not at all (issue: hostile input, spliced messages).
//! Through `[crc, fault, transport]` with fragments lost and corrupted on both sides:
//! every message the receiver delivers verifies (length and a non-repeating pattern), every
//! failed one is discarded and reported to the sender, and delivered + failed = sent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmi_tests::{Proc, TempDir, root, unique_key};

const T: Duration = Duration::from_secs(300);

fn count_after(out: &str, prefix: &str, suffix: &str) -> u64 {
    out.lines()
        .find_map(|l| {
            let rest = l.split(prefix).nth(1)?;
            rest.split(suffix).next()?.trim().parse().ok()
        })
        .unwrap_or(0)
}

/// Runs `messages` messages of `size` in 4 fragments through `spec` with the given fault
/// rates; returns (delivered, failed at the receiver, failed as the sender heard).
fn run(spec: &Path, messages: u64, size: &str, rates: &[(&str, &str)]) -> (u64, u64, u64) {
    let key = unique_key("splice-recv");
    let n = messages.to_string();
    let mut env = vec![("VMI_LOG", "error"), ("VMI_FAULT_SEED", "11")];
    env.extend_from_slice(rates);
    let r = Proc::spawn(
        "vmirecv",
        &[&key, "-n", &n, "--verify", "-q", "-t", "280"],
        spec,
        &env,
    );
    r.wait_for("waiting for connections", T);
    env[1] = ("VMI_FAULT_SEED", "12");
    let s = Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &unique_key("splice-send"),
            &key,
            "localhost",
            "-n",
            &n,
            "-s",
            size,
            "-f",
            "4",
            "-q",
            "-t",
            "280",
        ],
        spec,
        &env,
    );
    let (sent_ok, sout) = s.finish(T);
    let (_, rout) = r.finish(T);
    assert!(
        !rout.contains("differs from what vmisend wrote") && !rout.contains("but vmisend wrote"),
        "a corrupted or spliced message was delivered:\n{}",
        rout.lines()
            .filter(|l| l.contains("vmisend wrote"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let delivered = count_after(&rout, "vmirecv: received ", " message(s)");
    let failed = rout.matches("failed and was discarded").count() as u64;
    let told = count_after(
        &sout,
        "vmisend: error: ",
        " message(s) did not arrive whole",
    );
    assert_eq!(
        sent_ok,
        told == 0,
        "vmisend exits non-zero exactly when messages failed: {sout}"
    );
    (delivered, failed, told)
}

fn shmem_fault_spec(dir: &TempDir) -> PathBuf {
    let p = dir.path().join("shmem-crc-fault.xml");
    std::fs::write(&p, vmi_tests::spec_text("shmem", &["crc", "fault"], "")).unwrap();
    p
}

#[test]
fn failed_messages_are_discarded_whole_and_the_sender_is_told() {
    let dir = TempDir::new("splice");
    for spec in [
        root().join("specfiles/tcp-crc-fault.xml"),
        shmem_fault_spec(&dir),
    ] {
        let (delivered, failed, told) = run(
            &spec,
            400,
            "64k",
            &[("VMI_FAULT_DROP", "0.02"), ("VMI_FAULT_CORRUPT", "0.02")],
        );
        assert!(failed > 0, "{spec:?}: the fault rates produced no failure");
        assert_eq!(
            delivered + failed,
            400,
            "{spec:?}: every message delivered or failed"
        );
        assert_eq!(
            told, failed,
            "{spec:?}: the sender heard of every failed message"
        );
    }
}

/// The soak: 600,000 messages (15 to 30 seconds on a 2-core machine).
#[test]
fn soak_through_crc_fault_tcp() {
    let messages = 600_000;
    let (delivered, failed, told) = run(
        &root().join("specfiles/tcp-crc-fault.xml"),
        messages,
        "4k",
        &[("VMI_FAULT_DROP", "0.001"), ("VMI_FAULT_CORRUPT", "0.001")],
    );
    println!(
        "soak: {messages} sent, {delivered} delivered, {failed} failed (sender told of {told})"
    );
    assert!(failed > 0);
    assert_eq!(delivered + failed, messages);
    assert_eq!(told, failed);
}
