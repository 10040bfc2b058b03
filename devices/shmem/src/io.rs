//! Moving bytes and descriptors: the ring memory (memfd, fallocate, mmap), the rendezvous
//! (abstract Unix sockets, SCM_RIGHTS, SO_PEERCRED), doorbells (eventfd), and single-copy
//! reads of a peer's memory (process_vm_readv). No protocol decisions here.
#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;
use std::sync::atomic::AtomicU64;

use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::spsc::Shared;
use crate::spsc::mem::RawStorage;

/// Bytes of ring header (head, tail, sleeping flag, each on its own cache line).
pub const RING_HEADER: usize = 256;
/// Where a ring's share (`crate::coop`, five words) lies in its header: the fourth cache
/// line, after `head`, `tail` and `sleeping`.
pub const SHARE_OFFSET: usize = 192;

/// Seals a ring memfd must carry before it is mapped: its size can no longer change.
const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);

/// The abstract socket name of `key`'s listener for user `uid` (nothing in the filesystem;
/// it vanishes with the process).
///
/// Keys too long for a socket name (the kernel allows 107 bytes) are replaced by a digest.
pub fn socket_name(uid: u32, key: &str) -> String {
    vmi_device::socketname::socket_name(&format!("vmi-shmem.{uid}."), key)
}

/// The socket address of that name.
pub fn socket_addr(uid: u32, key: &str) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(socket_name(uid, key).as_bytes())
}

/// Binds `key`'s abstract socket for user `uid` (reserving the key on this host for this
/// user), listening when `listen`; a socket bound but not listening refuses connections.
pub fn bind_key(uid: u32, key: &str, listen: bool) -> io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let addr = SocketAddrUnix::new_abstract_name(socket_name(uid, key).as_bytes())?;
    rustix::net::bind(&fd, &addr)?;
    if listen {
        rustix::net::listen(&fd, 128)?;
    }
    Ok(fd)
}

/// Whether a listener with that name exists (abstract sockets are listed in /proc/net/unix).
pub fn listening(uid: u32, key: &str) -> bool {
    let want = format!("@{}", socket_name(uid, key));
    // Columns: Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 (__SO_ACCEPTCON)
    // marks a listening socket (a key reserved by a process that accepts nothing lacks it).
    std::fs::read_to_string("/proc/net/unix").is_ok_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.last() == Some(&want.as_str())
                && f.get(3)
                    .and_then(|x| u32::from_str_radix(x, 16).ok())
                    .is_some_and(|flags| flags & 0x10000 != 0)
        })
    })
}

/// This process's effective user id.
pub fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The user id of the process at the other end of a Unix socket.
pub fn peer_uid(sock: &impl AsFd) -> io::Result<(u32, i32)> {
    let c = rustix::net::sockopt::socket_peercred(sock)?;
    Ok((c.uid.as_raw(), c.pid.as_raw_nonzero().get()))
}

/// A nonblocking eventfd doorbell.
pub fn doorbell() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
    )?)
}

/// Rings a doorbell.
pub fn ring(fd: &OwnedFd) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Clears a doorbell.
pub fn drain(fd: &OwnedFd) {
    let mut b = [0u8; 8];
    let _ = rustix::io::read(fd, &mut b);
}

/// Maps `len` bytes of a memfd shared, read and write; `what` names the memory in the error.
/// The caller has checked the seals (so no one can shrink it under the mapping) and the size.
fn map_shared(fd: &OwnedFd, len: usize, what: &str) -> Result<*mut u8, String> {
    // SAFETY: a fresh shared mapping of a sealed memfd the caller holds, within its size;
    // the caller unmaps it in its Drop.
    let base = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )
    }
    .map_err(|e| format!("mmap of {what} failed: {e}"))?;
    Ok(base.cast())
}

/// A shared mapping holding both rings of a connection.
pub struct Region {
    base: *mut u8,
    len: usize,
    ring_size: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain memory; concurrent access goes through the ring protocol.
unsafe impl Send for Region {}

impl Region {
    /// Bytes of one ring (header + data).
    pub fn ring_bytes(ring_size: usize) -> usize {
        RING_HEADER + ring_size
    }

    /// Creates the memory for two rings: a memfd, sized with fallocate (a full tmpfs is an
    /// error here, not a SIGBUS later), sealed against shrinking and growing (so neither side
    /// can truncate it under the other's mapping: a SIGBUS), mapped shared.
    pub fn create(ring_size: usize) -> Result<Region, String> {
        let len = 2 * Self::ring_bytes(ring_size);
        let fd =
            rustix::fs::memfd_create("vmi-shmem", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
                .map_err(|e| format!("memfd_create failed: {e}"))?;
        rustix::fs::ftruncate(&fd, len as u64)
            .map_err(|e| format!("cannot size the ring memory: {e}"))?;
        rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, len as u64).map_err(|e| {
            format!("cannot reserve {len} bytes of shared memory ({e}); is the memfd tmpfs full? Lower ring_size or free memory")
        })?;
        rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS | SealFlags::SEAL)
            .map_err(|e| format!("cannot seal the ring memory: {e}"))?;
        Self::map(fd, ring_size)
    }

    /// Maps a peer's ring memory, checking that it is a sealed memfd of the expected size
    /// (an unsealed one could be shrunk under the mapping, and reading it would be a SIGBUS).
    pub fn map(fd: OwnedFd, ring_size: usize) -> Result<Region, String> {
        // Checked once here: every view of the ring relies on it (positions are masked).
        if !ring_size.is_power_of_two() {
            return Err(format!("ring size {ring_size} is not a power of two"));
        }
        let len = 2 * Self::ring_bytes(ring_size);
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|e| {
            format!(
                "the ring memory is not a sealable memfd ({e}); the peer is not a vmi shmem device"
            )
        })?;
        if !seals.contains(REQUIRED_SEALS) {
            return Err(
                "the ring memory is not sealed against shrinking and growing; refusing to map it"
                    .into(),
            );
        }
        let st =
            rustix::fs::fstat(&fd).map_err(|e| format!("fstat of the ring memory failed: {e}"))?;
        if st.st_size as u64 != len as u64 {
            return Err(format!(
                "ring memory is {} bytes, expected {len}",
                st.st_size
            ));
        }
        let base = map_shared(&fd, len, "the ring memory")?;
        Ok(Region {
            base,
            len,
            ring_size,
            fd,
        })
    }

    /// Bytes of data per ring.
    pub fn ring_size(&self) -> usize {
        self.ring_size
    }

    /// The memfd, to pass to the peer.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Ring `i` (0: connector to listener, 1: listener to connector).
    pub fn ring(&self, i: usize) -> RingView<'_> {
        // SAFETY: offsets lie inside the mapping; the header words are 8-aligned (page-aligned
        // base, 64-byte offsets); the mapping outlives the view.
        unsafe {
            let base = self.base.add(i * Self::ring_bytes(self.ring_size));
            RingView {
                head: AtomicU64::from_ptr(base as *mut u64),
                tail: AtomicU64::from_ptr(base.add(64) as *mut u64),
                sleeping: AtomicU64::from_ptr(base.add(128) as *mut u64),
                share: &*(base.add(SHARE_OFFSET) as *const [AtomicU64; 5]),
                storage: RawStorage::new(base.add(RING_HEADER), self.ring_size),
            }
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map`.
        let _ = unsafe { rustix::mm::munmap(self.base as *mut _, self.len) };
    }
}

/// One ring inside a region.
pub struct RingView<'a> {
    head: &'a AtomicU64,
    tail: &'a AtomicU64,
    sleeping: &'a AtomicU64,
    /// The shared copy's five words (`crate::coop`), in the header's fourth cache line.
    share: &'a [AtomicU64; 5],
    storage: RawStorage,
}

impl<'a> RingView<'a> {
    /// What the host needs to read or write the ring itself (`vmi_device::lent`): the
    /// producer's and consumer's position words, the bytes and their number.
    pub fn loan(&self) -> (&'a AtomicU64, &'a AtomicU64, *mut u8, usize) {
        (
            self.head,
            self.tail,
            self.storage.base(),
            crate::spsc::Storage::capacity(&self.storage),
        )
    }

    /// The consumer's doorbell flag (the host rings a sleeping peer after writing).
    pub fn sleeping(&self) -> &'a AtomicU64 {
        self.sleeping
    }

    /// The share of a large fragment read from this ring (`crate::coop`): the receiver
    /// (this ring's consumer) opens it, the sender (its producer) helps.
    pub fn share(&self) -> crate::coop::Share<'a, AtomicU64> {
        let [claims, done, dst, shape, id] = self.share;
        crate::coop::Share {
            claims,
            done,
            dst,
            shape,
            id,
        }
    }

    /// The ring's shared parts.
    pub fn shared(&self) -> Shared<'_, AtomicU64, RawStorage> {
        Shared {
            head: self.head,
            tail: self.tail,
            sleeping: self.sleeping,
            storage: &self.storage,
        }
    }
}

/// Sends `bytes` with descriptors on a (blocking) Unix stream socket.
pub fn send_with_fds(sock: &impl AsFd, bytes: &[u8], fds: &[&OwnedFd]) -> io::Result<()> {
    let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(io::Error::other("too many descriptors"));
    }
    let mut sent = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    while sent < bytes.len() {
        sent += rustix::net::send(sock, &bytes[sent..], SendFlags::NOSIGNAL)?;
    }
    Ok(())
}

/// Receives bytes (and any descriptors) without blocking; `Ok((0, _))` is end of stream.
pub fn recv_with_fds(
    sock: &impl AsFd,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )?;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(iter) = m {
            fds.extend(iter);
        }
    }
    Ok(msg.bytes)
}

/// A peer's memfd mapped here for one-sided RDMA (attached through the peer's pidfd).
pub struct Attached {
    /// The memfd's descriptor number in the peer.
    pub fd: i32,
    /// Its inode.
    pub inode: u64,
    base: *mut u8,
    len: usize,
}

// SAFETY: plain shared memory, accessed with raw copies only.
unsafe impl Send for Attached {}

impl Attached {
    /// Takes a duplicate of the peer's descriptor `fd` (`pidfd_getfd`, allowed under the
    /// same ptrace rule as `process_vm_writev`), checks that it is the memfd of inode
    /// `inode` and sealed against shrinking and growing (so no one can truncate it under the
    /// mapping: a SIGBUS), and maps it.
    pub fn attach(pidfd: &OwnedFd, fd: i32, inode: u64) -> Result<Attached, String> {
        let own =
            rustix::process::pidfd_getfd(pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
                .map_err(|e| format!("pidfd_getfd of the peer's descriptor {fd} failed: {e}"))?;
        let st = rustix::fs::fstat(&own).map_err(|e| format!("fstat failed: {e}"))?;
        if st.st_ino != inode {
            return Err(format!(
                "the peer's descriptor {fd} is inode {}, not the published memfd's {inode}",
                st.st_ino
            ));
        }
        let seals = rustix::fs::fcntl_get_seals(&own)
            .map_err(|e| format!("the peer's descriptor {fd} is not a sealable memfd: {e}"))?;
        if !seals.contains(REQUIRED_SEALS) {
            return Err(format!(
                "the peer's memfd {fd} is not sealed against shrinking and growing"
            ));
        }
        let len = usize::try_from(st.st_size).unwrap_or(0);
        if len == 0 {
            return Err(format!("the peer's memfd {fd} is empty"));
        }
        let base = map_shared(&own, len, "the peer's memfd")?;
        Ok(Attached {
            fd,
            inode,
            base,
            len,
        })
    }

    /// Copies the local `segs` one after another into the mapping from `offset` (`write`),
    /// or out of it. False when the range is not inside the memfd.
    pub fn copy(&self, write: bool, offset: u64, segs: &[vmi_device::abi::VmiSeg]) -> bool {
        let total: u64 = segs.iter().map(|s| s.len as u64).sum();
        if offset
            .checked_add(total)
            .is_none_or(|end| end > self.len as u64)
        {
            return false;
        }
        let mut at = offset as usize;
        for s in segs {
            // SAFETY: `at..at + s.len` lies inside the mapping (checked above); the segment is
            // the host's, lent for the call (readable for a write, writable for a read), and
            // cannot overlap the peer's memfd (the host's own memory). No reference into the
            // shared mapping exists: raw copies only.
            unsafe {
                if write {
                    std::ptr::copy_nonoverlapping(s.base, self.base.add(at), s.len);
                } else {
                    std::ptr::copy_nonoverlapping(self.base.add(at), s.base, s.len);
                }
            }
            at += s.len;
        }
        true
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `attach`.
        let _ = unsafe { rustix::mm::munmap(self.base.cast(), self.len) };
    }
}

/// Writes the local `segs` one after another to process `pid`'s memory from `remote` on
/// (`write`), or reads them from there, with process_vm_writev/readv, continuing after
/// short transfers. Fails with the system's error (EFAULT: not mapped there; EPERM: not
/// permitted; ESRCH: no such process).
pub fn access_peer(
    pid: i32,
    write: bool,
    remote: u64,
    segs: &[vmi_device::abi::VmiSeg],
) -> io::Result<()> {
    let total: usize = segs.iter().map(|s| s.len).sum();
    let mut done = 0usize;
    // Skips `done` bytes into the segments each round; one local iovec list per call.
    // The local iovecs from `done` bytes on: on the stack for a few segments (no allocation
    // per op), on the heap for more.
    let iovecs = |done: usize| {
        let mut skip = done;
        segs.iter().filter_map(move |s| {
            if skip >= s.len {
                skip -= s.len;
                return None;
            }
            let v = libc::iovec {
                iov_base: (s.base as usize + skip) as *mut libc::c_void,
                iov_len: s.len - skip,
            };
            skip = 0;
            Some(v)
        })
    };
    let mut few = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 8];
    let mut many: Vec<libc::iovec> = Vec::new();
    while done < total {
        let local: &[libc::iovec] = if segs.len() <= few.len() {
            let mut n = 0;
            for v in iovecs(done) {
                few[n] = v;
                n += 1;
            }
            &few[..n]
        } else {
            many.clear();
            many.extend(iovecs(done));
            &many
        };
        let r = libc::iovec {
            iov_base: (remote + done as u64) as *mut libc::c_void,
            iov_len: total - done,
        };
        let n = local.len().min(1024) as libc::c_ulong;
        // SAFETY: `local` describes the host's segments, lent for the call (readable for a
        // write, writable for a read); `r` is the peer's memory, which the kernel checks
        // (EFAULT on an unmapped range) under ptrace access rules.
        let moved = unsafe {
            if write {
                libc::process_vm_writev(pid, local.as_ptr(), n, &r, 1, 0)
            } else {
                libc::process_vm_readv(pid, local.as_ptr(), n, &r, 1, 0)
            }
        };
        if moved < 0 {
            return Err(io::Error::last_os_error());
        }
        if moved == 0 {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        done += moved as usize;
    }
    Ok(())
}

/// Whether the peer shut its end of the control socket (an abort, or its exit): checked
/// after a single-copy read, because a peer that aborts shuts the socket before it hands
/// the buffers back to its application. A read that finished before this returns false
/// read memory the peer still held: the kernel orders the shutdown (a system call the peer
/// made before it let the buffers go) against this `poll`.
pub fn hung_up(sock: &impl AsFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        sock,
        rustix::event::PollFlags::RDHUP | rustix::event::PollFlags::HUP,
    )];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&now)) {
        Ok(_) => fds[0].revents().intersects(
            rustix::event::PollFlags::RDHUP
                | rustix::event::PollFlags::HUP
                | rustix::event::PollFlags::ERR,
        ),
        // Cannot tell: take it as gone (the fragment is dropped, never delivered wrong).
        Err(_) => true,
    }
}

/// Where to put a single-copy read of `len` bytes from the peer's `ranges` in a buffer at
/// address `base` with room for `cap` bytes: the largest range at its address in the peer
/// modulo 64, where the buffer has room (`vmi_device::copy::aligned_lead`, which says why).
/// A message-passing message puts a 24-byte header before its payload, which without this
/// landed 24 bytes past the sender's buffer (a 1 MiB request round trip cost three times a
/// stream ping-pong's).
pub fn read_offset(ranges: &[(u64, usize)], base: usize, len: usize, cap: usize) -> usize {
    let mut before = 0usize;
    let mut largest = None;
    for &(addr, l) in ranges {
        if largest.is_none_or(|(_, _, ll)| l > ll) {
            largest = Some((addr, before, l));
        }
        before = before.saturating_add(l);
    }
    let Some((addr, before, _)) = largest else {
        return 0;
    };
    // The peer's addresses are its own business: any value only moves the offset.
    let like = (addr as usize).wrapping_sub(before);
    vmi_device::copy::aligned_lead(base, like, len, cap)
}

/// Reads `remote` ranges of process `pid` into `local` with one copy (process_vm_readv).
pub fn read_peer(pid: i32, remote: &[(u64, usize)], local: &mut [u8]) -> io::Result<usize> {
    let liov = libc::iovec {
        iov_base: local.as_mut_ptr() as *mut libc::c_void,
        iov_len: local.len(),
    };
    let riov: Vec<libc::iovec> = remote
        .iter()
        .map(|&(a, l)| libc::iovec {
            iov_base: a as *mut libc::c_void,
            iov_len: l,
        })
        .collect();
    let mut done = 0usize;
    let mut r = 0usize;
    let mut roff = 0usize;
    // process_vm_readv may stop short (at most IOV_MAX entries, partial pages): continue.
    while done < local.len() && r < riov.len() {
        let mut rest: Vec<libc::iovec> = riov[r..].to_vec();
        rest[0].iov_base = (rest[0].iov_base as usize + roff) as *mut libc::c_void;
        rest[0].iov_len -= roff;
        let l = libc::iovec {
            iov_base: (liov.iov_base as usize + done) as *mut libc::c_void,
            iov_len: local.len() - done,
        };
        // SAFETY: `l` covers our own writable buffer; `rest` describes the peer's memory, which
        // the kernel checks (EFAULT on a bad range) under ptrace access rules.
        let n = unsafe {
            libc::process_vm_readv(pid, &l, 1, rest.as_ptr(), rest.len() as libc::c_ulong, 0)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        let mut n = n as usize;
        done += n;
        while n > 0 && r < riov.len() {
            let left = riov[r].iov_len - roff;
            if n >= left {
                n -= left;
                r += 1;
                roff = 0;
            } else {
                roff += n;
                n = 0;
            }
        }
    }
    Ok(done)
}

/// The part `from..to` (bytes of the fragment, in order) of a fragment lying in `ranges`.
pub fn sub_ranges(ranges: &[(u64, usize)], from: usize, to: usize) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for &(addr, len) in ranges {
        let (start, end) = (at.max(from), (at + len).min(to));
        if start < end {
            out.push((addr.wrapping_add((start - at) as u64), end - start));
        }
        at += len;
        if at >= to {
            break;
        }
    }
    out
}

/// As [`sub_ranges`], as segments of this process's memory: the sender's part of a shared
/// copy (`crate::coop`), which [`access_peer`] writes into the receiver.
pub fn sub_segs(ranges: &[(u64, usize)], from: usize, to: usize) -> Vec<vmi_device::abi::VmiSeg> {
    sub_ranges(ranges, from, to)
        .into_iter()
        .map(|(a, len)| vmi_device::abi::VmiSeg {
            base: a as *mut u8,
            len,
        })
        .collect()
}

/// Reads bytes `from..to` of the fragment in the peer's `ranges` into `local` (their length).
pub fn read_peer_part(
    pid: i32,
    ranges: &[(u64, usize)],
    from: usize,
    to: usize,
    local: &mut [u8],
) -> io::Result<usize> {
    read_peer(pid, &sub_ranges(ranges, from, to), local)
}

/// Raw fd, for mio registration.
pub fn raw(fd: &OwnedFd) -> i32 {
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spsc::{Consumer, Producer};

    #[test]
    fn sub_ranges_cut_a_fragment_s_ranges_at_any_bytes() {
        let ranges = [(1000u64, 10usize), (5000, 5), (9000, 20)];
        assert_eq!(sub_ranges(&ranges, 0, 35), ranges.to_vec());
        assert_eq!(sub_ranges(&ranges, 3, 12), vec![(1003, 7), (5000, 2)]);
        assert_eq!(sub_ranges(&ranges, 10, 15), vec![(5000, 5)]);
        assert_eq!(sub_ranges(&ranges, 14, 16), vec![(5004, 1), (9000, 1)]);
        assert_eq!(sub_ranges(&ranges, 34, 35), vec![(9019, 1)]);
        assert!(sub_ranges(&ranges, 7, 7).is_empty());
        // Every cut of every part adds up to the part.
        for from in 0..35 {
            for to in from..=35 {
                let got: usize = sub_ranges(&ranges, from, to).iter().map(|r| r.1).sum();
                assert_eq!(got, to - from, "{from}..{to}");
            }
        }
    }

    /// A shared copy's two halves, through this process's own memory: the sender's part
    /// written by process_vm_writev, the receiver's read by process_vm_readv, from a fragment
    /// in three pieces.
    #[test]
    fn parts_written_and_read_by_the_kernel_make_the_fragment() {
        let a: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let b: Vec<u8> = (0..7u32).map(|i| 200 + i as u8).collect();
        let c: Vec<u8> = (0..50_001u32).map(|i| (i * 7) as u8).collect();
        let ranges = [
            (a.as_ptr() as u64, a.len()),
            (b.as_ptr() as u64, b.len()),
            (c.as_ptr() as u64, c.len()),
        ];
        let whole: Vec<u8> = [&a[..], &b[..], &c[..]].concat();
        let len = whole.len();
        let me = std::process::id() as i32;
        for cut in [0, 1, 99_999, 100_003, 100_007, len - 1, len] {
            let mut dst = vec![0u8; len];
            let got = read_peer_part(me, &ranges, 0, cut, &mut dst[..cut]).unwrap();
            assert_eq!(got, cut);
            if cut < len {
                let to = dst[cut..].as_mut_ptr() as u64;
                access_peer(me, true, to, &sub_segs(&ranges, cut, len)).unwrap();
            }
            assert!(dst == whole, "cut at {cut}");
        }
        // A destination the peer does not have: an error, nothing written anywhere else.
        assert!(access_peer(me, true, 8, &sub_segs(&ranges, 0, 10)).is_err());
    }

    #[test]
    fn a_single_copy_read_lands_as_the_sender_s_largest_range_is_aligned() {
        // A 24-byte header, then the payload at 0x...020: the payload's destination
        // (base + offset + 24) must be 0x20 modulo 64.
        let ranges = [(0x5000_0a90u64, 24usize), (0x7000_0020, 1 << 20)];
        let base = 0x9000_0010usize;
        let at = read_offset(&ranges, base, (1 << 20) + 24, 2 << 20);
        assert!(at < 64);
        assert_eq!((base + at + 24) % 64, 0x20);
        // No room in the buffer for an offset: 0.
        assert_eq!(
            read_offset(&ranges, base, (1 << 20) + 24, (1 << 20) + 24),
            0
        );
        // No ranges, and hostile addresses near the top: no panic, an offset below 64.
        assert_eq!(read_offset(&[], base, 0, 64), 0);
        let wild = [(u64::MAX, usize::MAX), (3, 5)];
        assert!(read_offset(&wild, usize::MAX, 8, usize::MAX) < 64);
    }

    /// A memfd of `len` bytes, sealed as vmi's regions are (or not).
    fn memfd(len: u64, sealed: bool) -> OwnedFd {
        let fd =
            rustix::fs::memfd_create("t", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        if sealed {
            rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS).unwrap();
        }
        fd
    }

    #[test]
    fn access_peer_writes_and_reads_any_number_of_segments() {
        let pid = rustix::process::getpid().as_raw_nonzero().get();
        let mut target = vec![0u8; 64];
        let addr = target.as_mut_ptr() as u64;
        let mut sources: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i + 1; 3]).collect();
        let segs: Vec<vmi_device::abi::VmiSeg> = sources
            .iter_mut()
            .map(|b| vmi_device::abi::VmiSeg {
                base: b.as_mut_ptr(),
                len: b.len(),
            })
            .collect();
        // Ten segments (more than the stack holds), into our own memory at offset 2.
        if let Err(e) = access_peer(pid, true, addr + 2, &segs) {
            println!("SKIPPED: process_vm_writev not permitted here: {e}");
            return;
        }
        let want: Vec<u8> = (0..10u8).flat_map(|i| [i + 1; 3]).collect();
        assert_eq!(&target[2..32], &want[..]);
        // Back out through two segments.
        let (mut a, mut b) = (vec![0u8; 7], vec![0u8; 23]);
        let segs = [
            vmi_device::abi::VmiSeg {
                base: a.as_mut_ptr(),
                len: 7,
            },
            vmi_device::abi::VmiSeg {
                base: b.as_mut_ptr(),
                len: 23,
            },
        ];
        access_peer(pid, false, addr + 2, &segs).unwrap();
        assert_eq!([a, b].concat(), want);
        // An address that is not mapped: EFAULT.
        let e = access_peer(pid, true, 8, &segs).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EFAULT));
    }

    #[test]
    fn attaching_checks_the_inode_and_the_seals_and_copies_within_bounds() {
        // This process plays the peer: its own pidfd, its own descriptors.
        let me = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        )
        .unwrap();
        let good = memfd(8192, true);
        let ino = rustix::fs::fstat(&good).unwrap().st_ino;
        let n = good.as_raw_fd();
        let a = match Attached::attach(&me, n, ino) {
            Ok(a) => a,
            Err(e) => {
                // pidfd_getfd needs Linux 5.6 and ptrace rights over oneself (always held).
                println!("SKIPPED: cannot attach here: {e}");
                return;
            }
        };
        let mut src = *b"hello";
        let seg = [vmi_device::abi::VmiSeg {
            base: src.as_mut_ptr(),
            len: 5,
        }];
        assert!(a.copy(true, 8187, &seg), "the last 5 bytes");
        assert!(!a.copy(true, 8188, &seg), "one past the end");
        assert!(
            !a.copy(true, u64::MAX - 1, &seg),
            "an offset that overflows"
        );
        let mut back = [0u8; 5];
        let dst = [vmi_device::abi::VmiSeg {
            base: back.as_mut_ptr(),
            len: 5,
        }];
        assert!(a.copy(false, 8187, &dst));
        assert_eq!(&back, b"hello");
        // Another file under that descriptor number: refused by inode.
        let e = Attached::attach(&me, n, ino + 1).err().unwrap();
        assert!(e.contains("not the published memfd"), "{e}");
        // A memfd that could be shrunk under the mapping: refused.
        let loose = memfd(4096, false);
        let lino = rustix::fs::fstat(&loose).unwrap().st_ino;
        let e = Attached::attach(&me, loose.as_raw_fd(), lino)
            .err()
            .unwrap();
        assert!(e.contains("not sealed"), "{e}");
        // A descriptor that is not open: refused.
        assert!(Attached::attach(&me, 1_000_000, ino).is_err());
    }

    #[test]
    fn a_region_carries_bytes_between_two_mappings() {
        let a = Region::create(4096).unwrap();
        let dup = a.fd().try_clone().unwrap();
        let b = Region::map(dup, 4096).unwrap();
        let (ra, rb) = (a.ring(0), b.ring(0));
        let mut p = Producer::new(ra.shared());
        let mut c = Consumer::new(rb.shared());
        assert_eq!(p.push_all(&[b"hello ", b"ring"]), Ok(true));
        let mut out = [0u8; 16];
        let n = c.pop(&mut out).unwrap();
        assert_eq!(&out[..n], b"hello ring");
        assert!(
            Region::map(a.fd().try_clone().unwrap(), 8192).is_err(),
            "size is checked"
        );
    }

    #[test]
    fn ring_memory_is_sealed_and_unsealed_memory_is_refused() {
        let a = Region::create(4096).unwrap();
        let len = 2 * Region::ring_bytes(4096) as u64;
        assert!(
            rustix::fs::ftruncate(a.fd(), len / 2).is_err(),
            "a peer cannot shrink the ring memory under the other's mapping"
        );
        assert!(
            rustix::fs::ftruncate(a.fd(), len * 2).is_err(),
            "nor grow it"
        );
        // A memfd of the right size that its sender could still shrink: refused.
        let fd =
            rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        let err = Region::map(fd, 4096).err().expect("refused");
        assert!(err.contains("not sealed"), "{err}");
        let fd = rustix::fs::memfd_create("y", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        let err = Region::map(fd, 4096).err().expect("refused");
        assert!(
            err.contains("not a sealable memfd") || err.contains("not sealed"),
            "{err}"
        );
    }

    #[test]
    fn descriptors_travel_over_a_socket_pair() {
        let (x, y) = std::os::unix::net::UnixStream::pair().unwrap();
        let bell = doorbell().unwrap();
        send_with_fds(&x, b"hi", &[&bell]).unwrap();
        let mut buf = [0u8; 8];
        let mut fds = Vec::new();
        let n = recv_with_fds(&y, &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(fds.len(), 1);
        ring(&fds[0]);
        let mut v = [0u8; 8];
        assert_eq!(
            rustix::io::read(&bell, &mut v).unwrap(),
            8,
            "the received fd is the same eventfd"
        );
        let (uid_seen, _) = peer_uid(&y).unwrap();
        assert_eq!(uid_seen, uid());
    }

    #[test]
    fn single_copy_reads_own_memory() {
        let src: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut dst = vec![0u8; 100_000];
        let remote = [
            (src.as_ptr() as u64, 60_000),
            (src.as_ptr() as u64 + 60_000, 40_000),
        ];
        match read_peer(std::process::id() as i32, &remote, &mut dst) {
            Ok(n) => {
                assert_eq!(n, 100_000);
                assert_eq!(dst, src);
            }
            Err(e) => println!("SKIPPED: process_vm_readv not permitted here: {e}"),
        }
    }
}
