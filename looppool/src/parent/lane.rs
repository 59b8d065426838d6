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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::batches::SpareBatches;
use super::credits::{OutputWindow, Overdrawn};
use super::reports::LaneObs;
pub(crate) use super::slots::{CallOutcome, CallSender, Held, Retry, Timed};
use super::slots::{SlotMore, Slots};
use super::space::AnySpace;
use crate::blob::Sealed;
use crate::event::RecycleReason;
use crate::protocol::{self, kind};
use crate::timing::{Sampler, SentLog, Timings};
use crate::transport::blobs::PendingBlob;

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
    out: Vec<u8>,
    slots: Slots<O>,
    free: Vec<u32>,
    status: Status,
    /// Counts connections: a late message for an old one is ignored.
    generation: u64,
    pid: u32,
    next_seq: u64,
    /// Tasks submitted since the submitter last yielded (see `Lane::yield_every`).
    since_yield: u32,
    space_waiters: usize,
    /// Tasks completed (or failed) by the current worker process.
    completed: u64,
    /// Recycle the current worker once `completed` reaches this.
    recycle_at: Option<u64>,
    /// Why the current worker is being recycled, if it is.
    recycle_reason: Option<RecycleReason>,
    /// Done, failed and started counts for stats, per worker index.
    counters: LaneCounters,
    /// The current worker's output-credit window.
    window: OutputWindow,
    /// Tasks whose cancel was sent and not yet answered (rarely any).
    cancelling: Vec<cancel::Cancelling>,
    /// Blobs whose descriptors go out with the frames in `out`.
    blobs: Vec<PendingBlob>,
    /// Blobs of at least this many bytes go to the current worker by
    /// descriptor; `None`: its connection carries none.
    blob_threshold: Option<usize>,
    /// The blobs of the task frame just encoded, for its retry copy.
    retry_blobs: Vec<Arc<Sealed>>,
    /// Which tasks are timed (see `crate::timing`).
    pub(crate) sampler: Sampler,
    /// When the last timed tasks were queued.
    sent: SentLog,
}

/// The counts a lane keeps under its lock, per worker index.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LaneCounters {
    /// Tasks that completed.
    pub(crate) done: u64,
    /// Tasks that failed.
    pub(crate) failed: u64,
    /// Tasks cancelled on the parent's request.
    pub(crate) cancelled: u64,
    /// Processes that opened the lane.
    pub(crate) starts: u64,
}

pub(crate) struct Lane<O> {
    pub(crate) index: usize,
    /// Task slots: the bound on the worker's queued plus running tasks.
    capacity: u32,
    /// Tasks pushed between two yields of a submitter (see `push::yield_every`).
    yield_every: u32,
    max_frame: usize,
    state: Mutex<LaneState<O>>,
    /// Wakes the connection's writer on the empty → non-empty transition.
    pub(crate) writer_wake: Notify,
    /// Wakes submitters waiting for a slot, or for the lane to reopen.
    space: Notify,
    /// Wakes round-robin senders waiting for room on any lane of the pool.
    any_space: Arc<AnySpace>,
    /// Mirrors `status == Open` for round-robin choice without the lock.
    up: AtomicBool,
    /// Set, under the lock, when a push found no free slot; cleared, under
    /// the lock, when slots are freed. Round-robin choice skips a full
    /// worker by it without taking its lock.
    full: AtomicBool,
    /// Set when a submitter should yield before its next push (see
    /// `Lane::take_yield_due`).
    yield_due: AtomicBool,
    /// Times a lost task may be re-sent (0: lost tasks are reported).
    retries: u32,
    /// Set by the heartbeat before it kills a silent worker.
    pub(crate) unresponsive: AtomicBool,
    /// When the worker last answered a ping, in ms since `epoch`.
    pong_ms: AtomicU64,
    epoch: Instant,
    /// Reports, blocked-loop episodes and other rare figures.
    pub(crate) obs: LaneObs,
    /// Emptied output batches, kept for the reader to fill again.
    pub(crate) batches: SpareBatches<O>,
    /// Where this worker index's tasks' time goes.
    pub(crate) timings: Timings,
}

impl<O> std::fmt::Debug for Lane<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl<O> Lane<O> {
    pub(crate) fn new(index: usize, capacity: u32, max_frame: usize, retries: u32) -> Self {
        Lane {
            index,
            capacity,
            yield_every: push::yield_every(capacity),
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
                window: OutputWindow::default(),
                cancelling: Vec::new(),
                blobs: Vec::new(),
                blob_threshold: None,
                retry_blobs: Vec::new(),
                sampler: Sampler::new(false, index as u64),
                sent: SentLog::default(),
            }),
            writer_wake: Notify::new(),
            space: Notify::new(),
            any_space: Arc::default(),
            up: AtomicBool::new(false),
            full: AtomicBool::new(false),
            yield_due: AtomicBool::new(false),
            retries,
            unresponsive: AtomicBool::new(false),
            pong_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            obs: Default::default(),
            batches: SpareBatches::default(),
            timings: Timings::default(),
        }
    }

    /// Makes the lane time a sample of its tasks, or none (the default).
    pub(crate) fn timed(mut self, on: bool) -> Self {
        self.timings = Timings::new(on);
        self.lock().sampler = Sampler::new(on, self.index as u64);
        self
    }

    /// `at` in ns since the lane's epoch (0 before it).
    pub(crate) fn ns_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
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

    /// The largest frame the worker may send, its blobs' bytes counted.
    pub(crate) fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// How many times a lost task may be re-sent.
    pub(crate) fn retries(&self) -> u32 {
        self.retries
    }

    /// Whether the lane takes tasks (a relaxed hint for routing).
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether the lane takes tasks and had a free slot when last looked
    /// at (a relaxed hint for round-robin choice, exact under the lock).
    #[inline(always)]
    pub(crate) fn has_room(&self) -> bool {
        self.up.load(Ordering::Relaxed) && !self.full.load(Ordering::Relaxed)
    }

    /// Notes, under the lock, that the lane has no free slot.
    #[cold]
    pub(super) fn note_full(&self) {
        self.full.store(true, Ordering::Relaxed);
    }

    /// Notes, under the lock, that slots were freed.
    #[inline(always)]
    fn note_room(&self) {
        if self.full.load(Ordering::Relaxed) {
            self.full.store(false, Ordering::Relaxed);
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LaneState<O>> {
        crate::sync::lock(&self.state)
    }

    /// Makes the lane wake `any_space` (its pool's) when it has room.
    pub(crate) fn sharing_space(mut self, any_space: Arc<AnySpace>) -> Self {
        self.any_space = any_space;
        self
    }

    /// Whether some sender waits for room on this lane, or on any lane.
    pub(crate) fn has_waiters(&self, st: &LaneState<O>) -> bool {
        st.space_waiters_any() || self.any_space.has_waiters()
    }

    /// Wakes every submitter waiting on this lane, or on any lane.
    pub(crate) fn wake_waiters(&self) {
        self.space.notify_waiters();
        self.any_space.wake();
    }

    /// Appends a control frame (stop, ping), behind any owed credits.
    fn push_control(&self, st: &mut LaneState<O>, kind: u8, value: Option<u64>) {
        let was_empty = st.out.is_empty();
        st.send_owed();
        protocol::put_simple(&mut st.out, kind, value);
        if was_empty {
            self.writer_wake.notify_one();
        }
    }

    /// Sends a heartbeat ping to the worker of connection `generation`;
    /// false if the lane has passed to another connection.
    pub(crate) fn ping(&self, generation: u64, nonce: u64) -> bool {
        let mut st = self.lock();
        if st.generation != generation {
            return false;
        }
        self.push_control(&mut st, kind::PING, Some(nonce));
        true
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
            self.owe_output_credits(&mut st, n);
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
    fn owe_output_credits(&self, st: &mut LaneState<O>, n: u32) {
        st.window.owe(n);
        if !st.window.is_owed() {
            return;
        }
        if !st.out.is_empty() || st.status != Status::Open || st.window.is_low() {
            let was_empty = st.out.is_empty();
            st.send_owed();
            if was_empty {
                self.writer_wake.notify_one();
            }
        }
    }

    /// How long the worker has waited for output credits the consumer
    /// holds, with its pid, once per episode, when that is at least
    /// `threshold`.
    pub(crate) fn unreported_wait(&self, threshold: Duration) -> Option<(u32, Duration)> {
        let mut st = self.lock();
        if !matches!(
            st.status,
            Status::Open | Status::Stopping | Status::Recycling
        ) {
            return None;
        }
        let waited = st.window.unreported_wait(threshold)?;
        Some((st.pid, waited))
    }

    /// Settles one read of the worker's frames: counts the `spent` output
    /// credits (items for the stream and `replies` to calls), owes back
    /// the replies' credits at once (a caller took them), and asks the
    /// worker to recycle if it completed its share of tasks.
    ///
    /// # Errors
    /// [`Overdrawn`] when the worker sent more outputs than its credits.
    pub(crate) fn settle_read(
        &self,
        st: &mut LaneState<O>,
        spent: u32,
        replies: u32,
        freed: usize,
    ) -> Result<(), Overdrawn> {
        if st.recycle_at.is_some_and(|at| st.completed >= at) {
            let completed = st.completed;
            if self.recycle(st) {
                st.recycle_reason = Some(RecycleReason::Tasks { completed });
            }
        }
        if freed > 0 {
            self.note_room();
        }
        st.window.spend(spent + replies)?;
        self.owe_output_credits(st, replies);
        Ok(())
    }

    /// Opens the lane for a newly connected worker, with a window of
    /// `output_credits` credits of `credit_bytes` bytes, and blobs of at
    /// least `blob_threshold` bytes sent by descriptor (`None`: its
    /// connection carries none); returns its generation.
    pub(crate) fn open(
        &self,
        pid: u32,
        recycle_at: Option<u64>,
        output_credits: u32,
        credit_bytes: u64,
        blob_threshold: Option<usize>,
    ) -> Option<u64> {
        let mut st = self.lock();
        if st.status == Status::Closed {
            return None;
        }
        if st.slots.is_empty() {
            st.slots = Slots::new(self.capacity as usize);
            // Pop from the end: lowest slots first, so wire ids stay short.
            st.free = (0..self.capacity).rev().collect();
        }
        st.generation += 1;
        st.pid = pid;
        st.status = Status::Open;
        st.completed = 0;
        st.counters.starts += 1;
        st.recycle_at = recycle_at;
        st.recycle_reason = None;
        st.window = OutputWindow::new(output_credits, credit_bytes);
        st.out.clear();
        st.blobs.clear();
        st.blob_threshold = blob_threshold;
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
    fn recycle(&self, st: &mut LaneState<O>) -> bool {
        if st.status != Status::Open {
            return false;
        }
        st.status = Status::Recycling;
        self.up.store(false, Ordering::Relaxed);
        self.push_control(st, kind::STOP, None);
        true
    }

    /// Tasks queued or running on this worker.
    pub(crate) fn in_flight(&self) -> usize {
        let st = self.lock();
        st.slots.len() - st.free.len()
    }

    /// Number of slots (the per-worker task bound).
    pub(crate) fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Drains the worker for replacement because its resident memory
    /// passed the limit; false if it was not open.
    pub(crate) fn recycle_for_memory(&self, rss_bytes: u64) -> bool {
        let mut st = self.lock();
        let recycling = self.recycle(&mut st);
        if recycling {
            st.recycle_reason = Some(RecycleReason::Memory { rss_bytes });
        }
        recycling
    }

    /// Drains the worker for replacement, for `reason` (one asked for
    /// from outside); false if it was not open (starting, stopping or
    /// already recycling).
    pub(crate) fn recycle_for(&self, reason: RecycleReason) -> bool {
        let mut st = self.lock();
        let recycling = self.recycle(&mut st);
        if recycling {
            st.recycle_reason = Some(reason);
        }
        recycling
    }

    /// Whether the lane takes tasks, and why not.
    pub(crate) fn status(&self) -> Status {
        self.lock().status
    }

    /// Why the current worker was recycled, if it was; cleared as taken.
    pub(crate) fn take_recycle_reason(&self) -> Option<RecycleReason> {
        self.lock().recycle_reason.take()
    }

    /// Done, failed and started counts of this worker index.
    pub(crate) fn counters(&self) -> LaneCounters {
        self.lock().counters
    }

    /// The process id of the current (or last) worker.
    pub(crate) fn pid(&self) -> u32 {
        self.lock().pid
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

impl<O> LaneState<O> {
    /// The output credits an output or failure frame of `body` bytes cost.
    #[inline(always)]
    pub(crate) fn output_cost(&mut self, body: usize) -> u32 {
        self.window.cost(body)
    }

    /// The connection the lane serves now.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Moves the queued frames into `batch` (which must be empty) for the
    /// writer of connection `generation`, and the blobs they carry into
    /// `blobs` (empty too); false if the lane passed to another connection.
    #[inline(always)]
    pub(crate) fn take_frames(
        &mut self,
        generation: u64,
        batch: &mut Vec<u8>,
        blobs: &mut Vec<PendingBlob>,
    ) -> bool {
        if self.generation != generation {
            return false;
        }
        std::mem::swap(&mut self.out, batch);
        if !self.blobs.is_empty() {
            std::mem::swap(&mut self.blobs, blobs);
        }
        true
    }

    /// Appends the owed output credits, if any, as one credit frame (the
    /// caller wakes the writer).
    fn send_owed(&mut self) {
        if let Some(n) = self.window.take_owed() {
            protocol::put_simple(&mut self.out, kind::CREDIT, Some(n.into()));
        }
    }
}

mod apply;
mod cancel;
mod held;
mod push;
pub(crate) use apply::{Delivered, SlotEvent};
pub(crate) use cancel::{CancelReason, CancelSent};
pub(crate) use push::PushError;

#[cfg(test)]
mod tests;
