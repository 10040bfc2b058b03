//! One-sided RDMA: puts and gets as RDMA WRITE and READ into the buffer a peer published,
//! small ones through the bounce buffer, large ones from memory registered through the
//! connection's registration cache.

use super::*;

impl VerbsDevice {
    // ----- one-sided RDMA -----

    /// Writes `segs` to the peer's `remote..` (key `rkey`), or reads them from there, and
    /// waits for the NIC to finish: small transfers through the bounce buffer, larger ones
    /// from the host's memory registered through the cache.
    pub(super) fn one_sided(
        &mut self,
        idx: usize,
        write: bool,
        remote: u64,
        rkey: u32,
        segs: &[VmiSeg],
    ) -> Status {
        let Some(qpn) = conn!(self, idx)
            .filter(|c| c.stage == Stage::Open)
            .and_then(|c| c.qp.as_ref())
            .map(|q| q.qpn)
        else {
            return Status::ConnectionLost;
        };
        let total: usize = segs.iter().map(|s| s.len).sum();
        if total == 0 {
            return Status::Ok;
        }
        let first = self.next_rdma + 1;
        let mut leases = Vec::new();
        let mut posted = 0u64;
        let mut result = Ok(());
        let Some(c) = conn!(self, idx) else {
            return Status::ConnectionLost;
        };
        let domain = c.domain;
        if total <= BOUNCE {
            if c.bounce.is_none() {
                match Staged::new(self.nic.as_mut(), domain, BOUNCE, Access::Local) {
                    Ok(b) => c.bounce = Some(b),
                    Err(e) => {
                        log::error!("verbs: no bounce buffer: {e}");
                        return Status::NoResources;
                    }
                }
            }
            let bounce = c.bounce.as_ref().expect("made above");
            if write {
                let mut off = 0;
                for s in segs {
                    // SAFETY: the host lends the segments readable for the call; the bounce
                    // buffer has no work request outstanding (transfers are one at a time).
                    #[allow(unsafe_code)]
                    unsafe {
                        bounce
                            .buf
                            .write(off, std::slice::from_raw_parts(s.base, s.len));
                    }
                    off += s.len;
                }
            }
            let sge = bounce.sge(0, total);
            self.next_rdma += 1;
            result = self.post_one_sided(qpn, idx, write, sge, remote, rkey);
            posted = 1;
        } else {
            let mut off = 0u64;
            for s in segs.iter().filter(|s| s.len > 0) {
                let Some(c) = conn!(self, idx) else { break };
                let nic = std::cell::RefCell::new(&mut self.nic);
                let lease = c.regcache.acquire(
                    s.base as u64,
                    s.len as u64,
                    |start, len| {
                        // SAFETY: local access only; the cache drops the registration when
                        // the memory goes away, and it is named by a work request only while
                        // the host lends the segment (see `Nic::register`).
                        #[allow(unsafe_code)]
                        unsafe {
                            nic.borrow_mut().register(
                                domain,
                                start as *mut u8,
                                len as usize,
                                Access::Local,
                            )
                        }
                    },
                    &mut |mr| nic.borrow_mut().deregister(mr),
                );
                let lease = match lease {
                    Ok(l) => l,
                    Err(e) => {
                        result = Err(format!("cannot register {} bytes: {e}", s.len));
                        break;
                    }
                };
                let sge = Sge {
                    addr: s.base as u64,
                    len: s.len as u32,
                    lkey: lease.handle.lkey,
                };
                leases.push(lease);
                self.next_rdma += 1;
                posted += 1;
                result = self.post_one_sided(qpn, idx, write, sge, remote + off, rkey);
                if result.is_err() {
                    break;
                }
                off += s.len as u64;
            }
        }
        let status = match result {
            Ok(()) => self.wait_one_sided(idx, qpn, first, posted),
            Err(why) => {
                // Posted work requests may still run: the queue pair goes first.
                self.fail(idx, Status::ConnectionLost, &why, true);
                Status::ConnectionLost
            }
        };
        // A connection that failed meanwhile took its bounce buffer and cache with it.
        let nic = &mut self.nic;
        if let Some(c) = conn!(self, idx).filter(|c| c.qp.as_ref().is_some_and(|q| q.qpn == qpn)) {
            if status == Status::Ok && !write && total <= BOUNCE {
                let bounce = c.bounce.as_ref().expect("used above");
                let mut off = 0;
                for s in segs {
                    // SAFETY: the READ completed, nothing else is posted on the bounce buffer;
                    // the host lends the segments writable for the call.
                    #[allow(unsafe_code)]
                    unsafe {
                        if let Some(src) = bounce.buf.slice(off, s.len) {
                            std::ptr::copy_nonoverlapping(src.as_ptr(), s.base, s.len);
                        }
                    }
                    off += s.len;
                }
            }
            for l in leases {
                c.regcache.release(l, &mut |mr| nic.deregister(mr));
            }
        }
        if status == Status::Ok {
            self.rdma_ops += 1;
        }
        status
    }

    pub(super) fn post_one_sided(
        &mut self,
        qpn: u32,
        idx: usize,
        write: bool,
        sge: Sge,
        remote: u64,
        rkey: u32,
    ) -> Result<(), String> {
        let wr = wr_id(idx, WR_RDMA, self.next_rdma);
        let r = self
            .nic
            .post_rdma(qpn, wr, sge, RemoteMem { addr: remote, rkey }, write);
        r.map_err(|e| e.to_string())
    }

    /// Waits for the completions of one-sided work requests `first..first+n`, handling
    /// every other completion as `poll` would (fragments queue for the next poll). The
    /// connection is given up (its queue pair destroyed, so nothing lands later) when one
    /// fails or they take longer than [`RDMA_TIMEOUT`].
    pub(super) fn wait_one_sided(&mut self, idx: usize, qpn: u32, first: u64, n: u64) -> Status {
        let deadline = Instant::now() + RDMA_TIMEOUT;
        let mut done = 0;
        let mut comps = Vec::with_capacity(BATCH);
        while done < n {
            let gone = conn!(self, idx).is_none_or(|c| c.qp.as_ref().is_none_or(|q| q.qpn != qpn));
            if gone {
                return Status::ConnectionLost; // its queue pair is gone: nothing more lands
            }
            comps.clear();
            self.nic.poll(&mut comps, BATCH);
            for c in &comps {
                let (cidx, kind, id) = wr_parts(c.wr_id);
                let ours =
                    kind == WR_RDMA && cidx == idx && c.qpn == qpn && id >= first && id < first + n;
                if !ours {
                    self.on_completion(*c);
                    continue;
                }
                if let Some(why) = c.error {
                    let detail = format!(
                        "an RDMA {} failed: {why}",
                        if c.kind == crate::nic::Kind::Write {
                            "WRITE"
                        } else {
                            "READ"
                        }
                    );
                    self.fail(idx, Status::ConnectionLost, &detail, true);
                    return Status::ConnectionLost;
                }
                done += 1;
            }
            if done < n && Instant::now() >= deadline {
                let why = format!("an RDMA transfer did not finish in {RDMA_TIMEOUT:?}");
                self.fail(idx, Status::Timeout, &why, true);
                return Status::Timeout;
            }
        }
        Status::Ok
    }
}
