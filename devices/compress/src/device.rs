//! The compression filter.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::os::fd::RawFd;
use std::time::Duration;

use vmi_device::Status;
use vmi_device::held::HeldBuffers;
use vmi_device::{CompletingIrb, Config, Device, DeviceKind, Disposition, Hooks, Host, Irb, Op};

use crate::config::{CompressConfig, PARAMS, check_level};
use crate::wire::{Algorithm, FLAG_COMPRESSED, HEADER, Header};

/// Per-IRB frame: the buffer (index + 1) holding this IRB's compressed or decompressed bytes.
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct CompressFrame {
    held: u32,
}

/// LZ4 / zstd filter.
pub struct CompressFilter {
    config: CompressConfig,
    zc: zstd::bulk::Compressor<'static>,
    zd: zstd::bulk::Decompressor<'static>,
    buffers: HeldBuffers,
    scratch: Vec<u8>,
    compressed: u64,
    skipped: u64,
    bytes_in: u64,
    bytes_out: u64,
    refused: u64,
    /// Decompressed bytes this poll (see `decompress_per_poll`).
    spent: u64,
    /// Received IRBs waiting for the next poll's budget, in arrival order.
    waiting: VecDeque<Irb>,
    /// Times the budget made fragments wait.
    deferred: u64,
}

impl CompressFilter {
    /// The IRB's data as one slice (copied into `scratch` only when it has several segments).
    fn gather<'a>(irb: &'a Irb, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        if irb.segments().len() == 1 {
            return irb.segment(0);
        }
        scratch.clear();
        for i in 0..irb.segments().len() {
            scratch.extend_from_slice(irb.segment(i));
        }
        scratch
    }

    /// Compresses `input` into `out[HEADER..]`; the compressed length, or None when it would
    /// not be smaller.
    fn compress(&mut self, input_is_scratch: bool, irb: &Irb, out: &mut Vec<u8>) -> Option<usize> {
        let input: &[u8] = if input_is_scratch {
            &self.scratch
        } else {
            irb.segment(0)
        };
        let n = match self.config.algorithm {
            Algorithm::Lz4 => {
                out.resize(
                    HEADER + lz4_flex::block::get_maximum_output_size(input.len()),
                    0,
                );
                lz4_flex::block::compress_into(input, &mut out[HEADER..]).ok()?
            }
            Algorithm::Zstd => {
                out.resize(HEADER + zstd::zstd_safe::compress_bound(input.len()), 0);
                self.zc.compress_to_buffer(input, &mut out[HEADER..]).ok()?
            }
        };
        (n + HEADER < input.len()).then_some(n)
    }
}

impl CompressFilter {
    /// Decompresses a received fragment in place of its data, after checking its header
    /// against the limits; memory is committed for the claimed size only when the claim is
    /// plausible (an LZ4 block cannot expand more than 255 times; a zstd frame must declare
    /// the same size), and it is not zero-filled first.
    fn decompress(&mut self, mut irb: Irb) -> Result<Irb, (Irb, Status)> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let input = Self::gather(&irb, &mut scratch);
        let Some(h) = Header::parse(input) else {
            self.scratch = scratch;
            irb.set_detail("compress: a fragment marked compressed has no valid header");
            return Err((irb, Status::Corrupt));
        };
        let body = &input[HEADER..];
        let claim = h.original_len as u64;
        let plausible = match h.algorithm {
            Algorithm::Lz4 => claim <= (body.len() as u64).saturating_mul(LZ4_MAX_RATIO) + 16,
            Algorithm::Zstd => {
                zstd::zstd_safe::get_frame_content_size(body).ok().flatten() == Some(claim)
            }
        };
        if claim > self.config.max_message || !plausible {
            let body_len = body.len();
            self.refused += 1;
            self.scratch = scratch;
            let why = if plausible {
                format!("over max_message {}", self.config.max_message)
            } else {
                format!("which {body_len} bytes of {:?} cannot hold", h.algorithm)
            };
            log::warn!(
                "compress: refused a fragment claiming {claim} bytes after decompression, {why}"
            );
            irb.set_detail(&format!(
                "compress: fragment claims {claim} bytes after decompression, {why} (compression bomb refused)"
            ));
            return Err((irb, Status::TooLarge));
        }
        let len = h.original_len as usize;
        let (result, out) = match h.algorithm {
            Algorithm::Lz4 => {
                let mut out = self.buffers.take(len);
                let r = lz4_flex::block::decompress_into(body, &mut out).map_err(|e| e.to_string());
                (r, out)
            }
            Algorithm::Zstd => {
                // Decompressed into the spare capacity: nothing is zeroed first.
                let mut out = self.buffers.take_empty(len);
                let r = self
                    .zd
                    .decompress_to_buffer(body, &mut out)
                    .map_err(|e| e.to_string());
                (r, out)
            }
        };
        self.scratch = scratch;
        let mut out = out;
        match result {
            Ok(n) if n == len => {}
            Ok(n) => {
                self.buffers.give(out);
                irb.set_detail(&format!(
                    "compress: decompressed {n} bytes, header said {len}"
                ));
                return Err((irb, Status::Corrupt));
            }
            Err(e) => {
                self.buffers.give(out);
                irb.set_detail(&format!("compress: cannot decompress: {e}"));
                return Err((irb, Status::Corrupt));
            }
        }
        out.truncate(len);
        self.spent += len as u64;
        replace_data(&mut irb, &mut out);
        irb.frame::<CompressFrame>().held = self.buffers.hold(out);
        irb.set_flags(irb.flags() & !FLAG_COMPRESSED);
        Ok(irb)
    }
}

/// An LZ4 block expands at most about 255 times (one literal-length byte per 255 bytes).
const LZ4_MAX_RATIO: u64 = 255;

#[allow(unsafe_code)]
fn replace_data(irb: &mut Irb, data: &mut [u8]) {
    irb.clear_segments();
    // SAFETY: `data` is a buffer kept in the filter's `held` table until this IRB's
    // completion step; its heap memory does not move.
    let _ = unsafe { irb.push_segment(data.as_mut_ptr(), data.len()) };
}

impl Device for CompressFilter {
    const NAME: &'static CStr = c"compress";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr =
        c"LZ4 or zstd per fragment, only when it saves space; bounded decompression";
    const KIND: DeviceKind = DeviceKind::Filter;
    const PARAMS: &'static [vmi_device::abi::VmiParamSpec] = PARAMS;
    // `poll` resumes fragments that waited for the per-poll decompression budget.
    const HOOKS: Hooks = Hooks::ALL;
    type Frame = CompressFrame;

    fn create(_host: Host, config: &Config) -> Result<Self, String> {
        let config = CompressConfig::from_config(config)?;
        let zc = zstd::bulk::Compressor::new(config.level).map_err(|e| format!("zstd: {e}"))?;
        let zd = zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?;
        Ok(CompressFilter {
            config,
            zc,
            zd,
            buffers: HeldBuffers::default(),
            scratch: Vec::new(),
            compressed: 0,
            skipped: 0,
            bytes_in: 0,
            bytes_out: 0,
            refused: 0,
            spent: 0,
            waiting: VecDeque::new(),
            deferred: 0,
        })
    }

    fn submit(&mut self, mut irb: Irb) -> Disposition {
        let len = irb.data_len();
        if irb.op() != Op::Send || len < self.config.threshold.max(HEADER + 1) {
            return Disposition::Pass(irb);
        }
        let multi = irb.segments().len() > 1;
        if multi {
            let mut scratch = std::mem::take(&mut self.scratch);
            Self::gather(&irb, &mut scratch);
            self.scratch = scratch;
        }
        let bound = HEADER
            + match self.config.algorithm {
                Algorithm::Lz4 => lz4_flex::block::get_maximum_output_size(len),
                Algorithm::Zstd => zstd::zstd_safe::compress_bound(len),
            };
        let mut out = self.buffers.take(bound);
        match self.compress(multi, &irb, &mut out) {
            Some(n) => {
                out.truncate(HEADER + n);
                out[..HEADER].copy_from_slice(
                    &Header {
                        algorithm: self.config.algorithm,
                        original_len: len as u32,
                    }
                    .emit(),
                );
                self.compressed += 1;
                self.bytes_in += len as u64;
                self.bytes_out += out.len() as u64;
                replace_data(&mut irb, &mut out);
                irb.frame::<CompressFrame>().held = self.buffers.hold(out);
                irb.set_flags(irb.flags() | FLAG_COMPRESSED);
            }
            None => {
                self.skipped += 1;
                self.buffers.give(out);
            }
        }
        Disposition::Pass(irb)
    }

    fn receive(&mut self, irb: Irb) -> Disposition {
        if !self.waiting.is_empty() {
            // Fragments behind a waiting one wait too: order is kept.
            self.waiting.push_back(irb);
            return Disposition::Pending;
        }
        if irb.op() != Op::Recv || irb.flags() & FLAG_COMPRESSED == 0 {
            return Disposition::Pass(irb);
        }
        if self.spent >= self.config.per_poll {
            self.deferred += 1;
            self.waiting.push_back(irb);
            return Disposition::Pending;
        }
        match self.decompress(irb) {
            Ok(irb) => Disposition::Pass(irb),
            Err((irb, status)) => Disposition::Complete(irb, status),
        }
    }

    fn poll(&mut self, _budget: usize) -> usize {
        self.spent = 0;
        let mut n = 0;
        while self.spent < self.config.per_poll {
            let Some(irb) = self.waiting.pop_front() else {
                break;
            };
            n += 1;
            if irb.op() != Op::Recv || irb.flags() & FLAG_COMPRESSED == 0 {
                irb.pass();
                continue;
            }
            match self.decompress(irb) {
                Ok(irb) => irb.pass(),
                Err((irb, status)) => irb.complete(status),
            }
        }
        n
    }

    fn wait_fd(&self) -> (Option<RawFd>, Option<Duration>) {
        // Fragments wait for budget: come back at once.
        (None, (!self.waiting.is_empty()).then_some(Duration::ZERO))
    }

    fn complete(&mut self, irb: &mut CompletingIrb) {
        let held = std::mem::take(&mut irb.frame::<CompressFrame>().held);
        self.buffers.release(held);
    }

    fn get_attr(&self, name: &str) -> Option<String> {
        Some(match name {
            "algorithm" => format!("{:?}", self.config.algorithm).to_lowercase(),
            "level" => self.config.level.to_string(),
            "threshold" => self.config.threshold.to_string(),
            "compressed" => self.compressed.to_string(),
            "skipped" => self.skipped.to_string(),
            "bytes_in" => self.bytes_in.to_string(),
            "bytes_out" => self.bytes_out.to_string(),
            "refused" => self.refused.to_string(),
            _ => return None,
        })
    }

    fn set_attr(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "level" => {
                let level: i32 = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("'{value}' is not an integer"))?;
                check_level(level)?;
                self.zc
                    .set_compression_level(level)
                    .map_err(|e| format!("zstd: {e}"))?;
                self.config.level = level;
                Ok(())
            }
            "algorithm" => {
                self.config.algorithm = Algorithm::from_name(value)
                    .ok_or_else(|| format!("'{value}': expected lz4 or zstd"))?;
                Ok(())
            }
            "threshold" => {
                self.config.threshold = vmi_device::param::parse_uint(value)
                    .ok_or_else(|| format!("'{value}' is not a size"))?
                    as usize;
                Ok(())
            }
            _ => Err(format!(
                "no settable attribute '{name}'; settable: level, algorithm, threshold"
            )),
        }
    }
}
