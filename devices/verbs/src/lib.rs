//! # vmi-verbs
//!
//! The ibverbs transport: RDMA over reliable-connected queue pairs (InfiniBand or RoCE).
//! Nothing of it has run on an RDMA NIC yet; everything above the NIC runs in the tests on a
//! software NIC (`nic = sim`).
//!
//! - [`proto`], [`wire`], [`bootstrap`]: the protocol with no I/O (quinn-proto's model):
//!   eager SENDs under credits, RDMA READ rendezvous for large fragments, in-order hand-up,
//!   the side-channel bootstrap (hello, answer, ready) and close (bye with a frame count).
//!   Bytes come in as slices and work goes out as [`proto::Action`]s; a two-endpoint harness
//!   drives both sides in one thread.
//! - [`nic`]: the NIC as a trait; [`ibv`] + [`ffi`]: libibverbs loaded at run time (no RDMA
//!   package needed to build or test); [`sim`]: the in-process software NIC.
//! - [`buf`]: registered memory, reached only through raw pointers.
//! - [`conn`], [`device`]: the device (side-channel sockets, queue pairs, staging pools,
//!   one-sided puts and gets through `rdma_access` with the registration cache of
//!   `vmi_device::regcache`).
#![deny(unsafe_code)]

pub mod bootstrap;
pub mod buf;
pub mod config;
pub mod conn;
pub mod device;
pub mod ffi;
pub mod ibv;
pub mod nic;
pub mod proto;
pub mod sim;
pub mod wire;

pub use device::VerbsDevice;

vmi_device::export_device!(VerbsDevice, vmi_device_verbs);
