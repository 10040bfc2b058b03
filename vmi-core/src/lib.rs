//! # vmi-core
//!
//! The runtime of vmi, a pluggable messaging layer in the tradition of NCSA's Virtual
//! Machine Interface 2.1. An application links this crate; at start-up it reads the XML
//! specfile named by `VMI_SPECFILE`, loads the device plugins it lists, and builds a send
//! chain and a receive chain from them. Messages and control operations travel the chains
//! as IRBs (I/O request blocks).
//!
//! - Applications: [`Vmi`], [`Handler`], [`Ctx`], [`Slab`], [`Buffer`].
//! - Device authors: [`device::Device`], [`export_device!`], the C header
//!   `include/vmi_device.h`, and `devices/skeleton` as a template.
//! - Tools: [`spec::Spec`], [`loader`], [`params`].

pub mod abi;
pub mod assembly;
pub mod buffer;
pub mod conn;
mod ctx;
pub mod device;
mod engine;
mod error;
pub mod export;
mod handler;
pub mod held;
mod irb;
pub mod loader;
pub mod logbridge;
pub mod params;
pub mod signature;
pub mod slab;
pub mod spec;
pub mod status;
mod vmi;
mod waker;

pub use buffer::Buffer;
pub use conn::ConnId;
pub use ctx::{Ctx, Stream};
pub use error::VmiError;
pub use handler::{
    ConnectOutcome, ConnectRequest, Decision, Disconnect, Handler, Recv, SendCompletion,
};
pub use slab::{GrabbedSlab, Slab, SlabState};
pub use status::Status;
pub use vmi::{DeviceInfo, MAX_CONNECT_DATA, Vmi};
