//! The C types of `vmi.h`, under their VMI 2.1 names (Windows-style typedefs, status and
//! response codes, the network address, callback types). Every exported function is written
//! with these names, so `tests/header.rs` can compare each signature with `vmi.h` line by line.
#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::{c_char, c_uchar, c_ulong, c_ushort, c_void};

/// `PVOID`.
pub type PVOID = *mut c_void;
/// `ULONG` (C `unsigned long`).
pub type ULONG = c_ulong;
/// `USHORT`.
pub type USHORT = c_ushort;
/// `UINT32`.
pub type UINT32 = u32;
/// `VMI_virt_addr_t`: an address in a process, as RDMA calls take it.
#[allow(non_camel_case_types)]
pub type VMI_virt_addr_t = u64;
/// `BOOLEAN` (`TRUE` = 1, `FALSE` = 0).
pub type BOOLEAN = c_uchar;
/// `PUCHAR`.
pub type PUCHAR = *mut c_uchar;
/// `PCSTR`: a NUL-terminated string the library only reads.
pub type PCSTR = *const c_char;
/// `PSTR *`: the `argv` of `VMI_Init`.
pub type PPSTR = *mut *mut c_char;

/// `VMI_STATUS`: what every call returns; 0 is success (`VMI_SUCCESS(s)`).
pub type VMI_STATUS = u32;
/// `VMI_CONNECT_RESPONSE`: an accept handler's answer and a connect's outcome.
pub type VMI_CONNECT_RESPONSE = u32;
/// `VMI_RECV_STATUS`: what a receive handler does with the slab.
pub type VMI_RECV_STATUS = u32;
/// `VMI_STREAM_COMMAND`: which fragment of a stream a receive handler sees.
pub type VMI_STREAM_COMMAND = u32;

/// `VMI_CONNECT_RESPONSE_ACCEPT`.
pub const VMI_CONNECT_RESPONSE_ACCEPT: VMI_CONNECT_RESPONSE = 1;
/// `VMI_CONNECT_RESPONSE_REJECT`.
pub const VMI_CONNECT_RESPONSE_REJECT: VMI_CONNECT_RESPONSE = 2;
/// `VMI_CONNECT_RESPONSE_ERROR`.
pub const VMI_CONNECT_RESPONSE_ERROR: VMI_CONNECT_RESPONSE = 3;

/// `VMI_SLAB_DONE`: vmi may free the slab when the handler returns.
pub const VMI_SLAB_DONE: VMI_RECV_STATUS = 0;
/// `VMI_SLAB_GRAB`: the application keeps the slab until `VMI_Release_Slab`.
pub const VMI_SLAB_GRAB: VMI_RECV_STATUS = 1;

/// `VMI_STREAM_FRAGMENT`: a fragment; more follow.
pub const VMI_STREAM_FRAGMENT: VMI_STREAM_COMMAND = 0;
/// `VMI_STREAM_END`: the last fragment of the stream.
pub const VMI_STREAM_END: VMI_STREAM_COMMAND = 1;

/// Longest host name in a [`VMI_NETADDRESS`], with its NUL.
pub const VMI_HOST_MAX: usize = 256;
/// Longest key in a [`VMI_NETADDRESS`], with its NUL.
pub const VMI_KEY_MAX: usize = 256;
/// Longest user name in a [`VMI_NETADDRESS`], with its NUL.
pub const VMI_USER_MAX: usize = 64;

/// `VMI_NETADDRESS`: a process's address, host + key (VMI 2.1 addressed processes by key, not
/// port). Passed by value to `VMI_Connection_Bind`, so its layout is public.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VMI_NETADDRESS {
    /// Host name or address, NUL-terminated.
    pub host: [c_char; VMI_HOST_MAX],
    /// The process key, NUL-terminated.
    pub key: [c_char; VMI_KEY_MAX],
    /// The user name given at allocation (recorded, not used for routing).
    pub user: [c_char; VMI_USER_MAX],
    /// A TCP port, or 0 to find the process by its key (the usual case).
    pub port: USHORT,
}

/// `PVMI_NETADDRESS`.
pub type PVMI_NETADDRESS = *mut VMI_NETADDRESS;

/// Opaque handle types: pointers to structs C never sees. Their values are generation-checked
/// table handles, so a stale or made-up handle is refused with `VMI_STATUS_INVALID_HANDLE`.
macro_rules! opaque {
    ($($(#[$doc:meta])* $name:ident => $ptr:ident;)*) => {$(
        $(#[$doc])*
        #[repr(C)]
        pub struct $name {
            _private: [u8; 0],
        }
        #[doc = concat!("`", stringify!($ptr), "`.")]
        pub type $ptr = *mut $name;
    )*};
}

opaque! {
    /// `VMI_CONNECT`: a connection.
    VMI_CONNECT => PVMI_CONNECT;
    /// `VMI_BUFFER`: registered or allocated memory.
    VMI_BUFFER => PVMI_BUFFER;
    /// `VMI_STREAM`: a stream being sent.
    VMI_STREAM => PVMI_STREAM;
    /// `VMI_STREAM_RECV`: the stream a received fragment belongs to.
    VMI_STREAM_RECV => PVMI_STREAM_RECV;
    /// `VMI_SLAB`: received bytes with a read cursor.
    VMI_SLAB => PVMI_SLAB;
    /// `VMI_SLAB_STATE`: a saved slab cursor.
    VMI_SLAB_STATE => PVMI_SLAB_STATE;
    /// `VMI_BUFFER_POOL`: a pool of fixed-size buffers.
    VMI_BUFFER_POOL => PVMI_BUFFER_POOL;
}

/// Connect completion (`VMI_Connection_Issue`): context, the acceptor's reply data and its
/// size, the connection, and the outcome.
pub type VMIConnectIssue =
    Option<unsafe extern "C" fn(PVOID, PVOID, USHORT, PVOID, VMI_CONNECT_RESPONSE)>;
/// Accept handler (`VMI_Connection_Accept_Fn`): the new connection, its connect data, its size.
pub type VMIConnectAccept =
    Option<unsafe extern "C" fn(PVMI_CONNECT, PVMI_SLAB, ULONG) -> VMI_CONNECT_RESPONSE>;
/// Disconnect completion (`VMI_Connection_Disconnect`).
pub type VMIConnectDisconnect = Option<unsafe extern "C" fn(PVMI_CONNECT, PVOID, VMI_STATUS)>;
/// Peer-disconnect notification (`VMI_Connection_Disconnect_Fn`).
pub type VMIDisconnectNotification = Option<unsafe extern "C" fn(PVMI_CONNECT)>;
/// Receive handler (`VMI_STREAM_SET_RECV_FUNCTION`).
pub type VMIStreamRecv = Option<
    unsafe extern "C" fn(
        PVMI_CONNECT,
        PVMI_STREAM_RECV,
        VMI_STREAM_COMMAND,
        PVOID,
        PVMI_SLAB,
    ) -> VMI_RECV_STATUS,
>;
/// Send completion (`VMI_Stream_Begin`, `VMI_Stream_Send`): context and status.
pub type VMIStreamNotification = Option<unsafe extern "C" fn(PVOID, VMI_STATUS)>;
