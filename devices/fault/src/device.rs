//! The fault filter.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use vmi_device::Status;
use vmi_device::abi::VMI_FLAG_HOST;
use vmi_device::held::HeldBuffers;
use vmi_device::hostmsg::HostMsg;
use vmi_device::{CompletingIrb, Config, Device, DeviceKind, Disposition, Host, Irb, Op};

use crate::config::{FaultConfig, PARAMS, rate};

/// Per-IRB frame: a corrupted copy of a send's data (index + 1), freed at completion.
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct FaultFrame {
    copy: u32,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    seen: u64,
    dropped: u64,
    duplicated: u64,
    corrupted: u64,
    reordered: u64,
    delayed: u64,
}

/// Seeded fault injector.
pub struct FaultFilter {
    host: Host,
    config: FaultConfig,
    rng: u64,
    delayed: VecDeque<(Instant, Irb)>,
    reorder: [Option<(Instant, Irb)>; 2],
    copies: HeldBuffers,
    counts: Counts,
}

impl FaultFilter {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn after(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.config.delay_ms)
    }

    /// Applies the faults to one data IRB; `up` is the receive direction.
    fn inject(&mut self, mut irb: Irb, up: bool) -> Disposition {
        self.counts.seen += 1;
        let r = self.config.rates;
        if self.chance(r.drop) {
            self.counts.dropped += 1;
            log::debug!("fault: dropped a {}-byte fragment", irb.data_len());
            if up {
                // The receiving host fails the fragment's message as a whole.
                irb.set_detail("the fault filter dropped this fragment");
                return Disposition::Complete(irb, Status::Lost);
            }
            // On the send side the fragment is replaced by a notice that it was lost, as a
            // transport that numbers its fragments would notice the gap: the receiving host
            // then fails the message instead of splicing the fragments around the hole.
            let mut notice = HostMsg::FragmentLost {
                detail: "the sender's fault filter dropped it".into(),
            }
            .encode();
            replace_data(&mut irb, &mut notice);
            irb.frame::<FaultFrame>().copy = self.copies.hold(notice);
            irb.set_flags(irb.flags() | VMI_FLAG_HOST);
            return Disposition::Pass(irb);
        }
        if self.chance(r.corrupt) && irb.data_len() > 0 {
            self.counts.corrupted += 1;
            let r = self.next();
            if up {
                let seg = (0..irb.segments().len())
                    .find(|&i| !irb.segment(i).is_empty())
                    .unwrap_or(0);
                if let Some(bytes) = irb.segment_mut(seg) {
                    flip_bit(bytes, r);
                }
            } else {
                let mut copy: Vec<u8> = (0..irb.segments().len())
                    .flat_map(|i| irb.segment(i).to_vec())
                    .collect();
                flip_bit(&mut copy, r);
                replace_data(&mut irb, &mut copy);
                let slot = self.copies.hold(copy);
                irb.frame::<FaultFrame>().copy = slot;
            }
        }
        if up && self.chance(r.duplicate) {
            self.counts.duplicated += 1;
            if let Some(mut dup) = self.host.alloc_irb(Op::Recv, irb.conn()) {
                dup.set_flags(irb.flags());
                let data: Vec<u8> = (0..irb.segments().len())
                    .flat_map(|i| irb.segment(i).to_vec())
                    .collect();
                if dup.attach(&data).is_ok() {
                    dup.pass();
                } else {
                    dup.complete(Status::Ok);
                }
            }
        }
        let d = usize::from(up);
        if let Some((_, held)) = self.reorder[d].take() {
            // The host runs a pass from inside a device after the device returns, so the held
            // fragment follows this one.
            self.counts.reordered += 1;
            held.pass();
        } else if self.chance(r.reorder) {
            let until = self.after();
            self.reorder[d] = Some((until, irb));
            return Disposition::Pending;
        }
        if self.chance(r.delay) {
            self.counts.delayed += 1;
            let until = self.after();
            self.delayed.push_back((until, irb));
            return Disposition::Pending;
        }
        Disposition::Pass(irb)
    }
}

/// Flips one bit of `data` chosen by the random value `r`.
fn flip_bit(data: &mut [u8], r: u64) {
    if data.is_empty() {
        return;
    }
    let at = (r % data.len() as u64) as usize;
    data[at] ^= 1 << ((r >> 32) % 8);
}

#[allow(unsafe_code)]
fn replace_data(irb: &mut Irb, data: &mut [u8]) {
    irb.clear_segments();
    // SAFETY: the copy stays in the filter's `copies` table until the IRB's completion step.
    let _ = unsafe { irb.push_segment(data.as_mut_ptr(), data.len()) };
}

impl Device for FaultFilter {
    const NAME: &'static CStr = c"fault";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr =
        c"seeded drop, duplicate, corrupt, reorder and delay of fragments (testing)";
    const KIND: DeviceKind = DeviceKind::Filter;
    const WIRE_NEUTRAL: bool = true;
    const PARAMS: &'static [vmi_device::abi::VmiParamSpec] = PARAMS;
    type Frame = FaultFrame;

    fn create(host: Host, config: &Config) -> Result<Self, String> {
        let mut config = FaultConfig::from_config(config)?;
        if config.seed == 0 {
            config.seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9e37_79b9)
                | 1;
        }
        log::info!(
            "fault: seed {} (set the 'seed' parameter to replay), rates {:?}",
            config.seed,
            config.rates
        );
        Ok(FaultFilter {
            host,
            rng: config.seed,
            config,
            delayed: VecDeque::new(),
            reorder: [None, None],
            copies: HeldBuffers::default(),
            counts: Counts::default(),
        })
    }

    fn submit(&mut self, irb: Irb) -> Disposition {
        // The hosts' own messages ("message N failed here") are left alone, and draw nothing
        // from the random stream: faults land on data alone, the same ones in every run
        // whatever the interleaving of a host's notices (a lost notice would model a loss the
        // reliable transports below cannot have, and leave a sender wrongly content).
        if irb.op() == Op::Send && self.config.send && irb.flags() & VMI_FLAG_HOST == 0 {
            self.inject(irb, false)
        } else {
            Disposition::Pass(irb)
        }
    }

    fn receive(&mut self, irb: Irb) -> Disposition {
        if irb.op() == Op::Recv && self.config.receive && irb.flags() & VMI_FLAG_HOST == 0 {
            self.inject(irb, true)
        } else {
            Disposition::Pass(irb)
        }
    }

    fn complete(&mut self, irb: &mut CompletingIrb) {
        let copy = std::mem::take(&mut irb.frame::<FaultFrame>().copy);
        self.copies.release(copy);
    }

    fn poll(&mut self, budget: usize) -> usize {
        let now = Instant::now();
        let mut n = 0;
        for d in 0..2 {
            if self.reorder[d].as_ref().is_some_and(|(t, _)| *t <= now)
                && let Some((_, irb)) = self.reorder[d].take()
            {
                irb.pass();
                n += 1;
            }
        }
        while n < budget && self.delayed.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, irb)) = self.delayed.pop_front() {
                irb.pass();
                n += 1;
            }
        }
        n
    }

    fn wait_fd(&self) -> (Option<RawFd>, Option<Duration>) {
        let now = Instant::now();
        let next = self
            .delayed
            .iter()
            .map(|(t, _)| *t)
            .chain(self.reorder.iter().flatten().map(|(t, _)| *t))
            .min()
            .map(|t| t.saturating_duration_since(now));
        (None, next)
    }

    fn get_attr(&self, name: &str) -> Option<String> {
        let c = self.counts;
        let r = self.config.rates;
        Some(match name {
            "seed" => self.config.seed.to_string(),
            "seen" => c.seen.to_string(),
            "dropped" => c.dropped.to_string(),
            "duplicated" => c.duplicated.to_string(),
            "corrupted" => c.corrupted.to_string(),
            "reordered" => c.reordered.to_string(),
            "delayed" => c.delayed.to_string(),
            "drop" => r.drop.to_string(),
            "duplicate" => r.duplicate.to_string(),
            "corrupt" => r.corrupt.to_string(),
            "reorder" => r.reorder.to_string(),
            "delay" => r.delay.to_string(),
            "delay_ms" => self.config.delay_ms.to_string(),
            _ => return None,
        })
    }

    fn set_attr(&mut self, name: &str, value: &str) -> Result<(), String> {
        let r = &mut self.config.rates;
        match name {
            "drop" => r.drop = rate(name, value)?,
            "duplicate" => r.duplicate = rate(name, value)?,
            "corrupt" => r.corrupt = rate(name, value)?,
            "reorder" => r.reorder = rate(name, value)?,
            "delay" => r.delay = rate(name, value)?,
            "delay_ms" => {
                self.config.delay_ms = vmi_device::param::parse_uint(value)
                    .ok_or_else(|| format!("'{value}' is not a number"))?
            }
            _ => {
                return Err(format!(
                    "no settable attribute '{name}'; settable: drop, duplicate, corrupt, reorder, delay, delay_ms"
                ));
            }
        }
        Ok(())
    }
}

impl Drop for FaultFilter {
    fn drop(&mut self) {
        for (_, irb) in self.delayed.drain(..) {
            irb.complete(Status::Cancelled);
        }
        for (_, irb) in self.reorder.iter_mut().filter_map(Option::take) {
            irb.complete(Status::Cancelled);
        }
    }
}
