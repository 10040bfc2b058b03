//! Multi-rail connections (VMI 2.1's striping and failover) over the engine's connections.
//!
//! With a `<rails>` block in the specfile, a connection the application opens is a *bond*:
//! its first rail is the connection the application asked for (over the first transport that
//! reaches the peer; its `ConnId` is the bond's for good), and the accepting side offers its
//! other rails in the accept reply (a token and, per rail, the address its transport listens
//! on). The connecting side then opens one more connection per offered rail, over that rail's
//! transport, with the token as connect data; the accepting side matches the token and adds
//! the rail without asking the application. Every message on a rail is a `bond::wire` record;
//! `bond::sender` and `bond::receiver` do the rest (no I/O there). The application sees one
//! connection: its sends complete when the peer acknowledged them, its fragments arrive in
//! order exactly once, and it hears `disconnected` only when the last rail is gone.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::assembly::PlannedRails;
use crate::bond::receiver::{Place, ProtoError, Ready, Receiver, ReceiverConfig};
use crate::bond::sender::{Full, Lost, RailTx, Sender, SenderConfig};
use crate::bond::wire::{HEADER, Record};
use crate::buffer::Buffer;
use crate::conn::{ConnId, SendKind};
use crate::ctx::Ctx;
use crate::error::VmiError;
use crate::handler::{ConnectRequest, Decision, Disconnect, Handler, Recv, SendCompletion};
use crate::ops::Core;
use crate::slab::Slab;
use crate::slot::{DevIndex, Purpose, Slot};
use crate::status::Status;

/// Connect data of a bond's first connection starts with this (and so does its reply).
pub(crate) const BOND_MAGIC: &[u8; 5] = b"VMIB\x01";
/// Connect data of a rail joining a bond.
const JOIN_MAGIC: &[u8; 5] = b"VMIJ\x01";
const TOKEN: usize = 16;

/// One rail of a bond as the application sees it (`Vmi::rails`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RailInfo {
    /// The transport instance.
    pub device: String,
    /// `up`, `joining`, `down` (never opened or failed).
    pub state: &'static str,
    /// Payload bytes whose sends completed on this rail.
    pub bytes: u64,
    /// Chunks handed to this rail.
    pub chunks: u64,
    /// Chunks this rail carried again for a rail that failed, or that the peer lost.
    pub resent: u64,
    /// Bandwidth measured on this rail (bytes per second while it had bytes in flight).
    pub bandwidth: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RailState {
    Down,
    Joining,
    Up,
}

struct Rail {
    conn: Option<ConnId>,
    state: RailState,
    device: DevIndex,
    /// Chunks sent on this rail and not yet acknowledged: (the rail's message number, the
    /// fragment, the chunk's offset), to map the peer's "message n failed" to a chunk.
    sent: VecDeque<(u64, u64, u64)>,
}

/// What an application send becomes once the peer acknowledged it.
struct Pending {
    token: u64,
    bufs: Vec<Buffer>,
    inline: bool,
}

struct Bond {
    id: ConnId,
    key: String,
    token: [u8; TOKEN],
    rails: Vec<Rail>,
    tx: Sender<Pending>,
    rx: Receiver,
    /// The application disconnected it.
    closing: bool,
    /// An acknowledgement is owed to the peer.
    ack_owed: bool,
    /// Why the last rail closed.
    last: Option<Disconnect>,
}

impl Bond {
    fn live_rails(&self) -> usize {
        self.rails
            .iter()
            .filter(|r| r.state != RailState::Down)
            .count()
    }

    /// Rail `idx` opened: chunks may go on it.
    fn rail_up(&mut self, idx: usize, name: &str) {
        self.rails[idx].state = RailState::Up;
        self.tx.rail_up(idx);
        log::info!(
            "{}: rail '{name}' is up ({} up)",
            self.id,
            self.tx.rails_up()
        );
    }

    /// The first rail that is up: where acknowledgements go.
    fn control_rail(&self) -> Option<ConnId> {
        self.rails
            .iter()
            .find(|r| r.state == RailState::Up)
            .and_then(|r| r.conn)
    }
}

/// The bonds of a process (empty and inert without a `<rails>` block).
pub(crate) struct Rails {
    plan: Option<PlannedRails>,
    names: Vec<String>,
    bonds: HashMap<u64, Bond>,
    /// Rail connection → (bond, rail index).
    by_rail: HashMap<u64, (u64, usize)>,
    /// Token → bond, on the accepting side.
    tokens: HashMap<[u8; TOKEN], u64>,
    /// Rails this process is opening, until their connect finishes: rail connection → bond.
    joining: HashMap<u64, u64>,
    epoch: Instant,
}

impl Rails {
    pub(crate) fn new(plan: Option<PlannedRails>, names: Vec<String>) -> Rails {
        Rails {
            plan,
            names,
            bonds: HashMap::new(),
            by_rail: HashMap::new(),
            tokens: HashMap::new(),
            joining: HashMap::new(),
            epoch: Instant::now(),
        }
    }

    /// True when the specfile declares rails.
    #[inline]
    pub(crate) fn on(&self) -> bool {
        self.plan.is_some()
    }

    /// True when no bond needs the poll's attention.
    #[inline]
    pub(crate) fn idle(&self) -> bool {
        self.bonds.is_empty()
    }

    /// Bonds (each needs every poll: chunks to pump, acknowledgements to send).
    pub(crate) fn busy(&self) -> usize {
        self.bonds.len()
    }

    /// True for a bond's `ConnId`.
    pub(crate) fn is_bond(&self, conn: ConnId) -> bool {
        self.bonds.contains_key(&conn.raw())
    }

    /// True for a rail's connection (a bond's first rail included).
    pub(crate) fn is_rail(&self, conn: ConnId) -> bool {
        self.by_rail.contains_key(&conn.raw())
    }

    /// The peer's key of a bond.
    pub(crate) fn peer_key(&self, conn: ConnId) -> Option<&str> {
        self.bonds.get(&conn.raw()).map(|b| b.key.as_str())
    }

    /// The rails of a bond.
    pub(crate) fn info(&self, conn: ConnId) -> Option<Vec<RailInfo>> {
        let b = self.bonds.get(&conn.raw())?;
        let tx: &[RailTx] = b.tx.rails();
        Some(
            b.rails
                .iter()
                .zip(tx)
                .zip(&self.names)
                .map(|((r, t), name)| RailInfo {
                    device: name.clone(),
                    state: match r.state {
                        RailState::Up => "up",
                        RailState::Joining => "joining",
                        RailState::Down => "down",
                    },
                    bytes: t.bytes,
                    chunks: t.chunks,
                    resent: t.resent,
                    bandwidth: t.bandwidth(),
                })
                .collect(),
        )
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos().min(u64::MAX as u128) as u64
    }

    fn rail_index(&self, transport: DevIndex) -> Option<usize> {
        self.plan
            .as_ref()?
            .devices
            .iter()
            .position(|&d| d == transport as usize)
    }

    fn new_bond(&mut self, id: ConnId, key: &str, max_fragment: u64) -> Bond {
        let plan = self.plan.as_ref().expect("rails are on");
        // A chunk and its header must fit in one fragment of every transport.
        let chunk = if max_fragment > HEADER as u64 {
            plan.chunk.min(max_fragment - HEADER as u64)
        } else {
            plan.chunk
        };
        let max_fragment = if max_fragment > 0 {
            max_fragment
        } else {
            u32::MAX as u64
        };
        let cfg = SenderConfig {
            chunk,
            stripe_min: plan.stripe_min,
            ..SenderConfig::default()
        };
        Bond {
            id,
            key: key.to_string(),
            token: vmi_device::auth::nonce()[..TOKEN]
                .try_into()
                .expect("a nonce is at least 16 bytes"),
            rails: plan
                .devices
                .iter()
                .map(|&d| Rail {
                    conn: None,
                    state: RailState::Down,
                    device: d as DevIndex,
                    sent: VecDeque::new(),
                })
                .collect(),
            tx: Sender::new(cfg, plan.devices.len()),
            rx: Receiver::new(ReceiverConfig {
                max_fragment,
                // Fragments being reassembled or waiting for their turn: what the rails'
                // windows hold, and room for two of the largest.
                max_pending_bytes: (128u64 << 20).max(max_fragment.saturating_mul(2)),
                max_ahead: cfg.max_unacked as u64,
            }),
            closing: false,
            ack_owed: false,
            last: None,
        }
    }
}

/// A bond the application has not disconnected.
fn open_bond(bonds: &mut HashMap<u64, Bond>, conn: ConnId) -> Result<&mut Bond, VmiError> {
    let b = bonds
        .get_mut(&conn.raw())
        .ok_or(VmiError::UnknownConnection(conn))?;
    if b.closing {
        return Err(VmiError::NotOpen {
            conn,
            state: "closing",
        });
    }
    Ok(b)
}

// ---- connecting ----

/// The connect data of a bond's first connection.
pub(crate) fn wrap_connect_data(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(BOND_MAGIC.len() + data.len());
    v.extend_from_slice(BOND_MAGIC);
    v.extend_from_slice(data);
    v
}

/// A connect this process issued finished (after the engine's own bookkeeping). Returns the
/// application's part of the reply data when the application is to hear of it, `None` when
/// the connect was a rail joining a bond (handled here).
pub(crate) fn connected(
    core: &mut Core,
    handler: &mut dyn Handler,
    conn: ConnId,
    status: Status,
    reply: &[u8],
) -> Option<Vec<u8>> {
    if let Some(bond) = core.rails.joining.remove(&conn.raw()) {
        let gone = core.rails.bonds.get(&bond).is_none_or(|b| b.closing);
        if gone {
            // The bond closed while this rail was opening: close the rail quietly.
            core.rails.by_rail.remove(&conn.raw());
            if status == Status::Ok {
                close_quietly(core, conn);
            }
            return None;
        }
    }
    if let Some(&(bond, idx)) = core.rails.by_rail.get(&conn.raw()) {
        let b = core.rails.bonds.get_mut(&bond)?;
        if status == Status::Ok {
            b.rail_up(idx, &core.rails.names[idx]);
        } else {
            log::warn!(
                "{}: rail '{}' could not be opened ({status}); the connection goes on without it",
                b.id,
                core.rails.names[idx]
            );
            b.rails[idx].state = RailState::Down;
            b.rails[idx].conn = None;
            core.rails.by_rail.remove(&conn.raw());
            if b.live_rails() == 0 {
                end_bond(core, handler, bond);
            }
        }
        return None;
    }
    let app = reply.strip_prefix(BOND_MAGIC.as_slice());
    if status != Status::Ok {
        return Some(app.unwrap_or(reply).to_vec());
    }
    let Some(rest) = app else {
        log::error!(
            "{conn}: the peer accepted without rails; closing (both sides need the same <rails> block)"
        );
        return Some(reply.to_vec());
    };
    let Some((token, offers, app)) = parse_offer(rest) else {
        log::error!("{conn}: the peer's rail offer is malformed; the connection has one rail");
        return Some(rest.to_vec());
    };
    let transport = core.engine.conns().transport_of(conn);
    let (Some(transport), Some(key)) = (
        transport,
        core.engine.conns().peer_key(conn).map(str::to_string),
    ) else {
        return Some(app.to_vec());
    };
    let host = core
        .engine
        .conns()
        .peer_host(conn)
        .unwrap_or_default()
        .to_string();
    let Some(first) = core.rails.rail_index(transport) else {
        return Some(app.to_vec());
    };
    let max = core.engine.top_caps().max_fragment;
    let mut b = core.rails.new_bond(conn, &key, max);
    b.token = token;
    b.rails[first].conn = Some(conn);
    b.rails[first].state = RailState::Up;
    b.tx.rail_up(first);
    core.rails.by_rail.insert(conn.raw(), (conn.raw(), first));
    // Open the other rails the peer offered.
    let mut joins = Vec::new();
    for (idx, addr) in offers {
        if idx == first || idx >= b.rails.len() {
            continue;
        }
        let target = rail_host(&host, &addr);
        let device = b.rails[idx].device;
        let rc = core
            .engine
            .conns_mut()
            .connect_issued(device, &target, &key);
        b.rails[idx].conn = Some(rc);
        b.rails[idx].state = RailState::Joining;
        core.rails.by_rail.insert(rc.raw(), (conn.raw(), idx));
        core.rails.joining.insert(rc.raw(), conn.raw());
        let mut data = Vec::with_capacity(JOIN_MAGIC.len() + 1 + TOKEN);
        data.extend_from_slice(JOIN_MAGIC);
        data.push(idx as u8);
        data.extend_from_slice(&token);
        let data = crate::cross::wrap(crate::cross::PLAIN, 0, &data);
        log::info!(
            "{conn}: opening rail '{}' to {target}",
            core.rails.names[idx]
        );
        joins.push(core.connect_slot(rc, device, &target, &key, &data, 0));
    }
    core.rails.bonds.insert(conn.raw(), b);
    core.deferred.extend(joins);
    Some(app.to_vec())
}

/// Where a rail connects: the address the peer's transport offered (`ip:port`), the port
/// alone on the host the first rail reached (`:port`), or that host (empty: transports that
/// find the peer by key).
fn rail_host(first_host: &str, offer: &str) -> String {
    if offer.is_empty() {
        return first_host.to_string();
    }
    if let Some(port) = offer.strip_prefix(':') {
        let host = match first_host.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h,
            _ => first_host,
        };
        return format!("{host}:{port}");
    }
    offer.to_string()
}

/// Reply data of an accepted bond: magic, token, rail count, then per rail its index and
/// its offered address; the application's reply follows.
fn offer(token: &[u8; TOKEN], rails: &[(usize, String)], app: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(BOND_MAGIC);
    v.extend_from_slice(token);
    v.push(rails.len() as u8);
    for (i, a) in rails {
        let a = &a.as_bytes()[..a.len().min(255)];
        v.push(*i as u8);
        v.push(a.len() as u8);
        v.extend_from_slice(a);
    }
    v.extend_from_slice(app);
    v
}

/// Reads an offer (after the magic); every length is checked.
#[allow(clippy::type_complexity)]
fn parse_offer(b: &[u8]) -> Option<([u8; TOKEN], Vec<(usize, String)>, &[u8])> {
    let token: [u8; TOKEN] = b.get(..TOKEN)?.try_into().ok()?;
    let n = *b.get(TOKEN)? as usize;
    let mut at = TOKEN + 1;
    let mut rails = Vec::with_capacity(n);
    for _ in 0..n {
        let idx = *b.get(at)? as usize;
        let len = *b.get(at + 1)? as usize;
        let addr = std::str::from_utf8(b.get(at + 2..at + 2 + len)?).ok()?;
        rails.push((idx, addr.to_string()));
        at += 2 + len;
    }
    Some((token, rails, &b[at..]))
}

/// A connect request while rails are on: a rail joining a bond is answered here; a bond's
/// first connection goes to the application with the magic taken off, and its acceptance
/// carries the rail offer.
pub(crate) fn request(
    core: &mut Core,
    handler: &mut dyn Handler,
    conn: ConnId,
    transport: DevIndex,
    (key, host): (&str, &str),
    data: &[u8],
) -> (u32, Vec<u8>) {
    let key = key.to_string();
    if let Some(join) = data.strip_prefix(JOIN_MAGIC.as_slice()) {
        return join_request(core, conn, transport, &key, join);
    }
    let Some(app) = data.strip_prefix(BOND_MAGIC.as_slice()) else {
        return (
            crate::abi::VMI_OP_REJECT,
            b"this process uses rails; connect with the same <rails> block in the specfile"
                .to_vec(),
        );
    };
    let decision = {
        let mut req = ConnectRequest {
            conn,
            peer_key: &key,
            peer_host: host,
            data: Slab::from_bytes(app),
            chain: "",
        };
        handler.accept(&mut Ctx::new(core), &mut req)
    };
    match decision {
        Decision::Reject(r) => {
            let mut v = BOND_MAGIC.to_vec();
            v.extend_from_slice(&r);
            (crate::abi::VMI_OP_REJECT, v)
        }
        Decision::Accept(r) => {
            let Some(first) = core.rails.rail_index(transport) else {
                // Over a transport that is no rail: a plain connection, offering nothing.
                return (crate::abi::VMI_OP_ACCEPT, offer(&[0; TOKEN], &[], &r));
            };
            let max = core.engine.top_caps().max_fragment;
            let mut b = core.rails.new_bond(conn, &key, max);
            b.rails[first].conn = Some(conn);
            b.rails[first].state = RailState::Joining;
            let mut offers = Vec::new();
            for (i, r) in b.rails.iter().enumerate() {
                if i == first {
                    continue;
                }
                match core
                    .engine
                    .get_attr(r.device as usize, "rail_address")
                    .as_deref()
                {
                    Some("none") => {}
                    Some(a) => offers.push((i, a.to_string())),
                    None => offers.push((i, String::new())),
                }
            }
            let reply = offer(&b.token, &offers, &r);
            core.rails.tokens.insert(b.token, conn.raw());
            core.rails.by_rail.insert(conn.raw(), (conn.raw(), first));
            core.rails.bonds.insert(conn.raw(), b);
            (crate::abi::VMI_OP_ACCEPT, reply)
        }
    }
}

fn join_request(
    core: &mut Core,
    conn: ConnId,
    transport: DevIndex,
    key: &str,
    join: &[u8],
) -> (u32, Vec<u8>) {
    let refuse = |why: &str| (crate::abi::VMI_OP_REJECT, why.as_bytes().to_vec());
    if join.len() != 1 + TOKEN {
        return refuse("malformed rail join");
    }
    let idx = join[0] as usize;
    let token: [u8; TOKEN] = join[1..].try_into().expect("length checked");
    let Some(&bond) = core.rails.tokens.get(&token) else {
        log::warn!("{conn}: a rail join from '{key}' names no connection of this process; refused");
        return refuse("no such connection");
    };
    let Some(b) = core.rails.bonds.get_mut(&bond) else {
        return refuse("no such connection");
    };
    let ok = b.key == key
        && b.rails.get(idx).is_some_and(|r| {
            r.device == transport && r.state == RailState::Down && r.conn.is_none()
        })
        && !b.closing;
    if !ok {
        log::warn!(
            "{conn}: a rail join from '{key}' for rail {idx} does not fit its connection; refused"
        );
        return refuse("rail join refused");
    }
    b.rails[idx].conn = Some(conn);
    b.rails[idx].state = RailState::Joining;
    core.rails.by_rail.insert(conn.raw(), (bond, idx));
    (crate::abi::VMI_OP_ACCEPT, Vec::new())
}

/// The answer to a connect request went out (accepted or not).
pub(crate) fn answered(core: &mut Core, conn: ConnId, accepted: bool) {
    let Some(&(bond, idx)) = core.rails.by_rail.get(&conn.raw()) else {
        return;
    };
    let closing = core.rails.bonds.get(&bond).is_none_or(|b| b.closing);
    if closing && bond != conn.raw() {
        // A rail that joined a bond already closing (or gone).
        core.rails.by_rail.remove(&conn.raw());
        if let Some(b) = core.rails.bonds.get_mut(&bond) {
            b.rails[idx].conn = None;
            b.rails[idx].state = RailState::Down;
        }
        if accepted {
            close_quietly(core, conn);
        }
        return;
    }
    let Some(b) = core.rails.bonds.get_mut(&bond) else {
        return;
    };
    if accepted {
        b.rail_up(idx, &core.rails.names[idx]);
    } else {
        b.rails[idx].state = RailState::Down;
        b.rails[idx].conn = None;
        core.rails.by_rail.remove(&conn.raw());
        if b.live_rails() == 0 {
            let token = b.token;
            core.rails.bonds.remove(&bond);
            core.rails.tokens.remove(&token);
        }
    }
}

// ---- sending ----

/// An application send on a bond: gathered into one fragment and queued for the rails.
pub(crate) fn send(
    core: &mut Core,
    conn: ConnId,
    bufs: Vec<Buffer>,
    token: u64,
    end: bool,
    inline: bool,
) -> Result<(), VmiError> {
    let max = core.engine.top_caps().max_fragment;
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    if max > 0 && total as u64 > max {
        return Err(VmiError::FragmentTooLarge {
            len: total as u64,
            max,
        });
    }
    // The chunks are ranges of one `Arc`: a shared buffer's own (no copy), else a copy.
    let data: Arc<[u8]> = match bufs.as_slice() {
        [one] => one.shared_whole().unwrap_or_else(|| Arc::from(&one[..])),
        _ => {
            let mut v = Vec::with_capacity(total);
            for b in &bufs {
                v.extend_from_slice(b);
            }
            Arc::from(v)
        }
    };
    open_bond(&mut core.rails.bonds, conn)?;
    // Until the peer acknowledges it, the send counts against the process's sends in flight
    // (so `sends_available` stays true); its chunks do not.
    core.engine
        .reserve_send()
        .map_err(|limit| VmiError::Busy { limit })?;
    let b = core
        .rails
        .bonds
        .get_mut(&conn.raw())
        .expect("checked above");
    let pending = Pending {
        token,
        bufs: if inline { Vec::new() } else { bufs },
        inline,
    };
    if let Err((full, _)) = b.tx.push(data, end, pending) {
        core.engine.release_send();
        return Err(match full {
            Full::Window => VmiError::Busy {
                limit: SenderConfig::default().max_unacked,
            },
            Full::NoRail => VmiError::NotOpen {
                conn,
                state: "connecting",
            },
        });
    }
    pump_bond(core, conn.raw());
    Ok(())
}

/// Hands every chunk that may go now to its rail, and sends the acknowledgements owed.
/// Called from every poll while bonds exist.
pub(crate) fn pump(core: &mut Core) {
    let ids: Vec<u64> = core.rails.bonds.keys().copied().collect();
    for id in ids {
        pump_bond(core, id);
        flush_ack(core, id);
    }
}

fn pump_bond(core: &mut Core, id: u64) {
    loop {
        let now = core.rails.now_ns();
        let Some(b) = core.rails.bonds.get_mut(&id) else {
            return;
        };
        let Some(out) = b.tx.next(now) else {
            return;
        };
        let Some(rail) = b.rails[out.rail].conn else {
            b.tx.unsend(&out);
            return;
        };
        let message = core.engine.conns().tx_messages(rail);
        let header = core.engine.inline_buffer(&out.header);
        let range = out.offset as usize..(out.offset + out.len) as usize;
        let chunk = Buffer::shared_range(out.data.clone(), range);
        let sent = rail_send(core, rail, [header, chunk], out.len, Purpose::RailChunk);
        let b = core.rails.bonds.get_mut(&id).expect("present above");
        match sent {
            Ok(s) => {
                b.rails[out.rail]
                    .sent
                    .push_back((message, out.seq, out.offset));
                core.deferred.push_back(s);
            }
            Err(e) => {
                log::warn!(
                    "{}: rail '{}' refused a chunk ({e}); it is taken out",
                    b.id,
                    core.rails.names[out.rail]
                );
                b.tx.unsend(&out);
                let now = core.rails.now_ns();
                let b = core.rails.bonds.get_mut(&id).expect("present");
                b.tx.rail_down(out.rail, now);
                b.rails[out.rail].state = RailState::Down;
                if let Some(c) = b.rails[out.rail].conn.take() {
                    core.rails.by_rail.remove(&c.raw());
                }
            }
        }
    }
}

/// A send on a rail for the bond's own purposes: not counted against the application's
/// sends in flight (the bond's send is, until acknowledged; chunks are bounded by the rails'
/// windows).
fn rail_send<const N: usize>(
    core: &mut Core,
    rail: ConnId,
    bufs: [Buffer; N],
    token: u64,
    purpose: Purpose,
) -> Result<Slot, VmiError> {
    let transport = core
        .engine
        .conns_mut()
        .send_checked(rail, SendKind::Whole)
        .map_err(|r| VmiError::refused(rail, r))?;
    let mut s = core.engine.new_slot();
    for b in bufs {
        if s.push_buffer(b).is_err() {
            core.engine.free(s);
            core.engine.conns_mut().send_undone(rail, SendKind::Whole);
            return Err(VmiError::TooManyBuffers {
                given: N,
                max: crate::abi::VMI_IRB_MAX_SEGS,
            });
        }
    }
    s.set_op(crate::abi::VMI_OP_SEND);
    s.set_conn_raw(rail.raw());
    s.set_flags(crate::abi::VMI_FLAG_END);
    s.set_purpose(purpose);
    s.set_transport(transport);
    s.set_token(token);
    Ok(s)
}

fn control(core: &mut Core, rail: ConnId, rec: Record) {
    let buf = core.engine.inline_buffer(&rec.encode());
    if let Ok(s) = rail_send(core, rail, [buf], 0, Purpose::RailControl) {
        core.deferred.push_back(s);
    }
}

fn flush_ack(core: &mut Core, id: u64) {
    let Some(b) = core.rails.bonds.get_mut(&id) else {
        return;
    };
    if !b.ack_owed {
        return;
    }
    b.ack_owed = false;
    let (Some(next), Some(rail)) = (b.rx.ack_due(), b.control_rail()) else {
        return;
    };
    control(core, rail, Record::Ack { next });
}

/// An application send on a bond is over (acknowledged, or the bond ended): it stops
/// counting against the sends in flight, and the application gets its buffers back (an
/// inline send only when it failed, as without rails).
fn finish_send(
    core: &mut Core,
    handler: &mut dyn Handler,
    bond: ConnId,
    p: Pending,
    status: Status,
    detail: &str,
) {
    core.engine.release_send();
    if p.inline && status == Status::Ok {
        return;
    }
    let mut bufs = p.bufs;
    let mut c = SendCompletion {
        status,
        token: p.token,
        detail,
        bufs: &mut bufs,
    };
    handler.send_complete(&mut Ctx::new(core), bond, &mut c);
}

/// A chunk's or a control record's send finished on a rail.
pub(crate) fn chunk_sent(core: &mut Core, s: &Slot) {
    let conn = ConnId(s.conn_raw());
    let Some(&(bond, idx)) = core.rails.by_rail.get(&conn.raw()) else {
        return;
    };
    let now = core.rails.now_ns();
    if let Some(b) = core.rails.bonds.get_mut(&bond) {
        b.tx.sent(idx, s.token(), s.status() == Status::Ok, now);
    }
}

// ---- receiving ----

/// A fragment arrived on a rail: a record of the bond protocol.
pub(crate) fn received(core: &mut Core, handler: &mut dyn Handler, conn: ConnId, bytes: &[u8]) {
    let Some(&(bond, _)) = core.rails.by_rail.get(&conn.raw()) else {
        return;
    };
    let outcome = match Record::decode(bytes) {
        Err(e) => Err(e.to_string()),
        Ok(rec) => record(core, handler, bond, rec, &bytes[HEADER.min(bytes.len())..]),
    };
    if let Err(why) = outcome {
        log::error!("{conn}: the peer broke the rail protocol ({why}); closing the connection");
        fail_bond(core, handler, bond, Status::Protocol, why);
    }
}

fn record(
    core: &mut Core,
    handler: &mut dyn Handler,
    bond: u64,
    rec: Record,
    payload: &[u8],
) -> Result<(), String> {
    let Some(b) = core.rails.bonds.get_mut(&bond) else {
        return Ok(());
    };
    match rec {
        Record::Ack { next } => {
            let done = b.tx.ack(next)?;
            for r in &mut b.rails {
                while r.sent.front().is_some_and(|&(_, seq, _)| seq < next) {
                    r.sent.pop_front();
                }
            }
            let id = b.id;
            for (_, p) in done {
                finish_send(core, handler, id, p, Status::Ok, "");
            }
            Ok(())
        }
        Record::Fail { seq } => {
            b.rx.fail(seq).map_err(|e: ProtoError| e.to_string())?;
            deliver_ready(core, handler, bond);
            Ok(())
        }
        Record::Data {
            seq,
            offset,
            total,
            end,
        } => {
            let len = payload.len() as u64;
            if b.rx.is_next_whole(seq, offset, len, total) {
                b.rx.delivered_whole();
                b.ack_owed = true;
                let id = b.id;
                deliver(core, handler, id, end, payload);
            } else {
                match b
                    .rx
                    .place(seq, offset, len, total, end)
                    .map_err(|e| e.to_string())?
                {
                    Place::Duplicate => {}
                    Place::Into(dst) => {
                        dst.copy_from_slice(payload);
                        b.rx.placed(seq, offset, len);
                    }
                }
            }
            deliver_ready(core, handler, bond);
            Ok(())
        }
    }
}

fn deliver_ready(core: &mut Core, handler: &mut dyn Handler, bond: u64) {
    loop {
        let Some(b) = core.rails.bonds.get_mut(&bond) else {
            return;
        };
        let Some(ready) = b.rx.pop() else {
            return;
        };
        b.ack_owed = true;
        let id = b.id;
        match ready {
            Ready::Data { end, data } => {
                deliver(core, handler, id, end, &data);
                // The handler had the bytes lent for its call only: the buffer takes the next
                // fragment's chunks.
                if let Some(b) = core.rails.bonds.get_mut(&bond) {
                    b.rx.recycle(data);
                }
            }
            Ready::Failed { .. } => handler.receive_failed(
                &mut Ctx::new(core),
                id,
                Status::Lost,
                "a chunk of this message was lost on every try",
            ),
        }
    }
}

fn deliver(core: &mut Core, handler: &mut dyn Handler, id: ConnId, end: bool, data: &[u8]) {
    let cmd = if end { Recv::End } else { Recv::Fragment };
    let releases = core.engine.releases().clone();
    let held = core.engine.held_count();
    let grabbed = Cell::new(false);
    let mut slab = Slab::lent(data, &releases, &grabbed, &held);
    handler.receive(&mut Ctx::new(core), id, cmd, &mut slab);
}

/// The peer could not take message `message` of rail `conn` (a chunk failed a check or was
/// lost on the way): the chunk goes again, or its fragment is given up.
pub(crate) fn chunk_lost(core: &mut Core, handler: &mut dyn Handler, conn: ConnId, message: u64) {
    let Some(&(bond, idx)) = core.rails.by_rail.get(&conn.raw()) else {
        return;
    };
    let Some(b) = core.rails.bonds.get_mut(&bond) else {
        return;
    };
    let Some(&(_, seq, offset)) = b.rails[idx].sent.iter().find(|(m, _, _)| *m == message) else {
        return;
    };
    match b.tx.lost(seq, offset) {
        Lost::Resend => {
            log::info!(
                "{}: the peer lost a chunk of fragment {seq}; sending it again",
                b.id
            );
        }
        Lost::Fail { seq, message } => {
            let id = b.id;
            if let Some(rail) = b.control_rail() {
                control(core, rail, Record::Fail { seq });
            }
            handler.message_failed(
                &mut Ctx::new(core),
                id,
                message,
                Status::Lost,
                "a chunk of the message was lost on every try",
            );
        }
        Lost::Ignore => {}
    }
}

// ---- closing ----

/// The application disconnects a bond: every rail is closed in order.
pub(crate) fn disconnect(core: &mut Core, conn: ConnId) -> Result<Vec<Slot>, VmiError> {
    let b = open_bond(&mut core.rails.bonds, conn)?;
    b.closing = true;
    // Rails still opening are closed when their connect finishes; the bond ends without them.
    let mut rails = Vec::new();
    for r in &mut b.rails {
        match r.conn {
            Some(c) if core.rails.joining.contains_key(&c.raw()) => {
                r.conn = None;
                r.state = RailState::Down;
            }
            Some(c) => rails.push(c),
            None => {}
        }
    }
    let mut slots = Vec::new();
    for r in rails {
        if let Ok(transport) = core.engine.conns_mut().disconnect_issued(r) {
            let mut s = core.engine.new_slot();
            s.set_op(crate::abi::VMI_OP_DISCONNECT);
            s.set_conn_raw(r.raw());
            s.set_purpose(Purpose::Disconnect);
            s.set_transport(transport);
            slots.push(s);
        }
    }
    Ok(slots)
}

/// A rail closed (`reason` as the engine reports it). Its unacknowledged chunks go to the
/// other rails; the application hears of the bond's end when the last rail is gone.
pub(crate) fn rail_closed(
    core: &mut Core,
    handler: &mut dyn Handler,
    conn: ConnId,
    reason: Disconnect,
) {
    let Some((bond, idx)) = core.rails.by_rail.remove(&conn.raw()) else {
        return;
    };
    let now = core.rails.now_ns();
    let Some(b) = core.rails.bonds.get_mut(&bond) else {
        return;
    };
    b.rails[idx].state = RailState::Down;
    b.rails[idx].conn = None;
    b.rails[idx].sent.clear();
    let again = b.tx.rail_down(idx, now);
    let left = b.live_rails();
    if left > 0 && !b.closing && reason != Disconnect::Peer {
        log::warn!(
            "{}: rail '{}' closed ({reason:?}); {again} chunk(s) go again on the {left} rail(s) left",
            b.id,
            core.rails.names[idx]
        );
    }
    b.last = Some(reason);
    if left == 0 {
        end_bond(core, handler, bond);
    } else {
        pump_bond(core, bond);
    }
}

fn fail_bond(
    core: &mut Core,
    handler: &mut dyn Handler,
    bond: u64,
    status: Status,
    detail: String,
) {
    let Some(b) = core.rails.bonds.get_mut(&bond) else {
        return;
    };
    b.last = Some(Disconnect::Error { status, detail });
    let rails: Vec<ConnId> = b.rails.iter_mut().filter_map(|r| r.conn.take()).collect();
    for r in rails {
        if core.rails.joining.contains_key(&r.raw()) {
            continue;
        }
        core.rails.by_rail.remove(&r.raw());
        close_quietly(core, r);
    }
    end_bond(core, handler, bond);
}

/// Closes a rail's connection with no callback.
pub(crate) fn close_quietly(core: &mut Core, conn: ConnId) {
    if let Ok(transport) = core.engine.conns_mut().disconnect_issued(conn) {
        let mut s = core.engine.new_slot();
        s.set_op(crate::abi::VMI_OP_DISCONNECT);
        s.set_conn_raw(conn.raw());
        s.set_purpose(Purpose::Internal);
        s.set_transport(transport);
        core.deferred.push_back(s);
    }
}

/// The bond is gone: unacknowledged sends come back failed, then `disconnected`.
fn end_bond(core: &mut Core, handler: &mut dyn Handler, bond: u64) {
    let Some(mut b) = core.rails.bonds.remove(&bond) else {
        return;
    };
    core.rails.tokens.remove(&b.token);
    let reason = if b.closing {
        Disconnect::Local
    } else {
        b.last.take().unwrap_or(Disconnect::Peer)
    };
    for p in b.tx.drain() {
        let detail = "the connection closed before the peer acknowledged this send";
        finish_send(core, handler, b.id, p, Status::ConnectionLost, detail);
    }
    core.refresh();
    handler.disconnected(&mut Ctx::new(core), b.id, reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_round_trip_and_malformed_ones_are_refused() {
        let t = [7u8; TOKEN];
        let o = offer(
            &t,
            &[(1, "10.0.0.2:10001".into()), (2, String::new())],
            b"app",
        );
        let (tok, rails, app) = parse_offer(&o[BOND_MAGIC.len()..]).unwrap();
        assert_eq!(tok, t);
        assert_eq!(
            rails,
            vec![(1, "10.0.0.2:10001".into()), (2, String::new())]
        );
        assert_eq!(app, b"app");
        for cut in 0..o.len() - BOND_MAGIC.len() - 3 {
            assert!(
                parse_offer(&o[BOND_MAGIC.len()..BOND_MAGIC.len() + cut]).is_none(),
                "{cut}"
            );
        }
    }

    #[test]
    fn rail_hosts_follow_the_offer() {
        assert_eq!(rail_host("10.1.0.2", "10.2.0.2:10400"), "10.2.0.2:10400");
        assert_eq!(rail_host("10.1.0.2:999", ":10400"), "10.1.0.2:10400");
        assert_eq!(rail_host("box", ":1"), "box:1");
        assert_eq!(rail_host("box", ""), "box");
    }

    proptest::proptest! {
        /// A peer's offer is read without panicking, whatever its bytes.
        #[test]
        fn any_offer_bytes_are_read_without_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_offer(&b);
        }
    }
}
