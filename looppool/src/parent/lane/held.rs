//! What a lane holds, and for how long: the forensics of a stuck worker.

use std::time::{Duration, Instant};

use super::{Lane, LaneState};
use crate::event::HeldTask;

impl<O> Lane<O> {
    /// The tasks the lane holds (sent to its worker, or waiting to be),
    /// in slot order, with how long each has been held: what a worker
    /// about to be killed takes with it.
    pub(crate) fn held_tasks(&self) -> Vec<HeldTask> {
        let st = self.lock();
        let now = self.ns_at(Instant::now());
        let index = self.index as u32;
        st.slots
            .busy()
            .map(|slot| {
                let task = st.slots.id(slot, index);
                let own = task.worker_u32() == index;
                let queued = match st.slots.timed(slot) {
                    Some(timed) => Some(timed.sent_ns),
                    None if own => st.sent.queued_after(task.seq),
                    None => None,
                };
                let held_for = queued.map(|ns| Duration::from_nanos(now.saturating_sub(ns)));
                HeldTask { task, held_for }
            })
            .collect()
    }

    /// Notes that the timed task `seq` (of this lane's numbering, if it
    /// is) was queued at `ns`.
    pub(crate) fn note_sent(st: &mut LaneState<O>, seq: Option<u64>, ns: u64) {
        if let Some(seq) = seq {
            st.sent.note(seq, ns);
        }
    }
}
