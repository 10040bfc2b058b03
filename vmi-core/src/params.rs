//! Device parameters: declared by the device, set in the specfile, overridden by
//! `VMI_<DEVICE>_<PARAM>` environment variables.
// Errors here are built once, at start-up, and carry file locations for the message.
#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;

use serde::Serialize;

use crate::spec::{DeviceSpec, Location};

/// Environment variables the runtime itself reads, with their meaning.
pub const CORE_ENV_VARS: &[(&str, &str)] = &[
    (
        "VMI_SPECFILE",
        "path of the XML specfile that lists devices and chains",
    ),
    (
        "VMI_KEY",
        "this process's key when the program is not given one",
    ),
    (
        "VMI_DEVICE_PATH",
        "':'-separated directories searched for device libraries",
    ),
    (
        "VMI_LOG",
        "log filter for the vmi tools (env_logger syntax, e.g. info or vmi_tcp=debug)",
    ),
    (
        "VMI_RANK",
        "this process's rank in a job started without a launcher (with VMI_PROCS; see vmi_core::job)",
    ),
    (
        "VMI_PROCS",
        "the number of processes in the job (with VMI_RANK)",
    ),
    (
        "VMI_JOB",
        "the job's name, shared by its processes: rank r serves key <job>.<r> (default vmi, or the launcher's job id)",
    ),
    (
        "VMI_HOSTS",
        "hosts of the job's ranks: one for all, one per rank, or host*count blocks (default localhost)",
    ),
    (
        "VMI_PMIX",
        "0: do not ask PMIx for the hosts of a job started by mpirun (every rank is then taken to be on this host unless VMI_HOSTS says otherwise)",
    ),
    (
        "VMI_ADVERTISE_HOST",
        "the host name or address this process gives PMIx for its peers to reach it (default: its host name)",
    ),
    (
        "VMI_CONNECT_TIMEOUT",
        "seconds a connect keeps trying a peer that is not there yet before it fails (0, the default: fail at once)",
    ),
    (
        "VMI_AUTH_KEY_FILE",
        "file holding the pre-shared key that authenticates peers (owner-only mode, at least 16 bytes); transports whose auth_key_file parameter is empty use it",
    ),
];

pub use vmi_device::param::{ParamKind, parse_bool, parse_uint};

/// A parameter as a device declares it.
#[derive(Clone, Debug, Serialize)]
pub struct ParamInfo {
    /// Name.
    pub name: String,
    /// Type.
    pub kind: ParamKind,
    /// Default value.
    pub default: String,
    /// What it does.
    pub doc: String,
}

/// Where an effective parameter value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamSource {
    /// The device's default.
    Default,
    /// The specfile, at this place.
    Specfile(Location),
    /// This environment variable.
    Environment(String),
    /// The application: it accepts no connections ([`crate::Options::accept`] is false), so a
    /// transport's `listen` parameter is turned off.
    Application,
}

impl std::fmt::Display for ParamSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamSource::Default => f.write_str("default"),
            ParamSource::Specfile(at) => write!(f, "specfile {at}"),
            ParamSource::Environment(var) => write!(f, "environment {var}"),
            ParamSource::Application => f.write_str("the application (it accepts no connections)"),
        }
    }
}

/// A parameter's effective value.
#[derive(Clone, Debug, Serialize)]
pub struct ResolvedParam {
    /// Name.
    pub name: String,
    /// Effective value (canonical text).
    pub value: String,
    /// Where the value came from.
    pub source: ParamSource,
}

/// Why a parameter was refused.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    /// The specfile sets a parameter the device does not declare.
    #[error(
        "{at}: device '{device}' ({type_name}) has no parameter '{name}'{hint}; its parameters: {known}"
    )]
    Unknown {
        /// Where.
        at: Location,
        /// Device instance.
        device: String,
        /// Device type.
        type_name: String,
        /// The name written.
        name: String,
        /// ", did you mean 'x'?" or empty.
        hint: String,
        /// The declared names.
        known: String,
    },
    /// A value does not fit the declared type.
    #[error(
        "{origin}: parameter '{name}' of device '{device}' = \"{value}\" is invalid: expected {expected}"
    )]
    BadValue {
        /// "file:line:col" or the environment variable.
        origin: String,
        /// The specfile position, when the value came from the specfile.
        at: Option<Location>,
        /// Device instance.
        device: String,
        /// Parameter.
        name: String,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: String,
    },
}

/// The environment variable that overrides `param` of device instance `device`.
pub fn env_var_name(device: &str, param: &str) -> String {
    format!(
        "VMI_{}_{}",
        device.to_ascii_uppercase().replace('-', "_"),
        param.to_ascii_uppercase()
    )
}

/// Resolves a device's parameters: default, then specfile, then environment.
pub fn resolve(
    device: &DeviceSpec,
    declared: &[ParamInfo],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<ResolvedParam>, ParamError> {
    for setting in &device.params {
        if !declared.iter().any(|p| p.name == setting.name) {
            let names: Vec<&str> = declared.iter().map(|p| p.name.as_str()).collect();
            return Err(ParamError::Unknown {
                at: setting.at.clone(),
                device: device.name.clone(),
                type_name: device.type_name.clone(),
                name: setting.name.clone(),
                hint: closest(&setting.name, names.iter().copied())
                    .map(|c| format!(", did you mean '{c}'?"))
                    .unwrap_or_default(),
                known: if names.is_empty() {
                    "(none)".into()
                } else {
                    names.join(", ")
                },
            });
        }
    }
    let mut out = Vec::with_capacity(declared.len());
    for p in declared {
        let var = env_var_name(&device.name, &p.name);
        let (raw, source, origin, at) = if let Some(v) = env(&var) {
            (v, ParamSource::Environment(var.clone()), var.clone(), None)
        } else if let Some(s) = device.params.iter().find(|s| s.name == p.name) {
            (
                s.value.clone(),
                ParamSource::Specfile(s.at.clone()),
                s.at.to_string(),
                Some(s.at.clone()),
            )
        } else {
            let origin = format!("default of device type '{}'", device.type_name);
            (p.default.clone(), ParamSource::Default, origin, None)
        };
        let value = p
            .kind
            .check(&raw)
            .map_err(|expected| ParamError::BadValue {
                origin,
                at,
                device: device.name.clone(),
                name: p.name.clone(),
                value: raw.clone(),
                expected,
            })?;
        out.push(ResolvedParam {
            name: p.name.clone(),
            value,
            source,
        });
    }
    Ok(out)
}

/// The candidate closest to `word`, if any is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Names `VMI_*` variables in `vars` that nothing reads, each with the closest known name.
pub fn unknown_env_vars(
    vars: impl IntoIterator<Item = String>,
    known: &BTreeSet<String>,
) -> Vec<(String, Option<String>)> {
    vars.into_iter()
        .filter(|v| v.starts_with("VMI_") && !known.contains(v))
        .map(|v| {
            let hint = closest(&v, known.iter().map(String::as_str)).map(str::to_string);
            (v, hint)
        })
        .collect()
}

/// Longest duration in seconds a command line accepts (one year).
pub const MAX_SECONDS: f64 = 365.0 * 86400.0;

/// Parses a number of seconds from a command line: finite, 0 or more, at most a year (so a
/// deadline computed from it cannot overflow).
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=MAX_SECONDS).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{s}' is not a number of seconds from 0 to {MAX_SECONDS} (examples: 5, 0.5, 60)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ParamSetting, Spec};

    fn declared() -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: "port".into(),
                kind: ParamKind::Uint,
                default: "0".into(),
                doc: String::new(),
            },
            ParamInfo {
                name: "nodelay".into(),
                kind: ParamKind::Bool,
                default: "true".into(),
                doc: String::new(),
            },
        ]
    }

    fn device(params: &[(&str, &str)]) -> DeviceSpec {
        let spec = Spec::parse_str(
            "<vmi><device name=\"net-0\" type=\"tcp\"/><chain name=\"send\"><use device=\"net-0\"/></chain><chain name=\"receive\"><use device=\"net-0\"/></chain></vmi>",
            "p.xml",
        )
        .unwrap();
        let mut d = spec.devices[0].clone();
        for (n, v) in params {
            d.params.push(ParamSetting {
                name: n.to_string(),
                value: v.to_string(),
                at: d.at.clone(),
            });
        }
        d
    }

    #[test]
    fn defaults_specfile_then_environment() {
        let d = device(&[("port", "64k")]);
        let r = resolve(&d, &declared(), &|_| None).unwrap();
        assert_eq!(r[0].value, "65536");
        assert!(matches!(r[0].source, ParamSource::Specfile(_)));
        assert_eq!(r[1].value, "true");
        assert_eq!(r[1].source, ParamSource::Default);
        let r = resolve(&d, &declared(), &|v| {
            (v == "VMI_NET_0_PORT").then(|| "7".to_string())
        })
        .unwrap();
        assert_eq!(r[0].value, "7");
        assert_eq!(
            r[0].source,
            ParamSource::Environment("VMI_NET_0_PORT".into())
        );
    }

    #[test]
    fn unknown_parameter_suggests() {
        let e = resolve(&device(&[("prot", "1")]), &declared(), &|_| None).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("did you mean 'port'"), "{text}");
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let e = resolve(&device(&[("nodelay", "maybe")]), &declared(), &|_| None).unwrap_err();
        assert!(e.to_string().contains("parameter 'nodelay'"), "{e}");
        let e = resolve(&device(&[]), &declared(), &|v| {
            (v == "VMI_NET_0_PORT").then(|| "-3".into())
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("VMI_NET_0_PORT:"), "{e}");
    }

    #[test]
    fn uint_suffixes_and_overflow() {
        assert_eq!(parse_uint("16m"), Some(16 << 20));
        assert_eq!(parse_uint("1G"), Some(1 << 30));
        assert_eq!(parse_uint("99999999999999999999"), None);
        assert_eq!(parse_uint("20000000000g"), None);
        assert_eq!(parse_uint("k"), None);
    }

    #[test]
    fn unknown_env_vars_get_a_hint() {
        let known: BTreeSet<String> = ["VMI_SPECFILE".to_string(), "VMI_KEY".to_string()].into();
        let out = unknown_env_vars(
            [
                "VMI_SPECFIEL".to_string(),
                "VMI_KEY".to_string(),
                "PATH".to_string(),
            ],
            &known,
        );
        assert_eq!(
            out,
            vec![("VMI_SPECFIEL".to_string(), Some("VMI_SPECFILE".to_string()))]
        );
    }
}
