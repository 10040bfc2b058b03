//! Skeleton parameters: one, to show how parameters are declared and read.

use vmi_device::abi::{VMI_PARAM_BOOL, VmiParamSpec};
use vmi_device::{Config, param};

/// Declared parameters: name, type, default, one line of documentation.
pub const PARAMS: &[VmiParamSpec] = &[param(
    c"log_each",
    VMI_PARAM_BOOL,
    c"false",
    c"log every IRB at debug level",
)];

/// Typed configuration.
#[derive(Clone, Debug)]
pub struct SkeletonConfig {
    /// Log every IRB.
    pub log_each: bool,
}

impl SkeletonConfig {
    /// Reads the resolved parameters (the host already checked their types).
    pub fn from_config(c: &Config) -> Result<SkeletonConfig, String> {
        Ok(SkeletonConfig {
            log_each: c.get_bool("log_each").map_err(|e| e.to_string())?,
        })
    }
}
