//! `include/vmi.h` must declare exactly the functions libvmi exports, with the same
//! parameter and return types: every `extern "C" fn` in `src/` is written with the header's
//! type names (`src/types.rs`), so the two can be compared signature by signature.

use std::collections::BTreeMap;
use std::path::Path;

/// name -> (return type, parameter types), types normalised to C spelling.
type Signatures = BTreeMap<String, (String, Vec<String>)>;

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `*mut *mut T` -> `T * *`, `c_int` -> `int`, `*const c_char` -> `const char *`.
fn rust_type_to_c(t: &str) -> String {
    let t = squash(t);
    if let Some(inner) = t.strip_prefix("*mut ") {
        return format!("{} *", rust_type_to_c(inner));
    }
    if let Some(inner) = t.strip_prefix("*const ") {
        return format!("const {} *", rust_type_to_c(inner));
    }
    match t.as_str() {
        "c_int" => "int".into(),
        "c_char" => "char".into(),
        other => other.into(),
    }
}

fn rust_signatures(src: &Path) -> Signatures {
    let mut out = Signatures::new();
    for entry in std::fs::read_dir(src).expect("read src") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read source");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("extern \"C\" fn ") {
            let after = &rest[at + "extern \"C\" fn ".len()..];
            let open = after.find('(').expect("(");
            let name = after[..open].trim().to_string();
            // The parameter list ends at the matching parenthesis.
            let mut depth = 0;
            let mut close = 0;
            for (i, c) in after[open..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            close = open + i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let params: Vec<String> = after[open + 1..close]
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| rust_type_to_c(p.split_once(':').expect("name: type").1))
                .collect();
            let tail = &after[close + 1..];
            let brace = tail.find('{').expect("body");
            let ret = tail[..brace]
                .trim()
                .strip_prefix("->")
                .map_or("void".to_string(), rust_type_to_c);
            if name.starts_with("VMI_") {
                out.insert(name, (ret, params));
            }
            rest = &after[close..];
        }
    }
    out
}

/// Drops the parameter's name: `PVMI_CONNECT *out` -> `PVMI_CONNECT *`.
fn c_param_type(p: &str) -> String {
    let p = squash(&p.replace('*', " * "));
    let words: Vec<&str> = p.split(' ').collect();
    let last = words.last().copied().unwrap_or("");
    let named = words.len() > 1 && last != "*";
    let kept = if named {
        &words[..words.len() - 1]
    } else {
        &words[..]
    };
    kept.join(" ")
}

fn header_signatures(header: &str) -> Signatures {
    let mut out = Signatures::new();
    for line in header.lines() {
        let line = line.trim();
        if line.starts_with('#')
            || line.starts_with("typedef")
            || line.starts_with("/*")
            || line.starts_with('*')
            || !line.ends_with(");")
        {
            continue;
        }
        let open = line.find('(').expect("(");
        let head = squash(&line[..open].replace('*', " * "));
        let (ret, name) = head.rsplit_once(' ').expect("return type and name");
        let params = &line[open + 1..line.len() - 2];
        let params: Vec<String> = if params.trim() == "void" {
            Vec::new()
        } else {
            params.split(',').map(c_param_type).collect()
        };
        out.insert(name.to_string(), (ret.to_string(), params));
    }
    out
}

#[test]
fn the_header_declares_exactly_what_the_library_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rust = rust_signatures(&root.join("src"));
    let header = std::fs::read_to_string(root.join("include/vmi.h")).expect("vmi.h");
    let c = header_signatures(&header);
    assert!(
        rust.len() >= 35,
        "found only {} exported functions",
        rust.len()
    );
    let only_rust: Vec<_> = rust.keys().filter(|k| !c.contains_key(*k)).collect();
    let only_c: Vec<_> = c.keys().filter(|k| !rust.contains_key(*k)).collect();
    assert!(
        only_rust.is_empty() && only_c.is_empty(),
        "exported but not declared: {only_rust:?}; declared but not exported: {only_c:?}"
    );
    for (name, sig) in &rust {
        assert_eq!(
            &c[name], sig,
            "{name}: vmi.h (left) and src/ (right) differ"
        );
    }
    assert!(
        header.contains("extern PVMI_NETADDRESS localAddress;"),
        "localAddress must be declared"
    );
}

#[test]
fn the_normaliser_reads_both_spellings() {
    assert_eq!(rust_type_to_c("*mut PVMI_CONNECT"), "PVMI_CONNECT *");
    assert_eq!(rust_type_to_c("*mut *mut c_char"), "char * *");
    assert_eq!(c_param_type("PVMI_CONNECT *out"), "PVMI_CONNECT *");
    assert_eq!(c_param_type("char **argv"), "char * *");
    assert_eq!(c_param_type("ULONG"), "ULONG");
    let sigs = header_signatures("VMI_STATUS VMI_X(PVOID *a, ULONG n);\nPCSTR VMI_Y(void);\n");
    assert_eq!(
        sigs["VMI_X"],
        ("VMI_STATUS".into(), vec!["PVOID *".into(), "ULONG".into()])
    );
    assert_eq!(sigs["VMI_Y"], ("PCSTR".into(), vec![]));
}

/// `#define NAME VALUE` lines of a header whose name starts with `prefix`.
fn defines(header: &str, prefix: &str) -> BTreeMap<String, String> {
    header
        .lines()
        .filter_map(|l| l.trim().strip_prefix("#define "))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .filter(|(n, _)| n.starts_with(prefix))
        .collect()
}

/// Codes 0-13 are written in both public headers (each stands alone): they must agree, and
/// every code the device header has must be in vmi.h.
#[test]
fn the_status_codes_agree_with_the_device_header() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let app = std::fs::read_to_string(root.join("include/vmi.h")).expect("vmi.h");
    let dev = std::fs::read_to_string(root.join("../vmi-device/include/vmi_device.h"))
        .expect("vmi_device.h");
    let (app, dev) = (defines(&app, "VMI_STATUS_"), defines(&dev, "VMI_STATUS_"));
    assert!(dev.len() >= 14, "{dev:?}");
    for (name, value) in &dev {
        assert_eq!(app.get(name), Some(value), "{name}");
    }
}
