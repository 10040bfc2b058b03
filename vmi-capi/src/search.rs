//! Where libvmi looks for devices: in `vmi/` beside itself, so an installed libvmi finds the
//! installed devices (`<prefix>/lib/libvmi.so` → `<prefix>/lib/vmi/`) with no variable set.

use std::ffi::CStr;
use std::path::PathBuf;

/// The file this code was loaded from: libvmi.so, or the program libvmi.a was linked into.
fn own_file() -> Option<PathBuf> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    let here = own_file as *const libc::c_void;
    // SAFETY: dladdr reads the loader's tables for an address in this object and fills
    // `info`; it keeps no pointer to it.
    let found = unsafe { libc::dladdr(here, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr returned a NUL-terminated path owned by the loader, valid while the
    // object stays loaded (it is this code's own object).
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    let path = PathBuf::from(name.to_str().ok()?);
    // A relative name is relative to the working directory at load time; canonicalise now.
    path.canonicalize().ok()
}

/// Adds `<dir of libvmi>/vmi` (an installation) and libvmi's own directory (a build tree,
/// where cargo puts the devices beside it) to the device search path.
pub(crate) fn add_library_dir() {
    if let Some(dir) = own_file().as_deref().and_then(|f| f.parent()) {
        log::debug!(
            "libvmi is in {}; devices are also searched there and in its vmi/",
            dir.display()
        );
        vmi_core::loader::add_search_dir(dir.join("vmi"));
        vmi_core::loader::add_search_dir(dir.to_path_buf());
    }
}
