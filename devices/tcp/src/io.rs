//! Moving bytes: socket set-up with socket2 and gathered writes. No protocol decisions here.

use std::io::{self, IoSlice, Write};
use std::net::{IpAddr, SocketAddr};
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

/// Longest congestion control name the kernel takes (`TCP_CA_NAME_MAX` less its NUL).
const CONGESTION_NAME_MAX: usize = 15;

/// Whether this process may set congestion control `name` on its sockets: tried on a
/// throwaway socket, as a connection would.
pub fn check_congestion(name: &str) -> io::Result<()> {
    if name.is_empty()
        || name.len() > CONGESTION_NAME_MAX
        || !name.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a congestion control name",
        ));
    }
    // An IPv4 socket, or on a host without IPv4 an IPv6 one.
    let s = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP))
        .or_else(|_| Socket::new(Domain::IPV6, Type::STREAM.cloexec(), Some(Protocol::TCP)))?;
    s.set_tcp_congestion(name.as_bytes())
}

/// Whether `local` and `peer`, a connection's two ends, are on this host: the peer is a
/// loopback address, or the connection's own address (traffic to it goes through loopback
/// too). IPv4-mapped IPv6 addresses count as their IPv4 ones.
pub fn same_host(local: IpAddr, peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    peer.is_loopback() || peer == local.to_canonical()
}

/// Sets the congestion control of `sock` to `name` when its two ends are on this host
/// ([`same_host`]); `Ok(false)` when they are not (or the socket has no ends yet).
pub fn tune_local<S: AsFd>(sock: &S, name: &str) -> io::Result<bool> {
    let s = socket2::SockRef::from(sock);
    let (Ok(local), Ok(peer)) = (s.local_addr(), s.peer_addr()) else {
        return Ok(false);
    };
    let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) else {
        return Ok(false);
    };
    if !same_host(local.ip(), peer.ip()) {
        return Ok(false);
    }
    s.set_tcp_congestion(name.as_bytes())?;
    Ok(true)
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

    #[test]
    fn same_host_is_a_loopback_peer_or_one_at_the_socket_s_own_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_host(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(same_host(ip("127.0.0.1"), ip("127.0.0.2")), "any of 127/8");
        assert!(same_host(ip("::1"), ip("::1")));
        assert!(same_host(ip("::ffff:127.0.0.1"), ip("::ffff:127.0.0.1")));
        assert!(
            same_host(ip("10.0.0.5"), ip("10.0.0.5")),
            "this host's own address"
        );
        assert!(same_host(ip("10.0.0.5"), ip("::ffff:10.0.0.5")), "mapped");
        assert!(!same_host(ip("10.0.0.5"), ip("10.0.0.6")), "another host");
        assert!(!same_host(ip("127.0.0.1"), ip("10.0.0.6")));
        assert!(!same_host(ip("fe80::1"), ip("fe80::2")));
    }

    #[test]
    fn a_congestion_control_the_kernel_does_not_have_is_refused() {
        // Reno is built in and every process may set it.
        check_congestion("reno").unwrap();
        for bad in ["no-such-cc", "", "a b", "sixteen-chars-xx"] {
            assert!(check_congestion(bad).is_err(), "{bad:?}");
        }
    }
}
