//! How a process becomes a worker: the environment markers, the entry
//! point, and the process's signals, panic hook and runtime.

use std::future::Future;

use super::process::{EXIT_UNKNOWN_WORKER, WORKER_ENV};
use super::runtime::serve;
use super::{logging, panic, Worker};
use crate::sys;
use crate::transport::Connection;
use crate::worker::process::{BLOBS_ENV, EXIT_OUT_OF_MEMORY, MEMORY_ENV, SIGNALS_ENV};

/// The worker name this process was started to run, if a pool started it.
/// Reading removes the marker.
pub fn requested_worker() -> Option<String> {
    let name = std::env::var(WORKER_ENV).ok()?;
    std::env::remove_var(WORKER_ENV);
    Some(name)
}

/// Runs worker `W` in this process until the pool stops it, then exits:
/// handshake, init, serve, drain.
///
/// Called inside a tokio runtime (`worker_main!` as the first line of a
/// `#[tokio::main]` or `#[tokio::test]` function), where no runtime can
/// be started, the worker runs on a thread of its own with its own
/// runtime, while this thread waits for it; the process exits from here
/// either way, so the caller's `main` never goes on. The caller's runtime
/// stays idle (with `worker_main!` first, none of its tasks has run). Signal dispositions, the
/// parent-death signal (armed before `exec`, for the whole process) and
/// descriptor 3 are the process's, so they hold on any thread.
pub fn run<W: Worker>() -> ! {
    let code = if tokio::runtime::Handle::try_current().is_ok() {
        run_on_own_thread::<W>()
    } else {
        run_worker_runtime(serve_inherited::<W>())
    };
    std::process::exit(code)
}

/// Runs worker `W` on a new thread and returns its exit code.
fn run_on_own_thread<W: Worker>() -> i32 {
    /// As large as a main thread's stack, so that a worker's code needs no
    /// less stack here than it would in a program without a runtime.
    const STACK: usize = 8 << 20;
    let spawned = std::thread::Builder::new()
        .name("looppool-worker".into())
        .stack_size(STACK)
        .spawn(|| run_worker_runtime(serve_inherited::<W>()));
    match spawned {
        // A panic that escaped the worker exits as an unwinding `main` does.
        Ok(thread) => thread.join().unwrap_or(101),
        Err(e) => {
            eprintln!("looppool worker: cannot start its thread: {e}");
            1
        }
    }
}

/// The worker name this process was started to run, if a pool started it
/// and it never became a worker: the marker is still there (only
/// [`requested_worker`], in `worker_main!`, removes it).
pub(crate) fn unclaimed_worker_marker() -> Option<String> {
    std::env::var(WORKER_ENV).ok()
}

/// Exits a process asked to run a worker it does not know.
pub fn unknown_worker(name: &str, known: &[&str]) -> ! {
    eprintln!(
        "looppool: this program was asked to run worker {name:?} but knows only {known:?}; \
         list that worker type in looppool::worker_main!"
    );
    std::process::exit(EXIT_UNKNOWN_WORKER)
}

/// Runs `body` the way a worker process runs: the termination signals as the
/// pool asked, the panic hook that reports panics to the parent, and one
/// current-thread tokio runtime with a `LocalSet`. Returns `body`'s exit code.
///
/// It builds a runtime, so it must be called outside any (from a plain
/// `fn main`, or from a thread of its own).
pub fn run_worker_runtime<F: Future<Output = i32>>(body: F) -> i32 {
    if std::env::var_os(SIGNALS_ENV).is_some_and(|v| v == "inherit") {
        sys::default_termination_signals();
    } else {
        sys::ignore_termination_signals();
    }
    std::env::remove_var(SIGNALS_ENV);
    if let Some(limit) = std::env::var(MEMORY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        sys::exit_on_abort_at_memory_limit(limit, EXIT_OUT_OF_MEMORY);
    }
    std::env::remove_var(MEMORY_ENV);
    panic::install_hook(logging::forward_panic);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("looppool worker: cannot build its runtime: {e}");
            return 1;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, body)
}

async fn serve_inherited<W: Worker>() -> i32 {
    let blobs = std::env::var_os(BLOBS_ENV).is_some();
    std::env::remove_var(BLOBS_ENV);
    let conn = sys::inherited_stream().and_then(|stream| {
        if blobs {
            Connection::unix_with_blobs(stream, sys::inherited_blob_socket()?)
        } else {
            Connection::unix(stream)
        }
    });
    match conn {
        Ok(conn) => serve::<W>(conn).await,
        Err(e) => {
            eprintln!("looppool worker: {e}");
            1
        }
    }
}
