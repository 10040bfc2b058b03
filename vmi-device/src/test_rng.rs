//! A seeded random source for the unit tests (xorshift64): the seed comes from
//! `VMI_TEST_SEED` or the test's own default, and is printed so a failure can be repeated.

/// The seed and a source of numbers below a bound.
pub(crate) fn seeded(default: u64) -> (u64, impl FnMut(u64) -> u64) {
    let seed = std::env::var("VMI_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("seed {seed} (set VMI_TEST_SEED to repeat)");
    let mut x = seed.max(1);
    let below = move |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    (seed, below)
}
