//! What a worker process and the pool that starts it agree on outside the
//! wire: the environment markers and the exit codes.

/// The environment variable through which a pool tells the program it starts
/// which [`Worker`](crate::Worker) to run. It is removed on reading, so a worker may start
/// pools of its own.
pub const WORKER_ENV: &str = "LOOPPOOL_WORKER";

/// Set by the pool to `inherit` when workers keep the default SIGINT/SIGTERM
/// actions rather than ignoring them.
pub(crate) const SIGNALS_ENV: &str = "LOOPPOOL_SIGNALS";

/// Exit code of a worker whose initialiser failed.
pub(crate) const EXIT_INIT_FAILED: i32 = 3;
/// Exit code of a program asked to run a worker it does not know.
pub(crate) const EXIT_UNKNOWN_WORKER: i32 = 4;
/// Exit code of a worker that broke off because of a protocol error.
pub(crate) const EXIT_PROTOCOL: i32 = 5;
