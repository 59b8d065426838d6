//! The `snapshot` reply: a pool's figures as JSON, made from
//! [`Pool::stats`](crate::Pool::stats) and the workers' last reports.

use serde::{Deserialize, Serialize};

use crate::parent::lane::Status;
use crate::stats::PoolStats;
use crate::timing::Histogram;

/// A pool's figures, as the control socket's `snapshot` request returns
/// them: [`PoolStats`] and each worker's last
/// [report](crate::WorkerReport), with the pool's process and state.
///
/// Fields added later will be optional, so a client built against this
/// version reads the replies of later ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// The pool's name.
    pub pool: String,
    /// The pool's process (the parent).
    pub pid: u32,
    /// `running`, `stopping` (a shutdown began) or `failed`.
    pub state: String,
    /// Why the pool failed, if it did.
    #[serde(default)]
    pub failure: Option<String>,
    /// The most workers the pool may grow to
    /// ([`max_workers`](crate::PoolBuilder::max_workers)).
    pub max_workers: usize,
    /// The per-worker bound on queued plus running tasks.
    pub worker_capacity: usize,
    /// Tasks queued or running in the whole pool.
    pub in_flight: usize,
    /// Tasks that completed.
    pub done: u64,
    /// Tasks whose handler returned an error or panicked.
    pub failed: u64,
    /// Tasks lost with their worker.
    pub lost: u64,
    /// Worker processes replaced.
    pub restarts: u64,
    /// Episodes of a worker loop blocked past the threshold.
    pub blocked: u64,
    /// Queue wait of the pool's tasks since it started (see
    /// [`PoolStats::queue_wait`]); a client takes the difference of two
    /// snapshots ([`Histogram::since`]) for an interval.
    #[serde(default)]
    pub queue_wait: Histogram,
    /// Run time of the pool's tasks.
    #[serde(default)]
    pub run_time: Histogram,
    /// Output wait of the pool's output items.
    #[serde(default)]
    pub output_wait: Histogram,
    /// Each worker in use, by index.
    pub workers: Vec<WorkerSnapshot>,
}

/// One worker's figures in a [`Snapshot`].
///
/// The resource figures (`cpu` and after) come from the worker's last
/// report, so they are `None` unless reports are on
/// ([`PoolBuilder::report_interval`](crate::PoolBuilder::report_interval))
/// and one arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerSnapshot {
    /// The worker's index.
    pub index: usize,
    /// Its current process id, `None` while it is being replaced.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Whether it takes tasks.
    pub state: WorkerState,
    /// Tasks queued or running on it.
    pub in_flight: usize,
    /// Tasks it completed (all its processes).
    pub done: u64,
    /// Tasks that failed on it.
    pub failed: u64,
    /// Tasks lost with its processes.
    pub lost: u64,
    /// Times its process was replaced.
    pub restarts: u64,
    /// Episodes of its loop blocked past the threshold.
    pub blocked: u64,
    /// CPU used over the last report's interval, in percent of one core.
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    /// Resident memory, in bytes.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// Peak resident memory, in bytes.
    #[serde(default)]
    pub max_rss_bytes: Option<u64>,
    /// Share of the last interval its event loop was busy, in percent: how
    /// close it is to lagging.
    #[serde(default)]
    pub loop_busy_percent: Option<f64>,
    /// Its event loop's worst lag over the last interval, in milliseconds
    /// (see [`WorkerReport::loop_lag_max`](crate::WorkerReport::loop_lag_max)).
    #[serde(default)]
    pub loop_lag_ms: Option<f64>,
    /// Its event loop's mean lag over the last interval, in milliseconds.
    #[serde(default)]
    pub loop_lag_mean_ms: Option<f64>,
    /// Tasks woken from other threads and waiting for the loop.
    #[serde(default)]
    pub loop_queue: Option<u64>,
    /// How old the last report is, in milliseconds.
    #[serde(default)]
    pub report_age_ms: Option<u64>,
    /// Queue wait of its tasks.
    #[serde(default)]
    pub queue_wait: Histogram,
    /// Run time of its tasks.
    #[serde(default)]
    pub run_time: Histogram,
    /// Output wait of its output items.
    #[serde(default)]
    pub output_wait: Histogram,
}

/// Whether a worker takes tasks, in a [`WorkerSnapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkerState {
    /// Running and taking tasks.
    Running,
    /// Draining to be replaced (recycled): tasks sent meanwhile wait for
    /// its replacement.
    Recycling,
    /// Gone; its replacement is starting.
    Starting,
    /// Asked to stop (the pool is shutting down, or shrinking).
    Stopping,
    /// Stopped for good.
    Stopped,
    /// A state this version does not know (from a newer pool).
    #[serde(other)]
    Unknown,
}

impl WorkerState {
    /// The state's name, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Running => "running",
            WorkerState::Recycling => "recycling",
            WorkerState::Starting => "starting",
            WorkerState::Stopping => "stopping",
            WorkerState::Stopped => "stopped",
            WorkerState::Unknown => "unknown",
        }
    }

    pub(super) fn from_status(status: Status) -> Self {
        match status {
            Status::Open => WorkerState::Running,
            Status::Recycling => WorkerState::Recycling,
            Status::Down => WorkerState::Starting,
            Status::Stopping => WorkerState::Stopping,
            Status::Closed => WorkerState::Stopped,
        }
    }
}

impl Snapshot {
    /// The snapshot of `stats`, with each worker's state by index from
    /// `state`.
    pub(super) fn new(
        stats: PoolStats,
        pid: u32,
        state: String,
        failure: Option<String>,
        max_workers: usize,
        worker_capacity: usize,
        worker_state: impl Fn(usize) -> WorkerState,
    ) -> Self {
        let workers = stats
            .workers
            .into_iter()
            .map(|w| {
                let r = w.last_report.as_ref();
                WorkerSnapshot {
                    index: w.worker,
                    pid: w.pid,
                    state: worker_state(w.worker),
                    in_flight: w.in_flight,
                    done: w.done,
                    failed: w.failed,
                    lost: w.lost,
                    restarts: w.restarts,
                    blocked: w.blocked,
                    cpu_percent: r.map(|r| r.cpu * 100.0),
                    rss_bytes: r.map(|r| r.rss_bytes),
                    max_rss_bytes: r.map(|r| r.max_rss_bytes),
                    loop_busy_percent: r.map(|r| r.loop_busy * 100.0),
                    loop_lag_ms: r.map(|r| r.loop_lag_max.as_secs_f64() * 1e3),
                    loop_lag_mean_ms: r.map(|r| r.loop_lag_mean.as_secs_f64() * 1e3),
                    loop_queue: r.map(|r| r.loop_global_queue),
                    report_age_ms: r.map(|r| r.received.elapsed().as_millis() as u64),
                    queue_wait: w.queue_wait,
                    run_time: w.run_time,
                    output_wait: w.output_wait,
                }
            })
            .collect();
        Snapshot {
            pool: stats.pool,
            pid,
            state,
            failure,
            max_workers,
            worker_capacity,
            in_flight: stats.in_flight,
            done: stats.done,
            failed: stats.failed,
            lost: stats.lost,
            restarts: stats.restarts,
            blocked: stats.blocked,
            queue_wait: stats.queue_wait,
            run_time: stats.run_time,
            output_wait: stats.output_wait,
            workers,
        }
    }
}
