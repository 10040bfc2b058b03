//! # vmi-trace
//!
//! Counts messages, fragments, bytes and errors per connection and direction, and optionally
//! logs one line per IRB (at info level, target `vmi_trace`). Wire-neutral: it may run on one
//! side only. Counters are read through runtime attributes:
//!
//! ```ignore
//! vmi.attr_get("trace", "counters")?;        // one line per connection
//! vmi.attr_get("trace", "sent_bytes")?;      // totals: sent_/received_ messages, fragments, bytes, errors
//! vmi.attr_set("trace", "log", "true")?;     // per-IRB log lines on a live chain
//! ```
#![deny(unsafe_code)]

pub mod config;
pub mod device;
pub mod wire;

pub use device::TraceFilter;

vmi_device::export_device!(TraceFilter, vmi_device_trace);
