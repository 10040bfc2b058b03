//! `invert`: a filter that sends every byte inverted (`!b`) and restores it on receive,
//! marking the fragments it changed with a filter flag bit. It exists to show a complete
//! third-party device: parameters, a frame, buffers held until completion, attributes.
//!
//! Build: `cargo build --manifest-path examples/out-of-tree-device/Cargo.toml`, then name
//! `libvmi_invert.so` in a specfile on both sides (it changes the wire, so both need it).
#![deny(unsafe_code)]

use std::ffi::CStr;

use vmi_device::abi::{VMI_PARAM_BOOL, VmiParamSpec};
use vmi_device::{CompletingIrb, Config, Device, DeviceKind, Disposition, Hooks, Host, Irb, Op, param};
use vmi_device::held::HeldBuffers;

/// The flag bit this filter sets on fragments it inverted.
const FLAG_INVERTED: u32 = 1 << 17;

const PARAMS: &[VmiParamSpec] = &[param(c"enabled", VMI_PARAM_BOOL, c"true", c"invert outgoing fragments")];

/// Which held copy an IRB points at (index + 1).
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Frame {
    copy: u32,
}

/// The invert filter.
pub struct Invert {
    enabled: bool,
    /// Inverted copies lent to IRBs until their completion step.
    copies: HeldBuffers,
    inverted: u64,
}

#[allow(unsafe_code)]
fn point_at(irb: &mut Irb, data: &mut [u8]) {
    irb.clear_segments();
    // SAFETY: `data` is held in `copies` until this IRB's completion step.
    let _ = unsafe { irb.push_segment(data.as_mut_ptr(), data.len()) };
}

impl Device for Invert {
    const NAME: &'static CStr = c"invert";
    const VERSION: &'static CStr = c"0.1.0";
    const DESCRIPTION: &'static CStr = c"example third-party filter: inverts bytes on the wire";
    const KIND: DeviceKind = DeviceKind::Filter;
    const PARAMS: &'static [VmiParamSpec] = PARAMS;
    const HOOKS: Hooks = Hooks::FILTER;
    type Frame = Frame;

    fn create(host: Host, config: &Config) -> Result<Self, String> {
        let enabled = config.get_bool("enabled").map_err(|e| e.to_string())?;
        log::info!("invert: ready for key '{}' (enabled: {enabled})", host.local_key());
        Ok(Invert { enabled, copies: HeldBuffers::default(), inverted: 0 })
    }

    fn submit(&mut self, mut irb: Irb) -> Disposition {
        if irb.op() != Op::Send || !self.enabled {
            return Disposition::Pass(irb);
        }
        // Never write the application's buffers: invert into a copy held until completion.
        let mut copy: Vec<u8> = (0..irb.segments().len()).flat_map(|i| irb.segment(i).iter().map(|b| !b)).collect();
        point_at(&mut irb, &mut copy);
        let slot = self.copies.hold(copy);
        irb.frame::<Frame>().copy = slot;
        irb.set_flags(irb.flags() | FLAG_INVERTED);
        self.inverted += 1;
        Disposition::Pass(irb)
    }

    fn receive(&mut self, mut irb: Irb) -> Disposition {
        if irb.op() == Op::Recv && irb.flags() & FLAG_INVERTED != 0 {
            // Received bytes belong to the transport until release: invert them in place.
            for i in 0..irb.segments().len() {
                if let Some(seg) = irb.segment_mut(i) {
                    seg.iter_mut().for_each(|b| *b = !*b);
                }
            }
            irb.set_flags(irb.flags() & !FLAG_INVERTED);
        }
        Disposition::Pass(irb)
    }

    fn complete(&mut self, irb: &mut CompletingIrb) {
        let copy = std::mem::take(&mut irb.frame::<Frame>().copy);
        self.copies.release(copy);
    }

    fn get_attr(&self, name: &str) -> Option<String> {
        (name == "inverted").then(|| self.inverted.to_string())
    }
}

vmi_device::export_device!(Invert, vmi_device_invert);
