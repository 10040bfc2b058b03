//! Steady-state send and receive allocate nothing per message: 10,000 messages over the
//! loopback device, counted by a global allocator that counts only this test's thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use vmi_core::Operations;

use vmi_core::spec::Spec;
use vmi_core::{ConnId, ConnectOutcome, Ctx, Handler, Recv, SendCompletion, Slab, Vmi};
use vmi_tests::{register_all, unique_key};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The loopback device's buffer pool is shared by the whole process: the tests here run one
/// at a time so one's traffic does not empty the other's pool.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[derive(Default)]
struct Counter {
    conn: Option<ConnId>,
    received: u64,
    bytes: u64,
    completed: u64,
}

impl Handler for Counter {
    fn connected(
        &mut self,
        _ctx: &mut Ctx<'_>,
        conn: ConnId,
        outcome: ConnectOutcome<'_>,
        _token: u64,
    ) {
        assert!(matches!(outcome, ConnectOutcome::Accepted(_)));
        self.conn = Some(conn);
    }

    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        assert_eq!(cmd, Recv::End);
        self.received += 1;
        self.bytes += slab.len() as u64;
    }

    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, done: &mut SendCompletion<'_>) {
        assert!(done.status.is_ok());
        self.completed += 1;
    }
}

fn spec(filters: bool) -> Spec {
    let text = if filters {
        "<vmi><device name=\"s\" type=\"skeleton\"/><device name=\"loop\" type=\"loopback\"/><chain name=\"send\"><use device=\"s\"/><use device=\"loop\"/></chain><chain name=\"receive\"><use device=\"loop\"/><use device=\"s\"/></chain></vmi>"
    } else {
        "<vmi><device name=\"loop\" type=\"loopback\"/><chain name=\"send\"><use device=\"loop\"/></chain><chain name=\"receive\"><use device=\"loop\"/></chain></vmi>"
    };
    Spec::parse_str(text, "alloc.xml").unwrap()
}

/// Two vmi over loopback (with a skeleton filter when `filters`), connected.
fn connected(filters: bool) -> (Vmi, Counter, Vmi, Counter, ConnId) {
    register_all();
    let (ka, kb) = (unique_key("alloc-a"), unique_key("alloc-b"));
    let mut a = Vmi::with_spec(spec(filters), &ka).unwrap();
    let mut b = Vmi::with_spec(spec(filters), &kb).unwrap();
    let (mut ha, mut hb) = (Counter::default(), Counter::default());
    a.connect("localhost", &kb, b"", 0).unwrap();
    while ha.conn.is_none() {
        a.poll(&mut ha);
        b.poll(&mut hb);
    }
    let conn = ha.conn.unwrap();
    (a, ha, b, hb, conn)
}

fn run(filters: bool) {
    let (mut a, mut ha, mut b, mut hb, conn) = connected(filters);
    let payload = [7u8; 256];
    let mut step = |ha: &mut Counter, hb: &mut Counter| {
        a.send_inline(conn, &payload).unwrap();
        b.poll(hb);
        a.poll(ha);
    };
    for _ in 0..1000 {
        step(&mut ha, &mut hb); // warm up pools and queues
    }
    // The counter must see allocations on this thread, or a zero below would prove nothing.
    ALLOCS.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    drop(std::hint::black_box(Box::new([0u8; 64])));
    COUNTING.with(|c| c.set(false));
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed),
        1,
        "the counting allocator is live"
    );
    ALLOCS.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    for _ in 0..10_000 {
        step(&mut ha, &mut hb);
    }
    COUNTING.with(|c| c.set(false));
    let allocs = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(hb.received, 11_000);
    assert_eq!(hb.bytes, 11_000 * 256);
    assert_eq!(
        ha.completed, 0,
        "inline sends that succeed have no completion (VMI_Stream_Send_Inline)"
    );
    assert_eq!(
        allocs, 0,
        "steady-state send + receive allocated {allocs} times over 10,000 messages (filters: {filters})"
    );
}

#[test]
fn steady_state_allocates_nothing_per_message() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    run(false);
    run(true);
}

/// A burst the receiver does not read: sends are accepted until the process's limit, then
/// refused with `Busy` (nothing queued beyond it); once the receiver reads, everything
/// arrives. After one such burst has warmed the pools, a second allocates nothing at all.
#[test]
fn a_burst_the_receiver_does_not_read_is_bounded_and_allocates_nothing_once_warm() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut a, mut ha, mut b, mut hb, conn) = connected(false);
    let payload = [3u8; 8];
    let burst = |a: &mut Vmi, ha: &mut Counter, b: &mut Vmi, hb: &mut Counter| {
        // 10,000 sends with the receiver not polling: the first ones are accepted, then the
        // sender is pushed back.
        let mut accepted = 0u64;
        for _ in 0..10_000 {
            match a.send_inline(conn, &payload) {
                Ok(()) => accepted += 1,
                Err(vmi_core::VmiError::Busy { .. }) => {}
                Err(e) => panic!("{e}"),
            }
            a.poll(ha);
        }
        let held = a.irbs_in_use();
        // Now the receiver reads; the sender finishes.
        let target = hb.received + accepted;
        while hb.received < target || a.irbs_in_use() > 0 {
            b.poll(hb);
            a.poll(ha);
        }
        (accepted, held)
    };
    let (accepted, held) = burst(&mut a, &mut ha, &mut b, &mut hb);
    assert!(
        (vmi_core::MAX_SENDS_IN_FLIGHT as u64..10_000).contains(&accepted),
        "accepted up to the limit and then pushed back: {accepted}"
    );
    assert!(
        held <= vmi_core::MAX_SENDS_IN_FLIGHT + 8,
        "the sender holds at most the limit: {held}"
    );
    ALLOCS.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let (again, _) = burst(&mut a, &mut ha, &mut b, &mut hb);
    COUNTING.with(|c| c.set(false));
    let allocs = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(again, accepted, "the same burst behaves the same");
    assert_eq!(hb.received, accepted * 2);
    assert_eq!(
        allocs, 0,
        "a second burst of 10,000 sends against a receiver that does not read allocated {allocs} times"
    );
}
