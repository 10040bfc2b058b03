//! What one loopback endpoint puts in another's inbox.

/// A message between endpoints. Connection numbers are each side's own host handles.
#[derive(Debug)]
pub enum Message {
    /// Open a connection.
    ConnectRequest {
        /// Connector's key.
        from_key: String,
        /// Connector's connection handle, to address the reply.
        reply_to: u64,
        /// Connector's filter signature.
        signature: String,
        /// Connect data.
        data: Vec<u8>,
    },
    /// Answer to a connect request.
    ConnectReply {
        /// Connector's connection handle.
        to: u64,
        /// The answering side's handle for the connection.
        peer_conn: u64,
        /// 0 accepted, else a `Status` code.
        status: i32,
        /// Reply data or a reason.
        data: Vec<u8>,
    },
    /// One fragment.
    Data {
        /// Receiver's connection handle.
        to: u64,
        /// Fragment flags (END, filter bits).
        flags: u32,
        /// Payload.
        payload: Vec<u8>,
    },
    /// The sender closed the connection.
    Close {
        /// Receiver's connection handle.
        to: u64,
        /// The sender aborted it: the receiver reports it lost, not closed in order.
        lost: bool,
    },
}
