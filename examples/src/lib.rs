//! Helpers shared by `vmisend` and `vmirecv`: the content pattern checked by `--verify`,
//! fragment sizing, and logging set-up.
#![forbid(unsafe_code)]

/// Byte `offset` of message `message` on a connection. Cheap, position-dependent, and
/// different per message, so lost, duplicated or reordered bytes are caught.
pub fn pattern(message: u64, offset: u64) -> u8 {
    (offset.wrapping_mul(31) ^ (offset >> 9) ^ message.wrapping_mul(0x9e37)) as u8
}

/// Fills `buf` with the pattern of `message` starting at `offset`.
pub fn fill(buf: &mut [u8], message: u64, offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern(message, offset + i as u64);
    }
}

/// The first offset in `data` that differs from the pattern.
pub fn check(data: &[u8], message: u64, offset: u64) -> Option<u64> {
    data.iter()
        .enumerate()
        .find(|(i, b)| **b != pattern(message, offset + *i as u64))
        .map(|(i, _)| offset + i as u64)
}

/// Splits `size` bytes into `fragments` pieces whose sizes differ by at most one.
pub fn fragment_sizes(size: u64, fragments: u64) -> impl Iterator<Item = u64> {
    let fragments = fragments.max(1);
    let (base, extra) = (size / fragments, size % fragments);
    (0..fragments).map(move |i| base + u64::from(i < extra))
}

/// Logging to stderr, filtered by `VMI_LOG` (default: warnings; `-v` raises it to info).
pub fn init_logging(verbose: bool) {
    let default = if verbose { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("VMI_LOG", default))
        .format_timestamp_millis()
        .init();
}

/// Parses sizes such as `64k`, `1m`, `16M`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    vmi_core::params::parse_uint(s)
        .ok_or_else(|| format!("'{s}' is not a size (examples: 8, 4k, 1m, 64m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_cover_the_message() {
        let v: Vec<u64> = fragment_sizes(10, 3).collect();
        assert_eq!(v, [4, 3, 3]);
        assert_eq!(fragment_sizes(0, 16).sum::<u64>(), 0);
        assert_eq!(fragment_sizes(64 << 20, 16).sum::<u64>(), 64 << 20);
    }

    #[test]
    fn pattern_detects_changes() {
        let mut b = vec![0u8; 4096];
        fill(&mut b, 3, 100);
        assert_eq!(check(&b, 3, 100), None);
        assert_eq!(
            check(&b, 4, 100),
            Some(100),
            "another message's bytes differ"
        );
        b[77] ^= 1;
        assert_eq!(check(&b, 3, 100), Some(177));
    }
}
