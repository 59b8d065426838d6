//! How a task reaches a worker's lane: the waiting and the skipping of
//! full workers that `submit`, `call` and their relatives share.

use std::sync::atomic::Ordering;

use super::{lane, Lane, Pool, PushError, SubmitErrorKind, TaskId};
use crate::worker::Worker;

/// Why a send did not happen, with the caller's reply channel given back.
pub(super) type NotPushed<O> = (SubmitErrorKind, Option<lane::CallSender<O>>);

/// A round-robin send's result: the task's id and its worker.
pub(super) type Pushed<O> = Result<(TaskId, usize), NotPushed<O>>;

impl<W: Worker> Pool<W> {
    /// Pushes to the next worker in turn that has room, waiting while none
    /// has. Returns the task's id and its worker.
    pub(super) async fn push_any(
        &self,
        frame: u8,
        task: &W::Task,
        call: Option<lane::CallSender<W::Output>>,
        span: Option<&tracing::Span>,
    ) -> Pushed<W::Output> {
        let mut call = Some(call);
        self.inner
            .space
            .retry_until(
                || match self.try_push_any(frame, task, call.take().flatten(), span) {
                    Err((SubmitErrorKind::Full, back)) => {
                        call = Some(back);
                        None
                    }
                    done => Some(done),
                },
            )
            .await
    }

    /// Pushes to the next worker in turn that has room: strict round-robin
    /// while every worker has room, and a full (or restarting) worker is
    /// skipped rather than waited on. A [`Full`](SubmitErrorKind::Full)
    /// error only when no worker has room.
    pub(super) fn try_push_any(
        &self,
        frame: u8,
        task: &W::Task,
        mut call: Option<lane::CallSender<W::Output>>,
        span: Option<&tracing::Span>,
    ) -> Pushed<W::Output> {
        let n = self.workers();
        let start = self.choose();
        for k in 0..n {
            let worker = if start + k < n {
                start + k
            } else {
                start + k - n
            };
            match self.inner.lanes[worker].try_push_kind(frame, task, call, span) {
                Ok(id) => {
                    if k > 0 {
                        // The turn goes on from the worker that took it.
                        self.inner.next.store(worker + 1, Ordering::Relaxed);
                    }
                    return Ok((id, worker));
                }
                Err((PushError::Full | PushError::Down, back)) => call = back,
                // A lane closes for good only when the pool stops, or
                // when a shrink removed its worker meanwhile: skip it then.
                Err((PushError::Closed, back)) if !self.inner.sup.is_stopping() => call = back,
                Err((e, back)) => return Err((e.into_kind(), back)),
            }
        }
        if n == 0 || self.inner.sup.is_stopping() {
            return Err((SubmitErrorKind::Closed, call));
        }
        Err((SubmitErrorKind::Full, call))
    }

    pub(super) async fn push(
        &self,
        worker: usize,
        frame: u8,
        task: &W::Task,
        mut call: Option<lane::CallSender<W::Output>>,
        span: Option<&tracing::Span>,
    ) -> Result<TaskId, NotPushed<W::Output>> {
        let lane = self.lane(worker).map_err(|k| (k, None))?;
        loop {
            if lane.take_yield_due() {
                // Before the push: a future dropped here has sent nothing.
                tokio::task::yield_now().await;
            }
            match lane.try_push_kind(frame, task, call, span) {
                Ok(id) => return Ok(id),
                Err((PushError::Full | PushError::Down, back)) => {
                    call = back;
                    lane.wait_for_space().await;
                }
                Err((e, back)) => return Err((e.into_kind(), back)),
            }
        }
    }
}

/// Pushes `task` to `lane` as `submit`'s common case does: with the span it
/// is sent in, which is looked up out of line, only once a `tracing`
/// subscriber was set.
#[inline(always)]
pub(super) fn try_push_here<O, T: serde::Serialize>(
    lane: &Lane<O>,
    task: &T,
) -> Result<TaskId, (PushError, Option<lane::CallSender<O>>)> {
    if tracing::dispatcher::has_been_set() {
        return try_push_in_span(lane, task);
    }
    lane.try_push(task, None, None)
}

#[cold]
#[inline(never)]
fn try_push_in_span<O, T: serde::Serialize>(
    lane: &Lane<O>,
    task: &T,
) -> Result<TaskId, (PushError, Option<lane::CallSender<O>>)> {
    lane.try_push(task, None, sending_span().as_ref())
}

/// The span a task is sent in, if any: its worker's log records are relayed
/// inside it (see [the parent's span](crate::metrics#the-parents-span)).
/// Nothing to look up while no `tracing` subscriber was ever set.
#[inline(always)]
pub(super) fn sending_span() -> Option<tracing::Span> {
    if !tracing::dispatcher::has_been_set() {
        return None;
    }
    let span = tracing::Span::current();
    (!span.is_none()).then_some(span)
}
