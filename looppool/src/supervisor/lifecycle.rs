//! Stopping the pool (shutdown, failure, drop) and resizing it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{launch, Supervisor};
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

    /// Grows or shrinks the pool to `workers`. New workers start like the
    /// first ones; removed ones (the highest indices) drain first.
    pub(crate) async fn resize(self: &Arc<Self>, workers: usize) -> Result<(), crate::StartError> {
        use crate::error::{BuildError, StartError};
        let _resizing = self.resizing.lock().await;
        if workers == 0 || workers > self.lanes.len() {
            return Err(BuildError::new(format!(
                "cannot resize to {workers} workers: the pool allows 1 to {} (raise max_workers)",
                self.lanes.len()
            ))
            .into());
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err(StartError::Closed);
        }
        let current = self.active.load(Ordering::SeqCst);
        if workers > current {
            let mut launching = tokio::task::JoinSet::new();
            for index in current..workers {
                self.lanes[index].reopen();
                let spec = self.spec.clone();
                launching.spawn(async move { (index, launch(&spec, index).await) });
            }
            let mut launched = Vec::new();
            let mut failure = None;
            while let Some(joined) = launching.join_next().await {
                match joined {
                    Ok((index, Ok(l))) => launched.push((index, l)),
                    Ok((_, Err(e))) => {
                        failure.get_or_insert(e);
                    }
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            }
            let outputs = crate::sync::lock(&self.outputs)
                .as_ref()
                .and_then(|w| w.upgrade());
            let (Some(outputs), None) = (outputs, &failure) else {
                for (index, mut l) in launched {
                    l.peer.kill();
                    let _ = l.peer.wait();
                    self.lanes[index].stop();
                }
                return Err(failure.unwrap_or(StartError::Closed));
            };
            for (index, l) in launched {
                self.spawn_driver(index, l, outputs.clone());
            }
            self.active.store(workers, Ordering::SeqCst);
        } else if workers < current {
            // Routing stops first, then the removed workers drain.
            self.active.store(workers, Ordering::SeqCst);
            for lane in &self.lanes[workers..current] {
                lane.stop();
            }
            let mut alive = self.alive.subscribe();
            let _ = alive
                .wait_for(|_| {
                    let running = crate::sync::lock(&self.running);
                    running[workers..current].iter().all(|r| !r)
                })
                .await;
        }
        Ok(())
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
