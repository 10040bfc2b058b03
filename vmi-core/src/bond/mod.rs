//! The multi-rail protocol (VMI 2.1's striping and failover), with no I/O: a bonded
//! connection is several rails (connections over different transports, or one transport over
//! different interfaces) that carry one ordered stream of fragments. The sender cuts a large
//! fragment into chunks that the rails pull as they have room, so each rail carries a share
//! in proportion to the bandwidth it shows; the receiver reassembles them and delivers the
//! fragments in order, exactly once; every fragment is kept by the sender until the receiver
//! acknowledges it, so when a rail fails, what it carried is sent again on the others and the
//! receiver drops what it already had.
//!
//! - [`wire`]: the 32-byte records (data chunk, acknowledgement, give-up).
//! - [`sender`]: chunking, rail choice, the unacknowledged window, failover.
//! - [`receiver`]: checks, reassembly, in-order delivery, acknowledgements.
//!
//! `rails.rs` carries these over the engine's connections; the tests here drive a sender and
//! a receiver back to back over simulated rails, with seeded randomness.

pub mod receiver;
pub mod sender;
pub mod wire;

#[cfg(test)]
mod pair;
