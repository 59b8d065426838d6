//! The parent's side of one worker connection: a writer that flushes the
//! lane's buffer, and a reader that turns the worker's frames into outputs,
//! call replies and returned credits.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::lane::{Delivered, Lane, SlotEvent};
use super::outputs::{Batch, BatchSender, Output};
use crate::codec;
use crate::protocol::FromWorker;
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

/// A decoded message that concerns the lane.
enum Event<O> {
    Slot(SlotEvent<O>),
    Unsolicited(O),
}

/// Reads the worker's frames until the connection ends.
pub(crate) async fn read_loop<O: DeserializeOwned + Send + 'static>(
    lane: Arc<Lane<O>>,
    generation: u64,
    mut reader: FrameReader,
    outputs: BatchSender<O>,
) -> ReadEnd {
    let worker = lane.index;
    let pid = lane.lock().pid;
    let mut events: Vec<Event<O>> = Vec::new();
    let mut bye = false;
    loop {
        match reader.fill().await {
            Ok(true) => {}
            // (A peer that dies with unread input resets the connection;
            // `fill` reports that as the end of the stream too.)
            Ok(false) => return if bye { ReadEnd::Bye } else { ReadEnd::Eof },
            Err(e) => return ReadEnd::Broken(e.to_string()),
        }
        // First decode everything in this read without the lane's lock ...
        let mut dones = 0;
        loop {
            let body = match reader.next_frame() {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(e) => return ReadEnd::Broken(e.to_string()),
            };
            let msg = match FromWorker::decode(body) {
                Ok(msg) => msg,
                Err(e) => return ReadEnd::Broken(e.to_string()),
            };
            let decode = |payload: &[u8]| {
                codec::get_serde::<O>(payload)
                    .map_err(|e| format!("cannot deserialize an output: {e}"))
            };
            match msg {
                FromWorker::Output {
                    slot: None,
                    payload,
                } => match decode(payload) {
                    Ok(value) => events.push(Event::Unsolicited(value)),
                    Err(e) => return ReadEnd::Broken(e),
                },
                FromWorker::Output {
                    slot: Some(slot),
                    payload,
                } => match decode(payload) {
                    Ok(value) => events.push(Event::Slot(SlotEvent::Output { slot, value })),
                    Err(e) => return ReadEnd::Broken(e),
                },
                FromWorker::OutputDone { slot, payload } => match decode(payload) {
                    Ok(value) => events.push(Event::Slot(SlotEvent::OutputDone { slot, value })),
                    Err(e) => return ReadEnd::Broken(e),
                },
                FromWorker::Done(slot) => {
                    events.push(Event::Slot(SlotEvent::Done { slot }));
                    dones += 1;
                }
                FromWorker::Failed { slot, failure } => {
                    tracing::warn!(worker, pid, message = %failure.message, panicked = failure.panicked, "task failed");
                    events.push(Event::Slot(SlotEvent::Failed {
                        slot,
                        message: failure.message,
                        panicked: failure.panicked,
                    }))
                }
                FromWorker::Bye => bye = true,
                FromWorker::Pong(_) => lane.pong(),
                FromWorker::Report(body) => crate::metrics::on_report(&lane, pid, body),
                FromWorker::Log(body) => crate::metrics::on_log(&lane, pid, body),
                FromWorker::Hello { .. } | FromWorker::Ready | FromWorker::InitFailed(_) => {
                    return ReadEnd::Broken("handshake message after the handshake".into())
                }
            }
        }
        if events.is_empty() {
            continue;
        }
        // ... then apply it all under one lock.
        // Sized once, for every event but bare completions: grown one push
        // at a time, its reallocations and copies cost the reader about 30
        // instructions per output.
        let mut items = Vec::with_capacity(events.len() - dones);
        let mut credits_held = 0u32;
        let mut credits_back = 0u32;
        let mut freed = 0usize;
        let mut bad_slot = None;
        let mut overdrawn = None;
        let waiters;
        {
            let mut st = lane.lock();
            if st.generation != generation {
                return ReadEnd::Broken("connection replaced".into());
            }
            for event in events.drain(..) {
                match event {
                    Event::Unsolicited(value) => {
                        credits_held += 1;
                        items.push(Output::Value {
                            worker,
                            task: None,
                            value,
                        });
                    }
                    Event::Slot(event) => {
                        let mut deliver = |d: Delivered<O>| match d {
                            Delivered::Value { task, value } => {
                                credits_held += 1;
                                items.push(Output::Value {
                                    worker,
                                    task: Some(task),
                                    value,
                                });
                            }
                            Delivered::Failed(error) => items.push(Output::Failed(error)),
                        };
                        if let Err(e) =
                            st.apply(worker, event, &mut deliver, &mut credits_back, &mut freed)
                        {
                            bad_slot = Some(e.0);
                            break;
                        }
                    }
                }
            }
            if st.recycle_at.is_some_and(|at| st.completed >= at) {
                let completed = st.completed;
                if lane.recycle(&mut st) {
                    st.recycle_reason = Some(crate::supervisor::RecycleReason::Tasks { completed });
                }
            }
            // Every output spends one of the worker's credits.
            st.output_window -= i64::from(credits_held) + i64::from(credits_back);
            if st.output_window < 0 {
                overdrawn = Some(-st.output_window);
            }
            // Replies to calls free their credits at once; owed credits go
            // out if the window ran low.
            lane.owe_credits(&mut st, credits_back);
            waiters = st.space_waiters_any();
        }
        events.clear();
        if freed > 0 && waiters {
            lane.wake_waiters();
        }
        if !items.is_empty() {
            let batch = Batch {
                worker,
                generation,
                credits: credits_held,
                items,
            };
            if let Err(returned) = outputs.send(batch) {
                // Nobody consumes outputs: hand the credits straight back.
                lane.return_output_credits(generation, returned.0.credits);
            }
        }
        if let Some(excess) = overdrawn {
            return ReadEnd::Broken(format!(
                "the worker exceeded its output credit window by {excess}: it does not wait for credits"
            ));
        }
        if let Some(slot) = bad_slot {
            return ReadEnd::Broken(format!("message for slot {slot}, which holds no task"));
        }
    }
}
