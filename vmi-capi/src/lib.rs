//! # libvmi: the VMI 2.1 C API
//!
//! `libvmi.so` and `libvmi.a` export the calls of NCSA's VMI 2.1 that real programs used
//! (`VMI_Init`, `VMI_Poll`, connections with connect data, buffers, streams of fragments,
//! slabs), declared in `include/vmi.h`, over [`vmi_core`]. A C program written for VMI 2.1's
//! tutorial builds against it unchanged:
//!
//! ```text
//! cc -o vmisend vmisend.c $(pkg-config --cflags --libs vmi)
//! ```
//!
//! Rules (each documented in `vmi.h`):
//! - One thread: the thread that called `VMI_Init` makes every call; others are refused
//!   with `VMI_STATUS_WRONG_THREAD`.
//! - Callbacks run only inside `VMI_Poll`/`VMI_Wait`, never inside the call that caused them
//!   and never re-entrantly. VMI calls made from a callback are checked at once and run
//!   when it returns; `VMI_Poll`, `VMI_Wait` and `VMI_Terminate` there are refused.
//! - Every call returns a status, the set-callback calls included; `VMI_perror` prints it
//!   with the reason and remedy of the last failure.
//! - Handles are checked: a stale or made-up `PVMI_CONNECT`, `PVMI_BUFFER`, `PVMI_STREAM`
//!   or `PVMI_SLAB` is refused with `VMI_STATUS_INVALID_HANDLE`, never dereferenced.
//! - Sends copy the application's bytes when issued, so a buffer may be reused or sent again
//!   at once.
#![allow(non_snake_case)]

mod bridge;
pub mod buffer;
pub mod cache;
pub mod connection;
mod handle;
pub mod init;
pub mod netaddr;
pub mod pool;
pub mod rdma;
mod search;
pub mod slab;
mod state;
pub mod status;
pub mod stream;
pub mod types;

pub use status::code;
