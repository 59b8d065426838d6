//! A lane's task slots: the record of which tasks its worker holds.
//!
//! A slot is both a task's credit and its wire id. Every submit writes one
//! and every completion reads and frees one, in no particular order, so a
//! worker's thousands of slots are touched all over: each takes 8 bytes (the
//! task's sequence number) to keep them few cache lines. What only some
//! tasks have (a caller, a retry copy, an id from another worker) is boxed
//! in a parallel array that the common path never reads.

use tokio::sync::oneshot;

use crate::error::{TaskError, WorkerLost};
use crate::task_id::TaskId;

/// How a `call` ends, before the task value is known to the error type.
#[derive(Debug)]
pub(crate) enum CallOutcome<O> {
    Reply(O),
    Failed(TaskError),
    Lost(WorkerLost),
    NoReply,
    Cancelled,
}

pub(crate) type CallSender<O> = oneshot::Sender<CallOutcome<O>>;

/// The fate of one task the lane held when its worker went away.
#[derive(Debug)]
pub(crate) struct Held<O> {
    pub(crate) id: TaskId,
    pub(crate) call: Option<CallSender<O>>,
    /// The encoded task, kept when lost tasks may be retried.
    pub(crate) retry: Option<Retry>,
    /// The span the task was sent in, if any.
    pub(crate) span: Option<tracing::Span>,
    /// Why it was being cancelled, if it was: its fate is then that.
    pub(crate) cancel: Option<super::lane::CancelReason>,
}

/// What a retry needs: the encoded task, the blobs it refers to by index
/// (sent by descriptor), and how often it was already lost.
pub(crate) struct Retry {
    pub(crate) payload: Box<[u8]>,
    pub(crate) blobs: Vec<std::sync::Arc<crate::blob::Sealed>>,
    pub(crate) attempts: u32,
}

impl std::fmt::Debug for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("payload", &self.payload.len())
            .field("blobs", &self.blobs.len())
            .field("attempts", &self.attempts)
            .finish()
    }
}

/// The `seq` of a free slot (a lane's sequence numbers never reach it).
const FREE: u64 = u64::MAX;
/// Set in a busy slot's `seq` when `more` holds the task's extras.
const MORE: u64 = 1 << 63;

/// What only some tasks have.
pub(super) struct SlotMore<O> {
    /// The task's id, when it is not (this lane, `seq`): a task lost with
    /// another worker and retried here keeps the id it was given.
    pub(super) id: Option<TaskId>,
    pub(super) call: Option<Call<O>>,
    pub(super) retry: Option<Retry>,
    /// The span the task was submitted in: its worker's log records for it
    /// are relayed inside it.
    pub(super) span: Option<tracing::Span>,
    /// When a timed task was queued (see `crate::timing`).
    pub(super) timed: Option<Timed>,
}

/// A timed task's record in the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timed {
    /// When its frame was queued, in ns since its lane's epoch.
    pub(crate) sent_ns: u64,
    /// How many tasks it counts for.
    pub(crate) weight: u32,
}

/// A `call` waiting for its task.
pub(super) struct Call<O> {
    pub(super) tx: CallSender<O>,
    /// The first output of the called task: its reply.
    pub(super) reply: Option<O>,
}

/// The slots of one lane; none until its first worker connects.
pub(super) struct Slots<O> {
    /// Each slot's task sequence number, with [`MORE`] set when the task
    /// has extras, or [`FREE`].
    seq: Vec<u64>,
    more: Vec<Option<Box<SlotMore<O>>>>,
}

impl<O> Slots<O> {
    pub(super) const fn none() -> Self {
        Slots {
            seq: Vec::new(),
            more: Vec::new(),
        }
    }

    pub(super) fn new(n: usize) -> Self {
        Slots {
            seq: vec![FREE; n],
            more: std::iter::repeat_with(|| None).take(n).collect(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.seq.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    /// Whether `slot` exists and holds a task.
    #[inline]
    pub(super) fn is_busy(&self, slot: u32) -> bool {
        self.seq.get(slot as usize).is_some_and(|&s| s != FREE)
    }

    /// Records task `seq` (with its extras, if any) in the free `slot`.
    #[inline]
    pub(super) fn fill(&mut self, slot: u32, seq: u64, more: Option<Box<SlotMore<O>>>) {
        let i = slot as usize;
        debug_assert!(seq < MORE - 1, "sequence numbers stay below 2^63 - 1");
        self.seq[i] = match more {
            Some(more) => {
                self.more[i] = Some(more);
                seq | MORE
            }
            None => seq,
        };
    }

    /// The id of the task in busy `slot`, in lane `lane`.
    #[inline]
    pub(super) fn id(&self, slot: u32, lane: u32) -> TaskId {
        let seq = self.seq[slot as usize];
        let id = TaskId::new(lane, seq & !MORE);
        if seq & MORE == 0 {
            return id;
        }
        match self.more[slot as usize].as_deref() {
            Some(more) => {
                let attempt = more.retry.as_ref().map_or(0, |r| r.attempts);
                more.id.unwrap_or(id).with_attempt(attempt)
            }
            None => id,
        }
    }

    /// The caller waiting for the task in busy `slot`, if it is a call.
    #[inline]
    pub(super) fn call(&mut self, slot: u32) -> Option<&mut Call<O>> {
        if self.seq[slot as usize] & MORE == 0 {
            return None;
        }
        self.more[slot as usize].as_deref_mut()?.call.as_mut()
    }

    /// The span the task in busy `slot` was submitted in, if any.
    pub(super) fn span(&self, slot: u32) -> Option<&tracing::Span> {
        if self.seq.get(slot as usize)? & MORE == 0 {
            return None;
        }
        self.more[slot as usize].as_deref()?.span.as_ref()
    }

    /// The timing record of the task in `slot`, if it holds a timed one.
    pub(super) fn timed(&self, slot: u32) -> Option<Timed> {
        if self.seq.get(slot as usize)? & MORE == 0 {
            return None;
        }
        self.more[slot as usize].as_deref()?.timed
    }

    /// Takes the span of the task in busy `slot`, if it has one.
    pub(super) fn take_span(&mut self, slot: u32) -> Option<tracing::Span> {
        if self.seq[slot as usize] & MORE == 0 {
            return None;
        }
        self.more[slot as usize].as_deref_mut()?.span.take()
    }

    /// Frees busy `slot`; returns its task's caller and retry copy.
    #[inline]
    pub(super) fn take(&mut self, slot: u32) -> (Option<Call<O>>, Option<Retry>) {
        let i = slot as usize;
        let had_more = self.seq[i] & MORE != 0;
        self.seq[i] = FREE;
        match had_more.then(|| self.more[i].take()).flatten() {
            Some(more) => Self::unpack(more),
            None => (None, None),
        }
    }

    /// A freed task's caller and retry copy; the rest of its extras are
    /// dropped here, out of the common path.
    #[cold]
    #[inline(never)]
    #[allow(clippy::boxed_local)] // Freeing the box is part of what moves here.
    fn unpack(more: Box<SlotMore<O>>) -> (Option<Call<O>>, Option<Retry>) {
        let more = *more;
        (more.call, more.retry)
    }

    /// The busy slots, in slot order.
    pub(super) fn busy(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.seq.len() as u32).filter(|&s| self.seq[s as usize] != FREE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extras(id: Option<TaskId>) -> Option<Box<SlotMore<u64>>> {
        let (tx, _rx) = tokio::sync::oneshot::channel();
        Some(Box::new(SlotMore {
            id,
            call: Some(Call { tx, reply: None }),
            retry: None,
            span: None,
            timed: None,
        }))
    }

    #[test]
    fn a_plain_task_keeps_its_sequence_number_and_nothing_else() {
        let mut slots = Slots::<u64>::new(4);
        assert!(!slots.is_busy(2));
        slots.fill(2, 41, None);
        assert!(slots.is_busy(2));
        assert_eq!(slots.id(2, 7), TaskId::new(7, 41));
        assert!(slots.call(2).is_none());
        assert!(matches!(slots.take(2), (None, None)));
        assert!(!slots.is_busy(2));
    }

    #[test]
    fn extras_come_back_with_the_task_and_leave_with_it() {
        let mut slots = Slots::<u64>::new(4);
        let foreign = TaskId::new(1, 9);
        slots.fill(0, 5, extras(Some(foreign)));
        slots.fill(3, 6, extras(None));
        assert_eq!(slots.id(0, 0), foreign);
        assert_eq!(slots.id(3, 0), TaskId::new(0, 6));
        slots.call(3).expect("a call").reply = Some(12);
        assert_eq!(slots.busy().collect::<Vec<_>>(), [0, 3]);
        let (call, _) = slots.take(3);
        assert_eq!(call.expect("its caller").reply, Some(12));
        // The slot is reused by a plain task: the old extras are gone.
        slots.fill(3, 8, None);
        assert!(slots.call(3).is_none());
        assert_eq!(slots.id(3, 0), TaskId::new(0, 8));
    }

    #[test]
    fn a_slot_out_of_range_is_not_busy() {
        let slots = Slots::<u64>::new(2);
        assert!(!slots.is_busy(2));
        assert!(!Slots::<u64>::none().is_busy(0));
    }
}
