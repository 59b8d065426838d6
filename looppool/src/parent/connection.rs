//! The parent's side of one worker connection: a writer that flushes the
//! lane's buffer, and a reader that turns the worker's frames into outputs,
//! call replies and returned credits.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::lane::{Delivered, Lane, LaneState, SlotEvent};
use super::outputs::{Batch, BatchSender};
use crate::blob::wire;
use crate::output::Output;
use crate::protocol::Announced;
use crate::task_id::TaskId;
use crate::transport::blobs::{BlobReceiver, BlobSender, PendingBlob};
use crate::transport::{self, FrameReader, WriteHalf};

mod decode;
mod timed;

use decode::{decode_frame, Frame};

/// Writes the lane's queued frames, one `write` per batch, until aborted or
/// the connection fails; the descriptors of the blobs they carry go first,
/// on `blobs`.
pub(crate) async fn write_loop<O>(
    lane: Arc<Lane<O>>,
    generation: u64,
    mut io: WriteHalf,
    mut blobs: Option<BlobSender>,
) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut pending = Vec::new();
    // On a current_thread runtime nobody runs while the writer does: the
    // submitters have queued what they had before it was polled. A yield
    // there only defers the write behind a poll of the I/O driver (one more
    // `epoll_wait` per `call`).
    let yield_after_wake = tokio::runtime::Handle::current().runtime_flavor()
        != tokio::runtime::RuntimeFlavor::CurrentThread;
    loop {
        if !lane
            .lock()
            .take_frames(generation, &mut batch, &mut pending)
        {
            return;
        }
        let took = !batch.is_empty();
        if !took {
            lane.writer_wake.notified().await;
            if yield_after_wake {
                // Let submitters that were woken with us add to the batch
                // before it is taken.
                tokio::task::yield_now().await;
            }
            continue;
        }
        let written = if pending.is_empty() {
            transport::flush_batch(&mut io, &mut batch).await
        } else {
            flush_with_blobs(&mut io, &mut batch, &mut pending, blobs.as_mut()).await
        };
        if written.is_err() {
            // The worker is gone; the reader sees the end and reports it.
            return;
        }
    }
}

/// Writes a batch whose frames carry blobs, their descriptors first.
#[cold]
async fn flush_with_blobs(
    io: &mut WriteHalf,
    batch: &mut Vec<u8>,
    pending: &mut Vec<PendingBlob>,
    blobs: Option<&mut BlobSender>,
) -> std::io::Result<()> {
    match blobs {
        Some(blobs) => blobs.flush(io, batch, pending).await,
        // The lane sends blobs by descriptor only over a blob socket.
        None => Err(std::io::Error::other("blobs queued without a blob socket")),
    }
}

/// How a connection's reading ended.
#[derive(Debug)]
pub(crate) enum ReadEnd {
    /// The worker said goodbye, then closed the connection.
    Bye,
    /// The connection ended without a goodbye.
    Eof,
    /// The worker broke the protocol (or the socket failed).
    Broken(String),
}

/// What one read hands to the output stream: batches of at most
/// [`SpareBatches::batch_items`](super::batches::SpareBatches::batch_items)
/// items each (see there), all full but the last.
struct Collected<'a, O> {
    lane: &'a Lane<O>,
    /// When the read was made, if the lane's tasks are timed.
    received: Option<std::time::Instant>,
    /// The batch being filled.
    items: Vec<Output<O>>,
    /// Output credits its items spent (each its frame's cost).
    credits: u32,
    /// Batches already full, with their credits, in order.
    full: Vec<(Vec<Output<O>>, u32)>,
}

impl<'a, O> Collected<'a, O> {
    /// What a read of `lane` collects, into a fresh batch after `full`
    /// (empty, its capacity kept from an earlier read).
    #[inline(always)]
    fn new(lane: &'a Lane<O>, full: Vec<(Vec<Output<O>>, u32)>) -> Self {
        Collected {
            lane,
            received: None,
            items: lane.batches.empty(),
            credits: 0,
            full,
        }
    }

    #[inline(always)]
    fn deliver(&mut self, worker: usize, delivered: Delivered<O>, cost: u32) {
        match delivered {
            Delivered::Value { task, value } => self.value(worker, Some(task), value, cost),
            Delivered::Failed(error) => self.push(Output::Failed(Box::new(error)), cost),
            Delivered::Cancelled { task } => self.push(Output::Cancelled { worker, task }, cost),
        }
    }

    #[inline(always)]
    fn push(&mut self, item: Output<O>, credits: u32) {
        if self.items.len() == self.items.capacity() {
            self.next_batch();
        }
        self.items.push(item);
        self.credits += credits;
    }

    /// Puts the full batch aside and starts another.
    #[cold]
    #[inline(never)]
    fn next_batch(&mut self) {
        let next = self.lane.batches.empty();
        let full = std::mem::replace(&mut self.items, next);
        self.full.push((full, std::mem::take(&mut self.credits)));
    }

    #[inline(always)]
    fn value(&mut self, worker: usize, task: Option<TaskId>, value: O, cost: u32) {
        let item = Output::Value {
            worker,
            task,
            value,
        };
        self.push(item, cost);
    }

    /// Output credits the collected items spent.
    fn spent(&self) -> u32 {
        self.credits + self.full.iter().map(|(_, c)| c).sum::<u32>()
    }
}

/// The reader of one worker connection, between reads.
struct Reader<O> {
    lane: Arc<Lane<O>>,
    generation: u64,
    worker: usize,
    pid: u32,
    outputs: BatchSender<O>,
}

/// What a reader keeps from one read to the next.
struct Between<O> {
    /// Whether the worker said goodbye.
    bye: bool,
    /// The list of full batches (empty between reads, its capacity kept).
    full: Vec<(Vec<Output<O>>, u32)>,
    /// Where the descriptors of the blobs that frames announce arrive.
    blobs: Option<BlobReceiver>,
}

/// What one read's frames did to the lane, settled after they are applied.
#[derive(Default)]
struct ReadTally {
    /// Output credits freed at once by call replies.
    replies: u32,
    /// Slots freed.
    freed: usize,
    /// Failed tasks, to log once the lock is released.
    failures: Vec<(TaskId, String, bool)>,
    /// Why the connection must end after what was read is delivered.
    end: Option<String>,
    /// The lane passed to another connection while its lock was released
    /// (for a report): its state is then no longer this reader's to update.
    replaced: bool,
}

impl ReadTally {
    /// Notes a failure event, to log it once the lane's lock is released.
    #[inline(always)]
    fn note_failure<O>(&mut self, st: &LaneState<O>, worker: usize, event: &SlotEvent<O>) {
        if let SlotEvent::Failed {
            slot,
            message,
            panicked,
        } = event
        {
            if let Some(task) = st.task_in_slot(*slot, worker as u32) {
                self.failures.push((task, message.clone(), *panicked));
            }
        }
    }
}

/// Reads the worker's frames until the connection ends.
#[cfg_attr(not(any(test, feature = "fuzzing")), allow(dead_code))]
pub(crate) async fn read_loop<O: DeserializeOwned + Send + 'static>(
    lane: Arc<Lane<O>>,
    generation: u64,
    reader: FrameReader,
    outputs: BatchSender<O>,
) -> ReadEnd {
    read_loop_until(
        lane,
        generation,
        reader,
        None,
        outputs,
        std::future::pending(),
    )
    .await
}

/// Reads the worker's frames until the connection ends, or until `ended`
/// completes, which then counts as the end of the connection (a worker
/// process that exited while something else holds its connection open).
/// `ended` is polled only when no input is at hand. The descriptors of the
/// blobs that frames announce are taken from `blobs`.
pub(crate) async fn read_loop_until<O: DeserializeOwned + Send + 'static>(
    lane: Arc<Lane<O>>,
    generation: u64,
    mut reader: FrameReader,
    blobs: Option<BlobReceiver>,
    outputs: BatchSender<O>,
    ended: impl std::future::Future<Output = ()>,
) -> ReadEnd {
    let mut ended = std::pin::pin!(ended);
    let this = Reader {
        worker: lane.index,
        pid: lane.pid(),
        lane,
        generation,
        outputs,
    };
    let mut between = Between {
        bye: false,
        full: Vec::new(),
        blobs,
    };
    loop {
        let filled = tokio::select! {
            biased;
            filled = reader.fill() => filled,
            () = &mut ended => Ok(false),
        };
        match filled {
            Ok(true) => {}
            // (A peer that dies with unread input resets the connection;
            // `fill` reports that as the end of the stream too.)
            Ok(false) => {
                return if between.bye {
                    ReadEnd::Bye
                } else {
                    ReadEnd::Eof
                }
            }
            Err(e) => return ReadEnd::Broken(e.to_string()),
        }
        if let Some(end) = this.read(&mut reader, &mut between) {
            return end;
        }
    }
}

impl<O: DeserializeOwned + Send + 'static> Reader<O> {
    /// Handles the frames of one read: decodes and applies them to the lane
    /// in one pass under one lock (a first pass that decoded into a vector
    /// of events, applied in a second, cost a move of every output twice),
    /// then delivers the outputs. Returns how the connection ended, if it
    /// did.
    #[inline(always)]
    fn read(&self, reader: &mut FrameReader, between: &mut Between<O>) -> Option<ReadEnd> {
        let lane = &*self.lane;
        let worker = self.worker;
        let mut got = Collected::new(lane, std::mem::take(&mut between.full));
        let mut tally = ReadTally::default();
        let mut st = lane.lock();
        if st.generation() != self.generation {
            return Some(ReadEnd::Broken("connection replaced".into()));
        }
        got.received = self.timed_now(&mut st);
        loop {
            let body = match reader.next_frame() {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(e) => {
                    tally.end = Some(e.to_string());
                    break;
                }
            };
            // What an output or failure frame spends (most cost one).
            let mut cost = st.output_cost(body.len());
            let event = match decode_frame::<O>(body) {
                Ok(Frame::Slot(event)) => event,
                Ok(Frame::Timed(event, ran)) => {
                    if self.apply_timed(&mut st, &mut got, &mut tally, event, cost, ran) {
                        continue;
                    }
                    break;
                }
                Ok(Frame::Blobs(announced)) => {
                    match self.open_blobs(&mut st, between, &mut got, body.len(), announced) {
                        Ok(Some((event, with_blobs))) => {
                            cost = with_blobs;
                            event
                        }
                        Ok(None) => continue,
                        Err(e) => {
                            tally.end = Some(e);
                            break;
                        }
                    }
                }
                Ok(Frame::Unsolicited(value)) => {
                    got.value(worker, None, value, cost);
                    continue;
                }
                Ok(Frame::Bye) => {
                    between.bye = true;
                    continue;
                }
                Ok(Frame::Pong) => {
                    lane.pong();
                    continue;
                }
                Ok(frame @ (Frame::Report(_) | Frame::Log(_))) => {
                    // These take the lane's lock themselves.
                    drop(st);
                    self.observe(frame);
                    st = lane.lock();
                    if st.generation() != self.generation {
                        tally.replaced = true;
                        tally.end = Some("connection replaced".into());
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    tally.end = Some(e);
                    break;
                }
            };
            // A cancelled task's answer spent no output credit.
            let cost = match event {
                SlotEvent::Cancelled { .. } => 0,
                _ => cost,
            };
            tally.note_failure(&st, worker, &event);
            // Inlined: as a call, the closure's work (a push of the item)
            // was cheaper than the call itself.
            let applied = st.apply(
                worker,
                event,
                cost,
                #[inline(always)]
                |d| got.deliver(worker, d, cost),
                &mut tally.replies,
                &mut tally.freed,
            );
            if let Err(e) = applied {
                tally.end = Some(format!("message for slot {}, which holds no task", e.0));
                break;
            }
        }
        self.settle(st, got, tally, between)
    }

    /// Settles one read's frames with the lane, then delivers its outputs.
    #[inline(always)]
    fn settle(
        &self,
        mut st: std::sync::MutexGuard<'_, LaneState<O>>,
        got: Collected<'_, O>,
        tally: ReadTally,
        between: &mut Between<O>,
    ) -> Option<ReadEnd> {
        let lane = &*self.lane;
        let mut overdrawn = None;
        let mut waiters = false;
        if !tally.replaced {
            overdrawn = lane
                .settle_read(&mut st, got.spent(), tally.replies, tally.freed)
                .err();
            waiters = lane.has_waiters(&st);
        }
        drop(st);
        self.log_failures(&tally.failures);
        if tally.freed > 0 && waiters {
            lane.wake_waiters();
        }
        between.full = self.deliver(got);
        if let Some(excess) = overdrawn {
            return Some(ReadEnd::Broken(format!(
                "the worker exceeded its output credit window by {}: it does not wait for credits",
                excess.0
            )));
        }
        tally.end.map(ReadEnd::Broken)
    }

    /// Takes the descriptors of the blobs a frame announces and decodes
    /// the frame it wraps with them, which must be an output; returns the
    /// task's event with the output credits it spends, its blobs' bytes
    /// counted (an output of no task goes to `got` at once). An error when
    /// a descriptor is not there (its frame arrived, so it never will), is
    /// not a sealed memory file of its announced size, or the frame breaks
    /// the protocol otherwise.
    #[cold]
    #[inline(never)]
    fn open_blobs(
        &self,
        st: &mut LaneState<O>,
        between: &mut Between<O>,
        got: &mut Collected<'_, O>,
        body_len: usize,
        announced: &[u8],
    ) -> Result<Option<(SlotEvent<O>, u32)>, String> {
        let Some(receiver) = &mut between.blobs else {
            return Err("a frame with blobs on a connection that carries no descriptors".into());
        };
        let announced = Announced::parse(announced).map_err(|e| e.to_string())?;
        let max = self.lane.max_frame();
        let size = (body_len as u64).saturating_add(announced.total);
        if size > max as u64 {
            return Err(format!(
                "a frame of {size} bytes with its blobs exceeds the limit of {max} bytes"
            ));
        }
        let received = receiver.receive(announced.sizes())?;
        let (decoded, left) = wire::with_inbox(received, || decode_frame::<O>(announced.inner));
        let frame = decoded?;
        if left > 0 {
            return Err(format!(
                "a frame announcing {} blobs whose output holds {}",
                announced.count(),
                announced.count() as usize - left
            ));
        }
        let cost = st.output_cost(size as usize);
        match frame {
            Frame::Unsolicited(value) => {
                got.value(self.worker, None, value, cost);
                Ok(None)
            }
            Frame::Slot(event @ (SlotEvent::Output { .. } | SlotEvent::OutputDone { .. })) => {
                Ok(Some((event, cost)))
            }
            _ => Err("a frame with blobs around something other than an output".into()),
        }
    }

    /// Handles a report or a log record.
    #[cold]
    fn observe(&self, frame: Frame<'_, O>) {
        match frame {
            Frame::Report(body) => {
                let lane = &self.lane;
                lane.obs.on_report(self.worker, self.pid, body, |slots| {
                    let st = lane.lock();
                    let named = slots
                        .iter()
                        .filter_map(|&s| st.task_in_slot(s, lane.index as u32))
                        .collect();
                    drop(st);
                    (named, lane.held_tasks())
                })
            }
            Frame::Log(body) => {
                let lane = &self.lane;
                lane.obs.on_log(self.worker, self.pid, body, |slot| {
                    lane.lock().span_in_slot(slot)
                })
            }
            _ => {}
        }
    }

    /// Logs the tasks that failed in one read.
    fn log_failures(&self, failures: &[(TaskId, String, bool)]) {
        for (task, message, panicked) in failures {
            self.lane
                .obs
                .log_failed_task(self.worker, self.pid, *task, message, *panicked);
        }
    }

    /// Hands one read's batches to the output stream; returns the emptied
    /// list of full batches, to keep.
    fn deliver(&self, mut got: Collected<'_, O>) -> Vec<(Vec<Output<O>>, u32)> {
        let last = (!got.items.is_empty()).then_some((got.items, got.credits));
        for (items, credits) in got.full.drain(..).chain(last) {
            let batch = Batch {
                worker: self.worker,
                generation: self.generation,
                credits,
                items,
                received: got.received,
            };
            if let Err(returned) = self.outputs.send(batch) {
                // Nobody consumes outputs: hand the credits straight back.
                self.lane
                    .return_output_credits(self.generation, returned.0.credits);
                self.lane.batches.keep(returned.0.items);
            }
        }
        got.full
    }
}
