//! Run [`looppool`] workers on many machines through a NATS
//! JetStream broker.
//!
//! The same [`Worker`](looppool::Worker) implementation that runs as a local
//! child process runs here as a process anywhere that reaches the broker.
//! The parent gets an ordinary [`looppool::Pool`]: `submit`, `try_submit`,
//! `submit_to`, `broadcast`, `call`, the output stream, lifecycle events,
//! statistics, `resize` and shutdown are the core's own, and this crate is a
//! [`Connector`](looppool::transport::Connector) beneath them.
//!
//! ```no_run
//! # use std::rc::Rc;
//! # use looppool::{BoxError, InitContext, TaskContext, Worker};
//! # struct Doubler;
//! # impl Worker for Doubler {
//! #     const NAME: &'static str = "doubler";
//! #     type Init = ();
//! #     type Task = u64;
//! #     type Output = u64;
//! #     async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
//! #     async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
//! #         cx.emit(2 * x).await?;
//! #         Ok(())
//! #     }
//! # }
//! fn main() {
//!     // Started with LOOPPOOL_NATS_URL and LOOPPOOL_NATS_POOL set (by the
//!     // pool, or by hand on another host), this process is a worker.
//!     looppool_nats::run_if_remote::<Doubler>();
//!     tokio::runtime::Builder::new_current_thread()
//!         .enable_all()
//!         .build()
//!         .unwrap()
//!         .block_on(async {
//!             let (pool, _outputs) =
//!                 looppool_nats::NatsPoolBuilder::<Doubler>::new("nats://127.0.0.1:4222", "jobs")
//!                     .local_workers(2)
//!                     .start()
//!                     .await
//!                     .unwrap();
//!             assert_eq!(pool.call(21).await.unwrap(), 42);
//!             pool.shutdown().await;
//!         });
//! }
//! ```
//!
//! On another host, the same program joins pool `jobs` as its next remote
//! worker with `LOOPPOOL_NATS_URL=nats://broker:4222 LOOPPOOL_NATS_POOL=jobs
//! ./program` (and `LOOPPOOL_NATS_INDEX=n` to take a particular place); see
//! [`RemoteWorker`] for the other settings.
//!
//! # How the pool maps onto the broker
//!
//! For a pool `P` (its name, which keeps pools on one broker apart):
//!
//! | object | what it is | role |
//! |---|---|---|
//! | stream `LP_P_TASK` | subjects `lp.P.task.*`, work-queue retention, discard new per subject, at most `max_tasks / workers + 8` messages per subject, 2-minute duplicate window | every worker's queue |
//! | subject `lp.P.task.n` | worker `n`'s init, then its tasks (round-robin, targeted or broadcast copies, chosen by the parent as in local mode), then its stop message behind them | one message per task, FIFO |
//! | consumer `wN-<incarnation>` | durable pull consumer of `lp.P.task.n`, explicit acks, `max_ack_pending` = the per-worker task bound | the broker's bound on what a worker holds |
//! | stream `LP_P_OUT`, subject `lp.P.out.n` | the worker's outputs, completions, reports and logs, numbered, the last one carrying its exit code | the parent pulls them (consumer `oN-<incarnation>`) and hands them on in order, each once |
//! | `lp.P.ctl.n` (core NATS) | output credits (a running total, so a lost message is repaired by the next) and pings | the pool's bound on pending outputs reaches the worker |
//! | `lp.P.hb.n`, `lp.P.owner` (core NATS) | heartbeats of worker `n` and of the parent | liveness both ways |
//! | `lp.P.join` (core NATS, request-reply) | a worker's hello; the reply gives its index, incarnation and settings | membership |
//!
//! Each life of a worker index is an *incarnation*. When a worker joins,
//! the consumers of earlier incarnations are deleted (a worker declared
//! dead receives nothing more) and their leftovers purged (the pool already
//! reported or re-sent them); messages of other incarnations are ignored.
//!
//! # Failure semantics
//!
//! Chosen per pool with [`Delivery`]:
//!
//! - **At least once** (default): a worker acknowledges a task message only
//!   once the output message completing it is stored. When a worker is lost
//!   (its process exits, its heartbeats stop for the silence period, or it
//!   breaks the protocol), the tasks it held or had queued are re-sent to
//!   live workers with new message ids, up to `max_deliveries` times, and
//!   then reported lost. Tasks may run twice: make them idempotent.
//! - **At most once**: a worker acknowledges a task on receipt; the tasks of
//!   a lost worker are reported lost with the worker's index, as in local
//!   mode.
//!
//! Either way every task ends exactly once for the caller: with its output,
//! its error, or `Output::Lost` / `CallError::WorkerLost`.
//!
//! A broker restart is survived: streams and consumers live in the broker's
//! file store; both sides reconnect by themselves; publishes that were not
//! acknowledged are sent again with the same message id (the broker stores
//! them once); redeliveries are de-duplicated on both sides; and silence
//! while a side is disconnected does not count against liveness.
//!
//! **Known limit.** A broker that is killed and restarted *under load* may
//! redeliver task messages it had already delivered. Workers recognise a
//! repeat only by its stream sequence, so such a task can run twice, and
//! its second completion can reach whichever task then holds its slot; a
//! worker that reports on a slot the parent no longer holds is replaced as a
//! protocol breach, its tasks lost. It has been seen with the broker killed
//! (`kill -9`) under load. Until outputs carry their task's full identity,
//! do not rely on broker restarts under load for exactly-once results.
//!
//! # Differences from local mode
//!
//! - A task or output must fit in one broker message: `max_frame` is the
//!   broker's `max_payload` (1 MiB by default) less 1 KiB. Larger ones are
//!   refused at the sender with the usual `TooLarge` errors.
//! - A worker's death is noticed from its heartbeats (default: 3 s of
//!   silence) unless it is a local process, whose exit is seen at once.
//!   Exit statuses of remote workers are what they announce, or `Unknown`.
//! - Workers never outlive the parent: local ones receive the parent-death
//!   signal; remote ones exit when the parent's heartbeats stop.
//! - `pids()` of remote workers are process ids on their own hosts.
//!   `recycle_above_memory` and `memory_limit` are unavailable (they act on
//!   local processes); recycle by task count instead.
//! - Round trips cost broker hops: each task is a persisted message, its
//!   completion another (batched with others under load).
//! - [`Pool::rolling_restart`](looppool::Pool::rolling_restart) and
//!   [`Pool::upgrade`](looppool::Pool::upgrade) are refused (a
//!   `RestartError` caused by `StartError::Config`; `unsupported` on the
//!   control socket). A rolling restart starts each replacement, through
//!   its handshake and `init`, while the worker it replaces still serves,
//!   so both would be worker `n` at once; but worker `n`'s queue
//!   (`lp.P.task.n`), task consumer and output stream belong to one
//!   incarnation at a time, and a joining incarnation deletes the
//!   consumers of the earlier ones (so that a worker declared dead
//!   receives nothing more), which would cut the draining worker off from
//!   the tasks it holds. Two live incarnations of one index would need
//!   subjects per incarnation. And a remote index is started by whoever
//!   runs its program, not by the pool. To move workers to new code,
//!   recycle them one at a time (the control socket's `recycle`, `r` in
//!   `looppool top`, or `recycle_after_tasks`): each drains and is replaced
//!   as after a crash, a local one by a fresh process of the pool's
//!   program, a remote one by the next process that joins as its index.
//!   Unlike a rolling restart, the pool runs one worker short meanwhile,
//!   and a replacement that fails to start goes by the restart policy.
//!
//! # Testing
//!
//! The workspace's broker tests (in `looppool-tests`), its bench program
//! and the `broker_pool` example each start a private `nats-server -js` on
//! a free loopback port with a temporary store, through [`server`]: they
//! need `nats-server` on the `PATH` or in `/usr/sbin` (Debian package
//! `nats-server`), or its path in `NATS_SERVER`.

mod broker;
mod connector;
mod names;
mod pool;
mod relay;
mod remote;
pub mod server;
mod settings;
mod sync;

pub use pool::{Delivery, NatsPoolBuilder};
pub use remote::{
    run_if_remote, RemoteWorker, CA_ENV, CERT_ENV, CREDS_ENV, INDEX_ENV, JOIN_TIMEOUT_ENV, KEY_ENV,
    POOL_ENV, URL_ENV, WORKER_ENV,
};

/// The client library, for its connection options.
pub use async_nats;
