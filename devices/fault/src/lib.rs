//! # vmi-fault
//!
//! The test tool for every error path (VMI 2.1's "delay device", smoltcp's `FaultInjector`):
//! with seeded randomness it drops, duplicates, corrupts, reorders or delays data fragments,
//! per direction, at rates set by parameters and changeable at run time through attributes.
//!
//! | fault | send direction | receive direction |
//! |---|---|---|
//! | drop | completed as sent, never transmitted | consumed, never delivered |
//! | corrupt | one bit flipped in a copy (the application's buffer is untouched) | one bit flipped in place |
//! | duplicate | not possible (a device cannot create sends); counted as skipped | delivered twice |
//! | reorder | held until the next fragment has passed | same |
//! | delay | held for `delay_ms` | same |
//!
//! Only data is faulted: the hosts' own messages (`VMI_FLAG_HOST`, such as "message N failed
//! here") pass untouched and draw nothing from the random stream, so a seed gives the same
//! faults whatever the timing of those notices.
//!
//! The filter changes no framing, so it is wire-neutral: it may run on one side only.
//! The seed is logged at start-up; set `seed` to replay a run.
#![deny(unsafe_code)]

pub mod config;
pub mod device;
pub mod wire;

pub use device::FaultFilter;

vmi_device::export_device!(FaultFilter, vmi_device_fault);
