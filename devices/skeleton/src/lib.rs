//! # vmi-skeleton
//!
//! A filter that does nothing but count, written as the template for new devices. Copy this
//! crate, rename it, and fill in `device.rs`. The file set is the same for every device:
//!
//! - `lib.rs` — the export (`export_device!`) and crate docs;
//! - `device.rs` — the [`vmi_device::Device`] impl;
//! - `config.rs` — typed parameters from the specfile, with errors naming the parameter;
//! - `wire.rs` — any bytes the device puts on the wire (here: none).
//!
//! It builds as a `cdylib` (loaded by a specfile's `<device type="skeleton"/>`) and an
//! `rlib` (registered statically in tests with `register_static()`, which `export_device!`
//! generates).
#![forbid(unsafe_code)]

pub mod config;
pub mod device;
pub mod wire;

pub use device::SkeletonFilter;

// The symbol must be `vmi_device_` + the device's NAME: that is how the loader finds it.
vmi_device::export_device!(SkeletonFilter, vmi_device_skeleton);
