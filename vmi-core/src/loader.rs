//! Loading device plugins: finding the shared object, checking its descriptor, and keeping
//! the library loaded for the life of the process (libraries are never unloaded, so
//! descriptors and vtables stay valid).
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

use crate::abi::*;
use crate::device::DeviceKind;
use crate::params::{ParamInfo, ParamKind};

/// Why a device could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No file was found in any searched directory.
    #[error(
        "device type '{type_name}': library {file} not found; searched {tried}. Build the devices (cargo build --workspace), set library= in the specfile, or add its directory to VMI_DEVICE_PATH"
    )]
    NotFound {
        /// Device type.
        type_name: String,
        /// The file name looked for.
        file: String,
        /// Everywhere it was looked for.
        tried: String,
    },
    /// The dynamic loader refused the file.
    #[error(
        "cannot open device library {path}: {reason}. Check that it is a shared object built for this machine"
    )]
    CannotOpen {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The library, or a directory on its path, could be changed by someone other than this
    /// user or root: loading it would run their code in this process.
    #[error(
        "refusing to load device library {path}: {reason}. Anyone who can write there could run code in this process; fix the permissions (chmod go-w, chown) or install the library somewhere only you and root can write"
    )]
    Untrusted {
        /// The library.
        path: PathBuf,
        /// What is wrong, naming the file or directory.
        reason: String,
    },
    /// The library does not export the descriptor symbol.
    #[error(
        "{path} does not export '{symbol}': it is not a vmi device of type '{type_name}'. Check type= in the specfile, or export the device with export_device!(YourDevice, {symbol})"
    )]
    MissingSymbol {
        /// The file.
        path: PathBuf,
        /// The symbol looked for.
        symbol: String,
        /// The device type.
        type_name: String,
    },
    /// The descriptor does not start with the vmi magic.
    #[error(
        "{origin}: '{symbol}' is not a vmi device descriptor (magic {found:#010x}, expected {expected:#010x})"
    )]
    BadMagic {
        /// Library path or "static".
        origin: String,
        /// Symbol.
        symbol: String,
        /// Magic found.
        found: u32,
        /// Magic expected.
        expected: u32,
    },
    /// The device was built for another ABI major.
    #[error(
        "{origin}: device '{type_name}' was built for device ABI {found}.x but this vmi speaks {expected}.x; rebuild the device against a matching vmi-core"
    )]
    AbiMismatch {
        /// Library path or "static".
        origin: String,
        /// Device type.
        type_name: String,
        /// ABI major of the device.
        found: u16,
        /// ABI major of the host.
        expected: u16,
    },
    /// A descriptor or vtable is shorter than the ABI requires.
    #[error(
        "{origin}: device '{type_name}' has a truncated {table} ({found} bytes, ABI {major}.0 needs {needed}); rebuild the device against a matching vmi-core"
    )]
    Truncated {
        /// Library path or "static".
        origin: String,
        /// Device type.
        type_name: String,
        /// "descriptor" or "vtable".
        table: &'static str,
        /// Size found.
        found: u32,
        /// Size needed.
        needed: u32,
        /// The ABI major.
        major: u16,
    },
    /// A descriptor field is invalid.
    #[error("{origin}: device '{type_name}' has an invalid descriptor: {problem}")]
    BadDescriptor {
        /// Library path or "static".
        origin: String,
        /// Device type.
        type_name: String,
        /// What is wrong.
        problem: String,
    },
    /// The device's `create` reported an error.
    #[error("device '{device}' ({origin}) failed to start: {reason}")]
    CreateFailed {
        /// Device instance name.
        device: String,
        /// Library path or "static".
        origin: String,
        /// The device's message.
        reason: String,
    },
    /// The device's `create` panicked.
    #[error(
        "device '{device}' ({origin}) panicked while starting: {message}; this is a bug in the device"
    )]
    Panicked {
        /// Device instance name.
        device: String,
        /// Library path or "static".
        origin: String,
        /// The panic message.
        message: String,
    },
}

/// A loaded, validated device type.
#[derive(Clone, Serialize)]
pub struct DeviceType {
    /// Type name.
    pub name: String,
    /// Version text.
    pub version: String,
    /// What it does.
    pub description: String,
    /// Filter or transport.
    pub kind: DeviceKind,
    /// Does not change wire bytes (left out of the filter signature).
    pub wire_neutral: bool,
    /// ABI major.minor the device was built against.
    pub abi: (u16, u16),
    /// Per-IRB frame size.
    pub frame_size: usize,
    /// Per-IRB frame alignment.
    pub frame_align: usize,
    /// Declared parameters.
    pub params: Vec<ParamInfo>,
    /// The library it came from, or `None` when statically registered.
    pub library: Option<PathBuf>,
    #[serde(skip)]
    pub(crate) descriptor: VmiDeviceDescriptor,
    #[serde(skip)]
    pub(crate) vtable: VmiDeviceVtable,
}

// SAFETY: `descriptor` and `vtable` are copies of a loaded library's static tables; their
// pointers reach immutable strings, parameter specs and functions of that library, which
// stays loaded while any engine uses the type. Calling the functions follows the device
// ABI's thread rules (one call at a time per instance), which the engine keeps.
unsafe impl Send for DeviceType {}
// SAFETY: as above; shared references read immutable data only.
unsafe impl Sync for DeviceType {}

impl std::fmt::Debug for DeviceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceType")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("kind", &self.kind)
            .field("library", &self.library)
            .finish()
    }
}

impl DeviceType {
    /// The vtable entries the device provides (those it left out, or that its ABI minor does
    /// not have, are absent: pass-through or skipped).
    pub fn provides(&self) -> Vec<&'static str> {
        let v = &self.vtable;
        [
            ("destroy", v.destroy.is_some()),
            ("capabilities", v.capabilities.is_some()),
            ("submit", v.submit.is_some()),
            ("receive", v.receive.is_some()),
            ("complete", v.complete.is_some()),
            ("poll", v.poll.is_some()),
            ("wait_fd", v.wait_fd.is_some()),
            ("reach", v.reach.is_some()),
            ("register", v.register.is_some()),
            ("deregister", v.deregister.is_some()),
            ("get_attr", v.get_attr.is_some()),
            ("set_attr", v.set_attr.is_some()),
            ("poll_budget", v.poll_budget.is_some()),
            ("send_inline", v.send_inline.is_some()),
            ("poll_direct", v.poll_direct.is_some()),
            ("rdma_access", v.rdma_access.is_some()),
            ("register_conn", v.register_conn.is_some()),
        ]
        .into_iter()
        .filter(|(_, has)| *has)
        .map(|(name, _)| name)
        .collect()
    }

    /// The device's descriptor as this host read it (a copy; its `vtable` points at the
    /// device's own table, which may be shorter or longer than this host's).
    pub fn descriptor(&self) -> VmiDeviceDescriptor {
        self.descriptor
    }

    /// The device's vtable in this host's layout: entries the device lacks are `None`.
    pub fn vtable(&self) -> VmiDeviceVtable {
        self.vtable
    }

    /// Where the device came from, for messages.
    pub fn origin(&self) -> String {
        self.library.as_ref().map_or_else(
            || "statically linked".to_string(),
            |p| p.display().to_string(),
        )
    }
}

struct Registries {
    loaded: HashMap<PathBuf, libloading::Library>,
}

fn registries() -> &'static Mutex<Registries> {
    static R: OnceLock<Mutex<Registries>> = OnceLock::new();
    R.get_or_init(|| {
        Mutex::new(Registries {
            loaded: HashMap::new(),
        })
    })
}

/// Registers a device linked into this binary, so specfiles that name its type without a
/// `library=` use it instead of a shared object (for tests and single-binary deployments).
/// Device crates generate a `register_static()` that calls this (see `export_device!`).
pub fn register_static(descriptor: &'static VmiDeviceDescriptor) {
    vmi_device::registry::register(descriptor);
}

/// The statically registered descriptor for a type, if any.
pub fn static_descriptor(type_name: &str) -> Option<&'static VmiDeviceDescriptor> {
    vmi_device::registry::lookup(type_name)
}

/// The default library file for a device type.
pub fn default_library(type_name: &str) -> String {
    format!("libvmi_{}.so", type_name.replace('-', "_"))
}

/// Directories a library (libvmi) added for the devices installed beside it.
fn library_dirs() -> &'static Mutex<Vec<PathBuf>> {
    static DIRS: OnceLock<Mutex<Vec<PathBuf>>> = OnceLock::new();
    DIRS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Adds a directory to search for devices, after `VMI_DEVICE_PATH` (libvmi adds the
/// `vmi/` directory beside itself, where an installation puts the devices).
pub fn add_search_dir(dir: PathBuf) {
    let mut dirs = library_dirs().lock().unwrap_or_else(|e| e.into_inner());
    if !dirs.contains(&dir) {
        dirs.push(dir);
    }
}

/// The installation's device directory for a specfile in `<prefix>/share/vmi/specfiles`:
/// `<prefix>/lib/vmi`.
fn installed_beside_spec(spec_dir: &Path) -> Option<PathBuf> {
    let share_vmi = spec_dir.parent()?;
    let share = share_vmi.parent()?;
    let installed = spec_dir.file_name()? == "specfiles"
        && share_vmi.file_name()? == "vmi"
        && share.file_name()? == "share";
    installed.then(|| share.parent().unwrap_or(Path::new("/")).join("lib/vmi"))
}

/// Directories searched, in order: the specfile's directory (and, for a specfile installed
/// in `<prefix>/share/vmi/specfiles`, `<prefix>/lib/vmi`), `VMI_DEVICE_PATH`, the
/// directories libraries added ([`add_search_dir`]: libvmi's `vmi/` beside itself), the
/// running executable's directory, its `../lib/vmi` (an installed program), `../lib` and `..`.
pub fn search_dirs(spec_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = spec_dir {
        dirs.push(if d.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            d.to_path_buf()
        });
        dirs.extend(installed_beside_spec(d));
    }
    if let Some(p) = std::env::var_os("VMI_DEVICE_PATH") {
        dirs.extend(std::env::split_paths(&p).filter(|d| !d.as_os_str().is_empty()));
    }
    dirs.extend(
        library_dirs()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned(),
    );
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        if let Some(up) = dir.parent() {
            dirs.push(up.join("lib/vmi"));
            dirs.push(up.join("lib"));
            // cargo puts test and example binaries one level down (target/debug/deps).
            dirs.push(up.to_path_buf());
        }
    }
    dirs
}

/// A device library found on the search path.
#[derive(Debug)]
pub struct Found {
    /// The device type the file name promises (`libvmi_<type>.so`).
    pub type_name: String,
    /// The file.
    pub path: PathBuf,
    /// The loaded and checked type, or why it could not be loaded.
    pub loaded: Result<DeviceType, LoadError>,
}

/// Every device library on the search path ([`search_dirs`] without a specfile), the first
/// file of each type name, loaded and checked: what `vmi-info` lists with no specfile.
pub fn discover() -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    for dir in search_dirs(None) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for path in files {
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("libvmi_"))
                .and_then(|n| n.strip_suffix(".so"))
            else {
                continue;
            };
            if stem.is_empty() || found.iter().any(|f| f.type_name == stem) {
                continue;
            }
            // A type with '-' in its name has '_' in the file name: try both.
            let mut loaded = load_library(&path, stem);
            let mut type_name = stem.to_string();
            if loaded.is_err() && stem.contains('_') {
                let dashed = stem.replace('_', "-");
                if let Ok(t) = load_library(&path, &dashed) {
                    loaded = Ok(t);
                    type_name = dashed;
                }
            }
            found.push(Found {
                type_name,
                path,
                loaded,
            });
        }
    }
    found
}

/// Finds the library file for a device.
pub fn find_library(
    type_name: &str,
    library: Option<&str>,
    spec_dir: Option<&Path>,
) -> Result<PathBuf, LoadError> {
    let file = library.map_or_else(|| default_library(type_name), str::to_string);
    let as_path = Path::new(&file);
    if as_path.is_absolute() {
        return if as_path.is_file() {
            Ok(as_path.to_path_buf())
        } else {
            Err(LoadError::NotFound {
                type_name: type_name.into(),
                file: file.clone(),
                tried: file,
            })
        };
    }
    let dirs = search_dirs(spec_dir);
    for dir in &dirs {
        let candidate = dir.join(as_path);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(LoadError::NotFound {
        type_name: type_name.into(),
        file,
        tried: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Checks that only this user and root can change the library at `canonical` (a resolved
/// path): the file and every directory above it must be owned by root or this user and not
/// writable by group or others. A directory writable by all but sticky (`/tmp`) passes, as
/// others cannot rename or remove what they do not own in it.
pub fn check_trusted(canonical: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let me = effective_uid();
    let mut at = Some(canonical);
    while let Some(p) = at {
        let m = std::fs::metadata(p).map_err(|e| format!("cannot inspect {}: {e}", p.display()))?;
        let (mode, owner) = (m.mode(), m.uid());
        let what = if m.is_dir() { "directory" } else { "file" };
        if owner != 0 && owner != me {
            return Err(format!(
                "{what} {} is owned by uid {owner}, neither root nor this user (uid {me})",
                p.display()
            ));
        }
        let sticky_dir = m.is_dir() && mode & 0o1000 != 0;
        if mode & 0o022 != 0 && !sticky_dir {
            return Err(format!(
                "{what} {} is writable by {} (mode {:o})",
                p.display(),
                if mode & 0o002 != 0 {
                    "everyone"
                } else {
                    "its group"
                },
                mode & 0o7777
            ));
        }
        at = p.parent();
    }
    Ok(())
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Loads the device type from a shared object.
pub fn load_library(path: &Path, type_name: &str) -> Result<DeviceType, LoadError> {
    let symbol = format!("{VMI_SYMBOL_PREFIX}{type_name}");
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mut regs = registries().lock().unwrap_or_else(|e| e.into_inner());
    if !regs.loaded.contains_key(&canonical) {
        check_trusted(&canonical).map_err(|reason| LoadError::Untrusted {
            path: path.to_path_buf(),
            reason,
        })?;
        // SAFETY: loading a shared object runs its initialisers; device libraries are plain
        // Rust or C libraries without load-time side effects beyond that.
        let lib =
            unsafe { libloading::Library::new(&canonical) }.map_err(|e| LoadError::CannotOpen {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        regs.loaded.insert(canonical.clone(), lib);
    }
    let lib = &regs.loaded[&canonical];
    // SAFETY: the symbol is read as the address of a descriptor static; its contents are
    // validated before use. The library stays loaded for the process's life.
    let sym = unsafe { lib.get::<*const VmiDeviceDescriptor>(symbol.as_str()) }.map_err(|_| {
        LoadError::MissingSymbol {
            path: path.to_path_buf(),
            symbol: symbol.clone(),
            type_name: type_name.into(),
        }
    })?;
    // dlsym's result for a data symbol is the static's address; `*sym` reads it as a pointer.
    let addr: *const VmiDeviceDescriptor = *sym;
    drop(regs);
    // SAFETY: the address comes from the loaded library and the library is never unloaded.
    unsafe { validate(addr, Some(path.to_path_buf()), type_name, &symbol) }
}

/// Loads a statically registered device type.
pub fn load_static(type_name: &str) -> Option<Result<DeviceType, LoadError>> {
    let desc = static_descriptor(type_name)?;
    let symbol = format!("{VMI_SYMBOL_PREFIX}{type_name}");
    // SAFETY: registered descriptors are 'static.
    Some(unsafe { validate(desc, None, type_name, &symbol) })
}

/// # Safety
/// `p` must be NULL or a NUL-terminated string that lives for the process.
unsafe fn c_text(p: *const std::ffi::c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: per the contract.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// The smallest descriptor and vtable this host accepts: those of ABI 1.0.
const MIN_DESCRIPTOR: u32 = VMI_DESCRIPTOR_SIZE_1_0;
const MIN_VTABLE: u32 = VMI_VTABLE_SIZE_1_0;

/// Copies the first `size` bytes of a table the device built (an older minor's table is
/// shorter than ours, a newer minor's longer) into a zeroed table of this host's layout, so
/// the entries the device does not have read as absent (NULL).
///
/// # Safety
/// `src` must point to at least `min(size, size_of::<T>())` readable bytes, and an all-zero
/// `T` must be valid (true of the ABI tables: integers and `Option` of function pointers or
/// references).
unsafe fn copy_prefix<T>(src: *const T, size: u32) -> T {
    let n = (size as usize).min(std::mem::size_of::<T>());
    let mut out = std::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: `n` bytes are readable at `src` (contract) and writable in `out`.
    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, out.as_mut_ptr() as *mut u8, n) };
    // SAFETY: every byte is initialised: `n` copied from a valid table of the same layout (a
    // prefix of whole fields, since tables only grow by whole entries), the rest zero.
    unsafe { out.assume_init() }
}

/// Checks a descriptor and copies what the host needs out of it. Tables of an older minor
/// (shorter) are read as far as they go, the missing entries treated as absent; tables of a
/// newer minor (longer) are read as far as this host knows them.
///
/// # Safety
/// `desc` must be NULL or point to memory that stays mapped for the process and is at least
/// as large as the header fields (magic, versions, size); longer reads are bounded by the
/// descriptor's own `struct_size` (and the vtable's own `size`).
pub unsafe fn validate(
    desc: *const VmiDeviceDescriptor,
    library: Option<PathBuf>,
    type_name: &str,
    symbol: &str,
) -> Result<DeviceType, LoadError> {
    let origin = library.as_ref().map_or_else(
        || "statically linked".to_string(),
        |p| p.display().to_string(),
    );
    if desc.is_null() {
        return Err(LoadError::BadDescriptor {
            origin,
            type_name: type_name.into(),
            problem: "NULL descriptor".into(),
        });
    }
    // SAFETY: the header is always present (per the contract); read it field by field.
    let (magic, major, minor, size) = unsafe {
        (
            (*desc).magic,
            (*desc).abi_major,
            (*desc).abi_minor,
            (*desc).struct_size,
        )
    };
    if magic != VMI_DEVICE_MAGIC {
        return Err(LoadError::BadMagic {
            origin,
            symbol: symbol.into(),
            found: magic,
            expected: VMI_DEVICE_MAGIC,
        });
    }
    if major != VMI_ABI_MAJOR {
        return Err(LoadError::AbiMismatch {
            origin,
            type_name: type_name.into(),
            found: major,
            expected: VMI_ABI_MAJOR,
        });
    }
    if size < MIN_DESCRIPTOR {
        return Err(LoadError::Truncated {
            origin,
            type_name: type_name.into(),
            table: "descriptor",
            found: size,
            needed: MIN_DESCRIPTOR,
            major,
        });
    }
    // SAFETY: struct_size says at least the 1.0 descriptor is there; a newer minor's longer
    // descriptor is read up to this host's size, an equal one whole.
    let copy: VmiDeviceDescriptor = unsafe { copy_prefix(desc, size) };
    let d = &copy;
    let bad = |problem: String| LoadError::BadDescriptor {
        origin: origin.clone(),
        type_name: type_name.into(),
        problem,
    };
    // SAFETY: descriptor strings are NUL-terminated statics of the library.
    let name = unsafe { c_text(d.name) };
    if name != type_name {
        return Err(bad(format!(
            "it calls itself '{name}' but is exported as '{symbol}'"
        )));
    }
    let kind = match d.kind {
        VMI_KIND_FILTER => DeviceKind::Filter,
        VMI_KIND_TRANSPORT => DeviceKind::Transport,
        other => {
            return Err(bad(format!(
                "unknown kind {other} (1 = filter, 2 = transport)"
            )));
        }
    };
    let align = d.frame_align as usize;
    if d.frame_size > 0 && (!align.is_power_of_two() || align > VMI_MAX_FRAME_ALIGN) {
        return Err(bad(format!(
            "frame alignment {align} is not a power of two up to {VMI_MAX_FRAME_ALIGN}"
        )));
    }
    if d.frame_size > 1 << 20 {
        return Err(bad(format!(
            "frame of {} bytes is over the 1 MiB limit",
            d.frame_size
        )));
    }
    if d.create.is_none() {
        return Err(bad("no create function".into()));
    }
    let vt = d.vtable;
    if vt.is_null() {
        return Err(bad("no vtable".into()));
    }
    // SAFETY: the vtable begins with its size (read through a raw place: the table may be
    // shorter than this host's struct).
    let vt_size = unsafe { std::ptr::read(std::ptr::addr_of!((*vt).size)) };
    // A size past every plausible layout is a corrupt table, not a newer minor.
    if vt_size > 64 * 1024 || size > 64 * 1024 {
        return Err(bad(format!(
            "descriptor of {size} bytes / vtable of {vt_size} bytes: not a vmi device table"
        )));
    }
    if vt_size < MIN_VTABLE {
        return Err(LoadError::Truncated {
            origin,
            type_name: type_name.into(),
            table: "vtable",
            found: vt_size,
            needed: MIN_VTABLE,
            major,
        });
    }
    if d.nparams > 0 && d.params.is_null() {
        return Err(bad("parameter table is NULL".into()));
    }
    if d.nparams > 256 {
        return Err(bad(format!(
            "{} parameters declared; at most 256",
            d.nparams
        )));
    }
    let mut params = Vec::with_capacity(d.nparams);
    for i in 0..d.nparams {
        // SAFETY: `nparams` entries, checked non-NULL above.
        let p = unsafe { &*d.params.add(i) };
        // SAFETY: parameter strings are NUL-terminated statics.
        let (pname, default, doc) =
            unsafe { (c_text(p.name), c_text(p.default_value), c_text(p.doc)) };
        let kind = ParamKind::from_code(p.kind);
        if pname.is_empty() {
            return Err(bad(format!("parameter {i} has no name")));
        }
        if let Err(expected) = kind.check(&default) {
            return Err(bad(format!(
                "default of parameter '{pname}' (\"{default}\") is not {expected}"
            )));
        }
        params.push(ParamInfo {
            name: pname,
            kind,
            default,
            doc,
        });
    }
    // SAFETY: the vtable is at least the 1.0 size (checked above) and readable for
    // `vt_size` bytes; entries this host knows and the device lacks read as NULL.
    let vtable = unsafe { copy_prefix(vt, vt_size) };
    if minor > VMI_ABI_MINOR {
        log::info!(
            "{origin}: device '{type_name}' was built for device ABI {major}.{minor}, newer than this host's {VMI_ABI_MAJOR}.{VMI_ABI_MINOR}; using the {VMI_ABI_MAJOR}.{VMI_ABI_MINOR} subset it shares"
        );
    }
    Ok(DeviceType {
        name,
        // SAFETY: as for `name`.
        version: unsafe { c_text(d.version) },
        // SAFETY: as for `name`.
        description: unsafe { c_text(d.description) },
        kind,
        wire_neutral: d.flags & VMI_DEVICE_WIRE_NEUTRAL != 0,
        abi: (major, minor),
        frame_size: d.frame_size as usize,
        frame_align: align.max(1),
        params,
        library,
        descriptor: copy,
        vtable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_installed_specfile_finds_the_installed_devices() {
        let spec = Path::new("/opt/vmi/share/vmi/specfiles");
        assert_eq!(
            installed_beside_spec(spec),
            Some(PathBuf::from("/opt/vmi/lib/vmi"))
        );
        let dirs = search_dirs(Some(spec));
        assert_eq!(dirs[0], spec);
        assert_eq!(dirs[1], Path::new("/opt/vmi/lib/vmi"));
        for other in ["/work/specfiles", "/opt/share/x/specfiles", "specfiles", ""] {
            assert_eq!(installed_beside_spec(Path::new(other)), None, "{other}");
        }
    }

    #[test]
    fn added_directories_are_searched_once() {
        let d = PathBuf::from("/nonexistent/vmi-loader-test");
        add_search_dir(d.clone());
        add_search_dir(d.clone());
        let n = search_dirs(None).iter().filter(|x| **x == d).count();
        assert_eq!(n, 1);
    }
}
