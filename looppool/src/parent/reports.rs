//! The parent's handling of the worker's `REPORT` and `LOG` frames, and the
//! rare figures a lane keeps apart from its hot lock.
//!
//! Reports and log records are diagnostics: one that does not decode is
//! logged and skipped rather than treated as a broken connection.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tracing::{Level, Span};

use crate::codec;
use crate::event::HeldTask;
use crate::protocol::report::{self as wire, LogRecord, ReportFrame, Resources};
use crate::sync::lock;
use crate::task_id::TaskId;

/// The level failed tasks are logged at unless the builder says otherwise:
/// the application receives each failure as an item or a call error, and
/// usually handles or logs it itself.
pub(crate) const DEFAULT_FAILED_TASK_LEVEL: Level = Level::DEBUG;

/// Called with each resource report as it arrives (worker index, report):
/// how an exporter (statsd) sees reports as they come.
pub(crate) type ReportHook = Arc<dyn Fn(usize, &Resources) + Send + Sync>;

/// A lane's observability state, apart from its hot lock: the figures that
/// change rarely.
#[derive(Default)]
pub(crate) struct LaneObs {
    attached: OnceLock<Attached>,
    state: Mutex<ObsState>,
}

/// What the pool tells its lanes once they exist.
struct Attached {
    pool: Arc<str>,
    on_report: Option<ReportHook>,
    failed_task_level: Level,
}

impl std::fmt::Debug for LaneObs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneObs")
            .field("pool", &self.pool())
            .finish_non_exhaustive()
    }
}

/// The rare figures of one worker index.
#[derive(Debug, Default, Clone)]
pub(crate) struct ObsState {
    /// The last resource report, and when it arrived.
    pub(crate) last: Option<(Resources, Instant)>,
    /// Episodes of a blocked loop.
    pub(crate) blocked: u64,
    /// Log events the worker dropped.
    pub(crate) logs_dropped: u64,
    /// Tasks reported lost.
    pub(crate) lost: u64,
}

impl LaneObs {
    /// Names the pool in log lines, and passes each report to `on_report`.
    /// Names the pool in log lines, passes each report to `on_report`, and
    /// logs failed tasks at `failed_task_level`.
    pub(crate) fn attach(
        &self,
        pool: Arc<str>,
        on_report: Option<ReportHook>,
        failed_task_level: Level,
    ) {
        let _ = self.attached.set(Attached {
            pool,
            on_report,
            failed_task_level,
        });
    }

    /// The level at which failed tasks are logged (see
    /// `PoolBuilder::failed_task_log_level`).
    pub(crate) fn failed_task_level(&self) -> Level {
        self.attached
            .get()
            .map_or(DEFAULT_FAILED_TASK_LEVEL, |a| a.failed_task_level)
    }

    /// Logs a failed task at the pool's level for them, naming the pool,
    /// the worker, its process and the task.
    pub(crate) fn log_failed_task(
        &self,
        worker: usize,
        pid: u32,
        task: TaskId,
        message: &str,
        panicked: bool,
    ) {
        let pool = self.pool();
        macro_rules! failed {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    pool,
                    worker,
                    pid,
                    %task,
                    message = %message,
                    panicked,
                    "task failed"
                )
            };
        }
        match self.failed_task_level() {
            Level::ERROR => failed!(Level::ERROR),
            Level::WARN => failed!(Level::WARN),
            Level::INFO => failed!(Level::INFO),
            Level::DEBUG => failed!(Level::DEBUG),
            _ => failed!(Level::TRACE),
        }
    }

    /// Counts tasks reported lost.
    pub(crate) fn count_lost(&self, n: u64) {
        lock(&self.state).lost += n;
    }

    /// A copy of the figures.
    pub(crate) fn snapshot(&self) -> ObsState {
        lock(&self.state).clone()
    }

    fn pool(&self) -> &str {
        self.attached.get().map_or("", |a| &a.pool)
    }

    /// Handles a `REPORT` frame from worker `worker` (process `pid`);
    /// `look_up` names the tasks that a blocked-loop or deadline report's
    /// slots hold, and every task the worker holds, with how long.
    pub(crate) fn on_report(
        &self,
        worker: usize,
        pid: u32,
        body: &[u8],
        look_up: impl FnOnce(&[u32]) -> (Vec<TaskId>, Vec<HeldTask>),
    ) {
        let frame: ReportFrame = match codec::get_serde(body) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(pool = self.pool(), worker, pid, error = %e, "skipping a report that does not decode");
                return;
            }
        };
        match frame {
            ReportFrame::Resources(r) => {
                if let Some(hook) = self.attached.get().and_then(|a| a.on_report.as_ref()) {
                    hook(worker, &r);
                }
                lock(&self.state).last = Some((r, Instant::now()));
            }
            ReportFrame::Blocked(b) => {
                // The worker sends this before the completion of any task it
                // names, so each slot still holds the task it ran.
                let (tasks, held) = look_up(&b.slots);
                lock(&self.state).blocked += 1;
                let tasks = if tasks.is_empty() {
                    "none (background work, or between tasks)".to_owned()
                } else {
                    list(&tasks)
                };
                tracing::warn!(
                    target: "looppool::metrics",
                    pool = self.pool(),
                    worker,
                    pid,
                    blocked_ms = b.blocked_ms,
                    threshold_ms = b.threshold_ms,
                    tasks = %tasks,
                    running = b.running,
                    held = %list(&held),
                    stack = b.stack.as_deref().unwrap_or(NO_STACK),
                    "worker event loop blocked"
                );
            }
            ReportFrame::Deadline(d) => {
                // Sent before the task's failure: its slot still holds it.
                let (task, held) = look_up(&[d.slot]);
                tracing::warn!(
                    target: "looppool::metrics",
                    pool = self.pool(),
                    worker,
                    pid,
                    task = %list(&task),
                    limit_ms = d.limit_ms,
                    running = d.running,
                    held = %list(&held),
                    stack = d.stack.as_deref().unwrap_or(NO_STACK),
                    "task passed the pool's task timeout"
                );
            }
        }
    }

    /// Handles a `LOG` frame from worker `worker` (process `pid`);
    /// `span_of` gives the span of the task in a slot.
    pub(crate) fn on_log(
        &self,
        worker: usize,
        pid: u32,
        body: &[u8],
        span_of: impl FnOnce(u32) -> Option<Span>,
    ) {
        let dropped = relay_log(self.pool(), worker, pid, body, span_of);
        if dropped > 0 {
            lock(&self.state).logs_dropped += dropped;
        }
    }
}

/// What a forensics report says when the worker could not read its
/// threads' state (no `/proc`).
const NO_STACK: &str = "(not readable)";

/// `items`, comma-separated, as `Display` shows each.
pub(crate) fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    items.join(", ")
}

/// Emits a worker's log record to the parent's subscriber; returns how many
/// events the worker said it dropped. A record that does not decode is
/// logged and skipped.
///
/// A record that names the slot of its task is emitted inside the span the
/// task was submitted in (`span_of` finds it), so that a handler's events
/// carry the fields of the parent's span.
pub(crate) fn relay_log(
    pool: &str,
    worker: usize,
    pid: u32,
    body: &[u8],
    span_of: impl FnOnce(u32) -> Option<Span>,
) -> u64 {
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
    let span = rec.slot.and_then(span_of);
    let _entered = span.as_ref().map(Span::enter);
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
