//! A `Vmi` moves between threads (issue "Beyond streams": several independent instances in
//! one process, each movable to its own thread, reaching any peer): instances built on one
//! thread run a ring of streams on threads of their own, with slabs grabbed there, and come
//! back to the first thread to close, over every transport and through a filter.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vmi_core::GrabbedSlab;
use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_tests::{register_all, spec_text, unique_key};

/// Instances in the ring.
const RING: usize = 3;
/// Messages each instance sends to the next.
const MESSAGES: u64 = 3_000;

#[derive(Default)]
struct Node {
    me: u64,
    out: Option<ConnId>,
    /// The next sequence number expected from the previous instance.
    next: u64,
    /// Problems seen in callbacks (checked by the test thread).
    errors: Vec<String>,
    /// A slab grabbed on the ring thread and released on the test thread.
    kept: Option<GrabbedSlab>,
    disconnects: usize,
}

impl Handler for Node {
    fn connected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, o: ConnectOutcome<'_>, _t: u64) {
        match o {
            ConnectOutcome::Accepted(_) => self.out = Some(conn),
            ConnectOutcome::Rejected(_) => self.errors.push("connect rejected".into()),
            ConnectOutcome::Failed { status, detail } => self
                .errors
                .push(format!("connect failed: {status:?}: {detail}")),
        }
    }

    fn receive(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _cmd: Recv, slab: &mut Slab<'_>) {
        let bytes = slab.read_to_vec();
        if bytes.len() != 16 {
            self.errors
                .push(format!("a message of {} bytes", bytes.len()));
            return;
        }
        let from = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let seq = u64::from_le_bytes(bytes[8..].try_into().unwrap());
        let expect_from = (self.me + RING as u64 - 1) % RING as u64;
        if from != expect_from || seq != self.next {
            self.errors.push(format!(
                "got ({from}, {seq}), expected ({expect_from}, {})",
                self.next
            ));
        }
        self.next = seq + 1;
        if self.kept.is_none() {
            self.kept = slab.grab();
        }
    }

    fn send_complete(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, c: &mut SendCompletion<'_>) {
        if c.status != Status::Ok {
            self.errors.push(format!("a send failed: {:?}", c.status));
        }
    }

    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnId, _reason: Disconnect) {
        self.disconnects += 1;
    }
}

/// Runs one instance on its own thread until every instance of the ring has sent and
/// received everything, then hands it back.
fn run(mut vmi: Vmi, mut node: Node, done: Arc<AtomicUsize>, label: String) -> (Vmi, Node) {
    let start = Instant::now();
    let mut sent = 0u64;
    let mut counted = false;
    while done.load(Ordering::Acquire) < RING {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{label}: instance {} stuck: sent {sent}, received {}",
            node.me,
            node.next
        );
        vmi.poll(&mut node);
        if let Some(conn) = node.out {
            while sent < MESSAGES {
                let mut msg = [0u8; 16];
                msg[..8].copy_from_slice(&node.me.to_le_bytes());
                msg[8..].copy_from_slice(&sent.to_le_bytes());
                match vmi.send_inline(conn, &msg) {
                    Ok(()) => sent += 1,
                    Err(VmiError::Busy { .. }) => break,
                    Err(e) => panic!("{label}: send: {e}"),
                }
            }
        }
        if !counted && sent == MESSAGES && node.next == MESSAGES {
            counted = true;
            done.fetch_add(1, Ordering::AcqRel);
        }
    }
    (vmi, node)
}

fn ring(transport: &str, filters: &[&str]) {
    register_all();
    let label = format!("{transport} {filters:?}");
    let spec = Spec::parse_str(&spec_text(transport, filters, ""), "threads.xml").expect("spec");
    let keys: Vec<String> = (0..RING).map(|i| unique_key(&format!("ring{i}"))).collect();
    // Built here, on the test thread.
    let mut nodes: Vec<(Vmi, Node)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let vmi = Vmi::with_spec(spec.clone(), k).expect("init");
            let node = Node {
                me: i as u64,
                ..Node::default()
            };
            (vmi, node)
        })
        .collect();
    for (i, (vmi, _)) in nodes.iter_mut().enumerate() {
        vmi.connect("localhost", &keys[(i + 1) % RING], b"", 0)
            .expect("connect");
    }
    // Each moves to a thread of its own and runs there.
    let done = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = nodes
        .into_iter()
        .map(|(vmi, node)| {
            let (done, label) = (done.clone(), label.clone());
            std::thread::spawn(move || run(vmi, node, done, label))
        })
        .collect();
    // And back here, where the test closes the ring.
    let mut nodes: Vec<(Vmi, Node)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (vmi, node) in &mut nodes {
        assert!(node.errors.is_empty(), "{label}: {:?}", node.errors);
        assert_eq!(node.next, MESSAGES, "{label}");
        let kept = node.kept.take().expect("a slab was grabbed");
        assert_eq!(
            kept.len(),
            16,
            "{label}: the grabbed slab is still readable"
        );
        drop(kept);
        vmi.disconnect(node.out.unwrap()).expect("disconnect");
    }
    let start = Instant::now();
    while nodes.iter().any(|(_, n)| n.disconnects < 2) {
        for (vmi, node) in &mut nodes {
            vmi.poll(node);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{label}: the ring did not close"
        );
    }
}

#[test]
fn instances_built_on_one_thread_run_on_others_and_come_back_over_shared_memory() {
    ring("shmem", &[]);
}

#[test]
fn instances_built_on_one_thread_run_on_others_and_come_back_over_tcp() {
    ring("tcp", &[]);
}

#[test]
fn instances_built_on_one_thread_run_on_others_and_come_back_over_loopback() {
    ring("loopback", &[]);
}

#[test]
fn instances_built_on_one_thread_run_on_others_and_come_back_through_a_filter() {
    ring("tcp", &["crc"]);
}
