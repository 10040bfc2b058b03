//! Errors of the async facade.
#![forbid(unsafe_code)]

use vmi_core::{Disconnect, Status, VmiError};

/// Why an operation of the facade failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// vmi refused the call (see the inner error for the remedy).
    #[error(transparent)]
    Vmi(#[from] VmiError),
    /// The peer's accept handler refused the connection, with its reply data.
    #[error("the peer rejected the connection: {0}")]
    Rejected(String),
    /// The operation ended without success (a connect that failed, a send that did not
    /// complete, a request with no answer).
    #[error("{}: {detail}", status.describe())]
    Failed {
        /// Why, as a status.
        status: Status,
        /// Why, in words.
        detail: String,
    },
    /// The connection ended.
    #[error("the connection ended: {0:?}")]
    Closed(Disconnect),
    /// The facade stopped (its last handle was dropped) while the operation waited.
    #[error("the vmi facade stopped while the operation waited; keep an AsyncVmi handle alive")]
    Stopped,
}
