//! The conformance kit run against this transport: two vmi instances in one test, connected
//! through it.

use vmi_conformance::pair::Dev;
use vmi_conformance::suite::{self, Subject};

#[test]
fn in_chains() {
    vmi_tcp::register_static();
    suite::chain(&Subject::transport(
        "tcp",
        Dev::new("t", "tcp").param("max_fragment", "1m"),
    ));
}
