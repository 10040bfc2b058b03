//! The vmi conformance kit, run against this out-of-tree device from its own `cargo test`.

use vmi_conformance::pair::Dev;
use vmi_conformance::suite::{self, Subject};

#[test]
fn alone_in_the_harness() {
    suite::filter_alone::<vmi_invert::Invert>(&[]);
}

#[test]
fn in_chains() {
    vmi_invert::register_static();
    vmi_loopback::register_static();
    suite::chain(&Subject::filter("invert", Dev::new("f", "invert"), 0));
}
