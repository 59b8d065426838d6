//! What the reader applies to a lane under its lock: a worker's outputs,
//! completions and failures, each for the task in one slot.

use super::{CallOutcome, CancelReason, LaneState};
use crate::error::TaskError;
use crate::parent::slots::Call;
use crate::task_id::TaskId;

/// What the reader learned about one slot; applied under the lane's lock.
pub(crate) enum SlotEvent<O> {
    Output {
        slot: u32,
        value: O,
    },
    Done {
        slot: u32,
    },
    /// A task's last output and its completion, from one frame: applied
    /// in one step, as most tasks end this way.
    OutputDone {
        slot: u32,
        value: O,
    },
    Failed {
        slot: u32,
        message: String,
        panicked: bool,
    },
    /// The worker dropped (or skipped) the task on the parent's cancel.
    Cancelled {
        slot: u32,
    },
}

impl<O> SlotEvent<O> {
    /// The slot whose task it concerns.
    pub(crate) fn slot(&self) -> u32 {
        match self {
            SlotEvent::Output { slot, .. }
            | SlotEvent::Done { slot }
            | SlotEvent::OutputDone { slot, .. }
            | SlotEvent::Failed { slot, .. }
            | SlotEvent::Cancelled { slot } => *slot,
        }
    }
}

/// The part of a read batch that goes to the output stream.
pub(crate) enum Delivered<O> {
    Value {
        task: TaskId,
        value: O,
    },
    Failed(TaskError),
    /// A task the parent cancelled (it spent no output credit).
    Cancelled {
        task: TaskId,
    },
}

/// Why a slot event cannot be applied: the worker named a slot it does not hold.
#[derive(Debug)]
pub(crate) struct UnknownSlot(pub(crate) u32);

impl<O> LaneState<O> {
    /// The task a slot holds, if it holds one.
    pub(crate) fn task_in_slot(&self, slot: u32, lane: u32) -> Option<TaskId> {
        self.slots.is_busy(slot).then(|| self.slots.id(slot, lane))
    }

    /// The timing record of the task in `slot`, if it holds a timed one.
    pub(crate) fn timed_in_slot(&self, slot: u32) -> Option<super::Timed> {
        self.slots.timed(slot)
    }

    /// The span the task in `slot` was submitted in, if it holds a task
    /// that had one.
    pub(crate) fn span_in_slot(&self, slot: u32) -> Option<tracing::Span> {
        self.slots.span(slot).cloned()
    }

    /// Frees the slot of a task that completed, answering its caller.
    #[inline(always)]
    fn complete(&mut self, slot: u32, freed: &mut usize) {
        // Completed before its cancel was read: the completion stands.
        self.end_cancel(slot);
        if let (Some(call), _) = self.slots.take(slot) {
            let outcome = call.reply.map_or(CallOutcome::NoReply, CallOutcome::Reply);
            let _ = call.tx.send(outcome);
        }
        self.free.push(slot);
        self.completed += 1;
        self.counters.done += 1;
        *freed += 1;
    }

    /// True when some submitter waits for this lane.
    pub(crate) fn space_waiters_any(&self) -> bool {
        self.space_waiters > 0
    }

    /// Applies one slot event, whose frame cost `cost` output credits;
    /// returns what to deliver to the output stream and adds to
    /// `credits_back` the credits that can go straight back to the worker
    /// (a call's reply or failure goes to its caller, not to the stream).
    ///
    /// Always inlined: the reader's common path and its path for timed
    /// completions both call it, and with two callers the compiler made a
    /// call of its completion step, a measurable cost on the common path.
    #[inline(always)]
    pub(crate) fn apply(
        &mut self,
        worker: usize,
        event: SlotEvent<O>,
        cost: u32,
        mut deliver: impl FnMut(Delivered<O>),
        credits_back: &mut u32,
        freed: &mut usize,
    ) -> Result<(), UnknownSlot> {
        let slot = match &event {
            SlotEvent::Output { slot, .. }
            | SlotEvent::Done { slot }
            | SlotEvent::OutputDone { slot, .. }
            | SlotEvent::Failed { slot, .. }
            | SlotEvent::Cancelled { slot } => *slot,
        };
        if !self.slots.is_busy(slot) {
            return Err(UnknownSlot(slot));
        }
        let id = self.slots.id(slot, worker as u32);
        let call = self.slots.call(slot);
        let mut output = |call: Option<&mut Call<O>>, value, credits_back: &mut u32| match call {
            Some(Call {
                reply: reply @ None,
                ..
            }) => {
                // A call's reply goes to its caller, not to the stream:
                // the output window is free again at once.
                *reply = Some(value);
                *credits_back += cost;
            }
            _ => deliver(Delivered::Value { task: id, value }),
        };
        match event {
            SlotEvent::Output { value, .. } => output(call, value, credits_back),
            SlotEvent::Done { .. } => self.complete(slot, freed),
            SlotEvent::OutputDone { value, .. } => {
                output(call, value, credits_back);
                self.complete(slot, freed);
            }
            SlotEvent::Cancelled { .. } => self.cancelled(worker, slot, id, deliver, freed),
            SlotEvent::Failed {
                message, panicked, ..
            } => {
                self.end_cancel(slot);
                let error = TaskError {
                    worker,
                    task: id,
                    message,
                    panicked,
                };
                match self.slots.take(slot) {
                    (Some(call), _) => {
                        let _ = call.tx.send(CallOutcome::Failed(error));
                        *credits_back += cost;
                    }
                    _ => deliver(Delivered::Failed(error)),
                }
                self.free.push(slot);
                self.completed += 1;
                self.counters.failed += 1;
                *freed += 1;
            }
        }
        Ok(())
    }
}

impl<O> LaneState<O> {
    /// Frees the slot of a task the worker cancelled, and tells its fate:
    /// cancelled, or failed when its own deadline was the reason.
    #[cold]
    fn cancelled(
        &mut self,
        worker: usize,
        slot: u32,
        task: TaskId,
        mut deliver: impl FnMut(Delivered<O>),
        freed: &mut usize,
    ) {
        // A cancel the parent did not send is taken as asked for: the task
        // ends either way, and is told once.
        let reason = self.end_cancel(slot).unwrap_or(CancelReason::Asked);
        let failure = match reason {
            CancelReason::Asked => None,
            CancelReason::Deadline(limit) => Some(TaskError {
                worker,
                task,
                message: CancelReason::deadline_message(limit),
                panicked: false,
            }),
        };
        match (self.slots.take(slot), failure) {
            ((Some(call), _), None) => {
                let _ = call.tx.send(CallOutcome::Cancelled);
            }
            ((Some(call), _), Some(error)) => {
                let _ = call.tx.send(CallOutcome::Failed(error));
            }
            (_, None) => deliver(Delivered::Cancelled { task }),
            (_, Some(error)) => deliver(Delivered::Failed(error)),
        }
        self.free.push(slot);
        self.completed += 1;
        match reason {
            CancelReason::Asked => self.counters.cancelled += 1,
            CancelReason::Deadline(_) => self.counters.failed += 1,
        }
        *freed += 1;
    }
}
