//! The skeleton filter: passes everything through and counts what it saw.

use std::ffi::CStr;

use vmi_device::{Capabilities, Config, Device, DeviceKind, Disposition, Hooks, Host, Irb, Op};

use crate::config::{PARAMS, SkeletonConfig};
use crate::wire::{HEADROOM, TAILROOM};

/// A do-nothing filter.
pub struct SkeletonFilter {
    config: SkeletonConfig,
    sent: u64,
    received: u64,
}

impl Device for SkeletonFilter {
    const NAME: &'static CStr = c"skeleton";
    const VERSION: &'static CStr = c"0.1.0";
    const DESCRIPTION: &'static CStr = c"do-nothing filter: the template for new devices";
    const KIND: DeviceKind = DeviceKind::Filter;
    // The skeleton changes no bytes, but it stays in the filter signature (the default) so the
    // shipped tcp-skeleton specfile shows the handshake's filter check at work. A filter that
    // only observes (tracing, delays) sets `WIRE_NEUTRAL = true` and may run on one side.
    const WIRE_NEUTRAL: bool = false;
    const PARAMS: &'static [vmi_device::abi::VmiParamSpec] = PARAMS;
    // Only the hooks the filter uses: submit and receive. It keeps nothing per IRB, so it has
    // no completion step, and the host never calls it when an IRB completes. Export
    // `complete` (Hooks::FILTER) only to free something held in the frame; every hook
    // exported costs a call per message even when it does nothing.
    const HOOKS: Hooks = Hooks::TRANSFORM;
    /// No per-IRB state. A filter that allocates per fragment keeps its handle here.
    type Frame = ();

    fn create(_host: Host, config: &Config) -> Result<Self, String> {
        Ok(SkeletonFilter {
            config: SkeletonConfig::from_config(config)?,
            sent: 0,
            received: 0,
        })
    }

    fn capabilities(&self, below: Capabilities) -> Capabilities {
        // A filter subtracts what it adds from what the application may send.
        Capabilities {
            max_fragment: below
                .max_fragment
                .saturating_sub((HEADROOM + TAILROOM) as u64),
            headroom: below.headroom + HEADROOM,
            tailroom: below.tailroom + TAILROOM,
            ..below
        }
    }

    fn submit(&mut self, irb: Irb) -> Disposition {
        self.sent += 1;
        if self.config.log_each {
            log_irb("submit", irb.op(), irb.conn(), irb.data_len());
        }
        Disposition::Pass(irb)
    }

    fn receive(&mut self, irb: Irb) -> Disposition {
        self.received += 1;
        if self.config.log_each {
            log_irb("receive", irb.op(), irb.conn(), irb.data_len());
        }
        Disposition::Pass(irb)
    }
}

/// Logs one IRB: out of line and cold, so the per-IRB path stays a few instructions when
/// logging is off (inlined, the formatting would make every call set up a stack frame).
#[cold]
#[inline(never)]
fn log_irb(what: &str, op: Op, conn: u64, len: usize) {
    log::debug!("skeleton: {what} {op:?} on conn {conn:#x}, {len} bytes");
}

impl Drop for SkeletonFilter {
    fn drop(&mut self) {
        log::debug!("skeleton: {} IRBs down, {} up", self.sent, self.received);
    }
}
