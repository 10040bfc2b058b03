//! The PMIx structures vmi reads and writes through `libpmix.so.2` (see `vmi-core`'s `pmix`
//! module, which asserts these sizes at compile time) match the installed PMIx headers.
//! Where no PMIx headers are installed (`apt-get install -y libpmix-dev`) it says SKIPPED.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_pmix_layouts_match_the_installed_headers() {
    let dirs = [
        "/usr/include",
        "/usr/lib/x86_64-linux-gnu/pmix2/include",
        "/usr/include/pmix",
    ];
    let Some(inc) = dirs
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("pmix.h").exists())
    else {
        println!("SKIPPED: no PMIx headers (apt-get install -y libpmix-dev)");
        return;
    };
    let dir = vmi_tests::TempDir::new("pmix-layout");
    let src = dir.path().join("layout.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stddef.h>
#include <pmix.h>
int main(void) {
    printf("%zu %zu %zu %zu %zu %zu %zu\n", sizeof(pmix_proc_t), offsetof(pmix_proc_t, rank),
           sizeof(pmix_value_t), offsetof(pmix_value_t, data), sizeof(pmix_info_t),
           offsetof(pmix_info_t, flags), offsetof(pmix_info_t, value));
    printf("%d %d %d %d\n", PMIX_SUCCESS, PMIX_BOOL, PMIX_STRING, PMIX_GLOBAL);
    return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.path().join("layout");
    let cc = Command::new("cc")
        .arg("-I")
        .arg(&inc)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("run cc");
    assert!(
        cc.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = Command::new(&exe).output().expect("run the layout program");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text, "260 256 32 8 552 512 520\n0 1 3 3\n",
        "update vmi-core/src/pmix.rs to these layouts"
    );
}
