//! vmi-alltoall as a job of real processes (issue: launch and scale): every process learns
//! its rank and its peers from the launcher's environment, connects to every other (waiting
//! for those that start later), exchanges verified messages and measures the latency of
//! every pair; rank 0 prints the matrix and the summary.
//!
//! Without a launcher (`VMI_PROCS`, `VMI_RANK`, `VMI_JOB`): always. Under Open MPI's
//! `mpirun`: when it is installed (`apt-get install -y openmpi-bin`); otherwise the test says
//! SKIPPED and why.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmi_tests::{Proc, bin, root, unique_key};

const T: Duration = Duration::from_secs(180);

/// Runs `n` ranks through the fallback variables, started last rank first (so connects
/// wait for peers that are not up yet); returns rank 0's output.
fn fallback_job(spec: &Path, n: u32) -> String {
    let job = unique_key("a2a");
    let procs = n.to_string();
    let mut ranks: Vec<Proc> = Vec::new();
    for r in (0..n).rev() {
        let rank = r.to_string();
        ranks.push(Proc::spawn(
            "vmi-alltoall",
            &[
                "--verify", "-n", "20", "--iters", "20", "-s", "100", "-t", "150",
            ],
            spec,
            &[
                ("VMI_PROCS", &procs),
                ("VMI_RANK", &rank),
                ("VMI_JOB", &job),
                ("VMI_LOG", "warn"),
            ],
        ));
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out0 = String::new();
    for (i, p) in ranks.into_iter().enumerate() {
        let (ok, out) = p.finish(T);
        assert!(ok, "{spec:?}: rank {} failed:\n{out}", n as usize - 1 - i);
        if i == n as usize - 1 {
            out0 = out;
        }
    }
    out0
}

#[test]
fn a_job_started_without_a_launcher_exchanges_and_measures_every_pair() {
    for (spec, n) in [("shmem-tcp.xml", 5u32), ("tcp.xml", 4)] {
        let out = fallback_job(&root().join("specfiles").join(spec), n);
        let pairs = n * (n - 1) / 2;
        let messages = n * (n - 1) * 20;
        assert!(
            out.contains(&format!(
                "summary: {pairs} pair(s), {messages} message(s), {messages} verified, 0 bad"
            )),
            "{spec}:\n{out}"
        );
        assert!(out.contains("one-way latency (us)"), "{spec}:\n{out}");
        // Every off-diagonal cell of the matrix holds a number.
        let rows: Vec<&str> = out
            .lines()
            .skip_while(|l| !l.starts_with("one-way latency"))
            .skip(2)
            .take(n as usize)
            .collect();
        assert_eq!(rows.len(), n as usize, "{out}");
        for row in rows {
            assert_eq!(
                row.matches(" -").count(),
                1,
                "one dash per row (the diagonal): {row}"
            );
        }
    }
}

#[test]
fn without_a_job_it_says_how_to_start_one() {
    let p = Proc::spawn(
        "vmi-alltoall",
        &[],
        &root().join("specfiles/tcp.xml"),
        &[("VMI_LOG", "warn")],
    );
    let (ok, out) = p.finish(T);
    assert!(!ok && out.contains("no job: run under mpirun"), "{out}");
    let p = Proc::spawn(
        "vmi-alltoall",
        &[],
        &root().join("specfiles/tcp.xml"),
        &[("VMI_PROCS", "4"), ("VMI_RANK", "4")],
    );
    let (ok, out) = p.finish(T);
    assert!(
        !ok && out.contains("VMI_RANK='4'") && out.contains("0 to 3"),
        "{out}"
    );
}

#[test]
fn under_mpirun() {
    let Ok(found) = Command::new("mpirun").arg("--version").output() else {
        println!("SKIPPED: mpirun is not installed (apt-get install -y openmpi-bin)");
        return;
    };
    assert!(found.status.success(), "mpirun --version failed");
    for spec in ["shmem-tcp.xml", "tcp.xml"] {
        let mut cmd = Command::new("mpirun");
        cmd.args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            "6",
            "-x",
            "VMI_SPECFILE",
        ])
        .arg(bin("vmi-alltoall"))
        .args(["--verify", "-n", "10", "--iters", "20", "-t", "150"])
        .env("VMI_SPECFILE", root().join("specfiles").join(spec))
        .env("VMI_LOG", "vmi_core::job=info,warn");
        let (ok, out) = Proc::spawn_command("mpirun", cmd).finish(T);
        assert!(ok, "{spec}:\n{out}");
        assert!(
            out.contains("from OpenMpi")
                && out.contains("summary: 15 pair(s), 300 message(s), 300 verified, 0 bad"),
            "{spec}:\n{out}"
        );
        // Every rank learned the hosts through PMIx's put, fence and get.
        assert_eq!(
            out.matches("learned the hosts of 6 ranks from PMIx")
                .count(),
            6,
            "{spec}:\n{out}"
        );
    }
}
