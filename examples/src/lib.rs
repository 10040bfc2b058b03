//! Helpers shared by `vmisend` and `vmirecv`: the tutorial's text, the content pattern
//! checked by `--verify`, fragment sizing, and logging set-up.
#![forbid(unsafe_code)]

/// Bytes at the start of every message that carry its length (little-endian `u64`; a
/// shorter message carries the first bytes of it), so `--verify` catches a message that lost
/// or gained whole fragments.
pub const LENGTH_PREFIX: u64 = 8;

/// Byte `offset` of message `message` (of `total` bytes) on a connection. After the length
/// prefix, bytes come from a mixing function of the message index and the 8-byte word
/// index: they never repeat within a message or across messages, so lost, duplicated,
/// reordered or spliced bytes are caught wherever they are.
pub fn pattern(message: u64, total: u64, offset: u64) -> u8 {
    if offset < LENGTH_PREFIX {
        return total.to_le_bytes()[offset as usize];
    }
    word(message, offset >> 3).to_le_bytes()[(offset & 7) as usize]
}

/// splitmix64 of the message and word index.
fn word(message: u64, index: u64) -> u64 {
    let mut z =
        (message.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with the pattern of `message` (of `total` bytes) starting at `offset`.
pub fn fill(buf: &mut [u8], message: u64, total: u64, offset: u64) {
    let mut i = 0;
    // Byte by byte up to an aligned word, then a word at a time.
    while i < buf.len() && ((offset + i as u64) < LENGTH_PREFIX || (offset + i as u64) & 7 != 0) {
        buf[i] = pattern(message, total, offset + i as u64);
        i += 1;
    }
    let end = offset + buf.len() as u64;
    let mut chunks = buf[i..].chunks_exact_mut(8);
    let first = (offset + i as u64) >> 3;
    for (w, c) in (first..).zip(&mut chunks) {
        c.copy_from_slice(&word(message, w).to_le_bytes());
    }
    let rest = chunks.into_remainder();
    let base = end - rest.len() as u64;
    for (j, b) in rest.iter_mut().enumerate() {
        *b = pattern(message, total, base + j as u64);
    }
}

/// The first offset in `data` that differs from the pattern of `message` (of `total` bytes,
/// as far as the receiver knows: it reads the length from the prefix).
pub fn check(data: &[u8], message: u64, total: u64, offset: u64) -> Option<u64> {
    let mut expect = vec![0u8; data.len()];
    fill(&mut expect, message, total, offset);
    data.iter()
        .zip(&expect)
        .position(|(a, b)| a != b)
        .map(|i| offset + i as u64)
}

/// What `--verify` knows of a message being received.
#[derive(Debug, Default)]
pub struct Verifier {
    prefix: [u8; LENGTH_PREFIX as usize],
    offset: u64,
    /// First difference found, if any.
    pub bad: Option<u64>,
}

impl Verifier {
    /// Checks the next bytes of message `message`.
    pub fn feed(&mut self, message: u64, data: &[u8]) {
        let mut data = data;
        while self.offset < LENGTH_PREFIX && !data.is_empty() {
            self.prefix[self.offset as usize] = data[0];
            self.offset += 1;
            data = &data[1..];
        }
        if !data.is_empty() {
            let total = u64::from_le_bytes(self.prefix);
            if self.bad.is_none() {
                self.bad = check(data, message, total, self.offset);
            }
            self.offset += data.len() as u64;
        }
    }

    /// At the message's end: `Err` with what is wrong (a byte that differs, or a length other
    /// than the one the sender wrote at its start). Resets for the next message.
    pub fn finish(&mut self, message: u64) -> Result<u64, String> {
        let got = self.offset;
        let n = got.min(LENGTH_PREFIX) as usize;
        let mut declared = [0u8; 8];
        declared[..n].copy_from_slice(&self.prefix[..n]);
        let bad = self.bad.take();
        let text = self.prefix.starts_with(b"All work");
        *self = Verifier::default();
        if let Some(b) = bad {
            if text {
                return Err(
                    "it holds the tutorial's text, not the test pattern: run vmisend with --pattern to verify"
                        .into(),
                );
            }
            return Err(format!("byte {b} differs from what vmisend wrote"));
        }
        let declared = u64::from_le_bytes(declared);
        // A message shorter than the prefix carries only its first bytes: check those.
        let consistent = if got >= LENGTH_PREFIX {
            declared == got
        } else {
            got.to_le_bytes()[..n] == declared.to_le_bytes()[..n]
        };
        if !consistent {
            return Err(format!(
                "message {} has {got} bytes but vmisend wrote {declared}",
                message + 1
            ));
        }
        Ok(got)
    }
}

/// The sentence the VMI 2.1 tutorial's sender repeats, numbered from 1.
const TUTORIAL: &str = "All work and no play makes Jack a dull boy #";

/// Fills `buf` with bytes `offset..` of the tutorial's message of `total` bytes: "All work
/// and no play makes Jack a dull boy #1.  " repeated with the number counting up, cut at
/// `total - 1` bytes and ended with a NUL (what the tutorial's `createMessage` writes).
pub fn fill_text(buf: &mut [u8], total: u64, offset: u64) {
    let mut pos = 0u64; // start of the current sentence in the message
    let mut n = 1u64;
    let end = offset + buf.len() as u64;
    while pos < end {
        let sentence = format!("{TUTORIAL}{n}.  ");
        let len = sentence.len() as u64;
        if pos + len > offset {
            for (i, &b) in sentence.as_bytes().iter().enumerate() {
                let at = pos + i as u64;
                if (offset..end).contains(&at) {
                    buf[(at - offset) as usize] = b;
                }
            }
        }
        pos += len;
        n += 1;
    }
    if total > 0 && (offset..end).contains(&(total - 1)) {
        buf[(total - 1 - offset) as usize] = 0;
    }
}

/// How a received message prints: its text up to the first NUL when it is text (the
/// tutorial's message), at most `max` bytes of it; `None` for binary data.
pub fn printable(data: &[u8], max: usize) -> Option<String> {
    let text = data.split(|&b| b == 0).next().unwrap_or(&[]);
    let text = std::str::from_utf8(text).ok()?;
    if text.is_empty()
        || text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return None;
    }
    if text.len() <= max {
        return Some(text.to_string());
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Some(format!(
        "{}… ({} more bytes)",
        &text[..cut],
        text.len() - cut
    ))
}

/// Splits `size` bytes into `fragments` pieces whose sizes differ by at most one.
pub fn fragment_sizes(size: u64, fragments: u64) -> impl Iterator<Item = u64> {
    let fragments = fragments.max(1);
    let (base, extra) = (size / fragments, size % fragments);
    (0..fragments).map(move |i| base + u64::from(i < extra))
}

/// `println!` for the programs' output: when stdout is closed early (`vmirecv k | head`),
/// the program ends quietly with status 0 instead of panicking on the broken pipe.
#[macro_export]
macro_rules! quiet_println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
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

pub use vmi_core::params::parse_seconds;

/// Starts vmi from `spec` (a specfile path) when given, else from `VMI_SPECFILE`.
pub fn open(
    spec: Option<&std::path::Path>,
    key: &str,
    options: vmi_core::Options,
) -> Result<vmi_core::Vmi, String> {
    match spec {
        Some(path) => {
            let spec = vmi_core::spec::Spec::from_file(path).map_err(|e| e.to_string())?;
            vmi_core::Vmi::with_spec_options(spec, key, options, &|v| std::env::var(v).ok())
                .map_err(|e| e.to_string())
        }
        None => vmi_core::Vmi::init_with(Some(key), options).map_err(|e| e.to_string()),
    }
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
    fn the_tutorial_text_is_cut_and_ended_with_nul() {
        let mut m = vec![0xffu8; 100];
        fill_text(&mut m, 100, 0);
        let text = printable(&m, 1000).unwrap();
        assert!(text.starts_with("All work and no play makes Jack a dull boy #1.  All work"));
        assert_eq!(text.len(), 99);
        assert_eq!(m[99], 0);
        // Filling in pieces gives the same bytes.
        let mut parts = vec![0u8; 100];
        for (start, len) in [(0, 7), (7, 50), (57, 43)] {
            fill_text(&mut parts[start..start + len], 100, start as u64);
        }
        assert_eq!(parts, m);
        assert_eq!(printable(&[1, 2, 3], 10), None);
        assert_eq!(printable(b"abcdef\0", 3).unwrap(), "abc… (3 more bytes)");
        // A verifier told it is text, not the pattern.
        let mut v = Verifier::default();
        v.feed(0, &m);
        assert!(v.finish(0).unwrap_err().contains("--pattern"));
    }

    #[test]
    fn pattern_detects_changes() {
        let mut b = vec![0u8; 4096];
        fill(&mut b, 3, 4096, 100);
        assert_eq!(check(&b, 3, 4096, 100), None);
        assert!(
            check(&b, 4, 4096, 100).is_some(),
            "another message's bytes differ"
        );
        b[77] ^= 1;
        assert_eq!(check(&b, 3, 4096, 100), Some(177));
    }

    #[test]
    fn fill_matches_the_pattern_at_any_offset() {
        for off in [0u64, 1, 5, 7, 8, 9, 1000, 131_072] {
            let mut b = vec![0u8; 50];
            fill(&mut b, 9, 5000, off);
            for (i, &x) in b.iter().enumerate() {
                assert_eq!(x, pattern(9, 5000, off + i as u64), "offset {off} + {i}");
            }
        }
    }

    /// A message missing a fragment (the splice the old 128 KiB-periodic pattern missed) or
    /// with one too many is caught, by length and by content.
    #[test]
    fn spliced_and_truncated_messages_are_caught() {
        let total = 1u64 << 20;
        let mut msg = vec![0u8; total as usize];
        fill(&mut msg, 0, total, 0);
        let frag = (total / 8) as usize;
        let mut v = Verifier::default();
        // Fragments 0..4 and 5..8: fragment 4 was lost.
        for i in (0..8).filter(|&i| i != 4) {
            v.feed(0, &msg[i * frag..(i + 1) * frag]);
        }
        let e = v.finish(0).unwrap_err();
        assert!(
            e.contains("differs") || e.contains("but vmisend wrote"),
            "{e}"
        );
        // The whole message passes; a short one passes too.
        v.feed(0, &msg);
        assert_eq!(v.finish(0), Ok(total));
        let mut short = [0u8; 3];
        fill(&mut short, 1, 3, 0);
        v.feed(1, &short);
        assert_eq!(v.finish(1), Ok(3));
        // Two messages merged into one: the length is wrong.
        let mut m2 = vec![0u8; 100];
        fill(&mut m2, 0, 100, 0);
        v.feed(0, &m2[..60]);
        let mut m3 = vec![0u8; 100];
        fill(&mut m3, 1, 100, 0);
        v.feed(0, &m3);
        assert!(v.finish(0).is_err());
    }
}
