//! TCP parameters (specfile `<param>` or `VMI_<DEVICE>_<PARAM>`).

use std::time::Duration;

use vmi_device::abi::{VMI_PARAM_BOOL, VMI_PARAM_STRING, VMI_PARAM_UINT, VmiParamSpec};
use vmi_device::{Config, param};

/// Declared parameters.
pub const PARAMS: &[VmiParamSpec] = &[
    param(
        c"listen",
        VMI_PARAM_BOOL,
        c"true",
        c"accept incoming connections",
    ),
    param(
        c"listen_addr",
        VMI_PARAM_STRING,
        c"0.0.0.0",
        c"address to listen on (0.0.0.0: every IPv4 interface)",
    ),
    param(
        c"port",
        VMI_PARAM_UINT,
        c"0",
        c"fixed listening port; 0 derives the port from the key (see port_base)",
    ),
    param(
        c"port_base",
        VMI_PARAM_UINT,
        c"10000",
        c"first port of the key-derived port range",
    ),
    param(
        c"port_span",
        VMI_PARAM_UINT,
        c"20000",
        c"size of the key-derived port range",
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
        c"give up a connect after this long",
    ),
    param(
        c"handshake_timeout_ms",
        VMI_PARAM_UINT,
        c"5000",
        c"drop a peer that does not finish its handshake in this time",
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
    vmi_device::auth::KEY_FILE_PARAM,
    param(
        c"peer_timeout_ms",
        VMI_PARAM_UINT,
        c"10000",
        c"declare a silent peer lost after this long (heartbeats keep an idle connection alive); 0: never",
    ),
    param(
        c"max_connections",
        VMI_PARAM_UINT,
        c"4096",
        c"most connections at once; more are answered 'busy' and closed",
    ),
    param(
        c"recv_poll_bytes",
        VMI_PARAM_UINT,
        c"256k",
        c"a poll stops reading once the fragments it handed up as IRBs hold this many bytes (at least one fragment): the buffers they fill stay few and warm in the cache until the application has them",
    ),
    param(
        c"recv_lowat",
        VMI_PARAM_UINT,
        c"128k",
        c"while a fragment of at least twice this streams in, its socket is read when this many of its bytes (or all that is left of it) are there, not at every arrival: fewer, larger reads, and the sender's core is not interrupted by each one (measured on loopback: 1 MiB streaming +10 %, a 1 MiB round trip about a third shorter); 0 or 1: read at every arrival; at most 16m",
    ),
    param(
        c"write_turn",
        VMI_PARAM_UINT,
        c"1m",
        c"a poll writes at most this many bytes to one connection, then lets the socket go until the next poll (a sender that stays in one long write holds the socket, and the acknowledgements that would move the data on wait for it); at least 64k",
    ),
    param(
        c"lanes",
        VMI_PARAM_UINT,
        c"1",
        c"sockets per connection for large fragments, 1 to 4: with more than 1, a connector opens that many minus one lanes (extra sockets to the same port) when the listener offers them, and fragments of at least stripe_min bytes are cut into parts written and read on every socket at once; 1: one socket per connection (half the descriptors)",
    ),
    param(
        c"stripe_min",
        VMI_PARAM_UINT,
        c"256k",
        c"fragments of at least this many bytes are striped over a connection's lanes (each part at least 64k)",
    ),
    param(
        c"local_congestion",
        VMI_PARAM_STRING,
        c"reno",
        c"TCP congestion control for connections between two addresses of this host (a loopback peer, or one at this socket's own address), where there is no network to share: an algorithm that paces (BBR) spends the sending core on pacing timers and sends from other cores, out of order (measured on loopback, 1 MiB streaming: 8.9 GB/s with BBR, 11.4 with reno); empty: the system's (net.ipv4.tcp_congestion_control) for every connection. Other connections always keep the system's",
    ),
    param(
        c"nodelay",
        VMI_PARAM_BOOL,
        c"true",
        c"set TCP_NODELAY (no Nagle delay for small messages)",
    ),
    param(
        c"lend_streams",
        VMI_PARAM_BOOL,
        c"true",
        c"lend the sockets of a few open connections to the host, whose busy poll then reads them and takes small whole messages itself, calling this device only when it has other work (fewer instructions per message); false: this device reads every socket",
    ),
];

/// The smallest `write_turn` (a smaller one is raised to it): below it the system calls, not
/// the socket, bound a stream.
pub const WRITE_TURN_MIN: usize = 64 * 1024;
/// The largest `recv_lowat` (the kernel takes an `int`; a mark this high already holds a
/// fragment's bytes in the socket for long).
pub const RECV_LOWAT_MAX: usize = 16 << 20;

/// The smallest part of a striped fragment: smaller fragments use fewer sockets.
pub const STRIPE_PART_MIN: usize = 64 * 1024;

/// Typed configuration.
#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Accept connections.
    pub listen: bool,
    /// Address to bind.
    pub listen_addr: String,
    /// Fixed port or 0.
    pub port: u16,
    /// First port of the range.
    pub port_base: u16,
    /// Range size.
    pub port_span: u16,
    /// Ports tried.
    pub probe_count: u16,
    /// Connect limit.
    pub connect_timeout: Duration,
    /// Handshake limit.
    pub handshake_timeout: Duration,
    /// Largest fragment.
    pub max_fragment: u64,
    /// Largest connect/reply data.
    pub max_connect_data: u32,
    /// TCP_NODELAY.
    pub nodelay: bool,
    /// Bytes of fragments handed up as IRBs after which a poll stops reading.
    pub recv_poll_bytes: usize,
    /// The receive low-water mark while a large fragment streams in (1: none; see
    /// `TcpDevice::sync_lowat`).
    pub recv_lowat: usize,
    /// Bytes a poll writes to one connection at most (see `TcpDevice::flush`).
    pub write_turn: usize,
    /// Most connections at once.
    pub max_connections: usize,
    /// Silence after which a peer is lost (zero: never).
    pub peer_timeout: Duration,
    /// Key file for authentication (empty: VMI_AUTH_KEY_FILE or none).
    pub auth_key_file: String,
    /// Lend the sockets to the host (ABI 1.8).
    pub lend_streams: bool,
    /// Sockets per connection (1: no lanes).
    pub lanes: usize,
    /// Fragments at least this large are striped.
    pub stripe_min: usize,
    /// Congestion control for same-host connections (empty: the system's).
    pub local_congestion: String,
}

fn port(c: &Config, name: &str) -> Result<u16, String> {
    let v = c.get_u64(name).map_err(|e| e.to_string())?;
    u16::try_from(v)
        .map_err(|_| format!("parameter '{name}' = {v} is not a port number (0 to 65535)"))
}

impl TcpConfig {
    /// Reads and checks the resolved parameters.
    pub fn from_config(c: &Config) -> Result<TcpConfig, String> {
        let e = |x: vmi_device::ConfigError| x.to_string();
        let cfg = TcpConfig {
            listen: c.get_bool("listen").map_err(e)?,
            listen_addr: c.get("listen_addr").map_err(e)?.to_string(),
            port: port(c, "port")?,
            port_base: port(c, "port_base")?,
            port_span: port(c, "port_span")?,
            probe_count: port(c, "probe_count")?,
            connect_timeout: c.get_millis("connect_timeout_ms").map_err(e)?,
            handshake_timeout: c.get_millis("handshake_timeout_ms").map_err(e)?,
            max_fragment: c.get_u64("max_fragment").map_err(e)?,
            max_connect_data: u32::try_from(c.get_u64("max_connect_data").map_err(e)?)
                .map_err(|_| "parameter 'max_connect_data' is over 4 GiB".to_string())?,
            nodelay: c.get_bool("nodelay").map_err(e)?,
            lend_streams: c.get_bool("lend_streams").map_err(e)?,
            recv_poll_bytes: (c.get_u64("recv_poll_bytes").map_err(e)? as usize).max(1),
            recv_lowat: (c.get_u64("recv_lowat").map_err(e)? as usize).max(1),
            write_turn: (c.get_u64("write_turn").map_err(e)? as usize).max(WRITE_TURN_MIN),
            max_connections: c.get_u64("max_connections").map_err(e)?.max(1) as usize,
            peer_timeout: c.get_millis("peer_timeout_ms").map_err(e)?,
            auth_key_file: c.get("auth_key_file").map_err(e)?.to_string(),
            lanes: c.get_u64("lanes").map_err(e)? as usize,
            stripe_min: (c.get_u64("stripe_min").map_err(e)? as usize).max(2 * STRIPE_PART_MIN),
            local_congestion: c.get("local_congestion").map_err(e)?.to_string(),
        };
        if !(1..=crate::proto::stripe::MAX_SOCKETS).contains(&cfg.lanes) {
            return Err(format!(
                "parameter 'lanes' = {} must be between 1 (one socket per connection) and {}",
                cfg.lanes,
                crate::proto::stripe::MAX_SOCKETS
            ));
        }
        if cfg.recv_lowat > RECV_LOWAT_MAX {
            return Err(format!(
                "parameter 'recv_lowat' = {} is over {} (16 MiB); 128k is the default, 1 turns it off",
                cfg.recv_lowat, RECV_LOWAT_MAX
            ));
        }
        if cfg.max_fragment == 0 || cfg.max_fragment > u32::MAX as u64 {
            return Err(format!(
                "parameter 'max_fragment' = {} must be between 1 and {} (4 GiB - 1)",
                cfg.max_fragment,
                u32::MAX
            ));
        }
        vmi_device::dial::check_port_range(cfg.port_base, cfg.port_span, cfg.probe_count)?;
        if !cfg.local_congestion.is_empty() {
            crate::io::check_congestion(&cfg.local_congestion).map_err(|e| {
                format!(
                    "parameter 'local_congestion' = '{}' is refused by the kernel ({e}): name one of net.ipv4.tcp_allowed_congestion_control (reno always is), or leave it empty for the system's",
                    cfg.local_congestion
                )
            })?;
        }
        Ok(cfg)
    }
}
