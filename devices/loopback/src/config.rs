//! Loopback parameters.

use vmi_device::abi::VMI_PARAM_UINT;
use vmi_device::abi::VmiParamSpec;
use vmi_device::{Config, param};

/// Declared parameters.
pub const PARAMS: &[VmiParamSpec] = &[param(
    c"max_fragment",
    VMI_PARAM_UINT,
    c"64m",
    c"largest fragment payload in bytes",
)];

/// Typed configuration.
#[derive(Clone, Debug)]
pub struct LoopbackConfig {
    /// Largest fragment payload.
    pub max_fragment: u64,
}

impl LoopbackConfig {
    /// Reads the resolved parameters.
    pub fn from_config(c: &Config) -> Result<LoopbackConfig, String> {
        Ok(LoopbackConfig {
            max_fragment: c.get_u64("max_fragment").map_err(|e| e.to_string())?,
        })
    }
}
