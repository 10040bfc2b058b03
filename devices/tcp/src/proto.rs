//! The TCP protocol without I/O or clocks of its own (quinn-proto's model). Time comes in as
//! `Instant` arguments; bytes come in as slices and go out as vectors. Everything here is
//! deterministic and driven in tests by a two-endpoint harness (`proto::pair`), so the
//! handshake, the connection states and hostile input are tested without sockets.
//!
//! - [`decoder`]: bytes → handshake and frame events, every length checked before allocating.
//! - [`stripe`]: a large frame cut into parts over a connection's lanes, and put together.
//! - [`connection`]: one connection's states and what each event means in each state.
//! - [`vmi_device::dial`] (shared with the verbs device's side channel): the key-derived port
//!   sequence a connect walks, and when it gives up.

pub mod connection;
pub mod decoder;
#[cfg(test)]
mod pair;
pub mod stripe;

pub use connection::{Connection, Local, Output, State};
pub use decoder::{DIRECT_READ_MIN, Decoder, Event, PayloadAlloc, check_hello};
pub use vmi_device::dial::{Dial, probe_ports, split_host_port};
