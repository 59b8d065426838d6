//! What a worker process and the pool that starts it agree on outside the
//! wire: the environment markers and the exit codes.

/// The environment variable through which a pool tells the program it starts
/// which [`Worker`](crate::Worker) to run. It is removed on reading, so a worker may start
/// pools of its own.
pub const WORKER_ENV: &str = "LOOPPOOL_WORKER";

/// Set by the pool to `inherit` when workers keep the default SIGINT/SIGTERM
/// actions rather than ignoring them.
pub(crate) const SIGNALS_ENV: &str = "LOOPPOOL_SIGNALS";

/// Set by the pool to the worker's memory limit in bytes when it set one
/// (`PoolBuilder::memory_limit`): the worker then exits with
/// [`EXIT_OUT_OF_MEMORY`] instead of aborting when an allocation fails at
/// the limit.
pub(crate) const MEMORY_ENV: &str = "LOOPPOOL_MEMORY_LIMIT";

/// Set by a local pool to the descriptor number of the worker's blob socket
/// (see `transport::blobs`); removed on reading.
pub(crate) const BLOBS_ENV: &str = "LOOPPOOL_BLOB_FD";

/// Exit code of a worker whose initialiser failed.
pub(crate) const EXIT_INIT_FAILED: i32 = 3;
/// Exit code of a program asked to run a worker it does not know.
pub(crate) const EXIT_UNKNOWN_WORKER: i32 = 4;
/// Exit code of a worker that broke off because of a protocol error.
pub(crate) const EXIT_PROTOCOL: i32 = 5;
/// Exit code of a worker that aborted with its data segment at its memory
/// limit (see `sys::exit_on_abort_at_memory_limit`).
pub(crate) const EXIT_OUT_OF_MEMORY: i32 = 7;
