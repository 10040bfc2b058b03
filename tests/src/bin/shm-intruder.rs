//! Test helper: a process of another user attacking vmi's shared-memory rendezvous. The
//! shmem tests run it as uid 65534 to check that vmi never trusts another user's process.
//!
//! - `shm-intruder NAME` or `shm-intruder connect NAME`: connects to a listener's abstract
//!   socket and sends a fake hello; prints whether the listener closed the connection.
//! - `shm-intruder squat NAME SECONDS`: binds the abstract name first (as if it were the
//!   victim's key) and reports every byte and descriptor a connector hands it.
#![allow(missing_docs)]

use std::io::{IoSliceMut, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["squat", name, secs] => squat(name, secs.parse().unwrap_or(10)),
        ["connect", name] | [name] => connect(name),
        _ => {
            eprintln!("usage: shm-intruder [connect] NAME | shm-intruder squat NAME SECONDS");
            std::process::exit(2);
        }
    }
}

fn connect(name: &str) {
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let mut s = match UnixStream::connect_addr(&addr) {
        Ok(s) => s,
        Err(e) => {
            println!("intruder: connect failed: {e}");
            return;
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(b"VMIS\x01\x00 pretending to be a vmi peer");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => println!("intruder: closed by the listener"),
        Ok(n) => println!("intruder: got {n} bytes"),
        Err(e) => println!("intruder: read failed: {e}"),
    }
}

fn squat(name: &str, secs: u64) {
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let l = match UnixListener::bind_addr(&addr) {
        Ok(l) => l,
        Err(e) => {
            println!("squatter: bind failed: {e}");
            return;
        }
    };
    l.set_nonblocking(true).expect("nonblocking");
    println!("squatter: listening");
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        match l.accept() {
            Ok((s, _)) => {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let (mut bytes, mut fds) = (0usize, 0usize);
                loop {
                    let mut buf = [0u8; 4096];
                    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); 256];
                    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
                    match rustix::net::recvmsg(
                        &s,
                        &mut [IoSliceMut::new(&mut buf)],
                        &mut control,
                        rustix::net::RecvFlags::empty(),
                    ) {
                        Ok(m) if m.bytes > 0 => {
                            bytes += m.bytes;
                            for msg in control.drain() {
                                if let rustix::net::RecvAncillaryMessage::ScmRights(it) = msg {
                                    fds += it.count();
                                }
                            }
                        }
                        _ => break,
                    }
                }
                println!("squatter: got {bytes} bytes and {fds} descriptors");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
