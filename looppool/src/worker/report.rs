//! The worker's resource reporter: CPU, memory, loop backlog and lag, and
//! counts, once per report interval.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::shared::Shared;
use crate::protocol::report::{ReportFrame, Resources};
use crate::protocol::{self, kind};
use crate::sys;

/// Where reports go besides the parent.
pub(crate) type Statsd = Option<Box<dyn Fn(usize, &Resources)>>;

/// What is measured at each end of an interval.
struct Sample {
    wall: Instant,
    cpu: Duration,
    busy: Duration,
    parks: u64,
}

impl Sample {
    fn take(metrics: &tokio::runtime::RuntimeMetrics) -> Self {
        // A current-thread runtime has one worker: the loop.
        let loop_worker = metrics.num_workers() > 0;
        Sample {
            wall: Instant::now(),
            cpu: sys::cpu_time(),
            busy: if loop_worker {
                metrics.worker_total_busy_duration(0)
            } else {
                Duration::ZERO
            },
            parks: if loop_worker {
                metrics.worker_park_count(0)
            } else {
                0
            },
        }
    }
}

/// Resident and peak resident memory of this process, in bytes.
fn memory() -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (0, 0);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The loop's lag as a timer of its own sees it: how late each tick fires.
#[derive(Debug, Default)]
struct Lag {
    max: Cell<Duration>,
    sum: Cell<Duration>,
    ticks: Cell<u32>,
}

impl Lag {
    /// The most and the mean lag since the last call, in µs.
    fn take(&self) -> (u64, u64) {
        let max = self.max.take();
        let sum = self.sum.take();
        let mean = sum.checked_div(self.ticks.take()).unwrap_or_default();
        (max.as_micros() as u64, mean.as_micros() as u64)
    }
}

/// Ticks every `period` on the loop, noting how late each tick fires: a
/// loop held up by a handler that does not yield fires it late by as much.
/// The lag includes the timer's own resolution (about a millisecond).
async fn measure_lag(lag: Rc<Lag>, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = ticker.tick().await;
        let late = due.elapsed();
        lag.max.set(lag.max.get().max(late));
        lag.sum.set(lag.sum.get() + late);
        lag.ticks.set(lag.ticks.get() + 1);
    }
}

/// Makes a report every `interval` until the process ends.
pub(crate) async fn run(shared: Rc<Shared>, interval: Duration, statsd: Statsd) {
    // Ten lag samples per report, at most ten a second.
    let lag = Rc::new(Lag::default());
    let period = (interval / 10).clamp(Duration::from_millis(1), Duration::from_millis(100));
    let probe = tokio::task::spawn_local(measure_lag(lag.clone(), period));
    // Ends with the reporter (a test's worker, stopping).
    let _probe = AbortOnDrop(probe);
    let metrics = tokio::runtime::Handle::current().metrics();
    let mut prev = Sample::take(&metrics);
    let start = tokio::time::Instant::now() + interval;
    let mut ticker = tokio::time::interval_at(start, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = Sample::take(&metrics);
        let wall = now.wall.duration_since(prev.wall);
        let fraction = |d: Duration| {
            if wall.is_zero() {
                0.0
            } else {
                d.as_secs_f64() / wall.as_secs_f64()
            }
        };
        let (rss_bytes, max_rss_bytes) = memory();
        let (loop_lag_max_us, loop_lag_mean_us) = lag.take();
        let report = Resources {
            pid: std::process::id(),
            interval_us: wall.as_micros() as u64,
            cpu: fraction(now.cpu.saturating_sub(prev.cpu)),
            rss_bytes,
            max_rss_bytes,
            loop_alive_tasks: metrics.num_alive_tasks() as u64,
            loop_global_queue: metrics.global_queue_depth() as u64,
            loop_busy: fraction(now.busy.saturating_sub(prev.busy)).min(1.0),
            loop_parks: now.parks.saturating_sub(prev.parks),
            tasks_running: shared.running() as u64,
            tasks_done: shared.done(),
            outputs: shared.out.outputs(),
            logs_dropped: super::logging::dropped_total(),
            loop_lag_max_us,
            loop_lag_mean_us,
        };
        if let Some(send) = &statsd {
            send(shared.index, &report);
        }
        let max_frame = shared.out.max_frame();
        let frame = ReportFrame::Resources(report);
        shared.out.try_push_frame(usize::MAX, |buf| {
            let _ = protocol::put_value(buf, kind::REPORT, &frame, max_frame);
        });
        prev = now;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
