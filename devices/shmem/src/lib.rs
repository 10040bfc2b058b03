//! # vmi-shmem
#![deny(unsafe_code)]

pub mod config;
pub mod device;
pub mod io;
#[allow(unsafe_code)]
pub mod spsc;
pub mod wire;

pub use device::ShmemDevice;

vmi_core::export_device!(ShmemDevice, vmi_device_shmem);

/// Registers the device for use without its shared object.
pub fn register_static() {
    vmi_core::loader::register_static(&vmi_device_shmem);
}
