//! The skeleton puts nothing on the wire. A filter that adds a header or trailer defines its
//! layout here (little-endian, explicit widths, a length check before any allocation) and
//! marks fragments it changed with a bit in `VMI_FLAG_FILTER_MASK`.

/// The bytes this filter adds in front of each fragment.
pub const HEADROOM: u32 = 0;
/// The bytes this filter adds after each fragment.
pub const TAILROOM: u32 = 0;
