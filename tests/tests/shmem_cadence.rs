//! Shared memory spaces its looks at the control sockets (an `epoll_wait`) 1,024 busy polls
//! apart, which costs a busy process almost nothing; a process that polls slowly (work
//! between its polls, no `wait`) must still see connects and closes within some 128 of its
//! polls, as before the spacing grew: the transport reads the clock once in 128 polls and
//! looks when 200 µs passed since the last look (`vmi_shmem::cadence`).

use std::time::{Duration, Instant};

use vmi_conformance::pair::{Dev, spec, unique_key};
use vmi_core::prelude::*;
use vmi_shmem::cadence::CLOCK_EVERY;
use vmi_tests::register_all;

#[derive(Default)]
struct Side {
    connected: bool,
    accepted: bool,
}

impl Handler for Side {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, _req: &mut ConnectRequest<'_>) -> Decision {
        self.accepted = true;
        Decision::Accept(Vec::new())
    }
    fn connected(&mut self, _c: &mut Ctx<'_>, _conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        match o {
            ConnectOutcome::Accepted(_) => self.connected = true,
            ConnectOutcome::Failed { status, detail } => {
                panic!("connect failed: {status}: {detail}")
            }
            _ => {}
        }
    }
}

#[test]
fn processes_that_poll_slowly_see_a_connect_within_a_few_hundred_polls() {
    register_all();
    let dev = Dev::new("t", "shmem");
    let start = |who: &str| {
        Vmi::with_spec(spec(&[], &dev), &unique_key(who)).unwrap_or_else(|e| panic!("{e}"))
    };
    let (mut a, mut b) = (start("cadence-a"), start("cadence-b"));
    let (mut ha, mut hb) = (Side::default(), Side::default());
    a.connect("localhost", b.key(), b"", 0).expect("a connect");
    let began = Instant::now();
    let mut polls = 0u32;
    while !ha.connected {
        a.poll(&mut ha);
        b.poll(&mut hb);
        polls += 1;
        // A millisecond of the application's work between its polls.
        std::thread::sleep(Duration::from_millis(1));
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "no connect after {polls} slow polls"
        );
    }
    assert!(hb.accepted);
    // The acceptor's look at its listener, then the connector's at its answer: each within
    // one read of the clock that finds 200 µs gone, at most CLOCK_EVERY polls apart. Looks
    // spaced 1,024 polls apart alone would take some 1,000 or more here.
    assert!(
        polls <= 3 * CLOCK_EVERY + 64,
        "the connect took {polls} polls of 1 ms; looks at the control sockets should come within {CLOCK_EVERY} slow polls"
    );
    println!("connected after {polls} slow polls");
}
