//! The CRC filter.

use std::ffi::CStr;

use vmi_device::Status;
use vmi_device::{Capabilities, Config, Device, DeviceKind, Disposition, Hooks, Host, Irb, Op};

use crate::config::{CrcConfig, PARAMS};
use crate::wire::{TRAILER, crc_of, emit, parse};

/// Per-IRB frame: the trailer bytes a send points at until it completes.
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct CrcFrame {
    trailer: [u8; TRAILER],
}

/// CRC32C trailer filter.
pub struct CrcFilter {
    config: CrcConfig,
    checked: u64,
    mismatches: u64,
    appended: u64,
}

impl CrcFilter {
    /// The last `TRAILER` bytes of the IRB's data, across segments.
    fn trailer_of(irb: &Irb, len: usize) -> [u8; TRAILER] {
        let mut out = [0u8; TRAILER];
        let mut pos = 0usize;
        let start = len - TRAILER;
        for i in 0..irb.segments().len() {
            let seg = irb.segment(i);
            let (lo, hi) = (pos, pos + seg.len());
            for (k, b) in out.iter_mut().enumerate() {
                let at = start + k;
                if at >= lo && at < hi {
                    *b = seg[at - lo];
                }
            }
            pos = hi;
        }
        out
    }

    /// CRC of the first `len` bytes across segments.
    fn crc_prefix(irb: &Irb, len: usize) -> u32 {
        let mut left = len;
        crc_of((0..irb.segments().len()).map_while(|i| {
            if left == 0 {
                return None;
            }
            let seg = irb.segment(i);
            let take = seg.len().min(left);
            left -= take;
            Some(&seg[..take])
        }))
    }
}

#[allow(unsafe_code)]
fn append_trailer(irb: &mut Irb) -> bool {
    let ptr = irb.frame::<CrcFrame>().trailer.as_mut_ptr();
    // SAFETY: the trailer lives in this IRB's frame, which stays valid and unchanged until
    // the IRB completes.
    unsafe { irb.push_segment(ptr, TRAILER) }
}

impl Device for CrcFilter {
    const NAME: &'static CStr = c"crc";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr =
        c"CRC32C trailer per fragment (integrity, not authentication)";
    const KIND: DeviceKind = DeviceKind::Filter;
    const PARAMS: &'static [vmi_device::abi::VmiParamSpec] = PARAMS;
    const HOOKS: Hooks = Hooks {
        submit: true,
        receive: true,
        complete: false,
        poll: false,
    };
    type Frame = CrcFrame;

    fn create(_host: Host, config: &Config) -> Result<Self, String> {
        Ok(CrcFilter {
            config: CrcConfig::from_config(config)?,
            checked: 0,
            mismatches: 0,
            appended: 0,
        })
    }

    fn capabilities(&self, below: Capabilities) -> Capabilities {
        Capabilities {
            max_fragment: below.max_fragment.saturating_sub(TRAILER as u64),
            tailroom: below.tailroom + TRAILER as u32,
            ..below
        }
    }

    fn submit(&mut self, mut irb: Irb) -> Disposition {
        if irb.op() != Op::Send {
            return Disposition::Pass(irb);
        }
        let crc = crc_of((0..irb.segments().len()).map(|i| irb.segment(i)));
        irb.frame::<CrcFrame>().trailer = emit(crc);
        if !append_trailer(&mut irb) {
            irb.set_detail("crc: no free segment for the trailer; send at most 15 buffers per fragment through crc");
            return Disposition::Complete(irb, Status::Invalid);
        }
        self.appended += 1;
        Disposition::Pass(irb)
    }

    fn receive(&mut self, mut irb: Irb) -> Disposition {
        if irb.op() != Op::Recv {
            return Disposition::Pass(irb);
        }
        let len = irb.data_len();
        if len < TRAILER {
            self.mismatches += 1;
            irb.set_detail(&format!(
                "crc: fragment of {len} bytes is shorter than its {TRAILER}-byte trailer"
            ));
            return Disposition::Complete(irb, Status::Corrupt);
        }
        if self.config.verify {
            self.checked += 1;
            let want = parse(Self::trailer_of(&irb, len));
            let got = Self::crc_prefix(&irb, len - TRAILER);
            if want != got {
                self.mismatches += 1;
                log::warn!(
                    "crc: fragment of {} bytes on conn {:#x} failed its check",
                    len - TRAILER,
                    irb.conn()
                );
                irb.set_detail(&format!(
                    "crc: CRC32C mismatch on a {}-byte fragment (computed {got:#010x}, trailer says {want:#010x})",
                    len - TRAILER
                ));
                return Disposition::Complete(irb, Status::Corrupt);
            }
        }
        irb.truncate(len - TRAILER);
        Disposition::Pass(irb)
    }

    fn get_attr(&self, name: &str) -> Option<String> {
        match name {
            "checked" => Some(self.checked.to_string()),
            "mismatches" => Some(self.mismatches.to_string()),
            "appended" => Some(self.appended.to_string()),
            "verify" => Some(self.config.verify.to_string()),
            _ => None,
        }
    }

    fn set_attr(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "verify" => {
                self.config.verify = vmi_device::param::parse_bool(value)
                    .ok_or_else(|| format!("'{value}' is not true or false"))?;
                Ok(())
            }
            _ => Err(format!("no settable attribute '{name}'; settable: verify")),
        }
    }
}
