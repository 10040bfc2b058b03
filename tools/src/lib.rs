//! Shared pieces of the vmi tools.
#![forbid(unsafe_code)]

/// The comparison with UCX, libfabric and the raw socket floor.
pub mod compare;
/// The measurement engine behind vmi-perf.
pub mod perf;

/// Logging to stderr, filtered by `VMI_LOG` (default: warnings).
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("VMI_LOG", "warn"))
        .format_timestamp_millis()
        .init();
}
