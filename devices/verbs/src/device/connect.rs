//! Connecting and accepting: the side channel's dialing, the bootstrap (hello, the keyed
//! handshake, answer, ready), and the control messages that follow it.

use super::*;

impl VerbsDevice {
    // ----- connecting -----

    pub(super) fn start_attempt(&mut self, mut attempt: Attempt, vmi: u64) {
        loop {
            let now = Instant::now();
            let addr = match attempt.dial.next_addr(now) {
                Ok(a) => a,
                Err((status, detail)) => {
                    if let Some(mut irb) = attempt.irb.take() {
                        irb.set_detail(&detail);
                        irb.complete(status);
                    }
                    return;
                }
            };
            match mio::net::TcpStream::connect(addr) {
                Ok(sock) => {
                    self.tune(&sock);
                    let mut c = Conn::new(sock, addr, Stage::Dialing, vmi);
                    c.deadline = Some(attempt.dial.give_up());
                    c.attempt = Some(attempt);
                    match self.insert(c) {
                        Ok(_) => return,
                        Err(e) => {
                            log::error!("verbs: cannot register a socket: {e}");
                            return;
                        }
                    }
                }
                Err(e) => attempt
                    .dial
                    .failed(&addr.to_string(), &e.to_string(), false, false),
            }
        }
    }

    pub(super) fn next_attempt(&mut self, idx: usize, why: &str, wrong_key: bool) {
        let Some(mut c) = self.take(idx) else { return };
        let Some(mut a) = c.attempt.take() else {
            return;
        };
        log::debug!("verbs: connect to {} failed: {why}", c.peer);
        a.dial
            .failed(&c.peer.to_string(), why, why.contains("refused"), wrong_key);
        self.start_attempt(a, c.vmi);
    }

    /// The connector's socket is writable: connected (or not); send the hello.
    pub(super) fn on_dialed(&mut self, idx: usize) {
        let Some(c) = conn!(self, idx) else { return };
        match c.sock.take_error() {
            Ok(Some(e)) | Err(e) => return self.next_attempt(idx, &e.to_string(), false),
            Ok(None) => {}
        }
        if let Err(e) = c.sock.peer_addr() {
            if e.kind() == io::ErrorKind::NotConnected {
                return; // still connecting
            }
            return self.next_attempt(idx, &e.to_string(), false);
        }
        let qp = match self.make_qp(idx) {
            Ok(q) => q,
            Err(e) => {
                return self.fail(idx, Status::NoResources, &e.to_string(), false);
            }
        };
        let info = qp_info(
            self.nic.address(),
            qp.qpn,
            qp.psn,
            self.cfg.credits,
            self.cfg.eager_max,
        );
        let (local_key, signature) = (self.local_key.clone(), self.signature.clone());
        let nonce = self.auth.as_ref().map(|_| auth::nonce());
        let Some(c) = conn!(self, idx) else { return };
        let a = c.attempt.as_ref().expect("a connector has an attempt");
        let hello = Hello {
            from_key: local_key,
            to_key: a.dial.key().to_string(),
            signature,
            data: a.data.clone(),
            qp: info,
            nonce,
        }
        .emit();
        c.nonce = nonce;
        c.qp = Some(qp);
        c.stage = Stage::Hello;
        self.say(idx, &hello);
    }

    /// The connector got its answer.
    pub(super) fn on_answer(&mut self, idx: usize, answer: Answer) {
        if !answer.accept {
            let wrong_key = answer.reason.starts_with("wrong key");
            if wrong_key {
                return self.next_attempt(idx, &answer.reason, true);
            }
            let Some(mut c) = self.take(idx) else { return };
            if let Some(mut irb) = c.attempt.take().and_then(|mut a| a.irb.take()) {
                irb.clear_segments();
                if irb.attach(&answer.data).is_err() {
                    log::error!("verbs: could not attach reply data");
                }
                irb.set_detail(&answer.reason);
                // The application's refusal is `Rejected` (its reply data goes up); the
                // device's own refusals carry their reason.
                let status = if answer.reason.starts_with("filter signature") {
                    Status::Mismatch
                } else if answer.reason == "rejected by the application" {
                    Status::Rejected
                } else {
                    Status::Invalid
                };
                irb.complete(status);
            }
            return;
        }
        if self.auth.is_some() && !conn!(self, idx).is_some_and(|c| c.proven) {
            let why = "the listener accepted without proving it holds the authentication key; this process requires authentication";
            return self.fail(idx, Status::Invalid, why, false);
        }
        let (eager_max, credits) = (self.cfg.eager_max, self.cfg.credits);
        let mine = {
            let Some(c) = conn!(self, idx) else { return };
            let Some(qp) = c.qp.as_ref() else { return };
            (qp.qpn, qp.psn)
        };
        let local = qp_info(self.nic.address(), mine.0, mine.1, credits, eager_max);
        let as_hello = Hello {
            from_key: String::new(),
            to_key: String::new(),
            signature: self.signature.clone(),
            data: vec![],
            qp: answer.qp,
            nonce: None,
        };
        let agreed = match bootstrap::agree(&local, &self.signature, &as_hello) {
            Ok(a) => a,
            Err(e) => return self.fail(idx, Status::Protocol, &e.to_string(), false),
        };
        if let Err(e) = self.nic.connect_qp(mine.0, mine.1, &remote_of(&answer.qp)) {
            return self.fail(idx, Status::Unreachable, &e.to_string(), false);
        }
        let ep = Endpoint::new(self.endpoint_config(agreed.credits, agreed.eager_max));
        let Some(c) = conn!(self, idx) else { return };
        c.ep = Some(ep);
        c.stage = Stage::Open;
        c.deadline = None;
        let irb = c.attempt.take().and_then(|mut a| a.irb.take());
        log::debug!(
            "verbs: connected to {} (queue pair {})",
            c.peer,
            answer.qp.qpn
        );
        self.say(idx, &Control::Ready.emit());
        if let Some(mut irb) = irb {
            irb.clear_segments();
            if irb.attach(&answer.data).is_err() {
                log::error!("verbs: could not attach reply data");
            }
            irb.complete(Status::Ok);
        }
    }

    pub(super) fn endpoint_config(&self, credits: u32, eager_max: u32) -> proto::Config {
        proto::Config {
            eager_max: eager_max as usize,
            credits,
            max_fragment: self.cfg.max_fragment,
            max_queued: 4096,
            max_reads: 256,
        }
    }

    // ----- accepting -----

    pub(super) fn accept_all(&mut self) {
        loop {
            let Some(l) = self.listener.as_ref() else {
                return;
            };
            match l.accept() {
                Ok((sock, peer)) => {
                    // Every connection counts, bootstrapping ones too (a flood of sockets that
                    // never say hello cannot take more than the limit).
                    if self.open_conns() >= self.max_conns() {
                        log::warn!(
                            "verbs: refusing {peer}: {} connections, the most allowed (max_connections {}, or what the completion queue of {} entries holds)",
                            self.open_conns(),
                            self.cfg.max_connections,
                            self.cfg.cq_entries
                        );
                        continue;
                    }
                    self.tune(&sock);
                    let mut c = Conn::new(sock, peer, Stage::Accepted, 0);
                    c.deadline = Some(Instant::now() + self.cfg.connect_timeout);
                    if let Err(e) = self.insert(c) {
                        log::error!("verbs: cannot register a socket: {e}");
                    }
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("verbs: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Refuses a connector (with `data`, the application's reply when it is the one
    /// refusing) and lingers until it has read the answer.
    pub(super) fn refuse_with(&mut self, idx: usize, reason: &str, data: Vec<u8>) {
        let answer = Answer {
            accept: false,
            reason: reason.chars().take(bootstrap::MAX_REASON).collect(),
            data,
            qp: QpInfo::none(),
        }
        .emit();
        self.say(idx, &answer);
        if let Some(c) = conn!(self, idx) {
            c.stage = Stage::Lingering;
            c.deadline = Some(Instant::now() + LINGER);
        }
    }

    /// Refuses a connector with `reason`.
    pub(super) fn refuse(&mut self, idx: usize, reason: &str) {
        self.refuse_with(idx, reason, Vec::new());
    }

    /// A hello arrived: check it, make the queue pair, and ask the application.
    pub(super) fn on_hello(&mut self, idx: usize, hello: Hello) {
        if hello.to_key != self.local_key {
            let why = format!("wrong key: this is '{}'", self.local_key);
            return self.refuse(idx, &why);
        }
        match (&self.auth, hello.nonce) {
            (Some(key), Some(theirs)) => {
                // Prove this side first; the connector's proof comes back before anything
                // of its hello is taken further.
                let mine = auth::nonce();
                let proof = key.prove(
                    Role::Listener,
                    &Transcript {
                        connector_nonce: &theirs,
                        listener_nonce: &mine,
                        from_key: &hello.from_key,
                        to_key: &hello.to_key,
                        signature: &hello.signature,
                    },
                );
                let record = auth::challenge_record(bootstrap::VERSION, &mine, &proof);
                let Some(c) = conn!(self, idx) else { return };
                c.nonce = Some(mine);
                c.hello = Some(hello);
                c.stage = Stage::Proving;
                return self.say(idx, &record);
            }
            (Some(_), None) => {
                let peer = conn!(self, idx)
                    .map(|c| c.peer.to_string())
                    .unwrap_or_default();
                log::warn!(
                    "verbs: refusing {peer}: it does not authenticate, and this process requires it"
                );
                return self.refuse(
                    idx,
                    "this process requires authentication with a shared key; give the connecting process the same key (verbs parameter auth_key_file or VMI_AUTH_KEY_FILE)",
                );
            }
            (None, Some(_)) => {
                return self.refuse(
                    idx,
                    "this process does not use authentication; give it the same key as the connecting process, or remove the key there",
                );
            }
            (None, None) => {}
        }
        self.admit(idx, hello);
    }

    /// The connector's proof of an authenticating hello.
    pub(super) fn on_proof(&mut self, idx: usize, proof: &[u8]) {
        let Some(c) = conn!(self, idx) else { return };
        let (Some(hello), Some(mine), Some(key)) = (c.hello.take(), c.nonce, self.auth.as_ref())
        else {
            return;
        };
        let Some(theirs) = hello.nonce else { return };
        let t = Transcript {
            connector_nonce: &theirs,
            listener_nonce: &mine,
            from_key: &hello.from_key,
            to_key: &hello.to_key,
            signature: &hello.signature,
        };
        if !key.verify(Role::Connector, &t, proof) {
            log::warn!(
                "verbs: refusing {}: it failed authentication (it does not hold this process's key)",
                c.peer
            );
            return self.refuse(
                idx,
                "authentication failed: the connecting process does not hold this process's key",
            );
        }
        self.admit(idx, hello);
    }

    /// A hello whose key matched (and whose sender proved itself, with authentication): check
    /// the rest, make the queue pair, and ask the application.
    pub(super) fn admit(&mut self, idx: usize, hello: Hello) {
        if hello.data.len() > self.cfg.max_connect_data as usize {
            let why = format!(
                "connect data of {} bytes is over this side's max_connect_data {}",
                hello.data.len(),
                self.cfg.max_connect_data
            );
            return self.refuse(idx, &why);
        }
        let local = qp_info(
            self.nic.address(),
            0,
            0,
            self.cfg.credits,
            self.cfg.eager_max,
        );
        if let Err(e) = bootstrap::agree(&local, &self.signature, &hello) {
            return self.refuse(idx, &e.to_string());
        }
        let qp = match self.make_qp(idx) {
            Ok(q) => q,
            Err(e) => {
                log::error!("verbs: no queue pair for {}: {e}", hello.from_key);
                return self.refuse(idx, &format!("the acceptor has no queue pair: {e}"));
            }
        };
        let vmi = self.host.conn_new();
        self.by_vmi.insert(vmi, idx);
        let Some(c) = conn!(self, idx) else { return };
        c.vmi = vmi;
        c.qp = Some(qp);
        c.stage = Stage::Requested;
        c.deadline = None;
        let host = c.peer.ip().to_string();
        let (from, data) = (hello.from_key.clone(), hello.data.clone());
        c.hello = Some(hello);
        self.budget_left = self.budget_left.saturating_sub(1);
        let Some(mut irb) = self.host.alloc_irb(Op::ConnectRequest, vmi) else {
            return self.fail(idx, Status::NoResources, "out of IRBs", false);
        };
        irb.set_peer(&host, &from);
        if irb.attach(&data).is_err() {
            log::error!("verbs: could not attach connect data");
        }
        log::debug!("verbs: connect request from '{from}' at {host}");
        irb.pass();
    }

    /// The application accepted or rejected.
    pub(super) fn answer(
        &mut self,
        idx: usize,
        accept: bool,
        reply: Vec<u8>,
    ) -> Result<(), String> {
        let (eager_max, credits) = (self.cfg.eager_max, self.cfg.credits);
        let Some(c) = conn!(self, idx) else {
            return Err("the connecting peer went away".into());
        };
        if c.stage != Stage::Requested {
            return Err("the connection is not waiting for an answer".into());
        }
        if !accept {
            let vmi = std::mem::take(&mut c.vmi);
            self.by_vmi.remove(&vmi);
            self.refuse_with(idx, "rejected by the application", reply);
            return Ok(());
        }
        let (Some(hello), Some(qp)) = (c.hello.take(), c.qp.as_ref()) else {
            return Err("the connection has no queue pair".into());
        };
        let (qpn, qpsn) = (qp.qpn, qp.psn);
        let local = qp_info(self.nic.address(), qpn, qpsn, credits, eager_max);
        let agreed =
            bootstrap::agree(&local, &self.signature, &hello).map_err(|e| e.to_string())?;
        if let Err(e) = self.nic.connect_qp(qpn, qpsn, &remote_of(&hello.qp)) {
            let why = e.to_string();
            self.refuse(idx, &why);
            return Err(why);
        }
        let ep = Endpoint::new(self.endpoint_config(agreed.credits, agreed.eager_max));
        let answer = Answer {
            accept: true,
            reason: String::new(),
            data: reply,
            qp: local,
        }
        .emit();
        let Some(c) = conn!(self, idx) else {
            return Err("the connecting peer went away".into());
        };
        c.ep = Some(ep);
        c.stage = Stage::AwaitReady;
        c.deadline = Some(Instant::now() + self.cfg.connect_timeout);
        self.say(idx, &answer);
        Ok(())
    }

    // ----- the side channel -----

    pub(super) fn on_readable(&mut self, idx: usize) {
        let Some(c) = conn!(self, idx) else { return };
        let mut buf = [0u8; 4096];
        loop {
            match c.sock.read(&mut buf) {
                Ok(0) => {
                    c.eof = true;
                    break;
                }
                Ok(n) => {
                    c.rx.extend_from_slice(&buf[..n]);
                    if c.rx.len() > MAX_SIDE {
                        return self.fail(
                            idx,
                            Status::Protocol,
                            "the peer sent more on the side channel than any message holds",
                            true,
                        );
                    }
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    c.eof = true;
                    log::debug!("verbs: side channel to {}: {e}", c.peer);
                    break;
                }
            }
        }
        self.advance(idx);
    }

    /// Parses what the side channel brought, as far as the stage and the budget allow.
    pub(super) fn advance(&mut self, idx: usize) {
        loop {
            let Some(c) = conn!(self, idx) else { return };
            match c.stage {
                Stage::Dialing => return,
                Stage::Hello if c.rx.starts_with(&auth::CHALLENGE_MAGIC) => {
                    if c.rx.len() < auth::CHALLENGE_LEN {
                        if c.eof {
                            return self.next_attempt(
                                idx,
                                "the peer closed while challenging",
                                false,
                            );
                        }
                        return;
                    }
                    let challenge = auth::parse_challenge(&c.rx, bootstrap::VERSION);
                    c.rx.drain(..auth::CHALLENGE_LEN);
                    let key_name = c
                        .attempt
                        .as_ref()
                        .map(|a| a.dial.key().to_string())
                        .unwrap_or_default();
                    let (Some(key), Some(mine), Some((theirs, proof))) =
                        (self.auth.as_ref(), c.nonce, challenge)
                    else {
                        let why = format!(
                            "'{key_name}' at {} requires authentication; give this process the same key (verbs parameter auth_key_file or VMI_AUTH_KEY_FILE)",
                            c.peer
                        );
                        return self.fail(idx, Status::Invalid, &why, false);
                    };
                    let t = Transcript {
                        connector_nonce: &mine,
                        listener_nonce: &theirs,
                        from_key: &self.local_key,
                        to_key: &key_name,
                        signature: &self.signature,
                    };
                    if !key.verify(Role::Listener, &t, &proof) {
                        let why = format!(
                            "the process at {} could not prove it holds the authentication key (another key, or an impostor)",
                            c.peer
                        );
                        return self.fail(idx, Status::Invalid, &why, false);
                    }
                    let record =
                        auth::proof_record(bootstrap::VERSION, &key.prove(Role::Connector, &t));
                    c.proven = true;
                    self.say(idx, &record);
                }
                Stage::Hello => match Answer::parse(&c.rx) {
                    Ok(Ok((a, used))) => {
                        c.rx.drain(..used);
                        self.on_answer(idx, a);
                    }
                    Ok(Err(_)) if c.eof => {
                        return self.next_attempt(idx, "the peer closed before answering", false);
                    }
                    Ok(Err(_)) => return,
                    // Not a verbs listener (another program holds the port): try the next.
                    Err(e) => return self.next_attempt(idx, &e.to_string(), true),
                },
                Stage::Proving => {
                    if c.rx.len() < auth::PROOF_RECORD_LEN {
                        if c.eof {
                            self.take(idx);
                        }
                        return;
                    }
                    if self.budget_left == 0 {
                        return; // the request goes up at a later poll
                    }
                    let proof = auth::parse_proof(&c.rx, bootstrap::VERSION);
                    c.rx.drain(..auth::PROOF_RECORD_LEN);
                    match proof {
                        Some(p) => self.on_proof(idx, &p),
                        None => return self.refuse(idx, "a malformed authentication proof"),
                    }
                }
                Stage::Accepted => {
                    if self.budget_left == 0 {
                        return;
                    }
                    match Hello::parse(&c.rx) {
                        Ok(Ok((h, used))) => {
                            c.rx.drain(..used);
                            self.on_hello(idx, h);
                        }
                        Ok(Err(_)) if c.eof => {
                            self.take(idx);
                            return;
                        }
                        Ok(Err(_)) => return,
                        Err(e) => {
                            log::warn!("verbs: bad hello from {}: {e}", c.peer);
                            return self.refuse(idx, &e.to_string());
                        }
                    }
                }
                Stage::Requested | Stage::AwaitReady | Stage::Open => match Control::parse(&c.rx) {
                    Ok(Some(ctl)) => {
                        c.rx.drain(..bootstrap::CONTROL);
                        match (c.stage, ctl) {
                            (Stage::AwaitReady, Control::Ready) => {
                                c.stage = Stage::Open;
                                c.deadline = None;
                                self.retry_waiting(idx);
                            }
                            (Stage::Open, Control::Bye { frames }) => {
                                c.bye_at = Some(frames);
                            }
                            (_, ctl) => {
                                let why = format!("the peer said {ctl:?} out of turn");
                                return self.fail(idx, Status::Protocol, &why, true);
                            }
                        }
                    }
                    Ok(None) if c.eof && c.bye_at.is_none() => {
                        return self.fail(
                            idx,
                            Status::ConnectionLost,
                            "the peer closed the side channel without a bye (it exited or failed)",
                            true,
                        );
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let why = format!("side channel: {e}");
                        return self.fail(idx, Status::Protocol, &why, true);
                    }
                },
                Stage::Lingering => {
                    c.rx.clear();
                    if c.eof && c.tx.is_empty() {
                        self.take(idx);
                    }
                    return;
                }
            }
        }
    }
}
