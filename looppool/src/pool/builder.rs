//! Configuring and starting a pool.

use std::ffi::OsString;
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Pool;
use crate::codec::DEFAULT_MAX_FRAME;
use crate::error::{BuildError, StartError};
use crate::event::WorkerEvent;
use crate::parent::lane::Lane;
use crate::parent::outputs::Outputs;
use crate::parent::space::AnySpace;
use crate::supervisor::{
    encode_init, launch_all, ConnectorRef, EventHook, LaunchSpec, LocalOptions, LocalProcesses,
    RestartPolicy, Supervisor, Tuning, WorkerSource,
};
use crate::worker::{fingerprint, short_type_name, Worker};

mod control;
mod observe;
mod ops;
mod process;
mod validate;

/// How often the default heartbeat pings each worker.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How long a worker's loop may go without answering the default heartbeat
/// before the worker is replaced.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// What workers do with SIGINT and SIGTERM sent to them.
///
/// Each local worker runs in a process group of its own (so that what it
/// starts can be killed with it), so a terminal's Ctrl-C, which goes to the
/// terminal's foreground process group, reaches only the parent either way:
/// the parent decides, draining the pool by message ([`Pool::shutdown`]),
/// or dying of the signal and taking its workers down through their
/// parent-death signal. These settings matter for signals sent to a worker
/// (`kill <pid>`, or to its process group), and are inherited by the
/// programs a worker executes.
///
/// [`Pool::shutdown`]: crate::Pool::shutdown
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Signals {
    /// Ignore them (the default): only the parent, not each worker, decides
    /// to stop the pool, by message.
    #[default]
    Ignore,
    /// Keep the signals' default actions: they terminate a worker at once
    /// (the pool reports its tasks lost and replaces it, as for a crash).
    Terminate,
}

/// Configures a [`Pool`]; start it with [`start`](Self::start).
///
/// ```no_run
/// # use std::rc::Rc;
/// # use looppool::{BoxError, InitContext, TaskContext, Worker, Pool};
/// # struct Doubler;
/// # impl Worker for Doubler {
/// #     const NAME: &'static str = "doubler";
/// #     type Init = (); type Task = u64; type Output = u64;
/// #     async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
/// #     async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
/// #         cx.emit(2 * x).await?; Ok(())
/// #     }
/// # }
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let (pool, mut outputs) = Pool::<Doubler>::builder()
///     .workers(4)
///     .max_tasks(4096)
///     .max_results(4096)
///     .name("doublers")
///     .start()
///     .await?;
/// pool.submit(1).await?;
/// assert_eq!(outputs.next().await.and_then(|o| o.into_value()), Some(2));
/// # Ok(()) }
/// ```
pub struct PoolBuilder<W: Worker> {
    workers: Option<usize>,
    max_workers: Option<usize>,
    max_tasks: Option<usize>,
    max_results: Option<usize>,
    max_result_bytes: Option<usize>,
    name: String,
    /// `None` until [`init`](Self::init) or [`init_default`](Self::init_default).
    init: Option<W::Init>,
    program: Option<PathBuf>,
    args: Vec<OsString>,
    max_frame: usize,
    blob_threshold: usize,
    frame_timeout: Duration,
    start_timeout: Duration,
    signals: Signals,
    titles: bool,
    restart: RestartPolicy,
    on_event: Option<EventHook>,
    retries: u32,
    tuning: Tuning,
    recycle_rss: Option<u64>,
    memory_limit: Option<u64>,
    worker_cpus: Option<Vec<usize>>,
    task_timeout: Option<Duration>,
    connector: Option<ConnectorRef>,
    /// Dispatch policy and cancellation: set by the methods in `control`.
    control: crate::pool::Control,
    /// Reports, statsd, Prometheus, blocked-loop watch, worker logs: set by
    /// the methods in `crate::metrics`.
    pub(crate) observe: crate::metrics::Config,
    /// Where the control socket goes: set in `ops`.
    control_socket: crate::control::Setting,
    _worker: PhantomData<fn() -> W>,
}

impl<W: Worker> fmt::Debug for PoolBuilder<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("workers", &self.workers)
            .field("max_tasks", &self.max_tasks)
            .field("max_results", &self.max_results)
            .field("max_result_bytes", &self.max_result_bytes)
            .field("name", &self.name)
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

/// Default per-worker bound on queued plus running tasks, and on outputs not
/// yet taken: large enough that batching works, small enough to bound memory.
const DEFAULT_PER_WORKER: usize = 2048;

/// The smallest `memory_limit`: room for a worker's runtime and buffers.
const MIN_MEMORY_LIMIT: u64 = 32 << 20;
/// The largest `memory_limit`: a process's address space (256 TiB).
const MAX_MEMORY_LIMIT: u64 = 1 << 48;
/// Default [`PoolBuilder::frame_timeout`].
const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on the bytes of outputs not yet taken, for the whole pool.
const DEFAULT_MAX_RESULT_BYTES: usize = 256 << 20;

/// How long a worker waits on unread outputs before the pool warns, unless
/// [`PoolBuilder::unread_outputs_warning`] says otherwise.
pub const DEFAULT_UNREAD_OUTPUTS_WARNING: Duration = Duration::from_secs(5);

impl<W: Worker> PoolBuilder<W> {
    pub(crate) fn new() -> Self {
        PoolBuilder {
            workers: None,
            max_workers: None,
            max_tasks: None,
            max_results: None,
            max_result_bytes: None,
            name: "pool".into(),
            init: None,
            program: None,
            args: Vec::new(),
            connector: None,
            max_frame: DEFAULT_MAX_FRAME,
            blob_threshold: crate::blob::DEFAULT_BLOB_THRESHOLD,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            start_timeout: Duration::from_secs(30),
            signals: Signals::Ignore,
            titles: true,
            restart: RestartPolicy::default(),
            on_event: None,
            retries: 0,
            tuning: Tuning {
                heartbeat: Some((DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT)),
                ..Tuning::default()
            },
            recycle_rss: None,
            memory_limit: None,
            worker_cpus: None,
            task_timeout: None,
            control: Default::default(),
            observe: Default::default(),
            control_socket: Default::default(),
            _worker: PhantomData,
        }
    }

    /// Number of worker processes (default: the available CPUs).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// The most workers [`Pool::resize`] may grow the pool to (default: 4
    /// times the starting count, at least 16).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.max_workers = Some(n);
        self
    }

    /// Bound on tasks queued or running in the whole pool, split evenly: each
    /// worker holds at most `max_tasks / workers` (default 2048 per worker).
    pub fn max_tasks(mut self, n: usize) -> Self {
        self.max_tasks = Some(n);
        self
    }

    /// Bound on outputs emitted by workers and not yet taken from the
    /// [`Outputs`] stream, split evenly between workers (default 2048 per
    /// worker). Workers wait in `emit` beyond it, and to report failures,
    /// which count as outputs; see also
    /// [`max_result_bytes`](Self::max_result_bytes).
    ///
    /// For throughput, make it about twice `max_tasks`: a task's slot is
    /// freed when its output reaches the parent, before the consumer takes
    /// it, so with equal bounds a consumer one batch behind leaves a worker
    /// with new tasks and no output credits, and each such task waits.
    pub fn max_results(mut self, n: usize) -> Self {
        self.max_results = Some(n);
        self
    }

    /// Bound on the bytes of outputs (and failures) not yet taken from the
    /// [`Outputs`] stream, counted as encoded on the wire, split evenly
    /// between workers (default 256 MiB for the pool). Workers wait in
    /// `emit` beyond it, as beyond [`max_results`](Self::max_results).
    ///
    /// The two bounds are one window of output credits per worker: an item
    /// costs one credit, or one per `max_result_bytes / max_results` bytes
    /// of its encoding when larger, so whichever bound is reached first
    /// holds the worker. An item costs at most half a worker's window
    /// (otherwise a worker could wait for credits the parent holds back
    /// for the next task frame), so an item larger than half a worker's
    /// share of the bytes waits for half its window only: the worst case
    /// per worker is its share of `max_result_bytes`, or two such items,
    /// whichever is more. With the defaults a pool's parent holds at most
    /// 256 MiB of unread outputs, or two outputs per worker when outputs
    /// are larger than half a worker's share. See
    /// [the bounds](crate#every-queue-is-bounded-by-credits).
    pub fn max_result_bytes(mut self, bytes: usize) -> Self {
        self.max_result_bytes = Some(bytes);
        self
    }

    /// Warns (once per episode, naming the worker and how long it waited)
    /// when a worker has waited for output credits for `threshold`
    /// because the [`Outputs`] stream is alive but not read: its window is
    /// spent, and comes back only as the consumer takes items. Default:
    /// 5 s ([`DEFAULT_UNREAD_OUTPUTS_WARNING`]); `Duration::ZERO` turns
    /// the warning off.
    pub fn unread_outputs_warning(mut self, threshold: Duration) -> Self {
        self.tuning.unread_outputs = Some(threshold);
        self
    }

    /// The pool's name, shown in worker process titles and logs.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The value every worker's [`init`](Worker::init) receives.
    ///
    /// Required unless `W::Init` is `()`: [`start`](Self::start) refuses a
    /// builder with neither this nor [`init_default`](Self::init_default),
    /// so a forgotten configuration is not silently replaced by a default.
    pub fn init(mut self, value: W::Init) -> Self {
        self.init = Some(value);
        self
    }

    /// Sends every worker `W::Init::default()`: the explicit opt-in for a
    /// pool whose workers need no configuration beyond the default.
    pub fn init_default(self) -> Self
    where
        W::Init: Default,
    {
        self.init(W::Init::default())
    }

    /// Runs workers from this program instead of re-executing the current
    /// one. The program must call [`worker_main!`](crate::worker_main) with
    /// `W` first in its `main`.
    pub fn program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// Arguments for the worker program (default: none; the parent's own
    /// arguments are not passed on).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Reaches workers through `connector` instead of starting child
    /// processes over socketpairs: a broker transport, for example.
    ///
    /// The program, its arguments, the signal disposition and process titles
    /// are then the connector's business, and `recycle_above_memory` and
    /// `memory_limit` are refused (they act on local processes). Everything else (the
    /// handshake, bounds, supervision, retries, events, statistics, shutdown)
    /// works as with local processes. See [`Connector`](crate::transport::Connector)
    /// for an example.
    pub fn connector(mut self, connector: impl crate::transport::Connector) -> Self {
        self.connector = Some(ConnectorRef(Arc::new(connector)));
        self
    }

    /// Largest frame either side may send, in bytes (default 64 MiB). A task
    /// or output that encodes larger is refused at its sender.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// The size from which a [`Blob`](crate::Blob) crosses to a local
    /// worker (or back) as a memory file passed by descriptor, rather than
    /// through the socket (default
    /// [`DEFAULT_BLOB_THRESHOLD`](crate::DEFAULT_BLOB_THRESHOLD), at least
    /// [`MIN_BLOB_THRESHOLD`](crate::MIN_BLOB_THRESHOLD); smaller values
    /// are raised to it). `usize::MAX` sends every blob inline. Workers
    /// reached through a [`connector`](Self::connector) always get blobs
    /// inline.
    pub fn blob_threshold(mut self, bytes: usize) -> Self {
        self.blob_threshold = bytes.max(crate::blob::MIN_BLOB_THRESHOLD);
        self
    }

    /// How long a frame from a worker, once begun, may go without a byte
    /// arriving (default 10 s). Past it, the worker is taken for one that
    /// broke the protocol (garbage whose first bytes read as a plausible
    /// length would otherwise be waited for forever): it is killed and
    /// replaced, its tasks lost with
    /// [`LossCause::Protocol`](crate::LossCause::Protocol).
    ///
    /// The rule is about progress, not total time: a large frame that keeps
    /// arriving, however slowly, is never cut. Only a frame cut off mid-way
    /// is: by garbage, or by a worker whose loop stays blocked (a handler
    /// that computes without awaiting) while its writer has written part of
    /// a frame the socket could not take whole. Raise it above the longest
    /// such block; `Duration::MAX` waits forever.
    pub fn frame_timeout(mut self, timeout: Duration) -> Self {
        self.frame_timeout = timeout;
        self
    }

    /// How long a worker may take from exec to the end of its initialiser
    /// (default 30 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// What workers do with SIGINT and SIGTERM (default: ignore them).
    pub fn signals(mut self, signals: Signals) -> Self {
        self.signals = signals;
        self
    }

    /// Whether to set each worker's process title to
    /// `<program>: <pool name> worker <index>` (default: yes).
    pub fn process_titles(mut self, enabled: bool) -> Self {
        self.titles = enabled;
        self
    }

    /// How dead workers are replaced (default: [`RestartPolicy::default`]).
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Calls `hook` with every lifecycle event. It runs on the pool's
    /// supervisor tasks, so it should be quick.
    pub fn on_event(mut self, hook: impl Fn(&WorkerEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(hook));
        self
    }

    /// Re-sends a task lost with its worker to a live worker, up to
    /// `attempts` times, before reporting it lost (default: 0, never).
    ///
    /// Only for idempotent tasks: a lost task may have run partly, or
    /// entirely, before its worker died. Each task's encoded bytes are kept
    /// until it completes, which costs a copy per task. Each output names
    /// the [attempt](crate::TaskId::attempt) that made it; `attempts` above
    /// [`TaskId::MAX_ATTEMPT`](crate::TaskId::MAX_ATTEMPT) is refused when
    /// the pool starts.
    pub fn retry_lost(mut self, attempts: u32) -> Self {
        self.retries = attempts;
        self
    }

    /// Replaces each worker after it has completed about `tasks` tasks
    /// (±10 % per worker, so workers do not recycle together). The worker
    /// drains first: it finishes what it holds, and tasks sent meanwhile
    /// wait for its replacement, so recycling loses nothing.
    pub fn recycle_after_tasks(mut self, tasks: u64) -> Self {
        self.tuning.recycle_tasks = Some(tasks);
        self
    }

    /// Replaces each worker, after draining it, once its resident memory
    /// passes about `bytes` (±10 % per worker), sampled every 100 ms.
    ///
    /// This waits for the worker's tasks to finish, so it cannot stop a
    /// task that allocates without end; [`memory_limit`](Self::memory_limit)
    /// does.
    pub fn recycle_above_memory(mut self, bytes: u64) -> Self {
        self.recycle_rss = Some(bytes);
        self
    }

    /// Fails a task whose handler runs longer than `timeout`: the handler is
    /// dropped at its next await and the task reported failed. A handler
    /// that blocks its loop without awaiting cannot be stopped this way; see
    /// [`heartbeat`](Self::heartbeat).
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// Pings every worker each `interval`, and kills (then replaces) a
    /// worker whose loop has not answered for `timeout`: its tasks are
    /// reported lost with [`LossCause::Unresponsive`](crate::LossCause::Unresponsive).
    ///
    /// On by default, every [`DEFAULT_HEARTBEAT_INTERVAL`] with a timeout of
    /// [`DEFAULT_HEARTBEAT_TIMEOUT`]: a stopped or wedged worker (a
    /// `SIGSTOP`, a deadlock, a handler that never yields) is replaced
    /// rather than holding its tasks for ever. A worker whose handlers
    /// legitimately block its loop for longer needs a longer timeout, or
    /// [`no_heartbeat`](Self::no_heartbeat).
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.tuning.heartbeat = Some((interval, timeout));
        self
    }

    /// Turns the heartbeat off: a worker is replaced only when its process
    /// or its connection ends.
    pub fn no_heartbeat(mut self) -> Self {
        self.tuning.heartbeat = None;
        self
    }

    /// Starts every worker and waits until each has completed its handshake
    /// and initialiser. Returns the pool and its output stream.
    ///
    /// Must be called within a tokio runtime (any flavour).
    ///
    /// # Errors
    /// A [`StartError`] when the settings are invalid, or any worker fails to
    /// start; the workers already started are then killed. Neither
    /// [`init`](Self::init) nor [`init_default`](Self::init_default) having
    /// been called, when `W::Init` is not `()`, is an invalid setting
    /// ([`StartError::Config`]). [`StartError::NotAWorker`], before anything
    /// is started, in a process
    /// that a pool started as a worker but that never became one (its
    /// `main` lacks [`worker_main!`](crate::worker_main) as the first line):
    /// a pool started there would start this program again, and so on.
    pub async fn start(self) -> Result<(Pool<W>, Outputs<W::Output>), StartError> {
        if let Some(requested) = crate::worker::entry::unclaimed_worker_marker() {
            return Err(StartError::NotAWorker {
                worker_type: (requested == W::NAME).then(short_type_name::<W>),
                requested,
            });
        }
        let (workers, max_workers, task_slots, output_credits, credit_bytes) = self.validate()?;
        let init_payload = match &self.init {
            Some(value) => encode_init(value),
            // `()` needs no configuration: its encoding is the value's.
            None if std::any::TypeId::of::<W::Init>() == std::any::TypeId::of::<()>() => {
                encode_init(&())
            }
            None => {
                return Err(BuildError::new(format!(
                    "`.init(value)` was not called and the init type of worker {:?} ({}) is \
                     not `()`: pass the workers' init value with `.init(value)`, or call \
                     `.init_default()` to send its default",
                    W::NAME,
                    std::any::type_name::<W::Init>(),
                ))
                .into())
            }
        }
        .map_err(|e| BuildError::new(format!("cannot serialize the init value: {e}")))?;
        let (observe, hub) = self.observe.prepare(&self.name).await?;
        let socket = crate::control::bind(&self.control_socket, &self.name)?;
        let source = match self.connector {
            Some(connector) => WorkerSource::Connector(connector),
            None => WorkerSource::Local(Arc::new(LocalProcesses::new(LocalOptions {
                program: self.program,
                args: self.args,
                worker_name: W::NAME,
                worker_type: short_type_name::<W>(),
                pool_name: self.name.clone(),
                inherit_signals: self.signals == Signals::Terminate,
                titles: self.titles,
                statsd: observe.statsd.clone(),
                memory_limit: self.memory_limit,
                worker_cpus: self.worker_cpus,
            }))),
        };
        let spec = LaunchSpec {
            worker_name: W::NAME,
            worker_type: short_type_name::<W>(),
            fingerprint: fingerprint::<W>(),
            pool_name: self.name,
            init_payload,
            output_credits,
            credit_bytes,
            max_frame: self.max_frame,
            blob_threshold: self.blob_threshold,
            frame_timeout: self.frame_timeout,
            start_timeout: self.start_timeout,
            task_timeout: self.task_timeout,
            cancel_grace: self.control.grace,
            observe,
            source,
        };
        let space = Arc::new(AnySpace::default());
        let lanes: Arc<[Arc<Lane<W::Output>>]> = (0..max_workers)
            .map(|i| {
                let lane = Lane::new(i, task_slots, self.max_frame, self.retries)
                    .timed(self.observe.task_timings);
                Arc::new(lane.sharing_space(space.clone()))
            })
            .collect();
        hub.attach(&lanes);

        let launched = launch_all(&spec, 0..workers).await?;
        let sup = Arc::new(Supervisor::new(
            lanes.clone(),
            spec,
            self.restart,
            self.tuning,
            self.on_event,
        ));
        let (tx, rx) = mpsc::unbounded_channel();
        sup.serve_launched(0, launched, &tx);
        // Each driver holds a sender, so the stream ends when the last one ends.
        drop(tx);
        if let Some(limit) = self.recycle_rss {
            sup.spawn_memory_watch(limit);
        }
        let unread = sup
            .tuning
            .unread_outputs
            .unwrap_or(DEFAULT_UNREAD_OUTPUTS_WARNING);
        if !unread.is_zero() {
            sup.spawn_unread_watch(unread);
        }
        let weak = Arc::downgrade(&sup);
        hub.spawn_tasks(move || weak.upgrade().map(|sup| super::snapshot(&sup)));
        let socket = socket.map(|bound| bound.serve(&sup, canceller(&sup, self.control)));
        let outputs = Outputs::new(rx, lanes.clone(), workers);
        let pool = Pool::from_parts(lanes, sup, hub, space, self.control, socket);
        Ok((pool, outputs))
    }
}

/// The control socket's `cancel`: [`Pool::cancel`] on the pool of `sup`,
/// holding it weakly so that the socket does not keep it alive.
fn canceller<O: serde::de::DeserializeOwned + Send + 'static>(
    sup: &Arc<Supervisor<O>>,
    ctl: super::Control,
) -> crate::control::Cancel {
    let weak = Arc::downgrade(sup);
    Box::new(move |id| {
        weak.upgrade().is_some_and(|sup| {
            super::control::cancel_in(&sup, &ctl, id, crate::parent::lane::CancelReason::Asked)
        })
    })
}
