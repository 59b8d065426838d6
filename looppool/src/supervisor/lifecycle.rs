//! The pool's lifecycle as one state, and the ways it ends: shutdown,
//! failure, drop.

use std::time::Duration;

use super::Supervisor;
use crate::event::{LossCause, WorkerEvent};

/// Where the pool is in its life, kept in a `watch` so that a start that
/// waits long (a connector waiting for a worker to join) can end when the
/// pool stops.
///
/// It moves only away from `Running`: `Running → Draining → DeadlinePassed`
/// for a shutdown, `Running | Draining → Failed` when the restart intensity
/// is exceeded, and any state `→ Dropped` when the last handle goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PoolState {
    /// Workers run and are replaced when they die.
    Running,
    /// A shutdown began: workers drain behind their queued tasks and are not
    /// replaced.
    Draining,
    /// The shutdown's deadline passed: the workers still running were killed.
    DeadlinePassed,
    /// Too many restarts: the pool stopped itself and killed its workers.
    Failed(String),
    /// The last handle was dropped: every worker was killed at once.
    Dropped,
}

impl PoolState {
    /// True until a shutdown begins, the pool fails or it is dropped.
    pub(crate) fn is_running(&self) -> bool {
        *self == PoolState::Running
    }

    /// Why a worker that ended in this state lost its tasks, when its own
    /// end (a broken protocol, a missed heartbeat) says nothing more.
    pub(crate) fn loss_cause(&self) -> LossCause {
        match self {
            PoolState::Dropped => LossCause::PoolKilled,
            PoolState::DeadlinePassed => LossCause::ShutdownDeadline,
            _ => LossCause::Crashed,
        }
    }
}

impl<O: serde::de::DeserializeOwned + Send + 'static> Supervisor<O> {
    /// True once a shutdown began, the pool failed or it was dropped.
    pub(crate) fn is_stopping(&self) -> bool {
        !self.state.borrow().is_running()
    }

    /// Why the pool failed, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        match &*self.state.borrow() {
            PoolState::Failed(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// Marks the pool failed and stops every worker.
    pub(super) fn fail(&self, reason: String) {
        let failed = self.state.send_if_modified(|state| match state {
            PoolState::Running | PoolState::Draining | PoolState::DeadlinePassed => {
                *state = PoolState::Failed(reason.clone());
                true
            }
            PoolState::Failed(_) | PoolState::Dropped => false,
        });
        if !failed {
            return;
        }
        self.emit(WorkerEvent::PoolFailed { reason });
        self.stop_lanes();
        for index in 0..self.lanes.len() {
            self.kill(index);
        }
    }

    /// Asks every worker to stop behind its queued tasks and waits until all
    /// have exited; after `deadline`, kills those still running.
    pub(crate) async fn shutdown(&self, deadline: Option<Duration>) -> bool {
        self.state.send_if_modified(|state| {
            let running = state.is_running();
            if running {
                *state = PoolState::Draining;
            }
            running
        });
        self.stop_lanes();
        let mut drivers = self.drivers.subscribe();
        let all_exited = drivers.wait_for(|d| d.iter().all(|&n| n == 0));
        let in_time = match deadline {
            None => {
                let _ = all_exited.await;
                true
            }
            Some(d) => tokio::time::timeout(d, all_exited).await.is_ok(),
        };
        if !in_time {
            self.state.send_if_modified(|state| {
                let draining = *state == PoolState::Draining;
                if draining {
                    *state = PoolState::DeadlinePassed;
                }
                draining
            });
            for index in 0..self.lanes.len() {
                self.kill(index);
            }
            let _ = drivers.wait_for(|d| d.iter().all(|&n| n == 0)).await;
        }
        in_time
    }

    /// Kills and reaps every worker at once, without waiting for the
    /// drivers (used when the pool is dropped).
    pub(crate) fn kill_all_now(&self) {
        self.state.send_replace(PoolState::Dropped);
        self.stop_lanes();
        for slot in &self.children {
            let mut slot = crate::sync::lock(slot);
            if let Some(mut child) = slot.child.take() {
                child.kill();
                slot.killed = true;
                // Reap at once, so no zombie outlives the pool.
                slot.reaped = child.wait().ok();
            }
        }
    }

    /// Completes once the pool has stopped (shut down, failed or dropped)
    /// and every driver has ended. Holds no reference to the supervisor,
    /// so that whoever awaits it does not keep the pool alive.
    pub(crate) fn ended(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut state = self.state.subscribe();
        let mut drivers = self.drivers.subscribe();
        async move {
            // An error means the supervisor is gone: the pool ended too.
            let _ = state.wait_for(|s| !s.is_running()).await;
            let _ = drivers.wait_for(|d| d.iter().all(|&n| n == 0)).await;
        }
    }

    /// Closes every lane to new tasks and queues a stop message behind the
    /// tasks already sent.
    fn stop_lanes(&self) {
        for lane in self.lanes.iter() {
            lane.stop();
        }
    }
}
