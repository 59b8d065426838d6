//! The driver task of one worker index: start, serve, reap, restart.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::launch::{launch, Launched};
use super::{Serving, Supervisor};
use crate::error::WorkerLost;
use crate::event::{ExitStatus, LossCause, WorkerEvent};
use crate::parent::connection::{read_loop, write_loop, ReadEnd};
use crate::parent::outputs::BatchSender;

impl<O: serde::de::DeserializeOwned + Send + 'static> Supervisor<O> {
    pub(super) async fn drive(
        self: Arc<Self>,
        index: usize,
        first: Option<Serving>,
        outputs: BatchSender<O>,
    ) {
        let lane = self.lanes[index].clone();
        let mut next = Some(first);
        let mut attempt = 0u32;
        let mut short_lives = 0u32;
        loop {
            let installed = match next.take() {
                Some(s) => s,
                None => match self.launch_unless_stopped(index).await {
                    None => break,
                    Some(Ok(l)) => self.install(index, l),
                    Some(Err(e)) => {
                        self.emit(WorkerEvent::StartFailed {
                            worker: index,
                            error: e.to_string(),
                        });
                        if !self
                            .restart_allowed(index, &mut attempt, &mut short_lives)
                            .await
                        {
                            break;
                        }
                        continue;
                    }
                },
            };
            let Some(Serving {
                pid,
                generation,
                reader,
                writer,
            }) = installed
            else {
                // The lane was closed meanwhile (the pool is going away).
                self.kill(index);
                let _ = self.reap(index).await;
                break;
            };
            let started = Instant::now();
            let writer_task = tokio::spawn(write_loop(lane.clone(), generation, writer));
            let heartbeat = self.tuning.heartbeat.map(|(interval, timeout)| {
                tokio::spawn(
                    self.clone()
                        .heartbeat(index, pid, generation, interval, timeout),
                )
            });
            let end = read_loop(lane.clone(), generation, reader, outputs.clone()).await;
            writer_task.abort();
            if let Some(heartbeat) = heartbeat {
                heartbeat.abort();
            }
            if let ReadEnd::Broken(why) = &end {
                tracing::error!(pool = %self.spec.pool_name, worker = index, pid, error = %why, "closing the connection to a misbehaving worker");
                self.kill(index);
            }
            let status = self.reap(index).await;
            let stopping = self.is_stopping();
            let recycled = lane.lock().recycle_reason.take();
            let held = lane.take_held(stopping);
            let clean = matches!(end, ReadEnd::Bye) && status == ExitStatus::Code(0);
            let unresponsive = lane.unresponsive.swap(false, Ordering::SeqCst);
            let cause = match end {
                _ if unresponsive => LossCause::Unresponsive,
                ReadEnd::Broken(why) => LossCause::Protocol(why),
                _ => self.state.borrow().loss_cause(),
            };
            let lost = WorkerLost {
                worker: index,
                pid,
                status,
                cause: cause.clone(),
            };
            let lost_tasks = held.len();
            self.report_lost(held, &lost, &outputs);
            if let (true, Some(reason), false) = (clean, recycled, stopping) {
                // A drained recycle: replace at once, outside the restart budget.
                self.emit(WorkerEvent::Recycled {
                    worker: index,
                    pid,
                    reason,
                });
                continue;
            } else if clean {
                self.emit(WorkerEvent::Exited { worker: index, pid });
            } else {
                self.emit(WorkerEvent::Crashed {
                    worker: index,
                    pid,
                    status,
                    cause,
                    lost_tasks,
                });
            }
            if stopping || self.is_stopping() || lane.is_closed() {
                // The pool is shutting down, or this worker was removed.
                lane.take_held(true);
                break;
            }
            if started.elapsed() >= Duration::from_secs(1) {
                short_lives = 0;
            }
            if !self
                .restart_allowed(index, &mut attempt, &mut short_lives)
                .await
            {
                break;
            }
        }
        // Whatever raced with the end (a restart refused, a failed start).
        let held = lane.take_held(true);
        if !held.is_empty() {
            let lost = WorkerLost {
                worker: index,
                pid: 0,
                status: ExitStatus::Unknown,
                cause: LossCause::PoolKilled,
            };
            self.report_lost(held, &lost, &outputs);
        }
    }

    /// Starts worker `index`, unless the pool stops first (then `None`).
    pub(super) async fn launch_unless_stopped(
        &self,
        index: usize,
    ) -> Option<Result<Launched, crate::StartError>> {
        let mut state = self.state.subscribe();
        tokio::select! {
            launched = launch(&self.spec, index) => Some(launched),
            _ = state.wait_for(|s| !s.is_running()) => None,
        }
    }

    /// Applies the restart policy; sleeps the back-off when a restart is allowed.
    pub(super) async fn restart_allowed(
        &self,
        index: usize,
        attempt: &mut u32,
        short_lives: &mut u32,
    ) -> bool {
        if !self.policy.restart || self.is_stopping() {
            self.lanes[index].take_held(true);
            return false;
        }
        {
            let mut restarts = crate::sync::lock(&self.restarts);
            let now = Instant::now();
            while restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) > self.policy.window)
            {
                restarts.pop_front();
            }
            if restarts.len() >= self.policy.max_restarts as usize {
                drop(restarts);
                self.fail(format!(
                    "more than {} worker restarts within {:?}: the pool stopped itself",
                    self.policy.max_restarts, self.policy.window
                ));
                return false;
            }
            restarts.push_back(now);
        }
        *attempt += 1;
        let factor = 1u32 << (*short_lives).min(16);
        let delay = self
            .policy
            .backoff_initial
            .saturating_mul(factor)
            .min(self.policy.backoff_max);
        *short_lives += 1;
        self.emit(WorkerEvent::Restarting {
            worker: index,
            attempt: *attempt,
            delay,
        });
        tokio::time::sleep(delay).await;
        !self.is_stopping()
    }

    /// Waits for worker `index`'s process to end and collects its status. A
    /// process that closed its connection but lingers is killed after a grace
    /// period.
    pub(super) async fn reap(&self, index: usize) -> ExitStatus {
        let grace = Instant::now() + Duration::from_secs(2);
        let mut pause = Duration::from_micros(200);
        loop {
            {
                let mut slot = crate::sync::lock(&self.children[index]);
                let Some(child) = slot.child.as_mut() else {
                    return slot.reaped.take().unwrap_or(ExitStatus::Unknown);
                };
                match child.try_wait() {
                    Ok(Some(status)) => {
                        slot.child = None;
                        return status;
                    }
                    Ok(None) if Instant::now() > grace => {
                        child.kill();
                    }
                    Ok(None) => {}
                    Err(_) => {
                        slot.child = None;
                        return ExitStatus::Unknown;
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}
