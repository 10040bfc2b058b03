//! # vmi-compress
//!
//! Compresses each fragment at or above `threshold` bytes with LZ4 (default, `lz4_flex`) or
//! zstd (`algorithm=zstd`, `level`), and sends the compressed form only when it is smaller.
//! Compressed fragments carry the filter flag bit [`wire::FLAG_COMPRESSED`] and a 5-byte
//! header (algorithm, original length); the receiver decompresses what the flag marks, with
//! whichever algorithm the header names. Decompression is bounded by `max_message`: a header
//! claiming more is refused as `Status::TooLarge` before anything is allocated, so a
//! compression bomb costs nothing.
#![deny(unsafe_code)]

pub mod config;
pub mod device;
pub mod wire;

pub use device::CompressFilter;

vmi_device::export_device!(CompressFilter, vmi_device_compress);
