//! The conformance kit's two-endpoint harness (`vmi_conformance::pair`), with devices either
//! statically registered or loaded from the workspace's shared objects.
#![allow(missing_docs)]

use vmi_core::spec::Spec;

pub use vmi_conformance::pair::{Dev, Outcome, Pair, Rec};

use crate::{device_lib, register_all};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Static,
    Shared,
}

pub fn dev(name: &str, ty: &str, params: &[(&str, &str)]) -> Dev {
    params
        .iter()
        .fold(Dev::new(name, ty), |d, (k, v)| d.param(k, v))
}

/// The device as `mode` asks: statically registered, or loaded from its shared object.
pub fn in_mode(d: &Dev, mode: Mode) -> Dev {
    match mode {
        Mode::Static => d.clone(),
        Mode::Shared => d.clone().library(device_lib(&d.ty)),
    }
}

pub fn spec(filters: &[Dev], transport: &Dev, mode: Mode) -> Spec {
    register_all();
    let filters: Vec<Dev> = filters.iter().map(|d| in_mode(d, mode)).collect();
    vmi_conformance::pair::spec(&filters, &in_mode(transport, mode))
}
