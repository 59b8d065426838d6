//! Supervision: one driver task per worker index starts the process, serves
//! its connection, notices its end, reports the fate of every task it held,
//! and starts a replacement under the restart policy.

use std::collections::VecDeque;
use std::fmt;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::{ExitStatus, LossCause, WorkerLost};
use crate::pool::connection::{read_loop, write_loop, ReadEnd};
use crate::pool::lane::{CallOutcome, Held, Lane};
use crate::pool::outputs::{Batch, BatchSender, Output};

pub(crate) mod launch;

pub(crate) use launch::{launch, LaunchSpec, Launched};

/// What happened to a worker process, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerEvent {
    /// A worker process completed its handshake and initialiser.
    Started {
        /// Index of the worker.
        worker: usize,
        /// Its process id.
        pid: u32,
    },
    /// A worker exited cleanly after the pool asked it to stop.
    Exited {
        /// Index of the worker.
        worker: usize,
        /// Its process id.
        pid: u32,
    },
    /// A worker ended without being asked to (or was killed by the pool).
    Crashed {
        /// Index of the worker.
        worker: usize,
        /// Its process id.
        pid: u32,
        /// How the process ended.
        status: ExitStatus,
        /// Why the pool gave up on it.
        cause: LossCause,
        /// How many tasks it held, each reported lost.
        lost_tasks: usize,
    },
    /// A replacement for a worker is about to start, after `delay`.
    Restarting {
        /// Index of the worker.
        worker: usize,
        /// Restarts of this index so far, this one included.
        attempt: u32,
        /// The back-off before the start.
        delay: Duration,
    },
    /// A replacement worker could not start (its initialiser failed, say).
    StartFailed {
        /// Index of the worker.
        worker: usize,
        /// Why.
        error: String,
    },
    /// Too many restarts in the policy's window: the pool stopped itself.
    PoolFailed {
        /// Why.
        reason: String,
    },
}

/// When and how fast the pool replaces workers that die.
///
/// Modelled on Erlang/OTP's restart intensity: more than `max_restarts`
/// restarts within `window` (counted over the whole pool) mean something is
/// deeply wrong, and the pool fails instead of looping.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartPolicy {
    /// Whether dead workers are replaced at all.
    pub restart: bool,
    /// Most restarts allowed within `window`.
    pub max_restarts: u32,
    /// The window over which restarts are counted.
    pub window: Duration,
    /// Delay before the first restart of a worker; doubles for each restart
    /// of the same worker that follows a short life.
    pub backoff_initial: Duration,
    /// The longest delay.
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            restart: true,
            max_restarts: 10,
            window: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(2),
        }
    }
}

impl RestartPolicy {
    /// Never replace a dead worker: the pool runs on with fewer.
    pub fn never() -> Self {
        RestartPolicy {
            restart: false,
            ..Self::default()
        }
    }

    /// Replace workers, allowing at most `max_restarts` within `window`.
    pub fn intensity(max_restarts: u32, window: Duration) -> Self {
        RestartPolicy {
            max_restarts,
            window,
            ..Self::default()
        }
    }

    /// Sets the back-off: `initial` doubling up to `max`.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }
}

pub(crate) type EventHook = Arc<dyn Fn(&WorkerEvent) + Send + Sync>;

/// The current process of a worker index, shared so that a kill (from a
/// shutdown deadline or a dropped pool) can reach it.
#[derive(Debug, Default)]
pub(crate) struct ChildSlot {
    child: Option<Child>,
    /// Set when someone else reaped the child.
    reaped: Option<ExitStatus>,
}

/// A worker whose lane is open, ready to be served.
struct Serving {
    pid: u32,
    generation: u64,
    reader: crate::transport::FrameReader,
    writer: crate::transport::WriteHalf,
}

/// State shared by the pool handle and the driver tasks.
pub(crate) struct Supervisor<O> {
    pub(crate) lanes: Arc<[Arc<Lane<O>>]>,
    pub(crate) spec: LaunchSpec,
    pub(crate) policy: RestartPolicy,
    pub(crate) on_event: Option<EventHook>,
    children: Vec<Mutex<ChildSlot>>,
    stopping: AtomicBool,
    deadline_hit: AtomicBool,
    dropped: AtomicBool,
    failure: Mutex<Option<String>>,
    restarts: Mutex<VecDeque<Instant>>,
    /// Number of driver tasks still running.
    alive: watch::Sender<usize>,
}

impl<O> fmt::Debug for Supervisor<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("workers", &self.lanes.len())
            .finish_non_exhaustive()
    }
}

/// Decrements the live driver count however the driver ends.
struct AliveGuard(watch::Sender<usize>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl<O: serde::de::DeserializeOwned + Send + 'static> Supervisor<O> {
    pub(crate) fn new(
        lanes: Arc<[Arc<Lane<O>>]>,
        spec: LaunchSpec,
        policy: RestartPolicy,
        on_event: Option<EventHook>,
    ) -> Self {
        let children = (0..lanes.len()).map(|_| Mutex::default()).collect();
        Supervisor {
            lanes,
            spec,
            policy,
            on_event,
            children,
            stopping: AtomicBool::new(false),
            deadline_hit: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            failure: Mutex::new(None),
            restarts: Mutex::new(VecDeque::new()),
            alive: watch::Sender::new(0),
        }
    }

    fn emit(&self, event: WorkerEvent) {
        match &event {
            WorkerEvent::Crashed {
                worker,
                pid,
                status,
                cause,
                lost_tasks,
            } => {
                tracing::error!(pool = %self.spec.pool_name, worker, pid, %status, %cause, lost_tasks, "worker died")
            }
            WorkerEvent::StartFailed { worker, error } => {
                tracing::error!(pool = %self.spec.pool_name, worker, %error, "worker failed to start")
            }
            WorkerEvent::PoolFailed { reason } => {
                tracing::error!(pool = %self.spec.pool_name, %reason, "pool failed")
            }
            other => tracing::debug!(pool = %self.spec.pool_name, event = ?other, "worker event"),
        }
        if let Some(hook) = &self.on_event {
            hook(&event);
        }
    }

    /// Starts the driver of worker `index`, serving `launched`. The lane is
    /// open when this returns.
    pub(crate) fn spawn_driver(
        self: &Arc<Self>,
        index: usize,
        launched: Launched,
        outputs: BatchSender<O>,
    ) {
        let serving = self.install(index, launched);
        self.alive.send_modify(|n| *n += 1);
        let guard = AliveGuard(self.alive.clone());
        let sup = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            sup.drive(index, serving, outputs).await;
        });
    }

    /// Records a started worker's process and opens its lane.
    fn install(&self, index: usize, launched: Launched) -> Option<Serving> {
        let Launched {
            child,
            pid,
            reader,
            writer,
        } = launched;
        self.children[index]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .child = Some(child);
        let generation = self.lanes[index].open(pid)?;
        if self.stopping.load(Ordering::SeqCst) {
            // A shutdown began while this worker was starting.
            self.lanes[index].stop();
        }
        self.emit(WorkerEvent::Started { worker: index, pid });
        Some(Serving {
            pid,
            generation,
            reader,
            writer,
        })
    }

    async fn drive(self: Arc<Self>, index: usize, first: Option<Serving>, outputs: BatchSender<O>) {
        let lane = self.lanes[index].clone();
        let mut next = Some(first);
        let mut attempt = 0u32;
        let mut short_lives = 0u32;
        loop {
            let installed = match next.take() {
                Some(s) => s,
                None => match launch(&self.spec, index).await {
                    Ok(l) => self.install(index, l),
                    Err(e) => {
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
            self.emit(WorkerEvent::Started { worker: index, pid });

            let writer_task = tokio::spawn(write_loop(lane.clone(), generation, writer));
            let end = read_loop(lane.clone(), generation, reader, outputs.clone()).await;
            writer_task.abort();
            if let ReadEnd::Broken(why) = &end {
                tracing::error!(pool = %self.spec.pool_name, worker = index, pid, error = %why, "closing the connection to a misbehaving worker");
                self.kill(index);
            }
            let status = self.reap(index).await;
            let stopping = self.stopping.load(Ordering::SeqCst);
            let held = lane.take_held(stopping);
            let clean = matches!(end, ReadEnd::Bye) && status == ExitStatus::Code(0);
            let cause = match end {
                ReadEnd::Broken(why) => LossCause::Protocol(why),
                _ if self.dropped.load(Ordering::SeqCst) => LossCause::PoolKilled,
                _ if self.deadline_hit.load(Ordering::SeqCst) => LossCause::ShutdownDeadline,
                _ => LossCause::Crashed,
            };
            let lost = WorkerLost {
                worker: index,
                pid,
                status,
                cause: cause.clone(),
            };
            let lost_tasks = held.len();
            report_lost(held, &lost, &outputs);
            if clean {
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
            if stopping || self.stopping.load(Ordering::SeqCst) {
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
            report_lost(held, &lost, &outputs);
        }
    }

    /// Applies the restart policy; sleeps the back-off when a restart is allowed.
    async fn restart_allowed(
        &self,
        index: usize,
        attempt: &mut u32,
        short_lives: &mut u32,
    ) -> bool {
        if !self.policy.restart || self.stopping.load(Ordering::SeqCst) {
            self.lanes[index].take_held(true);
            return false;
        }
        {
            let mut restarts = self.restarts.lock().unwrap_or_else(|e| e.into_inner());
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
        !self.stopping.load(Ordering::SeqCst)
    }

    /// Marks the pool failed and stops every worker.
    fn fail(&self, reason: String) {
        {
            let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
            if failure.is_some() {
                return;
            }
            *failure = Some(reason.clone());
        }
        self.emit(WorkerEvent::PoolFailed { reason });
        self.stopping.store(true, Ordering::SeqCst);
        for lane in self.lanes.iter() {
            lane.stop();
        }
        for index in 0..self.lanes.len() {
            self.kill(index);
        }
    }

    /// Why the pool failed, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sends SIGKILL to worker `index`'s current process, if any.
    pub(crate) fn kill(&self, index: usize) {
        let slot = self.children[index]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(child) = &slot.child {
            let _ = crate::sys::kill(child.id(), libc::SIGKILL);
        }
    }

    /// The current pid of worker `index`, if it runs.
    pub(crate) fn pid(&self, index: usize) -> Option<u32> {
        let slot = self.children[index]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        slot.child.as_ref().map(Child::id)
    }

    /// Waits for worker `index`'s process to end and collects its status. A
    /// process that closed its connection but lingers is killed after a grace
    /// period.
    async fn reap(&self, index: usize) -> ExitStatus {
        let grace = Instant::now() + Duration::from_secs(2);
        let mut pause = Duration::from_micros(200);
        loop {
            {
                let mut slot = self.children[index]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let Some(child) = slot.child.as_mut() else {
                    return slot.reaped.take().unwrap_or(ExitStatus::Unknown);
                };
                match child.try_wait() {
                    Ok(Some(status)) => {
                        slot.child = None;
                        return status.into();
                    }
                    Ok(None) if Instant::now() > grace => {
                        let _ = child.kill();
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

    /// Asks every worker to stop behind its queued tasks and waits until all
    /// have exited; after `deadline`, kills those still running.
    pub(crate) async fn shutdown(&self, deadline: Option<Duration>) -> bool {
        self.stopping.store(true, Ordering::SeqCst);
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
        for lane in self.lanes.iter() {
            lane.stop();
        }
        for slot in &self.children {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(mut child) = slot.child.take() {
                let _ = child.kill();
                // Reap at once, so no zombie outlives the pool.
                slot.reaped = child.wait().ok().map(ExitStatus::from);
            }
        }
    }
}

/// Reports every held task as lost: calls get the error, submitted tasks
/// become `Lost` items in the output stream.
fn report_lost<O>(held: Vec<Held<O>>, lost: &WorkerLost, outputs: &BatchSender<O>) {
    let mut items = Vec::new();
    for task in held {
        match task.call {
            Some(tx) => {
                let _ = tx.send(CallOutcome::Lost(lost.clone()));
            }
            None => items.push(Output::Lost {
                task: task.id,
                lost: lost.clone(),
            }),
        }
    }
    if !items.is_empty() {
        let _ = outputs.send(Batch {
            worker: lost.worker,
            generation: 0,
            credits: 0,
            items,
        });
    }
}
