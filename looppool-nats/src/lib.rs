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
//! | `lp.P.hb.n`, `lp.P.owner` (core NATS) | heartbeats of worker `n` (with its drop counts and its last stored output) and of the parent | liveness both ways |
//! | `lp.P.join` (core NATS, request-reply) | a worker's hello; the reply gives its index, incarnation and settings | membership |
//!
//! Each life of a worker index is an *incarnation*. When a worker joins,
//! the consumers of earlier incarnations are deleted (a worker declared
//! dead receives nothing more) and their leftovers purged (the pool already
//! reported or re-sent them); messages of other incarnations are dropped.
//!
//! ## Identities, not broker sequences
//!
//! The core names a task on the wire by its *slot*, a number the parent
//! reuses as soon as the task ends; the broker numbers messages by *stream
//! sequence*, which says where it stored a copy, not which task it is. A
//! broker killed and restarted may deliver a message again under its old
//! sequence or a new one, and may bring back messages of earlier
//! incarnations. Neither number can tell a task, so the pool adds its own:
//!
//! - The parent numbers the messages it sends one incarnation (init, tasks,
//!   stop) 1, 2, 3, ... in header `Lp-Task`, beside `Lp-Inc`, the
//!   incarnation; together they name one task message in the whole pool
//!   (and are its `Nats-Msg-Id`, so a publish retried after an outage is
//!   stored once while the broker remembers it).
//! - A worker runs each number once. A copy of a task still running asks
//!   for more time; a copy of one it already took is acknowledged and
//!   dropped; a message of another incarnation, for a slot already busy, or
//!   not of the pool's making is dropped.
//! - Every output message names, in `Lp-Tasks`, the task message of each
//!   slot its frames speak for. The parent applies a frame only to the task
//!   it sent into that slot and has not seen end; anything else (a copy's
//!   second completion, a finished task's output) is dropped.
//! - Output messages carry their own sequence (`Lp-Seq`) within the
//!   incarnation; the parent hands them on in that order, each once, and
//!   holds at most 4,096 messages (64 MiB) that arrive ahead of a missing
//!   one per worker.
//!
//! Whatever is dropped is counted in [`DropCounts`]
//! ([`NatsPoolBuilder::drop_counts`]; workers report theirs with their
//! heartbeats) and logged as a warning at most once a second. A message the
//! pool cannot apply is never a reason to replace a worker or fail the
//! pool.
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
//! | what happens | what the pool does |
//! |---|---|
//! | the broker is killed (`kill -9`) and restarted, any number of times, under load, with file storage (the default) | both sides reconnect by themselves; unacknowledged publishes are sent again; redelivered and resurrected messages are recognised by their identity and dropped; silence while a side is disconnected, and for 5 s after it reconnects (the other side may reconnect up to 4 s later), does not count against liveness; a consumer the restarted broker restored broken is replaced (see below), so held tasks are delivered again within about 6 s of both sides being connected again (with the default 1 s heartbeat). No worker is replaced and no task lost: each task ends once, with its own outputs, each delivered once |
//! | a worker's task consumer stops delivering while the broker holds its task messages (a consumer restored by a broker restarted after a crash: nats-server 2.9 stops one for good when a message due for redelivery is no longer in the stream), or is deleted | the parent finds the oldest task message the worker has not reported taken still in the stream, looks again two of the worker's heartbeats and a second later, and replaces the consumer with a new one of the same name and settings: the worker's pull, ended by the deletion, pulls from it. Within max(3 s, 3 heartbeats) + max(1 s, 2 heartbeats) + 1 s of both sides being connected (6 s with the default heartbeat), and at most every 3 s. The new consumer delivers every message still in the subject; the worker drops (and acknowledges) the ones it took, and runs each task once. No task is lost or run twice, no worker replaced |
//! | a worker's task subject is full of messages its consumer will never deliver (messages the worker took, brought back behind the consumer by a broker that crashed before it wrote their removal; each crash can add some), so the broker refuses the pool's task messages | after 1 s of refusals the consumer is replaced as above, and the worker drops the old messages, which empties the subject; the refused messages, published again meanwhile, are then stored. If the broker refuses a task message for 60 s, the worker's link ends and its tasks are reported lost (or re-sent) with [`LossCause::Transport`](looppool::LossCause::Transport) saying why |
//! | a pull stops being served (lost in a broker restart) | each side notices two missed idle heartbeats of its pull (4 s) while connected and pulls again |
//! | an output message the worker's broker confirmed stored is not delivered (its consumer stopped delivering, or a broker lost acknowledged data; one handed to a pull that died with the broker is handed out again after 2 s, and is not lost) | after 4 s while both sides are connected, the parent replaces the consumer of the worker's outputs (the new one delivers every output message still in the subject; those already handed on are dropped); after 8 s, the message is lost and the worker's link ends: its tasks are reported lost (or re-sent, at least once) with [`LossCause::Transport`](looppool::LossCause::Transport) saying so |
//! | a worker's heartbeats stop for the silence period while the parent is connected | it is replaced; its tasks are reported lost (or re-sent) with [`LossCause::Transport`](looppool::LossCause::Transport) naming the silence |
//! | a pool stream, or the consumer of a worker's outputs, is deleted | the worker's link ends at once (its output consumer is gone): its tasks are reported lost (or re-sent) with [`LossCause::Transport`](looppool::LossCause::Transport) saying the stream or consumer was deleted, and the streams are created again when the replacement joins |
//! | a task message the broker stored is removed before its worker took it (the stream purged, or the message lost by a broker that crashed) | noticed within a few heartbeats (at least 6 s, and two of the worker's heartbeats after the broker was asked): the parent asks the broker for the oldest task message the worker has not reported taken, and publishes it, and the untaken ones after it the broker no longer has, again, with their identity. The worker runs each task once whatever the delivery mode (a copy of a message it took is dropped and counted as a duplicate), so no task is lost or run twice and the worker's link goes on |
//! | a pool stream is purged (its messages removed, the stream kept) | task messages: as above. An output message removed before the parent pulled it is noticed as for one lost (8 s): the worker's link ends and its tasks are reported lost (or re-sent) with [`LossCause::Transport`](looppool::LossCause::Transport) saying the stream was purged or the broker lost the message |
//! | a malformed or stale message on a pool subject | dropped, counted, logged (rate-limited) |
//! | the broker cannot be reached at start | [`StartError::Broker`](looppool::StartError::Broker), with the URL without credentials |
//!
//! **Limits.** With
//! [`memory_storage`](NatsPoolBuilder::memory_storage), a broker restart
//! loses the streams: as for deleted streams, the tasks in them are
//! reported lost. A broker's power loss can lose what it had not written
//! to disk (JetStream syncs every two minutes by default); the pool then
//! publishes lost task messages again, and reports the tasks whose output
//! messages were lost as for a purge. Anyone who
//! can publish on the pool's subjects can forge messages that carry a live
//! identity: give the broker's users the permissions below.
//!
//! # Security
//!
//! ## Threat model
//!
//! The pool trusts the broker and whoever holds one of its two roles'
//! credentials; it does not authenticate messages itself. What each may
//! do is what the broker lets its user do:
//!
//! | who | may | may not |
//! |---|---|---|
//! | the **parent** role | create, purge and restore the pool's two streams and their consumers; publish tasks, init and control messages (credits, pings, kills) and its heartbeat; pull and acknowledge outputs; answer joins | anything of another pool |
//! | the **worker** role (every worker of the pool, local or remote) | ask to join; pull and acknowledge any of the pool's task messages, so read the init payload and tasks; publish outputs and heartbeats under any worker index | publish tasks or control messages, read outputs or the parent's replies, purge or delete a stream, create a consumer |
//! | any **other user** of the broker, given its own permissions (another pool's roles) | nothing of this pool | subscribe to or read any of its subjects, streams or replies; publish on them (forged tasks, outputs, kills, heartbeats are dropped by the server); join; create a consumer; purge or delete its streams |
//! | a broker user **without permissions** (a user with no `permissions` block, or a broker without authentication) | everything above, as either role | — |
//!
//! So a worker's credentials are as powerful as a worker: one stolen lets
//! its holder read the pool's tasks and forge results for them. Messages
//! that are malformed, stale or of the wrong incarnation are dropped and
//! counted ([`DropCounts`]), but a well-formed forgery by a holder of the
//! worker role cannot be told from a worker's output. With TLS, nothing
//! travels in clear between the processes and the broker; without it, the
//! network sees the tasks, outputs and any password.
//!
//! ## A secure setup
//!
//! A user per role, with the subjects [`auth::Permissions::for_role`]
//! gives (and no others), TLS, and the credentials given to each process
//! through [`Credentials`]. A `nats-server` configuration for pool `jobs`
//! with users and passwords (print the permission blocks with
//! [`auth::Permissions::to_server_config`]):
//!
//! ```text
//! jetstream { store_dir: "/var/lib/nats" }
//! tls { cert_file: "server.pem", key_file: "server-key.pem" }
//! authorization {
//!   users = [
//!     { user: jobs-parent, password: "$JOBS_PARENT_PASSWORD",
//!       permissions: <Permissions::for_role("jobs", Role::Parent)> }
//!     { user: jobs-worker, password: "$JOBS_WORKER_PASSWORD",
//!       permissions: <Permissions::for_role("jobs", Role::Worker)> }
//!   ]
//! }
//! ```
//!
//! (`{ nkey: "U..." , permissions: ... }` for NKey users; with
//! `verify_and_map: true` in the `tls` block and `ca_file`, users named by
//! their client certificate's subject, `user: "CN=jobs-parent"`; with an
//! operator and accounts (the pool's account with JetStream), the same
//! permissions in the users' JWTs, `pub.allow` and `sub.allow` being
//! [`publish`](auth::Permissions::publish) and
//! [`subscribe`](auth::Permissions::subscribe), and the parent's with
//! `resp: { max: 1 }`, used through credentials files.) The parent:
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
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use looppool_nats::{Credentials, NatsPoolBuilder};
//!
//! let password = |var: &str| std::env::var(var).unwrap_or_default();
//! let (pool, _outputs) = NatsPoolBuilder::<Doubler>::new("tls://broker.internal:4222", "jobs")
//!     .credentials(
//!         Credentials::user_password("jobs-parent", password("JOBS_PARENT_PASSWORD"))
//!             .root_certificates("/etc/looppool/ca.pem"),
//!     )
//!     .worker_credentials(
//!         Credentials::user_password("jobs-worker", password("JOBS_WORKER_PASSWORD"))
//!             .root_certificates("/etc/looppool/ca.pem"),
//!     )
//!     .local_workers(2)
//!     .remote_workers(2)
//!     .start()
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Remote workers: `LOOPPOOL_NATS_URL=tls://broker.internal:4222
//! LOOPPOOL_NATS_POOL=jobs LOOPPOOL_NATS_USER=jobs-worker
//! LOOPPOOL_NATS_PASSWORD=... LOOPPOOL_NATS_CA=/etc/looppool/ca.pem
//! ./program` (see [`Credentials::from_env`] for the other ways:
//! `LOOPPOOL_NATS_AUTH_TOKEN`, `LOOPPOOL_NATS_NKEY`, `LOOPPOOL_NATS_CREDS`,
//! `LOOPPOOL_NATS_CERT` and `LOOPPOOL_NATS_KEY`). Credentials in the URL
//! (`nats://user:password@host`, `nats://token@host`) work too. The pool
//! never puts a secret in an error, a log line or a `Debug` output, and
//! passes local workers theirs through the environment, not the command
//! line. A single token (`authorization { token: ... }`) authenticates but
//! cannot tell the roles apart: every holder may do everything.
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

pub mod auth;
mod broker;
mod connector;
mod counters;
mod names;
mod pool;
mod relay;
mod remote;
pub mod server;
mod settings;
mod sync;

pub use auth::{Credentials, Role};
pub use auth::{CA_ENV, CERT_ENV, CREDS_ENV, KEY_ENV};
pub use counters::DropCounts;
pub use pool::{Delivery, NatsPoolBuilder};
pub use remote::{
    run_if_remote, RemoteWorker, INDEX_ENV, JOIN_TIMEOUT_ENV, POOL_ENV, URL_ENV, WORKER_ENV,
};

/// The client library, for its connection options.
pub use async_nats;
