//! vmi-info: validates a specfile and shows what it resolves to: chains, each device's
//! library, ABI, version, kind, parameters (effective value and source), capabilities, and
//! whether each transport is usable here.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
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
}

#[derive(Serialize)]
struct Report {
    specfile: Option<String>,
    valid: bool,
    error: Option<ErrorReport>,
    signature: Option<String>,
    send_chain: Vec<String>,
    receive_chain: Vec<String>,
    devices: Vec<DeviceReport>,
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
    for c in &mut s.chains {
        c.entries.retain(|e| e.device == device);
    }
    s
}

fn report(spec_path: Option<PathBuf>) -> Report {
    let mut r = Report {
        specfile: spec_path.as_ref().map(|p| p.display().to_string()),
        valid: false,
        error: None,
        signature: None,
        send_chain: vec![],
        receive_chain: vec![],
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
    let spec = spec_path.map_or_else(Spec::from_env, |p| Spec::from_file(&p));
    if let Ok(spec) = spec {
        if let Ok(i) = assembly::inspect(&spec, &|_| None) {
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
    let r = report(args.spec);
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
