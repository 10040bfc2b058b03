//! The conformance kit run against this device: alone in the one-device harness, and in real
//! chains over the loopback transport.

use vmi_conformance::pair::Dev;
use vmi_conformance::suite::{self, Subject};

#[test]
fn alone_in_the_harness() {
    suite::filter_alone::<vmi_fault::FaultFilter>(&[("seed", "42")]);
}

#[test]
fn in_chains() {
    vmi_fault::register_static();
    vmi_loopback::register_static();
    suite::chain(&Subject::filter("fault", Dev::new("f", "fault"), 0));
}
