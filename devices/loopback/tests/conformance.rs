//! The conformance kit run against this transport: two vmi instances in one test, connected
//! through it.

use vmi_conformance::pair::Dev;
use vmi_conformance::suite::{self, Subject};

#[test]
fn in_chains() {
    vmi_loopback::register_static();
    suite::chain(&Subject::transport(
        "loopback",
        Dev::new("t", "loopback").param("max_fragment", "1m"),
    ));
}
