//! Observability: what a pool and its workers report, and where it goes.
//!
//! # Stats
//!
//! [`Pool::stats`](crate::Pool::stats) returns a [`PoolStats`] snapshot: per
//! worker and for the whole pool, the tasks in flight (queued plus running),
//! done, failed and lost, the restarts, the blocked-loop episodes, the log
//! events dropped, where tasks' time goes (below), and each worker's last
//! [`WorkerReport`].
//!
//! # Where time goes
//!
//! Three [`Histogram`]s per worker index, and their sums for the pool:
//!
//! - **queue wait**: a task's time in the pool other than its run: from
//!   `submit` (or `call`) queueing its frame to its completion reaching the
//!   parent, less its run time; so it counts the wait to be written, in
//!   the worker's queue (behind running tasks, or a blocked loop), and
//!   both trips over the connection (or the broker).
//! - **run time**: from just before the handler's first poll to its
//!   completion, measured by the worker; a handler waiting in `emit` for
//!   output credits is still running.
//! - **output wait**: an item's time in the parent, from its frame being
//!   read off the connection to the consumer taking it from
//!   [`Outputs`](crate::Outputs): the consumer's lag, which holds workers
//!   back once their output credits are spent. A `call`'s reply goes to
//!   its caller and is not counted; nor is a `Lost` item.
//!
//! Each is the difference of two readings of one clock (the worker's for
//! the run, the parent's for the rest), so a worker on another machine,
//! through `looppool-nats`, is timed as well as a local one. A task that
//! fails is timed as one that completes; a cancelled or lost one is not.
//!
//! **Which tasks are timed.** Timing every task would cost two clock reads
//! per task at each end, a large share of a trivial task's cost. So each
//! worker index times every task while it is sent fewer than about 1,000
//! a second, and a random sample of about 1,000 a second beyond: after
//! each timed task the next one is drawn uniformly among the following
//! `2n - 1`, `n` being the rate over the last millisecond or more divided
//! by 1,000 (a random draw rather than every `n`-th task, so that a
//! workload with a period of its own is not sampled in step with it).
//! Outputs are sampled the same way as the consumer takes them. Each timed
//! task counts for the `n` tasks it stands for, so a histogram's counts
//! estimate how many tasks fell in each bucket and its shape is that of
//! all tasks, not of the quiet moments when every task is timed (the
//! histogram of a uniform sample, weighted by the inverse of each one's
//! chance of being drawn, is an unbiased estimate of the whole one). The
//! cost left on every task is a counter decremented in the parent, and
//! one clock read per read of the worker's connection; the `hist` rows of
//! `looppool-bench` measure it (see `BENCHMARKS.md`).
//! [`PoolBuilder::no_task_timings`](crate::PoolBuilder::no_task_timings)
//! turns timing off.
//!
//! Buckets go in 1, 2, 5 steps from 1 µs to 100 s, and one more holds
//! longer durations; [`Histogram::quantile`] interpolates within a bucket,
//! as Prometheus' `histogram_quantile` does, so a quantile is exact only
//! to its bucket. The histograms count from the pool's start (a
//! replacement process continues its index's); [`Histogram::since`] gives
//! the distribution over an interval, as `looppool top` shows it.
//!
//! # Resource reports
//!
//! With [`PoolBuilder::report_interval`](crate::PoolBuilder::report_interval) (or when statsd or Prometheus is
//! configured, every 10 s) each worker measures, once per interval, its CPU
//! use as a fraction of one core (`getrusage` user + system time over wall
//! time), its resident and peak resident memory (`VmRSS` and `VmHWM`), its
//! loop's backlog from tokio's stable runtime metrics, its loop's lag (how
//! late a timer ticking on the loop ten times per interval, at most ten
//! times a second, fires: the worst and the mean), and its task and
//! output counts. The report travels to the parent over the pool's own
//! connection; the parent keeps the last one per worker.
//!
//! # statsd
//!
//! With `PoolBuilder::statsd` (cargo feature `statsd`) the
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
//! | `<prefix>.worker.<i>.loop.lag_max_ms` / `lag_mean_ms` | the loop's worst and mean lag over the interval: how late a timer ticking on it fired (see [`WorkerReport::loop_lag_max`]) |
//! | `<prefix>.worker.<i>.tasks.running` | handlers in progress |
//! | `<prefix>.worker.<i>.tasks.done` | tasks the process completed (or failed) so far |
//! | `<prefix>.worker.<i>.outputs` | outputs the process emitted so far |
//! | `<prefix>.worker.<i>.logs.dropped` | log events the process dropped so far |
//! | `<prefix>.worker.<i>.in_flight` / `failed` / `lost` / `restarts` / `blocked` | the parent's counts for worker index `i` |
//! | `<prefix>.pool.workers` / `in_flight` / `done` / `failed` / `lost` / `restarts` / `blocked` / `logs_dropped` | the whole pool |
//!
//! The timing histograms are not sent to statsd (its gauges carry one
//! number each); read them from [`Pool::stats`](crate::Pool::stats),
//! Prometheus or the control socket.
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
//! `looppool_worker_loop_busy`, `looppool_worker_loop_lag_max_seconds`,
//! `looppool_worker_loop_lag_mean_seconds`, `looppool_worker_tasks_running`,
//! `looppool_worker_report_age_seconds` and the counters
//! `looppool_worker_tasks_done_total`, `…_tasks_failed_total`,
//! `…_tasks_lost_total`, `…_restarts_total`, `…_blocked_total` and
//! `…_logs_dropped_total`; and the [timing histograms](#where-time-goes),
//! in seconds, per worker (`looppool_worker_queue_wait_seconds`,
//! `looppool_worker_run_time_seconds`, `looppool_worker_output_wait_seconds`)
//! and for the pool, labelled `pool` only (`looppool_queue_wait_seconds`,
//! `looppool_run_time_seconds`, `looppool_output_wait_seconds`: separate
//! families, so that summing a family never counts a task twice).
//! [`Pool::prometheus_addr`](crate::Pool::prometheus_addr) tells the bound
//! address (useful with port 0).
//!
//! To scrape these with the application's other metrics instead, from its
//! own `prometheus-client` registry and HTTP server, register
//! [`Pool::prometheus_collector`](crate::Pool::prometheus_collector) (a
//! `PoolCollector`, same families, a fresh snapshot at each scrape) in that
//! registry; the standalone endpoint is then not needed.
//!
//! # Blocked loops
//!
//! A handler that computes without awaiting holds up every other task of
//! its worker. With [`PoolBuilder::blocked_threshold`](crate::PoolBuilder::blocked_threshold) (Tornado's
//! `set_blocking_log_threshold`) a watchdog thread in each worker notices
//! when the loop has not turned for longer than the threshold and writes a
//! line to the worker's standard error at once (the loop itself cannot send
//! anything while blocked). When the loop turns again, the worker tells the
//! parent, which logs a warning (target `looppool::metrics`) naming the
//! worker, its pid, how long the loop was blocked, the tasks that were
//! being run meanwhile, every task the worker held and for how long
//! ([`HeldTask`](crate::HeldTask)), and what the worker's threads were
//! doing while the loop was blocked (state, `wchan`, system call, and the
//! kernel stack where readable, as root), which the watchdog read from
//! `/proc` at the time; and counts the episode in [`WorkerStats::blocked`].
//! A task that passes its deadline (its own, or the pool's task timeout) is
//! reported the same way, as it passes.
//!
//! # One log
//!
//! Each worker forwards its `tracing` events at or above
//! [`PoolBuilder::worker_log_level`](crate::PoolBuilder::worker_log_level) (default `INFO`), and the panics of its
//! background work, to the parent, which emits them again to its own
//! subscriber: target `looppool::worker`, the original level and message,
//! and the fields `pool`, `worker`, `pid`, `log.target`, `log.file`,
//! `log.line`, `fields` (the event's own fields as text) and `spans` (the
//! spans it happened in). A handler's panic or error reaches the parent as a
//! task failure, which the parent logs with the pool, worker, pid, task,
//! message and location, at
//! [`PoolBuilder::failed_task_log_level`](crate::PoolBuilder::failed_task_log_level)
//! (default `DEBUG`: the application receives the failure itself).
//!
//! ## The parent's span
//!
//! The parent emits a handler's events inside the span that was current
//! where its task was sent ([`Pool::submit`](crate::Pool::submit),
//! [`Pool::call`](crate::Pool::call) and the other sending methods), so a
//! subscriber shows the request's fields (`request{id=7}:`) on the
//! handler's lines, as it would for work done in the parent itself. A
//! retried task keeps its span. This holds for events of the handler's own
//! future (its first poll and later ones); events from tasks it spawns,
//! from other threads, or that waited behind a full connection buffer (the
//! worker then cannot tell which task is current when the parent reads
//! them) are emitted without it, never in another task's span. Sending a
//! task outside any span costs nothing for this.
//!
//! A worker buffers at most 1 MiB of log events that its connection has not
//! taken; beyond that it drops events and counts them. The parent warns
//! with the count and adds it to [`WorkerStats::logs_dropped`], so no event
//! is lost silently.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::level_filters::LevelFilter;

use crate::error::{BuildError, StartError};
use crate::parent::lane::Lane;
use crate::parent::reports::ReportHook;
use crate::protocol::report::{self as wire, WorkerSettings};
use crate::sync::lock;

#[cfg(feature = "prometheus")]
mod prometheus;
#[cfg(feature = "sentry")]
mod sentry;
#[cfg(feature = "statsd")]
pub(crate) mod statsd;

#[cfg(feature = "prometheus")]
pub use prometheus::PoolCollector;
#[cfg(feature = "sentry")]
pub use sentry::sentry_tags;
#[cfg(feature = "statsd")]
pub use statsd::Statsd;

pub use crate::stats::{PoolStats, WorkerReport, WorkerStats};
pub use crate::timing::Histogram;

/// The report interval when statsd or Prometheus is configured without one.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The observability settings of a [`PoolBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) report_interval: Option<Duration>,
    pub(crate) blocked_threshold: Option<Duration>,
    pub(crate) log_level: LevelFilter,
    /// The level failed tasks are logged at in the parent.
    pub(crate) failed_task_level: tracing::Level,
    /// Whether tasks are timed (see [where time goes](self#where-time-goes)).
    pub(crate) task_timings: bool,
    #[cfg(feature = "statsd")]
    pub(crate) statsd: Option<Statsd>,
    #[cfg(feature = "prometheus")]
    pub(crate) prometheus: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            report_interval: None,
            blocked_threshold: None,
            log_level: LevelFilter::INFO,
            failed_task_level: crate::parent::reports::DEFAULT_FAILED_TASK_LEVEL,
            task_timings: true,
            #[cfg(feature = "statsd")]
            statsd: None,
            #[cfg(feature = "prometheus")]
            prometheus: None,
        }
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
            failed_task_level: self.failed_task_level,
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
            hub.statsd = Some(Arc::new(sender));
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
    failed_task_level: tracing::Level,
    /// The parent's statsd sender.
    #[cfg(feature = "statsd")]
    statsd: Option<Arc<statsd::Sender>>,
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
    /// Tells every lane the pool's name, and where reports go as they come.
    pub(crate) fn attach<O>(&self, lanes: &[Arc<Lane<O>>]) {
        let pool: Arc<str> = self.pool.as_str().into();
        for lane in lanes {
            lane.obs
                .attach(pool.clone(), self.report_hook(), self.failed_task_level);
        }
    }

    /// What to do with each report as it arrives: pass it to statsd when
    /// the parent sends the workers' reports.
    fn report_hook(&self) -> Option<ReportHook> {
        #[cfg(feature = "statsd")]
        if let (Some(sender), true) = (&self.statsd, self.statsd_reports) {
            let sender = sender.clone();
            return Some(Arc::new(move |worker, r| sender.report(worker, r)));
        }
        None
    }

    /// Starts the parent's periodic statsd sender and the Prometheus server;
    /// both end with the pool (when `snapshot` returns `None`, or the hub is
    /// dropped).
    pub(crate) fn spawn_tasks<F>(&self, snapshot: F)
    where
        F: Fn() -> Option<PoolStats> + Clone + Send + Sync + 'static,
    {
        let mut tasks = lock(&self.tasks);
        #[cfg(feature = "statsd")]
        if let (Some(sender), Some(interval)) = (&self.statsd, self.report_interval) {
            let sender = sender.clone();
            let snapshot = snapshot.clone();
            tasks.push(
                tokio::spawn(async move {
                    let mut ticker = tokio::time::interval(interval);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    ticker.tick().await;
                    loop {
                        ticker.tick().await;
                        let Some(stats) = snapshot() else { return };
                        sender.pool(&stats);
                    }
                })
                .abort_handle(),
            );
        }
        #[cfg(feature = "prometheus")]
        if let Some(listener) = lock(&self.prometheus).take() {
            tasks.push(tokio::spawn(prometheus::serve(listener, snapshot)).abort_handle());
        }
        #[cfg(not(any(feature = "statsd", feature = "prometheus")))]
        let _ = (&mut tasks, snapshot);
    }

    /// The address the Prometheus endpoint listens on, if it is on.
    pub(crate) fn prometheus_addr(&self) -> Option<std::net::SocketAddr> {
        self.prometheus_addr
    }
}
