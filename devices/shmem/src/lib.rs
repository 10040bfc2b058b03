//! # vmi-shmem (in progress)
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod spsc;
