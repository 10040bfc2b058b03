//! The fault filter adds nothing to the wire; it only changes, drops or reorders fragments.

/// The bytes this filter adds to a fragment.
pub const OVERHEAD: usize = 0;
