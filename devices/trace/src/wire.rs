//! The trace filter adds nothing to the wire.

/// The bytes this filter adds to a fragment.
pub const OVERHEAD: usize = 0;
