//! Names of abstract Unix sockets derived from keys. Linux limits a socket name to 107 bytes
//! and keys may have 255, so a name that would be too long carries a 128-bit digest of the
//! key instead of the key itself. Every process computes the same name for the same key
//! (the digest is fixed, not a per-process hash), so they still find each other.
#![forbid(unsafe_code)]

/// Longest abstract socket name used (the kernel's limit is 107 bytes).
pub const MAX_SOCKET_NAME: usize = 100;

/// `prefix` followed by `key`, or by `#` and a digest of `key` when that would be longer
/// than [`MAX_SOCKET_NAME`] bytes (or the key holds a NUL byte).
pub fn socket_name(prefix: &str, key: &str) -> String {
    if prefix.len() + key.len() <= MAX_SOCKET_NAME && !key.contains('\0') {
        return format!("{prefix}{key}");
    }
    format!("{prefix}#{:032x}", digest(key.as_bytes()))
}

/// FNV-1a over 128 bits: stable across builds and platforms. Not a cryptographic hash:
/// a colliding key could only make two processes of the same user contend for one name,
/// which the handshake's key check then refuses.
fn digest(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ b as u128).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_kept_long_ones_digested() {
        assert_eq!(socket_name("vmi-shmem.0.", "abc"), "vmi-shmem.0.abc");
        let long = "k".repeat(255);
        let n = socket_name("vmi-shmem.0.", &long);
        assert!(
            n.len() <= MAX_SOCKET_NAME && n.starts_with("vmi-shmem.0.#"),
            "{n}"
        );
        assert_eq!(n, socket_name("vmi-shmem.0.", &long), "stable");
        assert_ne!(n, socket_name("vmi-shmem.0.", &"k".repeat(254)));
        // The FNV-1a 128 test vector for "a".
        assert_eq!(digest(b"a"), 0xd228cb696f1a8caf78912b704e4a8964);
    }
}
