//! Dialing a peer by host and key: the key-derived port sequence a connect walks, what each
//! failed port taught it, and when it gives up (with a message that says what to check).
//! No I/O: the device opens the sockets and reports back. Shared by the transports that find
//! peers over TCP (the TCP device, the verbs device's side channel).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::Status;

/// A connect in progress: the addresses still to try and what went wrong so far.
#[derive(Debug)]
pub struct Dial {
    key: String,
    host: String,
    addrs: Vec<SocketAddr>,
    next: usize,
    give_up: Instant,
    timeout: Duration,
    refused: usize,
    wrong_key: usize,
    last_error: String,
}

impl Dial {
    /// Dials `key` at `host` over `addrs` (in order), giving up `timeout` after `now`.
    pub fn new(
        key: &str,
        host: &str,
        addrs: Vec<SocketAddr>,
        now: Instant,
        timeout: Duration,
    ) -> Dial {
        Dial {
            key: key.into(),
            host: host.into(),
            addrs,
            next: 0,
            give_up: now + timeout,
            timeout,
            refused: 0,
            wrong_key: 0,
            last_error: "no port tried".into(),
        }
    }

    /// The key dialed.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// When the whole connect gives up.
    pub fn give_up(&self) -> Instant {
        self.give_up
    }

    /// The next address to try, or why the connect is over (status and detail).
    pub fn next_addr(&mut self, now: Instant) -> Result<SocketAddr, (Status, String)> {
        if now >= self.give_up {
            return Err((
                Status::Timeout,
                format!(
                    "no answer from key '{}' at {} within {} ms (last: {})",
                    self.key,
                    self.host,
                    self.timeout.as_millis(),
                    self.last_error
                ),
            ));
        }
        match self.addrs.get(self.next) {
            Some(a) => Ok(*a),
            None => {
                let first = self.addrs.first().map(|a| a.port()).unwrap_or(0);
                let last = self.addrs.last().map(|a| a.port()).unwrap_or(0);
                Err((
                    Status::Unreachable,
                    format!(
                        "no process with key '{}' listens at {} (tried ports {first}-{last}: {} refused, {} other keys; last: {}); is the receiver running there with that key and the same specfile?",
                        self.key, self.host, self.refused, self.wrong_key, self.last_error
                    ),
                ))
            }
        }
    }

    /// The address returned by `next_addr` failed: `refused` when nothing listened there,
    /// `wrong_key` when a vmi process with another key did.
    pub fn failed(&mut self, addr: &str, why: &str, refused: bool, wrong_key: bool) {
        self.last_error = format!("{addr}: {why}");
        self.refused += refused as usize;
        self.wrong_key += wrong_key as usize;
        self.next += 1;
    }
}

/// FNV-1a, for a stable key-to-port mapping across processes and builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The ports a key's listener tries, in order: `count` consecutive ports starting at a
/// key-derived offset inside `[base, base + span)`, wrapping inside that range.
pub fn probe_ports(key: &str, base: u16, span: u16, count: u16) -> Vec<u16> {
    let span = span.max(1) as u64;
    let start = fnv1a(key.as_bytes()) % span;
    (0..count.min(span as u16) as u64)
        .map(|i| base.saturating_add(((start + i) % span) as u16))
        .collect()
}

/// Checks the key-derived port range parameters (`port_base`, `port_span`, `probe_count`).
pub fn check_port_range(base: u16, span: u16, count: u16) -> Result<(), String> {
    if span == 0 || count == 0 {
        return Err("parameters 'port_span' and 'probe_count' must be at least 1".into());
    }
    if base as u32 + span as u32 > 65536 {
        return Err(format!(
            "parameters 'port_base' ({base}) + 'port_span' ({span}) go past port 65535"
        ));
    }
    Ok(())
}

/// Whether `host` (`host`, `host:port`, `[v6]:port`) names a host a connect could try.
pub fn check_host(host: &str) -> Result<(), String> {
    let (h, _) = split_host_port(host)?;
    if h.is_empty() && !host.is_empty() {
        return Err(format!("'{host}' names no host"));
    }
    Ok(())
}

/// Splits `host:port` (or `[v6]:port`) from a bare host.
pub fn split_host_port(host: &str) -> Result<(String, Option<u16>), String> {
    if let Some(rest) = host.strip_prefix('[') {
        let (h, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("'{host}': missing ']'"))?;
        return match tail.strip_prefix(':') {
            Some(p) => Ok((
                h.to_string(),
                Some(p.parse().map_err(|_| format!("'{host}': bad port '{p}'"))?),
            )),
            None if tail.is_empty() => Ok((h.to_string(), None)),
            None => Err(format!("'{host}': unexpected '{tail}' after ']'")),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("'{host}': bad port '{p}'"))?;
            if port == 0 {
                return Err(format!("'{host}': port 0"));
            }
            Ok((h.to_string(), Some(port)))
        }
        _ => Ok((host.to_string(), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_walks_the_ports_then_says_why_it_gave_up() {
        let t0 = Instant::now();
        let addrs: Vec<SocketAddr> = ["127.0.0.1:7001", "127.0.0.1:7002"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let mut d = Dial::new("rk", "localhost", addrs.clone(), t0, Duration::from_secs(5));
        assert_eq!(d.next_addr(t0), Ok(addrs[0]));
        d.failed("127.0.0.1:7001", "connection refused", true, false);
        assert_eq!(d.next_addr(t0), Ok(addrs[1]));
        d.failed(
            "127.0.0.1:7002",
            "this port belongs to key 'x'",
            false,
            true,
        );
        let (st, why) = d.next_addr(t0).unwrap_err();
        assert_eq!(st, Status::Unreachable);
        assert!(
            why.contains("no process with key 'rk' listens at localhost")
                && why.contains("7001-7002")
                && why.contains("1 refused, 1 other keys"),
            "{why}"
        );
        let mut d = Dial::new("rk", "h", addrs, t0, Duration::from_millis(10));
        let (st, why) = d.next_addr(t0 + Duration::from_millis(10)).unwrap_err();
        assert_eq!(st, Status::Timeout);
        assert!(why.contains("within 10 ms"), "{why}");
    }

    #[test]
    fn probe_sequence_is_stable_and_in_range() {
        let p = probe_ports("recvkey", 10000, 20000, 16);
        assert_eq!(p.len(), 16);
        assert_eq!(
            p,
            probe_ports("recvkey", 10000, 20000, 16),
            "same key, same ports"
        );
        assert!(p.iter().all(|&x| (10000..30000).contains(&x)));
        assert_ne!(p[0], probe_ports("sendkey", 10000, 20000, 16)[0]);
        let w = probe_ports("x", 60000, 10, 20);
        assert_eq!(w.len(), 10, "never more ports than the span");
    }

    #[test]
    fn host_port_parsing() {
        assert_eq!(
            split_host_port("localhost").unwrap(),
            ("localhost".into(), None)
        );
        assert_eq!(
            split_host_port("127.0.0.1:9000").unwrap(),
            ("127.0.0.1".into(), Some(9000))
        );
        assert_eq!(split_host_port("[::1]:9").unwrap(), ("::1".into(), Some(9)));
        assert_eq!(split_host_port("::1").unwrap(), ("::1".into(), None));
        assert!(split_host_port("h:x").is_err());
        assert!(split_host_port("h:0").is_err());
    }
}
