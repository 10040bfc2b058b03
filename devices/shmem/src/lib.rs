//! # vmi-shmem
//!
//! The shared-memory transport, for processes of one user on one host.
//!
//! - **Rendezvous without files**: each process listens on the abstract Unix socket
//!   `@vmi-shmem.<uid>.<key>` (nothing in the filesystem; it vanishes with the process). A
//!   connector sends its hello (keys, filter signature, connect data) with two descriptors
//!   (`SCM_RIGHTS`): a `memfd` holding both rings, sized with `fallocate` before mapping (a full
//!   tmpfs is a clear error, not a SIGBUS), and its doorbell eventfd. The listener checks the
//!   peer's uid with `SO_PEERCRED` and refuses other users.
//! - **Rings**: per direction a lock-free single-producer/single-consumer byte ring
//!   ([`spsc`]) with head, tail and sleep flag on separate cache lines. Records are framed like
//!   TCP frames (16-byte header). A full ring pends the send; nothing is dropped or overwritten.
//! - **Large fragments**: when the peer can read this process's memory (`process_vm_readv`,
//!   probed at connect and logged), fragments of `single_copy_min` bytes or more travel as a
//!   descriptor of their segments and are copied once, straight from the sender's buffers;
//!   otherwise they stream through the ring in pieces.
//! - **Progress**: `poll` reads the rings without system calls; the control sockets are looked
//!   at every 1,024 polls, sooner when polls are slow ([`cadence`]), or after a sleep. A sender rings the peer's eventfd only when the peer
//!   announced a sleep (`wait`), so an idle process uses no CPU and a busy one no syscalls.
//!   Where both processes registered for `membarrier(2)` ([`barrier`]), a send needs no
//!   memory fence before its look at the peer's sleep flag: the sleeper pays the barrier.
//! - **Protocol apart from I/O**: [`proto`] reads and writes records without touching the
//!   ring or the peer's memory; its tests drive it with byte streams cut at every position and
//!   with hostile records. `poll` reads at most its budget of records per connection.
//! - **Death**: the rendezvous socket closing without an orderly goodbye means the peer died;
//!   data it had written is delivered first, then the disconnect callback reports it. Rings
//!   live in the memfd, so nothing is left behind.
#![deny(unsafe_code)]

pub mod barrier;
pub mod cadence;
pub mod config;
pub mod coop;
pub mod device;
pub mod fetch;
pub mod io;
pub mod proto;
#[allow(unsafe_code)]
pub mod spsc;
pub mod wire;

pub use device::ShmemDevice;

vmi_device::export_device!(ShmemDevice, vmi_device_shmem);
