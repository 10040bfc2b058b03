//! The chain engine on the loopback device: pass/complete/pend orders, completion unwinding,
//! frames, queued (never re-entered) callbacks, grabbed slabs, failures and panics.

use std::time::{Duration, Instant};
use vmi_core::Operations;

use vmi_core::spec::Spec;
use vmi_core::{
    Buffer, ConnId, ConnectOutcome, ConnectRequest, Ctx, Decision, Disconnect, GrabbedSlab,
    Handler, Recv, SendCompletion, Slab, Status, Vmi, VmiError,
};
use vmi_tests::{devices::log_for, register_all, unique_key};

fn vmi(spec: &str, key: &str) -> Vmi {
    register_all();
    Vmi::with_spec(Spec::parse_str(spec, "test.xml").unwrap(), key)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn loopback(filters: &str, key: &str) -> Vmi {
    let (devs, send, recv) = filter_xml(filters);
    vmi(
        &format!(
            "<vmi>{devs}<device name=\"loop\" type=\"loopback\"/><chain name=\"send\">{send}<use device=\"loop\"/></chain><chain name=\"receive\"><use device=\"loop\"/>{recv}</chain></vmi>"
        ),
        key,
    )
}

/// `filters`: `name=type[:param=value]` separated by spaces, application first.
fn filter_xml(filters: &str) -> (String, String, String) {
    let (mut devs, mut send, mut recv) = (String::new(), String::new(), Vec::new());
    for f in filters.split_whitespace() {
        let (name, rest) = f.split_once('=').expect("name=type");
        let mut parts = rest.split(':');
        let ty = parts.next().unwrap();
        let params: String = parts
            .map(|p| {
                let (k, v) = p.split_once('~').expect("param~value");
                format!("<param name=\"{k}\" value=\"{v}\"/>")
            })
            .collect();
        devs.push_str(&format!(
            "<device name=\"{name}\" type=\"{ty}\">{params}</device>"
        ));
        send.push_str(&format!("<use device=\"{name}\"/>"));
        recv.push(format!("<use device=\"{name}\"/>"));
    }
    recv.reverse();
    (devs, send, recv.concat())
}

/// How a connect ended: reply data or failure, and whether it was accepted.
type Connected = (ConnId, Result<Vec<u8>, (Status, String)>, bool);

#[derive(Default)]
struct Rec {
    accept_data: Vec<Vec<u8>>,
    reject: bool,
    connected: Vec<Connected>,
    received: Vec<(ConnId, Recv, Vec<u8>)>,
    completions: Vec<(u64, Status, String, usize)>,
    disconnects: Vec<(ConnId, Disconnect)>,
    failed: Vec<(Status, String)>,
    echo: bool,
    grab: bool,
    /// After grabbing, replace the slab the engine lent with another one.
    swap_after_grab: bool,
    grabbed: Vec<GrabbedSlab>,
    depth: u32,
    max_depth: u32,
    sent_inside_callback: u32,
}

impl Rec {
    fn enter(&mut self) {
        self.depth += 1;
        self.max_depth = self.max_depth.max(self.depth);
    }
}

impl Handler for Rec {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, req: &mut ConnectRequest<'_>) -> Decision {
        self.enter();
        self.accept_data.push(req.data.read_to_vec());
        self.depth -= 1;
        if self.reject {
            Decision::Reject(b"go away".to_vec())
        } else {
            Decision::Accept(b"welcome".to_vec())
        }
    }

    fn connected(
        &mut self,
        _ctx: &mut Ctx<'_>,
        conn: ConnId,
        outcome: ConnectOutcome<'_>,
        _token: u64,
    ) {
        self.enter();
        let r = match outcome {
            ConnectOutcome::Accepted(mut s) => (Ok(s.read_to_vec()), true),
            ConnectOutcome::Rejected(mut s) => (Ok(s.read_to_vec()), false),
            ConnectOutcome::Failed { status, detail } => (Err((status, detail.to_string())), false),
        };
        self.connected.push((conn, r.0, r.1));
        self.depth -= 1;
    }

    fn receive(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, cmd: Recv, slab: &mut Slab<'_>) {
        self.enter();
        let data = slab.read_to_vec();
        if self.echo {
            ctx.send_inline(conn, &data)
                .expect("send from inside a callback");
            self.sent_inside_callback += 1;
        }
        if self.grab {
            slab.rewind();
            self.grabbed.push(slab.grab().expect("grab"));
            if self.swap_after_grab {
                *slab = Slab::from_bytes(b"decoy");
            }
        }
        self.received.push((conn, cmd, data));
        self.depth -= 1;
    }

    fn receive_failed(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, status: Status, detail: &str) {
        self.failed.push((status, detail.to_string()));
    }

    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, done: &mut SendCompletion<'_>) {
        self.enter();
        let n = done.take_buffers().count();
        self.completions
            .push((done.token, done.status, done.detail.to_string(), n));
        self.depth -= 1;
    }

    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, reason: Disconnect) {
        self.disconnects.push((conn, reason));
    }
}

/// Polls both sides until `done` or a 5 s limit.
fn pump(a: &mut Vmi, ha: &mut Rec, b: &mut Vmi, hb: &mut Rec, done: impl Fn(&Rec, &Rec) -> bool) {
    let start = Instant::now();
    while !done(ha, hb) {
        a.poll(ha);
        b.poll(hb);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out pumping"
        );
    }
}

fn connected_pair(fa: &str, fb: &str) -> (Vmi, Rec, Vmi, Rec, ConnId) {
    let (ka, kb) = (unique_key("a"), unique_key("b"));
    let mut a = loopback(fa, &ka);
    let mut b = loopback(fb, &kb);
    let (mut ha, mut hb) = (Rec::default(), Rec::default());
    let conn = a.connect("localhost", &kb, b"hello", 7).unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |ha, _| {
        !ha.connected.is_empty()
    });
    assert_eq!(
        ha.connected[0].1.as_ref().map(|v| v.as_slice()),
        Ok(b"welcome".as_slice())
    );
    assert!(ha.connected[0].2, "accepted");
    assert_eq!(hb.accept_data, vec![b"hello".to_vec()]);
    (a, ha, b, hb, conn)
}

#[test]
fn connect_data_accept_and_fragments() {
    let (mut a, mut ha, mut b, mut hb, conn) = connected_pair("", "");
    let stream = a.stream_begin(conn).unwrap();
    for i in 0..15u8 {
        a.stream_send(
            &stream,
            [Buffer::from(vec![i; 100]), Buffer::from(vec![i; 3])],
            i as u64,
        )
        .unwrap();
    }
    a.stream_end(stream, [], 99).unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |ha, hb| {
        hb.received.len() == 16 && ha.completions.len() == 16
    });
    for (i, (_, cmd, data)) in hb.received.iter().enumerate() {
        if i < 15 {
            assert_eq!(*cmd, Recv::Fragment);
            assert_eq!(data.len(), 103);
            assert!(
                data.iter().all(|&x| x == i as u8),
                "fragment {i} gathered in order"
            );
        } else {
            assert_eq!(
                (*cmd, data.len()),
                (Recv::End, 0),
                "an empty END fragment closes the stream"
            );
        }
    }
    let tokens: Vec<u64> = ha.completions.iter().map(|c| c.0).collect();
    assert_eq!(tokens, (0..15).chain([99]).collect::<Vec<_>>());
    assert!(ha.completions.iter().all(|c| c.1 == Status::Ok));
    assert_eq!(
        ha.completions[0].3, 2,
        "buffers come back with the completion"
    );
}

#[test]
fn rejection_carries_reply_data_and_frees_the_connection() {
    let (ka, kb) = (unique_key("a"), unique_key("b"));
    let mut a = loopback("", &ka);
    let mut b = loopback("", &kb);
    let (mut ha, mut hb) = (
        Rec::default(),
        Rec {
            reject: true,
            ..Default::default()
        },
    );
    let conn = a.connect("localhost", &kb, b"please", 0).unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |ha, _| {
        !ha.connected.is_empty()
    });
    assert_eq!(ha.connected[0].1, Ok(b"go away".to_vec()));
    assert!(!ha.connected[0].2, "rejected");
    assert!(matches!(
        a.send_inline(conn, b"x"),
        Err(VmiError::UnknownConnection(_))
    ));
    assert_eq!(a.connection_count(), 0);
}

#[test]
fn completion_steps_unwind_in_reverse_with_their_frames() {
    let ta = unique_key("ta");
    let tb = unique_key("tb");
    let (mut a, mut ha, mut b, mut hb, conn) = connected_pair(
        &format!("up=recorder:tag~{ta}-up low=recorder:tag~{ta}-low"),
        &format!("up=recorder:tag~{tb}-up low=recorder:tag~{tb}-low"),
    );
    // A buffer send (an inline send that succeeds has no completion to observe).
    a.send(conn, [Buffer::from(b"ping".to_vec())], 0).unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |ha, hb| {
        hb.received.len() == 1 && !ha.completions.is_empty()
    });
    b.poll(&mut hb);
    // Send side: up submits before low; low completes before up; each sees its own frame.
    let up = log_for(&format!("{ta}-up"));
    let low = log_for(&format!("{ta}-low"));
    let last_up = up.last().unwrap();
    let last_low = low.last().unwrap();
    assert!(
        last_up.starts_with("complete:Send:") && last_up.ends_with(":feed:Ok"),
        "{up:?}"
    );
    assert!(
        last_low.starts_with("complete:Send:") && last_low.ends_with(":feed:Ok"),
        "{low:?}"
    );
    let seq_up: Vec<&String> = up.iter().filter(|e| e.starts_with("submit:Send")).collect();
    assert_eq!(
        last_up.split(':').nth(2),
        seq_up.last().unwrap().split(':').nth(2),
        "frame kept the submit stamp"
    );
    // Receive side: low (nearer the wire) receives first; release unwinds up, then low.
    let rup = log_for(&format!("{tb}-up"));
    let rlow = log_for(&format!("{tb}-low"));
    assert!(
        rlow.iter().any(|e| e.starts_with("receive:Recv")),
        "{rlow:?}"
    );
    assert!(
        rup.last().unwrap().starts_with("complete:Recv") && rup.last().unwrap().contains(":beef:"),
        "{rup:?}"
    );
    let all: Vec<String> = vmi_tests::devices::log_for(&format!("{tb}-up"))
        .into_iter()
        .chain(log_for(&format!("{tb}-low")))
        .collect();
    assert!(!all.is_empty());
}

#[test]
fn pended_irbs_finish_from_poll_and_from_other_threads() {
    for mode in ["pass", "complete", "thread"] {
        let (mut a, mut ha, mut b, mut hb, conn) =
            connected_pair(&format!("p=pender:mode~{mode}"), "");
        a.send(conn, [Buffer::from(b"later".to_vec())], 0).unwrap();
        assert!(
            ha.completions.is_empty(),
            "{mode}: nothing completes inside send"
        );
        let start = Instant::now();
        while ha.completions.is_empty() {
            a.wait(&mut ha, Duration::from_millis(100));
            b.poll(&mut hb);
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{mode}: completion never came"
            );
        }
        assert_eq!(ha.completions[0].1, Status::Ok, "{mode}");
        for _ in 0..20 {
            b.poll(&mut hb);
        }
        let delivered = hb.received.len();
        assert_eq!(
            delivered,
            usize::from(mode == "pass"),
            "{mode}: only a passed IRB reaches the peer"
        );
    }
}

#[test]
fn callbacks_are_queued_never_reentered() {
    let (mut a, mut ha, mut b, mut hb, conn) = connected_pair("", "");
    hb.echo = true;
    for i in 0..100u32 {
        a.send_inline(conn, &i.to_le_bytes()).unwrap();
    }
    pump(&mut a, &mut ha, &mut b, &mut hb, |ha, _| {
        ha.received.len() == 100
    });
    assert_eq!(hb.sent_inside_callback, 100);
    let echoed: Vec<u32> = ha
        .received
        .iter()
        .map(|r| u32::from_le_bytes(r.2[..4].try_into().unwrap()))
        .collect();
    assert_eq!(
        echoed,
        (0..100).collect::<Vec<_>>(),
        "echoes come back in order"
    );
    assert_eq!(hb.max_depth, 1, "a callback never runs inside another");
    assert_eq!(ha.max_depth, 1);
}

#[test]
fn grabbed_slabs_stay_valid_and_release_from_another_thread() {
    let (mut a, mut ha, mut b, mut hb, conn) = connected_pair("", "");
    hb.grab = true;
    let base = b.irbs_in_use();
    for i in 0..10u8 {
        a.send_inline(conn, &[i; 1000]).unwrap();
    }
    pump(&mut a, &mut ha, &mut b, &mut hb, |_, hb| {
        hb.grabbed.len() == 10
    });
    assert_eq!(b.irbs_in_use(), base + 10, "grabbed slabs keep their IRBs");
    let grabbed = std::mem::take(&mut hb.grabbed);
    let sums = std::thread::spawn(move || {
        grabbed
            .into_iter()
            .map(|mut g| {
                let v = g.read_to_vec();
                v.iter().map(|&x| x as u64).sum::<u64>()
            })
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    assert_eq!(sums, (0..10u64).map(|i| i * 1000).collect::<Vec<_>>());
    b.poll(&mut hb);
    assert_eq!(
        b.irbs_in_use(),
        base,
        "released slabs went back to the pool"
    );
}

#[test]
fn a_handler_that_replaces_a_grabbed_slab_cannot_make_the_engine_free_it() {
    let (mut a, mut ha, mut b, mut hb, conn) = connected_pair("", "");
    hb.grab = true;
    hb.swap_after_grab = true;
    let base = b.irbs_in_use();
    for i in 0..5u8 {
        a.send_inline(conn, &[i; 300]).unwrap();
    }
    pump(&mut a, &mut ha, &mut b, &mut hb, |_, hb| {
        hb.grabbed.len() == 5
    });
    for _ in 0..10 {
        b.poll(&mut hb);
    }
    assert_eq!(
        b.irbs_in_use(),
        base + 5,
        "the grab is recorded by the engine, not in the slab the handler replaced"
    );
    for (i, mut g) in std::mem::take(&mut hb.grabbed).into_iter().enumerate() {
        assert_eq!(g.read_to_vec(), vec![i as u8; 300], "still readable");
    }
    b.poll(&mut hb);
    assert_eq!(b.irbs_in_use(), base, "released when dropped");
}

#[test]
fn releasing_a_grabbed_slab_from_another_thread_wakes_a_waiting_receiver() {
    let (mut a, mut ha, mut b, mut hb, conn) = connected_pair("", "");
    hb.grab = true;
    a.send_inline(conn, b"keep me").unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |_, hb| {
        hb.grabbed.len() == 1
    });
    let g = hb.grabbed.pop().unwrap();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        drop(g);
    });
    // Nothing else will happen: only the release can end this wait before its 10 s.
    let start = Instant::now();
    let n = b.wait(&mut hb, Duration::from_secs(10));
    releaser.join().unwrap();
    assert!(n > 0, "the release is an event");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the release woke the wait ({:?})",
        start.elapsed()
    );
}

#[test]
fn a_completion_from_a_thread_after_the_vmi_ended_is_dropped_safely() {
    let (mut a, _ha, _b, _hb, conn) = connected_pair("p=pender:mode~thread", "");
    a.send_inline(conn, b"late").unwrap();
    a.poll(&mut Rec::default()); // the pender hands the IRB to its thread
    drop(a); // the thread completes 5 ms later, after the engine is gone
    std::thread::sleep(Duration::from_millis(50));
    // Still here: the completion found the retired inbox and was dropped with a log line,
    // instead of touching the freed engine. A second instance works as before.
    let (mut a, mut ha, mut b, mut hb, conn) = connected_pair("", "");
    a.send_inline(conn, b"after").unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |_, hb| {
        hb.received.len() == 1
    });
}

/// VMI_Stream_Send_Inline has no completion routine: a successful inline send costs no
/// callback; a failed one is still reported.
#[test]
fn inline_sends_complete_silently_unless_they_fail() {
    let (mut a, mut ha, mut b, mut hb, conn) = connected_pair("", "");
    for i in 0..100u32 {
        a.send_inline(conn, &i.to_le_bytes()).unwrap();
    }
    pump(&mut a, &mut ha, &mut b, &mut hb, |_, hb| {
        hb.received.len() == 100
    });
    for _ in 0..10 {
        a.poll(&mut ha);
    }
    assert!(ha.completions.is_empty(), "{:?}", ha.completions);
    assert_eq!(
        a.sends_available(),
        vmi_core::MAX_SENDS_IN_FLIGHT,
        "every slot is back"
    );
}

#[test]
fn a_filter_failure_reaches_the_right_callback() {
    let (mut a, mut ha, mut b, mut hb, conn) = connected_pair("f=failer:status~7", "");
    a.send_inline(conn, b"x").unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |ha, _| {
        !ha.completions.is_empty()
    });
    assert_eq!(ha.completions[0].1, Status::Corrupt);
    assert!(
        ha.completions[0].2.contains("failer"),
        "detail travels: {:?}",
        ha.completions[0]
    );
    let (mut a, mut ha, mut b, mut hb, conn) =
        connected_pair("", "f=failer:direction~receive:status~7");
    a.send_inline(conn, b"secret").unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |_, hb| {
        !hb.failed.is_empty()
    });
    assert_eq!(hb.failed[0].0, Status::Corrupt);
    assert!(
        hb.received.is_empty(),
        "failed data is never handed to the application"
    );
}

#[test]
fn panicking_or_leaky_devices_do_not_take_the_process_down() {
    register_all();
    let spec = "<vmi><device name=\"p\" type=\"panicker\"><param name=\"at\" value=\"create\"/></device><device name=\"loop\" type=\"loopback\"/><chain name=\"send\"><use device=\"p\"/><use device=\"loop\"/></chain><chain name=\"receive\"><use device=\"loop\"/><use device=\"p\"/></chain></vmi>";
    let err = Vmi::with_spec(Spec::parse_str(spec, "p.xml").unwrap(), &unique_key("p"))
        .err()
        .expect("create panics");
    let text = err.to_string();
    assert!(
        text.contains("panicked while starting") && text.contains("told to panic in create"),
        "{text}"
    );
    for filters in ["p=panicker:at~submit", "d=dropper"] {
        let (mut a, mut ha, mut b, mut hb, conn) = connected_pair(filters, "");
        a.send_inline(conn, b"boom").unwrap();
        a.send_inline(conn, b"boom again").unwrap();
        pump(&mut a, &mut ha, &mut b, &mut hb, |ha, _| {
            ha.completions.len() == 2
        });
        assert!(
            ha.completions.iter().all(|c| c.1 == Status::Internal),
            "{filters}: {:?}",
            ha.completions
        );
    }
}

#[test]
fn disconnect_is_reported_on_both_sides_and_handles_go_stale() {
    let (mut a, mut ha, mut b, mut hb, conn) = connected_pair("", "");
    a.disconnect(conn).unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |ha, hb| {
        !ha.disconnects.is_empty() && !hb.disconnects.is_empty()
    });
    assert_eq!(ha.disconnects[0].1, Disconnect::Local);
    assert_eq!(hb.disconnects[0].1, Disconnect::Peer);
    assert!(matches!(
        a.send_inline(conn, b"late"),
        Err(VmiError::UnknownConnection(_))
    ));
    assert!(matches!(
        a.disconnect(conn),
        Err(VmiError::UnknownConnection(_))
    ));
}

#[test]
fn stream_and_size_rules_are_enforced() {
    let (mut a, _ha, _b, _hb, conn) = connected_pair("", "");
    let s = a.stream_begin(conn).unwrap();
    assert!(matches!(a.stream_begin(conn), Err(VmiError::StreamBusy(_))));
    assert!(matches!(
        a.send_inline(conn, b"x"),
        Err(VmiError::StreamBusy(_))
    ));
    let too_many: Vec<Buffer> = (0..17).map(|_| Buffer::from(vec![1u8])).collect();
    assert!(matches!(
        a.stream_send(&s, too_many, 0),
        Err(VmiError::TooManyBuffers { given: 17, max: 16 })
    ));
    a.stream_end(s, [], 0).unwrap();
    let big = Buffer::zeroed((64 << 20) + 1);
    assert!(matches!(
        a.send(conn, [big], 0),
        Err(VmiError::FragmentTooLarge { .. })
    ));
    let data = vec![0u8; vmi_core::MAX_CONNECT_DATA + 1];
    assert!(matches!(
        a.connect("localhost", "x", &data, 0),
        Err(VmiError::ConnectDataTooLarge { .. })
    ));
}

#[test]
fn unknown_peer_and_filter_mismatch_are_clear_errors() {
    let mut a = loopback("", &unique_key("a"));
    let err = a
        .connect("localhost", "nobody-has-this-key", b"", 0)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no loopback endpoint with key 'nobody-has-this-key'"),
        "{err}"
    );

    let (ka, kb) = (unique_key("a"), unique_key("b"));
    let mut a = loopback("s=skeleton", &ka);
    let mut b = loopback("", &kb);
    let (mut ha, mut hb) = (Rec::default(), Rec::default());
    a.connect("localhost", &kb, b"", 0).unwrap();
    pump(&mut a, &mut ha, &mut b, &mut hb, |ha, _| {
        !ha.connected.is_empty()
    });
    let (status, detail) = ha.connected[0].1.clone().unwrap_err();
    assert_eq!(status, Status::Mismatch);
    assert!(
        detail.contains(&format!("'{kb}' sends through no filters"))
            && detail.contains("[skeleton@0]"),
        "{detail}"
    );
}

#[test]
fn wait_sleeps_until_its_timeout_when_idle() {
    let mut a = loopback("", &unique_key("idle"));
    let mut h = Rec::default();
    let start = Instant::now();
    assert_eq!(a.wait(&mut h, Duration::from_millis(150)), 0);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

/// CPU time of the calling thread, in clock ticks.
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime); after the name, they are at 11 and 12.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn wait_sleeps_after_a_completion_from_another_thread() {
    let (mut a, mut ha, mut b, mut hb, conn) = connected_pair("p=pender:mode~thread", "");
    a.send(conn, [Buffer::from(b"x".to_vec())], 0).unwrap();
    let start = Instant::now();
    while ha.completions.is_empty() {
        a.wait(&mut ha, Duration::from_millis(100));
        b.poll(&mut hb);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    // Idle now: a 500 ms wait must sleep, not spin (a spinning wait would burn ~50 ticks).
    let before = thread_cpu_ticks();
    assert_eq!(a.wait(&mut ha, Duration::from_millis(500)), 0);
    let used = thread_cpu_ticks() - before;
    assert!(
        used < 15,
        "wait used {used} ticks of CPU in 500 ms: it is spinning"
    );
}
