//! # vmi-shmem
#![deny(unsafe_code)]

pub mod config;
pub mod io;
#[allow(unsafe_code)]
pub mod spsc;
pub mod wire;
