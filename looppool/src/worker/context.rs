//! What a worker's code sees of the pool: its index and a way to emit outputs.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::rc::Rc;

use serde::Serialize;

use super::shared::Shared;
use crate::error::EmitError;

/// Emits outputs from a worker to the parent's output stream.
///
/// Outputs are bounded end to end: when the parent's consumer falls behind by
/// the pool's `max_results`, [`emit`](Self::emit) waits and
/// [`try_emit`](Self::try_emit) returns a [full](EmitError::is_full) error.
/// Nothing is ever dropped.
///
/// An emitter from [`InitContext::emitter`] or [`TaskContext::emitter`]
/// emits outputs that belong to no task, for background work such as a
/// subscription. It is cheap to clone, and stays on the worker's thread.
pub struct Emitter<O> {
    shared: Rc<Shared>,
    /// The task's wire slot, or none for unsolicited outputs.
    slot: Option<u32>,
    _output: PhantomData<fn(O)>,
}

impl<O> Clone for Emitter<O> {
    fn clone(&self) -> Self {
        Emitter {
            shared: self.shared.clone(),
            slot: self.slot,
            _output: PhantomData,
        }
    }
}

impl<O> fmt::Debug for Emitter<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emitter")
            .field("task_slot", &self.slot)
            .finish()
    }
}

impl<O: Serialize> Emitter<O> {
    pub(crate) fn new(shared: Rc<Shared>, slot: Option<u32>) -> Self {
        Emitter {
            shared,
            slot,
            _output: PhantomData,
        }
    }

    /// Emits `value`, waiting while the parent's output window is full.
    ///
    /// # Errors
    /// The value is given back when it cannot be serialized, exceeds the
    /// frame limit, or the worker is shutting down and its parent is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it completes, nothing
    /// was emitted.
    pub fn emit(&self, value: O) -> impl Future<Output = Result<(), EmitError<O>>> + '_ {
        self.shared.out.emit(self.slot, value)
    }

    /// Emits `value` if the output window has room, without waiting.
    ///
    /// # Errors
    /// As [`emit`](Self::emit), plus a [full](EmitError::is_full) error when
    /// the window is exhausted.
    pub fn try_emit(&self, value: O) -> Result<(), EmitError<O>> {
        self.shared.out.try_emit(self.slot, value)
    }
}

/// Passed to [`Worker::init`](crate::Worker::init).
pub struct InitContext<O> {
    pub(crate) shared: Rc<Shared>,
    pub(crate) _output: PhantomData<fn(O)>,
}

impl<O> fmt::Debug for InitContext<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitContext")
            .field("worker", &self.shared.index)
            .finish()
    }
}

impl<O: Serialize> InitContext<O> {
    /// This worker's index in the pool, from 0.
    pub fn worker_index(&self) -> usize {
        self.shared.index
    }

    /// The pool's name.
    pub fn pool_name(&self) -> &str {
        &self.shared.pool_name
    }

    /// An emitter for outputs that belong to no task.
    pub fn emitter(&self) -> Emitter<O> {
        Emitter::new(self.shared.clone(), None)
    }
}

/// Passed to [`Worker::handle`](crate::Worker::handle) with each task.
pub struct TaskContext<O> {
    emitter: Emitter<O>,
}

impl<O> fmt::Debug for TaskContext<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("worker", &self.emitter.shared.index)
            .finish()
    }
}

impl<O: Serialize> TaskContext<O> {
    pub(crate) fn new(shared: Rc<Shared>, slot: u32) -> Self {
        TaskContext {
            emitter: Emitter::new(shared, Some(slot)),
        }
    }

    /// Emits an output of this task. See [`Emitter::emit`].
    ///
    /// # Errors
    /// See [`Emitter::emit`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Emitter::emit`].
    pub fn emit(&self, value: O) -> impl Future<Output = Result<(), EmitError<O>>> + '_ {
        self.emitter.emit(value)
    }

    /// Emits an output of this task without waiting. See [`Emitter::try_emit`].
    ///
    /// # Errors
    /// See [`Emitter::try_emit`].
    pub fn try_emit(&self, value: O) -> Result<(), EmitError<O>> {
        self.emitter.try_emit(value)
    }

    /// This worker's index in the pool, from 0.
    pub fn worker_index(&self) -> usize {
        self.emitter.shared.index
    }

    /// An emitter for outputs that belong to no task (it outlives the task).
    pub fn emitter(&self) -> Emitter<O> {
        Emitter::new(self.emitter.shared.clone(), None)
    }
}

impl<O> TaskContext<O> {
    /// The cell of this task's cancellation.
    fn cancel_cell(&self) -> std::rc::Rc<super::cancel::CancelCell> {
        let slot = self.emitter.slot.expect("a task's context names its slot");
        self.emitter.shared.cancels.arm(slot)
    }

    /// Completes when the parent cancels this task ([`Pool::cancel`], a
    /// dropped `call`, a passed per-task deadline).
    ///
    /// A handler that has called this is given the pool's grace period
    /// ([`PoolBuilder::cancel_grace`], 1 s by default) after the cancel to
    /// clean up and return, rather than being dropped at its next await
    /// point; past the grace period its future is dropped. Either way the
    /// task ends [cancelled](crate::Output::Cancelled), and outputs it
    /// emitted meanwhile are delivered before that.
    ///
    /// ```
    /// # use std::rc::Rc;
    /// # use looppool::{BoxError, TaskContext};
    /// # struct W;
    /// # impl W {
    /// async fn handle(self: Rc<Self>, n: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
    ///     tokio::select! {
    ///         () = tokio::time::sleep(std::time::Duration::from_secs(n)) => cx.emit(n).await?,
    ///         () = cx.cancelled() => {
    ///             // Clean up (flush, release), then return within the grace period.
    ///         }
    ///     }
    ///     Ok(())
    /// }
    /// # }
    /// ```
    ///
    /// [`Pool::cancel`]: crate::Pool::cancel
    /// [`PoolBuilder::cancel_grace`]: crate::PoolBuilder::cancel_grace
    ///
    /// # Cancel safety
    /// Cancel safe: it only waits.
    pub fn cancelled(&self) -> impl Future<Output = ()> + 'static {
        let cell = self.cancel_cell();
        // Marked now, not at the first poll: a cancel read before that
        // poll must already find a handler that cleans up.
        cell.wants_cleanup();
        async move { cell.requested().await }
    }

    /// Whether the parent has cancelled this task.
    pub fn is_cancelled(&self) -> bool {
        let slot = self.emitter.slot.expect("a task's context names its slot");
        let cells = &self.emitter.shared.cancels;
        cells.is_requested(slot)
    }
}
