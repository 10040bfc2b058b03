//! # vmi-conformance — the conformance kit
//!
//! What every vmi device, in this repository or out of it, runs against itself from its own
//! `cargo test` (as a dev-dependency, so the device's shared object does not link it):
//!
//! - [`harness::Harness`]: one device alone, with a host simulated in the test (the model is
//!   gst-plugins-rs' `Harness` and tower-test's `mock`). Submit IRBs to it, feed it received
//!   bytes, poll it, and see exactly what it passes down or up, completes or keeps pending.
//!   It drives the device through its C-ABI descriptor, so the trampolines are tested too.
//! - [`suite`]: the cases every device must pass. [`suite::filter_alone`] runs a filter in
//!   the harness (round trips through two instances, hostile received bytes, capabilities,
//!   control IRBs passed untouched, completion steps). [`suite::chain`] runs a device in real
//!   chains: two [`vmi_core::Vmi`] in one thread ([`pair::Pair`], quinn's two-endpoint model)
//!   exchanging messages of every size, streams of many fragments, maximum fragments, empty
//!   payloads, and connect/accept/reject for transports.
//! - [`rng::Rng`]: seeded randomness with the seed printed (`VMI_TEST_SEED` replays a run).
//!
//! A device's test, in full:
//!
//! ```ignore
//! #[test]
//! fn conformance() {
//!     vmi_crc::register_static();
//!     vmi_loopback::register_static();
//!     vmi_conformance::suite::filter_alone::<vmi_crc::CrcFilter>(&[]);
//!     vmi_conformance::suite::chain(&vmi_conformance::suite::Subject::filter(
//!         "crc", vmi_conformance::pair::Dev::new("f", "crc"), 4));
//! }
//! ```
#![deny(unsafe_code)]

pub mod harness;
pub mod pair;
pub mod rng;
pub mod suite;
