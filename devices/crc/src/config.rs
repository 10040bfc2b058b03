//! CRC parameters.

use vmi_device::abi::{VMI_PARAM_BOOL, VmiParamSpec};
use vmi_device::{Config, param};

/// Declared parameters.
pub const PARAMS: &[VmiParamSpec] = &[param(
    c"verify",
    VMI_PARAM_BOOL,
    c"true",
    c"check trailers on receive (false only strips them; for measuring)",
)];

/// Typed configuration.
#[derive(Clone, Debug)]
pub struct CrcConfig {
    /// Check trailers.
    pub verify: bool,
}

impl CrcConfig {
    /// Reads the resolved parameters.
    pub fn from_config(c: &Config) -> Result<CrcConfig, String> {
        Ok(CrcConfig {
            verify: c.get_bool("verify").map_err(|e| e.to_string())?,
        })
    }
}
