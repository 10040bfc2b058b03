//! The chain engine (the NT-IRP / Globus XIO model): moves IRBs through the devices of a
//! chain, runs completion steps in reverse, and lets devices make progress.
//!
//! Devices are never re-entered: a host service called from device code only queues work
//! ([`crate::services`]), and the engine's loop ([`Engine::drive`]) runs it after the device
//! returns. The application layer sees the engine only through the methods below, with
//! [`Slot`] handles: never its fields, never raw pointers.
#![allow(unsafe_code)]

use std::cell::{Cell, Ref, RefCell, RefMut};
use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::abi::*;
use crate::buffer::{Buffer, InlinePool, Registration};
use crate::conn::ConnTable;
use crate::device::{Capabilities, DeviceKind};
use crate::loader::{DeviceType, LoadError};
use crate::params::ResolvedParam;
use crate::services::{Boundary, LentSet, Shared, Work};
use crate::slab::Releases;
use crate::slot::{Class, DevIndex, Dir, IrbPool, Purpose, Slot};
use crate::status::Status;
use crate::waker::Waker;
use crate::walk::{Call, FILTER, Step, Walk, Walks};
use vmi_device::lent::Written;

/// Most device instances one process runs (device indices are 16-bit; the assembly refuses
/// more with a clear error).
pub const MAX_DEVICES: usize = (DevIndex::MAX - 1) as usize;

/// Receive IRBs one device may hand up per poll before the next device's turn.
pub(crate) const POLL_BUDGET: u32 = 64;

/// Most application sends in flight in one process (issued and not yet completed). Past it a
/// send is refused with [`crate::VmiError::Busy`]: the application polls until completions
/// arrive. A peer that does not read therefore costs a bounded amount of memory.
pub const MAX_SENDS_IN_FLIGHT: usize = 4096;

/// Most received IRBs in flight in one process (handed up by a transport and not yet
/// released by the application, grabbed slabs included). At the limit transports stop
/// reading and leave data where it is (socket buffer, ring), which pushes back on the peer.
pub const MAX_RECEIVES_IN_FLIGHT: usize = 1024;

/// A device instance as the engine's entry tables hold it.
#[derive(Clone, Copy)]
pub(crate) struct Dev(pub *mut c_void);

// SAFETY: as for `Instance`: the engine calls the instance from the thread that drives it,
// one call at a time, and the device ABI lets that thread change between calls.
unsafe impl Send for Dev {}

/// A device's progress entry, resolved once when the engine starts.
#[derive(Clone, Copy)]
enum Poller {
    /// ABI 1.1 `poll_budget`.
    Budget(unsafe extern "C" fn(*mut c_void, u32) -> i32, Dev),
    /// ABI 1.0 `poll`.
    Plain(unsafe extern "C" fn(*mut c_void) -> i32, Dev),
}

/// A transport's `send_inline` entry (ABI 1.2).
type SendInlineFn = unsafe extern "C" fn(*mut c_void, u64, u32, *const u8, usize) -> i32;

/// A transport's `rdma_access` entry (ABI 1.3).
type RdmaAccessFn = unsafe extern "C" fn(
    *mut c_void,
    u64,
    u32,
    u64,
    *const crate::abi::VmiRdmaKey,
    *const crate::abi::VmiSeg,
    usize,
    *mut i32,
) -> i32;

/// Rings the bell of `tx`'s sleeping consumer; true, for the sender to return (so the call
/// ends the send).
///
/// # Safety
/// `tx` is a send ring of a set lent under the `VmiRingSet` contract, which holds for the call.
#[cold]
#[inline(never)]
unsafe fn wake(tx: &VmiTxRing) -> bool {
    // SAFETY: the caller's promise.
    unsafe { vmi_device::lent::ring_bell(tx) };
    true
}

/// A transport's `poll_direct` entry (ABI 1.2).
pub(crate) type PollDirectFn =
    unsafe extern "C" fn(*mut c_void, u32, crate::abi::VmiDeliverFn, *mut c_void) -> i32;

/// One running device.
struct Instance {
    /// Instance name from the specfile.
    name: String,
    ty: DeviceType,
    ptr: *mut c_void,
    frame_off: usize,
    caps: Capabilities,
    params: Vec<ResolvedParam>,
}

// SAFETY: `ptr` is the device instance, called only by the engine, from the thread that
// drives it, one call at a time; the device ABI lets the host change that thread between
// calls (`abi.rs`, "Threads"). The device's own helper threads never see this value.
unsafe impl Send for Instance {}

impl Instance {
    fn is_transport(&self) -> bool {
        self.ty.kind == DeviceKind::Transport
    }
}

/// What a running device looks like from the application.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    /// Instance name.
    pub name: String,
    /// Type name.
    pub type_name: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: DeviceKind,
    /// Library or "statically linked".
    pub origin: String,
    /// ABI major.minor the device was built against.
    pub abi: (u16, u16),
    /// Capabilities it reported.
    pub capabilities: Capabilities,
    /// Effective parameters.
    pub params: Vec<ResolvedParam>,
}

/// A device to start, in engine order.
pub(crate) struct Planned {
    pub name: String,
    pub ty: DeviceType,
    pub params: Vec<ResolvedParam>,
}

/// The devices of one process and its send and receive chains.
pub(crate) struct Engine {
    devices: Vec<Instance>,
    /// Send chain, engine indices, application first.
    send: Vec<DevIndex>,
    /// Receive chain, engine indices, application first.
    recv: Vec<DevIndex>,
    /// Transports in send-chain order (the order tried at connect).
    transports: Vec<DevIndex>,
    shared: Box<Shared>,
    boundary: Boundary,
    waker: Arc<Waker>,
    releases: Arc<Releases>,
    /// IRBs whose outcome the application must hear of, in order.
    out: VecDeque<Slot>,
    inline: InlinePool,
    /// Scratch for slabs released by the application (see `poll_devices`).
    release_batch: Vec<usize>,
    /// The devices that make progress of their own, in engine order.
    pollers: Vec<Poller>,
    /// The named chains (chain 1, 2, …), engine indices, application first.
    extra: Vec<Vec<DevIndex>>,
    /// Their steps: (send, receive), application first.
    extra_steps: Vec<(Vec<Step>, Vec<Step>)>,
    /// Every chain's walks (0: the send and receive chains), for `advance`.
    walks: Walks,
    /// Capabilities at the top of every chain, merged (see `top_caps`).
    top: Capabilities,
    /// `top.max_fragment` as a bound a length is compared with once: `u64::MAX` for none.
    send_max: u64,
    /// Per chain (0 first): whether no device above the transports has a submit step, so a
    /// small send may go straight to the transport.
    chain_direct: Vec<bool>,
    /// The send chain as steps, application first.
    send_steps: Vec<Step>,
    /// The receive chain as steps, application first.
    recv_steps: Vec<Step>,
    /// Each transport's `send_inline` (ABI 1.2), by engine index; all `None` when a device
    /// above the transports has a submit step (it must see every send).
    direct: Vec<Option<(SendInlineFn, Dev, LentSet)>>,
    /// Some entry of `direct` is set.
    any_direct: bool,
    /// Each transport's `rdma_access` (ABI 1.3), by engine index.
    rdma: Vec<Option<(RdmaAccessFn, Dev)>>,
    /// Transports polled through `poll_direct` (ABI 1.2): fragments they receive go straight
    /// to the application (see `direct`). Empty when a device above the transports has a
    /// receive step; such transports are then in `pollers`.
    direct_pollers: Vec<DirectPoller>,
    /// The one entry of `direct_pollers` when `pollers` is empty (see `lone_direct`).
    lone_direct: Option<DirectPoller>,
}

/// A transport polled through `poll_direct`: its entry, its instance, and where it announces
/// the receive rings (ABI 1.7) or stream sockets (ABI 1.8) it lent the host.
pub(crate) type DirectPoller = (PollDirectFn, Dev, LentSet);

impl Engine {
    /// Creates every device. `send`/`recv` are engine indices, application first; each of
    /// `extra` is a named chain (chain 1, 2, …), application first, both directions.
    pub fn start(
        planned: Vec<Planned>,
        (send, recv, extra): (Vec<usize>, Vec<usize>, Vec<Vec<usize>>),
        local_key: String,
        signature: String,
    ) -> Result<Engine, LoadError> {
        let host_error = |reason: String| LoadError::CreateFailed {
            device: "(host)".into(),
            origin: "vmi-core".into(),
            reason,
        };
        if planned.len() > MAX_DEVICES {
            return Err(host_error(format!(
                "{} devices; one process runs at most {MAX_DEVICES}",
                planned.len()
            )));
        }
        // Frame layout: one frame per device instance, shared by both chains.
        let mut offsets = Vec::with_capacity(planned.len());
        let mut total = 0usize;
        for p in &planned {
            let align = p.ty.frame_align.max(1);
            total = total.div_ceil(align) * align;
            offsets.push(total);
            total += p.ty.frame_size;
        }
        let positions = |chain: &[usize]| {
            let mut pos = vec![-1isize; planned.len()];
            for (i, &d) in chain.iter().enumerate() {
                pos[d] = i as isize;
            }
            pos
        };
        let recv_pos = positions(&recv);
        let extra_recv_pos: Vec<Vec<isize>> = extra.iter().map(|c| positions(c)).collect();
        let to_idx = |v: &[usize]| v.iter().map(|&d| d as DevIndex).collect::<Vec<_>>();
        let transports: Vec<DevIndex> = send
            .iter()
            .copied()
            .filter(|&d| planned[d].ty.kind == DeviceKind::Transport)
            .map(|d| d as DevIndex)
            .collect();
        // A device joins an IRB's completion path at most once per traversal.
        let max_path = extra
            .iter()
            .map(Vec::len)
            .fold(send.len().max(recv.len()), usize::max);
        let waker = Arc::new(
            Waker::new().map_err(|e| host_error(format!("cannot create an eventfd: {e}")))?,
        );
        let shared = Box::new(Shared {
            work: RefCell::new(VecDeque::with_capacity(256)),
            pool: RefCell::new(IrbPool::new(total, max_path)),
            conns: RefCell::new(ConnTable::default()),
            local_key,
            signature,
            recv_pos,
            named: Cell::new(!extra_recv_pos.is_empty()),
            extra_recv_pos: RefCell::new(extra_recv_pos),
            recv_live: std::sync::Arc::new(crate::services::Count::default()),
            send_limit: MAX_SENDS_IN_FLIGHT,
            send_live: Cell::new(0),
            completed: Cell::new(0),
        });
        shared.pool.borrow_mut().reserve(64);
        let boundary = Boundary::new(&shared, waker.clone(), &offsets);
        let mut engine = Engine {
            devices: Vec::with_capacity(planned.len()),
            send: to_idx(&send),
            recv: to_idx(&recv),
            extra: extra.iter().map(|c| to_idx(c)).collect(),
            extra_steps: Vec::new(),
            walks: Walks::default(),
            top: Capabilities::default(),
            send_max: u64::MAX,
            chain_direct: Vec::new(),
            transports,
            shared,
            boundary,
            releases: Arc::new(Releases::with_waker(Arc::clone(&waker))),
            waker,
            out: VecDeque::with_capacity(256),
            inline: InlinePool::default(),
            release_batch: Vec::new(),
            pollers: Vec::new(),
            send_steps: Vec::new(),
            recv_steps: Vec::new(),
            direct: Vec::new(),
            any_direct: false,
            rdma: Vec::new(),
            direct_pollers: Vec::new(),
            lone_direct: None,
        };
        for (index, p) in planned.into_iter().enumerate() {
            let names: Vec<(String, String)> = p
                .params
                .iter()
                .map(|r| (r.name.clone(), r.value.clone()))
                .collect();
            let raw: Vec<VmiParam> = names
                .iter()
                .map(|(n, v)| VmiParam {
                    name: VmiStr::new(n),
                    value: VmiStr::new(v),
                })
                .collect();
            let mut out: *mut c_void = std::ptr::null_mut();
            let mut err = [0 as std::ffi::c_char; 1024];
            let create = p.ty.descriptor.create.expect("validated at load");
            // SAFETY: the descriptor was validated; the services table and the device's
            // context are leaked (valid for the process); params live for the call.
            let rc = unsafe {
                create(
                    engine.boundary.services,
                    engine.boundary.host_ptr(index),
                    raw.as_ptr(),
                    raw.len(),
                    &mut out,
                    err.as_mut_ptr(),
                    err.len() - 1,
                )
            };
            // SAFETY: the device writes at most len - 1 bytes plus NUL (write_c_message), and
            // the buffer's last byte is never written, so there is always a terminator.
            let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            match rc {
                VMI_CREATE_OK if !out.is_null() => {}
                VMI_CREATE_PANICKED => {
                    return Err(LoadError::Panicked {
                        device: p.name,
                        origin: p.ty.origin(),
                        message: msg,
                    });
                }
                _ => {
                    let reason = if msg.is_empty() {
                        format!("create returned {rc}")
                    } else {
                        msg
                    };
                    return Err(LoadError::CreateFailed {
                        device: p.name,
                        origin: p.ty.origin(),
                        reason,
                    });
                }
            }
            engine.devices.push(Instance {
                name: p.name,
                ty: p.ty,
                ptr: out,
                frame_off: offsets[index],
                caps: Capabilities::default(),
                params: p.params,
            });
        }
        engine.compute_capabilities();
        engine.set_top();
        let steps = make_steps;
        engine.send_steps = steps(&engine.send, &engine.devices, true);
        engine.recv_steps = steps(&engine.recv, &engine.devices, false);
        engine.extra_steps = engine
            .extra
            .iter()
            .map(|c| {
                (
                    steps(c, &engine.devices, true),
                    steps(c, &engine.devices, false),
                )
            })
            .collect();
        engine.build_walks();
        let filtered = has_filter(&engine.send_steps);
        engine.chain_direct = std::iter::once(!filtered)
            .chain(engine.extra_steps.iter().map(|(down, _)| !has_filter(down)))
            .collect();
        engine.direct = engine
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| match d.ty.vtable.send_inline {
                Some(f) if d.is_transport() && !filtered => {
                    Some((f, Dev(d.ptr), engine.boundary.lent(i)))
                }
                _ => None,
            })
            .collect();
        engine.any_direct = engine.direct.iter().any(Option::is_some);
        engine.rdma = engine
            .devices
            .iter()
            .map(|d| match d.ty.vtable.rdma_access {
                Some(f) if d.is_transport() => Some((f, Dev(d.ptr))),
                _ => None,
            })
            .collect();
        engine.build_pollers();
        Ok(engine)
    }

    /// Sorts the devices that make progress of their own into direct pollers and pollers.
    /// Direct receives skip every receive step of every chain (a transport hands over all
    /// its connections' fragments): any chain with one turns them off.
    fn build_pollers(&mut self) {
        let filtered_up =
            has_filter(&self.recv_steps) || self.extra_steps.iter().any(|(_, up)| has_filter(up));
        let direct_rx = |d: &Instance| {
            d.is_transport()
                .then_some(d.ty.vtable.poll_direct)
                .flatten()
                .filter(|_| !filtered_up)
        };
        self.direct_pollers = self
            .devices
            .iter()
            .enumerate()
            .filter_map(|(i, d)| direct_rx(d).map(|p| (p, Dev(d.ptr), self.boundary.lent(i))))
            .collect();
        self.pollers = self
            .devices
            .iter()
            .filter(|d| direct_rx(d).is_none())
            .filter_map(|d| match (d.ty.vtable.poll_budget, d.ty.vtable.poll) {
                (Some(p), _) => Some(Poller::Budget(p, Dev(d.ptr))),
                (None, Some(p)) => Some(Poller::Plain(p, Dev(d.ptr))),
                (None, None) => None,
            })
            .collect();
        self.lone_direct = match (&self.direct_pollers[..], self.pollers.is_empty()) {
            ([lone], true) => Some(*lone),
            _ => None,
        };
    }

    /// Adds a named chain at run time (engine indices, application first, both
    /// directions); returns its number.
    pub fn add_chain(&mut self, chain: Vec<DevIndex>) -> u8 {
        let mut pos = vec![-1isize; self.devices.len()];
        for (i, &d) in chain.iter().enumerate() {
            pos[d as usize] = i as isize;
        }
        self.shared.extra_recv_pos.borrow_mut().push(pos);
        self.shared.named.set(true);
        let down = make_steps(&chain, &self.devices, true);
        let up = make_steps(&chain, &self.devices, false);
        self.chain_direct.push(!has_filter(&down));
        self.extra_steps.push((down, up));
        self.build_walks();
        self.extra.push(chain);
        self.set_top();
        self.build_pollers();
        self.extra.len() as u8
    }

    /// The filter signature of a chain of devices (engine indices, application first).
    pub fn signature_of(&self, chain: &[DevIndex]) -> String {
        let filters =
            crate::assembly::filter_marks(chain.iter().map(|&d| &self.devices[d as usize].ty));
        vmi_device::signature::Signature {
            send: filters.clone(),
            recv: filters,
        }
        .encode()
    }

    /// The engine index of the device named `name`, and whether it is a transport.
    pub fn device_named(&self, name: &str) -> Option<(DevIndex, bool)> {
        self.devices
            .iter()
            .position(|d| d.name == name)
            .map(|i| (i as DevIndex, self.devices[i].is_transport()))
    }

    /// Whether device `d` is a transport.
    pub fn is_transport(&self, d: DevIndex) -> bool {
        self.devices[d as usize].is_transport()
    }

    /// The transports of the send chain, in order.
    pub fn send_transports(&self) -> &[DevIndex] {
        &self.transports
    }

    /// Asks each device for its capabilities, bottom-up along the send chain.
    fn compute_capabilities(&mut self) {
        let mut below = Capabilities::default();
        let last_transport = self.transports.last().copied();
        for &d in self.send.iter().rev() {
            let inst = &mut self.devices[d as usize];
            let mut caps = if inst.is_transport() {
                Capabilities::default()
            } else {
                below
            };
            if let Some(f) = inst.ty.vtable.capabilities {
                // SAFETY: live instance; `caps` is a valid in/out pointer.
                unsafe { f(inst.ptr, &mut caps) };
            }
            inst.caps = caps;
            if inst.is_transport() {
                below = merge_transport_caps(below, caps, Some(d) == last_transport);
            } else {
                below = caps;
            }
        }
        // Filters only a named chain uses: along that chain, from its transports' caps.
        for chain in &self.extra {
            let mut below = Capabilities::default();
            let mut first = true;
            for &d in chain.iter().rev() {
                let inst = &mut self.devices[d as usize];
                if inst.is_transport() {
                    below = merge_transport_caps(below, inst.caps, first);
                    first = false;
                    continue;
                }
                if self.send.contains(&d) {
                    below = inst.caps;
                    continue;
                }
                let mut caps = below;
                if let Some(f) = inst.ty.vtable.capabilities {
                    // SAFETY: live instance; `caps` is a valid in/out pointer.
                    unsafe { f(inst.ptr, &mut caps) };
                }
                inst.caps = caps;
                below = caps;
            }
        }
        for &d in self.recv.iter() {
            if self.send.contains(&d) || self.extra.iter().any(|c| c.contains(&d)) {
                continue;
            }
            let inst = &mut self.devices[d as usize];
            let mut caps = Capabilities::default();
            if let Some(f) = inst.ty.vtable.capabilities {
                // SAFETY: as above.
                unsafe { f(inst.ptr, &mut caps) };
            }
            inst.caps = caps;
        }
    }

    // ---- the seam: what the application layer uses ----

    /// Capabilities the application sees at the top of the send chain (with named chains:
    /// what every chain allows, so a send fits whichever chain its connection uses).
    #[inline]
    pub fn top_caps(&self) -> Capabilities {
        self.top
    }

    /// Sets `top` and `send_max` from the chains.
    fn set_top(&mut self) {
        self.top = self.merged_top_caps();
        self.send_max = match self.top.max_fragment {
            0 => u64::MAX,
            max => max,
        };
    }

    /// Computes `top_caps` (once, at start).
    fn merged_top_caps(&self) -> Capabilities {
        let top = |c: &[DevIndex]| c.first().map(|&d| self.devices[d as usize].caps);
        let caps = top(&self.send).unwrap_or_default();
        self.extra
            .iter()
            .filter_map(|c| top(c))
            .fold(caps, |acc, c| merge_transport_caps(acc, c, false))
    }

    /// True when the specfile has named chains.
    #[inline]
    pub fn has_chains(&self) -> bool {
        !self.extra.is_empty()
    }

    /// Whether a small send on chain `chain` may go straight to its transport.
    #[inline(never)]
    pub fn chain_direct(&self, chain: u8) -> bool {
        self.chain_direct
            .get(chain as usize)
            .copied()
            .unwrap_or(false)
    }

    /// The running devices.
    pub fn device_infos(&self) -> Vec<DeviceInfo> {
        self.devices
            .iter()
            .map(|d| DeviceInfo {
                name: d.name.clone(),
                type_name: d.ty.name.clone(),
                version: d.ty.version.clone(),
                kind: d.ty.kind,
                origin: d.ty.origin(),
                abi: d.ty.abi,
                capabilities: d.caps,
                params: d.params.clone(),
            })
            .collect()
    }

    /// The engine index of the device with this instance name, or the list of names.
    pub fn device_index(&self, name: &str) -> Result<usize, String> {
        self.devices
            .iter()
            .position(|d| d.name == name)
            .ok_or_else(|| {
                self.devices
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
    }

    /// The connection table.
    pub fn conns(&self) -> Ref<'_, ConnTable> {
        self.shared.conns.borrow()
    }

    /// The connection table, for a state transition.
    pub fn conns_mut(&self) -> RefMut<'_, ConnTable> {
        self.shared.conns.borrow_mut()
    }

    /// IRBs allocated now (in flight, pending in devices, or held by the application).
    pub fn irbs_in_use(&self) -> usize {
        self.shared.pool.borrow().live()
    }

    /// Where grabbed slabs are handed back from any thread.
    pub fn releases(&self) -> &Arc<Releases> {
        &self.releases
    }

    /// A clean slot for a control operation (connect, answer, disconnect).
    pub fn new_slot(&self) -> Slot {
        self.shared.pool.borrow_mut().take()
    }

    /// Sends that may still be issued before `new_send_slot` refuses.
    pub fn sends_available(&self) -> usize {
        self.shared
            .send_limit
            .saturating_sub(self.shared.send_live.get())
    }

    /// Counts one application send that is carried by other sends (a multi-rail send, until
    /// the peer acknowledged it), or `Err(limit)` when the most sends allowed are in flight.
    pub fn reserve_send(&self) -> Result<(), usize> {
        let sh = &self.shared;
        if sh.send_live.get() >= sh.send_limit {
            return Err(sh.send_limit);
        }
        sh.send_live.set(sh.send_live.get() + 1);
        Ok(())
    }

    /// Ends a count taken with `reserve_send`.
    pub fn release_send(&self) {
        let sh = &self.shared;
        sh.send_live.set(sh.send_live.get().saturating_sub(1));
    }

    /// A clean slot for an application send, or `Err(limit)` when the most sends allowed
    /// are in flight.
    pub fn new_send_slot(&self) -> Result<Slot, usize> {
        let sh = &self.shared;
        if sh.send_live.get() >= sh.send_limit {
            return Err(sh.send_limit);
        }
        sh.send_live.set(sh.send_live.get() + 1);
        let mut s = sh.pool.borrow_mut().take();
        s.set_class(Class::Send);
        Ok(s)
    }

    /// A buffer from the inline pool holding a copy of `data`.
    pub fn inline_buffer(&mut self, data: &[u8]) -> Buffer {
        self.inline.take(data)
    }

    /// Whether any transport can send small whole messages without an IRB.
    #[inline]
    pub fn has_direct(&self) -> bool {
        self.any_direct
    }

    /// Sends a small whole message on `conn` through its transport's `send_inline` (ABI
    /// 1.2) when the chain and the transport allow it: no IRB, no buffer, no completion.
    /// False: send it as an IRB (nothing was changed).
    ///
    /// Out of line. Where the transport lent a send ring (ABI 1.7), the message is written
    /// into it here, and that path calls nothing: every other way out (the doorbell of a
    /// sleeping peer, a refusal to undo) is a call at the end, so the usual send costs the
    /// checks and the write. A ring with no room (or a position no correct peer writes)
    /// sends the message as an IRB, as the transport's `send_inline` would find the same.
    #[inline(never)]
    pub fn send_whole_direct(&mut self, conn: crate::ConnId, flags: u32, data: &[u8]) -> bool {
        if !self.has_direct() {
            return false;
        }
        if data.len() as u64 > self.send_max {
            return false;
        }
        if self.has_chains() && !self.conn_chain_direct(conn) {
            // The connection's named chain has a filter that must see its sends.
            return false;
        }
        let Ok(transport) = self
            .conns_mut()
            .send_checked(conn, crate::conn::SendKind::Whole)
        else {
            return false;
        };
        let Some(&Some((f, dev, lent))) = self.direct.get(transport as usize) else {
            return self.send_refused(conn);
        };
        // A send ring the transport lent (ABI 1.7): the host writes the message itself.
        let set = lent.rings.load(Ordering::Relaxed);
        if !set.is_null() {
            // SAFETY: a set lent by this live transport (it ends the loan before it frees
            // it), used on the polling thread while the transport is not called.
            let set = unsafe { &mut *set };
            // SAFETY: as above: the set's contract holds for these calls.
            if let Some(tx) = unsafe { vmi_device::lent::tx_ring(set, conn.raw()) } {
                // SAFETY: as above.
                match unsafe { vmi_device::lent::write_record(tx, flags, data) } {
                    Written::Yes => {
                        set.sent += 1;
                        return true;
                    }
                    Written::Wake => {
                        // The ring lies in the set's list, not in the set, so it outlives
                        // this change to the set's count.
                        let tx = std::ptr::from_ref(tx);
                        set.sent += 1;
                        // SAFETY: as above; the ring's bell is open while it is lent.
                        return unsafe { wake(&*tx) };
                    }
                    // No room, or a position no correct peer writes: the IRB path.
                    Written::No => return self.send_refused(conn),
                    // Larger than the ring takes: the transport's `send_inline`, below.
                    Written::Large => {}
                }
            }
        }
        // SAFETY: live instance; the bytes are lent for the call and the device copies them
        // before it returns.
        let rc = unsafe { f(dev.0, conn.raw(), flags, data.as_ptr(), data.len()) };
        rc == VMI_COMPLETE || self.send_refused(conn)
    }

    /// Undoes the count of a direct send that did not go; false, for the caller to return.
    #[cold]
    #[inline(never)]
    fn send_refused(&mut self, conn: crate::ConnId) -> bool {
        self.conns_mut()
            .send_undone(conn, crate::conn::SendKind::Whole);
        false
    }

    /// Whether `conn`'s chain lets a small send go straight to the transport (named chains
    /// only: out of line, so the common send path stays small).
    #[inline(never)]
    fn conn_chain_direct(&self, conn: crate::ConnId) -> bool {
        self.chain_direct(self.conns().chain(conn))
    }

    /// Whether `transport` moves RDMA bytes one-sided (ABI 1.3 `rdma_access`).
    pub fn has_rdma_access(&self, transport: DevIndex) -> bool {
        matches!(self.rdma.get(transport as usize), Some(Some(_)))
    }

    /// One-sided access through `transport`'s `rdma_access` (ABI 1.3): `Some(status)` when
    /// it moved the bytes (or failed), `None` when it cannot on this connection.
    pub fn rdma_access(
        &mut self,
        transport: DevIndex,
        conn: u64,
        write: bool,
        remote: u64,
        key: Option<&crate::abi::VmiRdmaKey>,
        segs: &[crate::abi::VmiSeg],
    ) -> Option<crate::status::Status> {
        let &Some((f, dev)) = self.rdma.get(transport as usize)? else {
            return None;
        };
        let mut status = 0i32;
        // SAFETY: live instance; the segments are lent for the call (readable for a write,
        // writable for a read, as the caller made them) and the status is ours.
        let rc = unsafe {
            f(
                dev.0,
                conn,
                u32::from(write),
                remote,
                key.map_or(std::ptr::null(), |k| k as *const _),
                segs.as_ptr(),
                segs.len(),
                &mut status,
            )
        };
        (rc == VMI_COMPLETE).then(|| crate::status::Status::from_code(status))
    }

    /// The transports polled through `poll_direct`.
    #[inline]
    pub fn direct_pollers(&self) -> &[DirectPoller] {
        &self.direct_pollers
    }

    /// The count of received fragments held (IRBs up the chain and grabbed copies): a grab
    /// of lent bytes raises it.
    pub fn held_count(&self) -> std::sync::Arc<crate::services::Count> {
        self.shared.recv_live.clone()
    }

    /// Runs work the devices queued (after a direct poll).
    #[inline]
    pub fn run_queued(&mut self) {
        self.drive();
    }

    /// Returns a slot to the pool, recycling inline buffers.
    pub fn free(&mut self, mut s: Slot) {
        // Pop, not drain: a drain costs its guard even for the one buffer an inline send has.
        while let Some(b) = s.buffers_mut().pop() {
            self.inline.give(b);
        }
        match s.class() {
            Class::Recv => self.shared.recv_live.set(self.shared.recv_live.get() - 1),
            Class::Send => self.shared.send_live.set(self.shared.send_live.get() - 1),
            Class::Control => {}
        }
        self.shared.pool.borrow_mut().give(s);
    }

    /// Sends an application IRB down the send chain and runs everything that follows.
    pub fn submit(&mut self, mut s: Slot) {
        s.enter(Dir::Down, -1);
        self.advance(s);
        self.drive();
    }

    /// Ends an IRB that no device has seen with `status`: its outcome goes to the
    /// application as any other's (a connect that ends while waiting for its peer).
    pub fn finish_now(&mut self, s: Slot, status: Status) {
        self.finish(s, status.code());
    }

    /// The first transport of the chains (a placeholder owner for a connect that waits for
    /// a transport to reach its peer).
    pub fn first_transport(&self) -> DevIndex {
        self.transports.first().copied().unwrap_or(0)
    }

    /// The next IRB whose outcome the application must hear of.
    pub fn pop_outcome(&mut self) -> Option<Slot> {
        self.out.pop_front()
    }

    /// Outcomes waiting.
    pub fn outcomes(&self) -> usize {
        self.out.len()
    }

    /// Gives a received IRB back to the devices (the application let it go) and frees it.
    pub fn release_received(&mut self, mut s: Slot) {
        self.unwind(&mut s);
        self.drive();
        self.free(s);
    }

    // ---- moving IRBs ----

    /// Runs queued work until none is left. The common case, nothing queued, is two loads
    /// inlined at the caller; the loop is out of line.
    #[inline]
    fn drive(&mut self) {
        // SAFETY: no `RefMut` of the work queue is alive here: every borrow of it is taken
        // and dropped within one statement on this (the polling) thread, and `drive` runs
        // between device calls, never inside one. Reading its length through the pointer
        // skips the borrow-flag check on the idle path (2 of an empty poll's instructions).
        let idle = unsafe { (*self.shared.work.as_ptr()).is_empty() };
        if !self.boundary.remote.has_pending() && idle {
            return;
        }
        self.drive_queued();
    }

    #[inline(never)]
    fn drive_queued(&mut self) {
        loop {
            // One relaxed load instead of the queue's atomics when nothing came from other threads.
            if self.boundary.remote.has_pending() {
                while let Some((s, st)) = self.boundary.remote.pop() {
                    self.shared
                        .work
                        .borrow_mut()
                        .push_back(Work::Complete(s, st));
                }
            }
            let next = self.shared.work.borrow_mut().pop_front();
            match next {
                None => break,
                Some(Work::Pass(mut s)) => {
                    // The device that held it passes it on: it joins the completion path.
                    if let Some(d) = self.device_at(&s, s.pos()) {
                        self.join_path(&mut s, d);
                    }
                    self.advance(s);
                }
                Some(Work::Complete(s, st)) => self.finish(s, st),
            }
        }
    }

    fn device_at(&self, s: &Slot, pos: isize) -> Option<DevIndex> {
        let chain = match (s.chain(), s.dir() == Dir::Down) {
            (0, true) => &self.send,
            (0, false) => &self.recv,
            (c, _) => &self.extra[c as usize - 1],
        };
        usize::try_from(pos)
            .ok()
            .and_then(|p| chain.get(p).copied())
    }

    fn join_path(&self, s: &mut Slot, d: DevIndex) {
        if self.devices[d as usize].ty.vtable.complete.is_some() {
            s.join_path(d);
        }
    }

    /// Computes every chain's walks (after the step lists changed).
    fn build_walks(&mut self) {
        let chains = std::iter::once((&self.send_steps[..], &self.recv_steps[..])).chain(
            self.extra_steps
                .iter()
                .map(|(down, up)| (&down[..], &up[..])),
        );
        self.walks = Walks::new(chains, self.devices.len());
    }

    /// Moves an IRB to the next devices until one pends or completes it, or it leaves the chain.
    fn advance(&mut self, mut s: Slot) {
        let down = s.dir() == Dir::Down;
        // The walk, taken once: nothing `advance` calls (devices, through the host's
        // services) changes `walks`, which only `add_chain` rebuilds, from the application
        // outside any poll.
        let Some(walk) = self.walks.get(s.chain(), down) else {
            s.set_detail("the IRB names a chain this engine does not have".into());
            self.finish(s, Status::Internal.code());
            return;
        };
        let walk: *const Walk = walk;
        // SAFETY: `walk` points into `self.walks`, alive and unchanged for the whole call
        // (see above).
        let walk = unsafe { &*walk };
        // Completions made so far: a device that completes the IRB after others were
        // completed (by any device since this walk began) has it queued behind them. Read
        // once: a count that moved earlier in the walk only sends such an IRB the queued
        // way, which keeps the order as well.
        let completed = self.shared.completed.get();
        // The hosts' own messages go past filters (see `hostmsg`): decided when the walk
        // (re)starts, so no device can change it halfway.
        if s.flags() & VMI_FLAG_HOST == 0 {
            let filters = &walk.filters;
            let mut k = walk.first_filter(s.pos(), down);
            while let Some(c) = filters.get(k) {
                match self.call(s, c, completed, down) {
                    Some(passed) => s = passed,
                    None => return,
                }
                k += 1;
            }
        }
        if down
            && let Some(c) = walk.send(self.walks.rank(s.transport()))
            && c.pos as isize > s.pos()
        {
            match self.call(s, c, completed, down) {
                Some(passed) => s = passed,
                None => return,
            }
        }
        self.walked(s, down);
    }

    /// Calls one device of a walk with the IRB; returns it if the device passed it on.
    #[inline(always)]
    fn call(&mut self, mut s: Slot, c: &Call, completed: u64, down: bool) -> Option<Slot> {
        s.set_pos(c.pos as isize);
        let frame = s.frame_ptr(c.frame_off);
        let raw = s.into_raw();
        // SAFETY: live instance; the device gets the IRB and its own frame (inside the slot's
        // frame area: the engine checked each device's offset and size against it when it
        // started), and follows the ABI's ownership rules: on PASS/COMPLETE it hands the IRB
        // back to us, on PENDING it keeps it and returns it through a service later.
        let rc = unsafe { (c.entry)(c.dev, raw, frame) };
        match rc {
            VMI_PASS => {
                // SAFETY: the device returned the IRB to the engine with this code.
                s = unsafe { Slot::from_raw(raw) };
                if c.joins {
                    s.join_path(c.index);
                }
                Some(s)
            }
            VMI_COMPLETE => {
                // SAFETY: as above.
                s = unsafe { Slot::from_raw(raw) };
                let code = s.status_code();
                if self.shared.completed.get() == completed {
                    self.finish(s, code);
                } else {
                    // The device completed other IRBs during this call (an abort ends the
                    // connection's sends, a disconnect while dialling ends the connect): this
                    // one completes after them, in the order the device made them.
                    self.shared
                        .work
                        .borrow_mut()
                        .push_back(Work::Complete(s, code));
                }
                None
            }
            VMI_PENDING => None,
            other => {
                log::error!(
                    "device '{}' returned {other} from {}; expected 0 (pass), 1 (complete) or 2 (pending); the IRB is treated as pending",
                    self.devices[c.index as usize].name,
                    if down { "submit" } else { "receive" }
                );
                // Who holds the IRB is unknown: leaving it with the device is the only choice
                // that cannot free memory a device still uses.
                None
            }
        }
    }

    /// An IRB walked past the last device of its walk.
    #[inline(always)]
    fn walked(&mut self, mut s: Slot, down: bool) {
        if down {
            s.set_detail("no transport took the request (a transport passed it on)".into());
            self.finish(s, Status::Internal.code());
        } else {
            self.out.push_back(s); // reached the application
        }
    }

    /// Runs the completion steps in reverse order, then queues the outcome for the application.
    #[inline]
    fn finish(&mut self, mut s: Slot, status: i32) {
        s.set_status_code(status);
        self.unwind(&mut s);
        if s.timed() {
            self.timed_send_done(&s);
        }
        if status == Status::Ok.code() && s.purpose() == Purpose::SendInline {
            // Nothing to tell the application: no outcome, no callback.
            self.free(s);
            return;
        }
        self.out.push_back(s);
    }

    /// A send on a connection with a send timeout completed: progress (out of line, so the
    /// completion path of connections without one stays small).
    #[cold]
    #[inline(never)]
    fn timed_send_done(&self, s: &Slot) {
        self.conns_mut()
            .timed_send_done(crate::conn::ConnId(s.conn_raw()));
    }

    /// Runs the completion steps of the devices on the IRB's path, last first.
    fn unwind(&mut self, s: &mut Slot) {
        while let Some(d) = s.pop_path() {
            let inst = &self.devices[d as usize];
            if let Some(c) = inst.ty.vtable.complete {
                let frame = s.frame_ptr(inst.frame_off);
                // SAFETY: live instance; the IRB is lent for the call (the device cannot keep
                // it: the SDK gives it a `CompletingIrb`, a C device is bound by the ABI).
                unsafe { c(inst.ptr, s.addr() as *mut VmiIrb, frame) };
            }
        }
        s.set_unwound();
    }

    // ---- progress ----

    /// The budget a transport's poll gets: [`POLL_BUDGET`], and at most the receive IRBs it
    /// can still allocate (ABI 1.6: a device need not ask `irb_available` at every poll).
    #[inline(always)]
    pub(crate) fn poll_credit(&self) -> u32 {
        // The common case first, as one compare (6 instructions at the caller; the `min` of
        // the two took 12).
        if self.shared.recv_live.get() <= MAX_RECEIVES_IN_FLIGHT - POLL_BUDGET as usize {
            POLL_BUDGET
        } else {
            self.shared.receive_room() as u32
        }
    }

    /// Frees what the application let go of since the last poll (see `take_releases`);
    /// returns how many. Inlined at the caller: nothing to free is one load.
    #[inline(always)]
    pub fn poll_released(&mut self) -> usize {
        if self.releases.pending.load(Ordering::Relaxed) > 0 {
            return self.take_releases();
        }
        0
    }

    /// Lets every device that is not polled directly make progress; returns the number of
    /// events they reported. Inlined at the caller: with none, one load.
    #[inline(always)]
    pub fn poll_devices(&mut self) -> usize {
        let mut events = 0;
        // By index, one bounds check a turn: a device's work may change the list.
        let mut i = 0;
        while let Some(&poller) = self.pollers.get(i) {
            i += 1;
            let n = match poller {
                Poller::Budget(p, dev) => {
                    // SAFETY: live instance.
                    unsafe { p(dev.0, self.poll_credit()) }
                }
                Poller::Plain(p, dev) => {
                    // SAFETY: live instance (a 1.0 device: no budget).
                    unsafe { p(dev.0) }
                }
            };
            events += n.max(0) as usize;
            self.drive();
        }
        events
    }

    /// The one direct transport when it is the only device polled (the usual case): `Vmi::poll`
    /// then needs no look at either list.
    #[inline(always)]
    pub fn lone_direct(&self) -> Option<DirectPoller> {
        self.lone_direct
    }

    /// Frees the received IRBs (and counts the grabbed copies) the application let go of,
    /// from any thread, since the last poll; returns how many.
    #[inline(never)]
    fn take_releases(&mut self) -> usize {
        // Swap with a kept vector: both keep their capacity, so releasing allocates nothing.
        let mut batch = std::mem::take(&mut self.release_batch);
        self.releases.take_all(&mut batch);
        let events = batch.len();
        for addr in batch.drain(..) {
            if addr == crate::slab::COPY_RELEASED {
                // A grabbed copy of lent bytes: no IRB, one fewer fragment held.
                let held = &self.shared.recv_live;
                held.set(held.get().saturating_sub(1));
                continue;
            }
            // SAFETY: the address was queued by the GrabbedSlab that owned the delivered
            // slot (the engine kept no handle to it), exactly once, when it was dropped.
            let s = unsafe { Slot::from_raw(addr as *mut VmiIrb) };
            self.release_received(s);
        }
        self.release_batch = batch;
        events
    }

    /// Sleeps until a device's descriptor is ready, a deadline passes, a device or another
    /// thread wakes the host, or `timeout` elapses. True when the application's own waker
    /// rang (work for its polling thread that no poll reports).
    pub fn sleep(&mut self, timeout: Duration) -> bool {
        let mut fds = Vec::with_capacity(self.devices.len() + 1);
        fds.push(libc::pollfd {
            fd: self.waker.fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let (pending, due) = self.arm_devices(|fd| {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
        });
        let ms = due
            .map_or(timeout, |d| d.min(timeout))
            .as_millis()
            .min(i32::MAX as u128) as i32;
        if !pending && !self.waker.rung() && ms > 0 {
            // SAFETY: `fds` is a live array of pollfd of the given length.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        }
        self.disarm();
        self.waker.take_rung()
    }

    /// Announces a sleep to everything that may wake it: the waker (other threads) and each
    /// device (`wait_fd`, which may ask a peer to ring a doorbell), reporting each device's
    /// descriptor to `fd`. Returns whether work is pending already (do not sleep) and the
    /// soonest time a device must be polled again.
    pub fn arm_devices(&mut self, mut fd: impl FnMut(i32)) -> (bool, Option<Duration>) {
        // Announce the sleep before looking for work (see `Waker` for the ordering argument).
        self.waker.set_sleeping(true);
        let mut due: Option<Duration> = None;
        for inst in &self.devices {
            if let Some(w) = inst.ty.vtable.wait_fd {
                let (mut f, mut t) = (-1i32, -1i64);
                // SAFETY: live instance, valid out-pointers.
                unsafe { w(inst.ptr, &mut f, &mut t) };
                if f >= 0 {
                    fd(f);
                }
                if t >= 0 {
                    let t = Duration::from_millis(t as u64);
                    due = Some(due.map_or(t, |d| d.min(t)));
                }
            }
        }
        let pending = self.boundary.remote.has_pending_acquire()
            || self.releases.pending.load(Ordering::Acquire) > 0
            || !self.out.is_empty();
        (pending, due)
    }

    /// Ends a sleep announced by `arm_devices`: other threads stop ringing the doorbell,
    /// and its rings so far are cleared.
    pub fn disarm(&self) {
        self.waker.set_sleeping(false);
        self.waker.drain();
    }

    /// The doorbell, for other threads of the application.
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// The doorbell other threads ring while the host sleeps.
    pub fn waker_fd(&self) -> i32 {
        self.waker.fd()
    }

    // ---- device calls outside the IRB path ----

    /// The transport that takes a connection to `host`/`key`, with each refusal's reason.
    pub fn choose_transport(
        &mut self,
        host: &str,
        key: &str,
    ) -> Result<DevIndex, Vec<(String, String)>> {
        let mut refusals = Vec::new();
        for &t in &self.transports {
            let inst = &self.devices[t as usize];
            let Some(reach) = inst.ty.vtable.reach else {
                refusals.push((inst.name.clone(), "it does not implement reach".into()));
                continue;
            };
            let mut why = [0 as std::ffi::c_char; 512];
            // SAFETY: live instance; strings live for the call; `why` is writable for
            // len - 1 bytes and its last byte stays NUL.
            let ok = unsafe {
                reach(
                    inst.ptr,
                    VmiStr::new(host),
                    VmiStr::new(key),
                    why.as_mut_ptr(),
                    why.len() - 1,
                )
            };
            if ok == 1 {
                log::info!(
                    "connection to {key}@{host}: transport '{}' ({}) can reach it",
                    inst.name,
                    inst.ty.name
                );
                for (name, reason) in &refusals {
                    log::info!("  transport '{name}' was passed over: {reason}");
                }
                return Ok(t);
            }
            // SAFETY: NUL-terminated (the last byte is never written).
            let reason = unsafe { std::ffi::CStr::from_ptr(why.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            refusals.push((
                inst.name.clone(),
                if reason.is_empty() {
                    "cannot reach it".into()
                } else {
                    reason
                },
            ));
        }
        if self.transports.is_empty() {
            refusals.push(("(chain)".into(), "the chain has no transport".into()));
        }
        Err(refusals)
    }

    /// Reads a device's runtime attribute.
    pub fn get_attr(&self, device: usize, name: &str) -> Option<String> {
        let inst = &self.devices[device];
        let f = inst.ty.vtable.get_attr?;
        let mut buf = vec![0 as std::ffi::c_char; 4096];
        for _ in 0..4 {
            // SAFETY: live instance; `buf` is writable for len - 1 bytes, its last byte NUL.
            let n = unsafe { f(inst.ptr, VmiStr::new(name), buf.as_mut_ptr(), buf.len() - 1) };
            if n < 0 {
                return None;
            }
            if (n as usize) < buf.len() - 1 {
                // SAFETY: NUL-terminated within the buffer.
                return Some(
                    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            if n as usize >= 1 << 24 {
                log::error!(
                    "device '{}' reports a {n}-byte value for attribute '{name}'; refused",
                    inst.name
                );
                return None;
            }
            buf = vec![0; n as usize + 2];
        }
        None
    }

    /// Changes a device's runtime attribute.
    pub fn set_attr(&mut self, device: usize, name: &str, value: &str) -> Result<(), String> {
        let inst = &self.devices[device];
        let Some(f) = inst.ty.vtable.set_attr else {
            return Err(format!("device '{}' has no runtime attributes", inst.name));
        };
        let mut err = [0 as std::ffi::c_char; 1024];
        // SAFETY: live instance; strings live for the call; `err` is writable for len - 1.
        let rc = unsafe {
            f(
                inst.ptr,
                VmiStr::new(name),
                VmiStr::new(value),
                err.as_mut_ptr(),
                err.len() - 1,
            )
        };
        // What the device queued (an aborted connection's IRBs) runs now.
        self.drive();
        if rc == 0 {
            Ok(())
        } else {
            // SAFETY: NUL-terminated (the last byte is never written).
            Err(unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }
                .to_string_lossy()
                .into_owned())
        }
    }

    /// Registers a buffer's memory for sending with every transport that has a `register`
    /// hook — except transports with one-sided access (`rdma_access`), for which `register`
    /// opens memory to the peer's reads and writes: they are asked only for buffers the
    /// application publishes ([`Engine::register_range`]).
    pub fn register(&mut self, buffer: &mut Buffer) {
        let (base, len) = (buffer.as_ptr() as *mut u8, buffer.len());
        for &t in &self.transports {
            if self.has_rdma_access(t) {
                continue;
            }
            let inst = &self.devices[t as usize];
            if let Some(r) = inst.ty.vtable.register {
                // SAFETY: live instance; the memory is the buffer's, valid while it lives.
                let handle = unsafe { r(inst.ptr, base, len) };
                if handle != 0 {
                    buffer.add_registration(Registration {
                        transport: t,
                        handle,
                    });
                }
            }
        }
    }

    /// Registers `len` bytes at `base` with `transport` alone (a published RDMA buffer):
    /// the transport's handle, 0 when it has no `register` hook or made none.
    ///
    /// # Safety
    /// The memory must stay mapped until [`Engine::deregister_handle`].
    pub unsafe fn register_range(
        &mut self,
        transport: DevIndex,
        conn: u64,
        base: *mut u8,
        len: usize,
    ) -> u64 {
        let inst = &self.devices[transport as usize];
        // ABI 1.4: for the connection alone, where the transport can scope it.
        if let Some(r) = inst.ty.vtable.register_conn {
            // SAFETY: live instance; the caller keeps the memory mapped until deregistered.
            return unsafe { r(inst.ptr, conn, base, len) };
        }
        match inst.ty.vtable.register {
            // SAFETY: as above.
            Some(r) => unsafe { r(inst.ptr, base, len) },
            None => 0,
        }
    }

    /// Undoes [`Engine::register_range`].
    pub fn deregister_handle(&mut self, transport: DevIndex, handle: u64) {
        let inst = &self.devices[transport as usize];
        if let Some(d) = inst.ty.vtable.deregister {
            // SAFETY: live instance; the handle came from its own `register`.
            unsafe { d(inst.ptr, handle) };
        }
    }

    /// Undoes `register`.
    pub fn deregister(&mut self, buffer: &mut Buffer) {
        for reg in buffer.take_registrations() {
            let inst = &self.devices[reg.transport as usize];
            if let Some(d) = inst.ty.vtable.deregister {
                // SAFETY: live instance; the handle came from its own `register`.
                unsafe { d(inst.ptr, reg.handle) };
            }
        }
    }
}

/// A chain's steps (engine indices, application first), for one direction.
/// Whether a filter in `steps` has this direction's hook (so IRBs must walk the chain).
fn has_filter(steps: &[Step]) -> bool {
    steps.iter().any(|s| s.only == FILTER && s.entry.is_some())
}

fn make_steps(chain: &[DevIndex], devices: &[Instance], down: bool) -> Vec<Step> {
    chain
        .iter()
        .map(|&d| {
            let inst = &devices[d as usize];
            let transport = inst.is_transport();
            Step {
                // A receive goes up from the transport it arrived on, past every transport
                // above it: no transport's receive step is ever called.
                entry: match (down, transport) {
                    (true, _) => inst.ty.vtable.submit,
                    (false, false) => inst.ty.vtable.receive,
                    (false, true) => None,
                },
                dev: inst.ptr,
                frame_off: inst.frame_off,
                index: d,
                only: if transport { d } else { FILTER },
                joins: inst.ty.vtable.complete.is_some(),
            }
        })
        .collect()
}

fn merge_transport_caps(acc: Capabilities, t: Capabilities, first: bool) -> Capabilities {
    if first {
        return t;
    }
    let min_nonzero = |a: u64, b: u64| match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    };
    Capabilities {
        max_fragment: min_nonzero(acc.max_fragment, t.max_fragment),
        headroom: acc.headroom.max(t.headroom),
        tailroom: acc.tailroom.max(t.tailroom),
        max_connect_data: min_nonzero(acc.max_connect_data as u64, t.max_connect_data as u64)
            as u32,
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let outstanding = self.releases.outstanding.load(Ordering::Acquire);
        // Return what the application let go of, then deliver nothing more.
        let mut released = Vec::new();
        self.releases.take_all(&mut released);
        for addr in released {
            if addr == crate::slab::COPY_RELEASED {
                continue; // a grabbed copy: no IRB behind it
            }
            // SAFETY: as in `poll_devices`.
            let s = unsafe { Slot::from_raw(addr as *mut VmiIrb) };
            self.release_received(s);
        }
        while let Some(s) = self.out.pop_front() {
            if s.purpose() == Purpose::Received && !s.unwound() {
                self.release_received(s);
            } else {
                self.free(s);
            }
        }
        if outstanding > 0 {
            log::warn!(
                "{outstanding} grabbed slab(s) still held at shutdown: device memory is kept (leaked) so they stay readable; release slabs before dropping Vmi"
            );
            // Completions that arrived from other threads stay with their (kept) slots.
            let _kept = self.boundary.retire();
            return;
        }
        for inst in self.devices.iter().rev() {
            if let Some(destroy) = inst.ty.vtable.destroy {
                // SAFETY: each instance is destroyed once, after its last call. IRBs it still
                // held complete through services that stay valid until `self` is gone.
                unsafe { destroy(inst.ptr) };
            }
        }
        // Devices are gone: free whatever they handed back while shutting down.
        let leftover: Vec<Work> = self.shared.work.borrow_mut().drain(..).collect();
        for w in leftover {
            let (Work::Pass(s) | Work::Complete(s, _)) = w;
            self.free(s);
        }
        for s in self.boundary.retire() {
            self.free(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_caps_merge_to_the_smallest_limit() {
        let a = Capabilities {
            max_fragment: 100,
            headroom: 8,
            tailroom: 0,
            max_connect_data: 0,
        };
        let b = Capabilities {
            max_fragment: 0,
            headroom: 16,
            tailroom: 4,
            max_connect_data: 10,
        };
        assert_eq!(merge_transport_caps(a, b, true), b);
        let m = merge_transport_caps(a, b, false);
        assert_eq!(m.max_fragment, 100);
        assert_eq!(m.headroom, 16);
        assert_eq!(m.tailroom, 4);
        assert_eq!(m.max_connect_data, 10);
    }
}
