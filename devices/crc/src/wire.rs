//! The CRC trailer: 4 bytes, little-endian CRC32C (Castagnoli) of the fragment's payload,
//! after the payload.

/// Trailer length.
pub const TRAILER: usize = 4;

/// CRC32C over several pieces, as if they were one.
pub fn crc_of<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    pieces.into_iter().fold(0, crc32c::crc32c_append)
}

/// Encodes a trailer.
pub fn emit(crc: u32) -> [u8; TRAILER] {
    crc.to_le_bytes()
}

/// Decodes a trailer.
pub fn parse(b: [u8; TRAILER]) -> u32 {
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_value_and_pieces() {
        // The standard CRC32C check value of "123456789".
        assert_eq!(crc_of([b"123456789".as_slice()]), 0xe306_9283);
        assert_eq!(
            crc_of([b"1234".as_slice(), b"".as_slice(), b"56789".as_slice()]),
            0xe306_9283
        );
        assert_eq!(emit(0xe306_9283), [0x83, 0x92, 0x06, 0xe3]);
        assert_eq!(parse([0x83, 0x92, 0x06, 0xe3]), 0xe306_9283);
    }
}
