//! When a lane's recent timed tasks were queued: the marks that tell how
//! long any task it holds has been held.

use std::collections::VecDeque;

/// Marks kept per lane: 16 KiB, a second or more of a busy worker's
/// timed tasks, much longer for a quiet one.
const KEEP: usize = 1024;

/// The (sequence number, ns on the lane's clock) of the last [`KEEP`]
/// timed tasks a lane queued, in order. A lane's sequence numbers grow
/// with the order it queues tasks in, so a task queued after a mark has a
/// larger one.
#[derive(Debug, Default)]
pub(crate) struct SentLog {
    marks: VecDeque<(u64, u64)>,
}

impl SentLog {
    /// Notes that task `seq` was queued at `ns`.
    pub(crate) fn note(&mut self, seq: u64, ns: u64) {
        if self.marks.len() == KEEP {
            self.marks.pop_front();
        }
        self.marks.push_back((seq, ns));
    }

    /// When task `seq` was queued at the earliest: the time of the last
    /// mark at or before it (its own, if it was timed); `None` when it is
    /// older than every mark kept.
    pub(crate) fn queued_after(&self, seq: u64) -> Option<u64> {
        let at = self.marks.partition_point(|&(s, _)| s <= seq);
        at.checked_sub(1).map(|i| self.marks[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_placed_after_the_last_mark_before_it() {
        let mut log = SentLog::default();
        assert_eq!(log.queued_after(5), None);
        log.note(10, 1_000);
        log.note(20, 2_000);
        assert_eq!(log.queued_after(9), None, "older than every mark");
        assert_eq!(log.queued_after(10), Some(1_000));
        assert_eq!(log.queued_after(15), Some(1_000));
        assert_eq!(log.queued_after(25), Some(2_000));
        for i in 0..KEEP as u64 {
            log.note(100 + i, 10_000 + i);
        }
        assert_eq!(log.queued_after(20), None, "forgotten");
        assert_eq!(log.queued_after(100), Some(10_000));
    }
}
