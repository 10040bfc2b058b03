//! Small filters that exercise the engine: they record what happens to IRBs, pend them,
//! fail them, panic, or lose them. Each is exported like any device, so this also proves
//! that several devices link into one binary without symbol clashes.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::sync::Mutex;

use vmi_device::Status;
use vmi_device::abi::{VMI_PARAM_STRING, VMI_PARAM_UINT, VmiParamSpec};
use vmi_device::{CompletingIrb, Config, Device, DeviceKind, Disposition, Hooks, Host, Irb, param};

static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record(entry: String) {
    LOG.lock().unwrap().push(entry);
}

/// Entries recorded under `tag`, oldest first (with the tag stripped).
pub fn log_for(tag: &str) -> Vec<String> {
    let prefix = format!("{tag}:");
    LOG.lock()
        .unwrap()
        .iter()
        .filter_map(|e| e.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

/// Per-IRB frame of the recorder: a sequence number stamped at submit.
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Stamp {
    seq: u64,
    magic: u64,
}

/// Records submit/receive/complete with a per-IRB stamp in its frame.
pub struct Recorder {
    tag: String,
    seq: u64,
}

const TAG: &[VmiParamSpec] = &[param(
    c"tag",
    VMI_PARAM_STRING,
    c"rec",
    c"prefix of recorded entries",
)];

impl Device for Recorder {
    const NAME: &'static CStr = c"recorder";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr = c"test filter: records IRB events";
    const KIND: DeviceKind = DeviceKind::Filter;
    const WIRE_NEUTRAL: bool = true;
    const PARAMS: &'static [VmiParamSpec] = TAG;
    const HOOKS: Hooks = Hooks::FILTER;
    type Frame = Stamp;

    fn create(_host: Host, c: &Config) -> Result<Self, String> {
        Ok(Recorder {
            tag: c.get("tag").map_err(|e| e.to_string())?.to_string(),
            seq: 0,
        })
    }

    fn submit(&mut self, mut irb: Irb) -> Disposition {
        self.seq += 1;
        let f = irb.frame::<Stamp>();
        assert_eq!(f.magic, 0, "frames start zeroed");
        f.seq = self.seq;
        f.magic = 0xfeed;
        record(format!("{}:submit:{:?}:{}", self.tag, irb.op(), self.seq));
        Disposition::Pass(irb)
    }

    fn receive(&mut self, mut irb: Irb) -> Disposition {
        self.seq += 1;
        let f = irb.frame::<Stamp>();
        f.seq = self.seq;
        f.magic = 0xbeef;
        record(format!("{}:receive:{:?}:{}", self.tag, irb.op(), self.seq));
        Disposition::Pass(irb)
    }

    fn complete(&mut self, irb: &mut CompletingIrb) {
        let (op, status) = (irb.op(), irb.status());
        let f = *irb.frame::<Stamp>();
        record(format!(
            "{}:complete:{op:?}:{}:{:x}:{status:?}",
            self.tag, f.seq, f.magic
        ));
    }
}

/// Pends every send and, on poll, passes it on, completes it, or completes it from a thread.
pub struct Pender {
    mode: String,
    held: VecDeque<Irb>,
    host: Host,
}

const MODE: &[VmiParamSpec] = &[param(
    c"mode",
    VMI_PARAM_STRING,
    c"pass",
    c"pass | complete | thread",
)];

impl Device for Pender {
    const NAME: &'static CStr = c"pender";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr = c"test filter: pends sends until poll";
    const KIND: DeviceKind = DeviceKind::Filter;
    const WIRE_NEUTRAL: bool = true;
    const PARAMS: &'static [VmiParamSpec] = MODE;
    type Frame = ();

    fn create(host: Host, c: &Config) -> Result<Self, String> {
        Ok(Pender {
            mode: c.get("mode").map_err(|e| e.to_string())?.to_string(),
            held: VecDeque::new(),
            host,
        })
    }

    fn submit(&mut self, irb: Irb) -> Disposition {
        if irb.op() != vmi_device::Op::Send {
            return Disposition::Pass(irb);
        }
        self.held.push_back(irb);
        Disposition::Pending
    }

    fn poll(&mut self, budget: usize) -> usize {
        let n = self.held.len().min(budget);
        for _ in 0..n {
            let Some(irb) = self.held.pop_front() else {
                break;
            };
            match self.mode.as_str() {
                "complete" => irb.complete(Status::Ok),
                "thread" => {
                    let c = self.host.completer();
                    let remote = irb.into_remote();
                    std::thread::spawn(move || {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        c.complete(remote, Status::Ok);
                    });
                }
                _ => irb.pass(),
            }
        }
        n
    }
}

/// Fails IRBs with a chosen status: sends when `direction` is send, fragments on the way up
/// when it is receive.
pub struct Failer {
    status: Status,
    receive_side: bool,
}

const FAIL: &[VmiParamSpec] = &[
    param(
        c"status",
        VMI_PARAM_UINT,
        c"7",
        c"status code to complete with",
    ),
    param(c"direction", VMI_PARAM_STRING, c"send", c"send | receive"),
];

impl Device for Failer {
    const NAME: &'static CStr = c"failer";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr = c"test filter: fails data IRBs";
    const KIND: DeviceKind = DeviceKind::Filter;
    const WIRE_NEUTRAL: bool = true;
    const PARAMS: &'static [VmiParamSpec] = FAIL;
    const HOOKS: Hooks = Hooks {
        submit: true,
        receive: true,
        complete: false,
        poll: false,
    };
    type Frame = ();

    fn create(_host: Host, c: &Config) -> Result<Self, String> {
        Ok(Failer {
            status: Status::from_code(c.get_u64("status").map_err(|e| e.to_string())? as i32),
            receive_side: c.get("direction").map_err(|e| e.to_string())? == "receive",
        })
    }

    fn submit(&mut self, mut irb: Irb) -> Disposition {
        if !self.receive_side && irb.op() == vmi_device::Op::Send {
            irb.set_detail("failed by the failer test filter");
            return Disposition::Complete(irb, self.status);
        }
        Disposition::Pass(irb)
    }

    fn receive(&mut self, mut irb: Irb) -> Disposition {
        if self.receive_side && irb.op() == vmi_device::Op::Recv {
            irb.set_detail("failed by the failer test filter");
            return Disposition::Complete(irb, self.status);
        }
        Disposition::Pass(irb)
    }
}

/// Panics in create or submit.
pub struct Panicker {
    in_submit: bool,
}

const WHERE: &[VmiParamSpec] = &[param(
    c"at",
    VMI_PARAM_STRING,
    c"submit",
    c"create | submit",
)];

impl Device for Panicker {
    const NAME: &'static CStr = c"panicker";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr = c"test filter: panics";
    const KIND: DeviceKind = DeviceKind::Filter;
    const WIRE_NEUTRAL: bool = true;
    const PARAMS: &'static [VmiParamSpec] = WHERE;
    type Frame = ();

    fn create(_host: Host, c: &Config) -> Result<Self, String> {
        if c.get("at").map_err(|e| e.to_string())? == "create" {
            panic!("panicker: told to panic in create");
        }
        Ok(Panicker { in_submit: true })
    }

    fn submit(&mut self, irb: Irb) -> Disposition {
        if self.in_submit && irb.op() == vmi_device::Op::Send {
            panic!("panicker: told to panic in submit");
        }
        Disposition::Pass(irb)
    }
}

/// Loses every send (drops the handle).
pub struct Dropper;

impl Device for Dropper {
    const NAME: &'static CStr = c"dropper";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr = c"test filter: drops sends";
    const KIND: DeviceKind = DeviceKind::Filter;
    const WIRE_NEUTRAL: bool = true;
    type Frame = ();

    fn create(_host: Host, _c: &Config) -> Result<Self, String> {
        Ok(Dropper)
    }

    fn submit(&mut self, irb: Irb) -> Disposition {
        if irb.op() == vmi_device::Op::Send {
            drop(irb);
            return Disposition::Pending;
        }
        Disposition::Pass(irb)
    }
}

/// Answers `VMI_OP_ABORT` as a device of device ABI 1.4 or older does (it does not know the
/// operation: `Invalid`), and passes everything else: the host must fall back to an orderly
/// close.
pub struct OldAbi;

impl Device for OldAbi {
    const NAME: &'static CStr = c"oldabi";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr = c"test filter: refuses aborts as an ABI 1.4 device";
    const KIND: DeviceKind = DeviceKind::Filter;
    const WIRE_NEUTRAL: bool = true;
    type Frame = ();

    fn create(_host: Host, _c: &Config) -> Result<Self, String> {
        Ok(OldAbi)
    }

    fn submit(&mut self, mut irb: Irb) -> Disposition {
        if irb.op() == vmi_device::Op::Abort {
            irb.set_detail("oldabi does not handle Unknown(6)");
            return Disposition::Complete(irb, Status::Invalid);
        }
        Disposition::Pass(irb)
    }
}

vmi_device::export_device!(Recorder, vmi_device_recorder, register = register_recorder);
vmi_device::export_device!(Pender, vmi_device_pender, register = register_pender);
vmi_device::export_device!(Failer, vmi_device_failer, register = register_failer);
vmi_device::export_device!(Panicker, vmi_device_panicker, register = register_panicker);
vmi_device::export_device!(Dropper, vmi_device_dropper, register = register_dropper);
vmi_device::export_device!(OldAbi, vmi_device_oldabi, register = register_oldabi);

/// Registers the test devices.
pub fn register() {
    register_recorder();
    register_pender();
    register_failer();
    register_panicker();
    register_dropper();
    register_oldabi();
}
