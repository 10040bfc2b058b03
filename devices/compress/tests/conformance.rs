//! The conformance kit run against this device: alone in the one-device harness, and in real
//! chains over the loopback transport.

use vmi_conformance::pair::Dev;
use vmi_conformance::suite::{self, Subject};

#[test]
fn alone_in_the_harness() {
    suite::filter_alone::<vmi_compress::CompressFilter>(&[("threshold", "64")]);
}

#[test]
fn in_chains() {
    vmi_compress::register_static();
    vmi_loopback::register_static();
    suite::chain(&Subject::filter("compress", Dev::new("f", "compress"), 0));
}
