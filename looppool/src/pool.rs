//! The parent's side: the [`Pool`] handle and its operations.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::{CallError, SubmitError, SubmitErrorKind};
use crate::supervisor::Supervisor;
use crate::worker::Worker;

mod builder;
mod control;
mod ops;
mod send;
mod task;

pub use crate::output::Output;
pub use crate::parent::outputs::Outputs;
pub use crate::task_id::TaskId;
pub use builder::{
    PoolBuilder, Signals, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_UNREAD_OUTPUTS_WARNING,
};
pub(crate) use control::Control;
pub use control::{BlockedCancel, Dispatch, DEFAULT_CANCEL_GRACE};
pub use task::TaskBuilder;

use crate::parent::lane::{self, CallOutcome, Lane, PushError};
use crate::parent::space::AnySpace;
use crate::protocol::kind;
use send::{sending_span, try_push_here};

/// What [`Pool::shutdown_timeout`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// True when every worker drained and exited before the deadline.
    pub drained: bool,
    /// Why the pool had failed before the shutdown, if it had.
    pub failure: Option<String>,
}

/// A pool of worker processes, each running a [`Worker`] on its own event loop.
///
/// Start one with [`Pool::builder`]. The handle is cheap to clone and can be
/// used from any task or thread of the parent's runtime.
///
/// # Dropping
/// When the last handle is dropped without [`shutdown`](Pool::shutdown), the
/// workers are killed (SIGKILL) and reaped at once; the tasks they held are
/// reported [lost](Output::Lost) in the output stream.
pub struct Pool<W: Worker> {
    inner: Arc<Inner<W::Output>>,
    _worker: PhantomData<fn() -> W>,
}

impl<W: Worker> Clone for Pool<W> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
            _worker: PhantomData,
        }
    }
}

impl<W: Worker> fmt::Debug for Pool<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.inner.sup.spec.pool_name)
            .field("workers", &self.inner.lanes.len())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner<O: serde::de::DeserializeOwned + Send + 'static> {
    pub(crate) lanes: Arc<[Arc<Lane<O>>]>,
    pub(crate) sup: Arc<Supervisor<O>>,
    /// Where the pool's figures go; its tasks end when it is dropped.
    hub: Arc<crate::metrics::Hub>,
    /// The next worker for round-robin sends.
    next: AtomicUsize,
    /// Wakes round-robin senders that found every worker full.
    space: Arc<AnySpace>,
    /// Dispatch policy and cancellation settings.
    control: Control,
    /// The control socket, if on; dropped (and removed) with the pool.
    control_socket: Option<crate::control::Handle>,
}

impl<O: serde::de::DeserializeOwned + Send + 'static> Drop for Inner<O> {
    fn drop(&mut self) {
        self.sup.kill_all_now();
    }
}

impl<W: Worker> Pool<W> {
    /// A builder for a pool of `W` workers.
    pub fn builder() -> PoolBuilder<W> {
        PoolBuilder::new()
    }

    pub(crate) fn from_parts(
        lanes: Arc<[Arc<Lane<W::Output>>]>,
        sup: Arc<Supervisor<W::Output>>,
        hub: Arc<crate::metrics::Hub>,
        space: Arc<AnySpace>,
        control: Control,
        control_socket: Option<crate::control::Handle>,
    ) -> Self {
        Pool {
            inner: Arc::new(Inner {
                lanes,
                sup,
                hub,
                next: AtomicUsize::new(0),
                space,
                control,
                control_socket,
            }),
            _worker: PhantomData,
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.inner.sup.active.load(Ordering::Relaxed)
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.sup.spec.pool_name
    }

    /// The process id of each worker, `None` while one is being replaced.
    pub fn pids(&self) -> Vec<Option<u32>> {
        (0..self.workers()).map(|i| self.inner.sup.pid(i)).collect()
    }

    /// Tasks queued or running on each worker.
    pub fn in_flight(&self) -> Vec<usize> {
        self.inner.lanes[..self.workers()]
            .iter()
            .map(|l| l.in_flight())
            .collect()
    }

    /// The per-worker bound on queued plus running tasks.
    pub fn worker_capacity(&self) -> usize {
        self.inner.lanes.first().map_or(0, |l| l.capacity())
    }

    /// A snapshot of the pool's figures: per worker and in all, the tasks in
    /// flight, done, failed and lost, restarts, blocked-loop episodes,
    /// dropped log events, and each worker's last resource report (see
    /// [`PoolBuilder::report_interval`]).
    ///
    /// ```no_run
    /// # async fn demo(pool: looppool::Pool<impl looppool::Worker>) {
    /// let stats = pool.stats();
    /// for w in &stats.workers {
    ///     if let Some(r) = &w.last_report {
    ///         println!("worker {}: cpu {:.2}, rss {} bytes", w.worker, r.cpu, r.rss_bytes);
    ///     }
    /// }
    /// println!("{} in flight, {} done, {} failed", stats.in_flight, stats.done, stats.failed);
    /// # }
    /// ```
    pub fn stats(&self) -> crate::PoolStats {
        snapshot(&self.inner.sup)
    }

    /// The address the Prometheus endpoint listens on (see
    /// `PoolBuilder::prometheus`, with the `prometheus` feature), or `None`
    /// when it is off.
    pub fn prometheus_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.hub.prometheus_addr()
    }

    /// A `prometheus-client` collector of this pool's figures, to register
    /// in the application's own registry, so that they are scraped with its
    /// other metrics rather than from a port of their own (with the
    /// `prometheus` feature; see [`PoolCollector`](crate::metrics::PoolCollector)).
    ///
    /// Each scrape encodes a fresh [`stats`](Self::stats) snapshot in the
    /// same families as the `PoolBuilder::prometheus` endpoint. The
    /// collector holds only a weak reference: it does not keep the pool
    /// alive, and after the pool is dropped it encodes nothing.
    #[cfg(feature = "prometheus")]
    pub fn prometheus_collector(&self) -> crate::metrics::PoolCollector {
        let inner = Arc::downgrade(&self.inner);
        let sup = Arc::downgrade(&self.inner.sup);
        crate::metrics::PoolCollector::new(move || {
            // Never upgrade the handle itself: the last one dropped during a
            // scrape would then be dropped (and kill the workers) here.
            if inner.strong_count() == 0 {
                return None;
            }
            sup.upgrade().map(|sup| snapshot(&sup))
        })
    }

    /// Why the pool failed (too many restarts), if it did.
    pub fn failure(&self) -> Option<String> {
        self.inner.sup.failure()
    }

    fn lane(&self, worker: usize) -> Result<&Arc<Lane<W::Output>>, SubmitErrorKind> {
        let workers = self.workers();
        if worker >= workers {
            return Err(SubmitErrorKind::NoSuchWorker { worker, workers });
        }
        Ok(&self.inner.lanes[worker])
    }

    /// Round-robin choice: the next worker in turn that is running and had
    /// room when last tried. Workers being replaced, and workers whose
    /// queue a send found full (until the reader frees a slot), are skipped
    /// without taking their lock, unless all are.
    fn pick(&self) -> usize {
        let n = self.workers().max(1);
        // A relaxed load and store, not a read-modify-write: two racing
        // submitters may pick the same worker, which only evens out later.
        // `next` is the last pick plus one, so at most `n` unless the pool
        // shrank: it wraps by comparison, cheaper than a division per task.
        let start = self.inner.next.load(Ordering::Relaxed);
        let start = if start < n { start } else { 0 };
        let mut index = start;
        let mut candidate = start;
        for _ in 0..n {
            if self.inner.lanes[candidate].has_room() {
                index = candidate;
                break;
            }
            candidate += 1;
            if candidate == n {
                candidate = 0;
            }
        }
        self.inner.next.store(index + 1, Ordering::Relaxed);
        index
    }

    /// Sends a task to the next worker in turn, skipping a worker whose
    /// queue is full while another has room, and waiting while none has.
    ///
    /// Returns the task's id; the task's outputs, or its failure, arrive in
    /// the [`Outputs`] stream.
    ///
    /// # Errors
    /// The task is given back if the pool is shutting down or failed, or the
    /// task cannot be encoded or exceeds the frame limit.
    ///
    /// # Panics
    /// When the task's `Serialize` panics, as would any code of the caller:
    /// nothing of the task was sent, and the worker's queue goes on. So do
    /// every other method that sends a task (`call` included); a panic is a
    /// bug in the task's type, not an error to handle, so it is not turned
    /// into one.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it completes, the task
    /// was not sent.
    pub async fn submit(&self, task: W::Task) -> Result<TaskId, SubmitError<W::Task>> {
        let worker = self.choose();
        // The common case without the waiting machinery: the worker has a
        // free slot, and the task is pushed synchronously. The nested
        // futures of `push_round_robin` and `push` (their moves, state
        // dispatch and drops) were a measurable share of the parent's
        // per-task work.
        if let Ok(lane) = self.lane(worker) {
            if lane.take_yield_due() {
                // Before the push: a future dropped here has sent nothing.
                tokio::task::yield_now().await;
            }
            match try_push_here(lane, &task) {
                Ok(id) => return Ok(id),
                Err((e @ PushError::Codec(_), _)) => {
                    return Err(SubmitError::new(e.into_kind(), task))
                }
                // Full, restarting or closed: the waiting path decides.
                Err(_) => {}
            }
        }
        self.submit_waiting(task).await
    }

    /// `submit` when its worker had no room: waits for any worker's.
    async fn submit_waiting(&self, task: W::Task) -> Result<TaskId, SubmitError<W::Task>> {
        let span = sending_span();
        self.push_any(kind::TASK, &task, None, span.as_ref())
            .await
            .map(|(id, _)| id)
            .map_err(|(kind, _)| SubmitError::new(kind, task))
    }

    /// Sends a task to the next worker in turn that has room; a worker whose
    /// queue is full is skipped.
    ///
    /// # Errors
    /// A [full](SubmitError::is_full) error, with the task inside, when
    /// every worker's queue is at its bound; otherwise as
    /// [`submit`](Self::submit).
    pub fn try_submit(&self, task: W::Task) -> Result<TaskId, SubmitError<W::Task>> {
        match self.try_push_any(kind::TASK, &task, None, sending_span().as_ref()) {
            Ok((id, _)) => Ok(id),
            Err((kind, _)) => Err(SubmitError::new(kind, task)),
        }
    }

    /// Sends a task to worker `worker`, waiting while its queue is full (or
    /// while it is being replaced). Tasks sent to one worker start in the
    /// order they were sent.
    ///
    /// # Errors
    /// As [`submit`](Self::submit), and when there is no such worker.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`submit`](Self::submit).
    pub async fn submit_to(
        &self,
        worker: usize,
        task: W::Task,
    ) -> Result<TaskId, SubmitError<W::Task>> {
        self.push(worker, kind::TASK, &task, None, sending_span().as_ref())
            .await
            .map_err(|(e, _)| SubmitError::new(e, task))
    }

    /// Sends a task to worker `worker` if its queue has room.
    ///
    /// # Errors
    /// As [`try_submit`](Self::try_submit), and when there is no such worker.
    pub fn try_submit_to(
        &self,
        worker: usize,
        task: W::Task,
    ) -> Result<TaskId, SubmitError<W::Task>> {
        let lane = match self.lane(worker) {
            Ok(lane) => lane,
            Err(kind) => return Err(SubmitError::new(kind, task)),
        };
        match lane.try_push(&task, None, sending_span().as_ref()) {
            Ok(id) => Ok(id),
            Err((e, _)) => Err(SubmitError::new(e.into_kind(), task)),
        }
    }

    /// Sends one copy of `task` to every worker, each behind the tasks
    /// already sent to that worker. Returns the ids of the copies, in worker
    /// order.
    ///
    /// # Errors
    /// As [`submit_to`](Self::submit_to). If it fails part-way, the copies
    /// already sent stay sent; the error names the cause.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future part-way leaves some workers
    /// with a copy and others without.
    pub async fn broadcast(&self, task: W::Task) -> Result<Vec<TaskId>, SubmitError<W::Task>> {
        let mut ids = Vec::with_capacity(self.workers());
        let span = sending_span();
        for worker in 0..self.workers() {
            match self
                .push(worker, kind::TASK, &task, None, span.as_ref())
                .await
            {
                Ok(id) => ids.push(id),
                Err((kind, _)) => return Err(SubmitError::new(kind, task)),
            }
        }
        Ok(ids)
    }

    /// Sends a task to the next worker in turn and waits for its reply: the
    /// first output its handler emits, delivered when the task completes.
    /// Later outputs of the same task go to the [`Outputs`] stream.
    ///
    /// # Errors
    /// [`CallError`] says whether the task was not sent (the task is inside),
    /// failed, completed without a reply, or was lost with its worker.
    ///
    /// # Cancel safety
    /// Dropping the future after the task was sent cancels the task, as
    /// [`cancel`](Self::cancel) does (nobody waits for its reply any more),
    /// and frees its slot once its worker has dropped it. To let it run on,
    /// with its reply discarded, send it with
    /// [`pool.task(task).detach().call()`](TaskBuilder::detach). Dropped
    /// before the task was sent, nothing was sent.
    pub async fn call(&self, task: W::Task) -> Result<W::Output, CallError<W::Task>> {
        let (tx, rx) = oneshot::channel();
        match self
            .push_any(kind::TASK, &task, Some(tx), sending_span().as_ref())
            .await
        {
            Ok((id, worker)) => self.reply(rx, worker, id, true).await,
            Err((kind, _)) => Err(CallError::Submit(SubmitError::new(kind, task))),
        }
    }

    /// Like [`call`](Self::call), on worker `worker`.
    ///
    /// # Errors
    /// As [`call`](Self::call).
    ///
    /// # Cancel safety
    /// As [`call`](Self::call).
    pub async fn call_to(
        &self,
        worker: usize,
        task: W::Task,
    ) -> Result<W::Output, CallError<W::Task>> {
        let (tx, rx) = oneshot::channel();
        let id = match self
            .push(worker, kind::TASK, &task, Some(tx), sending_span().as_ref())
            .await
        {
            Ok(id) => id,
            Err((kind, _)) => return Err(CallError::Submit(SubmitError::new(kind, task))),
        };
        self.reply(rx, worker, id, true).await
    }

    /// Waits for the reply of called task `id`; a future dropped meanwhile
    /// cancels the task when `cancel_on_drop`.
    async fn reply(
        &self,
        rx: oneshot::Receiver<CallOutcome<W::Output>>,
        worker: usize,
        id: TaskId,
        cancel_on_drop: bool,
    ) -> Result<W::Output, CallError<W::Task>> {
        let mut guard = task::CancelOnDrop {
            pool: self,
            id,
            armed: cancel_on_drop,
        };
        let outcome = rx.await;
        guard.armed = false;
        match outcome {
            Ok(CallOutcome::Reply(value)) => Ok(value),
            Ok(CallOutcome::Failed(e)) => Err(CallError::Task(e)),
            Ok(CallOutcome::Lost(lost)) => Err(CallError::WorkerLost(lost)),
            Ok(CallOutcome::NoReply) => Err(CallError::NoReply { worker, task: id }),
            Ok(CallOutcome::Cancelled) => Err(CallError::Cancelled { worker, task: id }),
            // The lane dropped the sender without an outcome: only when the
            // pool itself is being torn down.
            Err(_) => Err(CallError::WorkerLost(
                crate::error::WorkerLost::pool_killed(worker),
            )),
        }
    }

    /// Shuts the pool down gracefully: each worker gets a stop message behind
    /// the tasks already sent to it, finishes its running tasks, runs its
    /// shutdown hook, flushes its outputs and exits. Returns when every worker
    /// has exited; the output stream then ends after the last output.
    ///
    /// Outputs must keep being consumed (or the [`Outputs`] stream dropped)
    /// meanwhile, or workers wait in `emit`; use
    /// [`shutdown_timeout`](Self::shutdown_timeout) to bound the wait.
    ///
    /// # Cancel safety
    /// Cancel safe: the workers still stop; only the waiting ends.
    pub async fn shutdown(&self) -> ShutdownReport {
        let drained = self.inner.sup.shutdown(None).await;
        self.close_control();
        ShutdownReport {
            drained,
            failure: self.failure(),
        }
    }

    /// Like [`shutdown`](Self::shutdown), but kills the workers still running
    /// after `deadline`; the tasks they held are reported lost.
    ///
    /// # Cancel safety
    /// As [`shutdown`](Self::shutdown).
    pub async fn shutdown_timeout(&self, deadline: Duration) -> ShutdownReport {
        let drained = self.inner.sup.shutdown(Some(deadline)).await;
        self.close_control();
        ShutdownReport {
            drained,
            failure: self.failure(),
        }
    }

    /// Grows or shrinks the pool to `workers` while it runs.
    ///
    /// Growing starts the new workers (indices from the current count up)
    /// and returns once they are ready. Shrinking removes the highest
    /// indices: they stop taking tasks at once, drain what they hold, and
    /// exit; it returns once they have. Each worker keeps the per-worker
    /// bounds set at start. At most [`PoolBuilder::max_workers`] workers.
    ///
    /// # Errors
    /// [`StartError::Config`](crate::StartError::Config) for a count of 0 or above the maximum;
    /// [`StartError::Closed`](crate::StartError::Closed) when the pool is shutting down; any start error
    /// of a new worker (the others started with it are stopped again).
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future part-way may leave the pool at
    /// an intermediate size.
    pub async fn resize(&self, workers: usize) -> Result<(), crate::StartError> {
        self.inner.sup.resize(workers).await
    }

    /// Kills worker `worker`'s process with SIGKILL, as a crash would. The
    /// pool reports its tasks lost and replaces it under the restart policy.
    /// Meant for tests and chaos drills.
    pub fn kill_worker(&self, worker: usize) {
        if worker < self.workers() {
            self.inner.sup.kill(worker);
        }
    }
}

/// A snapshot of the figures of the pool `sup` supervises.
fn snapshot<O: serde::de::DeserializeOwned + Send + 'static>(
    sup: &Supervisor<O>,
) -> crate::PoolStats {
    let active = sup.active.load(Ordering::Relaxed);
    crate::stats::collect(&sup.spec.pool_name, &sup.lanes, active, |i| sup.pid(i))
}
