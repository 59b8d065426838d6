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
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // The first line: in a process the pool started, this runs the worker
//!     // (on a thread of its own, outside this runtime) and never returns.
//!     looppool::worker_main!(Doubler);
//!
//!     let (pool, mut outputs) = Pool::<Doubler>::builder().workers(2).start().await?;
//!     assert_eq!(pool.call(21).await?, 42);
//!     for x in 0..10 {
//!         pool.submit(x).await?;
//!     }
//!     let mut sum = 0;
//!     for _ in 0..10 {
//!         if let Some(Output::Value { value, .. }) = outputs.next().await {
//!             sum += value;
//!         }
//!     }
//!     assert_eq!(sum, 90);
//!     pool.shutdown().await;
//!     Ok(())
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
//! Round-robin sends ([`Pool::submit`], [`Pool::try_submit`],
//! [`Pool::call`]) go to the workers strictly in turn while every worker
//! has room, and skip a worker whose queue is full (a slow, stopped or
//! wedged one) while another has room: they wait, or refuse, only when
//! every worker is full. Targeted sends ([`Pool::submit_to`],
//! [`Pool::broadcast`]) wait for their worker. Other dispatch policies are
//! described [below](#control-over-submitted-work).
//!
//! # Control over submitted work
//!
//! - **Cancellation**: [`Pool::cancel`] takes the [`TaskId`] that `submit`
//!   returned. A task the pool has not yet written to its worker never
//!   starts; a running one has its handler dropped where it waits; a
//!   handler that should clean up awaits [`TaskContext::cancelled`] and has
//!   [`PoolBuilder::cancel_grace`] (1 s by default) to return. Its fate is
//!   [`Output::Cancelled`] ([`CallError::Cancelled`] for a call), exactly
//!   once, unless it completed first. A dropped `call` future cancels its
//!   task; [`TaskBuilder::detach`] lets it run on. Unlike pools that
//!   cancel by killing the worker process, no other task is touched; only
//!   a handler that blocks its loop past the grace period gets its worker
//!   replaced, and only under [`BlockedCancel::ReplaceWorker`].
//! - **Per-task options**: [`Pool::task`] sends one task with a deadline of
//!   its own ([`TaskBuilder::timeout`], which replaces
//!   [`PoolBuilder::task_timeout`] for it and fails it even while it waits
//!   unwritten behind a stopped worker), a [key](TaskBuilder::key), or
//!   [detached](TaskBuilder::detach) from its caller:
//!   `pool.task(t).timeout(d).key(&k).submit().await`.
//! - **Dispatch** ([`PoolBuilder::dispatch`]): [`Dispatch::RoundRobin`]
//!   (the default, for tasks of similar cost); [`Dispatch::LeastLoaded`]
//!   (the worker with the fewest tasks in flight: short tasks do not wait
//!   behind long ones); [`Dispatch::Keyed`] (a task's key chooses its
//!   worker by rendezvous hashing, for workers that keep state per key; a
//!   key's tasks start in the order sent, and a key moves only when
//!   [`Pool::resize`] removes its worker or adds new ones).
//!
//! Through `looppool-nats` all of it works the same: a cancel travels on
//! the broker's task stream behind the task it names.
//!
//! # Large payloads
//!
//! A [`Blob`] (anywhere in a task or an output) of at least
//! [`PoolBuilder::blob_threshold`] bytes ([`DEFAULT_BLOB_THRESHOLD`] by
//! default) does not travel through the worker's socket: its bytes live in
//! a sealed memory file (`memfd_create`, sealed against writes and
//! resizing), whose descriptor crosses over a second socket beside the
//! connection (`SCM_RIGHTS`), and the other side maps it read-only. Neither
//! side copies the bytes through the kernel; a blob received and sent on
//! goes as the same file. [`Blob::build`] writes a blob in place; a blob
//! made from a `Vec<u8>` is copied into a file once, when first sent so.
//! Smaller blobs travel inline, and so does every blob through a
//! [`Connector`](transport::Connector) (`looppool-nats`).
//!
//! Frames without blobs are encoded and decoded exactly as before. A frame
//! that carries blobs announces their sizes, and its descriptors are sent
//! before it is written, so the reader finds them queued when it reads the
//! frame and never waits for one. A blob's bytes count, as if they were in
//! its frame, against [`PoolBuilder::max_frame`] and the output byte bound
//! ([`PoolBuilder::max_result_bytes`]).
//!
//! # Operating a running pool
//!
//! - **Control socket** (on by default): every pool listens on a Unix
//!   socket of the user's own (`$XDG_RUNTIME_DIR/looppool/`), through which
//!   `looppool top` (the `looppool-cli` crate) and scripts read its figures
//!   and act on it: snapshot, resize, recycle one worker, rolling restart,
//!   cancel a task. See [`control`] for the protocol, the checks that keep
//!   other users out, and why it is on by default.
//! - **Rolling restart and upgrade**: [`Pool::rolling_restart`] replaces
//!   every worker with a fresh process, and [`Pool::upgrade`] moves every
//!   worker to another program (a new release), one at a time: each
//!   replacement must start and pass `init` before the worker it replaces
//!   drains and retires, so no task fails or is lost, and a replacement
//!   that fails leaves the old workers serving.
//! - **Where time goes**: per worker and for the pool, histograms of queue
//!   wait, run time and output wait (the consumer's lag) in
//!   [`Pool::stats`], the control socket's snapshot, `looppool top` and
//!   Prometheus; a sample of about a thousand tasks a second per worker is
//!   timed, cheap enough to leave on (see
//!   [where time goes](metrics#where-time-goes)). Each worker's reports
//!   carry its loop's lag beside its busy share.
//!
//! # Failure semantics
//!
//! | what happens | a `submit`ted task | a `call` |
//! |---|---|---|
//! | the handler returns `Err` or panics | an [`Output::Failed`] item; the worker carries on | [`CallError::Task`] |
//! | the handler fails while nobody reads the outputs | its failure waits for an output credit, as an `emit` does: `Failed` items count against `max_results` and `max_result_bytes` | [`CallError::Task`] (the credit comes back at once) |
//! | outputs stay unread for [`PoolBuilder::unread_outputs_warning`] | workers wait in `emit` (and to report failures); one warning per waiting worker and episode | as a `submit`ted task |
//! | the worker process dies (killed, `abort`, `exit`) | an [`Output::Lost`] item naming worker, pid and exit status | [`CallError::WorkerLost`] |
//! | the worker process dies while a process it forked holds its connection open | the same: its exit is seen from the process (a pidfd), not only from the connection, which is read for what the worker wrote and then closed | [`CallError::WorkerLost`] |
//! | the worker ends (dies, is killed, drains and exits) having started processes of its own | its descendants in its process group are killed with SIGKILL as it ends; its tasks fare as above | as above |
//! | the worker breaks the protocol (garbage, oversize frame, undecodable output) | the connection is closed, the worker killed and replaced; its tasks are [`Output::Lost`] with [`LossCause::Protocol`] | [`CallError::WorkerLost`] |
//! | (how that is reported) | the [`WorkerEvent::Crashed`] event's cause is [`LossCause::Protocol`] too ([`LossCause::killed_by_pool`]), and the [`WorkerLost`] message says "the pool killed it (signal 9 (SIGKILL))", not a crash | the same message |
//! | a frame from the worker stops part-way: no byte of it for [`PoolBuilder::frame_timeout`] (10 s by default), as when garbage reads as a plausible length | as a protocol breach: killed and replaced; [`Output::Lost`] with [`LossCause::Protocol`] ("frame of N bytes incomplete after T") | [`CallError::WorkerLost`] |
//! | a task's `Serialize` panics in `submit` or `call` | the panic reaches the caller; nothing was sent, the worker's queue goes on | the same |
//! | an output's `Serialize` panics in the worker (inside `emit`) | an [`Output::Failed`] item (`panicked`); nothing of the output was sent, the worker carries on | [`CallError::Task`] |
//! | the `submit` (or `submit_to`, `call`) future is dropped before it completes (a `select!`, a timeout) | nothing was sent | nothing was sent; if the task was already sent, it is cancelled (as below) and its slot freed, unless sent with [`TaskBuilder::detach`]: it then runs and its reply is discarded |
//! | [`Pool::cancel`] of a task not yet written to its worker (queued in the parent, e.g. behind a stopped worker) | it never starts; an [`Output::Cancelled`] item | [`CallError::Cancelled`] |
//! | [`Pool::cancel`] of a running task | its handler is dropped at the await point where it waits (after [`TaskContext::cancelled`] and up to [`PoolBuilder::cancel_grace`] of cleanup, if it awaits that); outputs it emitted first are delivered; then an [`Output::Cancelled`] item | [`CallError::Cancelled`] |
//! | [`Pool::cancel`] racing the task's completion | exactly one fate: whichever the worker reads first (a completion stands; `cancel` returns false for a task already ended) | the same |
//! | [`Pool::cancel`] of a handler that blocks its loop | [`BlockedCancel::Wait`] (default): it ends as it ends, cancelled at its next await; [`BlockedCancel::ReplaceWorker`]: after twice the grace period the worker is killed and replaced, the task [`Output::Cancelled`], the worker's other tasks [`Output::Lost`] ([`LossCause::Unresponsive`]) | [`CallError::Cancelled`] |
//! | the worker dies while a task's cancel is under way | [`Output::Cancelled`], not lost, and not retried | [`CallError::Cancelled`] |
//! | a task's own deadline ([`TaskBuilder::timeout`]) passes | as a cancel: not yet written, it never starts; running, its handler is dropped; an [`Output::Failed`] item ("task exceeded its deadline"); the pool-wide [`PoolBuilder::task_timeout`] does not apply to it. As it sends the cancel, the parent logs a warning (target `looppool::metrics`) naming the tasks the worker held, for how long, and, for a local worker, what its threads were doing | [`CallError::Task`] |
//! | keyed dispatch ([`Dispatch::Keyed`]) and its worker crashes | its tasks fare as above; the key's next tasks wait for the replacement, which has the same index: the key does not move | the same |
//! | keyed dispatch and [`Pool::resize`] | shrinking moves only the removed workers' keys (their tasks in flight drain first); growing moves about one key in `n` to each new worker, none between old workers | the same |
//! | a [`Blob`]'s bytes, with its frame, exceed [`PoolBuilder::max_frame`] | refused at its sender: `submit` fails with [`SubmitErrorKind::TooLarge`], an `emit` with [`EmitErrorKind::TooLarge`] | the same |
//! | putting a blob in a memory file fails (out of descriptors or memory) | `submit` fails with [`SubmitErrorKind::Encode`]; in the worker, the `emit` fails (`Encode`) | the same |
//! | the worker dies while blobs travel to or from it | its tasks fare as above; the descriptors queued for it, in its socket and in its hands are closed with it: none is leaked | as above |
//! | a worker's frame announces blob descriptors that are not there, or sends one that is not a memory file sealed against writes and resizing, not of its announced size, out of sequence, or not used by the frame | as a protocol breach, at once (a frame's descriptors are sent before it, so none is waited for): killed and replaced; [`Output::Lost`] with [`LossCause::Protocol`] saying what was wrong | [`CallError::WorkerLost`] |
//! | a task with blobs is lost with its worker under [`PoolBuilder::retry_lost`] | re-sent with its blobs (the same files) | the same |
//! | a worker's blob socket is full (it reads slowly) | the frames before the next blob's are written while the writer waits for room: no deadlock | the same |
//! | the pool is shut down | runs to completion first | runs to completion first |
//! | a shutdown deadline passes | [`Output::Lost`] with [`LossCause::ShutdownDeadline`] | [`CallError::WorkerLost`] |
//! | the pool is dropped | [`Output::Lost`] with [`LossCause::PoolKilled`] | (no call can be pending) |
//! | the worker's loop stops answering heartbeats (on by default: [`PoolBuilder::heartbeat`]), e.g. the process is stopped (`SIGSTOP`) or a handler never yields | meanwhile round-robin sends skip it; after the timeout it is killed and replaced, its [`WorkerEvent::Unresponsive`] (also logged as an error) naming the tasks it held, for how long each (see [`HeldTask`]), and, for a local worker, what its threads were doing (state, `wchan`, system call, kernel stack as root), read before the kill; [`Output::Lost`] with [`LossCause::Unresponsive`] | [`CallError::WorkerLost`] |
//! | the worker's allocations pass [`PoolBuilder::memory_limit`] (a runaway task), or the kernel's OOM killer kills it | it dies at once and is replaced; [`Output::Lost`] with [`LossCause::OutOfMemory`] (see [below](#out-of-memory)) | [`CallError::WorkerLost`] |
//! | a connector's transport loses the worker and says why ([`transport::Peer::loss_cause`]; `looppool-nats`: a broker stream deleted, heartbeats lost) | [`Output::Lost`] with [`LossCause::Transport`] and the reason | [`CallError::WorkerLost`] |
//! | [`PoolBuilder::worker_cpus`] names CPUs the kernel no longer lets a worker use (taken offline, or outside a changed cpuset) when a replacement starts | the replacement's start fails ([`StartError::Spawn`], "Invalid argument") and is retried as any failed start, under the restart policy | the same |
//! | the task runs past [`PoolBuilder::task_timeout`] | its handler is dropped; an [`Output::Failed`] item; the worker reports it first, with what its threads were doing (read from `/proc` in the worker, so also behind a broker), and the parent logs a warning naming the tasks the worker held and for how long | [`CallError::Task`] |
//! | the worker is recycled ([`PoolBuilder::recycle_after_tasks`], [`PoolBuilder::recycle_above_memory`]) or removed by [`Pool::resize`] | it drains first: every task it holds completes | completes |
//! | a rolling restart ([`Pool::rolling_restart`], [`Pool::upgrade`]) replaces the worker | its replacement starts and passes `init` first; then the worker drains as a recycled one does: every task it holds completes; meanwhile round-robin sends go to the other workers and targeted ones wait for the replacement | completes |
//! | a rolling restart's replacement fails to start (spawn, handshake, `init`, start timeout) | the restart stops with a [`RestartError`] saying which workers were replaced; the failed replacement is stopped; the worker it was for and those after it serve on, untouched | the same |
//! | the worker dies while it drains for a rolling restart | its tasks are [`Output::Lost`] as in any crash (the restart policy counts it); the replacement already started takes its place | [`CallError::WorkerLost`] |
//! | the pool shuts down (or is dropped) during a rolling restart | the restart ends with a [`RestartError`] caused by [`StartError::Closed`]; a replacement not yet in place is stopped; tasks fare as in any shutdown | the same |
//! | a worker holds a task that never ends during a rolling restart | the restart waits for it: bound tasks with [`PoolBuilder::task_timeout`], or drop the restart's future, which stops the restart after that worker | the same |
//!
//! From outside, through the [control socket](control):
//!
//! | what happens | what the pool does |
//! |---|---|
//! | a client sends a malformed line (not JSON or UTF-8, a wrong field, an unknown op, over [`control::MAX_LINE`] bytes) | an error reply of a stable kind; the request never reaches the pool, and the connection stays usable |
//! | a client of another user connects (root included), or one whose credentials cannot be read | one `forbidden` line, and the connection is closed |
//! | a client sends nothing, or stops reading its replies | it is disconnected after [`control::IDLE_TIMEOUT`] or [`control::WRITE_TIMEOUT`]; past [`control::MAX_CLIENTS`] connections, more get `busy` and are closed at once |
//! | a client hangs up (or dies) in the middle of a request | the request is carried out all the same (a resize, a recycle, a rolling restart complete); its reply is dropped |
//! | the pool shuts down, fails or is dropped while clients are connected | the listener stops and the socket file is removed (by the time `shutdown` returns); every connection is closed, a request in progress without its reply |
//! | the parent is killed (SIGKILL) | the socket file stays until the next pool started in the same directory, or [`control::sockets`] (which `looppool top` calls), removes it |
//! | the socket directory cannot be used (another owner, access for group or others, a symlink, a read-only file system) | in the default directory: the pool starts without a socket and logs a warning; in a directory set with [`PoolBuilder::control_socket`]: `start` fails with [`StartError::Config`] |
//!
//! What failures do to the [timing histograms](metrics#where-time-goes):
//!
//! | what happens | what the histograms count |
//! |---|---|
//! | a timed task's worker dies (or is killed, or breaks the protocol) before it completes | nothing of it: a lost task has no run time; the outputs it emitted first and the consumer took have their output wait |
//! | a lost task is retried ([`PoolBuilder::retry_lost`]) | its last attempt, from when it was re-sent |
//! | a task is cancelled, or fails its own deadline ([`TaskBuilder::timeout`]) | nothing of it (the worker dropped it); a task failing the pool-wide [`PoolBuilder::task_timeout`] is timed as any failure |
//! | the worker says a task ran longer than its whole stay (a wrong clock, or a lie) | the run as said, and no queue wait; sums saturate rather than wrap; never a panic |
//! | the worker reports the run of a task the parent did not time | nothing: the completion applies, the figure is ignored |
//! | the consumer never takes an item (the stream is kept unread, or dropped) | no output wait for it, until it is taken |
//!
//! With [`PoolBuilder::retry_lost`]`(n)`, a task lost with its worker is
//! first re-sent to a live worker, up to `n` times, under its original
//! [`TaskId`]; only then is it reported lost. Use it for idempotent work only:
//! a lost task may have run partly before its worker died, and the outputs
//! its first run emitted were delivered. Every output names the attempt
//! that made it ([`Output::attempt`], [`TaskId::attempt`]: 0 for the first
//! run), so a consumer that must see each output once keeps those of the
//! task's last attempt (`n` is at most [`TaskId::MAX_ATTEMPT`], 65,535).
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
//! ## Out of memory
//!
//! [`PoolBuilder::recycle_above_memory`] drains a worker, so it waits for a
//! task that allocates without end. [`PoolBuilder::memory_limit`] does not:
//! it sets each worker's `RLIMIT_DATA` (heap, anonymous private mappings,
//! writable data) before it executes, so the kernel refuses the allocation
//! that would pass it. Rust then prints "memory allocation of N bytes
//! failed" and aborts, and on stable Rust nothing can run in between. So
//! the worker catches the abort itself (a SIGABRT handler, installed only
//! under a limit) and the pool reports [`LossCause::OutOfMemory`] exactly
//! when:
//!
//! - the worker exited with code 7, which its SIGABRT handler uses when the
//!   abort comes with its data segment (the `data` of `/proc/self/statm`)
//!   within a quarter of the limit and no panic in progress; the pool
//!   reads that code so only when it set a limit. The exit status is then
//!   `Code(7)`, not `Signal(SIGABRT)`; or
//! - the worker died of a SIGKILL the pool did not send, and the kernel's
//!   OOM-kill count (`oom_kill` in `/proc/vmstat`, Linux 4.13 and later)
//!   rose between the worker's start and its end. The count is
//!   system-wide: another process OOM-killed while someone else (not the
//!   pool) SIGKILLs a worker is reported as out of memory too.
//!
//! An out-of-memory end may still show as [`LossCause::Crashed`]: when one
//! allocation larger than a quarter of the limit fails while the rest is
//! little used (a 200 MiB request at 100 MiB of a 256 MiB limit), when the
//! allocation failure ends the worker other than by an abort (C code that
//! checks `malloc` and exits, say), or when the OOM killer acts where `/proc/vmstat` has no
//! `oom_kill`. Conversely, an explicit `abort` (not a panic) with the data
//! segment within a quarter of the limit is reported as out of memory. A
//! task's panic is never reported so. A worker reached through a
//! connector is never reported so, as it has no limit.
//!
//! Workers never outlive the parent: each is started with a parent-death
//! signal (SIGKILL, armed from a thread that lives as long as the process),
//! and exits when its connection ends.
//!
//! Each local worker leads a process group of its own, and the processes it
//! starts (and theirs) belong to it unless they leave it (`setsid`,
//! `setpgid`). When a worker ends, however it ends, the pool kills that
//! group with SIGKILL before it reaps the worker, so nothing the worker
//! started outlives it; that includes a copy it `fork`ed that still holds
//! its connection. If the parent itself dies without dropping its pool
//! (killed, or `exit` with the pool alive), the workers die by the
//! parent-death signal but nobody is left to kill their groups: their
//! descendants then live on unless they set a parent-death signal of their
//! own.
//!
//! Since workers are not in the parent's process group, a terminal's Ctrl-C
//! (SIGINT to the foreground process group) reaches only the parent, and so
//! does Ctrl-Z. The parent decides: a parent that handles the signal drains
//! the pool by message ([`Pool::shutdown`]); one that dies of it takes its
//! workers down through the parent-death signal. [`Signals`] says what a
//! worker does with SIGINT or SIGTERM sent to it directly.
//!
//! # Testing your workers
//!
//! A handler's logic is quickest to test in the test process itself:
//! [`testing::TestWorker`] runs one worker on a thread of its own, sending
//! it serialized tasks as a pool would, and leaves the test process's panic
//! hook, signal dispositions and environment alone.
//!
//! ```
//! # use std::rc::Rc;
//! # use looppool::{BoxError, InitContext, TaskContext, Worker};
//! # struct Doubler;
//! # impl Worker for Doubler {
//! #     const NAME: &'static str = "doubler";
//! #     type Init = (); type Task = u64; type Output = u64;
//! #     async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
//! #     async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
//! #         cx.emit(2 * x).await?; Ok(())
//! #     }
//! # }
//! // tests/doubler.rs (in a `#[tokio::test]`)
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let w = looppool::testing::TestWorker::<Doubler>::start(()).await?;
//! let outputs: Vec<u64> = w.run(21).await?;
//! assert_eq!(outputs, [42]);
//! w.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! To test the pool around it (several processes, restarts, timeouts), start
//! a real pool. Under `cargo test` the current executable is the test
//! harness, so point the pool at a binary of your package that runs your
//! workers:
//!
//! ```toml
//! # Cargo.toml
//! [[bin]]
//! name = "my-workers"
//! ```
//!
//! ```no_run
//! # use std::rc::Rc;
//! # use looppool::{BoxError, InitContext, TaskContext, Worker};
//! # struct Doubler;
//! # impl Worker for Doubler {
//! #     const NAME: &'static str = "doubler";
//! #     type Init = (); type Task = u64; type Output = u64;
//! #     async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
//! #     async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
//! #         cx.emit(2 * x).await?; Ok(())
//! #     }
//! # }
//! // src/bin/my-workers.rs
//! fn main() {
//!     looppool::worker_main!(Doubler);
//! }
//! ```
//!
//! ```text
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
//! The last block is text only because `CARGO_BIN_EXE_*` exists only in an
//! integration test: this crate's own integration tests (`looppool-tests`,
//! with its `test-worker` binary, e.g. `tests/api_polish.rs`) are built
//! exactly this way and compile it in every run.
//!
//! # Layout
//!
//! The modules form layers, each using only those listed before it:
//!
//! 1. Leaves: `task_id` ([`TaskId`]), `event` (the lifecycle vocabulary:
//!    [`WorkerEvent`], [`ExitStatus`], [`LossCause`], [`RecycleReason`]),
//!    `error`, `output` ([`Output`]), `timing` ([`Histogram`], and the
//!    sampler that picks the tasks to time), `sync` and `sys` (the only
//!    module with `unsafe`: the parent-death signal, the spawner thread,
//!    descriptors, memory files and their mappings).
//! 2. `blob` ([`Blob`], and the per-thread sink and inbox through which
//!    blobs meet the frames that carry them), `codec` (length-delimited
//!    frames, varints, postcard payloads) and `protocol` (the wire
//!    messages, with the report and log bodies).
//! 3. [`transport`]: frames over a byte stream (a socketpair locally), the
//!    blob socket beside it, and the [`Connector`](transport::Connector)
//!    seam every worker comes through.
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
//! 8. [`control`]: the control socket (its directory, the listener, the
//!    JSON-lines requests), reaching the supervisor weakly; `pool` hands
//!    it the one thing it cannot reach below (cancelling a task).
//! 9. `pool`: the [`Pool`] handle and its [`PoolBuilder`].
//! 10. [`testing`]: one worker in a test process, over an in-memory
//!     connection (it uses only the wire and the worker side).
//!
//! # Feature flags
//!
//! None is on by default.
//!
//! - `statsd`: `PoolBuilder::statsd` sends reports to a statsd server, with
//!   the `cadence` crate.
//! - `prometheus`: `Pool::prometheus_collector` gives a `prometheus-client`
//!   collector to register in the application's own registry, and
//!   `PoolBuilder::prometheus` serves the same figures at `/metrics` on a
//!   port of their own.
//! - `sentry`: `metrics::sentry_tags`, a `before_send` hook that tags the
//!   events the `sentry` crate's tracing integration makes of a pool's
//!   failed tasks and worker log lines with pool, worker, pid and task.
//!
//! # Platform support
//!
//! Linux. The parent-death signal and `/proc/self/exe` are Linux features.
#![doc(test(attr(deny(warnings), allow(dead_code))))]
// On docs.rs (all features), each item says which feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod blob;
mod codec;
pub mod control;
mod error;
mod event;
mod forensics;
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
pub mod testing;
mod timing;
pub mod transport;
pub mod worker;

/// Entry points for the fuzz targets in `fuzz/`; not public API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[path = "fuzz.rs"]
pub mod __fuzz;

pub use blob::{Blob, BlobMut, DEFAULT_BLOB_THRESHOLD, MIN_BLOB_THRESHOLD};
pub use codec::DEFAULT_MAX_FRAME;
pub use error::{
    BuildError, CallError, EmitError, EmitErrorKind, RestartError, StartError, SubmitError,
    SubmitErrorKind, TaskError, TryNextError, WorkerLost,
};
pub use event::{ExitStatus, HeldTask, LossCause, RecycleReason, WorkerEvent};
pub use metrics::{Histogram, PoolStats, WorkerReport, WorkerStats};
pub use pool::{
    BlockedCancel, Dispatch, Output, Outputs, Pool, PoolBuilder, ShutdownReport, Signals,
    TaskBuilder, TaskId, DEFAULT_CANCEL_GRACE, DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_UNREAD_OUTPUTS_WARNING,
};
pub use supervisor::RestartPolicy;
pub use worker::{BoxError, Emitter, InitContext, TaskContext, Worker};
