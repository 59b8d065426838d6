//! A pool's figures as a snapshot: [`PoolStats`], per worker
//! [`WorkerStats`] with its timing histograms and its last
//! [`WorkerReport`], and their collection from the lanes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::parent::lane::Lane;
use crate::protocol::report::Resources;
use crate::timing::Histogram;

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
    /// Queue wait of the whole pool's tasks: their time in the pool other
    /// than their run (see [where time goes](crate::metrics#where-time-goes)).
    pub queue_wait: Histogram,
    /// Run time of the whole pool's tasks, from their handler's first poll
    /// to their completion.
    pub run_time: Histogram,
    /// Output wait of the whole pool's output items: from reaching the
    /// parent to the consumer taking them.
    pub output_wait: Histogram,
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
    /// Queue wait of its tasks (see [`PoolStats::queue_wait`]).
    pub queue_wait: Histogram,
    /// Run time of its tasks.
    pub run_time: Histogram,
    /// Output wait of its output items.
    pub output_wait: Histogram,
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
    /// The loop's worst lag over the interval: how late a timer ticking on
    /// the loop (ten times per interval, at most every 100 ms) fired at
    /// most. A handler that computes for 200 ms without awaiting makes it
    /// about 200 ms; an idle loop's is below a millisecond, the timer's
    /// resolution.
    pub loop_lag_max: Duration,
    /// The loop's mean lag over the interval, from the same timer.
    pub loop_lag_mean: Duration,
}

impl WorkerReport {
    fn from_wire(r: &Resources, received: Instant) -> Self {
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
            loop_lag_max: Duration::from_micros(r.loop_lag_max_us),
            loop_lag_mean: Duration::from_micros(r.loop_lag_mean_us),
        }
    }
}

/// A snapshot of the figures of pool `pool`, whose first `active` lanes
/// are in use; `pid` tells each worker's current process id.
pub(crate) fn collect<O>(
    pool: &str,
    lanes: &[Arc<Lane<O>>],
    active: usize,
    pid: impl Fn(usize) -> Option<u32>,
) -> PoolStats {
    let active = active.min(lanes.len());
    let mut stats = PoolStats {
        pool: pool.to_owned(),
        workers: Vec::with_capacity(active),
        in_flight: 0,
        done: 0,
        failed: 0,
        lost: 0,
        restarts: 0,
        blocked: 0,
        logs_dropped: 0,
        queue_wait: Histogram::default(),
        run_time: Histogram::default(),
        output_wait: Histogram::default(),
    };
    for (index, lane) in lanes[..active].iter().enumerate() {
        let counters = lane.counters();
        let in_flight = lane.in_flight();
        let obs = lane.obs.snapshot();
        let w = WorkerStats {
            worker: index,
            pid: pid(index),
            in_flight,
            done: counters.done,
            failed: counters.failed,
            lost: obs.lost,
            restarts: counters.starts.saturating_sub(1),
            blocked: obs.blocked,
            logs_dropped: obs.logs_dropped,
            last_report: obs.last.map(|(r, at)| WorkerReport::from_wire(&r, at)),
            queue_wait: lane.timings.queue_wait.snapshot(),
            run_time: lane.timings.run_time.snapshot(),
            output_wait: lane.timings.output_wait.snapshot(),
        };
        stats.in_flight += w.in_flight;
        stats.done += w.done;
        stats.failed += w.failed;
        stats.lost += w.lost;
        stats.restarts += w.restarts;
        stats.blocked += w.blocked;
        stats.logs_dropped += w.logs_dropped;
        stats.queue_wait.merge(&w.queue_wait);
        stats.run_time.merge(&w.run_time);
        stats.output_wait.merge(&w.output_wait);
        stats.workers.push(w);
    }
    stats
}
