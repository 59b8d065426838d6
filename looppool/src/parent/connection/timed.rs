//! The reader's handling of a timed task's completion: applied as any
//! completion is, then counted in its worker's histograms.

use std::time::Instant;

use serde::de::DeserializeOwned;

use super::{Collected, ReadTally, Reader};
use crate::parent::lane::{LaneState, SlotEvent};

impl<O: DeserializeOwned + Send + 'static> Reader<O> {
    /// When this read was made, if the lane's tasks are timed (one clock
    /// read per read, for the timed tasks' completions and the output
    /// items' waits); the lane's sampler follows the rate by it.
    pub(super) fn timed_now(&self, st: &mut LaneState<O>) -> Option<Instant> {
        if !self.lane.timings.on {
            return None;
        }
        let now = Instant::now();
        st.sampler.adjust(self.lane.ns_at(now));
        Some(now)
    }

    /// Applies `event`, the completion or failure of a timed task that ran
    /// for `ran_ns` (the worker says), whose frame cost `cost` output
    /// credits; then counts its run time and queue wait, when the slot
    /// held a task the parent timed (a worker that times what it was not
    /// asked to is not believed). False, with the reason to end the
    /// connection in `tally`, when the slot holds no task.
    #[cold]
    #[inline(never)]
    pub(super) fn apply_timed(
        &self,
        st: &mut LaneState<O>,
        got: &mut Collected<'_, O>,
        tally: &mut ReadTally,
        event: SlotEvent<O>,
        cost: u32,
        ran_ns: u64,
    ) -> bool {
        let worker = self.worker;
        let timed = st.timed_in_slot(event.slot());
        tally.note_failure(st, worker, &event);
        let applied = st.apply(
            worker,
            event,
            cost,
            |d| got.deliver(worker, d, cost),
            &mut tally.replies,
            &mut tally.freed,
        );
        if let Err(e) = applied {
            tally.end = Some(format!("message for slot {}, which holds no task", e.0));
            return false;
        }
        if let (Some(timed), Some(now)) = (timed, got.received) {
            let in_pool = self.lane.ns_at(now).saturating_sub(timed.sent_ns);
            self.lane.timings.record_task(in_pool, ran_ns, timed.weight);
        }
        true
    }
}
