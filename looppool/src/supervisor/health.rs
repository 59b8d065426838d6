//! Health watches: the heartbeat that catches a stuck loop, the memory
//! watch that recycles a bloated worker, and the watch that tells of
//! workers waiting on unread outputs.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{jittered, Supervisor};
use crate::event::WorkerEvent;
use crate::parent::reports::list;
use crate::task_id::TaskId;

impl<O: serde::de::DeserializeOwned + Send + 'static> Supervisor<O> {
    /// Pings the worker every `interval`; kills it when it has not answered
    /// for `timeout` (its loop is stuck), so that it is replaced.
    pub(super) async fn heartbeat(
        self: Arc<Self>,
        index: usize,
        pid: u32,
        generation: u64,
        interval: Duration,
        timeout: Duration,
    ) {
        let lane = self.lanes[index].clone();
        let mut nonce = 0u64;
        loop {
            tokio::time::sleep(interval).await;
            let silent_for = lane.silent_for();
            if silent_for > timeout {
                // Read before the kill, while the process is as it was.
                self.emit(WorkerEvent::Unresponsive {
                    worker: index,
                    pid,
                    silent_for,
                    held: lane.held_tasks(),
                    stack: crate::forensics::thread_states(pid),
                });
                lane.unresponsive.store(true, Ordering::SeqCst);
                self.kill(index);
                return;
            }
            nonce += 1;
            if !lane.ping(generation, nonce) {
                return;
            }
        }
    }

    /// Reports, as the deadline of `limit` of task `task` passes on worker
    /// `index` and its cancel is sent, the tasks the worker holds (with how
    /// long) and what its threads are doing, as a warning.
    pub(crate) fn report_deadline(&self, index: usize, task: TaskId, limit: Duration) {
        let lane = &self.lanes[index];
        let pid = lane.pid();
        let stack = crate::forensics::thread_states(pid);
        tracing::warn!(
            target: "looppool::metrics",
            pool = %self.spec.pool_name,
            worker = index,
            pid,
            %task,
            limit_ms = limit.as_millis() as u64,
            held = %list(&lane.held_tasks()),
            stack = stack.as_deref().unwrap_or("(not a local process)"),
            "task passed its deadline: cancelling it"
        );
    }

    /// Samples each worker's resident memory and recycles those above the
    /// limit (each with its own jitter, so they do not recycle together).
    pub(crate) fn spawn_memory_watch(self: &Arc<Self>, limit: u64) {
        let sup = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(sup) = sup.upgrade() else { return };
                if sup.is_stopping() {
                    return;
                }
                for (index, lane) in sup.lanes.iter().enumerate() {
                    let Some(pid) = sup.pid(index) else { continue };
                    let Some(rss) = crate::sys::resident_bytes(pid) else {
                        continue;
                    };
                    if rss > jittered(limit, pid.into()) {
                        lane.recycle_for_memory(rss);
                    }
                }
            }
        });
    }

    /// Warns, once per episode, of each worker that has waited for output
    /// credits for `threshold` or longer because nobody takes its items
    /// from the output stream (a program that keeps the stream but does
    /// not read it otherwise hangs without a word). Checks a few times per
    /// threshold, at most every second.
    pub(crate) fn spawn_unread_watch(self: &Arc<Self>, threshold: Duration) {
        let sup = Arc::downgrade(self);
        let every = (threshold / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(sup) = sup.upgrade() else { return };
                for (worker, lane) in sup.lanes.iter().enumerate() {
                    let Some((pid, waited)) = lane.unreported_wait(threshold) else {
                        continue;
                    };
                    tracing::warn!(
                        pool = %sup.spec.pool_name,
                        worker,
                        pid,
                        waited_ms = waited.as_millis() as u64,
                        "worker {worker} has waited {waited:.1?} on unread outputs: its output \
                         credits are spent and come back only as the Outputs stream is read; \
                         read it, or drop it to discard outputs"
                    );
                }
            }
        });
    }
}
