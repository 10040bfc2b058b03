//! PMIx wire-up (issue: launch and scale): under a PMIx launcher (Open MPI's `mpirun`), each
//! process puts the host it can be reached at, commits, fences once with data collection,
//! and gets every peer's: the pattern of Sandia OpenSHMEM's PMIx runtime. `libpmix.so.2` is
//! loaded at run time, so vmi builds, tests and runs where PMIx is not installed; `Job` then
//! says why it could not use it and falls back to `localhost` (or `VMI_HOSTS`).
//!
//! The structures below are PMIx 4's C layout on LP64 Linux (`pmix_common.h`): `pmix_proc_t`
//! is 260 bytes (namespace, then rank at 256), `pmix_value_t` 32 (type, then the data union at
//! 8), `pmix_info_t` 552 (key, flags at 512, value at 520). `tests/tests/pmix.rs` compares
//! them with the installed headers where they exist.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_void};

/// `pmix_proc_t`.
#[repr(C)]
struct Proc {
    nspace: [c_char; 256],
    rank: u32,
}

/// `pmix_value_t`: the type, then a 24-byte union (only strings and booleans are used here).
#[repr(C)]
struct Value {
    ty: u16,
    _pad: [u8; 6],
    data: [u64; 3],
}

/// `pmix_info_t`.
#[repr(C)]
struct Info {
    key: [c_char; 512],
    flags: u32,
    _pad: u32,
    value: Value,
}

const _: () = assert!(std::mem::size_of::<Proc>() == 260);
const _: () = assert!(std::mem::size_of::<Value>() == 32);
const _: () = assert!(std::mem::size_of::<Info>() == 552);

/// `PMIX_SUCCESS`.
const SUCCESS: i32 = 0;
/// `PMIX_BOOL`.
const TYPE_BOOL: u16 = 1;
/// `PMIX_STRING`.
const TYPE_STRING: u16 = 3;
/// `PMIX_GLOBAL`.
const SCOPE_GLOBAL: u8 = 3;
/// The key each process puts its reachable host under.
const HOST_KEY: &CStr = c"vmi.host";

type InitFn = unsafe extern "C" fn(*mut Proc, *mut Info, usize) -> i32;
type PutFn = unsafe extern "C" fn(u8, *const c_char, *mut Value) -> i32;
type CommitFn = unsafe extern "C" fn() -> i32;
type FenceFn = unsafe extern "C" fn(*const Proc, usize, *const Info, usize) -> i32;
type GetFn =
    unsafe extern "C" fn(*const Proc, *const c_char, *const Info, usize, *mut *mut Value) -> i32;
type FinalizeFn = unsafe extern "C" fn(*const Info, usize) -> i32;
type DestructFn = unsafe extern "C" fn(*mut Value);

fn key(name: &CStr) -> [c_char; 512] {
    let mut k = [0 as c_char; 512];
    for (d, &s) in k.iter_mut().zip(name.to_bytes()) {
        *d = s as c_char;
    }
    k
}

/// What PMIx said about the job: this process's rank, and every rank's host (index = rank).
#[derive(Debug)]
pub(crate) struct Exchange {
    pub rank: u32,
    pub hosts: Vec<String>,
}

/// Puts `my_host`, fences, and gets the hosts of the `size` ranks of this job. Errors say
/// which step failed and why (no libpmix, not launched by a PMIx server, a PMIx status).
pub(crate) fn exchange(my_host: &str, size: u32) -> Result<Exchange, String> {
    // SAFETY: loading libpmix runs its initialisers, which have no preconditions.
    let lib = unsafe { libloading::Library::new("libpmix.so.2") }.map_err(|e| {
        format!("cannot load libpmix.so.2 ({e}); install libpmix2 or set VMI_HOSTS")
    })?;
    macro_rules! sym {
        ($name:literal, $ty:ty) => {
            // SAFETY: the symbol has this C signature in PMIx 4 (`pmix.h`).
            *unsafe { lib.get::<$ty>($name) }.map_err(|e| {
                format!(
                    "libpmix.so.2 has no {}: {e}",
                    String::from_utf8_lossy($name)
                )
            })?
        };
    }
    let init: InitFn = sym!(b"PMIx_Init", InitFn);
    let put: PutFn = sym!(b"PMIx_Put", PutFn);
    let commit: CommitFn = sym!(b"PMIx_Commit", CommitFn);
    let fence: FenceFn = sym!(b"PMIx_Fence", FenceFn);
    let get: GetFn = sym!(b"PMIx_Get", GetFn);
    let finalize: FinalizeFn = sym!(b"PMIx_Finalize", FinalizeFn);
    let destruct: DestructFn = sym!(b"PMIx_Value_destruct", DestructFn);

    let mut me = Proc {
        nspace: [0; 256],
        rank: 0,
    };
    // SAFETY: `me` is a valid pmix_proc_t to fill; no info array.
    let rc = unsafe { init(&mut me, std::ptr::null_mut(), 0) };
    if rc != SUCCESS {
        return Err(format!(
            "PMIx_Init failed (status {rc}): not started by a PMIx server?"
        ));
    }
    let result = (|| {
        let host =
            CString::new(my_host).map_err(|_| "the host name holds a NUL byte".to_string())?;
        let mut v = Value {
            ty: TYPE_STRING,
            _pad: [0; 6],
            data: [host.as_ptr() as u64, 0, 0],
        };
        // SAFETY: the key and value are valid for the call; PMIx copies the string.
        let rc = unsafe { put(SCOPE_GLOBAL, HOST_KEY.as_ptr(), &mut v) };
        if rc != SUCCESS {
            return Err(format!("PMIx_Put failed (status {rc})"));
        }
        // SAFETY: no arguments.
        let rc = unsafe { commit() };
        if rc != SUCCESS {
            return Err(format!("PMIx_Commit failed (status {rc})"));
        }
        let collect = Info {
            key: key(c"pmix.collect"),
            flags: 0,
            _pad: 0,
            value: Value {
                ty: TYPE_BOOL,
                _pad: [0; 6],
                data: [1, 0, 0],
            },
        };
        // SAFETY: no procs (= all of this job), one valid info.
        let rc = unsafe { fence(std::ptr::null(), 0, &collect, 1) };
        if rc != SUCCESS {
            return Err(format!("PMIx_Fence failed (status {rc})"));
        }
        let mut hosts = Vec::with_capacity(size as usize);
        for r in 0..size {
            let peer = Proc {
                nspace: me.nspace,
                rank: r,
            };
            let mut out: *mut Value = std::ptr::null_mut();
            // SAFETY: valid proc and key; PMIx allocates the value it returns in `out`.
            let rc = unsafe { get(&peer, HOST_KEY.as_ptr(), std::ptr::null(), 0, &mut out) };
            if rc != SUCCESS || out.is_null() {
                return Err(format!("PMIx_Get of rank {r}'s host failed (status {rc})"));
            }
            // SAFETY: PMIx returned a valid pmix_value_t; its string (when the type says
            // so) is NUL-terminated and owned by the value until it is destructed below.
            let host = unsafe {
                let v = &*out;
                let text = if v.ty == TYPE_STRING && v.data[0] != 0 {
                    Some(
                        CStr::from_ptr(v.data[0] as *const c_char)
                            .to_string_lossy()
                            .into_owned(),
                    )
                } else {
                    None
                };
                destruct(out);
                libc::free(out as *mut c_void);
                text
            };
            let host = host
                .filter(|h| !h.is_empty() && h.len() <= 255)
                .ok_or_else(|| format!("rank {r} put no usable host under vmi.host"))?;
            hosts.push(host);
        }
        Ok(Exchange {
            rank: me.rank,
            hosts,
        })
    })();
    // SAFETY: initialised above; no info.
    unsafe { finalize(std::ptr::null(), 0) };
    // Kept loaded for the life of the process: a PMIx library may leave state (and, in some
    // versions, threads) behind that unloading it would pull out from under.
    std::mem::forget(lib);
    result
}
