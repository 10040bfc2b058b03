//! Compressed fragment layout: `[algorithm u8][original_len u32 LE][compressed bytes]`,
//! marked by [`FLAG_COMPRESSED`] in the fragment's filter flag bits.

/// The filter flag bit this filter owns (lowest of `VMI_FLAG_FILTER_MASK`).
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Header length.
pub const HEADER: usize = 5;

/// Compression algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// LZ4 block format.
    Lz4 = 1,
    /// Zstandard.
    Zstd = 2,
}

impl Algorithm {
    /// From the header byte.
    pub fn from_u8(v: u8) -> Option<Algorithm> {
        match v {
            1 => Some(Algorithm::Lz4),
            2 => Some(Algorithm::Zstd),
            _ => None,
        }
    }

    /// From the parameter text.
    pub fn from_name(s: &str) -> Option<Algorithm> {
        match s.to_ascii_lowercase().as_str() {
            "lz4" => Some(Algorithm::Lz4),
            "zstd" => Some(Algorithm::Zstd),
            _ => None,
        }
    }
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Length after decompression.
    pub original_len: u32,
}

impl Header {
    /// Parses a header; `None` when malformed.
    pub fn parse(b: &[u8]) -> Option<Header> {
        if b.len() < HEADER {
            return None;
        }
        Some(Header {
            algorithm: Algorithm::from_u8(b[0])?,
            original_len: u32::from_le_bytes([b[1], b[2], b[3], b[4]]),
        })
    }

    /// Writes the header.
    pub fn emit(&self) -> [u8; HEADER] {
        let l = self.original_len.to_le_bytes();
        [self.algorithm as u8, l[0], l[1], l[2], l[3]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes() {
        let h = Header {
            algorithm: Algorithm::Zstd,
            original_len: 0x0102_0304,
        };
        assert_eq!(h.emit(), [2, 4, 3, 2, 1]);
        assert_eq!(Header::parse(&[2, 4, 3, 2, 1, 99]), Some(h));
        assert_eq!(Header::parse(&[3, 0, 0, 0, 0]), None);
        assert_eq!(Header::parse(&[1, 0, 0]), None);
    }
}
