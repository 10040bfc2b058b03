//! The structures and constants `ffi.rs` writes out by hand, checked against the installed
//! `<infiniband/verbs.h>`: a C program prints every size, offset and value by the C name and
//! the test compares them with Rust's. Needs a C compiler and the header (Debian:
//! `libibverbs-dev`); where the header is not installed the test says so on stderr and checks
//! nothing (the default build needs no RDMA package). The README records where it ran.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

const HEADER: &str = "/usr/include/infiniband/verbs.h";

#[test]
fn ffi_matches_the_installed_verbs_header() {
    if !Path::new(HEADER).exists() {
        let msg = format!(
            "{HEADER} is not installed, so the ibverbs structure layouts were not checked \
             (apt-get install libibverbs-dev)"
        );
        eprintln!("skipped: {msg}");
        return;
    }
    let layout = vmi_verbs::ffi::layout();
    let mut c = String::from(
        "#include <stdio.h>\n#include <stddef.h>\n#include <infiniband/verbs.h>\nint main(void) {\n",
    );
    for (name, _) in &layout {
        writeln!(c, "  printf(\"%zu\\n\", (size_t)({name}));").unwrap();
    }
    c.push_str("  return 0;\n}\n");
    let dir = std::env::temp_dir().join(format!("vmi-verbs-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, c).unwrap();
    let built = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("a C compiler (cc)");
    let run = built
        .status
        .success()
        .then(|| Command::new(&exe).output().unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        built.status.success(),
        "the layout program did not compile:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let out = String::from_utf8(run.unwrap().stdout).unwrap();
    let c_values: Vec<usize> = out.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(c_values.len(), layout.len());
    let wrong: Vec<String> = layout
        .iter()
        .zip(&c_values)
        .filter(|((_, rust), c)| rust != *c)
        .map(|((name, rust), c)| format!("{name}: Rust {rust}, C {c}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "ffi.rs disagrees with verbs.h:\n{}",
        wrong.join("\n")
    );
    println!(
        "{} sizes, offsets and constants match {HEADER}",
        layout.len()
    );
}
