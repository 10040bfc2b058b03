//! Specfiles: every shipped one assembles; every invalid one in tests/specs/invalid fails
//! with the exact location and message its first line announces (`<!-- expect: ... -->`).

use std::path::PathBuf;

use vmi_core::Vmi;
use vmi_core::spec::Spec;
use vmi_tests::{root, unique_key};

fn xml_files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_shipped_specfile_starts() {
    vmi_tests::ensure_built();
    let files = xml_files("specfiles");
    assert!(files.len() >= 3, "specfiles/ holds the shipped chains");
    for f in files {
        let mut spec = Spec::from_file(&f).unwrap_or_else(|e| panic!("{e}"));
        if f.ends_with("verbs.xml") {
            // Without an RDMA NIC it fails to start, saying why; the same chain on the
            // software NIC starts anywhere.
            if let Err(e) = Vmi::with_spec(spec, &unique_key("spec")) {
                let e = e.to_string();
                assert!(
                    e.contains("RDMA device") || e.contains("libibverbs"),
                    "{}: {e}",
                    f.display()
                );
            }
            let text = std::fs::read_to_string(&f).unwrap().replace(
                r#"<device name="verbs"/>"#,
                r#"<device name="verbs"><param name="nic" value="sim"/></device>"#,
            );
            spec = Spec::parse_str(&text, "verbs.xml on the software NIC").unwrap();
        }
        // Ports of the key-derived range are probed, so parallel runs do not collide.
        let vmi = Vmi::with_spec(spec, &unique_key("spec"))
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!vmi.devices().is_empty());
        assert!(
            vmi.devices().iter().all(|d| d.origin.ends_with(".so")),
            "shipped specfiles load shared objects"
        );
    }
}

#[test]
fn every_invalid_specfile_fails_where_it_says() {
    vmi_tests::ensure_built();
    let files = xml_files("tests/specs/invalid");
    assert!(files.len() >= 10);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("<!-- expect: "))
            .and_then(|l| l.strip_suffix(" -->"))
            .unwrap_or_else(|| panic!("{}: first line must be <!-- expect: ... -->", f.display()));
        let name = f.display().to_string();
        let err = match Spec::from_file(&f) {
            Err(e) => e.to_string(),
            Ok(spec) => match Vmi::with_spec(spec, &unique_key("bad")) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{name}: accepted, expected: {expect}"),
            },
        };
        let want = if expect.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            format!("{name}:{expect}")
        } else {
            expect.to_string()
        };
        assert!(
            err.contains(&want),
            "{name}:\n  expected: {want}\n  got:      {err}"
        );
    }
}
