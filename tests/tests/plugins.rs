//! The plugin boundary: every device loads through its shared object, a device written in C
//! loads and runs, and broken libraries are refused with errors that say what to do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmi_core::Operations;

use vmi_core::assembly::AssemblyError;
use vmi_core::device::DeviceKind;
use vmi_core::loader::{self, LoadError};
use vmi_core::spec::Spec;
use vmi_core::{ConnId, ConnectOutcome, Ctx, Handler, Recv, Slab, Vmi, VmiError};
use vmi_tests::{TempDir, device_lib, root, unique_key};

#[test]
fn every_device_loads_from_its_shared_object() {
    for (ty, kind) in [
        ("tcp", DeviceKind::Transport),
        ("loopback", DeviceKind::Transport),
        ("skeleton", DeviceKind::Filter),
    ] {
        let path = device_lib(ty);
        let t = loader::load_library(&path, ty).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.name, ty);
        assert_eq!(t.kind, kind);
        assert_eq!(t.abi.0, vmi_core::abi::VMI_ABI_MAJOR);
        assert_eq!(t.library.as_deref(), Some(path.as_path()));
        assert!(!t.description.is_empty());
    }
    let tcp = loader::load_library(&device_lib("tcp"), "tcp").unwrap();
    assert!(
        tcp.params
            .iter()
            .any(|p| p.name == "connect_timeout_ms" && p.default == "10000")
    );
}

/// The frozen ABI 1.0 header: the C test device is built against it, so every test that
/// loads it proves that this host still loads a 1.0 device.
fn header_1_0() -> PathBuf {
    root().join("tests/c/abi-1.0")
}

/// The current header.
fn header_current() -> PathBuf {
    root().join("vmi-device/include")
}

/// Builds the C filter (optionally broken by `defines`) into `dir` against the frozen 1.0
/// header; `None` when no C compiler.
fn build_c(dir: &Path, file: &str, defines: &[&str]) -> Option<PathBuf> {
    build_c_with(dir, file, defines, &header_1_0())
}

/// As [`build_c`], against the header in `include`.
fn build_c_with(dir: &Path, file: &str, defines: &[&str], include: &Path) -> Option<PathBuf> {
    let out = dir.join(file);
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-I"])
        .arg(include)
        .arg(root().join("tests/c/cfilter.c"))
        .arg("-o")
        .arg(&out);
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    match cmd.output() {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => panic!("cc failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            println!("SKIPPED: no C compiler ({e}); install gcc to run the C plugin tests");
            None
        }
    }
}

/// A library planted where others can write (or owned by another user) is refused before
/// the dynamic loader runs any of its code.
#[test]
fn libraries_others_could_change_are_never_loaded() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("vmi-planted");
    let marker = dir.path().join("constructor-ran");
    let define = format!("CONSTRUCTOR_MARKER=\"{}\"", marker.display());
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    let Some(lib) = build_c(&open, "libvmi_cfilter.so", &[&define]) else {
        return;
    };
    /// What the case is called, how to plant it, how to undo it.
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, Box<dyn Fn() + 'a>);
    let mut cases: Vec<Case<'_>> = vec![
        (
            "writable by everyone",
            Box::new(|| {
                std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap()
            }),
            Box::new(|| {
                std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap()
            }),
        ),
        (
            "writable by its group",
            Box::new(|| {
                std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o775)).unwrap()
            }),
            Box::new(|| {
                std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o755)).unwrap()
            }),
        ),
    ];
    if rustix::process::geteuid().is_root() {
        cases.push((
            "owned by uid 65534",
            Box::new(|| std::os::unix::fs::chown(&lib, Some(65534), Some(65534)).unwrap()),
            Box::new(|| std::os::unix::fs::chown(&lib, Some(0), Some(0)).unwrap()),
        ));
    } else {
        println!("SKIPPED: the foreign-owner case needs root to chown");
    }
    for (what, plant, undo) in &cases {
        plant();
        let err = loader::load_library(&lib, "cfilter").expect_err(what);
        let msg = err.to_string();
        assert!(matches!(err, LoadError::Untrusted { .. }), "{what}: {msg}");
        assert!(
            msg.contains(what) && msg.contains("chmod go-w"),
            "{what}: {msg}"
        );
        assert!(!marker.exists(), "{what}: the planted library's code ran");
        undo();
    }
    // Trusted again: it loads (and its constructor runs, as expected of a loaded library).
    loader::load_library(&lib, "cfilter").expect("a library only root and this user can change");
    assert!(marker.exists());
}

#[test]
fn broken_libraries_are_refused_with_clear_errors() {
    let dir = TempDir::new("vmi-plugins");
    type Case = (
        &'static str,
        &'static [&'static str],
        &'static str,
        fn(&LoadError) -> bool,
    );
    let cases: &[Case] = &[
        (
            "major.so",
            &["ABI_MAJOR=99"],
            "built for device ABI 99.x but this vmi speaks 1.x",
            |e| matches!(e, LoadError::AbiMismatch { found: 99, .. }),
        ),
        (
            "vtable.so",
            &["VT_SIZE=16"],
            "truncated vtable (16 bytes",
            |e| {
                matches!(
                    e,
                    LoadError::Truncated {
                        table: "vtable",
                        found: 16,
                        ..
                    }
                )
            },
        ),
        (
            "symbol.so",
            &["SYMBOL=vmi_device_other"],
            "does not export 'vmi_device_cfilter'",
            |e| matches!(e, LoadError::MissingSymbol { .. }),
        ),
        (
            "magic.so",
            &["MAGIC=0x12345678u"],
            "not a vmi device descriptor",
            |e| {
                matches!(
                    e,
                    LoadError::BadMagic {
                        found: 0x1234_5678,
                        ..
                    }
                )
            },
        ),
        (
            "name.so",
            &["TYPE_NAME=\"impostor\""],
            "calls itself 'impostor'",
            |e| matches!(e, LoadError::BadDescriptor { .. }),
        ),
    ];
    for (file, defines, text, is) in cases {
        let Some(lib) = build_c(dir.path(), file, defines) else {
            return;
        };
        let err = loader::load_library(&lib, "cfilter").expect_err(file);
        assert!(is(&err), "{file}: wrong error kind: {err}");
        let msg = err.to_string();
        assert!(msg.contains(text), "{file}: message lacks '{text}': {msg}");
        assert!(
            msg.contains(&lib.display().to_string()),
            "{file}: message names the library: {msg}"
        );
    }

    let junk = dir.path().join("libvmi_junk.so");
    std::fs::write(&junk, b"not an ELF file").unwrap();
    let err = loader::load_library(&junk, "junk").unwrap_err();
    assert!(matches!(err, LoadError::CannotOpen { .. }), "{err}");

    let err = loader::find_library("nosuch", None, Some(dir.path())).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("libvmi_nosuch.so not found")
            && msg.contains(&dir.path().display().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains("VMI_DEVICE_PATH"),
        "the remedy is named: {msg}"
    );
}

#[test]
fn abi_growth_older_and_newer_minors_load_and_a_newer_major_is_refused() {
    let dir = TempDir::new("vmi-plugins-abi");
    // A device built with the frozen 1.0 header: shorter vtable, no 1.1 entries.
    let Some(old) = build_c(dir.path(), "old.so", &[]) else {
        return;
    };
    let t = loader::load_library(&old, "cfilter").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.abi, (1, 0));
    assert!(t.provides().contains(&"submit"), "{:?}", t.provides());
    assert!(
        !t.provides().contains(&"poll_budget"),
        "an entry the 1.0 table does not have reads as absent: {:?}",
        t.provides()
    );
    // The same device built with the current header.
    let Some(cur) = build_c_with(dir.path(), "cur.so", &[], &header_current()) else {
        return;
    };
    let t = loader::load_library(&cur, "cfilter").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.abi, (1, vmi_core::abi::VMI_ABI_MINOR));
    // A device of a newer minor with longer tables: this host uses the part it knows and
    // never calls the entry it does not know (the device aborts if it is called).
    let Some(new) = build_c_with(dir.path(), "new.so", &["NEWER_MINOR"], &header_current()) else {
        return;
    };
    let t = loader::load_library(&new, "cfilter").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.abi, (1, vmi_core::abi::VMI_ABI_MINOR + 7));
    for lib in [&old, &cur, &new] {
        carry_messages_through(lib);
    }
    // A newer major is refused, naming both versions.
    let Some(major) = build_c_with(dir.path(), "major.so", &["ABI_MAJOR=2"], &header_current())
    else {
        return;
    };
    let err = loader::load_library(&major, "cfilter").unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::AbiMismatch {
                found: 2,
                expected: 1,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("device ABI 2.x") && msg.contains("speaks 1.x") && msg.contains("rebuild"),
        "{msg}"
    );
}

/// Runs five messages through a pair of processes whose chains hold the C device `lib`.
fn carry_messages_through(lib: &Path) {
    let (ka, kb) = (unique_key("ga"), unique_key("gb"));
    let mut a = Vmi::with_spec(spec_with_c(lib, &device_lib("loopback")), &ka).unwrap();
    let mut b = Vmi::with_spec(spec_with_c(lib, &device_lib("loopback")), &kb).unwrap();
    let (mut ha, mut hb) = (H::default(), H::default());
    a.connect("localhost", &kb, b"", 0).unwrap();
    let start = Instant::now();
    while ha.conn.is_none() {
        a.poll(&mut ha);
        b.poll(&mut hb);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            lib.display()
        );
    }
    for i in 0..5u8 {
        a.send_inline(ha.conn.unwrap(), &[i; 10]).unwrap();
    }
    while hb.got.len() < 5 {
        a.poll(&mut ha);
        b.poll(&mut hb);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            lib.display()
        );
    }
    assert_eq!(hb.got, (0..5u8).map(|i| vec![i; 10]).collect::<Vec<_>>());
}

fn spec_with_c(lib: &Path, loopback: &Path) -> Spec {
    Spec::parse_str(
        &format!(
            "<vmi><device name=\"c\" type=\"cfilter\" library=\"{}\"/><device name=\"loop\" type=\"loopback\" library=\"{}\"/><chain name=\"send\"><use device=\"c\"/><use device=\"loop\"/></chain><chain name=\"receive\"><use device=\"loop\"/><use device=\"c\"/></chain></vmi>",
            lib.display(),
            loopback.display()
        ),
        "c.xml",
    )
    .unwrap()
}

#[test]
fn create_failures_are_reported_with_the_device_message() {
    let dir = TempDir::new("vmi-plugins-create");
    for (file, define, text) in [
        (
            "fail.so",
            "CREATE_RESULT=VMI_CREATE_FAILED",
            "failed to start: the C device refused to start",
        ),
        (
            "panic.so",
            "CREATE_RESULT=VMI_CREATE_PANICKED",
            "panicked while starting: the C device refused to start",
        ),
    ] {
        let Some(lib) = build_c(dir.path(), file, &[define]) else {
            return;
        };
        let err = Vmi::with_spec(spec_with_c(&lib, &device_lib("loopback")), &unique_key("c"))
            .err()
            .expect(file);
        assert!(
            matches!(&err, VmiError::Assembly(a) if matches!(**a, AssemblyError::Load(_))),
            "{err}"
        );
        assert!(err.to_string().contains(text), "{file}: {err}");
    }
}

#[derive(Default)]
struct H {
    conn: Option<ConnId>,
    got: Vec<Vec<u8>>,
}

impl Handler for H {
    fn connected(
        &mut self,
        _ctx: &mut Ctx<'_>,
        conn: ConnId,
        outcome: ConnectOutcome<'_>,
        _token: u64,
    ) {
        if let ConnectOutcome::Failed { status, detail } = &outcome {
            panic!("connect failed: {status}: {detail}");
        }
        self.conn = Some(conn);
    }
    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _cmd: Recv, slab: &mut Slab<'_>) {
        self.got.push(slab.read_to_vec());
    }
}

#[test]
fn a_c_device_and_shared_object_devices_carry_messages() {
    let dir = TempDir::new("vmi-plugins-ok");
    let Some(lib) = build_c(dir.path(), "libvmi_cfilter.so", &[]) else {
        return;
    };
    let a = Vmi::with_spec(
        spec_with_c(&lib, &device_lib("loopback")),
        &unique_key("ca"),
    )
    .unwrap();
    assert!(
        a.devices().iter().all(|d| d.origin.ends_with(".so")),
        "loaded from files: {:?}",
        a.devices()
    );
    carry_messages_through(&lib);
}
