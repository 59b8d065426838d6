//! Supervision: one driver task per worker index starts the process, serves
//! its connection, notices its end, reports the fate of every task it held,
//! and starts a replacement under the restart policy.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::error::WorkerLost;
use crate::event::{ExitStatus, LossCause, WorkerEvent};
use crate::output::Output;
use crate::parent::connection::{read_loop, write_loop, ReadEnd};
use crate::parent::lane::{CallOutcome, Held, Lane, Retry};
use crate::parent::outputs::{Batch, BatchSender};
use crate::transport::Peer;

pub(crate) mod launch;

pub(crate) use launch::{launch, spawn_guarded, ConnectorRef, LaunchSpec, Launched};

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

/// Supervision settings beyond the restart policy.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tuning {
    /// Ping interval and the silence after which a worker is replaced.
    pub(crate) heartbeat: Option<(Duration, Duration)>,
    /// Recycle a worker after about this many tasks.
    pub(crate) recycle_tasks: Option<u64>,
}

pub(crate) type EventHook = Arc<dyn Fn(&WorkerEvent) + Send + Sync>;

/// The current process of a worker index, shared so that a kill (from a
/// shutdown deadline or a dropped pool) can reach it.
#[derive(Default)]
pub(crate) struct ChildSlot {
    child: Option<Box<dyn Peer>>,
    pid: u32,
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
    pub(crate) tuning: Tuning,
    pub(crate) on_event: Option<EventHook>,
    children: Vec<Mutex<ChildSlot>>,
    stopping: AtomicBool,
    /// Becomes true with `stopping`, for starts to wait on: a connector
    /// may wait long for a worker to join.
    stopped: watch::Sender<bool>,
    deadline_hit: AtomicBool,
    dropped: AtomicBool,
    failure: Mutex<Option<String>>,
    restarts: Mutex<VecDeque<Instant>>,
    /// Number of driver tasks still running.
    alive: watch::Sender<usize>,
    /// Which worker indices have a running driver.
    running: Mutex<Vec<bool>>,
    /// Workers in use: lanes from this index on are spare or retired.
    pub(crate) active: AtomicUsize,
    /// For the drivers of workers added later; weak, so that the output
    /// stream still ends when the last driver ends.
    outputs: Mutex<Option<mpsc::WeakUnboundedSender<Batch<O>>>>,
    /// Serialises resizes.
    resizing: tokio::sync::Mutex<()>,
}

impl<O> fmt::Debug for Supervisor<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("workers", &self.lanes.len())
            .finish_non_exhaustive()
    }
}

/// Decrements the live driver count however the driver ends.
struct AliveGuard<O: serde::de::DeserializeOwned + Send + 'static> {
    sup: Arc<Supervisor<O>>,
    index: usize,
}

impl<O: serde::de::DeserializeOwned + Send + 'static> Drop for AliveGuard<O> {
    fn drop(&mut self) {
        crate::sync::lock(&self.sup.running)[self.index] = false;
        self.sup.alive.send_modify(|n| *n -= 1);
    }
}

impl<O: serde::de::DeserializeOwned + Send + 'static> Supervisor<O> {
    pub(crate) fn new(
        lanes: Arc<[Arc<Lane<O>>]>,
        spec: LaunchSpec,
        policy: RestartPolicy,
        tuning: Tuning,
        on_event: Option<EventHook>,
    ) -> Self {
        let children_len = lanes.len();
        let children = (0..children_len).map(|_| Mutex::default()).collect();
        Supervisor {
            lanes,
            spec,
            policy,
            tuning,
            on_event,
            children,
            stopping: AtomicBool::new(false),
            stopped: watch::Sender::new(false),
            deadline_hit: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            failure: Mutex::new(None),
            restarts: Mutex::new(VecDeque::new()),
            alive: watch::Sender::new(0),
            running: Mutex::new(vec![false; children_len]),
            active: AtomicUsize::new(0),
            outputs: Mutex::new(None),
            resizing: tokio::sync::Mutex::new(()),
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
        crate::sync::lock(&self.outputs).get_or_insert_with(|| outputs.downgrade());
        crate::sync::lock(&self.running)[index] = true;
        self.alive.send_modify(|n| *n += 1);
        let guard = AliveGuard {
            sup: self.clone(),
            index,
        };
        let sup = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            sup.drive(index, serving, outputs).await;
        });
    }

    /// Records a started worker's process and opens its lane.
    fn install(&self, index: usize, launched: Launched) -> Option<Serving> {
        let Launched {
            peer,
            pid,
            reader,
            writer,
        } = launched;
        {
            let mut slot = crate::sync::lock(&self.children[index]);
            slot.child = Some(peer);
            slot.pid = pid;
        }
        let recycle_at = self
            .tuning
            .recycle_tasks
            .map(|n| jittered(n, pid.into()).max(1));
        let generation = self.lanes[index].open(pid, recycle_at, self.spec.output_credits)?;
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
            let stopping = self.stopping.load(Ordering::SeqCst);
            let recycled = lane.take_recycle_reason();
            let held = lane.take_held(stopping);
            let clean = matches!(end, ReadEnd::Bye) && status == ExitStatus::Code(0);
            let unresponsive = lane.unresponsive.swap(false, Ordering::SeqCst);
            let cause = match end {
                _ if unresponsive => LossCause::Unresponsive,
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
            if stopping || self.stopping.load(Ordering::SeqCst) || lane.is_closed() {
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
    async fn launch_unless_stopped(
        &self,
        index: usize,
    ) -> Option<Result<Launched, crate::StartError>> {
        let mut stopped = self.stopped.subscribe();
        tokio::select! {
            launched = launch(&self.spec, index) => Some(launched),
            _ = stopped.wait_for(|s| *s) => None,
        }
    }

    /// Pings the worker every `interval`; kills it when it has not answered
    /// for `timeout` (its loop is stuck), so that it is replaced.
    async fn heartbeat(
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
                self.emit(WorkerEvent::Unresponsive {
                    worker: index,
                    pid,
                    silent_for,
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

    /// Reports every held task as lost (calls get the error, submitted tasks
    /// become `Lost` items), or re-sends it to a live worker when the retry
    /// policy allows.
    fn report_lost(&self, held: Vec<Held<O>>, lost: &WorkerLost, outputs: &BatchSender<O>) {
        let mut items = Vec::new();
        let mut reported = 0;
        for task in held {
            match task.retry {
                Some(retry)
                    if retry.attempts < self.lanes[lost.worker].retries()
                        && !self.stopping.load(Ordering::SeqCst) =>
                {
                    tracing::debug!(task = %task.id, attempt = retry.attempts + 1, "re-sending a lost task");
                    let target = self.retry_target(lost.worker);
                    tokio::spawn(resend(
                        target,
                        task.id,
                        retry,
                        task.call,
                        lost.clone(),
                        outputs.clone(),
                    ));
                }
                _ => match task.call {
                    Some(tx) => {
                        reported += 1;
                        let _ = tx.send(CallOutcome::Lost(lost.clone()));
                    }
                    None => items.push(Output::Lost {
                        task: task.id,
                        lost: Box::new(lost.clone()),
                    }),
                },
            }
        }
        reported += items.len() as u64;
        if reported > 0 {
            self.lanes[lost.worker].obs.count_lost(reported);
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

    /// A live worker other than `dead` to re-send its tasks to (or the next
    /// one, which will be waited for, when none is up).
    fn retry_target(&self, dead: usize) -> Arc<Lane<O>> {
        let n = self.active.load(Ordering::Relaxed).max(1);
        (1..=n)
            .map(|step| &self.lanes[(dead + step) % n])
            .find(|lane| lane.is_up())
            .unwrap_or(&self.lanes[(dead + 1) % n])
            .clone()
    }

    /// Samples each worker's resident memory and recycles those above the
    /// limit (each with its own jitter, so they do not recycle together).
    pub(crate) fn spawn_memory_watch(self: &Arc<Self>, limit: u64) {
        let sup = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(sup) = sup.upgrade() else { return };
                if sup.stopping.load(Ordering::SeqCst) {
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
        !self.stopping.load(Ordering::SeqCst)
    }

    /// Marks the pool failed and stops every worker.
    fn fail(&self, reason: String) {
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

    /// Sends SIGKILL to worker `index`'s current process, if any.
    pub(crate) fn kill(&self, index: usize) {
        let mut slot = crate::sync::lock(&self.children[index]);
        if let Some(child) = &mut slot.child {
            child.kill();
        }
    }

    /// The current pid of worker `index`, if it runs.
    pub(crate) fn pid(&self, index: usize) -> Option<u32> {
        let slot = crate::sync::lock(&self.children[index]);
        slot.child.as_ref().map(|_| slot.pid)
    }

    /// Waits for worker `index`'s process to end and collects its status. A
    /// process that closed its connection but lingers is killed after a grace
    /// period.
    async fn reap(&self, index: usize) -> ExitStatus {
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

/// `value` moved by up to ±10 %, decided by `seed`.
pub(crate) fn jittered(value: u64, seed: u64) -> u64 {
    // A multiplicative hash spreads consecutive seeds (pids) apart.
    let h = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    let permille = 900 + h % 201;
    value / 1000 * permille + value % 1000 * permille / 1000
}

/// Re-sends a lost task to `lane`, waiting for room; reports it lost if the
/// pool closes first.
async fn resend<O>(
    lane: Arc<Lane<O>>,
    id: crate::pool::TaskId,
    retry: Retry,
    mut call: Option<crate::parent::lane::CallSender<O>>,
    lost: WorkerLost,
    outputs: BatchSender<O>,
) {
    use crate::parent::lane::PushError;
    loop {
        match lane.try_push_retry(id, &retry.payload, retry.attempts + 1, call) {
            Ok(_) => return,
            Err((PushError::Full | PushError::Down, back)) => {
                call = back;
                lane.wait_for_space().await;
            }
            Err((_, back)) => {
                match back {
                    Some(tx) => {
                        let _ = tx.send(CallOutcome::Lost(lost));
                    }
                    None => {
                        let items = vec![Output::Lost {
                            task: id,
                            lost: Box::new(lost.clone()),
                        }];
                        let _ = outputs.send(Batch {
                            worker: lost.worker,
                            generation: 0,
                            credits: 0,
                            items,
                        });
                    }
                }
                return;
            }
        }
    }
}
