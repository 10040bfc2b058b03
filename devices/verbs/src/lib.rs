//! The ibverbs transport's protocol, free of I/O (quinn-proto's model): what each side of an
//! RC queue pair sends in its eager SENDs, how receive buffers are accounted for with credits,
//! and how a large fragment moves by RDMA READ rendezvous. Bytes come in as slices and work
//! goes out as [`proto::Action`]s (post this send, post this read, deliver these bytes,
//! complete that fragment); a two-endpoint harness drives both sides in one thread in the
//! tests, so the protocol and hostile input are tested without RDMA hardware.
//!
//! [`bootstrap`] is what the two sides exchange over a TCP side channel before their queue
//! pairs can talk (queue pair numbers, addresses, packet sequence numbers, receive buffers,
//! eager limits, with vmi's keys, filter signature and connect data), checked and agreed.
//!
//! Not built yet: the device that drives this with libibverbs (queue pairs, completion
//! queues and channels, memory registration, the side channel's sockets). Nothing here has
//! run on an RDMA NIC.
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
