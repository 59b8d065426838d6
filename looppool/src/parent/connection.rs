//! The parent's side of one worker connection: a writer that flushes the
//! lane's buffer, and a reader that turns the worker's frames into outputs,
//! call replies and returned credits.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::lane::{Delivered, Lane, SlotEvent};
use super::outputs::{Batch, BatchSender, Output};
use crate::codec;
use crate::protocol::FromWorker;
use crate::task_id::TaskId;
use crate::transport::{self, FrameReader, WriteHalf};

/// Writes the lane's queued frames, one `write` per batch, until aborted or
/// the connection fails.
pub(crate) async fn write_loop<O>(lane: Arc<Lane<O>>, generation: u64, mut io: WriteHalf) {
    let mut batch = Vec::with_capacity(64 * 1024);
    // On a current_thread runtime nobody runs while the writer does: the
    // submitters have queued what they had before it was polled. A yield
    // there only defers the write behind a poll of the I/O driver (one more
    // `epoll_wait` per `call`).
    let yield_after_wake = tokio::runtime::Handle::current().runtime_flavor()
        != tokio::runtime::RuntimeFlavor::CurrentThread;
    loop {
        let took = {
            let mut st = lane.lock();
            if st.generation != generation {
                return;
            }
            std::mem::swap(&mut st.out, &mut batch);
            !batch.is_empty()
        };
        if !took {
            lane.writer_wake.notified().await;
            if yield_after_wake {
                // Let submitters that were woken with us add to the batch
                // before it is taken.
                tokio::task::yield_now().await;
            }
            continue;
        }
        if transport::write_batch(&mut io, &batch).await.is_err() {
            // The worker is gone; the reader sees the end and reports it.
            return;
        }
        batch.clear();
        if batch.capacity() > 4 * 1024 * 1024 {
            batch = Vec::with_capacity(64 * 1024);
        }
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

/// Decodes an output's payload.
///
/// A function rather than a closure in the read loop: the compiler left the
/// closure out of line, and its result, returned through memory, was
/// reloaded by a stalled caller.
#[inline(always)]
fn decode_output<O: DeserializeOwned>(payload: &[u8]) -> Result<O, String> {
    codec::get_serde::<O>(payload).map_err(|e| format!("cannot deserialize an output: {e}"))
}

/// What one read hands to the output stream: batches of at most
/// [`Lane::batch_items`] items each (see there), all full but the last.
struct Collected<'a, O> {
    lane: &'a Lane<O>,
    /// The batch being filled.
    items: Vec<Output<O>>,
    /// Output credits its items spent (one per value).
    credits: u32,
    /// Batches already full, with their credits, in order.
    full: Vec<(Vec<Output<O>>, u32)>,
}

impl<O> Collected<'_, O> {
    #[inline(always)]
    fn deliver(&mut self, worker: usize, delivered: Delivered<O>) {
        match delivered {
            Delivered::Value { task, value } => self.value(worker, Some(task), value),
            Delivered::Failed(error) => self.push(Output::Failed(Box::new(error)), 0),
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
        let next = self.lane.empty_batch();
        let full = std::mem::replace(&mut self.items, next);
        self.full.push((full, std::mem::take(&mut self.credits)));
    }

    #[inline(always)]
    fn value(&mut self, worker: usize, task: Option<TaskId>, value: O) {
        let item = Output::Value {
            worker,
            task,
            value,
        };
        self.push(item, 1);
    }
}

/// Reads the worker's frames until the connection ends.
///
/// Each read's frames are decoded and applied to the lane in one pass under
/// one lock (a first pass that decoded into a vector of events, applied in a
/// second, cost the parent a move of every output twice). Messages that
/// need the lane's lock themselves (reports) are handled with it released.
pub(crate) async fn read_loop<O: DeserializeOwned + Send + 'static>(
    lane: Arc<Lane<O>>,
    generation: u64,
    mut reader: FrameReader,
    outputs: BatchSender<O>,
) -> ReadEnd {
    let worker = lane.index;
    let pid = lane.lock().pid;
    let mut bye = false;
    // Kept from one read to the next: the list of full batches.
    let mut full = Vec::new();
    loop {
        match reader.fill().await {
            Ok(true) => {}
            // (A peer that dies with unread input resets the connection;
            // `fill` reports that as the end of the stream too.)
            Ok(false) => return if bye { ReadEnd::Bye } else { ReadEnd::Eof },
            Err(e) => return ReadEnd::Broken(e.to_string()),
        }
        let mut got = Collected {
            lane: &lane,
            items: lane.empty_batch(),
            credits: 0,
            full: std::mem::take(&mut full),
        };
        let mut credits_back = 0u32;
        let mut freed = 0usize;
        let mut failures = Vec::new();
        // Set when the connection must end after what was read is delivered.
        let mut end = None;
        // Set when the lane passed to another connection while its lock was
        // released (a report): its state is then no longer ours to update.
        let mut replaced = false;
        let mut st = lane.lock();
        if st.generation != generation {
            return ReadEnd::Broken("connection replaced".into());
        }
        loop {
            let body = match reader.next_frame() {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(e) => {
                    end = Some(e.to_string());
                    break;
                }
            };
            let msg = match FromWorker::decode(body) {
                Ok(msg) => msg,
                Err(e) => {
                    end = Some(e.to_string());
                    break;
                }
            };
            let event = match msg {
                FromWorker::OutputDone { slot, payload } => match decode_output::<O>(payload) {
                    Ok(value) => SlotEvent::OutputDone { slot, value },
                    Err(e) => {
                        end = Some(e);
                        break;
                    }
                },
                FromWorker::Output {
                    slot: Some(slot),
                    payload,
                } => match decode_output::<O>(payload) {
                    Ok(value) => SlotEvent::Output { slot, value },
                    Err(e) => {
                        end = Some(e);
                        break;
                    }
                },
                FromWorker::Output {
                    slot: None,
                    payload,
                } => match decode_output::<O>(payload) {
                    Ok(value) => {
                        got.value(worker, None, value);
                        continue;
                    }
                    Err(e) => {
                        end = Some(e);
                        break;
                    }
                },
                FromWorker::Done(slot) => SlotEvent::Done { slot },
                FromWorker::Failed { slot, failure } => {
                    failures.push((failure.message.clone(), failure.panicked));
                    SlotEvent::Failed {
                        slot,
                        message: failure.message,
                        panicked: failure.panicked,
                    }
                }
                FromWorker::Bye => {
                    bye = true;
                    continue;
                }
                FromWorker::Pong(_) => {
                    lane.pong();
                    continue;
                }
                FromWorker::Report(_) | FromWorker::Log(_) => {
                    // These take the lane's lock themselves.
                    drop(st);
                    match msg {
                        FromWorker::Report(body) => crate::metrics::on_report(&lane, pid, body),
                        FromWorker::Log(body) => crate::metrics::on_log(&lane, pid, body),
                        _ => unreachable!("matched above"),
                    }
                    st = lane.lock();
                    if st.generation != generation {
                        replaced = true;
                        end = Some("connection replaced".into());
                        break;
                    }
                    continue;
                }
                FromWorker::Hello { .. } | FromWorker::Ready | FromWorker::InitFailed(_) => {
                    end = Some("handshake message after the handshake".into());
                    break;
                }
            };
            // Inlined: as a call, the closure's work (a push of the item)
            // was cheaper than the call itself.
            let applied = st.apply(
                worker,
                event,
                #[inline(always)]
                |d| got.deliver(worker, d),
                &mut credits_back,
                &mut freed,
            );
            if let Err(e) = applied {
                end = Some(format!("message for slot {}, which holds no task", e.0));
                break;
            }
        }
        let mut overdrawn = None;
        let mut waiters = false;
        if !replaced {
            if st.recycle_at.is_some_and(|at| st.completed >= at) {
                let completed = st.completed;
                if lane.recycle(&mut st) {
                    st.recycle_reason = Some(crate::event::RecycleReason::Tasks { completed });
                }
            }
            // Every output spends one of the worker's credits.
            let spent: u32 = got.credits + got.full.iter().map(|(_, c)| c).sum::<u32>();
            st.output_window -= i64::from(spent) + i64::from(credits_back);
            overdrawn = (st.output_window < 0).then(|| -st.output_window);
            // Replies to calls free their credits at once; owed credits go
            // out if the window ran low.
            lane.owe_credits(&mut st, credits_back);
            waiters = st.space_waiters_any();
        }
        drop(st);
        for (message, panicked) in failures {
            tracing::warn!(worker, pid, message = %message, panicked, "task failed");
        }
        if freed > 0 && waiters {
            lane.wake_waiters();
        }
        let last = (!got.items.is_empty()).then_some((got.items, got.credits));
        for (items, credits) in got.full.drain(..).chain(last) {
            let batch = Batch {
                worker,
                generation,
                credits,
                items,
            };
            if let Err(returned) = outputs.send(batch) {
                // Nobody consumes outputs: hand the credits straight back.
                lane.return_output_credits(generation, returned.0.credits);
                lane.keep_batch(returned.0.items);
            }
        }
        full = got.full;
        if let Some(excess) = overdrawn {
            return ReadEnd::Broken(format!(
                "the worker exceeded its output credit window by {excess}: it does not wait for credits"
            ));
        }
        if let Some(why) = end {
            return ReadEnd::Broken(why);
        }
    }
}
