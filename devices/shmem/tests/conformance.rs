//! The conformance kit run against this transport: two vmi instances in one test, connected
//! through it.

use vmi_conformance::pair::Dev;
use vmi_conformance::suite::{self, Subject};

#[test]
fn in_chains() {
    vmi_shmem::register_static();
    suite::chain(&Subject::transport(
        "shmem",
        Dev::new("t", "shmem").param("max_fragment", "1m"),
    ));
}
