//! Parameter types and their text forms, shared by the host (which checks specfile and
//! environment values against the declared type) and devices (which read the values).
#![forbid(unsafe_code)]

use std::ffi::CStr;

use serde::Serialize;

use crate::abi::{VMI_PARAM_BOOL, VMI_PARAM_INT, VMI_PARAM_STRING, VMI_PARAM_UINT, VmiParamSpec};

/// Declares a parameter (for `Device::PARAMS`): name, `VMI_PARAM_*` type, default, and one
/// line saying what it does.
pub const fn param(
    name: &'static CStr,
    kind: u32,
    default: &'static CStr,
    doc: &'static CStr,
) -> VmiParamSpec {
    VmiParamSpec {
        name: name.as_ptr(),
        kind,
        default_value: default.as_ptr(),
        doc: doc.as_ptr(),
    }
}

/// The type of a declared parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    /// `true`/`false`/`yes`/`no`/`1`/`0`/`on`/`off`.
    Bool,
    /// Unsigned integer; `k`, `m`, `g` suffixes multiply by 1024, 1024², 1024³.
    Uint,
    /// Signed integer.
    Int,
    /// Free text.
    String,
}

impl ParamKind {
    /// From the ABI code; unknown codes read as text.
    pub fn from_code(code: u32) -> ParamKind {
        match code {
            VMI_PARAM_BOOL => ParamKind::Bool,
            VMI_PARAM_UINT => ParamKind::Uint,
            VMI_PARAM_INT => ParamKind::Int,
            VMI_PARAM_STRING => ParamKind::String,
            _ => ParamKind::String,
        }
    }

    /// What a value of this type looks like, for error messages.
    pub fn expected(self) -> &'static str {
        match self {
            ParamKind::Bool => "true or false",
            ParamKind::Uint => "a non-negative integer (k, m, g suffixes allowed)",
            ParamKind::Int => "an integer",
            ParamKind::String => "text",
        }
    }

    /// Checks a value against the type; returns the canonical text.
    pub fn check(self, value: &str) -> Result<String, String> {
        let v = value.trim();
        match self {
            ParamKind::Bool => parse_bool(v)
                .map(|b| b.to_string())
                .ok_or_else(|| self.expected().to_string()),
            ParamKind::Uint => parse_uint(v)
                .map(|n| n.to_string())
                .ok_or_else(|| self.expected().to_string()),
            ParamKind::Int => v
                .parse::<i64>()
                .map(|n| n.to_string())
                .map_err(|_| self.expected().to_string()),
            ParamKind::String => Ok(value.to_string()),
        }
    }
}

/// Parses a boolean parameter value.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Some(true),
        "false" | "no" | "0" | "off" => Some(false),
        _ => None,
    }
}

/// Parses an unsigned parameter value with optional binary suffix (`64k`, `16m`, `1g`).
pub fn parse_uint(v: &str) -> Option<u64> {
    let v = v.trim();
    let (digits, mult) = match v.char_indices().last() {
        Some((i, 'k' | 'K')) => (&v[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&v[..i], 1u64 << 20),
        Some((i, 'g' | 'G')) => (&v[..i], 1u64 << 30),
        _ => (v, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values() {
        assert_eq!(parse_uint("16m"), Some(16 << 20));
        assert_eq!(parse_uint("1G"), Some(1 << 30));
        assert_eq!(parse_uint("99999999999999999999"), None);
        assert_eq!(parse_uint("20000000000g"), None);
        assert_eq!(parse_uint("k"), None);
        assert_eq!(parse_bool("Yes"), Some(true));
        assert_eq!(parse_bool("off"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
        assert_eq!(ParamKind::Uint.check(" 4k "), Ok("4096".into()));
        assert!(ParamKind::Int.check("x").is_err());
    }
}
