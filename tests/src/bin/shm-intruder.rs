//! Test helper: connects to a vmi shared-memory listener's abstract socket (as whatever user
//! runs it) and sends a hello; prints whether the listener closed the connection. The shmem
//! tests run it as another uid to check that such connections are refused.
#![allow(missing_docs)]

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Duration;

fn main() {
    let name = std::env::args()
        .nth(1)
        .expect("usage: shm-intruder ABSTRACT_NAME");
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
