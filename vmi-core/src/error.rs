//! Errors of the application API.

#![forbid(unsafe_code)]

use crate::assembly::AssemblyError;
use crate::conn::{ConnId, Refusal};

/// Why an API call was refused.
#[derive(Debug, thiserror::Error)]
pub enum VmiError {
    /// The specfile, a device or a parameter is wrong (boxed: it is rare and large, and
    /// `VmiError` travels on the send path).
    #[error(transparent)]
    Assembly(Box<AssemblyError>),
    /// The connection handle is closed or was never valid.
    #[error(
        "{0} is not a live connection (it was closed, or never existed); open one with connect"
    )]
    UnknownConnection(ConnId),
    /// The connection exists but cannot carry streams yet (or any more).
    #[error("{conn} is {state}; streams can only be sent on an open connection")]
    NotOpen {
        /// The connection.
        conn: ConnId,
        /// Its state, in words.
        state: &'static str,
    },
    /// An environment variable vmi reads has a value it cannot use.
    #[error("environment variable {var}: {reason}")]
    Environment {
        /// The variable.
        var: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// No transport in the chain can reach the peer.
    #[error("no transport can reach key '{key}' at '{host}': {reasons}")]
    Unreachable {
        /// Host asked for.
        host: String,
        /// Key asked for.
        key: String,
        /// Each transport's reason.
        reasons: String,
    },
    /// Connect or reply data over the limit.
    #[error(
        "connect data of {len} bytes is over the limit of {max}; send larger data as a stream after connecting"
    )]
    ConnectDataTooLarge {
        /// Given.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Too many buffers in one fragment.
    #[error(
        "{given} buffers in one fragment; at most {max} (join small pieces, or send several fragments)"
    )]
    TooManyBuffers {
        /// Given.
        given: usize,
        /// Limit.
        max: usize,
    },
    /// A fragment over the chain's maximum.
    #[error(
        "fragment of {len} bytes is over the chain's maximum of {max}; split the message into more fragments"
    )]
    FragmentTooLarge {
        /// Given.
        len: u64,
        /// Limit.
        max: u64,
    },
    /// Another stream is open on the connection.
    #[error("a stream is already open on {0}; end it before beginning another")]
    StreamBusy(ConnId),
    /// No running device has that instance name.
    #[error("no device named '{0}' in the chains; running devices: {1}")]
    UnknownDevice(String, String),
    /// The device refused the attribute operation.
    #[error("device '{device}': attribute '{name}': {reason}")]
    Attribute {
        /// Device instance.
        device: String,
        /// Attribute.
        name: String,
        /// The device's reason.
        reason: String,
    },
    /// Too many sends are in flight: the peer (or the transport) is behind. Nothing was sent.
    #[error(
        "{limit} sends are in flight, the most one process may have; poll (or wait) until send completions arrive, then send again"
    )]
    Busy {
        /// The limit.
        limit: usize,
    },
    /// The stream handle belongs to another connection state.
    #[error("the stream on {0} was already ended or its connection closed")]
    StreamClosed(ConnId),
    /// A timeout of zero or over the bound.
    #[error("{what} of {given:?} is out of range: give more than zero and at most {max:?}")]
    BadTimeout {
        /// Which timeout.
        what: &'static str,
        /// The value given.
        given: std::time::Duration,
        /// The largest allowed.
        max: std::time::Duration,
    },
    /// An operation this kind of connection cannot carry.
    #[error("{what} cannot be used on {on} yet; open a connection without it for them")]
    Unsupported {
        /// The operation.
        what: &'static str,
        /// The kind of connection.
        on: &'static str,
    },
    /// A request, reply or pulse over the limit for one message.
    #[error(
        "a message of {len} bytes is over the limit of {max} for a request or reply; send bulk data as a stream and refer to it in the request"
    )]
    MessageTooLarge {
        /// Given.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A priority over the highest.
    #[error("priority {0} is over the highest, {max}", max = crate::msgpass::wire::MAX_PRIORITY)]
    Priority(u8),
    /// No request with that receive id waits for an answer.
    #[error(
        "{0} does not wait for an answer: it was answered already, or its client cancelled it or disconnected"
    )]
    UnknownRequest(crate::msgpass::ReceiveId),
    /// A reply over what the client takes.
    #[error(
        "a reply of {len} bytes is over the {max} bytes the client takes (its reply_max); reply less, or have the client ask for more"
    )]
    ReplyTooLarge {
        /// Given (with bytes written ahead by msg_write).
        len: usize,
        /// The client's limit.
        max: usize,
    },
    /// A chain cannot be added as asked.
    #[error("chain '{chain}': {reason}")]
    Chain {
        /// The chain.
        chain: String,
        /// What is wrong.
        reason: String,
    },
    /// No named chain has that name.
    #[error(
        "the specfile has no chain named '{chain}' (its named chains: {known}); add a <chain name=\"{chain}\"> block"
    )]
    UnknownChain {
        /// The name asked for.
        chain: String,
        /// The chains there are.
        known: String,
    },
    /// An RDMA range outside its buffer or region.
    #[error(
        "the range of {len} bytes at offset {offset} is outside the buffer of {size} bytes; keep offset + length within it"
    )]
    RdmaRange {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// The buffer's size.
        size: u64,
    },
    /// A region could not be made.
    #[error("cannot make an RDMA region: {0}")]
    Region(String),
    /// A buffer pool is at its limit.
    #[error(
        "the buffer pool has made its most buffers ({buffers} of {size} bytes) and all are in use; return some, or make the pool with a higher max or grow"
    )]
    PoolExhausted {
        /// Buffers made.
        buffers: usize,
        /// Bytes per buffer.
        size: usize,
    },
    /// No buffer with that id is published.
    #[error("{0} is not published: it was released by the peer, or its connection closed")]
    UnknownPublish(crate::rdma::PublishId),
    /// A blocking request ended with no answer.
    #[error("the request got no answer: {} ({detail})", status.describe())]
    RequestFailed {
        /// Why, as a status.
        status: crate::status::Status,
        /// Why, in words.
        detail: String,
    },
}

impl VmiError {
    /// The error for an operation a connection refused.
    pub(crate) fn refused(conn: ConnId, r: Refusal) -> VmiError {
        match r {
            Refusal::Unknown => VmiError::UnknownConnection(conn),
            Refusal::NotOpen(state) => VmiError::NotOpen {
                conn,
                state: state.words(),
            },
            Refusal::StreamBusy => VmiError::StreamBusy(conn),
            Refusal::StreamClosed => VmiError::StreamClosed(conn),
        }
    }
}

impl From<AssemblyError> for VmiError {
    fn from(e: AssemblyError) -> VmiError {
        VmiError::Assembly(Box::new(e))
    }
}
