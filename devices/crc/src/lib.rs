//! # vmi-crc
//!
//! Appends a CRC32C of each fragment as a 4-byte little-endian trailer on send; on receive,
//! verifies and strips it. A mismatch fails that fragment with `Status::Corrupt`, delivered to
//! the application's `receive_failed` callback; the data is never handed to the application.
//!
//! CRC32C detects accidental corruption (bit flips, truncation, a buggy middlebox). It is
//! **integrity, not authentication**: anyone who can change the bytes can recompute the CRC.
//! Use an authenticated channel where an attacker may sit on the path.
#![deny(unsafe_code)]

pub mod config;
pub mod device;
pub mod wire;

pub use device::CrcFilter;

vmi_device::export_device!(CrcFilter, vmi_device_crc);
