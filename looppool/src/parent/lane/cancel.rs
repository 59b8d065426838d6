//! Cancelling a task a lane holds: the cancel frame (or the skip of a task
//! frame not yet written), and the task's fate when its answer comes.
//!
//! Kept apart from the submit path: a lane with nothing being cancelled
//! pays one emptiness check per completion.

use std::time::Duration;

use super::{Lane, LaneState, Status};
use crate::protocol::{self, kind};
use crate::task_id::TaskId;

/// Why the parent cancels a task, and so how its end is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelReason {
    /// [`Pool::cancel`](crate::Pool::cancel), or a dropped `call`: it ends
    /// [`Cancelled`](crate::Output::Cancelled).
    Asked,
    /// Its own deadline passed: it ends failed, as a task past the
    /// pool-wide task timeout does.
    Deadline(Duration),
}

impl CancelReason {
    /// The failure message of a task cancelled for its deadline.
    pub(crate) fn deadline_message(limit: Duration) -> String {
        format!("task exceeded its deadline of {limit:?}")
    }
}

/// A task whose cancel was sent and not yet answered.
#[derive(Debug)]
pub(crate) struct Cancelling {
    slot: u32,
    reason: CancelReason,
}

impl Cancelling {
    pub(super) fn slot(&self) -> u32 {
        self.slot
    }

    pub(super) fn reason(&self) -> CancelReason {
        self.reason
    }
}

/// What [`Lane::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelSent {
    /// The cancel went to the worker of connection `generation`.
    Sent { generation: u64 },
    /// The lane holds no such task (it ended, or never was), or its cancel
    /// is already under way.
    NotHeld,
}

impl<O> Lane<O> {
    /// Cancels task `id` if this lane holds it: its frame, when not yet
    /// written, becomes a skip; otherwise a cancel frame naming its slot
    /// follows. Either way the worker answers, or completes the task first
    /// (which then stands), and the frames' order on the connection makes
    /// a cancel for a slot that was freed and reused meanwhile reach the
    /// worker before the slot's new task: the worker ignores it.
    pub(crate) fn cancel(&self, id: TaskId, reason: CancelReason) -> CancelSent {
        let mut st = self.lock();
        if !matches!(
            st.status,
            Status::Open | Status::Stopping | Status::Recycling
        ) {
            return CancelSent::NotHeld;
        }
        let index = self.index as u32;
        let Some(slot) = st.slots.busy().find(|&s| st.slots.id(s, index) == id) else {
            return CancelSent::NotHeld;
        };
        if st.cancelling.iter().any(|c| c.slot == slot) {
            return CancelSent::NotHeld;
        }
        st.cancelling.push(Cancelling { slot, reason });
        if !protocol::skip_task(&mut st.out, slot) {
            let was_empty = st.out.is_empty();
            protocol::put_simple(&mut st.out, kind::CANCEL, Some(slot.into()));
            if was_empty {
                self.writer_wake.notify_one();
            }
        }
        CancelSent::Sent {
            generation: st.generation,
        }
    }

    /// Whether task `id`'s cancel, sent to connection `generation`, is
    /// still unanswered.
    pub(crate) fn still_cancelling(&self, generation: u64, id: TaskId) -> bool {
        let st = self.lock();
        st.generation == generation
            && st
                .cancelling
                .iter()
                .any(|c| st.slots.is_busy(c.slot) && st.slots.id(c.slot, self.index as u32) == id)
    }
}

impl<O> LaneState<O> {
    /// The reason the task in `slot`, which ends now, was being cancelled
    /// for, if it was; forgets it.
    #[inline(always)]
    pub(crate) fn end_cancel(&mut self, slot: u32) -> Option<CancelReason> {
        if self.cancelling.is_empty() {
            return None;
        }
        self.end_cancel_slow(slot)
    }

    #[cold]
    fn end_cancel_slow(&mut self, slot: u32) -> Option<CancelReason> {
        let at = self.cancelling.iter().position(|c| c.slot == slot)?;
        Some(self.cancelling.swap_remove(at).reason)
    }
}
