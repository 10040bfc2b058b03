//! Seeded randomness for tests, with the seed printed so a failure can be replayed.
#![forbid(unsafe_code)]

/// A seeded xorshift generator; the seed is printed so a failure can be replayed with
/// `VMI_TEST_SEED=<seed>`.
pub struct Rng(u64);

impl Rng {
    /// A generator for the test named `test`: seeded from `VMI_TEST_SEED` when set, else
    /// from the clock; the seed is printed either way.
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("VMI_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        println!("{test}: seed {seed} (replay with VMI_TEST_SEED={seed})");
        Rng(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}
