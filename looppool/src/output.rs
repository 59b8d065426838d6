//! One item of a pool's output stream.

use crate::error::{TaskError, WorkerLost};
use crate::task_id::TaskId;

/// One item of a pool's output stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Output<O> {
    /// A value a worker emitted.
    Value {
        /// Index of the worker that emitted it.
        worker: usize,
        /// The task it belongs to, or `None` for an unsolicited output.
        task: Option<TaskId>,
        /// The value.
        value: O,
    },
    /// A task sent with `submit` failed: its handler returned an error or panicked.
    ///
    /// Boxed, as is [`Lost`](Self::Lost)'s cause: failures are rare, and an
    /// unboxed one would make every item of the stream, values included,
    /// 64 bytes instead of 40 (for `u64` values).
    Failed(Box<TaskError>),
    /// A task sent with `submit` was lost with its worker.
    Lost {
        /// The task.
        task: TaskId,
        /// Which worker was lost, and how.
        lost: Box<WorkerLost>,
    },
    /// A task sent with `submit` was cancelled ([`Pool::cancel`](crate::Pool::cancel)):
    /// it never started, or its handler was dropped (after its cleanup, if
    /// it awaited [`TaskContext::cancelled`](crate::TaskContext::cancelled)).
    /// Outputs it emitted before are delivered before this item.
    Cancelled {
        /// Index of the worker that held it.
        worker: usize,
        /// The task.
        task: TaskId,
    },
}

impl<O> Output<O> {
    /// The emitted value, if this is one.
    pub fn into_value(self) -> Option<O> {
        match self {
            Output::Value { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The emitted value, by reference.
    pub fn value(&self) -> Option<&O> {
        match self {
            Output::Value { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The worker this item concerns.
    pub fn worker(&self) -> usize {
        match self {
            Output::Value { worker, .. } => *worker,
            Output::Failed(e) => e.worker,
            Output::Lost { lost, .. } => lost.worker,
            Output::Cancelled { worker, .. } => *worker,
        }
    }

    /// Which attempt of its task this item comes from (see
    /// [`TaskId::attempt`]), if it concerns a task.
    pub fn attempt(&self) -> Option<u32> {
        self.task().map(|t| t.attempt())
    }

    /// The task this item concerns, if any.
    pub fn task(&self) -> Option<TaskId> {
        match self {
            Output::Value { task, .. } => *task,
            Output::Failed(e) => Some(e.task),
            Output::Lost { task, .. } | Output::Cancelled { task, .. } => Some(*task),
        }
    }
}
