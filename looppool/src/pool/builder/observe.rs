//! The builder's observability settings: reports, the blocked-loop
//! watchdog, worker logs and exporters.

use std::time::Duration;

use tracing::level_filters::LevelFilter;

use super::PoolBuilder;
use crate::worker::Worker;

/// Observability: reports, the blocked-loop watchdog, worker logs and
/// exporters (see [`crate::metrics`]).
impl<W: Worker> PoolBuilder<W> {
    /// Makes every worker report its resource use every `interval`: CPU,
    /// memory, loop backlog and task counts (see [`WorkerReport`](crate::WorkerReport)). The
    /// parent keeps the last report of each worker in
    /// [`Pool::stats`](crate::Pool::stats) and passes it on to statsd or
    /// Prometheus when configured.
    ///
    /// Default: off, or every 10 s ([`DEFAULT_REPORT_INTERVAL`](crate::metrics::DEFAULT_REPORT_INTERVAL)) when statsd
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
    pub fn statsd(mut self, statsd: crate::metrics::Statsd) -> Self {
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

    /// Stops timing tasks: [`PoolStats`](crate::PoolStats) and the
    /// exporters then show empty queue-wait, run-time and output-wait
    /// histograms. Timings are on by default; they time a sample of about
    /// a thousand tasks a second per worker, whatever the load, so they
    /// cost little (see [where time goes](crate::metrics#where-time-goes)).
    pub fn no_task_timings(mut self) -> Self {
        self.observe.task_timings = false;
        self
    }

    /// The level at which the parent logs each failed task (target
    /// `looppool::parent::reports`, with the pool, worker, pid, task, message
    /// and whether it panicked). Default: `DEBUG`, as the application
    /// receives every failure itself (an [`Output::Failed`](crate::Output::Failed)
    /// item or a [`CallError::Task`](crate::CallError::Task)); raise it to
    /// `WARN` to have failures in the log without handling them.
    pub fn failed_task_log_level(mut self, level: tracing::Level) -> Self {
        self.observe.failed_task_level = level;
        self
    }
}
