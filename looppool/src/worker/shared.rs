//! The state everything running in one worker process shares.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::cancel::Cancels;
use super::outbox::Outbox;
use super::watchdog::Watch;
use crate::protocol::report::{Deadline, ReportFrame};
use crate::protocol::{kind, Failure, Init};

/// State shared by everything running in one worker process.
pub(crate) struct Shared {
    pub(crate) index: usize,
    pub(crate) pool_name: String,
    /// The frames going to the parent, and the output window.
    pub(crate) out: Outbox,
    /// Tasks started and not yet completed.
    running: Cell<usize>,
    /// Tasks completed or failed, for reports.
    done: Cell<u64>,
    /// Woken when `running` drops to zero.
    idle: Notify,
    /// Set when the parent asked the worker to stop.
    stop_requested: Cell<bool>,
    stop_wake: Notify,
    /// Tasks running longer than this fail.
    pub(crate) task_timeout: Option<Duration>,
    /// The blocked-loop watch, when the pool asked for one.
    pub(crate) watch: Option<Arc<Watch>>,
    /// One more than the wire slot of the task being polled; 0 between
    /// tasks. Log records name it, so that the parent can relay a handler's
    /// events in the span its task was submitted in.
    polled: Cell<u32>,
    /// The cancellation of the running tasks that wait.
    pub(crate) cancels: Cancels,
}

impl Shared {
    /// The state of the worker the parent's `init` message describes;
    /// blobs of at least `blob_threshold` bytes go to the parent by
    /// descriptor.
    pub(crate) fn new(init: &Init, max_frame: usize, blob_threshold: Option<usize>) -> Self {
        Shared {
            index: init.index as usize,
            pool_name: init.pool.clone(),
            out: Outbox::new(
                max_frame,
                init.output_credits,
                init.credit_bytes,
                blob_threshold,
            ),
            running: Cell::new(0),
            done: Cell::new(0),
            idle: Notify::new(),
            stop_requested: Cell::new(false),
            stop_wake: Notify::new(),
            task_timeout: (init.task_timeout_ms > 0)
                .then(|| Duration::from_millis(init.task_timeout_ms)),
            watch: (init.blocked_threshold_ms > 0)
                .then(|| Arc::new(Watch::new(Duration::from_millis(init.blocked_threshold_ms)))),
            polled: Cell::new(0),
            cancels: Cancels::new(Duration::from_millis(init.cancel_grace_ms)),
        }
    }

    /// Tasks started and not yet completed.
    pub(crate) fn running(&self) -> usize {
        self.running.get()
    }

    /// Tasks completed or failed so far.
    pub(crate) fn done(&self) -> u64 {
        self.done.get()
    }

    /// Counts a task as started; [`complete`](Self::complete) ends it.
    pub(crate) fn task_started(&self) {
        self.running.set(self.running.get() + 1);
    }

    /// Queues the completion of the task in wire slot `slot`, and counts it;
    /// `ran_ns` is how long a timed task ran.
    ///
    /// A failure spends output credits (the parent holds it for its
    /// consumer as it holds a value): when the window is shut, the task
    /// ends only once its failure is queued, in a task of its own that
    /// waits for credits, so that a drain waits for it too.
    pub(crate) fn complete(
        self: &Rc<Self>,
        slot: u32,
        result: Result<(), Failure>,
        ran_ns: Option<u64>,
    ) {
        self.cancels.disarm(slot);
        match (result, ran_ns) {
            (Ok(()), None) => self.out.push_done(slot),
            (Ok(()), Some(ran)) => self.out.push_done_timed(slot, ran),
            (Err(failure), _) => {
                if let Err(failure) = self.out.try_push_failed(slot, failure, ran_ns) {
                    let shared = self.clone();
                    tokio::task::spawn_local(async move {
                        shared.out.push_failed(slot, failure, ran_ns).await;
                        shared.ended();
                    });
                    return;
                }
            }
        }
        self.ended();
    }

    /// Queues the answer to the parent's cancel of the task in wire slot
    /// `slot`, whose future was dropped (or never started), and counts it.
    pub(crate) fn cancelled(&self, slot: u32) {
        self.cancels.disarm(slot);
        self.out.push_simple(kind::CANCELLED, Some(slot.into()));
        self.ended();
    }

    /// Counts a task as ended.
    fn ended(&self) {
        self.done.set(self.done.get() + 1);
        let running = self.running.get() - 1;
        self.running.set(running);
        // Only the drain after a stop waits for `idle` (and it checks
        // `running` first): a notification per idle moment would take the
        // `Notify`'s lock after nearly every task.
        if running == 0 && self.stop_requested.get() {
            self.idle.notify_waiters();
        }
    }

    /// Runs `poll`, a poll of the task in wire slot `slot`, under the
    /// blocked-loop watch.
    #[inline]
    pub(crate) fn polling<R>(&self, slot: u32, poll: impl FnOnce() -> R) -> R {
        // The poll cannot unwind past here: the task's panics are caught
        // inside it.
        self.polled.set(slot.wrapping_add(1));
        let r = match &self.watch {
            None => poll(),
            Some(watch) => watch.polling(slot, poll, || self.loop_turned(watch)),
        };
        self.polled.set(0);
        r
    }

    /// The wire slot of the task being polled, if one is.
    pub(crate) fn polled_slot(&self) -> Option<u32> {
        self.polled.get().checked_sub(1)
    }

    /// The loop turned: tells the watch, which reports a blocked episode
    /// that just ended.
    pub(crate) fn loop_turned(&self, watch: &Watch) {
        watch.turned(&self.out, self.running.get());
    }

    /// Tells the parent that the task in wire slot `slot` passed the
    /// pool's task timeout of `limit`, with what the process's threads are
    /// doing; queued before the task's failure, so the parent still knows
    /// the slot's task.
    pub(crate) fn report_deadline(&self, slot: u32, limit: Duration) {
        let frame = ReportFrame::Deadline(Deadline {
            slot,
            limit_ms: limit.as_millis() as u64,
            running: self.running.get() as u64,
            stack: crate::forensics::own_thread_states(),
        });
        let max_frame = self.out.max_frame();
        self.out.try_push_frame(usize::MAX, |buf| {
            let _ = crate::protocol::put_value(buf, kind::REPORT, &frame, max_frame);
        });
    }

    /// Records the parent's stop message.
    pub(crate) fn request_stop(&self) {
        self.stop_requested.set(true);
        self.stop_wake.notify_waiters();
    }

    /// Waits for the parent's stop message, then for the running tasks.
    pub(crate) async fn stopped_and_idle(&self) {
        while !self.stop_requested.get() {
            self.stop_wake.notified().await;
        }
        while self.running.get() > 0 {
            self.idle.notified().await;
        }
    }
}
