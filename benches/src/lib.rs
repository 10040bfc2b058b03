//! Shared helpers for the benchmarks: spec building, key naming and table printing.
#![allow(missing_docs)]

use vmi_core::spec::Spec;

/// A spec with `filters` skeleton filters on top of `transport`, devices linked statically.
pub fn spec(transport: &str, filters: usize) -> Spec {
    let mut devs = String::new();
    let mut send = String::new();
    let mut recv = String::new();
    for i in 0..filters {
        devs.push_str(&format!("<device name=\"f{i}\" type=\"skeleton\"/>"));
        send.push_str(&format!("<use device=\"f{i}\"/>"));
    }
    for i in (0..filters).rev() {
        recv.push_str(&format!("<use device=\"f{i}\"/>"));
    }
    let text = format!(
        "<vmi>{devs}<device name=\"t\" type=\"{transport}\"/><chain name=\"send\">{send}<use device=\"t\"/></chain><chain name=\"receive\"><use device=\"t\"/>{recv}</chain></vmi>"
    );
    Spec::parse_str(&text, "bench.xml").expect("bench spec")
}

/// Registers the workspace's devices statically.
pub fn register() {
    vmi_loopback::register_static();
    vmi_skeleton::register_static();
    vmi_tcp::register_static();
    vmi_crc::register_static();
    vmi_compress::register_static();
}

/// A spec with the given filter types (application first) on top of `transport`.
pub fn spec_with(transport: &str, filters: &[&str]) -> Spec {
    let devs: String = filters
        .iter()
        .map(|f| format!("<device name=\"{f}\"/>"))
        .collect();
    let send: String = filters
        .iter()
        .map(|f| format!("<use device=\"{f}\"/>"))
        .collect();
    let recv: String = filters
        .iter()
        .rev()
        .map(|f| format!("<use device=\"{f}\"/>"))
        .collect();
    let text = format!(
        "<vmi>{devs}<device name=\"t\" type=\"{transport}\"/><chain name=\"send\">{send}<use device=\"t\"/></chain><chain name=\"receive\"><use device=\"t\"/>{recv}</chain></vmi>"
    );
    Spec::parse_str(&text, "bench.xml").expect("bench spec")
}

/// A key unique to this process.
pub fn key(prefix: &str) -> String {
    format!("bench-{prefix}-{}", std::process::id())
}

/// Human-readable size.
pub fn size_name(n: usize) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}
