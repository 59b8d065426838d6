//! Public error types, one per family of operations.
//!
//! `Display` texts are short lowercase phrases, without a trailing period,
//! that describe only their own level: an error whose
//! [`source`](std::error::Error::source) returns a cause does not repeat the
//! cause's text, so a report that walks the chain (as `anyhow`'s and
//! `eyre`'s do) prints each cause once. The wording is not part of the
//! stable API. Errors that carry a value which never left the process
//! give it back (`into_inner`).

use std::fmt;

use crate::event::{ExitStatus, LossCause};
use crate::task_id::TaskId;

mod restart;

pub use restart::RestartError;

/// A setting of [`PoolBuilder`](crate::PoolBuilder) that cannot work.
///
/// Its `Display` is the message alone, which says what to change; inside a
/// [`StartError::Config`] it is the source of "invalid pool configuration".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    message: String,
}

impl BuildError {
    /// An invalid-configuration error with `message`, which should say what
    /// to change (for transports and wrappers that validate settings of
    /// their own).
    pub fn new(message: impl Into<String>) -> Self {
        BuildError {
            message: message.into(),
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BuildError {}

/// Why a pool (or one worker of it) could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The builder's settings are invalid; the [`BuildError`] (also the
    /// error's [`source`](std::error::Error::source)) says which.
    Config(BuildError),
    /// The worker program could not be executed.
    Spawn {
        /// Index of the worker that failed.
        worker: usize,
        /// The program that was executed.
        program: String,
        /// The operating system's error (also the error's
        /// [`source`](std::error::Error::source)).
        source: std::io::Error,
    },
    /// The program started but did not complete the looppool handshake.
    Handshake {
        /// Index of the worker that failed.
        worker: usize,
        /// What went wrong, in words that say what to change.
        reason: String,
    },
    /// The pool is shutting down or has failed (from `resize`).
    Closed,
    /// The worker's initialiser returned an error or panicked.
    Init {
        /// Index of the worker that failed.
        worker: usize,
        /// The initialiser's error message.
        message: String,
    },
    /// This process was started by a pool as a worker but never became one
    /// (no [`worker_main!`](crate::worker_main) ran), so it may not start a
    /// pool: its workers would be this program again, each starting a pool
    /// of its own. Nothing was started.
    NotAWorker {
        /// The name of the worker this process was asked to run.
        requested: String,
        /// The worker type to list in `worker_main!`, as the program names
        /// it, when the pool being started runs the requested worker.
        worker_type: Option<String>,
    },
}

impl StartError {
    /// Index of the worker that failed to start, if one did.
    pub fn worker(&self) -> Option<usize> {
        match self {
            StartError::Config(_) | StartError::Closed | StartError::NotAWorker { .. } => None,
            StartError::Spawn { worker, .. }
            | StartError::Handshake { worker, .. }
            | StartError::Init { worker, .. } => Some(*worker),
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(_) => f.write_str("invalid pool configuration"),
            StartError::Closed => f.write_str("pool is closed"),
            // The OS error is the source: not repeated here.
            StartError::Spawn {
                worker, program, ..
            } => {
                write!(f, "cannot start worker {worker} with {program}")
            }
            StartError::Handshake { worker, reason } => {
                write!(f, "worker {worker} failed the handshake: {reason}")
            }
            StartError::Init { worker, message } => {
                write!(f, "worker {worker} initialiser failed: {message}")
            }
            StartError::NotAWorker {
                requested,
                worker_type,
            } => {
                let listed = worker_type.as_deref().unwrap_or("YourWorker");
                write!(
                    f,
                    "this process was started by a looppool pool as worker {requested:?} but never \
                     became a worker, so it may not start a pool (each worker would start \
                     workers of its own): put `looppool::worker_main!({listed})` as the first \
                     line of `main` (a `#[tokio::main]` one too), or point the pool at a worker \
                     program with `.program(...)`"
                )
            }
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(e) => Some(e),
            StartError::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<BuildError> for StartError {
    fn from(e: BuildError) -> Self {
        StartError::Config(e)
    }
}

/// Why a task was not accepted; the task is returned inside.
pub struct SubmitError<T> {
    kind: SubmitErrorKind,
    task: T,
}

/// The reason inside a [`SubmitError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubmitErrorKind {
    /// The worker's queue is at its bound (only from the `try_` methods).
    Full,
    /// The pool is shutting down, has failed, or the worker was removed.
    Closed,
    /// There is no worker with that index.
    NoSuchWorker {
        /// The index that was asked for.
        worker: usize,
        /// How many workers the pool has.
        workers: usize,
    },
    /// The encoded task exceeds the pool's maximum frame size; nothing was sent.
    TooLarge {
        /// Encoded size in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The task could not be serialized; nothing was sent.
    Encode(String),
}

impl<T> SubmitError<T> {
    pub(crate) fn new(kind: SubmitErrorKind, task: T) -> Self {
        SubmitError { kind, task }
    }

    /// Why the task was refused.
    pub fn kind(&self) -> &SubmitErrorKind {
        &self.kind
    }

    /// True when the queue was full and a later try may succeed.
    pub fn is_full(&self) -> bool {
        self.kind == SubmitErrorKind::Full
    }

    /// True when the pool no longer accepts tasks.
    pub fn is_closed(&self) -> bool {
        self.kind == SubmitErrorKind::Closed
    }

    /// Gives the refused task back.
    pub fn into_inner(self) -> T {
        self.task
    }
}

impl<T> fmt::Debug for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            SubmitErrorKind::Full => f.write_str("worker queue is full"),
            SubmitErrorKind::Closed => f.write_str("pool is closed"),
            SubmitErrorKind::NoSuchWorker { worker, workers } => {
                write!(f, "no worker {worker} in a pool of {workers}")
            }
            SubmitErrorKind::TooLarge { len, max } => {
                write!(
                    f,
                    "task of {len} bytes exceeds the frame limit of {max} bytes \
                     (raise PoolBuilder::max_frame, or send smaller tasks)"
                )
            }
            SubmitErrorKind::Encode(msg) => write!(f, "cannot serialize task: {msg}"),
        }
    }
}

impl<T> std::error::Error for SubmitError<T> {}

/// The worker that held a task is gone: who it was and how it ended.
///
/// Read it with its accessors (or its fields); it is `#[non_exhaustive]`:
/// only the pool creates one, and fields may be added.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerLost {
    /// Index of the worker in the pool.
    pub worker: usize,
    /// Process id of the worker.
    pub pid: u32,
    /// How the process ended.
    pub status: ExitStatus,
    /// Why the pool gave up on it.
    pub cause: LossCause,
}

impl WorkerLost {
    /// The loss of a task that was still held when the pool itself was
    /// torn down, with no process to blame.
    pub(crate) fn pool_killed(worker: usize) -> Self {
        WorkerLost {
            worker,
            pid: 0,
            status: ExitStatus::Unknown,
            cause: LossCause::PoolKilled,
        }
    }

    /// Index of the worker in the pool.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Process id of the worker (0 when there was no process to blame).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How the process ended.
    pub fn status(&self) -> ExitStatus {
        self.status
    }

    /// Why the pool gave up on it.
    pub fn cause(&self) -> &LossCause {
        &self.cause
    }
}

impl fmt::Display for WorkerLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "worker {} (pid {}) lost: {}",
            self.worker, self.pid, self.cause
        )?;
        match self.cause {
            LossCause::Protocol(_) | LossCause::Unresponsive => {
                write!(f, "; the pool killed it ({})", self.status)
            }
            // These say it themselves.
            _ => write!(f, ", {}", self.status),
        }
    }
}

impl std::error::Error for WorkerLost {}

/// A task's handler returned an error or panicked; the worker lives on.
///
/// Read it with its accessors (or its fields); it is `#[non_exhaustive]`:
/// only the pool creates one, and fields may be added.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaskError {
    /// Index of the worker that ran the task.
    pub worker: usize,
    /// The task that failed.
    pub task: TaskId,
    /// The error's message (with its sources), or the panic's message and location.
    pub message: String,
    /// True when the handler panicked rather than returned an error.
    pub panicked: bool,
}

impl TaskError {
    /// Index of the worker that ran the task.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The task that failed.
    pub fn task(&self) -> TaskId {
        self.task
    }

    /// The error's message (with its sources), or the panic's message and
    /// location.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True when the handler panicked rather than returned an error.
    pub fn panicked(&self) -> bool {
        self.panicked
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.panicked { "panicked" } else { "failed" };
        write!(
            f,
            "task {} {what} on worker {}: {}",
            self.task, self.worker, self.message
        )
    }
}

impl std::error::Error for TaskError {}

/// Why a [`call`](crate::Pool::call) did not produce a reply.
///
/// `Debug` and `Error` do not need `T: Debug` (the task given back is not
/// shown), so `call(task).await?` works for any task type.
#[non_exhaustive]
pub enum CallError<T> {
    /// The task was not sent; it is given back.
    Submit(SubmitError<T>),
    /// The handler returned an error or panicked.
    Task(TaskError),
    /// The worker died (or was killed) before the task completed.
    WorkerLost(WorkerLost),
    /// The handler completed without emitting any output.
    NoReply {
        /// Index of the worker that ran the task.
        worker: usize,
        /// The task.
        task: TaskId,
    },
    /// The task was cancelled ([`Pool::cancel`](crate::Pool::cancel)) before
    /// it completed.
    Cancelled {
        /// Index of the worker that held it.
        worker: usize,
        /// The task.
        task: TaskId,
    },
}

impl<T> CallError<T> {
    /// True when the task's worker was lost.
    pub fn is_worker_lost(&self) -> bool {
        matches!(self, CallError::WorkerLost(_))
    }

    /// True when the task was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, CallError::Cancelled { .. })
    }
}

impl<T> fmt::Debug for CallError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Submit(e) => f.debug_tuple("Submit").field(e).finish(),
            CallError::Task(e) => f.debug_tuple("Task").field(e).finish(),
            CallError::WorkerLost(e) => f.debug_tuple("WorkerLost").field(e).finish(),
            CallError::NoReply { worker, task } => f
                .debug_struct("NoReply")
                .field("worker", worker)
                .field("task", task)
                .finish(),
            CallError::Cancelled { worker, task } => f
                .debug_struct("Cancelled")
                .field("worker", worker)
                .field("task", task)
                .finish(),
        }
    }
}

impl<T> fmt::Display for CallError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Submit(e) => write!(f, "call not sent: {e}"),
            CallError::Task(e) => e.fmt(f),
            CallError::WorkerLost(e) => e.fmt(f),
            CallError::NoReply { worker, task } => {
                write!(
                    f,
                    "task {task} on worker {worker} completed without a reply"
                )
            }
            CallError::Cancelled { worker, task } => {
                write!(f, "task {task} on worker {worker} was cancelled")
            }
        }
    }
}

impl<T> std::error::Error for CallError<T> {}

/// Why a worker could not emit an output.
pub struct EmitError<O> {
    kind: EmitErrorKind,
    value: O,
}

/// The reason inside an [`EmitError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmitErrorKind {
    /// The parent has not taken enough outputs yet (only from `try_emit`).
    Full,
    /// The worker is shutting down or its parent is gone.
    Closed,
    /// The encoded output exceeds the frame limit; nothing was sent.
    TooLarge {
        /// Encoded size in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The output could not be serialized; nothing was sent.
    Encode(String),
}

impl<O> EmitError<O> {
    pub(crate) fn new(kind: EmitErrorKind, value: O) -> Self {
        EmitError { kind, value }
    }

    /// Why the output was refused.
    pub fn kind(&self) -> &EmitErrorKind {
        &self.kind
    }

    /// True when the output credit window is exhausted.
    pub fn is_full(&self) -> bool {
        self.kind == EmitErrorKind::Full
    }

    /// Gives the refused output back.
    pub fn into_inner(self) -> O {
        self.value
    }
}

impl<O> fmt::Debug for EmitError<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmitError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<O> fmt::Display for EmitError<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            EmitErrorKind::Full => f.write_str("output window is full"),
            EmitErrorKind::Closed => f.write_str("worker output is closed"),
            EmitErrorKind::TooLarge { len, max } => {
                write!(
                    f,
                    "output of {len} bytes exceeds the frame limit of {max} bytes \
                     (raise PoolBuilder::max_frame, or emit smaller outputs)"
                )
            }
            EmitErrorKind::Encode(msg) => write!(f, "cannot serialize output: {msg}"),
        }
    }
}

impl<O> std::error::Error for EmitError<O> {}

/// Why [`Outputs::try_next`](crate::Outputs::try_next) returned no item.
///
/// As tokio's `mpsc::error::TryRecvError`: [`Empty`](Self::Empty) means
/// try again later (or wait with `next`), [`Ended`](Self::Ended) that no
/// item will ever come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TryNextError {
    /// No item is ready now; more may come.
    Empty,
    /// The stream has ended: the pool has shut down and every output was
    /// taken.
    Ended,
}

impl fmt::Display for TryNextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryNextError::Empty => f.write_str("no output is ready"),
            TryNextError::Ended => f.write_str("the output stream has ended"),
        }
    }
}

impl std::error::Error for TryNextError {}

#[cfg(test)]
mod tests;
