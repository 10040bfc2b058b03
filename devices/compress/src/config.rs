//! Compression parameters.

use vmi_device::abi::{VMI_PARAM_INT, VMI_PARAM_STRING, VMI_PARAM_UINT, VmiParamSpec};
use vmi_device::{Config, param};

use crate::wire::Algorithm;

/// Declared parameters.
pub const PARAMS: &[VmiParamSpec] = &[
    param(
        c"algorithm",
        VMI_PARAM_STRING,
        c"lz4",
        c"lz4 or zstd (for sending; receiving decodes either)",
    ),
    param(
        c"level",
        VMI_PARAM_INT,
        c"3",
        c"zstd level, 1 (fast) to 19 (small); ignored by lz4",
    ),
    param(
        c"threshold",
        VMI_PARAM_UINT,
        c"512",
        c"compress fragments of at least this many bytes",
    ),
    param(
        c"max_message",
        VMI_PARAM_UINT,
        c"256m",
        c"largest decompressed fragment accepted (bomb guard)",
    ),
    param(
        c"decompress_per_poll",
        VMI_PARAM_UINT,
        c"64m",
        c"decompressed bytes per poll; further fragments wait for the next poll (bomb guard)",
    ),
];

/// Typed configuration.
#[derive(Clone, Debug)]
pub struct CompressConfig {
    /// Sending algorithm.
    pub algorithm: Algorithm,
    /// zstd level.
    pub level: i32,
    /// Smallest fragment compressed.
    pub threshold: usize,
    /// Largest decompressed fragment.
    pub max_message: u64,
    /// Decompressed bytes per poll.
    pub per_poll: u64,
}

impl CompressConfig {
    /// Reads and checks the resolved parameters.
    pub fn from_config(c: &Config) -> Result<CompressConfig, String> {
        let e = |x: vmi_device::ConfigError| x.to_string();
        let name = c.get("algorithm").map_err(e)?;
        let algorithm = Algorithm::from_name(name)
            .ok_or_else(|| format!("parameter 'algorithm' = \"{name}\": expected lz4 or zstd"))?;
        let level: i32 = c
            .get("level")
            .map_err(e)?
            .trim()
            .parse()
            .map_err(|_| "parameter 'level' is not an integer".to_string())?;
        check_level(level)?;
        Ok(CompressConfig {
            algorithm,
            level,
            threshold: c.get_u64("threshold").map_err(e)? as usize,
            max_message: c.get_u64("max_message").map_err(e)?.min(u32::MAX as u64),
            per_poll: c.get_u64("decompress_per_poll").map_err(e)?.max(1),
        })
    }
}

/// Checks a zstd level.
pub fn check_level(level: i32) -> Result<(), String> {
    if (1..=19).contains(&level) {
        Ok(())
    } else {
        Err(format!("parameter 'level' = {level}: expected 1 to 19"))
    }
}
