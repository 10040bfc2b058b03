//! Devices linked into the program (statically registered), so a specfile that names their
//! type without a `library=` uses them instead of a shared object. [`crate::export_device!`]
//! generates the registration function; the host's loader reads this registry.
//!
//! The registry lives in the SDK because a statically linked device and its host share one
//! copy of this crate; a device loaded from a shared object has its own copy and never uses it.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::{Mutex, OnceLock};

use crate::abi::VmiDeviceDescriptor;

fn statics() -> &'static Mutex<HashMap<String, &'static VmiDeviceDescriptor>> {
    static R: OnceLock<Mutex<HashMap<String, &'static VmiDeviceDescriptor>>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Registers a device linked into this program under its descriptor's name.
pub fn register(descriptor: &'static VmiDeviceDescriptor) {
    let name = if descriptor.name.is_null() {
        String::new()
    } else {
        // SAFETY: a descriptor's name is a NUL-terminated 'static string (the export macro
        // builds it from a `&'static CStr`); the loader validates it again on use.
        unsafe { CStr::from_ptr(descriptor.name) }
            .to_string_lossy()
            .into_owned()
    };
    statics()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name, descriptor);
}

/// The statically registered descriptor for a type, if any.
pub fn lookup(type_name: &str) -> Option<&'static VmiDeviceDescriptor> {
    statics()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(type_name)
        .copied()
}
