//! An accepted connection whose answer never reaches the peer (the peer gave up first, as a
//! connector on a loaded machine does at its timeout and then tries again) is reported to
//! the application as ended: it must not count it as open (`vmi-alltoall` once refused the
//! peer's next try as "connected already"). Over TCP the engine hears of it from the answer
//! or from the peer's reset, whichever comes first; over shared memory only the answer's
//! failure says so (the 64-process run under load in the README is what caught it there),
//! and the second test fails without the fix.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vmi_core::prelude::*;
use vmi_core::spec::Spec;
use vmi_core::{Disconnect, Vmi};
use vmi_tcp::wire::HelloRepr;
use vmi_tests::{register_all, tcp_on_free_port, unique_key};

struct Server<S> {
    /// The peer's socket, closed from inside the accept handler (before the answer goes).
    peer: Option<S>,
    close: fn(S),
    accepted: Vec<ConnId>,
    disconnected: Vec<(ConnId, Disconnect)>,
}

/// Closes with a reset (SO_LINGER 0), as a process that gives up does when it is killed or
/// its socket is dropped with unread data.
fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(s);
}

impl<S> Handler for Server<S> {
    fn accept(&mut self, _ctx: &mut Ctx<'_>, req: &mut ConnectRequest<'_>) -> Decision {
        self.accepted.push(req.conn);
        if let Some(s) = self.peer.take() {
            (self.close)(s);
            std::thread::sleep(Duration::from_millis(50));
        }
        Decision::Accept(Vec::new())
    }
    fn disconnected(&mut self, _ctx: &mut Ctx<'_>, conn: ConnId, reason: Disconnect) {
        self.disconnected.push((conn, reason));
    }
}

#[test]
fn an_accepted_connection_whose_answer_is_lost_is_reported_ended() {
    let key = unique_key("answer-lost");
    let (mut vmi, port) = tcp_on_free_port(&key);
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(&HelloRepr::emit(
        "gives-up",
        &key,
        "send=;recv=",
        b"vmi-alltoall rank 0",
    ))
    .expect("hello");
    let h = Server {
        peer: Some(s),
        close: reset,
        accepted: Vec::new(),
        disconnected: Vec::new(),
    };
    ended(&mut vmi, h);
}

/// Polls until the application hears that the connection it accepted ended.
fn ended<S>(vmi: &mut Vmi, mut h: Server<S>) {
    let start = Instant::now();
    while h.disconnected.is_empty() {
        vmi.poll(&mut h);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the application never heard that the connection it accepted ended (accepted: {:?})",
            h.accepted
        );
    }
    assert_eq!(h.accepted.len(), 1);
    assert_eq!(h.disconnected[0].0, h.accepted[0]);
    assert!(
        matches!(h.disconnected[0].1, Disconnect::Error { .. }),
        "{:?}",
        h.disconnected
    );
    assert_eq!(vmi.connection_count(), 0);
}

#[test]
fn over_shared_memory_too() {
    use vmi_shmem::io::{Region, send_with_fds, socket_addr};
    use vmi_shmem::wire::Hello;
    register_all();
    let text = r#"<vmi><device name="shmem"/>
  <chain name="send"><use device="shmem"/></chain><chain name="receive"><use device="shmem"/></chain></vmi>"#;
    let key = unique_key("answer-lost-shm");
    let mut vmi =
        Vmi::with_spec(Spec::parse_str(text, "s.xml").expect("spec"), &key).expect("start");
    let addr = socket_addr(rustix::process::geteuid().as_raw(), &key).expect("name");
    let sock = std::os::unix::net::UnixStream::connect_addr(&addr).expect("listens");
    let region = Region::create(4096).expect("ring memory");
    let bell = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd");
    let hello = Hello::emit("gives-up", &key, "send=;recv=", b"hi", 4096, &[0u8; 16]);
    send_with_fds(&sock, &hello, &[region.fd(), &bell]).expect("hello");
    let h = Server {
        peer: Some((sock, region)),
        close: drop,
        accepted: Vec::new(),
        disconnected: Vec::new(),
    };
    ended(&mut vmi, h);
}
