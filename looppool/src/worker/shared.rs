//! The state everything running in one worker process shares.

use std::cell::Cell;
use std::time::Duration;

use tokio::sync::Notify;

use super::observe::Observe;
use super::outbox::Outbox;
use crate::protocol::{Failure, Init};

/// State shared by everything running in one worker process.
pub(crate) struct Shared {
    pub(crate) index: usize,
    pub(crate) pool_name: String,
    /// The frames going to the parent, and the output window.
    pub(crate) out: Outbox,
    /// Tasks started and not yet completed.
    running: Cell<usize>,
    /// Woken when `running` drops to zero.
    idle: Notify,
    /// Set when the parent asked the worker to stop.
    stop_requested: Cell<bool>,
    stop_wake: Notify,
    /// Tasks running longer than this fail.
    pub(crate) task_timeout: Option<Duration>,
    /// Counts for reports, and the blocked-loop watch.
    pub(crate) obs: Observe,
}

impl Shared {
    /// The state of the worker the parent's `init` message describes.
    pub(crate) fn new(init: &Init, max_frame: usize) -> Self {
        Shared {
            index: init.index as usize,
            pool_name: init.pool.clone(),
            out: Outbox::new(max_frame, init.output_credits),
            running: Cell::new(0),
            idle: Notify::new(),
            stop_requested: Cell::new(false),
            stop_wake: Notify::new(),
            task_timeout: (init.task_timeout_ms > 0)
                .then(|| Duration::from_millis(init.task_timeout_ms)),
            obs: Observe::new(init),
        }
    }

    /// Tasks started and not yet completed.
    pub(crate) fn running(&self) -> usize {
        self.running.get()
    }

    /// Counts a task as started; [`complete`](Self::complete) ends it.
    pub(crate) fn task_started(&self) {
        self.running.set(self.running.get() + 1);
    }

    /// Queues the completion of the task in wire slot `slot`, and counts it.
    pub(crate) fn complete(&self, slot: u32, result: Result<(), Failure>) {
        self.out.push_completion(slot, result);
        self.obs.done.set(self.obs.done.get() + 1);
        let running = self.running.get() - 1;
        self.running.set(running);
        // Only the drain after a stop waits for `idle` (and it checks
        // `running` first): a notification per idle moment would take the
        // `Notify`'s lock after nearly every task.
        if running == 0 && self.stop_requested.get() {
            self.idle.notify_waiters();
        }
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
