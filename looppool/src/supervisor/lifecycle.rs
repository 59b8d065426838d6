//! Stopping the pool: shutdown, failure, drop.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::Supervisor;
use crate::event::WorkerEvent;

impl<O: serde::de::DeserializeOwned + Send + 'static> Supervisor<O> {
    /// Marks the pool failed and stops every worker.
    pub(super) fn fail(&self, reason: String) {
        {
            let mut failure = crate::sync::lock(&self.failure);
            if failure.is_some() {
                return;
            }
            *failure = Some(reason.clone());
        }
        self.emit(WorkerEvent::PoolFailed { reason });
        self.stopping.store(true, Ordering::SeqCst);
        self.stopped.send_replace(true);
        for lane in self.lanes.iter() {
            lane.stop();
        }
        for index in 0..self.lanes.len() {
            self.kill(index);
        }
    }

    /// Why the pool failed, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        crate::sync::lock(&self.failure).clone()
    }

    /// True once a shutdown began or the pool failed.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Asks every worker to stop behind its queued tasks and waits until all
    /// have exited; after `deadline`, kills those still running.
    pub(crate) async fn shutdown(&self, deadline: Option<Duration>) -> bool {
        self.stopping.store(true, Ordering::SeqCst);
        self.stopped.send_replace(true);
        for lane in self.lanes.iter() {
            lane.stop();
        }
        let mut alive = self.alive.subscribe();
        let all_exited = alive.wait_for(|n| *n == 0);
        let in_time = match deadline {
            None => {
                let _ = all_exited.await;
                true
            }
            Some(d) => tokio::time::timeout(d, all_exited).await.is_ok(),
        };
        if !in_time {
            self.deadline_hit.store(true, Ordering::SeqCst);
            for index in 0..self.lanes.len() {
                self.kill(index);
            }
            let _ = alive.wait_for(|n| *n == 0).await;
        }
        in_time
    }

    /// Kills and reaps every worker at once, without waiting for the
    /// drivers (used when the pool is dropped).
    pub(crate) fn kill_all_now(&self) {
        self.dropped.store(true, Ordering::SeqCst);
        self.stopping.store(true, Ordering::SeqCst);
        self.stopped.send_replace(true);
        for lane in self.lanes.iter() {
            lane.stop();
        }
        for slot in &self.children {
            let mut slot = crate::sync::lock(slot);
            if let Some(mut child) = slot.child.take() {
                child.kill();
                // Reap at once, so no zombie outlives the pool.
                slot.reaped = child.wait().ok();
            }
        }
    }
}
