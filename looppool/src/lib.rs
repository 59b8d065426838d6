//! A pool of worker **processes**, each running its own single-threaded tokio
//! event loop, that exchange typed messages with a parent.
//!
//! Heavy asynchronous programs mix IO-bound work with CPU-bound steps that
//! are coupled to the event loop. One process is not enough, and a thread
//! pool does not fit because the CPU work needs the loop. `looppool` starts N
//! worker processes; each runs its own loop, holds its own (not necessarily
//! `Send`) state, and handles many tasks at once. Processes also isolate
//! crashes (`panic = "abort"`, FFI faults, OOM), let non-thread-safe native
//! libraries be used in parallel, and give per-worker memory that can be
//! recycled.
//!
//! # Quick example
//!
//! ```no_run
//! use std::rc::Rc;
//! use looppool::{BoxError, InitContext, Output, Pool, TaskContext, Worker};
//!
//! struct Doubler;
//!
//! impl Worker for Doubler {
//!     const NAME: &'static str = "doubler";
//!     type Init = ();
//!     type Task = u64;
//!     type Output = u64;
//!
//!     async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> {
//!         Ok(Doubler)
//!     }
//!
//!     async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
//!         cx.emit(2 * x).await?;
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // In a process the pool started, this runs the worker and never returns.
//!     looppool::worker_main!(Doubler);
//!
//!     let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//!     rt.block_on(async {
//!         let (pool, mut outputs) = Pool::<Doubler>::builder().workers(2).start().await?;
//!         assert_eq!(pool.call(21).await?, 42);
//!         for x in 0..10 {
//!             pool.submit(x).await?;
//!         }
//!         let mut sum = 0;
//!         for _ in 0..10 {
//!             if let Some(Output::Value { value, .. }) = outputs.next().await {
//!                 sum += value;
//!             }
//!         }
//!         assert_eq!(sum, 90);
//!         pool.shutdown().await;
//!         Ok(())
//!     })
//! }
//! ```
//!
//! # How it works
//!
//! The pool starts each worker by executing a program (by default the current
//! executable, `/proc/self/exe`) with an environment variable naming the
//! [`Worker`] to run; [`worker_main!`] at the top of `main` turns such a
//! process into a worker. Each worker is connected to the parent by its own
//! Unix socketpair carrying length-delimited frames: tasks, outputs,
//! completions and credits, with a handshake that checks the protocol
//! version and the message types.
//!
//! # Every queue is bounded by credits
//!
//! As the original Python package's two semaphores did: each worker holds
//! at most `max_tasks / workers` queued plus running tasks ([`Pool::submit`]
//! waits, [`Pool::try_submit`] returns the task in a *full* error), and at
//! most `max_results / workers` outputs may wait for the parent's consumer
//! ([`TaskContext::emit`] waits, [`TaskContext::try_emit`] returns *full*).
//! No output is ever dropped.
//!
//! Outputs are bounded in bytes too ([`PoolBuilder::max_result_bytes`],
//! default 256 MiB for the pool, split per worker), by the same credits: an
//! output frame costs one credit, or one per `max_result_bytes /
//! max_results` bytes of its encoding when larger, so whichever bound is
//! reached first holds the worker. A frame costs at most half a worker's
//! window, so the worst case per worker is its share of `max_result_bytes`,
//! or two outputs larger than half that share, whichever is more (bytes
//! counted as encoded; the decoded values may be larger or smaller). A
//! task's failure spends credits as an output does: `Failed` items count
//! against both bounds (a `call`'s failure, as its reply, goes to the
//! caller and its credits come back at once). When a worker has waited on
//! unread outputs for [`PoolBuilder::unread_outputs_warning`] (default
//! 5 s), the pool logs a warning naming it, once per episode: a program
//! that keeps the [`Outputs`] stream but does not read it stalls its
//! workers, and should drop the stream instead.
//!
//! # Failure semantics
//!
//! | what happens | a `submit`ted task | a `call` |
//! |---|---|---|
//! | the handler returns `Err` or panics | an [`Output::Failed`] item; the worker carries on | [`CallError::Task`] |
//! | the handler fails while nobody reads the outputs | its failure waits for an output credit, as an `emit` does: `Failed` items count against `max_results` and `max_result_bytes` | [`CallError::Task`] (the credit comes back at once) |
//! | outputs stay unread for [`PoolBuilder::unread_outputs_warning`] | workers wait in `emit` (and to report failures); one warning per waiting worker and episode | as a `submit`ted task |
//! | the worker process dies (killed, `abort`, `exit`) | an [`Output::Lost`] item naming worker, pid and exit status | [`CallError::WorkerLost`] |
//! | the worker breaks the protocol (garbage, oversize frame, undecodable output) | the connection is closed, the worker killed and replaced; its tasks are [`Output::Lost`] with [`LossCause::Protocol`] | [`CallError::WorkerLost`] |
//! | the pool is shut down | runs to completion first | runs to completion first |
//! | a shutdown deadline passes | [`Output::Lost`] with [`LossCause::ShutdownDeadline`] | [`CallError::WorkerLost`] |
//! | the pool is dropped | [`Output::Lost`] with [`LossCause::PoolKilled`] | (no call can be pending) |
//! | the worker's loop stops answering heartbeats ([`PoolBuilder::heartbeat`]) | the worker is killed and replaced; [`Output::Lost`] with [`LossCause::Unresponsive`] | [`CallError::WorkerLost`] |
//! | the task runs past [`PoolBuilder::task_timeout`] | its handler is dropped; an [`Output::Failed`] item | [`CallError::Task`] |
//! | the worker is recycled ([`PoolBuilder::recycle_after_tasks`], [`PoolBuilder::recycle_above_memory`]) or removed by [`Pool::resize`] | it drains first: every task it holds completes | completes |
//!
//! With [`PoolBuilder::retry_lost`]`(n)`, a task lost with its worker is
//! first re-sent to a live worker, up to `n` times, under its original
//! [`TaskId`]; only then is it reported lost. Use it for idempotent work only:
//! a lost task may have run partly before its worker died.
//!
//! Every task accepted by `submit` ends in exactly one of: its outputs
//! followed by completion (no item), a `Failed` item, or a `Lost` item. A
//! dead worker is replaced under the [`RestartPolicy`]; tasks sent to other
//! workers are not affected. Compared with other pools:
//! `multiprocessing.Pool` hangs on a dead worker, `ProcessPoolExecutor`
//! breaks the whole pool and fails every pending task, and the original
//! looppool keeps routing to the dead worker. Here only the dead worker's own
//! tasks fail, each with a reason, and nothing waits forever.
//!
//! Workers never outlive the parent: each is started with a parent-death
//! signal (SIGKILL, armed from a thread that lives as long as the process),
//! and exits when its connection ends.
//!
//! # Testing your workers
//!
//! Under `cargo test` the current executable is the test harness, so point
//! the pool at a binary of your package that runs your workers:
//!
//! ```toml
//! # Cargo.toml
//! [[bin]]
//! name = "my-workers"
//! ```
//!
//! ```text
//! // src/bin/my-workers.rs
//! fn main() {
//!     looppool::worker_main!(my_crate::Doubler);
//! }
//!
//! // tests/doubler.rs
//! #[tokio::test]
//! async fn doubles() {
//!     let (pool, _outputs) = looppool::Pool::<my_crate::Doubler>::builder()
//!         .program(env!("CARGO_BIN_EXE_my-workers"))
//!         .workers(2)
//!         .start()
//!         .await
//!         .unwrap();
//!     assert_eq!(pool.call(21).await.unwrap(), 42);
//!     pool.shutdown().await;
//! }
//! ```
//!
//! This crate's own integration tests (`looppool-tests`) are built this way.
//!
//! # Layout
//!
//! The modules form layers, each using only those listed before it:
//!
//! 1. Leaves: `task_id` ([`TaskId`]), `event` (the lifecycle vocabulary:
//!    [`WorkerEvent`], [`ExitStatus`], [`LossCause`], [`RecycleReason`]),
//!    `error`, `output` ([`Output`]), `sync` and `sys` (the only module
//!    with `unsafe`: the parent-death signal, the spawner thread,
//!    descriptors).
//! 2. `codec` (length-delimited frames, varints, postcard payloads) and
//!    `protocol` (the wire messages, with the report and log bodies).
//! 3. [`transport`]: frames over a byte stream (a socketpair locally) and
//!    the [`Connector`](transport::Connector) seam every worker comes
//!    through.
//! 4. The two ends of the wire. `parent`: per worker a *lane* (its queue of
//!    encoded frames, task slots, output-credit window), the connection's
//!    reader and writer, reports, and the [`Outputs`] stream. [`worker`]:
//!    the [`Worker`] trait and the worker process's runtime (outbox, task
//!    runner, contexts, logging, watchdog).
//! 5. `stats`: the [`PoolStats`] snapshot, collected from the lanes.
//! 6. `supervisor`: launching (the local process connector and the
//!    handshake), one driver per worker index that serves, notices the end
//!    and reports lost tasks, the restart policy, heartbeats, resizing and
//!    the pool's lifecycle state.
//! 7. [`metrics`]: exporters (statsd, Prometheus) reading snapshots.
//! 8. `pool`: the [`Pool`] handle and its [`PoolBuilder`].
//!
//! # Feature flags
//!
//! - `statsd` (on by default): `PoolBuilder::statsd` sends reports to a
//!   statsd server, with the `cadence` crate.
//! - `prometheus`: `PoolBuilder::prometheus` serves the pool's figures at
//!   `/metrics`, encoded with the `prometheus-client` crate.
//!
//! # Platform support
//!
//! Linux. The parent-death signal and `/proc/self/exe` are Linux features.
#![doc(test(attr(deny(warnings), allow(dead_code))))]

mod codec;
mod error;
mod event;
pub mod metrics;
mod output;
mod parent;
mod pool;
mod protocol;
mod stats;
mod supervisor;
mod sync;
mod sys;
mod task_id;
pub mod transport;
pub mod worker;

/// Entry points for the fuzz targets in `fuzz/`; not public API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;

pub use codec::DEFAULT_MAX_FRAME;
pub use error::{
    BuildError, CallError, EmitError, EmitErrorKind, StartError, SubmitError, SubmitErrorKind,
    TaskError, WorkerLost,
};
pub use event::{ExitStatus, LossCause, RecycleReason, WorkerEvent};
pub use metrics::{PoolStats, WorkerReport, WorkerStats};
pub use pool::{
    Output, Outputs, Pool, PoolBuilder, ShutdownReport, Signals, TaskId,
    DEFAULT_UNREAD_OUTPUTS_WARNING,
};
pub use supervisor::RestartPolicy;
pub use worker::{BoxError, Emitter, InitContext, TaskContext, Worker};
