//! The data path: sends handed to the protocol, its actions carried out on the queue pair,
//! completions, fragments handed up, and the close.

use super::*;

impl VerbsDevice {
    // ----- data -----

    /// Gives the endpoint a send IRB, or keeps it waiting; false when it waits. `queued`: the
    /// IRB comes from the front of `waiting` (a new one goes behind whatever waits there).
    pub(super) fn offer(&mut self, idx: usize, mut irb: Irb, queued: bool) -> bool {
        let Some(c) = conn!(self, idx) else {
            irb.set_detail("the connection is closed");
            irb.complete(Status::ConnectionLost);
            return true;
        };
        if c.ep.is_none() || c.stage != Stage::Open || (!queued && !c.waiting.is_empty()) {
            if queued {
                c.waiting.push_front(irb);
            } else {
                c.waiting.push_back(irb);
            }
            return false;
        }
        let meta = meta_of(irb.flags());
        let len = irb.data_len();
        let token = c.next_token;
        let eager = len <= self.cfg.eager_max as usize;
        let frag = if eager {
            Fragment::Eager(gather(&irb), meta)
        } else if let Some((addr, rkey)) = self.lend(idx, &irb, token) {
            Fragment::Large {
                addr,
                rkey,
                len: len as u64,
                meta,
            }
        } else {
            let Some(c) = conn!(self, idx) else {
                return true;
            };
            let staged = match c.stage_pool.take(self.nic.as_mut(), c.domain, len) {
                Ok(s) => s,
                Err(e) => {
                    irb.set_detail(&format!(
                        "no registered memory for a {len}-byte fragment: {e}"
                    ));
                    irb.complete(Status::NoResources);
                    return true;
                }
            };
            let mut off = 0;
            for i in 0..irb.segments().len() {
                let seg = irb.segment(i);
                // SAFETY: the buffer was just registered and no work request names it yet.
                #[allow(unsafe_code)]
                let fits = unsafe { staged.buf.write(off, seg) };
                debug_assert!(fits);
                off += seg.len();
            }
            let f = Fragment::Large {
                addr: staged.buf.addr(0),
                rkey: staged.mr.rkey,
                len: len as u64,
                meta,
            };
            let Some(c) = conn!(self, idx) else {
                return true;
            };
            c.staged.insert(token, staged);
            f
        };
        let Some(c) = conn!(self, idx) else {
            return true;
        };
        let ep = c.ep.as_mut().expect("checked above");
        match ep.send(token, frag) {
            Ok(()) => {
                c.next_token += 1;
                c.pending.insert(token, irb);
                self.drive(idx);
                true
            }
            Err(SendError::Busy(_)) => {
                c.end_send(token, self.nic.as_mut());
                let Some(c) = conn!(self, idx) else {
                    return true;
                };
                c.waiting.push_front(irb);
                false
            }
            Err(e @ SendError::TooLarge { .. }) => {
                c.end_send(token, self.nic.as_mut());
                irb.set_detail(&e.to_string());
                irb.complete(Status::TooLarge);
                true
            }
        }
    }

    /// Registers a large fragment in one piece, of at least `send_zero_copy_min` bytes, for
    /// the peer to read where it lies; returns its address and key, or `None` to copy it into
    /// a staging buffer instead (smaller, in several pieces, or not registrable: read-only
    /// memory, for one, cannot be registered with local write access).
    fn lend(&mut self, idx: usize, irb: &Irb, token: u64) -> Option<(u64, u32)> {
        let min = self.cfg.send_zero_copy_min;
        if min == 0 || (irb.data_len() as u64) < min {
            return None;
        }
        let mut pieces = (0..irb.segments().len())
            .map(|i| irb.segment(i))
            .filter(|s| !s.is_empty());
        let seg = pieces.next()?;
        if pieces.next().is_some() {
            return None;
        }
        let c = conn!(self, idx)?;
        // SAFETY: the host lends the segment until the IRB completes, and the IRB completes
        // only after this registration is gone: at the peer's `fin` (`Action::Sent`
        // deregisters it first) or when the connection ends (`Conn::release` destroys the
        // queue pair, then deregisters it, before the connection's IRBs complete). Only the
        // peer's RDMA READ names it: the NIC reads the memory and never writes it.
        #[allow(unsafe_code)]
        let mr = unsafe {
            self.nic.register(
                c.domain,
                seg.as_ptr().cast_mut(),
                seg.len(),
                Access::RemoteRead,
            )
        };
        match mr {
            Ok(mr) => {
                c.lent.insert(token, mr);
                self.zero_copy_sends += 1;
                Some((seg.as_ptr() as u64, mr.rkey))
            }
            Err(e) => {
                log::debug!(
                    "verbs: a {}-byte fragment is copied: its memory cannot be registered ({e})",
                    seg.len()
                );
                None
            }
        }
    }

    pub(super) fn retry_waiting(&mut self, idx: usize) {
        loop {
            let Some(c) = conn!(self, idx) else { return };
            if c.stage != Stage::Open || c.ep.is_none() {
                return;
            }
            let Some(irb) = c.waiting.pop_front() else {
                return;
            };
            if !self.offer(idx, irb, true) {
                return;
            }
        }
    }

    /// Carries out what the endpoint asks for.
    pub(super) fn drive(&mut self, idx: usize) {
        self.post_unsent(idx);
        loop {
            let Some(c) = conn!(self, idx) else {
                return;
            };
            let Some(action) = c.ep.as_mut().and_then(|e| e.poll_action()) else {
                return;
            };
            match action {
                Action::Send { wr, bytes } => {
                    c.unsent.push_back((wr, bytes));
                    self.post_unsent(idx);
                }
                Action::Read {
                    msg,
                    addr,
                    rkey,
                    len,
                } => {
                    c.deferred_reads.push_back((msg, addr, rkey, len));
                    self.post_reads(idx);
                }
                Action::Deliver(bytes, meta) => c.up.push_back(Up::Eager(bytes, meta)),
                Action::DeliverRead { msg, meta } => {
                    if let Some((buf, len)) = c.read_done.remove(&msg) {
                        c.up.push_back(Up::Read(buf, len, meta));
                    }
                }
                Action::Sent { token } => {
                    let irb = c.pending.remove(&token);
                    // The peer finished reading: its access ends before the host gets the
                    // memory back.
                    c.end_send(token, self.nic.as_mut());
                    if let Some(irb) = irb {
                        irb.complete(Status::Ok);
                    }
                }
            }
        }
    }

    /// Posts the reads the peer asked for, in order, while the connection's read buffers
    /// stay within [`READ_BUDGET`] (one is always allowed).
    pub(super) fn post_reads(&mut self, idx: usize) {
        loop {
            let Some(c) = conn!(self, idx) else { return };
            let Some(&(msg, addr, rkey, len)) = c.deferred_reads.front() else {
                return;
            };
            let size = len as usize;
            if c.read_bytes > 0 && c.read_bytes.saturating_add(size) > READ_BUDGET {
                return;
            }
            let Some(qpn) = c.qp.as_ref().map(|q| q.qpn) else {
                return;
            };
            c.deferred_reads.pop_front();
            let target = match c.read_pool.take(self.nic.as_mut(), c.domain, size) {
                Ok(s) => s,
                Err(e) => {
                    let why =
                        format!("no registered memory to read a {len}-byte fragment into: {e}");
                    return self.fail(idx, Status::NoResources, &why, true);
                }
            };
            self.next_read += 1;
            let id = self.next_read;
            let Some(c) = conn!(self, idx) else { return };
            c.read_bytes += target.buf.len();
            self.read_bytes_peak = self.read_bytes_peak.max(c.read_bytes);
            let sge = target.sge(0, size);
            c.reads.insert(id, (msg, target, size));
            if let Err(e) = self.nic.post_rdma(
                qpn,
                wr_id(idx, WR_READ, id),
                sge,
                RemoteMem { addr, rkey },
                false,
            ) {
                return self.fail(idx, Status::ConnectionLost, &e.to_string(), true);
            }
        }
    }

    /// Posts SENDs that wait for a send slot, while slots are free.
    pub(super) fn post_unsent(&mut self, idx: usize) {
        loop {
            let Some(c) = conn!(self, idx) else {
                return;
            };
            let Some(qp) = c.qp.as_mut() else { return };
            if c.unsent.is_empty() {
                return;
            }
            let Some(slot) = qp.free_send.pop() else {
                return;
            };
            let (wr, bytes) = c.unsent.pop_front().expect("checked");
            let off = slot as usize * qp.slot;
            // SAFETY: a free slot: no work request names it.
            #[allow(unsafe_code)]
            let fits = unsafe { qp.send.buf.write(off, &bytes) };
            if !fits {
                let why = format!("a {}-byte frame does not fit a send slot", bytes.len());
                return self.fail(idx, Status::Internal, &why, true);
            }
            qp.send_wr.insert(slot, wr);
            let sge = qp.send.sge(off, bytes.len());
            let qpn = qp.qpn;
            if let Err(e) = self
                .nic
                .post_send(qpn, wr_id(idx, WR_SEND, slot.into()), sge)
            {
                return self.fail(idx, Status::ConnectionLost, &e.to_string(), true);
            }
        }
    }

    /// One work completion.
    pub(super) fn on_completion(&mut self, done: Completion) {
        let (idx, kind, id) = wr_parts(done.wr_id);
        let Some(c) = conn!(self, idx) else {
            return;
        };
        if c.qp.as_ref().is_none_or(|q| q.qpn != done.qpn) {
            return; // a completion of a queue pair already gone
        }
        if c.stage == Stage::Lingering {
            return; // this side is closing: nothing more goes up
        }
        if c.bye_sent {
            // The peer still sends after this side's bye: the wait for its bye starts again.
            c.deadline = Some(Instant::now() + LINGER);
        }
        if let Some(why) = done.error {
            let what = match kind {
                WR_RECV => "a receive",
                WR_SEND => "a send",
                _ => "an RDMA READ",
            };
            let detail = format!("{what} failed on the queue pair: {why}");
            return self.fail(idx, Status::ConnectionLost, &detail, true);
        }
        match kind {
            WR_RECV => {
                let qp = c.qp.as_ref().expect("checked");
                let s = id as usize;
                if s >= qp.recv_slots || done.len as usize > qp.slot {
                    return self.fail(idx, Status::Protocol, "a receive out of range", true);
                }
                // SAFETY: the receive of this slot completed and it is not reposted yet.
                #[allow(unsafe_code)]
                let bytes = unsafe { qp.recv.buf.slice(s * qp.slot, done.len as usize) };
                let result = match (bytes, c.ep.as_mut()) {
                    (Some(b), Some(ep)) => ep.received(b),
                    _ => Ok(()),
                };
                if let Err(e) = result {
                    let why = format!("the peer broke the protocol: {e}");
                    return self.fail(idx, Status::Protocol, &why, true);
                }
                let (qpn, sge) = (qp.qpn, qp.recv_sge(s));
                if let Err(e) = self.nic.post_recv(qpn, done.wr_id, sge) {
                    return self.fail(idx, Status::ConnectionLost, &e.to_string(), true);
                }
            }
            WR_SEND => {
                let Some(qp) = c.qp.as_mut() else { return };
                let Some(wr) = qp.send_wr.remove(&(id as u32)) else {
                    return;
                };
                qp.free_send.push(id as u32);
                if let Some(ep) = c.ep.as_mut() {
                    ep.send_done(wr);
                }
            }
            WR_READ => {
                let Some((msg, target, len)) = c.reads.remove(&id) else {
                    return;
                };
                c.read_done.insert(msg, (target, len));
                let r = c.ep.as_mut().map(|ep| ep.read_done(msg));
                if let Some(Err(e)) = r {
                    return self.fail(idx, Status::Internal, &e.to_string(), true);
                }
            }
            _ => return,
        }
        self.drive(idx);
    }

    /// Hands up waiting fragments while the budget allows.
    pub(super) fn hand_up(&mut self, idx: usize) {
        while self.budget_left > 0 {
            let Some(c) = conn!(self, idx) else {
                return;
            };
            if c.vmi == 0 {
                // The host is done with the connection: buffers go back, nothing goes up.
                for up in c.up.drain(..) {
                    if let Up::Read(s, _, _) = up {
                        c.read_bytes = c.read_bytes.saturating_sub(s.buf.len());
                        c.read_pool.give(self.nic.as_mut(), s);
                    }
                }
                return;
            }
            let vmi = c.vmi;
            let Some(up) = c.up.pop_front() else { return };
            let mut was_read = false;
            // Straight to the host with no IRB when it polls this device directly (ABI 1.2).
            // Every fragment is offered, read ones too: once the host declines one (too large,
            // or no room), `offer` declines the rest of the poll, which keeps the order.
            let (bytes, meta): (&[u8], Meta) = match &up {
                Up::Eager(b, m) => (b, *m),
                Up::Read(s, len, m) => {
                    // SAFETY: the READ completed and nothing else names the buffer.
                    #[allow(unsafe_code)]
                    let b = unsafe { s.buf.slice(0, *len) }.unwrap_or(&[]);
                    (b, *m)
                }
            };
            if deliver::offer(
                vmi,
                vmi_device::abi::recv_flags(meta.end, meta.filter),
                bytes,
            ) {
                if let Up::Read(s, _, _) = up
                    && let Some(c) = conn!(self, idx)
                {
                    c.read_bytes = c.read_bytes.saturating_sub(s.buf.len());
                    c.read_pool.give(self.nic.as_mut(), s);
                    was_read = true;
                }
                self.budget_left -= 1;
                self.delivered += 1;
                self.direct_receives += 1;
                if was_read {
                    self.post_reads(idx);
                }
                continue;
            }
            let Some(mut irb) = self.host.alloc_irb(Op::Recv, vmi) else {
                if let Some(c) = conn!(self, idx) {
                    c.up.push_front(up);
                }
                self.budget_left = 0;
                return;
            };
            self.budget_left -= 1;
            self.delivered += 1;
            match up {
                Up::Eager(bytes, meta) => {
                    irb.set_flags(vmi_device::abi::recv_flags(meta.end, meta.filter));
                    let (ptr, len) = (bytes.as_ptr() as *mut u8, bytes.len());
                    irb.frame::<VerbsFrame>().held = self.held.hold(bytes);
                    push_segment(&mut irb, ptr, len);
                }
                Up::Read(buf, len, meta) => {
                    irb.set_flags(vmi_device::abi::recv_flags(meta.end, meta.filter));
                    let ptr = buf.buf.as_ptr();
                    let (mut qpn, mut domain) = (0, 0);
                    if let Some(c) = conn!(self, idx) {
                        c.read_bytes = c.read_bytes.saturating_sub(buf.buf.len());
                        qpn = c.qp.as_ref().map_or(0, |q| q.qpn);
                        domain = c.domain;
                    }
                    was_read = true;
                    self.next_big = self.next_big.wrapping_add(1).max(1);
                    while self.big.contains_key(&self.next_big) {
                        self.next_big = self.next_big.wrapping_add(1).max(1);
                    }
                    self.big.insert(
                        self.next_big,
                        Big {
                            idx,
                            qpn,
                            domain,
                            staged: buf,
                        },
                    );
                    irb.frame::<VerbsFrame>().big = self.next_big;
                    push_segment(&mut irb, ptr, len);
                }
            }
            irb.pass();
            if was_read {
                self.post_reads(idx);
            }
        }
    }

    /// Closes, reports and retries what each connection has due.
    pub(super) fn maintain(&mut self, now: Instant) {
        for idx in 0..self.conns.len() {
            let Some(c) = conn!(self, idx) else { continue };
            if c.deadline.is_some_and(|d| now >= d) {
                if c.peer_done && !c.bye_sent {
                    // The host heard of the peer's close; this side's last sends never
                    // finished: give up quietly.
                    self.take(idx);
                    continue;
                }
                if c.bye_sent && c.stage == Stage::Open {
                    // The peer went silent after this side's bye: the close is over.
                    log::info!(
                        "verbs: {} sent nothing for {} ms after this side's bye; closing",
                        c.peer,
                        LINGER.as_millis()
                    );
                    let irb = c.closing.take();
                    self.take(idx);
                    if let Some(irb) = irb {
                        irb.complete(Status::Ok);
                    }
                    continue;
                }
                match c.stage {
                    Stage::Dialing | Stage::Hello => {
                        self.next_attempt(idx, "no answer in time", false);
                    }
                    Stage::Lingering | Stage::Accepted | Stage::Proving => {
                        self.take(idx);
                    }
                    _ => self.fail(
                        idx,
                        Status::Timeout,
                        "the peer did not finish connecting in time",
                        true,
                    ),
                }
                continue;
            }
            if c.peer_done {
                if c.stage == Stage::Open && c.released && c.is_idle() {
                    // The host's last sends (its notices of failed messages) are done: bye in
                    // turn, then linger until the peer closes the side channel.
                    let frames = c.ep.as_ref().map_or(0, |e| e.frames_sent());
                    c.stage = Stage::Lingering;
                    c.deadline = Some(now + LINGER);
                    let vmi = std::mem::take(&mut c.vmi);
                    // A Disconnect the host issued as the peer's bye came (both closed at
                    // once): it is over too.
                    let closing = c.closing.take();
                    self.by_vmi.remove(&vmi);
                    self.say(idx, &Control::Bye { frames }.emit());
                    if let Some(irb) = closing {
                        irb.complete(Status::Ok);
                    }
                }
                continue;
            }
            if !c.waiting.is_empty() {
                self.retry_waiting(idx);
            }
            self.hand_up(idx);
            self.check_close(idx);
            self.check_bye(idx);
        }
    }

    /// The host's Disconnect: once everything sent is done, say bye; the close completes
    /// when the peer's bye answers and everything it sent went up (`check_bye`), so its last
    /// frames (notices of failed messages) still reach the host, or when it goes silent for
    /// `LINGER` or ends the side channel.
    pub(super) fn check_close(&mut self, idx: usize) {
        let Some(c) = conn!(self, idx) else { return };
        if c.closing.is_none() || c.bye_sent || !c.is_idle() {
            return;
        }
        let frames = c.ep.as_ref().map_or(0, |e| e.frames_sent());
        c.bye_sent = true;
        c.deadline = Some(Instant::now() + LINGER);
        self.say(idx, &Control::Bye { frames }.emit());
        // The peer may have said bye first: then this completes the close at once.
        self.check_bye(idx);
    }

    /// The peer's bye: once every frame it sent went up, the application hears of it.
    pub(super) fn check_bye(&mut self, idx: usize) {
        let Some(c) = conn!(self, idx) else { return };
        let Some(frames) = c.bye_at else { return };
        let Some(ep) = c.ep.as_ref() else { return };
        let got = ep.frames_received();
        if got > frames {
            let why = format!("the peer said bye after {frames} frames but sent {got}");
            return self.fail(idx, Status::Protocol, &why, true);
        }
        if got < frames || ep.is_receiving() || !c.up.is_empty() || self.budget_left == 0 {
            return;
        }
        c.peer_done = true;
        if c.bye_sent {
            // Both sides said bye and everything the peer sent went up: the local close is
            // complete (no peer disconnect: this side closed).
            let irb = c.closing.take();
            self.take(idx);
            if let Some(irb) = irb {
                irb.complete(Status::Ok);
            }
            return;
        }
        // This side's last sends (the host's notices) get `LINGER` to finish.
        c.deadline = Some(Instant::now() + LINGER);
        let vmi = c.vmi;
        if vmi == 0 {
            c.released = true;
            return;
        }
        self.budget_left -= 1;
        let reported =
            self.host
                .report_peer_disconnect(vmi, Status::Ok, "the peer closed the connection");
        // No report to wait for: answer without.
        c.released |= !reported;
    }
}
