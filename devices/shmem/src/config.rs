//! Shared-memory parameters.

use std::time::Duration;

use vmi_device::abi::{VMI_PARAM_BOOL, VMI_PARAM_UINT, VmiParamSpec};
use vmi_device::{Config, param};

/// Declared parameters.
pub const PARAMS: &[VmiParamSpec] = &[
    param(
        c"listen",
        VMI_PARAM_BOOL,
        c"true",
        c"accept incoming connections (the key's socket is reserved either way)",
    ),
    param(
        c"ring_size",
        VMI_PARAM_UINT,
        c"512k",
        c"bytes per direction per connection (a power of two, 4k to 64m)",
    ),
    param(
        c"single_copy",
        VMI_PARAM_BOOL,
        c"true",
        c"move large fragments with one process_vm_readv copy when the kernel allows it",
    ),
    param(
        c"single_copy_min",
        VMI_PARAM_UINT,
        c"64k",
        c"smallest fragment moved by single copy",
    ),
    param(
        c"single_copy_poll_bytes",
        VMI_PARAM_UINT,
        c"256k",
        c"a poll stops its single-copy reads once they brought this many bytes (at least one read): the buffers they fill stay few and warm in the cache until the application has them (0: one read per poll)",
    ),
    param(
        c"coop_copy",
        VMI_PARAM_BOOL,
        c"true",
        c"share a single copy: the receiver reads a large fragment's chunks from the front while the sender, when it polls, writes chunks from the back into the receiver's buffer (process_vm_writev), so both cores copy (about twice the bandwidth at 1 MiB); a sender that is not polling leaves every chunk to the receiver",
    ),
    param(
        c"coop_copy_min",
        VMI_PARAM_UINT,
        c"256k",
        c"smallest single-copy fragment whose copy is shared",
    ),
    param(
        c"one_sided",
        VMI_PARAM_BOOL,
        c"true",
        c"RDMA puts and gets straight into the peer's memory (its region mapped here, or process_vm_writev/readv) when the kernel allows it",
    ),
    param(
        c"lend_rings",
        VMI_PARAM_BOOL,
        c"true",
        c"lend the receive rings to the host, whose poll then reads small messages from them itself and calls this device only when it has other work (fewer instructions per message); false: this device reads every ring",
    ),
    param(
        c"membarrier",
        VMI_PARAM_BOOL,
        c"true",
        c"where the kernel offers membarrier(2) and both processes register, sends skip the doorbell's full memory fence and a process about to sleep issues one process-wide barrier instead (about 0.3 us per sleep; 8-byte streaming about 1.6 times faster); false: a fence after every send",
    ),
    param(
        c"connect_timeout_ms",
        VMI_PARAM_UINT,
        c"5000",
        c"give up a connect (or a peer's hello) after this long",
    ),
    param(
        c"max_fragment",
        VMI_PARAM_UINT,
        c"256m",
        c"largest fragment accepted from or sent to a peer",
    ),
    vmi_device::auth::KEY_FILE_PARAM,
    param(
        c"max_connect_data",
        VMI_PARAM_UINT,
        c"64k",
        c"largest connect or reply data accepted",
    ),
];

/// Typed configuration.
#[derive(Clone, Debug)]
pub struct ShmemConfig {
    /// Accept connections.
    pub listen: bool,
    /// Ring bytes per direction.
    pub ring_size: usize,
    /// Use process_vm_readv for large fragments.
    pub single_copy: bool,
    /// Threshold for single copy.
    pub single_copy_min: usize,
    /// Bytes of single-copy reads after which a poll stops reading (at least one read).
    pub single_copy_poll_bytes: usize,
    /// Share single copies with the peer (`crate::coop`).
    pub coop_copy: bool,
    /// Smallest fragment whose single copy is shared.
    pub coop_copy_min: usize,
    /// RDMA puts and gets one-sided (process_vm_writev/readv) where permitted.
    pub one_sided: bool,
    /// Lend the receive rings to the host.
    pub lend_rings: bool,
    /// Register for membarrier barriers (sends without the doorbell's fence).
    pub membarrier: bool,
    /// Connect / hello limit.
    pub connect_timeout: Duration,
    /// Largest fragment.
    pub max_fragment: u64,
    /// Largest connect/reply data.
    pub max_connect_data: u32,
    /// Key file for authentication (empty: VMI_AUTH_KEY_FILE or none).
    pub auth_key_file: String,
}

impl ShmemConfig {
    /// Reads and checks the resolved parameters.
    pub fn from_config(c: &Config) -> Result<ShmemConfig, String> {
        let e = |x: vmi_device::ConfigError| x.to_string();
        let ring_size = c.get_u64("ring_size").map_err(e)?;
        if !ring_size.is_power_of_two() || !(4096..=64 << 20).contains(&ring_size) {
            return Err(format!(
                "parameter 'ring_size' = {ring_size}: expected a power of two from 4k to 64m"
            ));
        }
        let max_fragment = c.get_u64("max_fragment").map_err(e)?;
        if max_fragment == 0 || max_fragment > u32::MAX as u64 {
            return Err(format!(
                "parameter 'max_fragment' = {max_fragment}: expected 1 to 4 GiB - 1"
            ));
        }
        Ok(ShmemConfig {
            listen: c.get_bool("listen").map_err(e)?,
            ring_size: ring_size as usize,
            single_copy: c.get_bool("single_copy").map_err(e)?,
            single_copy_min: c.get_u64("single_copy_min").map_err(e)? as usize,
            single_copy_poll_bytes: c.get_u64("single_copy_poll_bytes").map_err(e)? as usize,
            coop_copy: c.get_bool("coop_copy").map_err(e)?,
            coop_copy_min: c.get_u64("coop_copy_min").map_err(e)? as usize,
            one_sided: c.get_bool("one_sided").map_err(e)?,
            lend_rings: c.get_bool("lend_rings").map_err(e)?,
            membarrier: c.get_bool("membarrier").map_err(e)?,
            connect_timeout: c.get_millis("connect_timeout_ms").map_err(e)?,
            max_fragment,
            max_connect_data: c.get_u64("max_connect_data").map_err(e)?.min(16 << 20) as u32,
            auth_key_file: c.get("auth_key_file").map_err(e)?.to_string(),
        })
    }
}
