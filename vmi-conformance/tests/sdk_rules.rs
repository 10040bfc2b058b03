//! The SDK's runtime rules, checked through the one-device harness: what the compiler cannot
//! refuse (a frame asked for with the wrong size, an IRB returned in place of another, a
//! dropped IRB, completion from another thread, an older host) is caught and made safe.

use std::ffi::CStr;
use std::time::{Duration, Instant};

use vmi_conformance::harness::{Event, Harness, Outcome};
use vmi_device::{
    Config, Device, DeviceKind, Disposition, Hooks, Host, Irb, Op, RemoteIrb, Status,
};

/// A device whose behaviour each test picks with the `mode` parameter.
struct Rulebreaker {
    mode: String,
    host: Host,
    kept: Option<Irb>,
    remote: Vec<std::thread::JoinHandle<()>>,
}

const PARAMS: &[vmi_device::abi::VmiParamSpec] = &[vmi_device::param(
    c"mode",
    vmi_device::abi::VMI_PARAM_STRING,
    c"",
    c"which rule to break",
)];

impl Device for Rulebreaker {
    const NAME: &'static CStr = c"rulebreaker";
    const VERSION: &'static CStr = c"0";
    const DESCRIPTION: &'static CStr = c"breaks one SDK rule per mode";
    const KIND: DeviceKind = DeviceKind::Filter;
    const PARAMS: &'static [vmi_device::abi::VmiParamSpec] = PARAMS;
    const HOOKS: Hooks = Hooks::ALL;
    type Frame = u32;

    fn create(host: Host, config: &Config) -> Result<Self, String> {
        Ok(Rulebreaker {
            mode: config.get("mode").map_err(|e| e.to_string())?.to_string(),
            host,
            kept: None,
            remote: Vec::new(),
        })
    }

    fn submit(&mut self, mut irb: Irb) -> Disposition {
        match self.mode.as_str() {
            "big-frame" => {
                let f: &mut [u64; 8] = irb.frame();
                f[7] = 1;
                Disposition::Pass(irb)
            }
            "own-frame" => {
                *irb.frame::<u32>() = 42;
                Disposition::Pass(irb)
            }
            "swap" => match self.kept.take() {
                None => {
                    self.kept = Some(irb);
                    Disposition::Pending
                }
                Some(first) => {
                    // Keeps the new IRB and returns the first one in its place.
                    self.kept = Some(irb);
                    Disposition::Pass(first)
                }
            },
            "swap-complete" => match self.kept.take() {
                None => {
                    self.kept = Some(irb);
                    Disposition::Pending
                }
                Some(first) => {
                    // Keeps the new IRB and completes the first one in its place.
                    self.kept = Some(irb);
                    Disposition::Complete(first, Status::Timeout)
                }
            },
            "drop" => {
                drop(irb);
                Disposition::Pending
            }
            "thread" => {
                let remote: RemoteIrb = irb.into_remote();
                self.remote.push(std::thread::spawn(move || {
                    assert_eq!(remote.segment(0), b"payload");
                    remote.complete(Status::Timeout);
                }));
                Disposition::Pending
            }
            _ => Disposition::Pass(irb),
        }
    }

    fn poll(&mut self, _budget: usize) -> usize {
        if self.mode == "alloc" {
            return match self.host.alloc_irb(Op::Recv, 5) {
                Some(irb) => {
                    irb.pass();
                    1
                }
                None => 0,
            };
        }
        0
    }
}

impl Drop for Rulebreaker {
    fn drop(&mut self) {
        for t in self.remote.drain(..) {
            let _ = t.join();
        }
    }
}

fn harness(mode: &str) -> Harness {
    Harness::new::<Rulebreaker>(&[("mode", mode)]).unwrap()
}

#[test]
fn a_frame_larger_than_the_reserved_one_is_refused_not_overrun() {
    let mut h = harness("big-frame");
    // The check panics inside the device; the trampoline catches it, and the IRB the device
    // dropped while unwinding completes with an internal error.
    assert_eq!(h.submit(Op::Send, 1, &[b"x"], 0), Outcome::Pending);
    let events = h.events();
    assert!(
        matches!(
            &events[..],
            [Event::Completed {
                status: Status::Internal,
                ..
            }]
        ),
        "{events:?}"
    );
    let mut h = harness("own-frame");
    assert!(matches!(
        h.submit(Op::Send, 1, &[b"x"], 0),
        Outcome::Passed(_)
    ));
}

/// Submits two IRBs to a device in `mode` ("swap" or "swap-complete"), which keeps the
/// first, then keeps the second and returns the first in its place; checks the given IRB
/// stays held and returns what the host saw.
fn swap(mode: &str) -> Vec<Event> {
    let mut h = harness(mode);
    assert_eq!(h.submit(Op::Send, 1, &[b"first"], 0), Outcome::Pending);
    assert_eq!(
        h.submit(Op::Send, 2, &[b"second"], 0),
        Outcome::Pending,
        "the given IRB stays with the device"
    );
    assert_eq!(h.held(), 1, "the second is still held");
    h.events()
}

#[test]
fn returning_another_irb_passes_that_one_and_keeps_the_given_one() {
    let events = swap("swap");
    assert!(
        matches!(&events[..], [Event::PassedDown(p)] if p.data == b"first" && p.conn == 1),
        "the returned IRB went on: {events:?}"
    );
}

#[test]
fn completing_another_irb_completes_that_one_and_keeps_the_given_one() {
    let events = swap("swap-complete");
    assert!(
        matches!(
            &events[..],
            [Event::Completed {
                status: Status::Timeout,
                ..
            }]
        ),
        "the returned IRB completed with its status: {events:?}"
    );
}

#[test]
fn a_dropped_irb_completes_with_an_internal_error() {
    let mut h = harness("drop");
    assert_eq!(h.submit(Op::Send, 1, &[b"x"], 0), Outcome::Pending);
    let events = h.events();
    assert!(
        matches!(
            &events[..],
            [Event::Completed {
                status: Status::Internal,
                ..
            }]
        ),
        "{events:?}"
    );
    assert_eq!(h.held(), 0);
}

#[test]
fn a_remote_irb_is_read_and_completed_from_another_thread() {
    let mut h = harness("thread");
    assert_eq!(h.submit(Op::Send, 1, &[b"payload"], 0), Outcome::Pending);
    let start = Instant::now();
    let events = loop {
        h.poll(64);
        let e = h.events();
        if !e.is_empty() {
            break e;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "no completion");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(
        matches!(
            &events[..],
            [Event::Completed {
                status: Status::Timeout,
                op: Op::Send,
                ..
            }]
        ),
        "{events:?}"
    );
}

#[test]
fn an_exhausted_host_pushes_back_on_allocation() {
    let mut h = harness("alloc");
    h.set_irbs_available(2);
    assert_eq!(h.poll(64), 1);
    assert_eq!(h.poll(64), 1);
    assert_eq!(h.poll(64), 0, "the third allocation is refused");
    let ups = h
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::PassedUp(p) if p.conn == 5))
        .count();
    assert_eq!(ups, 2);
}

#[allow(unsafe_code)]
mod older_host {
    use std::ffi::c_void;

    use vmi_device::Host;
    use vmi_device::abi::*;

    unsafe extern "C" fn never(_: *mut c_void) -> u32 {
        panic!("a 1.0 host has no irb_available: it must not be called")
    }
    unsafe extern "C" fn pass(_: *mut c_void, _: *mut VmiIrb) {}
    unsafe extern "C" fn complete(_: *mut c_void, _: *mut VmiIrb, _: i32) {}
    unsafe extern "C" fn alloc(_: *mut c_void, _: u32, _: u64) -> *mut VmiIrb {
        std::ptr::null_mut()
    }
    unsafe extern "C" fn frame(_: *mut c_void, _: *mut VmiIrb) -> *mut u8 {
        std::ptr::null_mut()
    }
    unsafe extern "C" fn attach(_: *mut c_void, _: *mut VmiIrb, _: *const u8, _: usize) -> i32 {
        -1
    }
    unsafe extern "C" fn peer(_: *mut c_void, _: *mut VmiIrb, _: VmiStr, _: VmiStr) {}
    unsafe extern "C" fn detail(_: *mut c_void, _: *mut VmiIrb, _: VmiStr) {}
    unsafe extern "C" fn conn(_: *mut c_void) -> u64 {
        0
    }
    unsafe extern "C" fn text(_: *mut c_void) -> VmiStr {
        VmiStr::EMPTY
    }
    unsafe extern "C" fn log(_: *mut c_void, _: u32, _: VmiStr, _: VmiStr) {}
    unsafe extern "C" fn wake(_: *mut c_void) {}
    unsafe extern "C" fn lend_rings(_: *mut c_void, _: *mut VmiRingSet) {
        panic!("a host before 1.7 has no lend_rings: it must not be called")
    }
    unsafe extern "C" fn lend_streams(_: *mut c_void, _: *mut VmiStreamSet) {
        panic!("a host before 1.8 has no lend_streams: it must not be called")
    }

    unsafe extern "C" fn three(_: *mut c_void) -> u32 {
        3
    }

    fn table(
        minor: u32,
        irb_available: unsafe extern "C" fn(*mut c_void) -> u32,
    ) -> VmiHostServices {
        VmiHostServices {
            size: std::mem::size_of::<VmiHostServices>() as u32,
            abi_minor: minor,
            pass,
            complete,
            complete_from_thread: complete,
            irb_alloc: alloc,
            irb_frame: frame,
            irb_attach: attach,
            irb_set_peer: peer,
            irb_set_detail: detail,
            conn_new: conn,
            local_key: text,
            signature: text,
            log,
            wake,
            max_log_level: 0,
            host_marker: std::ptr::null(),
            irb_available,
            lend_rings,
            lend_streams,
        }
    }

    /// A device's view of `table` (kept for the rest of the process), with a host pointer
    /// that is never dereferenced.
    fn host_of(table: VmiHostServices) -> Host {
        let table: &'static VmiHostServices = Box::leak(Box::new(table));
        // SAFETY: the table lives for the process; every service here ignores the host
        // pointer.
        unsafe { Host::from_raw(table, std::ptr::null_mut(), 0) }
    }

    #[test]
    fn a_poll_asks_a_1_5_host_for_its_receive_irbs_and_a_1_6_host_not() {
        // A 1.6 host bounds the budget itself: asking would cross the boundary for nothing.
        let new = table(6, never);
        let host = host_of(new);
        assert_eq!(host.receive_credit(64), 64);
        let old = table(5, three);
        let host = host_of(old);
        assert_eq!(
            host.receive_credit(64),
            3,
            "the smaller of the budget and what is left"
        );
        assert_eq!(host.receive_credit(2), 2);
    }

    #[test]
    fn a_device_on_a_1_0_host_does_not_call_1_1_services() {
        let services = VmiHostServices {
            size: VMI_HOST_SERVICES_SIZE_1_0,
            ..table(0, never)
        };
        let host = host_of(services);
        assert_eq!(host.abi_minor(), 0);
        assert_eq!(host.irbs_available(), u32::MAX, "no bound known");
        assert_eq!(host.receive_credit(64), 64);
    }

    static LENT: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
    unsafe extern "C" fn record_loan(_: *mut c_void, set: *mut VmiRingSet) {
        LENT.lock().unwrap().push(set as usize);
    }

    /// The set a transport lends: busy until the first publish; the host's skips counted
    /// once each; a publish lists the rings and clears busy; dropping it ends the loan.
    #[test]
    fn lent_rings_keep_the_contract_with_a_1_7_host() {
        use std::sync::atomic::AtomicU64;
        use vmi_device::lent::{LentRings, RingCursor, RingLoan};
        let services = VmiHostServices {
            lend_rings: record_loan,
            ..table(7, never)
        };
        let host = host_of(services);
        let mut rings = LentRings::default();
        assert!(rings.lend(&host));
        let set = *LENT.lock().unwrap().last().unwrap() as *mut VmiRingSet;
        // SAFETY: the set lives in `rings` until it is dropped below; this test plays the
        // host, on the one thread.
        let read = move || unsafe { ((*set).busy, (*set).skips, (*set).count) };
        assert_eq!(read(), (1, 0, 0), "busy and empty until published");
        let (head, tail, cursor) = (AtomicU64::new(0), AtomicU64::new(0), RingCursor::default());
        let mut data = [0u8; 64];
        let loan = RingLoan {
            conn: 7,
            head: &head,
            tail: &tail,
            data: data.as_mut_ptr(),
            cap: 64,
            max_len: 64,
            cursor: &cursor,
        };
        let (sleeping, tx_cursor) = (AtomicU64::new(0), RingCursor::default());
        let send = vmi_device::lent::TxLoan {
            ring: RingLoan {
                conn: 7,
                cursor: &tx_cursor,
                ..loan
            },
            sleeping: &sleeping,
            bell: -1,
            light: false,
        };
        // Two send rings for one connection: the set keeps one, sorted by connection.
        // SAFETY: the rings' words and bytes outlive the set (dropped first below).
        unsafe { rings.publish([loan], [send, send], 10) };
        assert_eq!(read(), (0, 10, 1));
        // SAFETY: as above.
        assert_eq!(unsafe { ((*set).tx_count, (*(*set).tx).conn) }, (1, 7));
        // SAFETY: as above: the host counts skips down.
        unsafe { (*set).skips -= 3 };
        assert_eq!(rings.take_skipped(), 3);
        assert_eq!(rings.take_skipped(), 0, "each skip counted once");
        rings.set_busy();
        assert!(rings.busy());
        assert_eq!(read().0, 1);
        rings.grant(5);
        assert_eq!(read(), (1, 5, 1), "a grant leaves busy as it is");
        drop(rings);
        assert_eq!(
            LENT.lock().unwrap().last(),
            Some(&0),
            "the loan ends with NULL"
        );
    }

    static STREAMS_LENT: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
    unsafe extern "C" fn record_streams(_: *mut c_void, set: *mut VmiStreamSet) {
        STREAMS_LENT.lock().unwrap().push(set as usize);
    }

    /// The stream set a transport lends: busy until the first publish; the host's skips
    /// counted once each, and seen before they are taken; a rest read once; dropping it ends
    /// the loan.
    #[test]
    fn lent_streams_keep_the_contract_with_a_1_8_host() {
        use vmi_device::lent_stream::{LentStreams, Rest, StreamBuffer, StreamLoan, StreamRest};
        let services = VmiHostServices {
            lend_streams: record_streams,
            ..table(8, never)
        };
        let host = host_of(services);
        let mut streams = LentStreams::default();
        assert!(streams.lend(&host));
        let set = *STREAMS_LENT.lock().unwrap().last().unwrap() as *mut VmiStreamSet;
        // SAFETY: the set lives in `streams` until it is dropped below; this test plays the
        // host, on the one thread.
        let read = move || unsafe { ((*set).busy, (*set).skips, (*set).count) };
        assert_eq!(read(), (1, 0, 0), "busy and empty until published");
        let rest = StreamRest::default();
        let buf = StreamBuffer::new(64);
        let loan = StreamLoan {
            conn: 9,
            fd: -1,
            max_len: 32,
            rest: &rest,
        };
        // SAFETY: the buffer and the rest outlive the set; the fd is never read here.
        unsafe { streams.publish([loan], &StreamBuffer::default(), 10) };
        assert_eq!(read().0, 1, "an empty buffer lends nothing");
        // SAFETY: as above.
        unsafe { streams.publish([loan], &buf, 10) };
        assert_eq!(read(), (0, 10, 1));
        // SAFETY: as above.
        let s = unsafe { &*(*set).streams };
        assert_eq!((s.conn, s.fd, s.cap, s.max_len), (9, -1, 64, 32));
        // SAFETY: as above: the host counts skips down and leaves a rest.
        unsafe {
            (*set).skips -= 3;
            let r = &mut *s.rest;
            r.kind = VMI_REST_BYTES;
            r.off = 16;
            r.len = 40;
            r.heard = 40;
        }
        assert_eq!(streams.skipped(), 3, "seen before it is taken");
        assert_eq!(streams.take_skipped(), 3);
        assert_eq!(streams.take_skipped(), 0, "each skip counted once");
        assert!(rest.take_heard());
        assert!(!rest.take_heard(), "heard is cleared");
        assert_eq!(rest.take(64), Some(Rest::Bytes { off: 16, len: 40 }));
        assert_eq!(rest.take(64), None, "a rest is read once");
        // A rest outside the buffer is a host bug, read as an end of stream.
        // SAFETY: as above.
        unsafe {
            let r = &mut *s.rest;
            r.kind = VMI_REST_BYTES;
            r.off = 8;
            r.len = 65;
        }
        assert_eq!(rest.take(64), Some(Rest::End));
        streams.set_busy();
        assert!(streams.busy());
        streams.grant(5);
        assert_eq!(read(), (1, 5, 1), "a grant leaves busy as it is");
        drop(streams);
        assert_eq!(
            STREAMS_LENT.lock().unwrap().last(),
            Some(&0),
            "the loan ends with NULL"
        );
    }

    #[test]
    fn a_device_on_a_1_7_host_lends_no_streams() {
        // A 1.7 table ends before `lend_streams` (its entry here panics if called).
        let services = VmiHostServices {
            size: VMI_HOST_SERVICES_SIZE_1_7,
            ..table(7, never)
        };
        let host = host_of(services);
        let mut streams = vmi_device::lent_stream::LentStreams::default();
        assert!(
            !streams.lend(&host),
            "an older host is not offered the sockets"
        );
        assert!(!streams.is_lent());
        assert!(streams.busy(), "and the device goes on reading them itself");
    }

    #[test]
    fn a_device_on_a_1_6_host_lends_no_rings() {
        // A 1.6 table ends before `lend_rings` (its entry here panics if called).
        let services = VmiHostServices {
            size: VMI_HOST_SERVICES_SIZE_1_1,
            ..table(6, never)
        };
        let host = host_of(services);
        let mut rings = vmi_device::lent::LentRings::default();
        assert!(!rings.lend(&host), "an older host is not offered the rings");
        assert!(!rings.is_lent());
        assert!(rings.busy(), "and the device goes on reading them itself");
    }
}
