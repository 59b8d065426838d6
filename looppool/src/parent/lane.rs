//! A worker's lane in the parent: its queue of encoded frames, its task
//! credits and the record of what it holds.
//!
//! One small mutex guards everything a `submit` touches: the output buffer
//! the frame is encoded into, the slot that is both the task's credit and its
//! wire id, and the in-flight record that says what to report if the worker
//! dies. No per-task channel, semaphore or allocation: a task costs one lock,
//! one slot and a few bytes of buffer. The writer task is woken only when the
//! buffer goes from empty to non-empty, so one `write` carries every frame
//! queued meanwhile, and a lone call is still flushed at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{oneshot, Notify};

use super::outputs::Output;
use crate::codec::CodecError;
use crate::error::{SubmitErrorKind, TaskError, WorkerLost};
use crate::protocol::{self, kind};
use crate::task_id::TaskId;

use super::slots::{Call, SlotMore, Slots};

/// How a `call` ends, before the task value is known to the error type.
#[derive(Debug)]
pub(crate) enum CallOutcome<O> {
    Reply(O),
    Failed(TaskError),
    Lost(WorkerLost),
    NoReply,
}

pub(crate) type CallSender<O> = oneshot::Sender<CallOutcome<O>>;

/// The fate of one task the lane held when its worker went away.
#[derive(Debug)]
pub(crate) struct Held<O> {
    pub(crate) id: TaskId,
    pub(crate) call: Option<CallSender<O>>,
    /// The encoded task, kept when lost tasks may be retried.
    pub(crate) retry: Option<Retry>,
}

/// What a retry needs: the encoded task and how often it was already lost.
#[derive(Debug)]
pub(crate) struct Retry {
    pub(crate) payload: Box<[u8]>,
    pub(crate) attempts: u32,
}

/// Whether a lane takes tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Its worker is running and accepts tasks.
    Open,
    /// Its worker was asked to stop; no more tasks.
    Stopping,
    /// Its worker is draining to be replaced: tasks wait for the replacement.
    Recycling,
    /// Its worker is gone and a replacement is being started.
    Down,
    /// It will never take tasks again (pool shut down, failed or dropped).
    Closed,
}

pub(crate) struct LaneState<O> {
    /// Encoded frames not yet handed to the writer.
    pub(crate) out: Vec<u8>,
    slots: Slots<O>,
    free: Vec<u32>,
    pub(crate) status: Status,
    /// Counts connections: a late message for an old one is ignored.
    pub(crate) generation: u64,
    pub(crate) pid: u32,
    next_seq: u64,
    /// Tasks submitted since the submitter last yielded (see `Lane::yield_every`).
    since_yield: u32,
    space_waiters: usize,
    /// Tasks completed (or failed) by the current worker process.
    pub(crate) completed: u64,
    /// Recycle the current worker once `completed` reaches this.
    pub(crate) recycle_at: Option<u64>,
    /// Why the current worker is being recycled, if it is.
    pub(crate) recycle_reason: Option<crate::event::RecycleReason>,
    /// Done, failed and started counts for stats, per worker index.
    pub(crate) counters: crate::metrics::LaneCounters,
    /// Outputs the current worker may still send: its initial credits plus
    /// those sent back since, less the outputs received. A worker that
    /// drives it below zero ignores its credits, and is cut off before it
    /// can fill the parent's memory.
    pub(crate) output_window: i64,
    /// The current worker's whole output window, as set at the handshake.
    output_credits: u32,
    /// Output credits due to the worker but not yet sent (see
    /// [`Lane::owe_credits`]).
    credits_owed: u32,
}

/// Tasks a submitter pushes to one lane before it yields to the runtime, so
/// the writer can flush a large batch: batch size is set here, not by
/// tokio's per-operation budget. An eighth of the lane's window, so that
/// several batches are in flight at once, but never fewer than 512 (the
/// size every window up to 4,096 tasks gets) nor more than 8,192.
fn yield_every(credits: u32) -> u32 {
    (credits / 8).clamp(512, 8192)
}

/// Buffered bytes after which a submitter yields whatever the task count:
/// large tasks are flushed in batches of a bounded size.
const YIELD_BYTES: usize = 256 * 1024;

/// Why a task could not be pushed; the caller owns the task and builds the
/// public error.
#[derive(Debug)]
pub(crate) enum PushError {
    Full,
    Down,
    Closed,
    Codec(CodecError),
}

/// Bytes a varint takes.
fn varint_len(mut value: u64) -> usize {
    let mut n = 1;
    while value >= 0x80 {
        value >>= 7;
        n += 1;
    }
    n
}

impl PushError {
    pub(crate) fn into_kind(self) -> SubmitErrorKind {
        match self {
            PushError::Full | PushError::Down => SubmitErrorKind::Full,
            PushError::Closed => SubmitErrorKind::Closed,
            PushError::Codec(CodecError::TooLarge { len, max }) => {
                SubmitErrorKind::TooLarge { len, max }
            }
            PushError::Codec(e) => SubmitErrorKind::Encode(e.to_string()),
        }
    }
}

pub(crate) struct Lane<O> {
    pub(crate) index: usize,
    /// Slots, and so queued plus running tasks, per worker.
    credits: u32,
    /// Tasks pushed between two yields of a submitter (see [`yield_every`]).
    yield_every: u32,
    max_frame: usize,
    state: Mutex<LaneState<O>>,
    /// Wakes the connection's writer on the empty → non-empty transition.
    pub(crate) writer_wake: Notify,
    /// Wakes submitters waiting for a slot, or for the lane to reopen.
    space: Notify,
    /// Mirrors `status == Open` for round-robin choice without the lock.
    up: AtomicBool,
    /// Times a lost task may be re-sent (0: lost tasks are reported).
    retries: u32,
    /// Set by the heartbeat before it kills a silent worker.
    pub(crate) unresponsive: AtomicBool,
    /// When the worker last answered a ping, in ms since `epoch`.
    pong_ms: AtomicU64,
    epoch: Instant,
    /// Reports, blocked-loop episodes and other rare figures.
    pub(crate) obs: crate::metrics::LaneObs,
    /// Emptied output batches, kept for the reader to fill again.
    spare_batches: Mutex<Vec<Vec<Output<O>>>>,
}

/// Emptied batches a lane keeps for its reader, and the size of a batch.
///
/// A read of 64 KiB holds thousands of small outputs. Allocated afresh per
/// read, such a batch was a large allocation that glibc served from `mmap`
/// or a growing heap and took back as the consumer finished it: RSS moved by
/// megabytes, with thousands of page faults per second. Kept and refilled,
/// a batch sized by the read it first held touched more of its pages each
/// time a larger read came along, and the parent's RSS crept up in steps of
/// hundreds of KiB over a long stream. So every batch has the same small
/// capacity, a read fills as many as it needs, and a lane keeps enough of
/// them for a few reads: each batch is filled whole soon after it is made,
/// and a burst beyond the spares costs one more batch of 64 KiB.
const SPARE_BATCHES: usize = 16;
const BATCH_BYTES: usize = 64 * 1024;

impl<O> std::fmt::Debug for Lane<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// A pushed task: its id, and whether the submitter should yield now.
pub(crate) struct Pushed {
    pub(crate) id: TaskId,
    pub(crate) yield_now: bool,
}

impl<O> Lane<O> {
    pub(crate) fn new(index: usize, credits: u32, max_frame: usize, retries: u32) -> Self {
        Lane {
            index,
            credits,
            yield_every: yield_every(credits),
            max_frame,
            state: Mutex::new(LaneState {
                out: Vec::new(),
                // Allocated when the lane first opens: a pool may keep
                // spare lanes for growing.
                slots: Slots::none(),
                free: Vec::new(),
                status: Status::Down,
                generation: 0,
                pid: 0,
                next_seq: 0,
                since_yield: 0,
                space_waiters: 0,
                completed: 0,
                recycle_at: None,
                recycle_reason: None,
                counters: Default::default(),
                output_window: 0,
                output_credits: 0,
                credits_owed: 0,
            }),
            writer_wake: Notify::new(),
            space: Notify::new(),
            up: AtomicBool::new(false),
            retries,
            unresponsive: AtomicBool::new(false),
            pong_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            obs: Default::default(),
            spare_batches: Mutex::new(Vec::new()),
        }
    }

    /// Items per output batch: 64 KiB of them (at least 16).
    pub(crate) const fn batch_items() -> usize {
        // An item is never zero-sized: it holds at least its worker's index.
        let n = BATCH_BYTES / std::mem::size_of::<Output<O>>();
        if n < 16 {
            16
        } else {
            n
        }
    }

    /// An empty batch to fill: a kept one if there is one.
    pub(crate) fn empty_batch(&self) -> Vec<Output<O>> {
        let kept = crate::sync::lock(&self.spare_batches).pop();
        kept.unwrap_or_else(|| Vec::with_capacity(Self::batch_items()))
    }

    /// Keeps an emptied batch for the reader (a few, all of the one size).
    pub(crate) fn keep_batch(&self, mut batch: Vec<Output<O>>) {
        batch.clear();
        if batch.capacity() != Self::batch_items() {
            return;
        }
        let mut spare = crate::sync::lock(&self.spare_batches);
        if spare.len() < SPARE_BATCHES {
            spare.push(batch);
        }
    }

    /// Records that the worker answered a ping.
    pub(crate) fn pong(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.pong_ms.store(ms, Ordering::Relaxed);
    }

    /// How long ago the worker last answered a ping (or opened).
    pub(crate) fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.pong_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// How many times a lost task may be re-sent.
    pub(crate) fn retries(&self) -> u32 {
        self.retries
    }

    /// Whether the lane takes tasks (a relaxed hint for routing).
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LaneState<O>> {
        crate::sync::lock(&self.state)
    }

    /// Encodes `task` into the lane if it has a free slot.
    ///
    /// Inlined into `submit`, as is `push_with`: returned through memory,
    /// the result was reloaded by a caller stalled behind the unlock.
    #[inline(always)]
    pub(crate) fn try_push<T: Serialize + ?Sized>(
        &self,
        task: &T,
        call: Option<CallSender<O>>,
    ) -> Result<Pushed, (PushError, Option<CallSender<O>>)> {
        self.push_with(
            call,
            None,
            #[inline(always)]
            |out, slot, max| protocol::put_tagged(out, kind::TASK, slot.into(), task, max),
        )
    }

    /// Re-sends an already encoded task that was lost on another worker.
    pub(crate) fn try_push_retry(
        &self,
        id: TaskId,
        payload: &[u8],
        attempts: u32,
        call: Option<CallSender<O>>,
    ) -> Result<Pushed, (PushError, Option<CallSender<O>>)> {
        self.push_with(call, Some((id, attempts)), |out, slot, max| {
            let start = crate::codec::begin_frame(out, kind::TASK);
            crate::codec::put_varint(out, slot.into());
            out.extend_from_slice(payload);
            crate::codec::finish_frame(out, start, max)
        })
    }

    #[inline(always)]
    fn push_with(
        &self,
        call: Option<CallSender<O>>,
        retried: Option<(TaskId, u32)>,
        encode: impl FnOnce(&mut Vec<u8>, u32, usize) -> Result<(), CodecError>,
    ) -> Result<Pushed, (PushError, Option<CallSender<O>>)> {
        let mut st = self.lock();
        match st.status {
            Status::Open => {}
            Status::Down | Status::Recycling => return Err((PushError::Down, call)),
            Status::Stopping | Status::Closed => return Err((PushError::Closed, call)),
        }
        let Some(&slot) = st.free.last() else {
            return Err((PushError::Full, call));
        };
        let was_empty = st.out.is_empty();
        // Credits owed to the worker ride in front of the task: no frame,
        // write or wake-up of their own.
        Self::send_owed(&mut st);
        let start = st.out.len();
        if let Err(e) = encode(&mut st.out, slot, self.max_frame) {
            drop(st);
            if was_empty {
                // The owed credits, if any, still go out.
                self.writer_wake.notify_one();
            }
            return Err((PushError::Codec(e), call));
        }
        st.free.pop();
        let (id, attempts) = match retried {
            Some(r) => r,
            None => {
                let seq = st.next_seq;
                st.next_seq += 1;
                (
                    TaskId {
                        worker: self.index as u32,
                        seq,
                    },
                    0,
                )
            }
        };
        let foreign = id.worker != self.index as u32;
        // Written without closures: ones that captured `call` cost a drop
        // check per task even when not called.
        let more = if call.is_some() || self.retries > 0 || foreign {
            // Keeping a copy of every task costs an allocation per task, so
            // it is done only when lost tasks are to be retried.
            let retry = if self.retries > 0 {
                let payload_start = start + crate::codec::HEADER_LEN + 1 + varint_len(slot.into());
                Some(Retry {
                    payload: st.out[payload_start..].into(),
                    attempts,
                })
            } else {
                None
            };
            Some(Box::new(SlotMore {
                id: if foreign { Some(id) } else { None },
                call: call.map(|tx| Call { tx, reply: None }),
                retry,
            }))
        } else {
            None
        };
        st.slots.fill(slot, id.seq, more);
        st.since_yield += 1;
        let yield_now = st.since_yield >= self.yield_every || st.out.len() >= YIELD_BYTES;
        if yield_now {
            st.since_yield = 0;
        }
        drop(st);
        if was_empty {
            self.writer_wake.notify_one();
        }
        Ok(Pushed { id, yield_now })
    }

    /// Waits until the lane may have room or has changed status.
    pub(crate) async fn wait_for_space(&self) {
        let notified = self.space.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut st = self.lock();
            let waiting = match st.status {
                Status::Open => st.free.is_empty(),
                Status::Down | Status::Recycling => true,
                Status::Stopping | Status::Closed => false,
            };
            if waiting {
                st.space_waiters += 1;
            } else {
                return;
            }
        }
        notified.await;
        self.lock().space_waiters -= 1;
    }

    /// Wakes every submitter waiting on this lane.
    pub(crate) fn wake_waiters(&self) {
        self.space.notify_waiters();
    }

    /// Appends a control frame (stop, ping), behind any owed credits.
    pub(crate) fn push_control(&self, st: &mut LaneState<O>, kind: u8, value: Option<u64>) {
        if kind == kind::CREDIT {
            st.output_window += value.unwrap_or(0) as i64;
        }
        let was_empty = st.out.is_empty();
        Self::send_owed(st);
        protocol::put_simple(&mut st.out, kind, value);
        if was_empty {
            self.writer_wake.notify_one();
        }
    }

    /// Returns output credits to the worker of connection `generation`.
    pub(crate) fn return_output_credits(&self, generation: u64, n: u32) {
        if n == 0 {
            return;
        }
        let mut st = self.lock();
        // A worker that stops or drains for recycling still runs its tasks,
        // which may still emit: it needs its credits back to finish.
        if st.generation == generation
            && matches!(
                st.status,
                Status::Open | Status::Stopping | Status::Recycling
            )
        {
            self.owe_credits(&mut st, n);
        }
    }

    /// Gives `n` output credits back to the worker (`n` may be 0: the reader
    /// calls this after every batch, as the window may have shrunk).
    ///
    /// A credit frame of its own costs the parent a `write` and the worker a
    /// wake-up, a read and an `epoll_wait`: after every `call` that doubled
    /// the system calls of a round trip. So credits are owed, and sent in
    /// front of the next task frame, while the worker provably does not need
    /// them yet: it still holds at least half its window as far as the
    /// parent knows, so it cannot be waiting for credits. Once the window
    /// falls below half (the reader sees every output that spends it, and
    /// calls this after each), or when a frame is queued anyway, or when no
    /// more tasks will carry them (the lane is not open), they go at once.
    pub(crate) fn owe_credits(&self, st: &mut LaneState<O>, n: u32) {
        st.credits_owed += n;
        if st.credits_owed == 0 {
            return;
        }
        let low = i64::from(st.output_credits / 2).max(1);
        if !st.out.is_empty() || st.status != Status::Open || st.output_window < low {
            let was_empty = st.out.is_empty();
            Self::send_owed(st);
            if was_empty {
                self.writer_wake.notify_one();
            }
        }
    }

    /// Appends the owed credits, if any, as one credit frame (the caller
    /// wakes the writer).
    fn send_owed(st: &mut LaneState<O>) {
        if st.credits_owed > 0 {
            let n = std::mem::take(&mut st.credits_owed);
            st.output_window += i64::from(n);
            protocol::put_simple(&mut st.out, kind::CREDIT, Some(n.into()));
        }
    }

    /// Opens the lane for a newly connected worker; returns its generation.
    pub(crate) fn open(
        &self,
        pid: u32,
        recycle_at: Option<u64>,
        output_credits: u32,
    ) -> Option<u64> {
        let mut st = self.lock();
        if st.status == Status::Closed {
            return None;
        }
        if st.slots.is_empty() {
            st.slots = Slots::new(self.credits as usize);
            // Pop from the end: lowest slots first, so wire ids stay short.
            st.free = (0..self.credits).rev().collect();
        }
        st.generation += 1;
        st.pid = pid;
        st.status = Status::Open;
        st.completed = 0;
        st.counters.starts += 1;
        st.recycle_at = recycle_at;
        st.recycle_reason = None;
        st.output_window = output_credits.into();
        st.output_credits = output_credits;
        st.credits_owed = 0;
        st.out.clear();
        self.up.store(true, Ordering::Relaxed);
        self.pong();
        let generation = st.generation;
        drop(st);
        self.wake_waiters();
        Some(generation)
    }

    /// Asks the worker to stop behind the tasks already queued for it.
    pub(crate) fn stop(&self) {
        let mut st = self.lock();
        match st.status {
            Status::Open => {
                st.status = Status::Stopping;
                self.up.store(false, Ordering::Relaxed);
                self.push_control(&mut st, kind::STOP, None);
            }
            Status::Down => st.status = Status::Closed,
            // The stop message is already queued.
            Status::Recycling => st.status = Status::Stopping,
            Status::Stopping | Status::Closed => {}
        }
        drop(st);
        self.wake_waiters();
    }

    /// Asks the worker to drain and exit so that it can be replaced; tasks
    /// sent meanwhile wait for the replacement. Returns false if the lane was
    /// not open.
    pub(crate) fn recycle(&self, st: &mut LaneState<O>) -> bool {
        if st.status != Status::Open {
            return false;
        }
        st.status = Status::Recycling;
        self.up.store(false, Ordering::Relaxed);
        self.push_control(st, kind::STOP, None);
        true
    }

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
        self.up.store(false, Ordering::Relaxed);
        let index = self.index as u32;
        let mut held = Vec::new();
        let LaneState { slots, free, .. } = &mut *st;
        let busy: Vec<u32> = slots.busy().collect();
        for slot in busy {
            let id = slots.id(slot, index);
            let (call, retry) = slots.take(slot);
            free.push(slot);
            held.push(Held {
                id,
                call: call.map(|c| c.tx),
                retry,
            });
        }
        held.sort_by_key(|h| (h.id.worker != index, h.id));
        drop(st);
        self.wake_waiters();
        held
    }

    /// Tasks queued or running on this worker.
    pub(crate) fn in_flight(&self) -> usize {
        let st = self.lock();
        st.slots.len() - st.free.len()
    }

    /// Number of slots (the per-worker task bound).
    pub(crate) fn capacity(&self) -> usize {
        self.credits as usize
    }

    /// Makes a closed lane startable again (when the pool grows).
    pub(crate) fn reopen(&self) {
        let mut st = self.lock();
        if st.status == Status::Closed {
            st.status = Status::Down;
        }
    }

    /// True when the lane will take no more tasks.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().status == Status::Closed
    }
}

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
}

/// The part of a read batch that goes to the output stream.
pub(crate) enum Delivered<O> {
    Value { task: TaskId, value: O },
    Failed(TaskError),
}

/// Why a slot event cannot be applied: the worker named a slot it does not hold.
#[derive(Debug)]
pub(crate) struct UnknownSlot(pub(crate) u32);

impl<O> LaneState<O> {
    /// The task a slot holds, if it holds one.
    pub(crate) fn task_in_slot(&self, slot: u32, lane: u32) -> Option<TaskId> {
        self.slots.is_busy(slot).then(|| self.slots.id(slot, lane))
    }

    /// Frees the slot of a task that completed, answering its caller.
    fn complete(&mut self, slot: u32, freed: &mut usize) {
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

    /// Applies one slot event; returns what to deliver to the output stream
    /// and whether an output credit can go straight back to the worker.
    pub(crate) fn apply(
        &mut self,
        worker: usize,
        event: SlotEvent<O>,
        mut deliver: impl FnMut(Delivered<O>),
        credits_back: &mut u32,
        freed: &mut usize,
    ) -> Result<(), UnknownSlot> {
        let slot = match &event {
            SlotEvent::Output { slot, .. }
            | SlotEvent::Done { slot }
            | SlotEvent::OutputDone { slot, .. }
            | SlotEvent::Failed { slot, .. } => *slot,
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
                *credits_back += 1;
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
            SlotEvent::Failed {
                message, panicked, ..
            } => {
                let error = TaskError {
                    worker,
                    task: id,
                    message,
                    panicked,
                };
                match self.slots.take(slot) {
                    (Some(call), _) => {
                        let _ = call.tx.send(CallOutcome::Failed(error));
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

#[cfg(test)]
mod tests;
