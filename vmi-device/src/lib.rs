//! # vmi-device — the device SDK
//!
//! Everything a vmi device plugin needs and nothing of the host: a device crate depends on
//! this crate alone, so its shared object carries no XML parser, no loader and no engine.
//!
//! - [`Device`]: the trait a filter or transport implements (VMI 2.1: a device's entry
//!   points); every method has a pass-through default.
//! - [`Irb`]: an I/O request block the device holds; [`RemoteIrb`] the same request moved to
//!   another thread, which may only complete it.
//! - [`Host`]: what the device may ask of the host, on the polling thread; [`Completer`] and
//!   [`HostWaker`] are the only pieces usable from other threads.
//! - [`export_device!`]: turns a `Device` into the C-ABI descriptor a host loads, and
//!   generates the static registration used when the device is linked into a program.
//! - [`Config`] and [`param()`]: declared parameters and their typed values.
//! - [`held::HeldBuffers`]: buffers lent to IRBs until their completion step.
//! - [`lent`]: receive and send rings a transport lends the host (ABI 1.7), both halves.
//! - [`abi`]: the C ABI itself (`include/vmi_device.h` is the same for C).
//!
//! ## Soundness rules
//! Safe device code cannot cause undefined behaviour:
//! - [`Irb`] and [`Host`] are neither `Send` nor `Sync`: the host services they call are
//!   valid only on the thread that polls. An IRB crosses threads only as a [`RemoteIrb`],
//!   whose sole effect is a completion through the host's thread-safe queue.
//! - [`Irb::frame`] checks the requested type's size and alignment against the frame the host
//!   reserved, and accepts only `bytemuck::Pod` types (valid for any bytes).
//! - Received bytes are borrowed from the IRB (`&self`), never for longer.
//!
//! `tests/ui/` holds the compile-fail tests that prove each rule.
#![deny(unsafe_code)]

pub mod abi;
pub mod auth;
pub mod config;
pub mod connmap;
pub mod copy;
pub mod deliver;
pub mod device;
pub mod dial;
pub mod export;
pub mod held;
pub mod host;
pub mod hostmsg;
pub mod irb;
pub mod lent;
pub mod lent_stream;
pub mod loan;
pub mod logbridge;
pub mod memwatch;
pub mod param;
pub mod regcache;
pub mod registry;
pub mod signature;
pub mod socketname;
pub mod status;
#[cfg(test)]
mod test_rng;

pub use config::{Config, ConfigError};
pub use connmap::ConnMap;
pub use device::{Capabilities, Device, DeviceKind, Disposition, Hooks};
pub use host::{Completer, Host, HostWaker};
pub use irb::{CompletingIrb, Irb, Op, RemoteIrb};
pub use param::param;
pub use status::Status;
