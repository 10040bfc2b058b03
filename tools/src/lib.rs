//! Shared pieces of the vmi tools.
#![forbid(unsafe_code)]

/// The comparison with UCX, libfabric and the raw socket floor.
pub mod compare;
/// The measurement engine behind vmi-perf.
pub mod perf;

/// `println!` for the tools' output: when stdout is closed early (`vmi-info | head`), the
/// program ends quietly with status 0 instead of panicking on the broken pipe. Bring it in
/// with `use vmi_tools::quiet_println as println;`.
#[macro_export]
macro_rules! quiet_println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// Logging to stderr, filtered by `VMI_LOG` (default: warnings).
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("VMI_LOG", "warn"))
        .format_timestamp_millis()
        .init();
}
