//! How a process becomes a worker: the environment marker and the entry point.

use super::{runtime, Worker};

/// The environment variable through which a pool tells the program it starts
/// which [`Worker`] to run. It is removed on reading, so a worker may start
/// pools of its own.
pub const WORKER_ENV: &str = "LOOPPOOL_WORKER";

/// Set by the pool to `inherit` when workers keep the default SIGINT/SIGTERM
/// actions rather than ignoring them.
pub(crate) const SIGNALS_ENV: &str = "LOOPPOOL_SIGNALS";

/// The worker name this process was started to run, if a pool started it.
/// Reading removes the marker.
pub fn requested_worker() -> Option<String> {
    let name = std::env::var(WORKER_ENV).ok()?;
    std::env::remove_var(WORKER_ENV);
    Some(name)
}

/// Runs worker `W` in this process until the pool stops it, then exits.
pub fn run<W: Worker>() -> ! {
    let code = runtime::main::<W>();
    std::process::exit(code)
}

/// Exits a process asked to run a worker it does not know.
pub fn unknown_worker(name: &str, known: &[&str]) -> ! {
    eprintln!(
        "looppool: this program was asked to run worker {name:?} but knows only {known:?}; \
         list that worker type in looppool::worker_main!"
    );
    std::process::exit(runtime::EXIT_UNKNOWN_WORKER)
}
