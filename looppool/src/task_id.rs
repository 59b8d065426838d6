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
#[derive(Clone, Copy)]
pub struct TaskId {
    /// The worker index in the low 16 bits (a pool has at most 4,096
    /// workers), the attempt in the high 16. One field, as a bare worker
    /// index was: an id with a third field of its own was copied as one
    /// 16-byte block wherever it was returned (each `submit`), a load that
    /// could not take its bytes from the field-wise stores before it, and
    /// stalled.
    tag: u32,
    pub(crate) seq: u64,
}

/// Bits of [`TaskId::tag`] holding the worker index.
const WORKER_BITS: u32 = 16;

impl TaskId {
    /// The largest attempt an id tells (a pool's `retry_lost` is at most
    /// this); a later one would read as this.
    pub const MAX_ATTEMPT: u32 = u16::MAX as u32;

    /// The first attempt of task `seq` of worker `worker` (below 65,536).
    #[inline(always)]
    pub(crate) const fn new(worker: u32, seq: u64) -> Self {
        debug_assert!(worker < 1 << WORKER_BITS);
        TaskId { tag: worker, seq }
    }

    /// The same task, run for the `attempt`-th time after the first
    /// (saturating at [`MAX_ATTEMPT`](Self::MAX_ATTEMPT)).
    pub(crate) const fn with_attempt(self, attempt: u32) -> Self {
        let attempt = if attempt > Self::MAX_ATTEMPT {
            Self::MAX_ATTEMPT
        } else {
            attempt
        };
        TaskId {
            tag: self.worker_u32() | attempt << WORKER_BITS,
            seq: self.seq,
        }
    }

    /// The worker index, as the wire and the lanes number them.
    #[inline(always)]
    pub(crate) const fn worker_u32(&self) -> u32 {
        self.tag & ((1 << WORKER_BITS) - 1)
    }

    /// Index of the worker the task was sent to.
    pub fn worker(&self) -> usize {
        self.worker_u32() as usize
    }

    /// The task's sequence number among the tasks sent to that worker.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Which run of the task this id comes from: 0 for the first, 1 for
    /// the first retry after its worker was lost, and so on (at most
    /// [`MAX_ATTEMPT`](Self::MAX_ATTEMPT)). Outputs of a task whose later
    /// attempt has begun belong to a superseded run; a consumer that must
    /// see each output once keeps those of the last attempt only.
    pub fn attempt(&self) -> u32 {
        self.tag >> WORKER_BITS
    }
}

impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskId")
            .field("worker", &self.worker_u32())
            .field("attempt", &self.attempt())
            .field("seq", &self.seq)
            .finish()
    }
}

impl PartialEq for TaskId {
    fn eq(&self, other: &Self) -> bool {
        (self.worker_u32(), self.seq) == (other.worker_u32(), other.seq)
    }
}

impl Eq for TaskId {}

impl Hash for TaskId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.worker_u32(), self.seq).hash(state);
    }
}

impl PartialOrd for TaskId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TaskId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.worker_u32(), self.seq).cmp(&(other.worker_u32(), other.seq))
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}#{}", self.worker_u32(), self.seq)?;
        if self.attempt() > 0 {
            write!(f, " (attempt {})", self.attempt() + 1)?;
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

    #[test]
    fn an_attempt_never_spills_into_the_worker_index() {
        let id = TaskId::new(4095, 1).with_attempt(u32::MAX);
        assert_eq!(id.worker(), 4095);
        assert_eq!(id.attempt(), TaskId::MAX_ATTEMPT);
        assert_eq!(id, TaskId::new(4095, 1));
        let again = id.with_attempt(3);
        assert_eq!((again.worker(), again.attempt()), (4095, 3));
        assert_eq!(
            format!("{again:?}"),
            "TaskId { worker: 4095, attempt: 3, seq: 1 }"
        );
    }
}
