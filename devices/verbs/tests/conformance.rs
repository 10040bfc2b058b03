//! The conformance kit run against this transport on the software NIC: two vmi instances in
//! one test, connected through real side-channel sockets and simulated RC queue pairs. The
//! eager limit is lowered so that every size class of the suite crosses both protocols
//! (eager SENDs and RDMA READ rendezvous), and the credits are few so that senders wait for
//! them.

use vmi_conformance::pair::Dev;
use vmi_conformance::suite::{self, Subject};

#[test]
fn in_chains() {
    vmi_verbs::register_static();
    suite::chain(&Subject::transport(
        "verbs",
        Dev::new("t", "verbs")
            .param("nic", "sim")
            .param("eager_max", "1k")
            .param("credits", "8")
            .param("max_fragment", "1m"),
    ));
}
