//! From a specfile to a plan of running devices: loads each device type, resolves its
//! parameters, and checks the chains (each has a transport, transports at the wire end,
//! both chains use the same transports).
// Errors here are built once, at start-up, and carry file locations for the message.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;

use crate::device::DeviceKind;
use crate::engine::Planned;
use crate::loader::{self, DeviceType, LoadError};
use crate::params::{self, ParamError};
use crate::signature::Signature;
use crate::spec::{ChainSpec, Location, Spec, SpecError};

/// Why a specfile could not be turned into running chains.
#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    /// The specfile itself is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A device could not be loaded or started.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A parameter is invalid.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// A chain has no transport.
    #[error(
        "{at}: chain '{chain}' has no transport; add one such as <use device=\"tcp\"/> ({end})"
    )]
    NoTransport {
        /// Where the chain starts.
        at: Location,
        /// The chain.
        chain: String,
        /// Where in the chain it belongs.
        end: &'static str,
    },
    /// A filter stands on the wire side of a transport.
    #[error(
        "{at}: filter '{filter}' comes {wrong} transport '{transport}' in chain '{chain}'; {rule}"
    )]
    TransportOrder {
        /// Where the filter's `<use>` is.
        at: Location,
        /// The chain.
        chain: String,
        /// The filter.
        filter: String,
        /// The transport.
        transport: String,
        /// "after" or "before".
        wrong: &'static str,
        /// The rule.
        rule: &'static str,
    },
    /// Send and receive chains use different transports.
    #[error(
        "{at}: the receive chain uses transports [{recv}] but the send chain uses [{send}]; a connection's transport carries both directions, so list the same transports in both"
    )]
    TransportSets {
        /// Where the receive chain starts.
        at: Location,
        /// Send chain transports.
        send: String,
        /// Receive chain transports.
        recv: String,
    },
    /// A named chain's transports differ from the send chain's.
    #[error(
        "{at}: chain '{chain}' uses transports [{named}] but the send chain uses [{send}]; a named chain chooses filters, not transports, so list the same transports"
    )]
    ChainTransports {
        /// Where the named chain starts.
        at: Location,
        /// Its name.
        chain: String,
        /// Send chain transports.
        send: String,
        /// The named chain's transports.
        named: String,
    },
    /// A `<route>` names no chain of the file.
    #[error("{at}: the route names chain '{chain}', which is not defined; named chains: {known}")]
    RouteChain {
        /// Where the route is.
        at: Location,
        /// The name it gives.
        chain: String,
        /// The named chains there are.
        known: String,
    },
    /// More named chains than a connection can name.
    #[error("{at}: more than {MAX_NAMED_CHAINS} named chains; join some")]
    TooManyChains {
        /// Where the chain over the limit starts.
        at: Location,
    },
    /// The process key is not usable.
    #[error("invalid key '{key}': {reason}")]
    BadKey {
        /// The key.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl AssemblyError {
    /// Where in the specfile the problem is, when known.
    pub fn location(&self) -> Option<&Location> {
        match self {
            AssemblyError::Spec(e) => e.location(),
            AssemblyError::Param(ParamError::Unknown { at, .. }) => Some(at),
            AssemblyError::Param(ParamError::BadValue { at, .. }) => at.as_ref(),
            AssemblyError::NoTransport { at, .. }
            | AssemblyError::TransportOrder { at, .. }
            | AssemblyError::TransportSets { at, .. }
            | AssemblyError::ChainTransports { at, .. }
            | AssemblyError::TooManyChains { at }
            | AssemblyError::RouteChain { at, .. } => Some(at),
            _ => None,
        }
    }
}

/// Processing order as written vs. application-first order.
fn top_down(chain: &ChainSpec) -> Vec<&str> {
    let mut v: Vec<&str> = chain.entries.iter().map(|e| e.device.as_str()).collect();
    if chain.name == "receive" {
        v.reverse();
    }
    v
}

/// The filter signature's entries of a chain (its devices' types, application first):
/// `name@major` of each filter that changes the wire (transports and wire-neutral filters
/// leave no mark). The one rule for the specfile's chains and for chains added at run time.
pub(crate) fn filter_marks<'a>(types: impl IntoIterator<Item = &'a DeviceType>) -> Vec<String> {
    types
        .into_iter()
        .filter(|ty| ty.kind == DeviceKind::Filter && !ty.wire_neutral)
        .map(|ty| {
            format!(
                "{}@{}",
                ty.name,
                ty.version.split('.').next().unwrap_or("0")
            )
        })
        .collect()
}

/// Checks a key: 1 to 255 bytes, no whitespace or control characters.
pub fn check_key(key: &str) -> Result<(), AssemblyError> {
    let reason = if key.is_empty() {
        Some("it is empty; give a key as the program's argument or in VMI_KEY")
    } else if key.len() > 255 {
        Some("it is longer than 255 bytes")
    } else if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains whitespace or control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(AssemblyError::BadKey {
            key: key.into(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Loads one device type as the spec asks: a statically registered one when no `library=`
/// is given and one is registered, else the shared object.
pub fn load_type(spec: &Spec, name: &str) -> Result<DeviceType, LoadError> {
    let d = spec.device(name).expect("chains only name defined devices");
    if d.library.is_none()
        && let Some(r) = loader::load_static(&d.type_name)
    {
        return r;
    }
    let path = loader::find_library(&d.type_name, d.library.as_deref(), spec.base_dir())?;
    loader::load_library(&path, &d.type_name)
}

/// The devices to start and the chains, in engine indices.
pub(crate) struct Plan {
    pub devices: Vec<Planned>,
    pub send: Vec<usize>,
    pub recv: Vec<usize>,
    pub signature: Signature,
    /// The rails (engine indices of transports), with their tuning.
    pub rails: Option<PlannedRails>,
    /// The named chains (chain 1, 2, …): name, engine indices (application first, both
    /// directions) and filter signature.
    pub extra: Vec<PlannedChain>,
}

/// A named chain (`<chain name="…">` other than send and receive), resolved.
#[derive(Clone, Debug)]
pub(crate) struct PlannedChain {
    pub name: String,
    pub devices: Vec<usize>,
    pub signature: String,
}

/// The `<rails>` block resolved.
#[derive(Clone, Debug)]
pub(crate) struct PlannedRails {
    /// Transport indices, the first connections start on first.
    pub devices: Vec<usize>,
    /// Fragments at least this long are striped.
    pub stripe_min: u64,
    /// Largest chunk.
    pub chunk: u64,
}

/// Most named chains in one specfile (a chain's number travels in a byte).
pub const MAX_NAMED_CHAINS: usize = 254;

/// Default `stripe_min` of `<rails>`.
pub const RAILS_STRIPE_MIN: u64 = 64 * 1024;
/// Default `chunk` of `<rails>`.
pub const RAILS_CHUNK: u64 = 256 * 1024;

/// The transport parameter the core turns off for applications that accept no connections.
pub const LISTEN_PARAM: &str = "listen";

/// Loads and checks everything the spec names.
///
/// When `accept` is false, every device that declares a boolean `listen` parameter gets it
/// set to false (the convention by which transports learn that the application accepts no
/// connections, so that they open no listening socket).
pub(crate) fn plan(
    spec: &Spec,
    env: &dyn Fn(&str) -> Option<String>,
    accept: bool,
) -> Result<Plan, AssemblyError> {
    let mut names: Vec<&str> = Vec::new();
    for chain in &spec.chains {
        for e in &chain.entries {
            if !names.contains(&e.device.as_str()) {
                names.push(&e.device);
            }
        }
    }
    for d in &spec.devices {
        if !names.contains(&d.name.as_str()) {
            log::warn!(
                "{}: device '{}' is defined but no chain uses it",
                d.at,
                d.name
            );
        }
    }
    let mut devices = Vec::with_capacity(names.len());
    for name in &names {
        let ty = load_type(spec, name)?;
        let dspec = spec.device(name).expect("defined");
        let mut resolved = params::resolve(dspec, &ty.params, env)?;
        if !accept {
            for p in resolved.iter_mut().filter(|p| p.name == LISTEN_PARAM) {
                p.value = "false".into();
                p.source = params::ParamSource::Application;
            }
        }
        devices.push(Planned {
            name: name.to_string(),
            ty,
            params: resolved,
        });
    }
    let index = |n: &str| names.iter().position(|x| *x == n).expect("planned");
    let kind = |n: &str| devices[index(n)].ty.kind;
    for chain in &spec.chains {
        check_chain(chain, &kind)?;
    }
    let send_spec = spec.chain("send").expect("parser requires it");
    let recv_spec = spec.chain("receive").expect("parser requires it");
    let send: Vec<usize> = top_down(send_spec).into_iter().map(index).collect();
    let recv: Vec<usize> = top_down(recv_spec).into_iter().map(index).collect();
    let transports = |c: &[usize]| -> BTreeSet<usize> {
        c.iter()
            .copied()
            .filter(|&d| devices[d].ty.kind == DeviceKind::Transport)
            .collect()
    };
    if transports(&send) != transports(&recv) {
        let show = |c: &[usize]| {
            c.iter()
                .filter(|&&d| devices[d].ty.kind == DeviceKind::Transport)
                .map(|&d| devices[d].name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(AssemblyError::TransportSets {
            at: recv_spec.at.clone(),
            send: show(&send),
            recv: show(&recv),
        });
    }
    let filters = |c: &[usize]| filter_marks(c.iter().map(|&d| &devices[d].ty));
    let mut signature = Signature {
        send: filters(&send),
        recv: filters(&recv),
    };
    let rails = match &spec.rails {
        None => None,
        Some(block) => {
            let mut list = Vec::new();
            for r in &block.rails {
                let used = send.iter().any(|&d| devices[d].name == r.device);
                if !used || kind(&r.device) != DeviceKind::Transport {
                    return Err(SpecError::Rails {
                        at: r.at.clone(),
                        message: format!(
                            "rail '{}' must be a transport used by the send and receive chains",
                            r.device
                        ),
                    }
                    .into());
                }
                list.push(index(&r.device));
            }
            // Both sides must agree on rails: the marker makes the filter signatures differ
            // otherwise, so a connect between them is refused at the handshake with the reason.
            let marker = format!("rails@{}", list.len());
            signature.send.push(marker.clone());
            signature.recv.push(marker);
            Some(PlannedRails {
                devices: list,
                stripe_min: block.stripe_min.unwrap_or(RAILS_STRIPE_MIN),
                chunk: block.chunk.unwrap_or(RAILS_CHUNK),
            })
        }
    };
    let mut extra = Vec::new();
    for chain in spec
        .chains
        .iter()
        .filter(|c| c.name != "send" && c.name != "receive")
    {
        let list: Vec<usize> = top_down(chain).into_iter().map(index).collect();
        let names = |set: BTreeSet<usize>| {
            set.iter()
                .map(|&d| devices[d].name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if transports(&list) != transports(&send) {
            return Err(AssemblyError::ChainTransports {
                at: chain.at.clone(),
                chain: chain.name.clone(),
                send: names(transports(&send)),
                named: names(transports(&list)),
            });
        }
        if extra.len() >= MAX_NAMED_CHAINS {
            return Err(AssemblyError::TooManyChains {
                at: chain.at.clone(),
            });
        }
        let signature = Signature {
            send: filters(&list),
            recv: filters(&list),
        }
        .encode();
        extra.push(PlannedChain {
            name: chain.name.clone(),
            devices: list,
            signature,
        });
    }
    for r in &spec.routes {
        if !extra.iter().any(|c| c.name == r.chain) {
            let known: Vec<String> = extra.iter().map(|c| format!("'{}'", c.name)).collect();
            return Err(AssemblyError::RouteChain {
                at: r.at.clone(),
                chain: r.chain.clone(),
                known: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
    }
    Ok(Plan {
        devices,
        send,
        recv,
        signature,
        rails,
        extra,
    })
}

fn check_chain(chain: &ChainSpec, kind: &dyn Fn(&str) -> DeviceKind) -> Result<(), AssemblyError> {
    let receive = chain.name == "receive";
    let entries: Vec<_> = chain.entries.iter().collect();
    if !entries
        .iter()
        .any(|e| kind(&e.device) == DeviceKind::Transport)
    {
        return Err(AssemblyError::NoTransport {
            at: chain.at.clone(),
            chain: chain.name.clone(),
            end: if receive {
                "first in the receive chain"
            } else {
                "last in the chain"
            },
        });
    }
    // Send-like chains: filters, then transports. Receive chain: transports, then filters.
    let mut seen_other: Option<&str> = None;
    for e in &entries {
        let k = kind(&e.device);
        let leading = if receive {
            DeviceKind::Transport
        } else {
            DeviceKind::Filter
        };
        if k == leading {
            if let Some(other) = seen_other {
                let (filter, transport) = if receive {
                    (other, e.device.as_str())
                } else {
                    (e.device.as_str(), other)
                };
                return Err(AssemblyError::TransportOrder {
                    at: e.at.clone(),
                    chain: chain.name.clone(),
                    filter: filter.into(),
                    transport: transport.into(),
                    wrong: if receive { "before" } else { "after" },
                    rule: if receive {
                        "the receive chain runs from the wire to the application, so its transports come first"
                    } else {
                        "a chain runs from the application to the wire, so its transports come last"
                    },
                });
            }
        } else if seen_other.is_none() {
            seen_other = Some(&e.device);
        }
    }
    Ok(())
}

/// A device as a specfile resolves it, before it is started.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlannedDevice {
    /// Instance name.
    pub name: String,
    /// The loaded type (library, ABI, version, kind, declared parameters).
    #[serde(rename = "device_type")]
    pub ty: DeviceType,
    /// Effective parameters and where each value came from.
    pub params: Vec<crate::params::ResolvedParam>,
}

/// What a specfile resolves to, without starting any device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Inspection {
    /// Devices used by chains, in first-use order.
    pub devices: Vec<PlannedDevice>,
    /// The send chain, application to wire (instance names).
    pub send: Vec<String>,
    /// The receive chain, wire to application (instance names, as written).
    pub receive: Vec<String>,
    /// The filter signature exchanged at connect.
    pub signature: String,
    /// The rails (transport instance names), empty without a `<rails>` block.
    pub rails: Vec<String>,
}

/// Loads and checks everything the spec names, without starting devices.
pub fn inspect(
    spec: &Spec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Inspection, AssemblyError> {
    let plan = plan(spec, env, true)?;
    let name = |i: &usize| plan.devices[*i].name.clone();
    let send = plan.send.iter().map(name).collect();
    let mut receive: Vec<String> = plan.recv.iter().map(name).collect();
    receive.reverse();
    let rails = plan
        .rails
        .iter()
        .flat_map(|r| r.devices.iter().map(name))
        .collect();
    Ok(Inspection {
        rails,
        signature: plan.signature.encode(),
        send,
        receive,
        devices: plan
            .devices
            .into_iter()
            .map(|p| PlannedDevice {
                name: p.name,
                ty: p.ty,
                params: p.params,
            })
            .collect(),
    })
}

/// Every `VMI_*` variable this spec makes meaningful.
pub fn known_env_vars(spec: &Spec, types: &[(String, DeviceType)]) -> BTreeSet<String> {
    let mut known: BTreeSet<String> = params::CORE_ENV_VARS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    for d in &spec.devices {
        if let Some((_, ty)) = types.iter().find(|(n, _)| *n == d.name) {
            for p in &ty.params {
                known.insert(params::env_var_name(&d.name, &p.name));
            }
        }
    }
    known
}
