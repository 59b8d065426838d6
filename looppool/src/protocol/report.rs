//! The bodies of the `REPORT` and `LOG` frames a worker sends its parent.
//!
//! Both are postcard values behind the frame's kind byte. They are rare
//! (one report per interval, one log frame per event), so they favour
//! clarity over compactness.

use serde::{Deserialize, Serialize};
use tracing::level_filters::LevelFilter;
use tracing::Level;

/// The body of a `REPORT` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum ReportFrame {
    /// The periodic resource report.
    Resources(Resources),
    /// The loop did not turn for longer than the threshold, and has now.
    Blocked(Blocked),
    /// A task passed the pool's task timeout (sent before its failure).
    Deadline(Deadline),
}

/// A worker's figures over one report interval (see `WorkerReport`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Resources {
    pub(crate) pid: u32,
    /// The wall time the interval figures cover, in microseconds.
    pub(crate) interval_us: u64,
    pub(crate) cpu: f64,
    pub(crate) rss_bytes: u64,
    pub(crate) max_rss_bytes: u64,
    pub(crate) loop_alive_tasks: u64,
    pub(crate) loop_global_queue: u64,
    pub(crate) loop_busy: f64,
    pub(crate) loop_parks: u64,
    pub(crate) tasks_running: u64,
    pub(crate) tasks_done: u64,
    pub(crate) outputs: u64,
    pub(crate) logs_dropped: u64,
    /// The loop's lag over the interval: how late a periodic timer of its
    /// own fired, at most and on average, in microseconds.
    pub(crate) loop_lag_max_us: u64,
    pub(crate) loop_lag_mean_us: u64,
}

/// One episode of a blocked loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Blocked {
    /// How long the loop did not turn, in milliseconds.
    pub(crate) blocked_ms: u64,
    /// The threshold it passed.
    pub(crate) threshold_ms: u64,
    /// Wire slots of the tasks seen being polled while it was blocked.
    pub(crate) slots: Vec<u32>,
    /// Tasks in progress on the worker at the time.
    pub(crate) running: u64,
    /// What the worker's threads were doing while the loop was blocked,
    /// as its watchdog read them from `/proc` (see `forensics`).
    pub(crate) stack: Option<String>,
}

/// A task that passed the pool's task timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Deadline {
    /// The task's wire slot.
    pub(crate) slot: u32,
    /// The timeout, in milliseconds.
    pub(crate) limit_ms: u64,
    /// Tasks in progress on the worker at the time.
    pub(crate) running: u64,
    /// What the worker's threads were doing (see `forensics`).
    pub(crate) stack: Option<String>,
}

/// The body of a `LOG` frame: one `tracing` event (or panic) of a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogRecord {
    /// [`level_to_u8`] of the event's level; 0 for a record that only
    /// carries `dropped`.
    pub(crate) level: u8,
    pub(crate) target: String,
    pub(crate) message: String,
    /// The event's other fields, as `name=value` separated by spaces.
    pub(crate) fields: String,
    /// The spans the event happened in, outermost first: `a{x=1}:b`.
    pub(crate) spans: String,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
    /// Events the worker dropped (its log buffer was full) since the last
    /// record it sent.
    pub(crate) dropped: u64,
    /// The wire slot of the task whose handler emitted the event, set only
    /// when the record travels in order with that task's frames: the parent
    /// then reads it before the task's completion, while the slot still
    /// holds that task.
    pub(crate) slot: Option<u32>,
}

/// A level as a byte: 1 (error) to 5 (trace).
pub(crate) fn level_to_u8(level: Level) -> u8 {
    match level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// The inverse of [`level_to_u8`].
pub(crate) fn level_from_u8(level: u8) -> Option<Level> {
    Some(match level {
        1 => Level::ERROR,
        2 => Level::WARN,
        3 => Level::INFO,
        4 => Level::DEBUG,
        5 => Level::TRACE,
        _ => return None,
    })
}

/// A level filter as a byte: 0 (off) to 5 (trace).
pub(crate) fn filter_to_u8(filter: LevelFilter) -> u8 {
    filter.into_level().map_or(0, level_to_u8)
}

/// The inverse of [`filter_to_u8`].
pub(crate) fn filter_from_u8(filter: u8) -> LevelFilter {
    level_from_u8(filter).map_or(LevelFilter::OFF, LevelFilter::from_level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_round_trip() {
        for level in [
            Level::ERROR,
            Level::WARN,
            Level::INFO,
            Level::DEBUG,
            Level::TRACE,
        ] {
            assert_eq!(level_from_u8(level_to_u8(level)), Some(level));
            let filter = LevelFilter::from_level(level);
            assert_eq!(filter_from_u8(filter_to_u8(filter)), filter);
        }
        assert_eq!(filter_to_u8(LevelFilter::OFF), 0);
        assert_eq!(filter_from_u8(0), LevelFilter::OFF);
        assert_eq!(level_from_u8(9), None);
    }

    #[test]
    fn frames_round_trip() {
        let frame = ReportFrame::Blocked(Blocked {
            blocked_ms: 1500,
            threshold_ms: 100,
            slots: vec![3, 7],
            running: 2,
            stack: Some("thread 1 (w): state R".into()),
        });
        let bytes = postcard::to_stdvec(&frame).unwrap();
        assert_eq!(postcard::from_bytes::<ReportFrame>(&bytes).unwrap(), frame);
    }
}

/// The environment variable that tells a worker to send its reports to
/// statsd itself: `<address> <prefix>` (an address has no spaces).
pub(crate) const STATSD_ENV: &str = "LOOPPOOL_STATSD";

/// What every worker of a pool is told about observability (in its init).
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkerSettings {
    /// Report every this many ms (0: no reports).
    pub(crate) report_interval_ms: u64,
    /// Watch for a loop blocked this many ms (0: no watchdog).
    pub(crate) blocked_threshold_ms: u64,
    /// Forward log events up to this level (see [`filter_to_u8`]).
    pub(crate) log_level: u8,
    /// Send reports to this statsd server (address, prefix) from the worker.
    pub(crate) statsd: Option<(String, String)>,
}
