//! What a lane holds: taken back when its worker goes away, and listed
//! with how long each task was held for the forensics of a stuck worker.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Held, Lane, LaneState, Status};
use crate::event::HeldTask;

impl<O> Lane<O> {
    /// Takes every task the lane holds, after its worker went away, and marks
    /// it down (or closed, when `closed`).
    pub(crate) fn take_held(&self, closed: bool) -> Vec<Held<O>> {
        let mut st = self.lock();
        st.status = if closed || matches!(st.status, Status::Closed | Status::Stopping) {
            Status::Closed
        } else {
            Status::Down
        };
        st.out.clear();
        st.blobs.clear();
        self.up.store(false, Ordering::Relaxed);
        self.note_room();
        let index = self.index as u32;
        let mut held = Vec::new();
        let busy: Vec<u32> = st.slots.busy().collect();
        let mut cancelling = std::mem::take(&mut st.cancelling);
        let LaneState { slots, free, .. } = &mut *st;
        for slot in busy {
            let id = slots.id(slot, index);
            let span = slots.take_span(slot);
            let (call, retry) = slots.take(slot);
            free.push(slot);
            let at = cancelling.iter().position(|c| c.slot() == slot);
            held.push(Held {
                id,
                call: call.map(|c| c.tx),
                retry,
                span,
                cancel: at.map(|at| cancelling.swap_remove(at).reason()),
            });
        }
        held.sort_by_key(|h| (h.id.worker_u32() != index, h.id));
        drop(st);
        self.wake_waiters();
        held
    }

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
