//! A software RDMA NIC inside one process: the verbs device's stand-in where there is no
//! hardware (this project's CI), so every line of the device above the NIC runs in tests.
//!
//! It behaves as a reliable-connected queue pair does, as far as the device can tell:
//! - a SEND consumes the peer's oldest posted receive buffer, in order, and completes on
//!   both sides; with no buffer posted it fails with "RNR retry counter exceeded" (the credit
//!   protocol must prevent that), and a buffer too small fails the receive;
//! - an RDMA READ copies from the peer's registered memory after checking the remote key, that
//!   the key allows remote reads and that the range lies inside the registration;
//! - every local buffer named by a work request must lie inside a registration of this NIC
//!   with that local key;
//! - a queue pair whose peer is gone fails its sends ("transport retry counter exceeded");
//! - the completion descriptor (a socket pair) becomes readable when a completion arrives
//!   after [`Nic::rearm`], as a completion channel does.
//!
//! All NICs of the process share one fabric behind a mutex. Queue pairs connect only within
//! the process: the GID carries a per-process tag and a foreign one is refused.
#![allow(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::nic::{Access, Address, Completion, Kind, Mr, Nic, NicError, Remote, RemoteMem, Sge};

/// Largest work request a simulated queue pair takes (bytes).
const MAX_MESSAGE: u64 = 1 << 31;

struct Cq {
    entries: VecDeque<Completion>,
    armed: bool,
    signal: Arc<UnixStream>,
}

struct Qp {
    nic: u64,
    domain: u32,
    remote: Option<u32>,
    recvs: VecDeque<(u64, Sge)>,
    max_recv: usize,
}

struct Region {
    nic: u64,
    domain: u32,
    addr: u64,
    len: u64,
    access: Access,
}

#[derive(Default)]
struct Fabric {
    cqs: HashMap<u64, Cq>,
    qps: HashMap<u32, Qp>,
    regions: HashMap<u32, Region>,
    next_nic: u64,
    next_qpn: u32,
    next_key: u32,
    next_domain: u32,
}

fn fabric() -> MutexGuard<'static, Fabric> {
    static FABRIC: OnceLock<Mutex<Fabric>> = OnceLock::new();
    FABRIC
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// This process's tag in the first eight bytes of every simulated GID.
fn process_tag() -> [u8; 8] {
    static TAG: OnceLock<[u8; 8]> = OnceLock::new();
    *TAG.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (t ^ (u64::from(std::process::id()) << 32) ^ 0x5349_4d00_0000_0000).to_le_bytes()
    })
}

impl Fabric {
    fn push(&mut self, nic: u64, c: Completion) {
        if let Some(cq) = self.cqs.get_mut(&nic) {
            cq.entries.push_back(c);
            if cq.armed {
                cq.armed = false;
                // A full socket already says "readable": nothing lost when this fails.
                // MSG_NOSIGNAL: a reader gone must not raise SIGPIPE in this process.
                let _ =
                    socket2::SockRef::from(&*cq.signal).send_with_flags(&[1], libc::MSG_NOSIGNAL);
            }
        }
    }

    /// Whether `sge` lies inside a registration of `nic` with its local key, in the domain
    /// of queue pair `qpn`.
    fn local_ok(&self, nic: u64, qpn: u32, sge: &Sge) -> bool {
        let Some(domain) = self.qps.get(&qpn).map(|q| q.domain) else {
            return false;
        };
        self.regions.get(&sge.lkey).is_some_and(|r| {
            r.nic == nic
                && r.domain == domain
                && sge.addr >= r.addr
                && sge.addr + u64::from(sge.len) <= r.addr + r.len
        })
    }

    /// The connected peer of `qpn` on `nic` and that peer's NIC.
    fn peer(&self, nic: u64, qpn: u32) -> Result<(u32, u64), &'static str> {
        let qp = self
            .qps
            .get(&qpn)
            .filter(|q| q.nic == nic)
            .ok_or("no such queue pair")?;
        let remote = qp.remote.ok_or("the queue pair is not connected")?;
        match self.qps.get(&remote) {
            Some(r) if r.remote == Some(qpn) => Ok((remote, r.nic)),
            _ => Err("transport retry counter exceeded"),
        }
    }

    fn fail(&mut self, nic: u64, qpn: u32, wr_id: u64, kind: Kind, why: &'static str) {
        self.push(
            nic,
            Completion {
                wr_id,
                qpn,
                kind,
                len: 0,
                error: Some(why),
            },
        );
    }
}

/// A software NIC (see the module documentation).
pub struct SimNic {
    id: u64,
    signal: UnixStream,
}

impl SimNic {
    /// A new NIC on the process's fabric.
    pub fn new() -> Result<SimNic, NicError> {
        let (rx, tx) = UnixStream::pair().map_err(|e| NicError::Call {
            call: "socketpair",
            why: e.to_string(),
        })?;
        for s in [&rx, &tx] {
            s.set_nonblocking(true).map_err(|e| NicError::Call {
                call: "fcntl",
                why: e.to_string(),
            })?;
        }
        let mut f = fabric();
        f.next_nic += 1;
        let id = f.next_nic;
        f.cqs.insert(
            id,
            Cq {
                entries: VecDeque::new(),
                armed: false,
                signal: Arc::new(tx),
            },
        );
        Ok(SimNic { id, signal: rx })
    }
}

impl Drop for SimNic {
    fn drop(&mut self) {
        let mut f = fabric();
        let id = self.id;
        f.cqs.remove(&id);
        f.qps.retain(|_, q| q.nic != id);
        f.regions.retain(|_, r| r.nic != id);
    }
}

impl SimNic {
    /// An RDMA READ (`write` false) or WRITE of `sge` at the peer's `remote_addr`.
    fn one_sided(
        &mut self,
        qpn: u32,
        wr_id: u64,
        sge: Sge,
        remote_addr: u64,
        rkey: u32,
        write: bool,
    ) {
        let mut f = fabric();
        let id = self.id;
        let kind = if write { Kind::Write } else { Kind::Read };
        if !f.local_ok(id, qpn, &sge) {
            return f.fail(id, qpn, wr_id, kind, "local protection error");
        }
        let (remote_nic, remote_domain) = match f.peer(id, qpn) {
            Ok((r, n)) => (n, f.qps.get(&r).map_or(0, |q| q.domain)),
            Err(why) => return f.fail(id, qpn, wr_id, kind, why),
        };
        let len = u64::from(sge.len);
        let allowed = len <= MAX_MESSAGE
            && f.regions.get(&rkey).is_some_and(|r| {
                r.nic == remote_nic
                    && r.domain == remote_domain
                    && match r.access {
                        Access::Local => false,
                        Access::RemoteRead => !write,
                        Access::RemoteReadWrite => true,
                    }
                    && remote_addr >= r.addr
                    && remote_addr
                        .checked_add(len)
                        .is_some_and(|end| end <= r.addr + r.len)
            });
        if !allowed {
            return f.fail(id, qpn, wr_id, kind, "remote access error");
        }
        let (from, to) = if write {
            (sge.addr, remote_addr)
        } else {
            (remote_addr, sge.addr)
        };
        // SAFETY: the remote range lies inside the peer's live registration that allows this
        // access, and the local one inside a live local registration (both checked); see
        // `post_send`.
        unsafe { std::ptr::copy(from as *const u8, to as *mut u8, sge.len as usize) };
        f.push(
            id,
            Completion {
                wr_id,
                qpn,
                kind,
                len: sge.len,
                error: None,
            },
        );
    }
}

impl Nic for SimNic {
    fn describe(&self) -> String {
        format!("sim{} (software NIC, this process only)", self.id)
    }

    fn address(&self) -> Address {
        let mut gid = [0u8; 16];
        gid[..8].copy_from_slice(&process_tag());
        gid[8..].copy_from_slice(&self.id.to_le_bytes());
        Address {
            lid: 0,
            gid,
            mtu: 5,
        }
    }

    fn alloc_domain(&mut self) -> Result<u32, NicError> {
        let mut f = fabric();
        f.next_domain = f.next_domain.wrapping_add(1).max(1);
        Ok(f.next_domain)
    }

    fn free_domain(&mut self, _domain: u32) {}

    fn create_qp(&mut self, domain: u32, _send: u32, recv: u32) -> Result<u32, NicError> {
        let mut f = fabric();
        f.next_qpn = (f.next_qpn + 1) & 0x00ff_ffff;
        if f.next_qpn == 0 {
            f.next_qpn = 1;
        }
        let qpn = f.next_qpn;
        f.qps.insert(
            qpn,
            Qp {
                nic: self.id,
                domain,
                remote: None,
                recvs: VecDeque::new(),
                max_recv: recv as usize,
            },
        );
        Ok(qpn)
    }

    fn connect_qp(&mut self, qpn: u32, _psn: u32, remote: &Remote) -> Result<(), NicError> {
        if remote.addr.gid[..8] != process_tag() {
            return Err(NicError::Unreachable(
                "the peer is not on this process's simulated fabric: the sim NIC connects \
                 only queue pairs within one process (set the verbs 'nic' parameter to \
                 'ibverbs' for hardware)"
                    .into(),
            ));
        }
        let mut f = fabric();
        let qp = f
            .qps
            .get_mut(&qpn)
            .filter(|q| q.nic == self.id)
            .ok_or_else(|| NicError::Call {
                call: "modify_qp",
                why: format!("no queue pair {qpn}"),
            })?;
        qp.remote = Some(remote.qpn);
        Ok(())
    }

    fn destroy_qp(&mut self, qpn: u32) {
        let mut f = fabric();
        if f.qps.get(&qpn).is_some_and(|q| q.nic == self.id) {
            f.qps.remove(&qpn);
        }
    }

    unsafe fn register(
        &mut self,
        domain: u32,
        addr: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<Mr, NicError> {
        let mut f = fabric();
        f.next_key = f.next_key.wrapping_add(1).max(1);
        while f.regions.contains_key(&f.next_key) {
            f.next_key = f.next_key.wrapping_add(1).max(1);
        }
        let key = f.next_key;
        f.regions.insert(
            key,
            Region {
                nic: self.id,
                domain,
                addr: addr as u64,
                len: len as u64,
                access,
            },
        );
        Ok(Mr {
            id: u64::from(key),
            lkey: key,
            rkey: key,
        })
    }

    fn deregister(&mut self, mr: Mr) {
        let mut f = fabric();
        if f.regions.get(&mr.lkey).is_some_and(|r| r.nic == self.id) {
            f.regions.remove(&mr.lkey);
        }
    }

    fn post_recv(&mut self, qpn: u32, wr_id: u64, sge: Sge) -> Result<(), NicError> {
        let mut f = fabric();
        let local_ok = f.local_ok(self.id, qpn, &sge);
        let qp = f
            .qps
            .get_mut(&qpn)
            .filter(|q| q.nic == self.id)
            .ok_or_else(|| NicError::Call {
                call: "post_recv",
                why: format!("no queue pair {qpn}"),
            })?;
        if !local_ok {
            return Err(NicError::Call {
                call: "post_recv",
                why: "the buffer is not registered with that key".into(),
            });
        }
        if qp.recvs.len() >= qp.max_recv {
            return Err(NicError::Call {
                call: "post_recv",
                why: "the receive queue is full".into(),
            });
        }
        qp.recvs.push_back((wr_id, sge));
        Ok(())
    }

    fn post_send(&mut self, qpn: u32, wr_id: u64, sge: Sge) -> Result<(), NicError> {
        let mut f = fabric();
        let id = self.id;
        if !f.local_ok(id, qpn, &sge) {
            f.fail(id, qpn, wr_id, Kind::Send, "local protection error");
            return Ok(());
        }
        let (remote, remote_nic) = match f.peer(id, qpn) {
            Ok(p) => p,
            Err(why) => {
                f.fail(id, qpn, wr_id, Kind::Send, why);
                return Ok(());
            }
        };
        let Some((rwr, rsge)) = f.qps.get_mut(&remote).and_then(|q| q.recvs.pop_front()) else {
            f.fail(id, qpn, wr_id, Kind::Send, "RNR retry counter exceeded");
            return Ok(());
        };
        if rsge.len < sge.len {
            f.fail(remote_nic, remote, rwr, Kind::Recv, "local length error");
            f.fail(id, qpn, wr_id, Kind::Send, "remote operation error");
            return Ok(());
        }
        // SAFETY: both ranges lie inside live registrations (checked when posted, and a
        // registration outlives its work requests by `Nic::register`'s contract), which hold
        // memory valid for reads and writes that no Rust reference claims meanwhile. `copy`
        // allows them to overlap.
        unsafe {
            std::ptr::copy(
                sge.addr as *const u8,
                rsge.addr as *mut u8,
                sge.len as usize,
            )
        };
        f.push(
            remote_nic,
            Completion {
                wr_id: rwr,
                qpn: remote,
                kind: Kind::Recv,
                len: sge.len,
                error: None,
            },
        );
        f.push(
            id,
            Completion {
                wr_id,
                qpn,
                kind: Kind::Send,
                len: 0,
                error: None,
            },
        );
        Ok(())
    }

    fn post_rdma(
        &mut self,
        qpn: u32,
        wr_id: u64,
        sge: Sge,
        remote: RemoteMem,
        write: bool,
    ) -> Result<(), NicError> {
        self.one_sided(qpn, wr_id, sge, remote.addr, remote.rkey, write);
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> usize {
        let mut f = fabric();
        let Some(cq) = f.cqs.get_mut(&self.id) else {
            return 0;
        };
        let n = max.min(cq.entries.len());
        out.extend(cq.entries.drain(..n));
        n
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.signal.as_raw_fd())
    }

    fn rearm(&mut self) {
        let mut sink = [0u8; 64];
        while matches!((&self.signal).read(&mut sink), Ok(n) if n > 0) {}
        let mut f = fabric();
        if let Some(cq) = f.cqs.get_mut(&self.id) {
            cq.armed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::DmaBuf;

    /// The domains of the test pair's two queue pairs.
    const DA: u32 = 1_000_001;
    const DB: u32 = 1_000_002;

    fn pair() -> (SimNic, SimNic, u32, u32) {
        let (mut a, mut b) = (SimNic::new().unwrap(), SimNic::new().unwrap());
        let qa = a.create_qp(DA, 8, 8).unwrap();
        let qb = b.create_qp(DB, 8, 8).unwrap();
        let ra = Remote {
            qpn: qa,
            psn: 0,
            addr: a.address(),
        };
        let rb = Remote {
            qpn: qb,
            psn: 0,
            addr: b.address(),
        };
        a.connect_qp(qa, 0, &rb).unwrap();
        b.connect_qp(qb, 0, &ra).unwrap();
        (a, b, qa, qb)
    }

    fn sge(buf: &DmaBuf, mr: Mr, off: usize, len: u32) -> Sge {
        Sge {
            addr: buf.addr(off),
            len,
            lkey: mr.lkey,
        }
    }

    #[test]
    fn sends_fill_receive_buffers_in_order_and_reads_are_checked() {
        let (mut a, mut b, qa, qb) = pair();
        let (ba, bb) = (DmaBuf::new(64), DmaBuf::new(64));
        // SAFETY: both buffers outlive their registrations (deregistered below).
        let (ma, mb) = unsafe {
            (
                a.register(DA, ba.as_ptr(), 64, Access::RemoteRead).unwrap(),
                b.register(DB, bb.as_ptr(), 64, Access::Local).unwrap(),
            )
        };
        // SAFETY: nothing is posted on these bytes yet.
        unsafe { assert!(ba.write(0, b"hello")) };
        b.post_recv(qb, 1, sge(&bb, mb, 0, 32)).unwrap();
        b.post_recv(qb, 2, sge(&bb, mb, 32, 32)).unwrap();
        a.rearm();
        b.rearm();
        a.post_send(qa, 10, sge(&ba, ma, 0, 5)).unwrap();
        let mut out = vec![];
        b.poll(&mut out, 8);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].wr_id, out[0].kind, out[0].len), (1, Kind::Recv, 5));
        // SAFETY: the receive completed and nothing else is posted on it.
        assert_eq!(unsafe { bb.slice(0, 5) }, Some(&b"hello"[..]));
        out.clear();
        a.poll(&mut out, 8);
        assert_eq!((out[0].wr_id, out[0].error), (10, None));

        // A READ of a's memory (registered for remote reads) into b.
        out.clear();
        b.post_rdma(
            qb,
            3,
            sge(&bb, mb, 40, 5),
            RemoteMem {
                addr: ba.addr(0),
                rkey: ma.rkey,
            },
            false,
        )
        .unwrap();
        b.poll(&mut out, 8);
        assert_eq!((out[0].kind, out[0].error), (Kind::Read, None));
        // SAFETY: the read completed.
        assert_eq!(unsafe { bb.slice(40, 5) }, Some(&b"hello"[..]));
        // Out of the registration's range, or a key without remote read: refused.
        out.clear();
        b.post_rdma(
            qb,
            4,
            sge(&bb, mb, 40, 5),
            RemoteMem {
                addr: ba.addr(62),
                rkey: ma.rkey,
            },
            false,
        )
        .unwrap();
        a.post_rdma(
            qa,
            5,
            sge(&ba, ma, 0, 4),
            RemoteMem {
                addr: bb.addr(0),
                rkey: mb.rkey,
            },
            false,
        )
        .unwrap();
        b.poll(&mut out, 8);
        a.poll(&mut out, 8);
        assert_eq!(out[0].error, Some("remote access error"));
        assert_eq!(out[1].error, Some("remote access error"));

        // A send with no receive posted: RNR, as RC without retries.
        out.clear();
        a.post_send(qa, 11, sge(&ba, ma, 0, 5)).unwrap();
        a.post_send(qa, 12, sge(&ba, ma, 0, 5)).unwrap();
        a.poll(&mut out, 8);
        assert_eq!(out[0].error, None, "the second buffer took it");
        assert_eq!(out[1].error, Some("RNR retry counter exceeded"));
        // An unregistered local buffer.
        out.clear();
        a.post_send(qa, 13, sge(&ba, ma, 60, 5)).unwrap();
        a.poll(&mut out, 8);
        assert_eq!(out[0].error, Some("local protection error"));
        a.deregister(ma);
        b.deregister(mb);
        // A peer gone: sends fail.
        b.destroy_qp(qb);
        out.clear();
        let ba2 = DmaBuf::new(8);
        // SAFETY: ba2 outlives the registration (the NIC drops it at the end of the test).
        let m2 = unsafe { a.register(DA, ba2.as_ptr(), 8, Access::Local).unwrap() };
        a.post_send(qa, 14, sge(&ba2, m2, 0, 1)).unwrap();
        a.poll(&mut out, 8);
        assert_eq!(out[0].error, Some("transport retry counter exceeded"));
        a.deregister(m2);
    }

    #[test]
    fn writes_need_remote_write_access_and_land_in_range() {
        let (mut a, mut b, qa, _qb) = pair();
        let (ba, bb, bc) = (DmaBuf::new(64), DmaBuf::new(64), DmaBuf::new(64));
        // SAFETY: the buffers outlive their registrations (deregistered below).
        let (ma, mb, mc) = unsafe {
            (
                a.register(DA, ba.as_ptr(), 64, Access::Local).unwrap(),
                b.register(DB, bb.as_ptr(), 64, Access::RemoteReadWrite)
                    .unwrap(),
                b.register(DB, bc.as_ptr(), 64, Access::RemoteRead).unwrap(),
            )
        };
        // SAFETY: nothing is posted on `ba` yet.
        unsafe { assert!(ba.write(0, b"put!")) };
        let mut out = vec![];
        a.post_rdma(
            qa,
            1,
            sge(&ba, ma, 0, 4),
            RemoteMem {
                addr: bb.addr(60),
                rkey: mb.rkey,
            },
            true,
        )
        .unwrap();
        a.post_rdma(
            qa,
            2,
            sge(&ba, ma, 0, 4),
            RemoteMem {
                addr: bb.addr(61),
                rkey: mb.rkey,
            },
            true,
        )
        .unwrap();
        a.post_rdma(
            qa,
            3,
            sge(&ba, ma, 0, 4),
            RemoteMem {
                addr: bc.addr(0),
                rkey: mc.rkey,
            },
            true,
        )
        .unwrap();
        a.poll(&mut out, 8);
        assert_eq!((out[0].kind, out[0].error), (Kind::Write, None));
        // SAFETY: the write completed.
        assert_eq!(unsafe { bb.slice(60, 4) }, Some(&b"put!"[..]));
        assert_eq!(out[1].error, Some("remote access error"), "past the end");
        assert_eq!(
            out[2].error,
            Some("remote access error"),
            "read-only memory"
        );
        // SAFETY: no write landed there.
        assert_eq!(unsafe { bc.slice(0, 4) }, Some(&[0u8; 4][..]));
        a.deregister(ma);
        b.deregister(mb);
        b.deregister(mc);
    }

    #[test]
    fn the_descriptor_fires_once_armed() {
        let (mut a, mut b, qa, qb) = pair();
        let (ba, bb) = (DmaBuf::new(8), DmaBuf::new(8));
        // SAFETY: both buffers outlive the NICs' use of them (deregistered below).
        let (ma, mb) = unsafe {
            (
                a.register(DA, ba.as_ptr(), 8, Access::Local).unwrap(),
                b.register(DB, bb.as_ptr(), 8, Access::Local).unwrap(),
            )
        };
        let readable = |n: &SimNic| {
            let mut x = [0u8; 1];
            matches!((&n.signal).read(&mut x), Ok(1))
        };
        b.post_recv(qb, 1, sge(&bb, mb, 0, 8)).unwrap();
        a.post_send(qa, 1, sge(&ba, ma, 0, 1)).unwrap();
        assert!(!readable(&b), "not armed: no event");
        b.rearm();
        b.post_recv(qb, 2, sge(&bb, mb, 0, 8)).unwrap();
        a.post_send(qa, 2, sge(&ba, ma, 0, 1)).unwrap();
        assert!(readable(&b), "armed: readable");
        b.rearm();
        assert!(!readable(&b), "one event per arming");
        a.deregister(ma);
        b.deregister(mb);
    }
}
