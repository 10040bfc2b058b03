//! # vmi-loopback
//!
//! A transport between `Vmi` instances of the same process: no sockets, no threads, fully
//! deterministic (messages are delivered in order, on the receiver's next `poll`). Used by
//! the engine tests, the allocation test and benchmarks of the chain overhead.
//!
//! A peer is reachable when a loopback device with that key exists in this process; the host
//! name is ignored. Parameters: see [`config`].
#![deny(unsafe_code)]

pub mod config;
pub mod device;
pub mod wire;

pub use device::LoopbackDevice;

vmi_device::export_device!(LoopbackDevice, vmi_device_loopback);
