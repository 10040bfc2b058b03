//! vmi-info: validates a specfile and shows what it resolves to: chains, each device's
//! library, ABI, version, kind, parameters (effective value and source), capabilities, and
//! whether each transport is usable here. With no specfile (or `--list`) it lists every
//! device found on the search path, like `ucx_info -d` and `fi_info -l`; `--config` prints
//! the effective configuration as shell assignments, like `ucx_info -c`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use vmi_tools::quiet_println as println;

use clap::Parser;
use serde::Serialize;
use vmi_core::assembly::{self, Inspection};
use vmi_core::device::{Capabilities, DeviceKind};
use vmi_core::params::{self, CORE_ENV_VARS};
use vmi_core::spec::{Location, Spec};
use vmi_core::{Vmi, VmiError};

/// Show what a vmi specfile resolves to, and whether it can run here.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The specfile (default: $VMI_SPECFILE).
    #[arg(long)]
    spec: Option<PathBuf>,
    /// List every VMI_* environment variable with its meaning (and the spec's parameters).
    #[arg(long)]
    env: bool,
    /// List every device library found on the search path (the default with no specfile).
    #[arg(long)]
    list: bool,
    /// Print the effective configuration as shell assignments (`. <(vmi-info --config)`).
    #[arg(long)]
    config: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Say which chain a connection to this peer would run on (`KEY` or `KEY@HOST`; the
    /// specfile's `<route>` rules decide).
    #[arg(long, value_name = "KEY[@HOST]")]
    peer: Option<String>,
}

/// What this build is.
fn build_info() -> String {
    format!(
        "vmi {} (device ABI {}.{}, {}-{}, {} build)",
        env!("CARGO_PKG_VERSION"),
        vmi_core::abi::VMI_ABI_MAJOR,
        vmi_core::abi::VMI_ABI_MINOR,
        std::env::consts::ARCH,
        std::env::consts::OS,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    )
}

#[derive(Serialize)]
struct ListedParam {
    name: String,
    kind: params::ParamKind,
    default: String,
    doc: String,
    env_var: String,
}

#[derive(Serialize)]
struct Listed {
    type_name: String,
    library: String,
    loaded: bool,
    error: Option<String>,
    version: String,
    kind: Option<DeviceKind>,
    abi: String,
    description: String,
    params: Vec<ListedParam>,
    usable: Option<bool>,
    why_not: Option<String>,
}

/// A one-transport spec for `type_name` from `library`, to see whether it starts here.
fn transport_spec(type_name: &str, library: &std::path::Path) -> Option<Spec> {
    let text = format!(
        r#"<vmi version="1"><device name="{type_name}" type="{type_name}" library="{}"/><chain name="send"><use device="{type_name}"/></chain><chain name="receive"><use device="{type_name}"/></chain></vmi>"#,
        library.display()
    );
    Spec::parse_str(&text, "vmi-info").ok()
}

fn listing() -> Vec<Listed> {
    vmi_core::loader::discover()
        .into_iter()
        .map(|f| match f.loaded {
            Ok(t) => {
                let (usable, why_not) = if t.kind == DeviceKind::Transport {
                    match transport_spec(&t.name, &f.path).map(|s| Vmi::with_spec(s, &key())) {
                        Some(Ok(_)) => (Some(true), None),
                        Some(Err(e)) => (Some(false), Some(e.to_string())),
                        None => (
                            Some(false),
                            Some("its path cannot be written in a specfile".into()),
                        ),
                    }
                } else {
                    (None, None)
                };
                Listed {
                    params: t
                        .params
                        .iter()
                        .map(|p| ListedParam {
                            name: p.name.clone(),
                            kind: p.kind,
                            default: p.default.clone(),
                            doc: p.doc.clone(),
                            env_var: params::env_var_name(&t.name, &p.name),
                        })
                        .collect(),
                    type_name: t.name,
                    library: f.path.display().to_string(),
                    loaded: true,
                    error: None,
                    version: t.version,
                    kind: Some(t.kind),
                    abi: format!("{}.{}", t.abi.0, t.abi.1),
                    description: t.description,
                    usable,
                    why_not,
                }
            }
            Err(e) => Listed {
                type_name: f.type_name,
                library: f.path.display().to_string(),
                loaded: false,
                error: Some(e.to_string()),
                version: String::new(),
                kind: None,
                abi: String::new(),
                description: String::new(),
                params: vec![],
                usable: Some(false),
                why_not: Some(e.to_string()),
            },
        })
        .collect()
}

fn print_listing(list: &[Listed]) {
    println!("{}", build_info());
    let dirs: Vec<String> = vmi_core::loader::search_dirs(None)
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    println!("device search path: {}", dirs.join(", "));
    if list.is_empty() {
        println!(
            "no device libraries (libvmi_<type>.so) found; set VMI_DEVICE_PATH or install vmi"
        );
        return;
    }
    for d in list {
        println!();
        let kind = match d.kind {
            Some(DeviceKind::Transport) => "transport",
            Some(DeviceKind::Filter) => "filter",
            None => "unloadable",
        };
        println!(
            "{} {} ({kind}), device ABI {}",
            d.type_name, d.version, d.abi
        );
        println!("  library       {}", d.library);
        if !d.description.is_empty() {
            println!("  does          {}", d.description);
        }
        match (d.usable, &d.why_not, &d.error) {
            (_, _, Some(e)) => println!("  NOT LOADABLE  {e}"),
            (Some(true), _, _) => println!("  usable here   yes"),
            (Some(false), Some(why), _) => println!("  usable here   NO: {why}"),
            _ => {}
        }
        if !d.params.is_empty() {
            println!("  parameters (default; environment variable)");
            let w = d.params.iter().map(|p| p.name.len()).max().unwrap_or(0);
            for p in &d.params {
                println!(
                    "    {:w$} = {}  ({})  {}",
                    p.name, p.default, p.env_var, p.doc
                );
            }
        }
    }
}

/// Single-quotes a value for the shell.
fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

/// The effective configuration as shell assignments: the specfile's devices with their
/// effective values and sources, or (with no specfile) every device found with its defaults.
fn config_lines(spec_path: Option<PathBuf>) -> Result<Vec<String>, String> {
    let mut out = vec![format!("# {}", build_info())];
    let spec = match spec_path {
        Some(p) => Some(Spec::from_file(&p)),
        None if std::env::var_os("VMI_SPECFILE").is_some() => Some(Spec::from_env()),
        None => None,
    };
    match spec {
        Some(spec) => {
            let spec = spec.map_err(|e| e.to_string())?;
            if let Some(p) = &spec.path {
                out.push(format!(
                    "VMI_SPECFILE={}",
                    sh_quote(&p.display().to_string())
                ));
            }
            let env = |v: &str| std::env::var(v).ok();
            let i = assembly::inspect(&spec, &env).map_err(|e| e.to_string())?;
            for d in &i.devices {
                out.push(format!("# device '{}' ({})", d.name, d.ty.name));
                for p in &d.params {
                    out.push(format!(
                        "{}={}  # {}",
                        params::env_var_name(&d.name, &p.name),
                        sh_quote(&p.value),
                        p.source
                    ));
                }
            }
        }
        None => {
            out.push("# no specfile: every device found, with its defaults".into());
            for d in listing().iter().filter(|d| d.loaded) {
                out.push(format!("# device type '{}'", d.type_name));
                for p in &d.params {
                    out.push(format!("{}={}  # default", p.env_var, sh_quote(&p.default)));
                }
            }
        }
    }
    Ok(out)
}

#[derive(Serialize)]
struct ErrorReport {
    message: String,
    location: Option<Location>,
}

#[derive(Serialize)]
struct ParamReport {
    name: String,
    value: String,
    source: String,
    kind: params::ParamKind,
    doc: String,
    env_var: String,
}

#[derive(Serialize)]
struct DeviceReport {
    name: String,
    type_name: String,
    version: String,
    kind: DeviceKind,
    abi: String,
    library: String,
    description: String,
    wire_neutral: bool,
    params: Vec<ParamReport>,
    capabilities: Option<Capabilities>,
    usable: Option<bool>,
    why_not: Option<String>,
    /// For transports: whether peers must prove they hold a pre-shared key.
    authentication: Option<String>,
    /// For transports: the eager/rendezvous thresholds, in words (the device's `protocols`
    /// attribute; the parameters behind them are listed with their sources).
    protocols: Option<String>,
    /// For transports: how RDMA puts and gets move ("one-sided" with the ABI 1.3
    /// `rdma_access` entry, else "messages").
    rdma: Option<&'static str>,
}

#[derive(Serialize)]
struct Report {
    specfile: Option<String>,
    valid: bool,
    error: Option<ErrorReport>,
    signature: Option<String>,
    send_chain: Vec<String>,
    receive_chain: Vec<String>,
    /// Named chains (`<chain name="…">` other than send and receive), which connections
    /// opened with `connect_on` use: name and devices in processing order.
    extra_chains: Vec<ChainReport>,
    /// `<route>` rules, in order.
    routes: Vec<vmi_core::spec::RouteSpec>,
    /// The chain a connection to `--peer` would run on.
    peer_chain: Option<PeerChain>,
    /// Rails of multi-rail connections (`<rails>`), with the striping threshold and chunk.
    rails: Option<RailsReport>,
    devices: Vec<DeviceReport>,
}

/// The chain the routes give a peer.
#[derive(Serialize)]
struct PeerChain {
    key: String,
    host: String,
    /// The named chain, or "" for the send and receive chains.
    chain: String,
}

/// An extra named chain.
#[derive(Serialize)]
struct ChainReport {
    name: String,
    /// Devices in processing order.
    devices: Vec<String>,
}

#[derive(Serialize)]
struct RailsReport {
    rails: Vec<String>,
    stripe_min: u64,
    chunk: u64,
}

#[derive(Serialize)]
struct EnvEntry {
    name: String,
    meaning: String,
    value: Option<String>,
}

fn key() -> String {
    format!("vmi-info-{}", std::process::id())
}

fn spec_of_one(spec: &Spec, device: &str) -> Spec {
    let mut s = spec.clone();
    s.devices.retain(|d| d.name == device);
    s.chains.retain(|c| c.name == "send" || c.name == "receive");
    // One transport alone has no rails.
    s.rails = None;
    for c in &mut s.chains {
        c.entries.retain(|e| e.device == device);
    }
    s
}

fn report(spec_path: Option<PathBuf>, peer: Option<String>) -> Report {
    let mut r = Report {
        specfile: spec_path.as_ref().map(|p| p.display().to_string()),
        valid: false,
        error: None,
        signature: None,
        send_chain: vec![],
        rails: None,
        receive_chain: vec![],
        extra_chains: vec![],
        routes: vec![],
        peer_chain: None,
        devices: vec![],
    };
    let spec = match spec_path.map_or_else(Spec::from_env, |p| Spec::from_file(&p)) {
        Ok(s) => s,
        Err(e) => {
            r.error = Some(ErrorReport {
                location: e.location().cloned(),
                message: e.to_string(),
            });
            return r;
        }
    };
    if r.specfile.is_none() {
        r.specfile = spec.path.as_ref().map(|p| p.display().to_string());
    }
    let env = |v: &str| std::env::var(v).ok();
    let inspection: Inspection = match assembly::inspect(&spec, &env) {
        Ok(i) => i,
        Err(e) => {
            r.error = Some(ErrorReport {
                location: e.location().cloned(),
                message: e.to_string(),
            });
            return r;
        }
    };
    r.valid = true;
    r.signature = Some(inspection.signature.clone());
    r.send_chain = inspection.send.clone();
    r.receive_chain = inspection.receive.clone();
    r.extra_chains = spec
        .chains
        .iter()
        .filter(|c| c.name != "send" && c.name != "receive")
        .map(|c| ChainReport {
            name: c.name.clone(),
            devices: c.entries.iter().map(|e| e.device.clone()).collect(),
        })
        .collect();
    r.routes = spec.routes.clone();
    if let Some(p) = peer {
        let (key, host) = p.split_once('@').unwrap_or((p.as_str(), "localhost"));
        let chain = spec
            .routes
            .iter()
            .find(|r| r.matches(key, host))
            .map_or(String::new(), |r| r.chain.clone());
        r.peer_chain = Some(PeerChain {
            key: key.into(),
            host: host.into(),
            chain,
        });
    }
    if let Some(block) = &spec.rails {
        r.rails = Some(RailsReport {
            rails: inspection.rails.clone(),
            stripe_min: block
                .stripe_min
                .unwrap_or(vmi_core::assembly::RAILS_STRIPE_MIN),
            chunk: block.chunk.unwrap_or(vmi_core::assembly::RAILS_CHUNK),
        });
    }
    // Start the whole chain once for capabilities; then each transport alone for usability.
    let running = Vmi::with_spec(spec.clone(), &key());
    let caps: Vec<(String, Capabilities)> = match &running {
        Ok(v) => v
            .devices()
            .into_iter()
            .map(|d| (d.name, d.capabilities))
            .collect(),
        Err(_) => vec![],
    };
    let auth_of = |name: &str| -> Option<String> {
        running
            .as_ref()
            .ok()
            .and_then(|v| v.attr_get(name, "authentication").ok())
    };
    let auth: Vec<(String, Option<String>)> = inspection
        .devices
        .iter()
        .filter(|d| d.ty.kind == DeviceKind::Transport)
        .map(|d| (d.name.clone(), auth_of(&d.name)))
        .collect();
    let protocols: Vec<(String, Option<String>)> = inspection
        .devices
        .iter()
        .filter(|d| d.ty.kind == DeviceKind::Transport)
        .map(|d| {
            let p = running
                .as_ref()
                .ok()
                .and_then(|v| v.attr_get(&d.name, "protocols").ok());
            (d.name.clone(), p)
        })
        .collect();
    drop(running);
    for d in &inspection.devices {
        let (usable, why_not) = if d.ty.kind == DeviceKind::Transport {
            match Vmi::with_spec(spec_of_one(&spec, &d.name), &key()) {
                Ok(_) => (Some(true), None),
                Err(VmiError::Assembly(e)) => (Some(false), Some(e.to_string())),
                Err(e) => (Some(false), Some(e.to_string())),
            }
        } else {
            (None, None)
        };
        r.devices.push(DeviceReport {
            name: d.name.clone(),
            type_name: d.ty.name.clone(),
            version: d.ty.version.clone(),
            kind: d.ty.kind,
            abi: format!("{}.{}", d.ty.abi.0, d.ty.abi.1),
            library: d.ty.origin(),
            description: d.ty.description.clone(),
            wire_neutral: d.ty.wire_neutral,
            rdma: (d.ty.kind == DeviceKind::Transport).then(|| {
                if d.ty.provides().contains(&"rdma_access") {
                    "one-sided"
                } else {
                    "messages"
                }
            }),
            params: d
                .params
                .iter()
                .map(|p| {
                    let info = d.ty.params.iter().find(|i| i.name == p.name);
                    ParamReport {
                        name: p.name.clone(),
                        value: p.value.clone(),
                        source: p.source.to_string(),
                        kind: info.map_or(params::ParamKind::String, |i| i.kind),
                        doc: info.map(|i| i.doc.clone()).unwrap_or_default(),
                        env_var: params::env_var_name(&d.name, &p.name),
                    }
                })
                .collect(),
            capabilities: caps.iter().find(|(n, _)| *n == d.name).map(|(_, c)| *c),
            usable,
            why_not,
            authentication: auth
                .iter()
                .find(|(n, _)| *n == d.name)
                .and_then(|(_, a)| a.clone()),
            protocols: protocols
                .iter()
                .find(|(n, _)| *n == d.name)
                .and_then(|(_, a)| a.clone()),
        });
    }
    r
}

fn print_report(r: &Report) {
    println!("specfile: {}", r.specfile.as_deref().unwrap_or("(none)"));
    if let Some(e) = &r.error {
        println!("INVALID: {}", e.message);
        return;
    }
    println!("filter signature: {}", r.signature.as_deref().unwrap_or(""));
    println!(
        "send chain (application -> wire):    {}",
        r.send_chain.join(" -> ")
    );
    println!(
        "receive chain (wire -> application): {}",
        r.receive_chain.join(" -> ")
    );
    for c in &r.extra_chains {
        println!(
            "chain '{}' (connections opened with connect_on or chosen by a route): {}",
            c.name,
            c.devices.join(" -> ")
        );
    }
    for route in &r.routes {
        println!(
            "route to chain '{}': peers with key {} at host {}",
            route.chain,
            route.key.as_deref().unwrap_or("*"),
            route.host.as_deref().unwrap_or("*")
        );
    }
    if let Some(p) = &r.peer_chain {
        let chain = if p.chain.is_empty() {
            "the send and receive chains".to_string()
        } else {
            format!("chain '{}'", p.chain)
        };
        println!("a connection to '{}' at {} runs on {chain}", p.key, p.host);
    }
    if let Some(rails) = &r.rails {
        println!(
            "rails (one connection over all of them): {}; fragments from {} bytes striped in chunks of up to {} bytes; a failed rail's data goes on the others",
            rails.rails.join(" + "),
            rails.stripe_min,
            rails.chunk
        );
    }
    for d in &r.devices {
        println!();
        println!("device '{}'", d.name);
        let kind = match d.kind {
            DeviceKind::Filter if d.wire_neutral => "filter, wire-neutral",
            DeviceKind::Filter => "filter",
            DeviceKind::Transport => "transport",
        };
        println!(
            "  type          {} {} ({kind}), device ABI {}",
            d.type_name, d.version, d.abi
        );
        println!("  library       {}", d.library);
        println!("  does          {}", d.description);
        if let Some(c) = d.capabilities {
            let lim = |v: u64| {
                if v == 0 {
                    "no limit".to_string()
                } else {
                    v.to_string()
                }
            };
            println!(
                "  capabilities  max fragment {}, headroom {}, tailroom {}, max connect data {}",
                lim(c.max_fragment),
                c.headroom,
                c.tailroom,
                lim(c.max_connect_data as u64)
            );
        }
        if let Some(a) = &d.authentication {
            println!("  authentication {a}");
        }
        if let Some(p) = &d.protocols {
            println!("  protocols     {p}");
        }
        match d.rdma {
            Some("one-sided") => println!(
                "  RDMA          one-sided: puts and gets go straight into a peer's memory where the transport can reach it (else as messages)"
            ),
            Some(_) => {
                println!("  RDMA          as messages that the peer's vmi answers in its poll")
            }
            None => {}
        }
        match (d.usable, &d.why_not) {
            (Some(true), _) => println!("  usable here   yes"),
            (Some(false), Some(why)) => println!("  usable here   NO: {why}"),
            _ => {}
        }
        if d.params.is_empty() {
            println!("  parameters    (none)");
        } else {
            println!("  parameters");
            let w = d.params.iter().map(|p| p.name.len()).max().unwrap_or(0);
            let vw = d
                .params
                .iter()
                .map(|p| p.value.len())
                .max()
                .unwrap_or(0)
                .min(24);
            for p in &d.params {
                println!(
                    "    {:w$} = {:vw$}  [{}]  {}",
                    p.name, p.value, p.source, p.doc
                );
            }
        }
    }
}

fn env_entries(spec_path: Option<PathBuf>) -> Vec<EnvEntry> {
    let mut out: Vec<EnvEntry> = CORE_ENV_VARS
        .iter()
        .map(|(n, m)| EnvEntry {
            name: n.to_string(),
            meaning: m.to_string(),
            value: std::env::var(n).ok(),
        })
        .collect();
    let no_spec = spec_path.is_none() && std::env::var_os("VMI_SPECFILE").is_none();
    if no_spec {
        for d in listing() {
            for p in d.params {
                out.push(EnvEntry {
                    meaning: format!(
                        "device type '{}' parameter '{}': {} (default {})",
                        d.type_name, p.name, p.doc, p.default
                    ),
                    value: std::env::var(&p.env_var).ok(),
                    name: p.env_var,
                });
            }
        }
        return out;
    }
    let spec = spec_path.map_or_else(Spec::from_env, |p| Spec::from_file(&p));
    if let Ok(spec) = spec
        && let Ok(i) = assembly::inspect(&spec, &|_| None)
    {
        for d in &i.devices {
            for p in &d.ty.params {
                let name = params::env_var_name(&d.name, &p.name);
                out.push(EnvEntry {
                    meaning: format!(
                        "device '{}' parameter '{}': {} (default {})",
                        d.name, p.name, p.doc, p.default
                    ),
                    value: std::env::var(&name).ok(),
                    name,
                });
            }
        }
    }
    out
}

fn main() -> ExitCode {
    let args = Args::parse();
    vmi_tools::init_logging();
    if args.env {
        let entries = env_entries(args.spec.clone());
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&entries).expect("serialisable")
            );
        } else {
            let w = entries.iter().map(|e| e.name.len()).max().unwrap_or(0);
            for e in &entries {
                let v = e
                    .value
                    .as_ref()
                    .map(|v| format!("  (set: {v})"))
                    .unwrap_or_default();
                println!("{:w$}  {}{v}", e.name, e.meaning);
            }
            let known: std::collections::BTreeSet<String> =
                entries.iter().map(|e| e.name.clone()).collect();
            for (var, hint) in params::unknown_env_vars(std::env::vars().map(|(k, _)| k), &known) {
                let hint = hint
                    .map(|h| format!("; did you mean {h}?"))
                    .unwrap_or_default();
                println!("warning: {var} is set but nothing reads it{hint}");
            }
        }
        return ExitCode::SUCCESS;
    }
    if args.config {
        return match config_lines(args.spec) {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vmi-info: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.list || (args.spec.is_none() && std::env::var_os("VMI_SPECFILE").is_none()) {
        let list = listing();
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "build": build_info(),
                    "devices": list,
                }))
                .expect("serialisable")
            );
        } else {
            print_listing(&list);
        }
        return ExitCode::SUCCESS;
    }
    let r = report(args.spec, args.peer);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).expect("serialisable")
        );
    } else {
        print_report(&r);
    }
    if r.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
