//! The conformance kit run against this device: alone in the one-device harness, and in real
//! chains over the loopback transport.

use vmi_conformance::pair::Dev;
use vmi_conformance::suite::{self, Subject};

#[test]
fn alone_in_the_harness() {
    suite::filter_alone::<vmi_trace::TraceFilter>(&[]);
}

#[test]
fn in_chains() {
    vmi_trace::register_static();
    vmi_loopback::register_static();
    suite::chain(&Subject::filter("trace", Dev::new("f", "trace"), 0));
}
