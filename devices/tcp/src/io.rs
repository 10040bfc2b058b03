//! Moving bytes: socket set-up with socket2 and gathered writes. No protocol decisions here.

use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;

use rustix::net::{SendAncillaryBuffer, SendFlags};

use socket2::{Domain, Protocol, Socket, Type};

/// A non-blocking listener bound to `addr`, or the bind error.
pub fn listen(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(mio::net::TcpListener::from_std(s.into()))
}

/// Starts a non-blocking connect; completion shows as writability.
pub fn connect(addr: SocketAddr, nodelay: bool) -> io::Result<mio::net::TcpStream> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(nodelay)?;
    match s.connect(&addr.into()) {
        Ok(()) => {}
        Err(e)
            if e.raw_os_error() == Some(libc_einprogress())
                || e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(s.into()))
}

const fn libc_einprogress() -> i32 {
    115 // EINPROGRESS on Linux
}

/// A socket's writes, as [`Write`], sent with `MSG_NOSIGNAL`: when the peer has closed its
/// end, a write fails with `EPIPE` instead of raising `SIGPIPE`, whose default action ends the
/// process. Rust programs ignore `SIGPIPE` from the start, but a C program using vmi through
/// its C API does not, and a peer going away must never kill it. (`writev`, which
/// `TcpStream::write_vectored` makes, has no such flag.) The calls go straight to the kernel,
/// with no C library wrapper in between.
pub struct Sending<'a, S: AsFd>(pub &'a S);

impl<S: AsFd> Write for Sending<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(rustix::net::send(self.0, buf, SendFlags::NOSIGNAL)?)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut control = SendAncillaryBuffer::default();
        Ok(rustix::net::sendmsg(
            self.0,
            bufs,
            &mut control,
            SendFlags::NOSIGNAL,
        )?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `header` then `segs` with one `writev`, skipping the first `off` bytes already
/// written. Returns the bytes written by this call.
#[inline]
pub fn write_gather<W: Write>(
    w: &mut W,
    header: &[u8],
    segs: &[&[u8]],
    off: usize,
) -> io::Result<usize> {
    match segs {
        // The common small send: two slices to set up, not eighteen.
        [] => gather::<W, 1>(w, [header].into_iter(), off),
        [data] => gather::<W, 2>(w, [header, data].into_iter(), off),
        _ => gather::<W, 18>(w, std::iter::once(header).chain(segs.iter().copied()), off),
    }
}

/// [`write_gather`] over at most `N` parts (the rest is left for the next call).
#[inline]
fn gather<'a, W: Write, const N: usize>(
    w: &mut W,
    parts: impl Iterator<Item = &'a [u8]>,
    off: usize,
) -> io::Result<usize> {
    let mut slices: [IoSlice<'_>; N] = [IoSlice::new(&[]); N];
    let mut n = 0;
    let mut skip = off;
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        if n == N {
            break;
        }
        slices[n] = IoSlice::new(&part[skip..]);
        skip = 0;
        n += 1;
    }
    if n == 0 {
        return Ok(0);
    }
    w.write_vectored(&slices[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child process of `a_closed_peer_fails_a_write_without_a_signal`.
    const SIGPIPE_CHILD: &str = "VMI_TCP_TEST_SIGPIPE_CHILD";

    #[test]
    #[allow(unsafe_code)]
    fn a_closed_peer_fails_a_write_without_a_signal() {
        if std::env::var_os(SIGPIPE_CHILD).is_some() {
            // As in a C program: SIGPIPE's default action (Rust's runtime ignores it).
            // SAFETY: a plain disposition change in this single-purpose child process.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let sock = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            drop(listener.accept().unwrap());
            let mut w = Sending(&sock);
            // The first writes may still be taken; the peer's reset then fails them.
            for _ in 0..500 {
                let r = w.write_vectored(&[IoSlice::new(b"head"), IoSlice::new(b"data")]);
                if let Err(e) = r {
                    assert!(
                        matches!(e.raw_os_error(), Some(32) | Some(104)),
                        "EPIPE or ECONNRESET, got {e}"
                    );
                    assert!(w.write(b"again").is_err());
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            panic!("writes to a closed peer kept succeeding");
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "io::tests::a_closed_peer_fails_a_write_without_a_signal",
                "--nocapture",
            ])
            .env(SIGPIPE_CHILD, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the child must end normally, not by SIGPIPE: {:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A writer that takes at most `limit` bytes per call.
    struct Trickle {
        out: Vec<u8>,
        limit: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.limit);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut left = self.limit;
            let mut done = 0;
            for b in bufs {
                let n = b.len().min(left);
                self.out.extend_from_slice(&b[..n]);
                done += n;
                left -= n;
                if left == 0 {
                    break;
                }
            }
            Ok(done)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let header = [1u8, 2, 3];
        let many: Vec<Vec<u8>> = (0..20u8)
            .map(|i| vec![b'a' + i; 1 + i as usize % 3])
            .collect();
        let many: Vec<&[u8]> = many.iter().map(|v| v.as_slice()).collect();
        // No data, one piece (the two-slice path), several, and more than one writev takes.
        let cases: [&[&[u8]]; 4] = [&[], &[b"abcdefgh"], &[b"abc", b"", b"defgh"], &many];
        for segs in cases {
            let mut want = header.to_vec();
            for s in segs {
                want.extend_from_slice(s);
            }
            for limit in 1..12 {
                let mut w = Trickle {
                    out: Vec::new(),
                    limit,
                };
                let mut off = 0;
                loop {
                    let n = write_gather(&mut w, &header, segs, off).unwrap();
                    if n == 0 {
                        break;
                    }
                    off += n;
                }
                assert_eq!(w.out, want, "{} pieces, limit {limit}", segs.len());
            }
        }
    }
}
