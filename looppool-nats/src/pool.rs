//! Starting a pool whose workers are reached through the broker.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::stream::StorageType;
use looppool::{BuildError, Outputs, Pool, PoolBuilder, StartError, Worker};

use crate::auth::{self, Credentials, Role};
use crate::broker::{public_url, Broker};
use crate::connector::{NatsConnector, Plan};
use crate::counters::DropCounts;
use crate::names::Names;

/// What happens to the tasks of a worker that is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The default. A worker acknowledges a task only once the output that
    /// completes it is stored by the broker. The tasks of a worker that is
    /// lost (it exits, or its heartbeats stop) are sent again to live
    /// workers, up to `max_deliveries` times in all, with new message ids;
    /// after that they are reported lost. A task may therefore run more than
    /// once (it may have completed just before its worker was lost), so
    /// tasks should be idempotent.
    AtLeastOnce {
        /// Deliveries of one task at most, the first included (at least 1).
        max_deliveries: u32,
    },
    /// A worker acknowledges a task as soon as it receives it. The tasks of
    /// a worker that is lost are reported lost (`Output::Lost`,
    /// `CallError::WorkerLost`), as with local processes; none runs twice.
    AtMostOnce,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery::AtLeastOnce { max_deliveries: 5 }
    }
}

type Configure<W> = Box<dyn FnOnce(PoolBuilder<W>) -> PoolBuilder<W> + Send>;

/// Builds a pool whose workers are reached through a NATS JetStream broker.
///
/// There is no pool type of this crate's own: [`start`](Self::start)
/// returns an ordinary [`looppool::Pool`], whose submit, call, broadcast,
/// output stream, events, statistics and shutdown behave as with local
/// processes (see the crate documentation for the differences).
///
/// # Examples
///
/// ```no_run
/// # use std::rc::Rc;
/// # use looppool::{BoxError, InitContext, TaskContext, Worker};
/// # struct Doubler;
/// # impl Worker for Doubler {
/// #     const NAME: &'static str = "doubler";
/// #     type Init = ();
/// #     type Task = u64;
/// #     type Output = u64;
/// #     async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
/// #     async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
/// #         cx.emit(2 * x).await?;
/// #         Ok(())
/// #     }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Two workers started here, two that join from other hosts.
/// let (pool, _outputs) = looppool_nats::NatsPoolBuilder::<Doubler>::new("nats://127.0.0.1:4222", "jobs")
///     .local_workers(2)
///     .remote_workers(2)
///     .configure(|b| b.max_results(4096))
///     .start()
///     .await?;
/// assert_eq!(pool.call(21).await?, 42);
/// pool.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct NatsPoolBuilder<W: Worker> {
    url: String,
    pool: String,
    options: Option<async_nats::ConnectOptions>,
    credentials: Option<Credentials>,
    worker_credentials: Option<Credentials>,
    local: usize,
    remote: usize,
    max_tasks: Option<usize>,
    program: Option<PathBuf>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    delivery: Delivery,
    heartbeat: Duration,
    silence: Duration,
    ack_wait: Duration,
    storage: StorageType,
    init: Option<W::Init>,
    configure: Option<Configure<W>>,
    drops: DropCounts,
}

impl<W: Worker> std::fmt::Debug for NatsPoolBuilder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsPoolBuilder")
            .field("url", &public_url(&self.url))
            .field("pool", &self.pool)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("delivery", &self.delivery)
            .finish_non_exhaustive()
    }
}

impl<W: Worker> NatsPoolBuilder<W> {
    /// A builder for a pool named `pool` on the broker at `url`. The name
    /// keeps pools on one broker apart: remote workers join by it.
    pub fn new(url: impl Into<String>, pool: impl Into<String>) -> Self {
        NatsPoolBuilder {
            url: url.into(),
            pool: pool.into(),
            options: None,
            credentials: None,
            worker_credentials: None,
            local: 0,
            remote: 0,
            max_tasks: None,
            program: None,
            args: Vec::new(),
            env: Vec::new(),
            delivery: Delivery::default(),
            heartbeat: Duration::from_secs(1),
            silence: Duration::from_secs(3),
            ack_wait: Duration::from_secs(30),
            storage: StorageType::File,
            init: None,
            configure: None,
            drops: DropCounts::default(),
        }
    }

    /// The NATS client's options (timeouts, names, TLS configuration) for
    /// the parent. Credentials are better given with
    /// [`credentials`](Self::credentials), which local workers can share.
    /// The pool sets the options' inbox prefix to one of the pool's own
    /// (see [`auth::Permissions`](crate::auth::Permissions)).
    pub fn connect_options(mut self, options: async_nats::ConnectOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// How the parent authenticates to the broker (also given by
    /// credentials in the URL: `nats://user:password@host`,
    /// `nats://token@host`). Local workers use the same unless
    /// [`worker_credentials`](Self::worker_credentials) says otherwise.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// How the local workers authenticate to the broker (default: as the
    /// parent): the credentials of the pool's worker role, when the broker
    /// gives the parent and the workers users of their own. They reach the
    /// worker processes through their environment (see
    /// [`Credentials::from_env`]), never on their command line.
    pub fn worker_credentials(mut self, credentials: Credentials) -> Self {
        self.worker_credentials = Some(credentials);
        self
    }

    /// Workers this pool starts as processes on this machine, which connect
    /// through the broker (indices `0..n`).
    pub fn local_workers(mut self, n: usize) -> Self {
        self.local = n;
        self
    }

    /// Workers that join from anywhere (indices after the local ones): the
    /// pool waits, up to its start timeout, for each to join.
    pub fn remote_workers(mut self, n: usize) -> Self {
        self.remote = n;
        self
    }

    /// Bound on tasks queued or running across the pool, split evenly
    /// between workers (default 2,048 per worker). The broker enforces it
    /// per worker too.
    pub fn max_tasks(mut self, n: usize) -> Self {
        self.max_tasks = Some(n);
        self
    }

    /// The program local workers run (default: this executable). Its main
    /// must call [`crate::run_if_remote`] for the worker type first.
    pub fn program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// Arguments for local workers' program.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// An environment variable for local workers (credentials files, for
    /// example).
    pub fn worker_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// What happens to the tasks of a lost worker (default: at least once,
    /// five deliveries at most).
    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// How often workers and the parent publish heartbeats (default 1 s),
    /// and the silence after which the other side counts as gone (default
    /// 3 s). Silence while a side is disconnected from the broker (a broker
    /// restart) does not count.
    pub fn liveness(mut self, heartbeat: Duration, silence: Duration) -> Self {
        self.heartbeat = heartbeat;
        self.silence = silence;
        self
    }

    /// How long the broker waits for a task's acknowledgement before it
    /// delivers the task again to the same worker (default 30 s). A worker
    /// that receives a task it is still running asks for more time instead
    /// of running it twice.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// Keep the pool's streams in the broker's memory rather than on disk
    /// (faster; lost if the broker restarts).
    pub fn memory_storage(mut self, memory: bool) -> Self {
        self.storage = if memory {
            StorageType::Memory
        } else {
            StorageType::File
        };
        self
    }

    /// The value every worker's [`init`](Worker::init) receives (as
    /// [`PoolBuilder::init`]). Required unless `W::Init` is `()`: the pool
    /// refuses to start with neither this nor
    /// [`init_default`](Self::init_default).
    pub fn init(mut self, value: W::Init) -> Self {
        self.init = Some(value);
        self
    }

    /// Sends every worker `W::Init::default()` (as
    /// [`PoolBuilder::init_default`]).
    pub fn init_default(self) -> Self
    where
        W::Init: Default,
    {
        self.init(W::Init::default())
    }

    /// The counts of broker messages this pool drops rather than applies
    /// (malformed, stale, duplicates, past the out-of-order bound), to read
    /// while the pool runs. Call it before [`start`](Self::start).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::rc::Rc;
    /// # use looppool::{BoxError, InitContext, TaskContext, Worker};
    /// # struct Doubler;
    /// # impl Worker for Doubler {
    /// #     const NAME: &'static str = "doubler";
    /// #     type Init = ();
    /// #     type Task = u64;
    /// #     type Output = u64;
    /// #     async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
    /// #     async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
    /// #         cx.emit(2 * x).await?;
    /// #         Ok(())
    /// #     }
    /// # }
    /// let builder = looppool_nats::NatsPoolBuilder::<Doubler>::new("nats://127.0.0.1:4222", "jobs");
    /// let drops = builder.drop_counts();
    /// // ... builder.start().await, run the pool, then:
    /// assert_eq!(drops.total(), 0);
    /// ```
    pub fn drop_counts(&self) -> DropCounts {
        self.drops.clone()
    }

    /// Any other setting of the underlying [`PoolBuilder`]: `max_results`,
    /// `restart_policy`, `on_event`, `heartbeat`, `task_timeout`,
    /// `report_interval` and so on. (`workers`, `max_tasks`, `max_frame`
    /// and `connector` are set by this builder.)
    pub fn configure(
        mut self,
        f: impl FnOnce(PoolBuilder<W>) -> PoolBuilder<W> + Send + 'static,
    ) -> Self {
        self.configure = Some(Box::new(f));
        self
    }

    /// Connects to the broker, creates the pool's streams, starts the local
    /// workers and waits until every worker (local and remote) has joined
    /// and initialised.
    ///
    /// # Errors
    /// [`StartError::Config`] when a setting is invalid;
    /// [`StartError::Broker`] (with the URL, without credentials, and the
    /// client's error as its source) when the broker cannot be reached or
    /// refuses the pool's streams; the core's other kinds when a worker
    /// fails to start or join in time.
    pub async fn start(self) -> Result<(Pool<W>, Outputs<W::Output>), StartError> {
        let config = |m: String| StartError::Config(BuildError::new(m));
        let names = Names::new(&self.pool).map_err(config)?;
        let workers = self.local + self.remote;
        if workers == 0 {
            return Err(config(
                "a pool needs at least one worker: set local_workers or remote_workers".into(),
            ));
        }
        if self.heartbeat.is_zero() || self.silence < self.heartbeat * 2 {
            return Err(config(format!(
                "liveness({:?}, {:?}) needs a non-zero heartbeat and a silence of at least two heartbeats",
                self.heartbeat, self.silence
            )));
        }
        let max_deliveries = match self.delivery {
            Delivery::AtLeastOnce { max_deliveries: 0 } => {
                return Err(config(
                    "Delivery::AtLeastOnce needs max_deliveries of at least 1".into(),
                ))
            }
            Delivery::AtLeastOnce { max_deliveries } => max_deliveries,
            Delivery::AtMostOnce => 1,
        };
        let max_tasks = self.max_tasks.unwrap_or(2048 * workers);
        let per_worker = max_tasks / workers;
        if per_worker == 0 {
            return Err(config(format!(
                "max_tasks({max_tasks}) gives less than one task per worker to {workers} workers"
            )));
        }
        let url = public_url(&self.url);
        let broker_error = |source: Box<dyn std::error::Error + Send + Sync>| StartError::Broker {
            url: url.clone(),
            source,
        };
        let (plain_url, url_credentials) = auth::split_url(&self.url);
        let credentials = self
            .credentials
            .unwrap_or_default()
            .or_secret(url_credentials);
        let options = credentials
            .apply(self.options.unwrap_or_default())
            .await
            .map_err(|e| broker_error(e.into()))?
            .custom_inbox_prefix(auth::inbox_prefix(&names, Role::Parent));
        let client = options
            .connect(&plain_url)
            .await
            .map_err(|e| broker_error(Box::new(e)))?;
        let max_payload = client.server_info().max_payload.max(4096);
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client.clone());
        let broker = Broker::setup(js, names.clone(), per_worker, self.storage)
            .await
            .map_err(|e| broker_error(e.into()))?;
        let plan = Plan {
            url: plain_url,
            worker_credentials: self.worker_credentials.unwrap_or(credentials),
            local: self.local,
            program: self.program,
            args: self.args,
            env: self.env,
            worker_name: W::NAME,
            heartbeat: self.heartbeat,
            silence: self.silence,
            at_most_once: self.delivery == Delivery::AtMostOnce,
            max_running: per_worker,
            ack_wait: self.ack_wait,
            max_payload,
            drops: self.drops,
        };
        let connector = NatsConnector::start(broker, client, plan)
            .await
            .map_err(|e| broker_error(e.into()))?;
        let mut builder = Pool::<W>::builder()
            .name(names.pool())
            .start_timeout(Duration::from_secs(60))
            .retry_lost(max_deliveries - 1);
        if let Some(init) = self.init {
            builder = builder.init(init);
        }
        if let Some(f) = self.configure {
            builder = f(builder);
        }
        builder
            .workers(workers)
            .max_tasks(max_tasks)
            // A frame travels in one broker message, beside its headers.
            .max_frame(max_payload - 1024)
            .connector(connector)
            .start()
            .await
    }
}
