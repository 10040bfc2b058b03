//! # vmi-tcp
//!
//! The TCP transport. Non-blocking sockets (socket2 + mio/epoll), one `writev` of frame
//! header + user segments per fragment (no copy on send), `TCP_NODELAY`, partial writes
//! pended and finished from `poll`.
//!
//! ## Finding a peer by host + key
//! There is no daemon and no port to configure. Each process listens on the first free port
//! of a sequence derived from its key (`probe_ports`: FNV-1a of the key picks a start inside
//! `[port_base, port_base + port_span)`, then `probe_count` consecutive ports). A connector
//! tries the same sequence on the peer host; each listener checks the key in the hello and
//! answers "wrong key" when it is not the one asked for, and the connector moves on. A host
//! written as `host:port` skips the search; the `port` parameter fixes a listener's port.
//!
//! The protocol lives in [`proto`] and [`wire`] without any I/O or clock of its own:
//! [`proto::decoder`] (bytes to events, limits before allocation), [`proto::connection`]
//! (each connection's states and what every event means in each), [`proto::stripe`] (large
//! fragments cut into parts over a connection's lanes, `lanes` > 1, and put together with no
//! copy), [`proto::Dial`] (the ports a connect walks). A two-endpoint in-memory harness drives them in the unit tests.
//! [`io`] moves bytes; [`device`] keeps only sockets, epoll, IRBs and the mapping of the
//! protocol's outputs onto host calls.
#![deny(unsafe_code)]

pub mod config;
pub mod device;
pub mod io;
pub mod proto;
#[cfg(test)]
mod proto_fuzz;
mod sendq;
pub mod wire;

pub use device::TcpDevice;

vmi_device::export_device!(TcpDevice, vmi_device_tcp);
