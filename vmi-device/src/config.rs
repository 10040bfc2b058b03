//! A device's configuration: the effective parameters the host resolved (specfile, then
//! `VMI_<DEVICE>_<PARAM>` environment overrides), read with typed getters.
#![forbid(unsafe_code)]

use std::time::Duration;

use crate::param::{parse_bool, parse_uint};

/// The resolved parameters handed to `Device::create`.
#[derive(Clone, Debug, Default)]
pub struct Config {
    values: Vec<(String, String)>,
}

/// A parameter the device could not use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The host did not pass the parameter: the device reads a name it did not declare.
    #[error("parameter '{0}' is missing; declare it in the device's PARAMS")]
    Missing(String),
    /// The value does not fit.
    #[error("parameter '{name}' = \"{value}\" is invalid: expected {expected}")]
    Invalid {
        /// Parameter.
        name: String,
        /// Value.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}

impl Config {
    /// A configuration from name/value pairs.
    pub fn new(values: Vec<(String, String)>) -> Config {
        Config { values }
    }

    /// The text value.
    pub fn get(&self, name: &str) -> Result<&str, ConfigError> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| ConfigError::Missing(name.to_string()))
    }

    /// An unsigned value (suffixes k, m, g allowed).
    pub fn get_u64(&self, name: &str) -> Result<u64, ConfigError> {
        let v = self.get(name)?;
        parse_uint(v).ok_or_else(|| ConfigError::Invalid {
            name: name.into(),
            value: v.into(),
            expected: "a non-negative integer",
        })
    }

    /// A boolean value.
    pub fn get_bool(&self, name: &str) -> Result<bool, ConfigError> {
        let v = self.get(name)?;
        parse_bool(v).ok_or_else(|| ConfigError::Invalid {
            name: name.into(),
            value: v.into(),
            expected: "true or false",
        })
    }

    /// A duration given in milliseconds.
    pub fn get_millis(&self, name: &str) -> Result<Duration, ConfigError> {
        self.get_u64(name).map(Duration::from_millis)
    }

    /// All pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_getters_name_the_parameter() {
        let c = Config::new(vec![
            ("size".into(), "4k".into()),
            ("on".into(), "yes".into()),
            ("bad".into(), "x".into()),
        ]);
        assert_eq!(c.get_u64("size").unwrap(), 4096);
        assert!(c.get_bool("on").unwrap());
        assert_eq!(c.get_millis("size").unwrap(), Duration::from_millis(4096));
        let e = c.get_u64("bad").unwrap_err().to_string();
        assert!(e.contains("'bad'") && e.contains("\"x\""), "{e}");
        let e = c.get("nope").unwrap_err().to_string();
        assert!(e.contains("'nope'") && e.contains("PARAMS"), "{e}");
    }
}
