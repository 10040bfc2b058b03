//! What a device plugin implements ([`Device`]) and the values it returns.
//! [`crate::export_device!`] turns a `Device` into the C-ABI descriptor.
//!
//! A device never calls into the application and is never re-entered: everything a device
//! asks of the host (`pass`, `complete`, a new IRB handed up) is queued and run by the host's
//! loop after the device returns.
#![forbid(unsafe_code)]

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::abi::{self, VmiParamSpec};
use crate::config::Config;
use crate::host::Host;
use crate::irb::{CompletingIrb, Irb};
use crate::status::Status;

/// Filter or transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// Looks at and changes data (CRC, compression, tracing).
    Filter,
    /// Moves bytes to peers (TCP, shared memory).
    Transport,
}

impl DeviceKind {
    /// The ABI code.
    pub const fn code(self) -> u32 {
        match self {
            DeviceKind::Filter => abi::VMI_KIND_FILTER,
            DeviceKind::Transport => abi::VMI_KIND_TRANSPORT,
        }
    }
}

/// What a device did with an IRB it was given.
#[must_use]
pub enum Disposition {
    /// Hand it to the next device.
    Pass(Irb),
    /// Finished, with this status.
    Complete(Irb, Status),
    /// The device kept the IRB and will pass or complete it later.
    Pending,
}

/// Device capabilities (see [`abi::VmiCapabilities`]).
pub type Capabilities = abi::VmiCapabilities;

/// Which vtable entries a device exports. An entry left out costs nothing per IRB: the host
/// passes IRBs through without calling the device.
#[derive(Clone, Copy, Debug)]
pub struct Hooks {
    /// `submit` (send direction).
    pub submit: bool,
    /// `receive` (receive direction).
    pub receive: bool,
    /// `complete` (completion step).
    pub complete: bool,
    /// `poll` and `wait_fd` (devices with their own I/O or timers).
    pub poll: bool,
}

impl Hooks {
    /// Every entry.
    pub const ALL: Hooks = Hooks {
        submit: true,
        receive: true,
        complete: true,
        poll: true,
    };
    /// A filter that looks at data both ways and keeps nothing per IRB: submit and receive.
    /// Most filters want this (the skeleton does): no completion step, so no call when an
    /// IRB completes.
    pub const TRANSFORM: Hooks = Hooks {
        submit: true,
        receive: true,
        complete: false,
        poll: false,
    };
    /// A filter that also frees something when an IRB completes (a compression buffer held
    /// in its frame): submit, receive and complete.
    pub const FILTER: Hooks = Hooks {
        submit: true,
        receive: true,
        complete: true,
        poll: false,
    };
    /// Nothing: a pure pass-through.
    pub const NONE: Hooks = Hooks {
        submit: false,
        receive: false,
        complete: false,
        poll: false,
    };
}

/// A device: a filter or a transport. Implement this, then `export_device!` it.
///
/// Every method has a pass-through default; a filter usually writes `submit` and `receive`
/// only. Methods are never called concurrently and never re-entered.
pub trait Device: Sized + 'static {
    /// Type name; the exported symbol is `vmi_device_<NAME>`.
    const NAME: &'static CStr;
    /// Version text.
    const VERSION: &'static CStr;
    /// One line saying what the device does.
    const DESCRIPTION: &'static CStr;
    /// Filter or transport.
    const KIND: DeviceKind;
    /// Declared parameters.
    const PARAMS: &'static [VmiParamSpec] = &[];
    /// True for a filter that does not change the bytes on the wire (tracing, delays): it is
    /// left out of the filter signature checked at connect, so it may run on one side only.
    const WIRE_NEUTRAL: bool = false;
    /// Which entries to export; the rest are pass-through at no cost.
    const HOOKS: Hooks = Hooks::ALL;
    /// Transports: export [`Device::send_inline`] (ABI 1.2), the host's fast path for small
    /// whole messages.
    const SEND_INLINE: bool = false;
    /// Transports: export `poll_direct` (ABI 1.2), the host's fast path for received
    /// fragments: during [`Device::poll`] run as `poll_direct`, [`crate::deliver::offer`]
    /// hands a fragment to the host with no IRB.
    const RECEIVE_DIRECT: bool = false;
    /// Transports: export [`Device::rdma_access`] (ABI 1.3), one-sided access to a peer's
    /// memory for RDMA puts and gets.
    const RDMA_ACCESS: bool = false;
    /// Per-IRB scratch space, zeroed when the host allocates the IRB; read it with
    /// [`Irb::frame`]. `()` for none.
    type Frame: bytemuck::Pod;

    /// Creates an instance (VMI 2.1: the device's `Init` entry).
    fn create(host: Host, config: &Config) -> Result<Self, String>;

    /// Reports capabilities given those of the devices below (a filter subtracts its overhead).
    fn capabilities(&self, below: Capabilities) -> Capabilities {
        below
    }

    /// An IRB going towards the wire.
    fn submit(&mut self, irb: Irb) -> Disposition {
        Disposition::Pass(irb)
    }

    /// An IRB coming from the wire.
    fn receive(&mut self, irb: Irb) -> Disposition {
        Disposition::Pass(irb)
    }

    /// Completion step for an IRB this device passed (or, for a transport, originated): free
    /// what the frame holds. Only called when [`Device::HOOKS`] has `complete`.
    fn complete(&mut self, _irb: &mut CompletingIrb) {}

    /// The host released the report of the peer's close on `conn` (a PEER_DISCONNECT IRB
    /// this device handed up; called right after its [`Device::complete`] step). Every
    /// fragment that came before the close went up first, and what the host sent in reply
    /// to them (notices of failed messages, over as many polls as it took) is queued here: a
    /// transport whose close is answered answers the peer's goodbye now or at its next poll,
    /// never before. Only called when [`Device::HOOKS`] has `complete`.
    fn peer_close_released(&mut self, _conn: u64) {}

    /// Transports with [`Device::SEND_INLINE`]: sends `data` on connection `conn` (the raw
    /// id IRBs carry) as one whole-message fragment with IRB `flags`, copying it now, with no
    /// IRB. Return false when it cannot go at once in order (something is queued ahead on the
    /// connection, it does not fit, the connection is not open): the host then sends it as
    /// an IRB through [`Device::submit`], which reports any error. Never called when a
    /// device above has a submit step.
    fn send_inline(&mut self, _conn: u64, _flags: u32, _data: &[u8]) -> bool {
        false
    }

    /// Transports with [`Device::RDMA_ACCESS`]: writes the local `segs` one after another to
    /// the peer's memory from address `remote` on (`write`), or reads them from there, on
    /// connection `conn`, before returning. `key` names the peer's memory object behind
    /// `remote` when the peer's vmi published one (see [`crate::abi::VmiRdmaKey`]). `Some(status)` when done or failed; `None` when
    /// this connection cannot (the host then moves the bytes as messages). The segments are
    /// the host's, valid (readable, or writable for a read) for the call; the device hands
    /// them to the kernel or the NIC, never to safe code as slices.
    fn rdma_access(
        &mut self,
        _conn: u64,
        _write: bool,
        _remote: u64,
        _key: Option<&crate::abi::VmiRdmaKey>,
        _segs: &[crate::abi::VmiSeg],
    ) -> Option<crate::status::Status> {
        None
    }

    /// Makes progress without blocking, handing at most `budget` IRBs up the receive chain
    /// (received fragments, connect requests, disconnects); returns the number of events
    /// produced. Work left over waits for the next poll: a device that ignores the budget
    /// lets one busy peer starve the rest and grows memory when the application is slow.
    fn poll(&mut self, _budget: usize) -> usize {
        0
    }

    /// A descriptor to sleep on and the time until the device's next deadline.
    fn wait_fd(&self) -> (Option<RawFd>, Option<Duration>) {
        (None, None)
    }

    /// Transports: whether `host`/`key` can be reached, and if not why.
    fn reach(&mut self, _host: &str, _key: &str) -> Result<(), String> {
        Err("this device is not a transport".into())
    }

    /// Registers memory for sending (VMI 2.1: `VMI_Buffer_Register`), or a buffer the
    /// application publishes for RDMA; returns a handle (0: nothing to undo). The host keeps
    /// `base..base+len` mapped until [`Device::deregister`]. For a transport with
    /// [`Device::RDMA_ACCESS`] the host calls it only for a buffer the application publishes
    /// to a peer, never for send buffers: a transport that names memory to peers by a key
    /// (an RDMA NIC's rkey) registers it for the peer's reads and writes and puts that key in
    /// the handle's low 32 bits; the host sends it with the published buffer, and the peer's
    /// transport gets it back in [`crate::abi::VmiRdmaKey::remote_key`].
    fn register(&mut self, _base: *mut u8, _len: usize) -> u64 {
        0
    }

    /// Transports with [`Device::RDMA_ACCESS`] (ABI 1.4): as [`Device::register`], for a
    /// buffer the application publishes to the peer of connection `conn` alone, so the
    /// transport can scope the registration to that connection. The default registers it as
    /// `register` does.
    fn register_conn(&mut self, _conn: u64, base: *mut u8, len: usize) -> u64 {
        self.register(base, len)
    }

    /// Undoes `register` and `register_conn`.
    fn deregister(&mut self, _handle: u64) {}

    /// Reads a runtime attribute as text (Globus XIO `attr_cntl`); `None` if unknown.
    fn get_attr(&self, _name: &str) -> Option<String> {
        None
    }

    /// Changes a runtime attribute on a live chain; the error says why not.
    fn set_attr(&mut self, name: &str, _value: &str) -> Result<(), String> {
        Err(format!("no attribute '{name}'"))
    }
}
