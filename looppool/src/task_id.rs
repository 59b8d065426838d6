//! The identity of a task within its pool.

use std::fmt;

/// Identifies a task within its pool: the worker it was sent to and its
/// sequence number on that worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub(crate) worker: u32,
    pub(crate) seq: u64,
}

impl TaskId {
    /// Index of the worker the task was sent to.
    pub fn worker(&self) -> usize {
        self.worker as usize
    }

    /// The task's sequence number among the tasks sent to that worker.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}#{}", self.worker, self.seq)
    }
}
