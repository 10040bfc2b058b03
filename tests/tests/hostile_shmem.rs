//! Hostile shared-memory peers (issue: hostile input): a process that completes the handshake
//! and then corrupts the ring positions it owns, one that hands over ring memory it could
//! still shrink, one that floods descriptors, and another user's process squatting a key.
//! Each test asserts that the victim (a real `vmirecv`) survives, reports the peer, and still
//! serves a good peer afterwards.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmi_shmem::io::{Region, recv_with_fds, send_with_fds, socket_addr};
use vmi_shmem::wire::{ACCEPT, ANSWER_LEN, Answer, Caps, DATA, Hello, PROBE, RDV_END, Record};
use vmi_tests::{Proc, bin, root, unique_key};

const T: Duration = Duration::from_secs(120);

fn shm_spec() -> PathBuf {
    root().join("specfiles/shmem.xml")
}

fn receiver(key: &str, n: &str) -> Proc {
    let p = Proc::spawn(
        "vmirecv",
        &[key, "--timeout", "100", "-n", n],
        &shm_spec(),
        &[],
    );
    p.wait_for("waiting for connections", T);
    p
}

fn good_sender(recv_key: &str) -> (bool, String) {
    let key = unique_key("shm-good");
    Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &key,
            recv_key,
            "localhost",
            "--timeout",
            "100",
            "-q",
        ],
        &shm_spec(),
        &[],
    )
    .finish(T)
}

fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Connects to `key`'s rendezvous socket and sends a hello carrying `memfd` as the ring
/// memory; returns the socket and the answer (status, reason).
fn hello(key: &str, from: &str, memfd: &OwnedFd, ring_size: u32) -> (UnixStream, u8, String) {
    hello_with(key, from, memfd, ring_size, Caps::default())
}

/// As [`hello`], offering `caps`, with a probe that does not match: the victim cannot
/// single-copy into this peer.
fn hello_with(
    key: &str,
    from: &str,
    memfd: &OwnedFd,
    ring_size: u32,
    caps: Caps,
) -> (UnixStream, u8, String) {
    hello_probed(key, from, memfd, ring_size, caps, &[0u8; 16])
}

/// As [`hello_with`], pointing the victim at `probe` (the real [`PROBE`] lets it read and
/// write this process's memory: single and shared copies).
fn hello_probed(
    key: &str,
    from: &str,
    memfd: &OwnedFd,
    ring_size: u32,
    caps: Caps,
    probe: &[u8; 16],
) -> (UnixStream, u8, String) {
    let addr = socket_addr(uid(), key).unwrap();
    let sock = UnixStream::connect_addr(&addr).expect("the receiver listens");
    let bell = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    let msg = Hello::emit_with(from, key, "send=;recv=", b"", ring_size, probe, None, caps);
    send_with_fds(&sock, &msg, &[memfd, &bell]).unwrap();
    let mut got = Vec::new();
    let mut fds = Vec::new();
    let start = Instant::now();
    loop {
        let mut buf = [0u8; 4096];
        match recv_with_fds(&sock, &mut buf, &mut fds) {
            Ok(0) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
        if got.len() >= ANSWER_LEN {
            let a = Answer::parse(&got, 1 << 20).expect("a well-formed answer");
            if got.len() >= ANSWER_LEN + a.body_len() {
                let reason = &got[ANSWER_LEN..ANSWER_LEN + a.reason_len as usize];
                return (sock, a.status, String::from_utf8_lossy(reason).into_owned());
            }
        }
        assert!(start.elapsed() < T, "no answer from the receiver");
    }
    panic!(
        "the receiver closed the socket without an answer ({} bytes)",
        got.len()
    );
}

#[test]
fn a_peer_that_corrupts_ring_positions_is_disconnected() {
    for (case, corrupt) in [
        ("head far past the ring", 0usize),
        ("head moved backwards", 1),
        ("head one byte over a full ring", 2),
    ] {
        let key = unique_key("shm-victim");
        let r = receiver(&key, "1");
        let region = Region::create(4096).unwrap();
        let (_sock, status, reason) = hello(&key, "hostile", region.fd(), 4096);
        assert_eq!(status, ACCEPT, "{case}: {reason}");
        let view = region.ring(0);
        let ring = view.shared();
        match corrupt {
            0 => ring
                .head
                .store(u64::MAX - 5, std::sync::atomic::Ordering::Release),
            1 => {
                // One honest record (the receiver reads it), then the head goes back.
                let rec = Record {
                    kind: DATA,
                    flags: 0,
                    len: 0,
                    id: 0,
                }
                .emit();
                let mut p = vmi_shmem::spsc::Producer::new(ring);
                assert_eq!(p.push_all(&[&rec]), Ok(true));
                std::thread::sleep(Duration::from_millis(300));
                ring.head.store(3, std::sync::atomic::Ordering::Release);
                // and a new record so the receiver looks again
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => ring.head.store(4097, std::sync::atomic::Ordering::Release),
        }
        r.wait_for("position from", T);
        let out = r.output();
        assert!(
            out.contains("hostile"),
            "{case}: the log names the peer: {out}"
        );
        let (ok, sout) = good_sender(&key);
        assert!(ok, "{case}: a good peer is served afterwards: {sout}");
        let (ok, out) = r.finish(T);
        assert!(ok, "{case}: the victim exits cleanly: {out}");
    }
}

#[test]
fn ring_memory_the_peer_could_shrink_is_refused() {
    let key = unique_key("shm-victim");
    let r = receiver(&key, "1");
    let len = 2 * Region::ring_bytes(4096) as u64;
    let fd = rustix::fs::memfd_create(
        "unsealed",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    let (_sock, status, reason) = hello(&key, "shrinker", &fd, 4096);
    assert_ne!(status, ACCEPT);
    assert!(reason.contains("not sealed"), "{reason}");
    // Had it been mapped, this would be a SIGBUS in the receiver on its next read.
    rustix::fs::ftruncate(&fd, 0).unwrap();
    let (ok, sout) = good_sender(&key);
    assert!(ok, "{sout}");
    assert!(r.finish(T).0);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn descriptors_sent_after_the_handshake_are_closed() {
    let key = unique_key("shm-victim");
    let r = receiver(&key, "1");
    let region = Region::create(4096).unwrap();
    let (sock, status, reason) = hello(&key, "fd-flooder", region.fd(), 4096);
    assert_eq!(status, ACCEPT, "{reason}");
    std::thread::sleep(Duration::from_millis(200));
    let before = open_fds(r.pid());
    let spare = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    for _ in 0..2000 {
        send_with_fds(&sock, b"x", &[&spare, &spare]).unwrap();
    }
    r.wait_for("descriptor(s) this stage does not expect", T);
    std::thread::sleep(Duration::from_millis(500));
    let after = open_fds(r.pid());
    assert!(
        after <= before + 4,
        "the receiver kept the descriptors: {before} open before, {after} after"
    );
    let (ok, sout) = good_sender(&key);
    assert!(ok, "{sout}");
    assert!(r.finish(T).0);
}

#[test]
fn a_key_squatted_by_another_user_gets_nothing() {
    if uid() != 0 {
        println!("SKIPPED: running a squatter as another user needs root");
        return;
    }
    let key = unique_key("shm-squatted");
    let mut squatter = std::process::Command::new(bin("shm-intruder"));
    squatter
        .args(["squat", &format!("vmi-shmem.0.{key}"), "20"])
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped());
    let mut child = match squatter.spawn() {
        Ok(c) => c,
        Err(e) => {
            println!("SKIPPED: cannot run a process as uid 65534: {e}");
            return;
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    let sender = unique_key("shm-root");
    let (ok, out) = Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &sender,
            &key,
            "localhost",
            "--timeout",
            "10",
            "--cookie",
            "secret-data",
        ],
        &shm_spec(),
        &[],
    )
    .finish(T);
    let _ = child.kill();
    let squat = child.wait_with_output().unwrap();
    let squat = String::from_utf8_lossy(&squat.stdout);
    assert!(!ok, "the sender must fail: {out}");
    assert!(out.contains("another user (uid 65534"), "{out}");
    assert!(
        !squat.contains("descriptors") || squat.contains("got 0 bytes and 0 descriptors"),
        "the squatter received something: {squat}"
    );
}

#[test]
fn an_over_limit_hello_is_answered_and_the_log_shows_the_peers_ring() {
    let key = unique_key("shm-limits");
    let r = Proc::spawn(
        "vmirecv",
        &[&key, "--timeout", "60", "-n", "1"],
        &shm_spec(),
        &[("VMI_SHMEM_MAX_CONNECT_DATA", "32"), ("VMI_LOG", "info")],
    );
    r.wait_for("waiting for connections", T);
    let (ok, out) = Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &unique_key("shm-big"),
            &key,
            "localhost",
            "--cookie",
            &"c".repeat(100),
        ],
        &shm_spec(),
        &[],
    )
    .finish(T);
    assert!(!ok);
    assert!(
        out.contains("refused the connection") && out.contains("over the limit"),
        "the sender hears why: {out}"
    );
    let (ok, out) = Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &unique_key("shm-small-ring"),
            &key,
            "localhost",
            "--cookie",
            "ok",
        ],
        &shm_spec(),
        &[("VMI_SHMEM_RING_SIZE", "4k")],
    )
    .finish(T);
    assert!(ok, "{out}");
    let (ok, rout) = r.finish(T);
    assert!(ok, "{rout}");
    assert!(
        rout.contains("4 KiB ring per direction"),
        "the receiver logs the ring the peer made, not its own setting: {rout}"
    );
}

#[test]
fn keys_of_255_bytes_work_over_shared_memory_and_with_tcp_beside_it() {
    for spec in ["specfiles/shmem.xml", "specfiles/shmem-tcp.xml"] {
        let spec = root().join(spec);
        let key = format!("{}-{}", unique_key("long"), "k".repeat(250));
        let key = &key[..255];
        let r = Proc::spawn("vmirecv", &[key, "--timeout", "60", "-n", "1"], &spec, &[]);
        r.wait_for("waiting for connections", T);
        let skey = format!("{}-{}", unique_key("long-send"), "s".repeat(240));
        let (ok, out) = Proc::spawn(
            "vmisend",
            &[
                "--pattern",
                &skey[..255],
                key,
                "localhost",
                "--timeout",
                "60",
            ],
            &spec,
            &[("VMI_LOG", "info")],
        )
        .finish(T);
        assert!(ok, "{spec:?}: {out}");
        assert!(
            out.contains("transport 'shmem'"),
            "{spec:?}: shared memory was used: {out}"
        );
        assert!(r.finish(T).0);
    }
}

#[test]
fn a_second_process_with_the_same_key_refuses_to_start() {
    for spec in ["specfiles/shmem.xml", "specfiles/shmem-tcp.xml"] {
        let spec = root().join(spec);
        let key = unique_key("shm-dup");
        let r = Proc::spawn("vmirecv", &[&key, "--timeout", "60", "-n", "1"], &spec, &[]);
        r.wait_for("waiting for connections", T);
        let (ok, out) = Proc::spawn("vmirecv", &[&key, "--timeout", "5"], &spec, &[]).finish(T);
        assert!(!ok && out.contains("already"), "{spec:?}: {out}");
        let (ok, out) = good_sender_over(&spec, &key);
        assert!(ok, "{spec:?}: the first keeps serving: {out}");
        assert!(r.finish(T).0);
    }
}

fn good_sender_over(spec: &std::path::Path, recv_key: &str) -> (bool, String) {
    Proc::spawn(
        "vmisend",
        &[
            "--pattern",
            &unique_key("shm-good"),
            recv_key,
            "localhost",
            "--timeout",
            "60",
            "-q",
        ],
        spec,
        &[],
    )
    .finish(T)
}

/// What the victim of `hostile_records_in_a_lent_ring` saw.
#[derive(Default)]
struct Victim {
    conn: Option<vmi_core::ConnId>,
    fragments: Vec<Vec<u8>>,
    ended: Option<String>,
    sent: Vec<vmi_core::Status>,
}

impl vmi_core::Handler for Victim {
    fn accept(
        &mut self,
        _ctx: &mut vmi_core::Ctx<'_>,
        r: &mut vmi_core::ConnectRequest<'_>,
    ) -> vmi_core::Decision {
        self.conn = Some(r.conn);
        vmi_core::Decision::Accept(Vec::new())
    }
    fn receive(
        &mut self,
        _ctx: &mut vmi_core::Ctx<'_>,
        _conn: vmi_core::ConnId,
        _cmd: vmi_core::Recv,
        slab: &mut vmi_core::Slab<'_>,
    ) {
        self.fragments.push(slab.read_to_vec());
    }
    fn send_complete(
        &mut self,
        _ctx: &mut vmi_core::Ctx<'_>,
        _conn: vmi_core::ConnId,
        done: &mut vmi_core::SendCompletion<'_>,
    ) {
        self.sent.push(done.status);
    }
    fn disconnected(
        &mut self,
        _ctx: &mut vmi_core::Ctx<'_>,
        _conn: vmi_core::ConnId,
        reason: vmi_core::Disconnect,
    ) {
        self.ended = Some(match reason {
            vmi_core::Disconnect::Error { status, detail } => format!("{status}: {detail}"),
            other => format!("{other:?}"),
        });
    }
}

/// A busy-polling shared-memory vmi in this process (the victim) and a hostile peer that
/// connected to it with its own 4 KiB rings: the victim, what it saw, the peer's control
/// socket (kept open) and its ring memory.
fn lent_victim(prefix: &str) -> (vmi_core::Vmi, Victim, UnixStream, Region) {
    victim_with(prefix, Caps::default())
}

/// As [`lent_victim`], the hostile peer offering `caps` in its hello.
fn victim_with(prefix: &str, caps: Caps) -> (vmi_core::Vmi, Victim, UnixStream, Region) {
    victim_probed(prefix, caps, &[0u8; 16])
}

/// As [`victim_with`], the hostile peer's hello pointing at `probe`.
fn victim_probed(
    prefix: &str,
    caps: Caps,
    probe: &'static [u8; 16],
) -> (vmi_core::Vmi, Victim, UnixStream, Region) {
    use vmi_tests::harness::{Mode, dev, spec};
    let key = unique_key(prefix);
    let sp = spec(&[], &dev("t", "shmem", &[]), Mode::Static);
    let mut vmi = vmi_core::Vmi::with_spec(sp, &key).expect("a shared-memory vmi");
    let mut victim = Victim::default();
    let hostile = std::thread::spawn(move || {
        let region = Region::create(4096).unwrap();
        let (sock, status, reason) = hello_probed(&key, "hostile", region.fd(), 4096, caps, probe);
        assert_eq!(status, ACCEPT, "{reason}");
        (sock, region)
    });
    let start = Instant::now();
    while !hostile.is_finished() || victim.conn.is_none() {
        vmi.poll(&mut victim);
        assert!(start.elapsed() < T, "no connection");
    }
    let (sock, region) = hostile.join().unwrap();
    (vmi, victim, sock, region)
}

/// The host reads small records from the rings the shared-memory transport lends it (device
/// ABI 1.7), straight from memory the peer writes. A busy-polling victim in this process:
/// honest records are read by the host; what no correct peer writes (an unknown record kind,
/// a header claiming 4 GiB, a producer position moved backwards) stops the host's read at
/// once, and the transport's poll reports it and ends the connection. Nothing is delivered
/// from the bad records, and nothing panics.
#[test]
fn hostile_records_in_a_lent_ring_are_left_to_the_transport() {
    for (case, bad, expect) in [
        (
            "an unknown record kind",
            0,
            "protocol violation by 'hostile'",
        ),
        ("a header claiming 4 GiB", 1, "over max_fragment"),
        ("the head moved backwards", 2, "position from"),
    ] {
        let (mut vmi, mut victim, _sock, region) = lent_victim("shm-lent");
        let start = Instant::now();
        let view = region.ring(0);
        let ring = view.shared();
        let mut p = vmi_shmem::spsc::Producer::new(ring);
        let honest = |len: u32| Record {
            kind: DATA,
            flags: 0,
            len,
            id: 0,
        };
        // Honest records, one at a time, until the host has read one itself: the
        // transport's own poll (its control look, once in so many polls or at a read of the
        // clock) may come first and read a record itself.
        let lent = |vmi: &vmi_core::Vmi| -> u64 {
            vmi.attr_get("t", "lent_receives")
                .expect("shmem reports its lent receives")
                .parse()
                .unwrap()
        };
        let mut sent = Vec::new();
        while lent(&vmi) == 0 && sent.len() < 8 {
            let payload = format!("honest-{}", sent.len()).into_bytes();
            assert_eq!(p.push_all(&[&honest(8).emit(), &payload]), Ok(true));
            sent.push(payload);
            while victim.fragments.len() < sent.len() {
                vmi.poll(&mut victim);
                assert!(
                    start.elapsed() < T,
                    "{case}: an honest record never arrived"
                );
            }
        }
        assert_eq!(victim.fragments, sent, "{case}");
        assert_eq!(
            lent(&vmi),
            1,
            "{case}: the host read none of {} honest records itself",
            sent.len()
        );
        match bad {
            0 => {
                let mut rec = honest(8).emit();
                rec[0] = 99;
                assert_eq!(p.push_all(&[&rec, b"12345678"]), Ok(true));
            }
            1 => assert_eq!(p.push_all(&[&honest(u32::MAX).emit()]), Ok(true)),
            _ => {
                assert_eq!(p.push_all(&[&honest(8).emit(), b"abcdefgh"]), Ok(true));
                ring.head.store(3, std::sync::atomic::Ordering::Release);
            }
        }
        while victim.ended.is_none() {
            vmi.poll(&mut victim);
            assert!(start.elapsed() < T, "{case}: the connection was not ended");
        }
        let ended = victim.ended.take().unwrap();
        assert!(ended.contains(expect), "{case}: {ended}");
        assert_eq!(
            victim.fragments.len(),
            sent.len(),
            "{case}: a bad record was delivered"
        );
    }
}

/// The host writes small sends into the send ring the shared-memory transport lends it
/// (device ABI 1.7), reading the consumer's position from memory the peer writes. A peer
/// that moves that position past what was written is caught when the ring fills: the
/// host's check refuses it and leaves the send to the transport, which reports the peer and
/// ends the connection. Nothing panics and no byte outside the ring is written.
#[test]
fn a_hostile_consumer_position_in_a_lent_send_ring_ends_the_connection() {
    let (mut vmi, mut victim, _sock, region) = lent_victim("shm-lent-tx");
    let start = Instant::now();
    let conn = victim.conn.unwrap();
    // Ring 1 carries the listener's (the victim's) records; the hostile peer consumes it.
    let view = region.ring(1);
    view.shared()
        .tail
        .store(1 << 40, std::sync::atomic::Ordering::Release);
    let mut sent = 0;
    while victim.ended.is_none() {
        vmi.poll(&mut victim);
        if vmi_core::Operations::send_inline(&mut vmi, conn, b"12345678").is_ok() {
            sent += 1;
        }
        assert!(
            start.elapsed() < T,
            "the connection was not ended ({sent} sent)"
        );
    }
    let ended = victim.ended.take().unwrap();
    assert!(ended.contains("position from"), "{ended}");
    let written: u64 = vmi
        .attr_get("t", "lent_sends")
        .expect("shmem reports its lent sends")
        .parse()
        .unwrap();
    assert!(
        written > 0 && written <= sent,
        "the host wrote {written} of {sent} sends itself before the ring filled"
    );
}

/// A hostile sender of a shared single copy (`coop_copy`): it claims a chunk of the share the
/// victim opened for its fragment, then reports chunks done that it never claimed. The
/// victim ends the connection, delivers nothing of the fragment, and sets the buffer aside
/// (the sender might still write into it) instead of reusing it; nothing panics.
#[test]
fn a_sender_that_lies_in_a_shared_copy_is_disconnected_and_its_buffer_never_reused() {
    use std::sync::atomic::Ordering::{Acquire, Relaxed};
    let caps = Caps {
        barrier: false,
        coop: true,
    };
    let (mut vmi, mut victim, sock, region) = victim_with("shm-coop", caps);
    // "I can read (and so write) your memory": the victim opens shares for its fragments.
    send_with_fds(&sock, b"C", &[]).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(50) {
        vmi.poll(&mut victim);
    }
    let payload: Vec<u8> = (0..16usize << 20).map(|i| i as u8).collect();
    let view = region.ring(0);
    let mut p = vmi_shmem::spsc::Producer::new(view.shared());
    let mut tries = 0;
    while victim.ended.is_none() {
        tries += 1;
        assert!(tries <= 10, "the lie was never seen in {tries} fragments");
        let before = victim.fragments.len();
        let rec = vmi_shmem::proto::encode_rendezvous(
            true,
            0,
            tries,
            &[(payload.as_ptr() as u64, payload.len())],
        );
        // The liar's own mapping of the ring memory, on its own thread.
        let fd = region.fd().try_clone().unwrap();
        let liar = std::thread::spawn(move || {
            let r2 = Region::map(fd, 4096).unwrap();
            let view = r2.ring(0);
            let share = view.share();
            let t = Instant::now();
            // Wait for the share of this fragment, claim its last chunk as a sender would,
            // then say chunk 0 on is done.
            loop {
                let v = share.claims.load(Acquire);
                let era = v >> 32;
                if era == tries && (v >> 16 & 0xFFFF) < (v & 0xFFFF) {
                    if share
                        .claims
                        .compare_exchange(v, v - 1, Acquire, Relaxed)
                        .is_ok()
                    {
                        share
                            .done
                            .store(era << 32, std::sync::atomic::Ordering::Release);
                        return;
                    }
                } else if era == tries || t.elapsed() > Duration::from_secs(5) {
                    return;
                }
            }
        });
        assert_eq!(p.push_all(&[&rec]), Ok(true));
        while victim.ended.is_none() && victim.fragments.len() == before {
            vmi.poll(&mut victim);
            assert!(start.elapsed() < T, "neither delivered nor ended");
        }
        liar.join().unwrap();
        if victim.ended.is_none() {
            assert_eq!(
                victim.fragments.last().unwrap(),
                &payload,
                "an honest copy is whole"
            );
        }
    }
    let ended = victim.ended.take().unwrap();
    assert!(ended.contains("shared copy"), "{ended}");
    let stats = vmi.attr_get("t", "coop_copies").unwrap();
    assert!(
        stats.contains(&format!("{} bytes set aside", 16usize << 20)),
        "the buffer the liar might still write is not reused: {stats}"
    );
}

/// Reads records from `c` (the victim's ring) until a rendezvous record, waiting for it
/// (small ones the victim's core sends are skipped): its id, its length and the ranges of the
/// victim's memory it names.
fn take_rendezvous(
    c: &mut vmi_shmem::spsc::Consumer<
        '_,
        std::sync::atomic::AtomicU64,
        vmi_shmem::spsc::mem::RawStorage,
    >,
) -> (u64, u32, Vec<(u64, usize)>) {
    use vmi_shmem::wire::RECORD_LEN;
    let start = Instant::now();
    let wait = |c: &mut vmi_shmem::spsc::Consumer<'_, _, _>, n: usize| {
        while c.available().unwrap() < n {
            assert!(start.elapsed() < T, "no rendezvous record from the victim");
            std::thread::yield_now();
        }
    };
    loop {
        let mut head = [0u8; RECORD_LEN];
        wait(c, RECORD_LEN);
        assert_eq!(c.pop(&mut head).unwrap(), RECORD_LEN);
        let rec = Record::parse(&head).unwrap();
        if rec.kind != RDV_END {
            // Eager data through the ring: its payload follows the header.
            let mut skip = vec![0u8; rec.len as usize];
            wait(c, skip.len());
            assert_eq!(c.pop(&mut skip).unwrap(), skip.len());
            continue;
        }
        let mut count = [0u8; 8];
        wait(c, 8);
        assert_eq!(c.pop(&mut count).unwrap(), 8);
        let n = u32::from_le_bytes(count[..4].try_into().unwrap()) as usize;
        let mut ranges = vec![0u8; 16 * n];
        wait(c, ranges.len());
        assert_eq!(c.pop(&mut ranges).unwrap(), ranges.len());
        let ranges = ranges
            .chunks(16)
            .map(|r| {
                let addr = u64::from_le_bytes(r[..8].try_into().unwrap());
                (
                    addr,
                    u64::from_le_bytes(r[8..].try_into().unwrap()) as usize,
                )
            })
            .collect();
        return (rec.id, rec.len, ranges);
    }
}

/// A hostile receiver of a shared single copy (`coop_copy`): it opens the share of the
/// victim's fragment at an address the victim cannot write (the null page, a non-canonical
/// address, one whose offsets wrap past the end of the address space). The victim, the
/// sender, claims a chunk, its write fails, and it marks the share failed and stops writing
/// into that peer; nothing panics and nothing of the victim is written. The peer then reads
/// the fragment itself and acknowledges it: the send completes, the connection goes on, and
/// at the next fragment's share (at a real buffer this time) the victim claims no chunk.
#[test]
fn a_receiver_that_shares_a_bogus_destination_gets_no_writes_and_the_send_completes() {
    use std::sync::atomic::Ordering::Acquire;
    use vmi_shmem::coop::{Finish, Receiving};
    let caps = Caps {
        barrier: false,
        coop: true,
    };
    for bogus in [8u64, 1 << 63, u64::MAX - 100] {
        let (mut vmi, mut victim, sock, region) = victim_probed("shm-coop-rx", caps, &PROBE);
        // "I can read your memory": the victim sends large fragments by rendezvous.
        send_with_fds(&sock, b"C", &[]).unwrap();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            vmi.poll(&mut victim);
        }
        let conn = victim.conn.unwrap();
        let payloads: Vec<Vec<u8>> = (0..2u8)
            .map(|m| (0..1usize << 20).map(|i| (i as u8) ^ m).collect())
            .collect();
        // The hostile receiver, on its own thread with its own mapping of the rings.
        let fd = region.fd().try_clone().unwrap();
        let expect = payloads.clone();
        let peer = std::thread::spawn(move || {
            let r2 = Region::map(fd, 4096).unwrap();
            // Ring 1 carries the victim's records and, in its header, the share; ring 0
            // carries this side's acknowledgements.
            let rx = r2.ring(1);
            let mut c = vmi_shmem::spsc::Consumer::new(rx.shared());
            let tx = r2.ring(0);
            let mut p = vmi_shmem::spsc::Producer::new(tx.shared());
            let share = rx.share();
            let me = std::process::id() as i32;
            let mut landing = vec![0u8; 1 << 20];
            let mut claimed_by_victim = Vec::new();
            for (era, want) in (1u32..).zip(&expect) {
                let (id, len, ranges) = take_rendezvous(&mut c);
                assert_eq!(len as usize, want.len());
                let dst = if era == 1 {
                    bogus
                } else {
                    landing.as_mut_ptr() as u64
                };
                let mut r = Receiving::open(&share, era, id, dst, len as u64);
                // Leave every chunk to the victim for a while: it claims from the back.
                let t = Instant::now();
                while t.elapsed() < Duration::from_millis(if era == 1 { 5_000 } else { 200 }) {
                    if share.done.load(Acquire) & (1 << 31) != 0 {
                        break;
                    }
                    std::thread::yield_now();
                }
                // Claim the rest; what the victim claimed, it wrote or gave up.
                while r.claim(&share, u64::MAX).unwrap().is_some() {}
                claimed_by_victim.push(r.sender_chunks());
                let t = Instant::now();
                loop {
                    match r.finish(&share).unwrap() {
                        Finish::Waiting => assert!(t.elapsed() < T, "the victim never finished"),
                        done => {
                            if era == 1 {
                                assert!(
                                    matches!(done, Finish::Redo(_)),
                                    "a write to {bogus:#x} cannot succeed: {done:?}"
                                );
                            }
                            break;
                        }
                    }
                }
                // Read the whole fragment from the victim, as a receiver taking over does.
                let mut got = vec![0u8; len as usize];
                assert_eq!(
                    vmi_shmem::io::read_peer(me, &ranges, &mut got).unwrap(),
                    got.len()
                );
                assert!(&got == want, "the fragment read back differs");
                assert_eq!(p.push_all(&[&vmi_shmem::proto::ack(id)]), Ok(true));
            }
            claimed_by_victim
        });
        for (m, data) in payloads.iter().enumerate() {
            vmi_core::Operations::send(
                &mut vmi,
                conn,
                [vmi_core::Buffer::from_vec(data.clone())],
                m as u64,
            )
            .unwrap();
            while victim.sent.len() <= m {
                vmi.poll(&mut victim);
                assert!(victim.ended.is_none(), "{bogus:#x}: {:?}", victim.ended);
                assert!(start.elapsed() < T, "{bogus:#x}: send {m} never completed");
            }
        }
        let claimed = peer.join().unwrap();
        assert_eq!(
            victim.sent,
            vec![vmi_core::Status::Ok; 2],
            "{bogus:#x}: both sends complete"
        );
        assert!(victim.ended.is_none(), "{bogus:#x}: {:?}", victim.ended);
        assert_eq!(
            claimed,
            vec![1, 0],
            "{bogus:#x}: the victim claims one chunk of the bogus share, and after its write \
             failed none of the next one"
        );
        let stats = vmi.attr_get("t", "coop_copies").unwrap();
        assert!(
            stats.contains("wrote 0 chunks"),
            "{bogus:#x}: nothing written: {stats}"
        );
    }
}
