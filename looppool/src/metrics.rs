//! Observability: what a pool and its workers report, and where it goes.
//!
//! # Stats
//!
//! [`Pool::stats`](crate::Pool::stats) returns a [`PoolStats`] snapshot: per
//! worker and for the whole pool, the tasks in flight (queued plus running),
//! done, failed and lost, the restarts, the blocked-loop episodes, the log
//! events dropped, and each worker's last [`WorkerReport`].
//!
//! # Resource reports
//!
//! With [`PoolBuilder::report_interval`] (or when statsd or Prometheus is
//! configured, every 10 s) each worker measures, once per interval, its CPU
//! use as a fraction of one core (`getrusage` user + system time over wall
//! time), its resident and peak resident memory (`VmRSS` and `VmHWM`), its
//! loop's backlog from tokio's stable runtime metrics, and its task and
//! output counts. The report travels to the parent over the pool's own
//! connection; the parent keeps the last one per worker.
//!
//! # statsd
//!
//! With `PoolBuilder::statsd` (cargo feature `statsd`, on by default) the
//! figures are sent to a statsd server as gauges (`name:value|g`). Names keep
//! the original package's (`cpu`, `rss`, `maxrss`), put under a scope:
//!
//! | gauge | figure |
//! |---|---|
//! | `<prefix>.worker.<i>.cpu` | CPU over the interval, fraction of one core (may pass 1 with extra threads) |
//! | `<prefix>.worker.<i>.rss` | resident memory, bytes |
//! | `<prefix>.worker.<i>.maxrss` | peak resident memory, bytes |
//! | `<prefix>.worker.<i>.loop.alive_tasks` | tasks alive on the worker's runtime (tokio `num_alive_tasks`) |
//! | `<prefix>.worker.<i>.loop.global_queue` | tasks in the runtime's injection queue (tokio `global_queue_depth`) |
//! | `<prefix>.worker.<i>.loop.busy` | fraction of the interval the loop was busy (tokio `worker_total_busy_duration`) |
//! | `<prefix>.worker.<i>.loop.parks` | times the loop went idle during the interval (tokio `worker_park_count`) |
//! | `<prefix>.worker.<i>.tasks.running` | handlers in progress |
//! | `<prefix>.worker.<i>.tasks.done` | tasks the process completed (or failed) so far |
//! | `<prefix>.worker.<i>.outputs` | outputs the process emitted so far |
//! | `<prefix>.worker.<i>.logs.dropped` | log events the process dropped so far |
//! | `<prefix>.worker.<i>.in_flight` / `failed` / `lost` / `restarts` / `blocked` | the parent's counts for worker index `i` |
//! | `<prefix>.pool.workers` / `in_flight` / `done` / `failed` / `lost` / `restarts` / `blocked` / `logs_dropped` | the whole pool |
//!
//! `<i>` is the worker's index, which a replacement process inherits. The
//! parent sends the `pool.*` gauges and its own counts every report
//! interval; the report gauges are sent as each report is made, by the
//! parent or, with `Statsd::from_workers`, by the worker itself.
//!
//! # Prometheus
//!
//! With `PoolBuilder::prometheus` (cargo feature `prometheus`) the parent
//! serves `GET /metrics` in Prometheus' text format: `looppool_workers`, and
//! for each worker, labelled `pool` and `worker`, `looppool_worker_up`,
//! `looppool_worker_in_flight`, `looppool_worker_cpu`,
//! `looppool_worker_rss_bytes`, `looppool_worker_max_rss_bytes`,
//! `looppool_worker_loop_alive_tasks`, `looppool_worker_loop_global_queue`,
//! `looppool_worker_loop_busy`, `looppool_worker_tasks_running`,
//! `looppool_worker_report_age_seconds` and the counters
//! `looppool_worker_tasks_done_total`, `…_tasks_failed_total`,
//! `…_tasks_lost_total`, `…_restarts_total`, `…_blocked_total` and
//! `…_logs_dropped_total`. [`Pool::prometheus_addr`](crate::Pool::prometheus_addr)
//! tells the bound address (useful with port 0).
//!
//! # Blocked loops
//!
//! A handler that computes without awaiting holds up every other task of
//! its worker. With [`PoolBuilder::blocked_threshold`] (Tornado's
//! `set_blocking_log_threshold`) a watchdog thread in each worker notices
//! when the loop has not turned for longer than the threshold and writes a
//! line to the worker's standard error at once (the loop itself cannot send
//! anything while blocked). When the loop turns again, the worker tells the
//! parent, which logs a warning (target `looppool::metrics`) naming the
//! worker, its pid, how long the loop was blocked and the tasks that were
//! being run meanwhile, and counts the episode in [`WorkerStats::blocked`].
//!
//! # One log
//!
//! Each worker forwards its `tracing` events at or above
//! [`PoolBuilder::worker_log_level`] (default `INFO`), and the panics of its
//! background work, to the parent, which emits them again to its own
//! subscriber: target `looppool::worker`, the original level and message,
//! and the fields `pool`, `worker`, `pid`, `log.target`, `log.file`,
//! `log.line`, `fields` (the event's own fields as text) and `spans` (the
//! spans it happened in). A handler's panic or error reaches the parent as a
//! task failure, which the parent logs with its message and location.
//!
//! A worker buffers at most 1 MiB of log events that its connection has not
//! taken; beyond that it drops events and counts them. The parent warns
//! with the count and adds it to [`WorkerStats::logs_dropped`], so no event
//! is lost silently.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tracing::level_filters::LevelFilter;
use tracing::Level;

use crate::codec;
use crate::error::{BuildError, StartError};
use crate::parent::lane::Lane;
use crate::pool::{PoolBuilder, TaskId};
use crate::supervisor::Supervisor;
use crate::sync::lock;
use crate::worker::Worker;

#[cfg(feature = "prometheus")]
mod prometheus;
#[cfg(feature = "statsd")]
pub(crate) mod statsd;

#[cfg(feature = "statsd")]
pub use statsd::Statsd;

use crate::protocol::report::{self as wire, LogRecord, ReportFrame};

/// The environment variable that tells a worker to send its reports to
/// statsd itself: `<address> <prefix>` (an address has no spaces).
pub(crate) const STATSD_ENV: &str = "LOOPPOOL_STATSD";

/// The report interval when statsd or Prometheus is configured without one.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// A snapshot of a pool's figures, from [`Pool::stats`](crate::Pool::stats).
///
/// The counts are per worker *index*: a replacement process continues the
/// counts of the one it replaced. They are read worker by worker, each
/// consistent in itself; the pool-wide figures are their sums.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PoolStats {
    /// The pool's name.
    pub pool: String,
    /// Each worker's figures, by index.
    pub workers: Vec<WorkerStats>,
    /// Tasks queued or running in the whole pool.
    pub in_flight: usize,
    /// Tasks that completed.
    pub done: u64,
    /// Tasks whose handler returned an error or panicked.
    pub failed: u64,
    /// Tasks lost with their worker (reported as lost, not retried).
    pub lost: u64,
    /// Worker processes replaced (after a crash, or recycled).
    pub restarts: u64,
    /// Episodes of a worker loop blocked past the threshold.
    pub blocked: u64,
    /// Log events workers dropped because their log buffer was full.
    pub logs_dropped: u64,
}

/// One worker's figures, part of [`PoolStats`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The worker's index.
    pub worker: usize,
    /// Its current process id, `None` while it is being replaced.
    pub pid: Option<u32>,
    /// Tasks queued or running on it.
    pub in_flight: usize,
    /// Tasks it completed.
    pub done: u64,
    /// Tasks whose handler returned an error or panicked.
    pub failed: u64,
    /// Tasks lost with its processes.
    pub lost: u64,
    /// Times its process was replaced.
    pub restarts: u64,
    /// Episodes of its loop blocked past the threshold.
    pub blocked: u64,
    /// Log events it dropped because its log buffer was full.
    pub logs_dropped: u64,
    /// Its last resource report, if reports are on and one arrived.
    pub last_report: Option<WorkerReport>,
}

/// A worker's resource report, made every report interval.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// The process that made it.
    pub pid: u32,
    /// When the parent received it.
    pub received: Instant,
    /// The wall time the interval figures (`cpu`, `loop_busy`,
    /// `loop_parks`) cover.
    pub interval: Duration,
    /// CPU time (user + system) used over the interval, as a fraction of one
    /// core: about 0 for an idle worker, about 1 for a busy loop. Threads of
    /// the worker's own (`spawn_blocking`, say) can take it past 1.
    pub cpu: f64,
    /// Resident memory, in bytes (`VmRSS`).
    pub rss_bytes: u64,
    /// Peak resident memory, in bytes (`VmHWM`).
    pub max_rss_bytes: u64,
    /// Tasks alive on the worker's tokio runtime (`num_alive_tasks`); the
    /// worker's handlers run on its `LocalSet` and are counted in
    /// `tasks_running` instead.
    pub loop_alive_tasks: u64,
    /// Tasks waiting in the runtime's injection queue
    /// (`global_queue_depth`): work woken from other threads.
    pub loop_global_queue: u64,
    /// Fraction of the interval the loop was busy rather than waiting for
    /// events (`worker_total_busy_duration`).
    pub loop_busy: f64,
    /// Times the loop went idle during the interval (`worker_park_count`).
    pub loop_parks: u64,
    /// Handlers in progress.
    pub tasks_running: u64,
    /// Tasks this process completed or failed so far.
    pub tasks_done: u64,
    /// Outputs this process emitted so far.
    pub outputs: u64,
    /// Log events this process dropped so far.
    pub logs_dropped: u64,
}

impl WorkerReport {
    fn from_wire(r: &wire::Resources, received: Instant) -> Self {
        WorkerReport {
            pid: r.pid,
            received,
            interval: Duration::from_micros(r.interval_us),
            cpu: r.cpu,
            rss_bytes: r.rss_bytes,
            max_rss_bytes: r.max_rss_bytes,
            loop_alive_tasks: r.loop_alive_tasks,
            loop_global_queue: r.loop_global_queue,
            loop_busy: r.loop_busy,
            loop_parks: r.loop_parks,
            tasks_running: r.tasks_running,
            tasks_done: r.tasks_done,
            outputs: r.outputs,
            logs_dropped: r.logs_dropped,
        }
    }
}

/// The observability settings of a [`PoolBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
    report_interval: Option<Duration>,
    blocked_threshold: Option<Duration>,
    log_level: LevelFilter,
    #[cfg(feature = "statsd")]
    statsd: Option<Statsd>,
    #[cfg(feature = "prometheus")]
    prometheus: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            report_interval: None,
            blocked_threshold: None,
            log_level: LevelFilter::INFO,
            #[cfg(feature = "statsd")]
            statsd: None,
            #[cfg(feature = "prometheus")]
            prometheus: None,
        }
    }
}

/// What every worker of a pool is told about observability (in its init).
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerSettings {
    /// Report every this many ms (0: no reports).
    pub(crate) report_interval_ms: u64,
    /// Watch for a loop blocked this many ms (0: no watchdog).
    pub(crate) blocked_threshold_ms: u64,
    /// Forward log events up to this level (see `wire::filter_to_u8`).
    pub(crate) log_level: u8,
    /// Send reports to this statsd server (address, prefix) from the worker.
    pub(crate) statsd: Option<(String, String)>,
}

impl<W: Worker> PoolBuilder<W> {
    /// Makes every worker report its resource use every `interval`: CPU,
    /// memory, loop backlog and task counts (see [`WorkerReport`]). The
    /// parent keeps the last report of each worker in
    /// [`Pool::stats`](crate::Pool::stats) and passes it on to statsd or
    /// Prometheus when configured.
    ///
    /// Default: off, or every 10 s ([`DEFAULT_REPORT_INTERVAL`]) when statsd
    /// or Prometheus is configured.
    pub fn report_interval(mut self, interval: Duration) -> Self {
        self.observe.report_interval = Some(interval);
        self
    }

    /// Warns when a worker's loop does not turn for longer than `threshold`:
    /// the warning names the worker, how long it was blocked and the tasks
    /// that ran meanwhile. See [blocked loops](crate::metrics#blocked-loops).
    /// Default: off.
    pub fn blocked_threshold(mut self, threshold: Duration) -> Self {
        self.observe.blocked_threshold = Some(threshold);
        self
    }

    /// The most verbose level of `tracing` events that workers forward to
    /// the parent's subscriber (default: `INFO`). With `LevelFilter::OFF`
    /// workers forward nothing and install no subscriber, so a worker may
    /// install its own. See [one log](crate::metrics#one-log).
    pub fn worker_log_level(mut self, level: impl Into<LevelFilter>) -> Self {
        self.observe.log_level = level.into();
        self
    }

    /// Sends every report, and the pool's own figures, to a statsd server as
    /// gauges named as the [naming scheme](crate::metrics#statsd) says.
    /// Turns reports on (every 10 s unless
    /// [`report_interval`](Self::report_interval) says otherwise).
    #[cfg(feature = "statsd")]
    pub fn statsd(mut self, statsd: Statsd) -> Self {
        self.observe.statsd = Some(statsd);
        self
    }

    /// Serves the pool's figures at `http://<addr>/metrics` in Prometheus'
    /// text format, from when the pool starts until it is dropped. Port 0
    /// picks a free port; [`Pool::prometheus_addr`](crate::Pool::prometheus_addr)
    /// tells which. Turns reports on (every 10 s unless
    /// [`report_interval`](Self::report_interval) says otherwise).
    #[cfg(feature = "prometheus")]
    pub fn prometheus(mut self, addr: impl Into<std::net::SocketAddr>) -> Self {
        self.observe.prometheus = Some(addr.into());
        self
    }
}

impl Config {
    /// The report interval in force, if reports are on.
    fn interval(&self) -> Option<Duration> {
        #[allow(unused_mut)]
        let mut wanted = false;
        #[cfg(feature = "statsd")]
        {
            wanted |= self.statsd.is_some();
        }
        #[cfg(feature = "prometheus")]
        {
            wanted |= self.prometheus.is_some();
        }
        self.report_interval
            .or(wanted.then_some(DEFAULT_REPORT_INTERVAL))
    }

    /// Checks the settings.
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        if self
            .report_interval
            .is_some_and(|i| i < Duration::from_millis(1))
        {
            return Err(BuildError::new("report_interval must be at least 1 ms"));
        }
        if self
            .blocked_threshold
            .is_some_and(|t| t < Duration::from_millis(4))
        {
            return Err(BuildError::new(
                "blocked_threshold must be at least 4 ms (the loop is checked four times per threshold)",
            ));
        }
        Ok(())
    }

    /// Resolves and binds what the pool needs (the statsd address, the
    /// Prometheus listener) and returns what to tell the workers and the
    /// parent's side of it all.
    pub(crate) async fn prepare(
        &self,
        pool: &str,
    ) -> Result<(WorkerSettings, Arc<Hub>), StartError> {
        let interval = self.interval();
        #[allow(unused_mut)]
        let mut settings = WorkerSettings {
            report_interval_ms: interval.map_or(0, |i| i.as_millis().max(1) as u64),
            blocked_threshold_ms: self
                .blocked_threshold
                .map_or(0, |t| t.as_millis().max(1) as u64),
            log_level: wire::filter_to_u8(self.log_level),
            statsd: None,
        };
        #[allow(unused_mut)]
        let mut hub = Hub {
            pool: pool.to_owned(),
            report_interval: interval,
            #[cfg(feature = "statsd")]
            statsd: None,
            #[cfg(feature = "statsd")]
            statsd_reports: false,
            #[cfg(feature = "prometheus")]
            prometheus: Mutex::new(None),
            prometheus_addr: None,
            tasks: Mutex::new(Vec::new()),
        };
        #[cfg(feature = "statsd")]
        if let Some(s) = &self.statsd {
            let fail = |why: String| {
                StartError::Config(BuildError::new(format!(
                    "statsd address {:?}: {why}",
                    s.addr
                )))
            };
            let addr = tokio::net::lookup_host(s.addr.as_str())
                .await
                .map_err(|e| fail(e.to_string()))?
                .next()
                .ok_or_else(|| fail("resolves to no address".into()))?;
            let sender = statsd::Sender::new(addr, &s.prefix).map_err(|e| fail(e.to_string()))?;
            hub.statsd = Some(sender);
            hub.statsd_reports = !s.from_workers;
            if s.from_workers {
                settings.statsd = Some((addr.to_string(), s.prefix.clone()));
            }
        }
        #[cfg(feature = "prometheus")]
        if let Some(addr) = self.prometheus {
            let listener = prometheus::bind(addr).await.map_err(|e| {
                StartError::Config(BuildError::new(format!(
                    "cannot serve Prometheus metrics on {addr}: {e}"
                )))
            })?;
            hub.prometheus_addr = listener.local_addr().ok();
            hub.prometheus = Mutex::new(Some(listener));
        }
        Ok((settings, Arc::new(hub)))
    }
}

/// The parent's observability state shared by a pool's lanes: where
/// figures go, and the tasks that send or serve them.
pub(crate) struct Hub {
    pool: String,
    report_interval: Option<Duration>,
    /// The parent's statsd sender.
    #[cfg(feature = "statsd")]
    statsd: Option<statsd::Sender>,
    /// Whether the parent (rather than each worker) sends the reports.
    #[cfg(feature = "statsd")]
    statsd_reports: bool,
    /// The bound listener, until the server takes it.
    #[cfg(feature = "prometheus")]
    prometheus: Mutex<Option<tokio::net::TcpListener>>,
    prometheus_addr: Option<std::net::SocketAddr>,
    /// The tasks to stop with the pool.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("pool", &self.pool)
            .field("report_interval", &self.report_interval)
            .field("prometheus_addr", &self.prometheus_addr)
            .finish_non_exhaustive()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

impl Hub {
    /// Lets every lane find the hub.
    pub(crate) fn attach<O>(self: &Arc<Self>, lanes: &[Arc<Lane<O>>]) {
        for lane in lanes {
            let _ = lane.obs.hub.set(self.clone());
        }
    }

    /// Starts the parent's periodic statsd sender and the Prometheus server;
    /// both end with the pool.
    pub(crate) fn spawn_tasks<O: DeserializeOwned + Send + 'static>(
        &self,
        sup: &Arc<Supervisor<O>>,
    ) {
        let mut tasks = lock(&self.tasks);
        #[cfg(feature = "statsd")]
        if let (Some(_), Some(interval)) = (&self.statsd, self.report_interval) {
            let weak = Arc::downgrade(sup);
            tasks.push(
                tokio::spawn(async move {
                    let mut ticker = tokio::time::interval(interval);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    ticker.tick().await;
                    loop {
                        ticker.tick().await;
                        let Some(sup) = weak.upgrade() else { return };
                        let stats = collect(&sup);
                        if let Some(sender) = sup.lanes[0].obs.hub().and_then(|h| h.statsd.as_ref())
                        {
                            sender.pool(&stats);
                        }
                    }
                })
                .abort_handle(),
            );
        }
        #[cfg(feature = "prometheus")]
        if let Some(listener) = lock(&self.prometheus).take() {
            let weak = Arc::downgrade(sup);
            let collect = move || weak.upgrade().map(|sup| collect(&sup));
            tasks.push(tokio::spawn(prometheus::serve(listener, collect)).abort_handle());
        }
        #[cfg(not(any(feature = "statsd", feature = "prometheus")))]
        let _ = (&mut tasks, sup);
    }

    /// The address the Prometheus endpoint listens on, if it is on.
    pub(crate) fn prometheus_addr(&self) -> Option<std::net::SocketAddr> {
        self.prometheus_addr
    }
}

/// The counts a lane keeps under its lock, per worker index.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LaneCounters {
    /// Tasks that completed.
    pub(crate) done: u64,
    /// Tasks that failed.
    pub(crate) failed: u64,
    /// Processes that opened the lane.
    pub(crate) starts: u64,
}

/// A lane's observability state, apart from its hot lock: the figures that
/// change rarely.
#[derive(Debug, Default)]
pub(crate) struct LaneObs {
    hub: OnceLock<Arc<Hub>>,
    state: Mutex<ObsState>,
}

#[derive(Debug, Default)]
struct ObsState {
    last: Option<WorkerReport>,
    blocked: u64,
    logs_dropped: u64,
    lost: u64,
}

impl LaneObs {
    /// The pool's hub, once attached.
    pub(crate) fn hub(&self) -> Option<&Arc<Hub>> {
        self.hub.get()
    }

    /// Counts tasks reported lost.
    pub(crate) fn count_lost(&self, n: u64) {
        lock(&self.state).lost += n;
    }

    fn pool(&self) -> &str {
        self.hub().map_or("", |h| h.pool.as_str())
    }
}

/// Handles a `REPORT` frame from worker `lane.index` (process `pid`).
///
/// Reports and log records are diagnostics: one that does not decode is
/// logged and skipped rather than treated as a broken connection.
pub(crate) fn on_report<O>(lane: &Lane<O>, pid: u32, body: &[u8]) {
    let frame: ReportFrame = match codec::get_serde(body) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::warn!(pool = lane.obs.pool(), worker = lane.index, pid, error = %e, "skipping a report that does not decode");
            return;
        }
    };
    match frame {
        ReportFrame::Resources(r) => {
            #[cfg(feature = "statsd")]
            if let Some(hub) = lane.obs.hub().filter(|h| h.statsd_reports) {
                if let Some(sender) = &hub.statsd {
                    sender.report(lane.index, &r);
                }
            }
            let report = WorkerReport::from_wire(&r, Instant::now());
            lock(&lane.obs.state).last = Some(report);
        }
        ReportFrame::Blocked(b) => {
            // The worker sends this before the completion of any task it
            // names, so each slot still holds the task it ran.
            let tasks: Vec<TaskId> = {
                let st = lane.lock();
                b.slots
                    .iter()
                    .filter_map(|&s| st.task_in_slot(s, lane.index as u32))
                    .collect()
            };
            lock(&lane.obs.state).blocked += 1;
            let tasks = if tasks.is_empty() {
                "none (background work, or between tasks)".to_owned()
            } else {
                tasks
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            tracing::warn!(
                pool = lane.obs.pool(),
                worker = lane.index,
                pid,
                blocked_ms = b.blocked_ms,
                threshold_ms = b.threshold_ms,
                tasks = %tasks,
                running = b.running,
                "worker event loop blocked"
            );
        }
    }
}

/// Handles a `LOG` frame from worker `lane.index` (process `pid`).
pub(crate) fn on_log<O>(lane: &Lane<O>, pid: u32, body: &[u8]) {
    let dropped = relay_log(lane.obs.pool(), lane.index, pid, body);
    if dropped > 0 {
        lock(&lane.obs.state).logs_dropped += dropped;
    }
}

/// Emits a worker's log record to the parent's subscriber; returns how many
/// events the worker said it dropped. A record that does not decode is
/// logged and skipped.
pub(crate) fn relay_log(pool: &str, worker: usize, pid: u32, body: &[u8]) -> u64 {
    let rec: LogRecord = match codec::get_serde(body) {
        Ok(rec) => rec,
        Err(e) => {
            tracing::warn!(pool, worker, pid, error = %e, "skipping a log record that does not decode");
            return 0;
        }
    };
    if rec.dropped > 0 {
        tracing::warn!(
            pool,
            worker,
            pid,
            dropped = rec.dropped,
            "worker dropped log events: its log buffer was full"
        );
    }
    let text = |s: &str| (!s.is_empty()).then(|| tracing::field::display(s.to_owned()));
    let fields = text(&rec.fields);
    let spans = text(&rec.spans);
    macro_rules! relay {
        ($level:expr) => {
            tracing::event!(
                target: "looppool::worker",
                $level,
                pool,
                worker,
                pid,
                log.target = rec.target.as_str(),
                log.file = rec.file.as_deref(),
                log.line = rec.line,
                fields,
                spans,
                "{}",
                rec.message
            )
        };
    }
    match wire::level_from_u8(rec.level) {
        Some(Level::ERROR) => relay!(Level::ERROR),
        Some(Level::WARN) => relay!(Level::WARN),
        Some(Level::INFO) => relay!(Level::INFO),
        Some(Level::DEBUG) => relay!(Level::DEBUG),
        Some(Level::TRACE) => relay!(Level::TRACE),
        // A record that only carries the dropped count.
        None => {}
    }
    rec.dropped
}

/// A snapshot of the pool's figures.
pub(crate) fn collect<O: DeserializeOwned + Send + 'static>(sup: &Supervisor<O>) -> PoolStats {
    let active = sup
        .active
        .load(std::sync::atomic::Ordering::Relaxed)
        .min(sup.lanes.len());
    let mut stats = PoolStats {
        pool: sup.spec.pool_name.clone(),
        workers: Vec::with_capacity(active),
        in_flight: 0,
        done: 0,
        failed: 0,
        lost: 0,
        restarts: 0,
        blocked: 0,
        logs_dropped: 0,
    };
    for (index, lane) in sup.lanes[..active].iter().enumerate() {
        let counters = lane.lock().counters;
        let in_flight = lane.in_flight();
        let obs = lock(&lane.obs.state);
        let w = WorkerStats {
            worker: index,
            pid: sup.pid(index),
            in_flight,
            done: counters.done,
            failed: counters.failed,
            lost: obs.lost,
            restarts: counters.starts.saturating_sub(1),
            blocked: obs.blocked,
            logs_dropped: obs.logs_dropped,
            last_report: obs.last.clone(),
        };
        drop(obs);
        stats.in_flight += w.in_flight;
        stats.done += w.done;
        stats.failed += w.failed;
        stats.lost += w.lost;
        stats.restarts += w.restarts;
        stats.blocked += w.blocked;
        stats.logs_dropped += w.logs_dropped;
        stats.workers.push(w);
    }
    stats
}
