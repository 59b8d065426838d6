//! One task with options: a deadline of its own, a key for keyed dispatch,
//! and whether a dropped `call` cancels it.

use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use tokio::sync::oneshot;

use super::control::{key_hash, rendezvous, Dispatch};
use super::Pool;
use crate::error::{CallError, SubmitError};
use crate::protocol::kind;
use crate::task_id::TaskId;
use crate::worker::Worker;

/// A task about to be sent with options; made by [`Pool::task`], sent by
/// [`submit`](Self::submit) or [`call`](Self::call).
///
/// ```no_run
/// # async fn demo(pool: looppool::Pool<impl looppool::Worker<Task = u64, Output = u64>>) {
/// use std::time::Duration;
/// let id = pool.task(7).timeout(Duration::from_secs(2)).key("user-42").submit().await.unwrap();
/// println!("sent {id}; its outputs arrive in the pool's output stream");
/// match pool.task(8).timeout(Duration::from_millis(500)).call().await {
///     Ok(reply) => println!("reply {reply}"),
///     Err(e) => println!("no reply: {e}"),
/// }
/// # }
/// ```
#[must_use = "a task builder sends nothing until `submit` or `call` is awaited"]
pub struct TaskBuilder<'a, W: Worker> {
    pool: &'a Pool<W>,
    task: W::Task,
    timeout: Option<Duration>,
    key: Option<u64>,
    detached: bool,
}

impl<W: Worker> fmt::Debug for TaskBuilder<'_, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskBuilder")
            .field("timeout", &self.timeout)
            .field("key", &self.key)
            .field("detached", &self.detached)
            .finish_non_exhaustive()
    }
}

impl<W: Worker> Pool<W> {
    /// A task to send with options: a deadline of its own
    /// ([`timeout`](TaskBuilder::timeout)), a [key](TaskBuilder::key), or a
    /// `call` that runs on when its future is dropped
    /// ([`detach`](TaskBuilder::detach)).
    pub fn task(&self, task: W::Task) -> TaskBuilder<'_, W> {
        TaskBuilder {
            pool: self,
            task,
            timeout: None,
            key: None,
            detached: false,
        }
    }
}

impl<W: Worker> TaskBuilder<'_, W> {
    /// Fails the task if it has not ended `timeout` after it was sent,
    /// whether it is still waiting to be written to its worker (it then
    /// never starts) or running (its handler is dropped as by
    /// [`Pool::cancel`]). It ends as one past
    /// [`PoolBuilder::task_timeout`](crate::PoolBuilder::task_timeout) does: an
    /// [`Output::Failed`](crate::Output::Failed) item or
    /// [`CallError::Task`], "task exceeded its deadline". It replaces the
    /// pool-wide task timeout for this task, longer or shorter.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The task's key: under [`Dispatch::Keyed`], tasks of one key go to
    /// one worker and start in the order they were sent (see there). Under
    /// the other policies the key is not used.
    pub fn key<K: Hash + ?Sized>(mut self, key: &K) -> Self {
        self.key = Some(key_hash(key));
        self
    }

    /// A [`call`](Self::call) whose future is dropped does not cancel its
    /// task: the task runs on and its reply is discarded (fire and forget).
    pub fn detach(mut self) -> Self {
        self.detached = true;
        self
    }

    /// The worker the key chooses, under keyed dispatch.
    fn keyed_worker(&self) -> Option<usize> {
        let keyed = self.pool.inner.control.dispatch == Dispatch::Keyed;
        let key = self.key.filter(|_| keyed)?;
        Some(rendezvous(key, self.pool.workers()))
    }

    /// The task frame's kind: a task with a deadline of its own is not
    /// under the pool-wide task timeout.
    fn frame_kind(&self) -> u8 {
        match self.timeout {
            Some(_) => kind::TASK_OWN_DEADLINE,
            None => kind::TASK,
        }
    }

    /// Sends the task, as [`Pool::submit`] does (or to its key's worker,
    /// waiting for room there); its outputs and its end arrive in the
    /// output stream.
    ///
    /// # Errors
    /// As [`Pool::submit`].
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it completes, the task
    /// was not sent.
    pub async fn submit(self) -> Result<TaskId, SubmitError<W::Task>> {
        let pool = self.pool;
        let frame = self.frame_kind();
        let span = super::sending_span();
        let pushed = match self.keyed_worker() {
            Some(w) => pool
                .push(w, frame, &self.task, None, span.as_ref())
                .await
                .map(|id| (id, w)),
            None => pool.push_any(frame, &self.task, None, span.as_ref()).await,
        };
        match pushed {
            Ok((id, worker)) => {
                if let Some(limit) = self.timeout {
                    pool.arm_deadline(worker, id, limit);
                }
                Ok(id)
            }
            Err((kind, _)) => Err(SubmitError::new(kind, self.task)),
        }
    }

    /// Sends the task and waits for its reply, as [`Pool::call`] does.
    ///
    /// # Errors
    /// As [`Pool::call`], and [`CallError::Task`] when its
    /// [`timeout`](Self::timeout) passes.
    ///
    /// # Cancel safety
    /// As [`Pool::call`]: dropping the future after the task was sent
    /// cancels the task, unless it was [`detach`](Self::detach)ed.
    pub async fn call(self) -> Result<W::Output, CallError<W::Task>> {
        let pool = self.pool;
        let frame = self.frame_kind();
        let (tx, rx) = oneshot::channel();
        let span = super::sending_span();
        let pushed = match self.keyed_worker() {
            Some(w) => pool
                .push(w, frame, &self.task, Some(tx), span.as_ref())
                .await
                .map(|id| (id, w)),
            None => {
                pool.push_any(frame, &self.task, Some(tx), span.as_ref())
                    .await
            }
        };
        let (id, worker) = match pushed {
            Ok(sent) => sent,
            Err((kind, _)) => return Err(CallError::Submit(SubmitError::new(kind, self.task))),
        };
        if let Some(limit) = self.timeout {
            pool.arm_deadline(worker, id, limit);
        }
        pool.reply(rx, worker, id, !self.detached).await
    }
}

/// Cancels a called task when the caller's future is dropped before its
/// reply: nobody waits for it any more.
pub(super) struct CancelOnDrop<'a, W: Worker> {
    pub(super) pool: &'a Pool<W>,
    pub(super) id: TaskId,
    pub(super) armed: bool,
}

impl<W: Worker> Drop for CancelOnDrop<'_, W> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.cancel(self.id);
        }
    }
}
