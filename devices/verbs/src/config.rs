//! verbs parameters (specfile `<param>` or `VMI_<DEVICE>_<PARAM>`).
#![forbid(unsafe_code)]

use std::time::Duration;

use vmi_device::abi::{VMI_PARAM_STRING, VMI_PARAM_UINT, VmiParamSpec};
use vmi_device::{Config, param};

use crate::bootstrap::{MAX_CREDITS, MAX_EAGER};
use crate::proto::MIN_CREDITS;

/// Declared parameters.
pub const PARAMS: &[VmiParamSpec] = &[
    param(
        c"nic",
        VMI_PARAM_STRING,
        c"ibverbs",
        c"ibverbs: the RDMA NIC through libibverbs; sim: a software NIC that connects queue pairs within this process only (tests, development without hardware)",
    ),
    param(
        c"device",
        VMI_PARAM_STRING,
        c"",
        c"RDMA device name as ibv_devinfo lists it (mlx5_0); empty: the first",
    ),
    param(c"ib_port", VMI_PARAM_UINT, c"1", c"port of the RDMA device"),
    param(
        c"gid_index",
        VMI_PARAM_UINT,
        c"0",
        c"GID table index (RoCE: the entry whose address and RoCE version to use; show_gids lists them)",
    ),
    param(
        c"listen_addr",
        VMI_PARAM_STRING,
        c"0.0.0.0",
        c"address of the side channel's TCP listener (connection bootstrap)",
    ),
    param(
        c"port",
        VMI_PARAM_UINT,
        c"0",
        c"fixed side-channel port; 0 derives it from the key (see port_base)",
    ),
    param(
        c"port_base",
        VMI_PARAM_UINT,
        c"7000",
        c"first port of the key-derived side-channel port range",
    ),
    param(
        c"port_span",
        VMI_PARAM_UINT,
        c"3000",
        c"size of the key-derived side-channel port range",
    ),
    param(
        c"probe_count",
        VMI_PARAM_UINT,
        c"16",
        c"ports tried from the key's start port (listener and connector alike)",
    ),
    param(
        c"connect_timeout_ms",
        VMI_PARAM_UINT,
        c"10000",
        c"give up a connect (dial and bootstrap) after this long",
    ),
    param(
        c"credits",
        VMI_PARAM_UINT,
        c"64",
        c"receive buffers posted for each peer (credits; the smaller of the two sides is used)",
    ),
    param(
        c"eager_max",
        VMI_PARAM_UINT,
        c"8k",
        c"largest fragment sent in a SEND; larger ones are read by the receiver (RDMA READ rendezvous)",
    ),
    param(
        c"send_zero_copy_min",
        VMI_PARAM_UINT,
        c"1m",
        c"a fragment over eager_max in one piece and at least this large is registered for its send alone and read by the peer where it lies (no copy into a staging buffer; the peer's access ends with the send); 0: always copy",
    ),
    param(
        c"max_fragment",
        VMI_PARAM_UINT,
        c"256m",
        c"largest fragment accepted from or sent to a peer",
    ),
    param(
        c"max_connect_data",
        VMI_PARAM_UINT,
        c"64k",
        c"largest connect or reply data accepted",
    ),
    param(
        c"max_connections",
        VMI_PARAM_UINT,
        c"1024",
        c"most connections at once; more are refused",
    ),
    param(
        c"keepalive_ms",
        VMI_PARAM_UINT,
        c"10000",
        c"idle time before the side channel probes its peer (TCP keepalive, 3 probes a third of it apart): a vanished peer host is noticed within twice this; 0: off",
    ),
    param(
        c"cq_entries",
        VMI_PARAM_UINT,
        c"65536",
        c"completion queue entries; connections are limited to what it holds (3 x credits + 64 each)",
    ),
    vmi_device::auth::KEY_FILE_PARAM,
];

/// Which NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicKind {
    /// libibverbs.
    Ibverbs,
    /// The in-process software NIC.
    Sim,
}

/// Typed configuration.
#[derive(Clone, Debug)]
pub struct VerbsConfig {
    /// Which NIC.
    pub nic: NicKind,
    /// RDMA device name.
    pub device: String,
    /// Its port.
    pub ib_port: u8,
    /// GID index.
    pub gid_index: u8,
    /// Side-channel listen address.
    pub listen_addr: String,
    /// Fixed side-channel port or 0.
    pub port: u16,
    /// Key-derived range start.
    pub port_base: u16,
    /// Range size.
    pub port_span: u16,
    /// Ports tried.
    pub probe_count: u16,
    /// Connect limit.
    pub connect_timeout: Duration,
    /// Receive buffers per peer.
    pub credits: u32,
    /// Eager limit.
    pub eager_max: u32,
    /// Smallest one-piece fragment the peer reads where it lies (0: none).
    pub send_zero_copy_min: u64,
    /// Largest fragment.
    pub max_fragment: u64,
    /// Largest connect data.
    pub max_connect_data: u32,
    /// Most connections.
    pub max_connections: usize,
    /// Key file for authentication (empty: VMI_AUTH_KEY_FILE or none).
    pub auth_key_file: String,
    /// Completion queue entries.
    pub cq_entries: u32,
    /// Side-channel keepalive idle time (zero: off).
    pub keepalive: Duration,
}

fn small<T: TryFrom<u64>>(c: &Config, name: &str, what: &str) -> Result<T, String> {
    let v = c.get_u64(name).map_err(|e| e.to_string())?;
    T::try_from(v).map_err(|_| format!("parameter '{name}' = {v} is not {what}"))
}

impl VerbsConfig {
    /// Reads and checks the resolved parameters.
    pub fn from_config(c: &Config) -> Result<VerbsConfig, String> {
        let e = |x: vmi_device::ConfigError| x.to_string();
        let nic = match c.get("nic").map_err(e)? {
            "ibverbs" => NicKind::Ibverbs,
            "sim" => NicKind::Sim,
            other => {
                return Err(format!(
                    "parameter 'nic' = '{other}': use 'ibverbs' (the RDMA NIC) or 'sim' (the in-process software NIC)"
                ));
            }
        };
        let cfg = VerbsConfig {
            nic,
            device: c.get("device").map_err(e)?.to_string(),
            ib_port: small(c, "ib_port", "a port number (1 to 255)")?,
            gid_index: small(c, "gid_index", "a GID index (0 to 255)")?,
            listen_addr: c.get("listen_addr").map_err(e)?.to_string(),
            port: small(c, "port", "a port number")?,
            port_base: small(c, "port_base", "a port number")?,
            port_span: small(c, "port_span", "a port count")?,
            probe_count: small(c, "probe_count", "a port count")?,
            connect_timeout: c.get_millis("connect_timeout_ms").map_err(e)?,
            credits: small(c, "credits", "a buffer count")?,
            eager_max: small(c, "eager_max", "a size under 4 GiB")?,
            send_zero_copy_min: c.get_u64("send_zero_copy_min").map_err(e)?,
            max_fragment: c.get_u64("max_fragment").map_err(e)?,
            max_connect_data: small(c, "max_connect_data", "a size under 4 GiB")?,
            max_connections: c.get_u64("max_connections").map_err(e)?.max(1) as usize,
            auth_key_file: c.get("auth_key_file").map_err(e)?.to_string(),
            cq_entries: small(c, "cq_entries", "an entry count under 2^32")?,
            keepalive: c.get_millis("keepalive_ms").map_err(e)?,
        };
        if !(256..=1 << 22).contains(&cfg.cq_entries) {
            return Err(format!(
                "parameter 'cq_entries' = {} must be between 256 and 4194304",
                cfg.cq_entries
            ));
        }
        if cfg.ib_port == 0 {
            return Err("parameter 'ib_port' must be at least 1 (ports count from 1)".into());
        }
        if !(MIN_CREDITS..=MAX_CREDITS).contains(&cfg.credits) {
            return Err(format!(
                "parameter 'credits' = {} must be between {MIN_CREDITS} and {MAX_CREDITS}",
                cfg.credits
            ));
        }
        if cfg.eager_max == 0 || cfg.eager_max > MAX_EAGER {
            return Err(format!(
                "parameter 'eager_max' = {} must be between 1 and {MAX_EAGER}",
                cfg.eager_max
            ));
        }
        if cfg.max_fragment == 0 || cfg.max_fragment > u32::MAX as u64 {
            return Err(format!(
                "parameter 'max_fragment' = {} must be between 1 and {} (4 GiB - 1): an RDMA READ moves at most 2 GiB on most NICs, and a fragment is one read",
                cfg.max_fragment,
                u32::MAX
            ));
        }
        vmi_device::dial::check_port_range(cfg.port_base, cfg.port_span, cfg.probe_count)?;
        Ok(cfg)
    }
}
