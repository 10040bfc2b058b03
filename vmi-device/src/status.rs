//! Completion status of an operation (VMI 2.1: `VMI_STATUS`).

#![forbid(unsafe_code)]

/// How an operation ended. The numeric values are part of the device ABI
/// (`VMI_STATUS_*` in `vmi_device.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[repr(i32)]
pub enum Status {
    /// The operation succeeded (`VMI_SUCCESS`).
    Ok = 0,
    /// The peer's accept handler refused the connection.
    Rejected = 1,
    /// No process with the requested key could be found at the host.
    Unreachable = 2,
    /// The peer runs an incompatible wire version or filter chain.
    Mismatch = 3,
    /// The operation did not finish in time.
    Timeout = 4,
    /// The connection was closed or reset while the operation was in flight.
    ConnectionLost = 5,
    /// The peer sent bytes that break the wire protocol.
    Protocol = 6,
    /// Data failed an integrity check.
    Corrupt = 7,
    /// The operation was cancelled by a local disconnect or shutdown.
    Cancelled = 8,
    /// A message or fragment exceeded a configured limit.
    TooLarge = 9,
    /// The request was malformed (bad argument, unknown connection).
    Invalid = 10,
    /// Memory or descriptors ran out.
    NoResources = 11,
    /// A device failed internally (for instance, it panicked).
    Internal = 12,
    /// A fragment was lost on the way (a fault injector dropped it); its message cannot be
    /// delivered whole.
    Lost = 13,
}

impl Status {
    /// Maps an ABI code back to a status; unknown codes read as [`Status::Internal`].
    pub fn from_code(code: i32) -> Status {
        match code {
            0 => Status::Ok,
            1 => Status::Rejected,
            2 => Status::Unreachable,
            3 => Status::Mismatch,
            4 => Status::Timeout,
            5 => Status::ConnectionLost,
            6 => Status::Protocol,
            7 => Status::Corrupt,
            8 => Status::Cancelled,
            9 => Status::TooLarge,
            10 => Status::Invalid,
            11 => Status::NoResources,
            13 => Status::Lost,
            _ => Status::Internal,
        }
    }

    /// The ABI code.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// True for [`Status::Ok`].
    pub fn is_ok(self) -> bool {
        self == Status::Ok
    }

    /// A short phrase for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Status::Ok => "success",
            Status::Rejected => "rejected by the peer",
            Status::Unreachable => "peer unreachable",
            Status::Mismatch => "incompatible peer",
            Status::Timeout => "timed out",
            Status::ConnectionLost => "connection lost",
            Status::Protocol => "protocol violation by the peer",
            Status::Corrupt => "data corrupted",
            Status::Cancelled => "cancelled",
            Status::TooLarge => "over a size limit",
            Status::Invalid => "invalid request",
            Status::NoResources => "out of resources",
            Status::Internal => "internal device failure",
            Status::Lost => "fragment lost",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in 0..=13 {
            assert_eq!(Status::from_code(code).code(), code);
        }
        assert_eq!(Status::from_code(999), Status::Internal);
    }
}
