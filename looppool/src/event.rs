//! The vocabulary of worker lifecycles: what happened to a worker
//! ([`WorkerEvent`]), how its process ended ([`ExitStatus`]), why its tasks
//! were lost ([`LossCause`]) and why it was recycled ([`RecycleReason`]).

use std::fmt;
use std::time::Duration;

use crate::task_id::TaskId;

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
    /// A worker ended without being asked to, or the pool killed it:
    /// `cause` says which ([`LossCause::killed_by_pool`]), and a worker the
    /// pool killed for breaking the protocol has a
    /// [`LossCause::Protocol`] cause whatever its exit status.
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
    /// A worker was drained and replaced by the recycling policy.
    Recycled {
        /// Index of the worker.
        worker: usize,
        /// The pid of the process that was replaced.
        pid: u32,
        /// What triggered it.
        reason: RecycleReason,
    },
    /// A worker's loop stopped answering heartbeats; it is being killed.
    Unresponsive {
        /// Index of the worker.
        worker: usize,
        /// Its process id.
        pid: u32,
        /// How long it had not answered.
        silent_for: Duration,
        /// The tasks it held, queued or running (each is then reported
        /// lost, or retried), in the order of their slots, with how long
        /// each had been held.
        held: Vec<HeldTask>,
        /// What its threads were doing as it was found stuck, read from
        /// `/proc` just before the kill: per thread its name, state, the
        /// kernel function it waits in (`wchan`), its system call, and its
        /// kernel stack where this process may read it (as root). `None`
        /// for a worker that is not a local process. User-space stacks are
        /// not collected: that needs a debugger attached.
        stack: Option<String>,
    },
    /// Too many restarts in the policy's window: the pool stopped itself.
    PoolFailed {
        /// Why.
        reason: String,
    },
}

/// A task a worker held, and about how long it had held it: what the
/// reports of a stuck worker, a passed deadline or a blocked loop name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeldTask {
    /// The task.
    pub task: TaskId,
    /// How long ago the pool queued it for the worker. Exact for a task
    /// the pool timed (see [where time goes](crate::metrics#where-time-goes));
    /// otherwise measured from the last timed task queued for the worker
    /// before it, so longer by at most the gap between timed tasks (none
    /// while the worker is sent fewer than about 1,000 tasks a second,
    /// about a millisecond beyond). `None` when the pool no longer knows:
    /// queued before the last 1,024 timed tasks of its worker, retried
    /// from another worker, or sent with timings off.
    pub held_for: Option<Duration>,
}

impl fmt::Display for HeldTask {
    /// `w0#12 (held 31.2s)`, or `w0#12` when how long is not known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.held_for {
            Some(d) => write!(f, "{} (held {d:.1?})", self.task),
            None => write!(f, "{}", self.task),
        }
    }
}

/// Why a worker was recycled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecycleReason {
    /// It completed its share of tasks.
    Tasks {
        /// Tasks it completed.
        completed: u64,
    },
    /// Its resident memory passed the limit.
    Memory {
        /// Resident memory when sampled, in bytes.
        rss_bytes: u64,
    },
    /// Someone asked for it, through the pool's control socket (see
    /// [`control`](crate::control)).
    Requested,
    /// A rolling restart ([`Pool::rolling_restart`](crate::Pool::rolling_restart),
    /// [`Pool::upgrade`](crate::Pool::upgrade)) replaced it, with a
    /// replacement that had already started.
    RollingRestart,
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// Its status could not be collected.
    Unknown,
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s} ({})", crate::sys::signal_name(*s)),
            ExitStatus::Unknown => f.write_str("unknown exit status"),
        }
    }
}

impl From<std::process::ExitStatus> for ExitStatus {
    fn from(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            _ => ExitStatus::Unknown,
        }
    }
}

/// Why the pool stopped talking to a worker that held tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossCause {
    /// The process exited or was killed without being asked to.
    Crashed,
    /// The worker sent bytes that break the protocol; the pool closed it.
    Protocol(String),
    /// It was still running at the end of a shutdown deadline and was killed.
    ShutdownDeadline,
    /// The pool was dropped, or killed, while the task ran.
    PoolKilled,
    /// The worker's loop stopped answering heartbeats and it was killed.
    Unresponsive,
    /// The worker ran out of memory: an allocation failed at its
    /// [`memory_limit`](crate::PoolBuilder::memory_limit), or the kernel's
    /// OOM killer killed it. See the
    /// [failure semantics](crate#out-of-memory) for exactly when a worker's
    /// end is reported so.
    OutOfMemory,
    /// The transport between the pool and the worker lost it, for the
    /// reason given (from [`Peer::loss_cause`](crate::transport::Peer::loss_cause)):
    /// a broker stream deleted, say.
    Transport(String),
}

impl LossCause {
    /// Whether the pool ended the worker itself (for breaking the
    /// protocol, not answering heartbeats, at a shutdown deadline, or with
    /// the pool), rather than the worker dying on its own: its exit status
    /// (`SIGKILL`, or an exit code such as 137 from a program between the
    /// pool and the worker) is then the pool's doing.
    pub fn killed_by_pool(&self) -> bool {
        !matches!(self, LossCause::Crashed)
    }
}

impl fmt::Display for LossCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossCause::Crashed => f.write_str("worker crashed"),
            LossCause::Protocol(e) => write!(
                f,
                "protocol violation: {e} (are parent and worker built from the same \
                 sources? does something in the worker write to descriptor 3?)"
            ),
            LossCause::ShutdownDeadline => f.write_str("killed at the shutdown deadline"),
            LossCause::PoolKilled => f.write_str("pool killed"),
            LossCause::Unresponsive => f.write_str("worker stopped answering heartbeats"),
            LossCause::OutOfMemory => f.write_str("worker ran out of memory"),
            LossCause::Transport(why) => write!(f, "lost by its transport: {why}"),
        }
    }
}
