//! The trace filter.

use std::collections::BTreeMap;
use std::ffi::CStr;

use vmi_device::Status;
use vmi_device::{CompletingIrb, Config, Device, DeviceKind, Disposition, Hooks, Host, Irb, Op};

use crate::config::{PARAMS, TraceConfig};

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Complete messages (last fragments).
    pub messages: u64,
    /// Fragments.
    pub fragments: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Failed IRBs.
    pub errors: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.messages += o.messages;
        self.fragments += o.fragments;
        self.bytes += o.bytes;
        self.errors += o.errors;
    }
}

/// Counting, logging filter.
pub struct TraceFilter {
    config: TraceConfig,
    conns: BTreeMap<u64, [Counters; 2]>,
}

const SENT: usize = 0;
const RECEIVED: usize = 1;

impl TraceFilter {
    fn count(&mut self, conn: u64, dir: usize) -> &mut Counters {
        &mut self.conns.entry(conn).or_default()[dir]
    }

    fn total(&self, dir: usize) -> Counters {
        let mut t = Counters::default();
        for c in self.conns.values() {
            t.add(&c[dir]);
        }
        t
    }
}

impl Device for TraceFilter {
    const NAME: &'static CStr = c"trace";
    const VERSION: &'static CStr = c"1.0.0";
    const DESCRIPTION: &'static CStr = c"per-connection counters and optional per-IRB log lines";
    const KIND: DeviceKind = DeviceKind::Filter;
    const WIRE_NEUTRAL: bool = true;
    const PARAMS: &'static [vmi_device::abi::VmiParamSpec] = PARAMS;
    const HOOKS: Hooks = Hooks::FILTER;
    type Frame = ();

    fn create(_host: Host, config: &Config) -> Result<Self, String> {
        Ok(TraceFilter {
            config: TraceConfig::from_config(config)?,
            conns: BTreeMap::new(),
        })
    }

    fn submit(&mut self, irb: Irb) -> Disposition {
        if self.config.log {
            log::info!(target: "vmi_trace", "send {:?} conn {:#x} {} bytes flags {:#x}", irb.op(), irb.conn(), irb.data_len(), irb.flags());
        }
        if irb.op() == Op::Send {
            let (end, len) = (irb.is_end(), irb.data_len() as u64);
            let c = self.count(irb.conn(), SENT);
            c.fragments += 1;
            c.bytes += len;
            c.messages += u64::from(end);
        }
        Disposition::Pass(irb)
    }

    fn receive(&mut self, irb: Irb) -> Disposition {
        if self.config.log {
            log::info!(target: "vmi_trace", "recv {:?} conn {:#x} {} bytes flags {:#x} status {}", irb.op(), irb.conn(), irb.data_len(), irb.flags(), irb.status());
        }
        match irb.op() {
            Op::Recv => {
                let (end, len) = (irb.is_end(), irb.data_len() as u64);
                let c = self.count(irb.conn(), RECEIVED);
                c.fragments += 1;
                c.bytes += len;
                c.messages += u64::from(end);
            }
            Op::PeerDisconnect if irb.status() != Status::Ok => {
                self.count(irb.conn(), RECEIVED).errors += 1
            }
            _ => {}
        }
        Disposition::Pass(irb)
    }

    fn complete(&mut self, irb: &mut CompletingIrb) {
        let status = irb.status();
        if self.config.log {
            log::info!(target: "vmi_trace", "done {:?} conn {:#x} status {status}", irb.op(), irb.conn());
        }
        if status != Status::Ok {
            let dir = if irb.op() == Op::Recv { RECEIVED } else { SENT };
            self.count(irb.conn(), dir).errors += 1;
        }
    }

    fn get_attr(&self, name: &str) -> Option<String> {
        let (s, r) = (self.total(SENT), self.total(RECEIVED));
        Some(match name {
            "counters" => self
                .conns
                .iter()
                .map(|(conn, [s, r])| {
                    format!(
                        "conn={conn:#x} sent: messages={} fragments={} bytes={} errors={}; received: messages={} fragments={} bytes={} errors={}\n",
                        s.messages, s.fragments, s.bytes, s.errors, r.messages, r.fragments, r.bytes, r.errors
                    )
                })
                .collect(),
            "sent_messages" => s.messages.to_string(),
            "sent_fragments" => s.fragments.to_string(),
            "sent_bytes" => s.bytes.to_string(),
            "sent_errors" => s.errors.to_string(),
            "received_messages" => r.messages.to_string(),
            "received_fragments" => r.fragments.to_string(),
            "received_bytes" => r.bytes.to_string(),
            "received_errors" => r.errors.to_string(),
            "log" => self.config.log.to_string(),
            _ => return None,
        })
    }

    fn set_attr(&mut self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "log" => {
                self.config.log = vmi_device::param::parse_bool(value)
                    .ok_or_else(|| format!("'{value}' is not true or false"))?;
                Ok(())
            }
            "reset" => {
                self.conns.clear();
                Ok(())
            }
            _ => Err(format!(
                "no settable attribute '{name}'; settable: log, reset"
            )),
        }
    }
}
