//! Trace parameters.

use vmi_device::abi::{VMI_PARAM_BOOL, VmiParamSpec};
use vmi_device::{Config, param};

/// Declared parameters.
pub const PARAMS: &[VmiParamSpec] = &[param(
    c"log",
    VMI_PARAM_BOOL,
    c"false",
    c"log one line per IRB at info level",
)];

/// Typed configuration.
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// Per-IRB log lines.
    pub log: bool,
}

impl TraceConfig {
    /// Reads the resolved parameters.
    pub fn from_config(c: &Config) -> Result<TraceConfig, String> {
        Ok(TraceConfig {
            log: c.get_bool("log").map_err(|e| e.to_string())?,
        })
    }
}
