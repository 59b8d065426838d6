//! The worker's resource reporter: CPU, memory, loop backlog and counts,
//! once per report interval.

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

/// Makes a report every `interval` until the process ends.
pub(crate) async fn run(shared: Rc<Shared>, interval: Duration, statsd: Statsd) {
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
