//! Fault parameters: rates are probabilities from 0 to 1.

use vmi_device::abi::{VMI_PARAM_STRING, VMI_PARAM_UINT, VmiParamSpec};
use vmi_device::{Config, param};

/// Declared parameters.
pub const PARAMS: &[VmiParamSpec] = &[
    param(
        c"seed",
        VMI_PARAM_UINT,
        c"0",
        c"random seed; 0 picks one (logged) ",
    ),
    param(
        c"direction",
        VMI_PARAM_STRING,
        c"both",
        c"send, receive or both",
    ),
    param(
        c"drop",
        VMI_PARAM_STRING,
        c"0",
        c"probability of dropping a fragment",
    ),
    param(
        c"duplicate",
        VMI_PARAM_STRING,
        c"0",
        c"probability of delivering a received fragment twice",
    ),
    param(
        c"corrupt",
        VMI_PARAM_STRING,
        c"0",
        c"probability of flipping one bit of a fragment",
    ),
    param(
        c"reorder",
        VMI_PARAM_STRING,
        c"0",
        c"probability of holding a fragment until the next one passed",
    ),
    param(
        c"delay",
        VMI_PARAM_STRING,
        c"0",
        c"probability of delaying a fragment by delay_ms",
    ),
    param(
        c"delay_ms",
        VMI_PARAM_UINT,
        c"10",
        c"delay (and the longest reorder hold), in milliseconds",
    ),
];

/// Fault rates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// Drop.
    pub drop: f64,
    /// Duplicate (receive only).
    pub duplicate: f64,
    /// Flip a bit.
    pub corrupt: f64,
    /// Reorder.
    pub reorder: f64,
    /// Delay.
    pub delay: f64,
}

/// Typed configuration.
#[derive(Clone, Debug)]
pub struct FaultConfig {
    /// Seed (0: chosen at start-up).
    pub seed: u64,
    /// Faults on sends.
    pub send: bool,
    /// Faults on receives.
    pub receive: bool,
    /// Rates.
    pub rates: Rates,
    /// Delay in milliseconds.
    pub delay_ms: u64,
}

/// Parses a probability, naming the parameter on error.
pub fn rate(name: &str, v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "parameter '{name}' = \"{v}\": expected a probability from 0 to 1"
        )),
    }
}

impl FaultConfig {
    /// Reads and checks the resolved parameters.
    pub fn from_config(c: &Config) -> Result<FaultConfig, String> {
        let e = |x: vmi_device::ConfigError| x.to_string();
        let get = |n: &str| -> Result<f64, String> { rate(n, c.get(n).map_err(e)?) };
        let (send, receive) = match c.get("direction").map_err(e)? {
            "send" => (true, false),
            "receive" => (false, true),
            "both" => (true, true),
            other => {
                return Err(format!(
                    "parameter 'direction' = \"{other}\": expected send, receive or both"
                ));
            }
        };
        Ok(FaultConfig {
            seed: c.get_u64("seed").map_err(e)?,
            send,
            receive,
            rates: Rates {
                drop: get("drop")?,
                duplicate: get("duplicate")?,
                corrupt: get("corrupt")?,
                reorder: get("reorder")?,
                delay: get("delay")?,
            },
            delay_ms: c.get_u64("delay_ms").map_err(e)?,
        })
    }
}
