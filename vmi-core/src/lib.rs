//! # vmi-core
//!
//! The runtime of vmi, a pluggable messaging layer in the tradition of NCSA's Virtual
//! Machine Interface 2.1. An application links this crate; at start-up it reads the XML
//! specfile named by `VMI_SPECFILE`, loads the device plugins it lists, and builds a send
//! chain and a receive chain from them. Messages and control operations travel the chains
//! as IRBs (I/O request blocks).
//!
//! - Applications: [`Vmi`], [`Operations`] (what `Vmi` and a callback's [`Ctx`] can do),
//!   [`Handler`], [`Slab`], [`Buffer`]; or `use vmi_core::prelude::*`.
//! - Device authors: not this crate; the device SDK `vmi-device` (re-exported here as
//!   [`sdk`]) holds the `Device` trait, `export_device!` and the C ABI, and
//!   `devices/skeleton` is the template.
//! - Tools: [`spec::Spec`], [`loader`], [`params`].

#![deny(unsafe_code)]

pub use vmi_device as sdk;
pub use vmi_device::{abi, device, signature, status};

pub mod assembly;
pub mod bond;
pub mod buffer;
mod chains;
pub mod conn;
mod cross;
mod ctx;
mod direct;
mod dispatch;
mod engine;
mod error;
mod eventfd;
mod handler;
pub mod job;
mod limits;
pub mod loader;
pub mod msgpass;
mod ops;
pub mod params;
mod pmix;
mod rails;
pub mod rdma;
mod retry;
mod services;
pub mod slab;
mod slot;
pub mod spec;
mod table;
mod timeouts;
pub use timeouts::MAX_TIMEOUT;
mod vmi;
pub(crate) mod waker;
mod walk;

pub use buffer::Buffer;
pub use conn::ConnId;
pub use ctx::Ctx;
pub use engine::{DeviceInfo, MAX_DEVICES, MAX_RECEIVES_IN_FLIGHT, MAX_SENDS_IN_FLIGHT};
pub use error::VmiError;
pub use eventfd::Arm;
pub use handler::{
    ConnectOutcome, ConnectRequest, Decision, Disconnect, Handler, Recv, SendCompletion,
};
pub use job::{Job, JobError, JobSource};
pub use msgpass::{
    Answer, MAX_MESSAGE, Pulse, ReceiveId, Reply, Request, RequestId, RequestOptions, Sender,
};
pub use ops::{MAX_CONNECT_DATA, Operations, Stream};
pub use rails::RailInfo;
pub use rdma::{
    BufferPool, PoolBuffer, PoolConfig, PublishId, RdmaNotice, RdmaOpId, RdmaOptions, RdmaPath,
    Region, RemoteBuffer, Segment,
};
pub use slab::{GrabbedSlab, Slab, SlabState};
pub use status::Status;
pub use vmi::{Options, Vmi, VmiWaker};

/// What an application usually needs: `use vmi_core::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Answer, Buffer, ConnId, ConnectOutcome, ConnectRequest, Ctx, Decision, Disconnect, Handler,
        Operations, Pulse, ReceiveId, Recv, Reply, Request, RequestId, RequestOptions,
        SendCompletion, Slab, Status, Stream, Vmi, VmiError,
    };
}
