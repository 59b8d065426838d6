//! The identity of a task within its pool.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// Identifies a task within its pool: the worker it was sent to and its
/// sequence number on that worker.
///
/// With [`PoolBuilder::retry_lost`](crate::PoolBuilder::retry_lost), a
/// task lost with its worker runs again elsewhere under the same id; the id
/// carried by each of its outputs also says which [attempt](Self::attempt)
/// made it. Equality, ordering and hashing ignore the attempt: the ids of
/// one task's attempts are equal.
#[derive(Debug, Clone, Copy)]
pub struct TaskId {
    pub(crate) worker: u32,
    /// Which run of the task this is (0 for the first); in the padding
    /// beside `worker`, so an id is no larger for it.
    pub(crate) attempt: u32,
    pub(crate) seq: u64,
}

impl TaskId {
    /// The first attempt of task `seq` of worker `worker`.
    pub(crate) const fn new(worker: u32, seq: u64) -> Self {
        TaskId {
            worker,
            attempt: 0,
            seq,
        }
    }

    /// The same task, run for the `attempt`-th time after the first.
    pub(crate) const fn with_attempt(self, attempt: u32) -> Self {
        TaskId { attempt, ..self }
    }

    /// Index of the worker the task was sent to.
    pub fn worker(&self) -> usize {
        self.worker as usize
    }

    /// The task's sequence number among the tasks sent to that worker.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Which run of the task this id comes from: 0 for the first, 1 for
    /// the first retry after its worker was lost, and so on. Outputs of a
    /// task whose later attempt has begun belong to a superseded run; a
    /// consumer that must see each output once keeps those of the last
    /// attempt only.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

impl PartialEq for TaskId {
    fn eq(&self, other: &Self) -> bool {
        (self.worker, self.seq) == (other.worker, other.seq)
    }
}

impl Eq for TaskId {}

impl Hash for TaskId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.worker, self.seq).hash(state);
    }
}

impl PartialOrd for TaskId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TaskId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.worker, self.seq).cmp(&(other.worker, other.seq))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}#{}", self.worker, self.seq)?;
        if self.attempt > 0 {
            write!(f, " (attempt {})", self.attempt + 1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_of_one_task_are_the_same_task() {
        let first = TaskId::new(1, 9);
        let retry = first.with_attempt(2);
        assert_eq!(first, retry);
        assert_eq!(retry.attempt(), 2);
        assert_eq!(first.to_string(), "w1#9");
        assert_eq!(retry.to_string(), "w1#9 (attempt 3)");
        assert_eq!(std::mem::size_of::<TaskId>(), 16);
    }
}
