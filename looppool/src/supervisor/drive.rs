//! The driver task of one worker index: start, serve, reap, restart.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::launch::{launch, Launched};
use super::policy::Backoff;
use super::{Serving, Supervisor};
use crate::error::WorkerLost;
use crate::event::{ExitStatus, LossCause, WorkerEvent};
use crate::parent::connection::{read_loop_until, write_loop, ReadEnd};
use crate::parent::lane::Lane;
use crate::parent::outputs::BatchSender;
use crate::worker::process::EXIT_OUT_OF_MEMORY;

/// How long the connection of a worker process that exited is read on when
/// it does not end (something else holds it open).
const EXITED_READ_GRACE: Duration = Duration::from_millis(500);

/// How a served worker ended, as far as its replacement is concerned.
enum Ended {
    /// It drained and exited to be recycled: replace it at once, outside the
    /// restart budget.
    Recycled,
    /// It died: replace it under the restart policy.
    Died,
    /// The pool is stopping or the worker was removed: no replacement.
    Stopped,
}

impl<O: serde::de::DeserializeOwned + Send + 'static> Supervisor<O> {
    /// Serves worker `index` (first the one in `first`), and replaces it
    /// each time it ends, until the pool stops or the policy gives up.
    pub(super) async fn drive(
        self: Arc<Self>,
        index: usize,
        first: Option<Serving>,
        outputs: BatchSender<O>,
    ) {
        let mut backoff = Backoff::default();
        let mut next = Some(first);
        loop {
            let installed = match next.take() {
                Some(installed) => installed,
                None => match self.start_replacement(index, &mut backoff).await {
                    Some(installed) => installed,
                    None => break,
                },
            };
            let Some(serving) = installed else {
                // The lane was closed meanwhile (the pool is going away).
                self.kill(index);
                let _ = self.reap(index).await;
                break;
            };
            let started = Instant::now();
            let pid = serving.pid;
            let end = self.serve(index, serving, &outputs).await;
            match self.conclude(index, pid, end, &outputs).await {
                Ended::Recycled => continue,
                Ended::Stopped => break,
                Ended::Died => {}
            }
            backoff.lived(started.elapsed());
            if !self.restart_allowed(index, &mut backoff).await {
                break;
            }
        }
        // A replacement a rolling restart started for it will not serve.
        self.discard_staged(index);
        // Whatever raced with the end (a restart refused, a failed start).
        let held = self.lanes[index].take_held(true);
        self.report_lost(held, &WorkerLost::pool_killed(index), &outputs);
    }

    /// Starts a replacement for worker `index`, retrying failed starts under
    /// the restart policy; `None` when the pool stops or the policy refuses.
    async fn start_replacement(
        &self,
        index: usize,
        backoff: &mut Backoff,
    ) -> Option<Option<Serving>> {
        if let Some(installed) = self.install_staged(index) {
            // Started (and initialised) by a rolling restart while the
            // previous process drained.
            return Some(installed);
        }
        loop {
            match self
                .launch_unless_stopped(&self.spec_for(index), index)
                .await?
            {
                Ok(launched) => return Some(self.install(index, launched)),
                Err(e) => {
                    self.emit(WorkerEvent::StartFailed {
                        worker: index,
                        error: e.to_string(),
                    });
                    if !self.restart_allowed(index, backoff).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Runs the worker's connection (reader here, writer and heartbeat as
    /// tasks of their own) until it ends; a worker that broke the protocol is
    /// killed.
    async fn serve(
        self: &Arc<Self>,
        index: usize,
        serving: Serving,
        outputs: &BatchSender<O>,
    ) -> ReadEnd {
        let Serving {
            pid,
            generation,
            reader,
            writer,
            exit,
            blobs,
        } = serving;
        let lane = &self.lanes[index];
        let (blob_tx, blob_rx) = match blobs {
            Some(channel) => (Some(channel.sender), Some(channel.receiver)),
            None => (None, None),
        };
        let writer_task = tokio::spawn(write_loop(lane.clone(), generation, writer, blob_tx));
        let heartbeat = self.tuning.heartbeat.map(|(interval, timeout)| {
            tokio::spawn(
                self.clone()
                    .heartbeat(index, pid, generation, interval, timeout),
            )
        });
        // A local worker's exit ends its connection even if a process it
        // forked still holds the connection open.
        let exited = async {
            let Some(exit) = &exit else {
                return std::future::pending().await;
            };
            exit.exited().await;
            // Its own end of the connection closed as it exited, and what it
            // wrote before is waiting to be read. Kill what is left of it (a
            // forked copy holding the connection), then read to the end of
            // the connection, or for a moment at most if it does not end.
            self.kill(index);
            tokio::time::sleep(EXITED_READ_GRACE).await;
            tracing::warn!(pool = %self.spec.pool_name, worker = index, pid, "the worker exited but its connection stayed open (a process it forked holds it): closing it");
        };
        let end = read_loop_until(
            lane.clone(),
            generation,
            reader,
            blob_rx,
            outputs.clone(),
            exited,
        )
        .await;
        writer_task.abort();
        if let Some(heartbeat) = heartbeat {
            heartbeat.abort();
        }
        if let ReadEnd::Broken(why) = &end {
            tracing::error!(pool = %self.spec.pool_name, worker = index, pid, error = %why, "closing the connection to a misbehaving worker");
            self.kill(index);
        }
        end
    }

    /// Collects the ended worker's exit status, reports the tasks it held,
    /// and emits the event that says how it ended.
    async fn conclude(
        &self,
        index: usize,
        pid: u32,
        end: ReadEnd,
        outputs: &BatchSender<O>,
    ) -> Ended {
        let lane = &self.lanes[index];
        let status = self.reap(index).await;
        let stopping = self.is_stopping();
        let recycled = lane.take_recycle_reason();
        let held = lane.take_held(stopping);
        let clean = matches!(end, ReadEnd::Bye) && status == ExitStatus::Code(0);
        let cause = self.loss_cause(index, lane, end, status);
        let lost = WorkerLost {
            worker: index,
            pid,
            status,
            cause: cause.clone(),
        };
        let lost_tasks = held.len();
        self.report_lost(held, &lost, outputs);
        let event = match (clean, recycled) {
            (true, Some(reason)) if !stopping => {
                self.emit(WorkerEvent::Recycled {
                    worker: index,
                    pid,
                    reason,
                });
                return Ended::Recycled;
            }
            (true, _) => WorkerEvent::Exited { worker: index, pid },
            (false, _) => WorkerEvent::Crashed {
                worker: index,
                pid,
                status,
                cause,
                lost_tasks,
            },
        };
        self.emit(event);
        if stopping || self.is_stopping() || lane.is_closed() {
            // The pool is shutting down, or this worker was removed.
            lane.take_held(true);
            return Ended::Stopped;
        }
        Ended::Died
    }

    /// Why worker `index`, whose connection ended with `end` and whose
    /// process ended with `status`, lost its tasks.
    fn loss_cause(
        &self,
        index: usize,
        lane: &Lane<O>,
        end: ReadEnd,
        status: ExitStatus,
    ) -> LossCause {
        let unresponsive = lane.unresponsive.swap(false, Ordering::SeqCst);
        let transport = crate::sync::lock(&self.children[index])
            .transport_cause
            .take();
        let cause = match (end, transport) {
            _ if unresponsive => LossCause::Unresponsive,
            (ReadEnd::Broken(why), _) => LossCause::Protocol(why),
            (_, Some(why)) if self.state.borrow().is_running() => LossCause::Transport(why),
            _ => self.state.borrow().loss_cause(),
        };
        if cause == LossCause::Crashed && self.out_of_memory(index, status) {
            return LossCause::OutOfMemory;
        }
        cause
    }

    /// Whether a worker that ended with `status` ran out of memory: it
    /// exited with the code its abort handler uses at its memory limit, or
    /// it died of a SIGKILL the pool did not send while the kernel's
    /// OOM-kill count rose (since the worker started).
    fn out_of_memory(&self, index: usize, status: ExitStatus) -> bool {
        let limited = match &self.spec.source {
            super::WorkerSource::Local(local) => local.memory_limit().is_some(),
            super::WorkerSource::Connector(_) => false,
        };
        match status {
            ExitStatus::Code(EXIT_OUT_OF_MEMORY) => limited,
            ExitStatus::Signal(libc::SIGKILL) => {
                let slot = crate::sync::lock(&self.children[index]);
                !slot.killed
                    && matches!(
                        (slot.oom_kills_at_start, crate::sys::oom_kills()),
                        (Some(before), Some(now)) if now > before
                    )
            }
            _ => false,
        }
    }

    /// Starts worker `index` from `spec`, unless the pool stops first
    /// (then `None`).
    pub(super) async fn launch_unless_stopped(
        &self,
        spec: &super::LaunchSpec,
        index: usize,
    ) -> Option<Result<Launched, crate::StartError>> {
        let mut state = self.state.subscribe();
        tokio::select! {
            launched = launch(spec, index) => Some(launched),
            _ = state.wait_for(|s| !s.is_running()) => None,
        }
    }

    /// Applies the restart policy; sleeps the back-off when a restart is allowed.
    pub(super) async fn restart_allowed(&self, index: usize, backoff: &mut Backoff) -> bool {
        if !self.policy.restart || self.is_stopping() {
            self.lanes[index].take_held(true);
            return false;
        }
        let recorded = crate::sync::lock(&self.restarts).try_record(&self.policy, Instant::now());
        if !recorded {
            self.fail(format!(
                "more than {} worker restarts within {:?}: the pool stopped itself",
                self.policy.max_restarts, self.policy.window
            ));
            return false;
        }
        let (attempt, delay) = backoff.next(&self.policy);
        self.emit(WorkerEvent::Restarting {
            worker: index,
            attempt,
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
                        slot.transport_cause = child.loss_cause();
                        slot.child = None;
                        return status;
                    }
                    Ok(None) if Instant::now() > grace => {
                        child.kill();
                        slot.killed = true;
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
