//! The submit path: encoding a task into the lane's buffer under its one
//! lock, and waiting for a free slot.

use std::sync::atomic::Ordering;

use serde::Serialize;

use std::sync::{Arc, MutexGuard};

use super::{CallSender, Lane, LaneState, Retry, SlotMore, Status, Timed};
use crate::blob::{wire, Sealed};
use crate::codec::{CodecError, HEADER_LEN};
use crate::error::SubmitErrorKind;
use crate::parent::slots::Call;
use crate::protocol;
use crate::protocol::kind;
use crate::task_id::TaskId;
use crate::transport::blobs::PendingBlob;

/// Tasks a submitter pushes to one lane before it yields to the runtime, so
/// the writer can flush a large batch: batch size is set here, not by
/// tokio's per-operation budget. An eighth of the lane's slots, so that
/// several batches are in flight at once, within fixed bounds.
pub(super) fn yield_every(slots: u32) -> u32 {
    (slots / 8).clamp(512, 8192)
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

/// Wakes the writer for frames queued before a task whose encoding
/// panicked, as the error path does; forgotten when the encoding returns.
struct WakeOnUnwind<'a>(&'a tokio::sync::Notify, bool);

impl Drop for WakeOnUnwind<'_> {
    #[cold]
    fn drop(&mut self) {
        if self.1 {
            self.0.notify_one();
        }
    }
}

impl<O> Lane<O> {
    /// Encodes `task` into the lane if it has a free slot.
    ///
    /// Inlined into `submit`, as is `push_with`: returned through memory,
    /// the result was reloaded by a caller stalled behind the unlock.
    #[inline(always)]
    pub(crate) fn try_push<T: Serialize + ?Sized>(
        &self,
        task: &T,
        call: Option<CallSender<O>>,
        span: Option<&tracing::Span>,
    ) -> Result<TaskId, (PushError, Option<CallSender<O>>)> {
        self.push_with(
            call,
            None,
            span,
            &[],
            #[inline(always)]
            |out, slot, max| protocol::put_task(out, slot, task, max),
        )
    }

    /// [`try_push`](Self::try_push) with task frame kind `kind`: a task
    /// whose deadline the parent enforces has a kind of its own.
    #[inline(always)]
    pub(crate) fn try_push_kind<T: Serialize + ?Sized>(
        &self,
        kind: u8,
        task: &T,
        call: Option<CallSender<O>>,
        span: Option<&tracing::Span>,
    ) -> Result<TaskId, (PushError, Option<CallSender<O>>)> {
        self.push_with(
            call,
            None,
            span,
            &[],
            #[inline(always)]
            |out, slot, max| protocol::put_task_as(out, kind, slot, task, max),
        )
    }

    /// Re-sends an already encoded task that was lost on another worker,
    /// with the blobs its payload refers to by index.
    pub(crate) fn try_push_retry(
        &self,
        id: TaskId,
        payload: &[u8],
        blobs: &[Arc<Sealed>],
        attempts: u32,
        call: Option<CallSender<O>>,
        span: Option<&tracing::Span>,
    ) -> Result<TaskId, (PushError, Option<CallSender<O>>)> {
        self.push_with(call, Some((id, attempts)), span, blobs, |out, slot, max| {
            // Blobs go by the sink: ask for one, as a blob would.
            if !blobs.is_empty() && !wire::in_sink() {
                wire::want_sink();
                return Err(CodecError::Serde(wire::WANT_SINK.into()));
            }
            protocol::put_encoded_task(out, slot, payload, max)
        })
    }

    #[inline(always)]
    fn push_with(
        &self,
        call: Option<CallSender<O>>,
        retried: Option<(TaskId, u32)>,
        // The span the task was sent in, if any.
        span: Option<&tracing::Span>,
        // Blobs an already encoded payload refers to by index (a retry's).
        preset: &[Arc<Sealed>],
        // Appends the task's frame; returns where its payload begins.
        encode: impl Fn(&mut Vec<u8>, u32, usize) -> Result<usize, CodecError>,
    ) -> Result<TaskId, (PushError, Option<CallSender<O>>)> {
        let mut st = self.lock();
        match st.status {
            Status::Open => {}
            Status::Down | Status::Recycling => return Err((PushError::Down, call)),
            Status::Stopping | Status::Closed => return Err((PushError::Closed, call)),
        }
        let Some(&slot) = st.free.last() else {
            self.note_full();
            return Err((PushError::Full, call));
        };
        let was_empty = st.out.is_empty();
        // Credits owed to the worker ride in front of the task: no frame,
        // write or wake-up of their own.
        st.send_owed();
        // A task's `Serialize` may panic: its frame is then taken out again
        // (see `codec::FrameWriter`), the slot is still free, and the panic
        // goes on to the caller, with the credits queued above woken for.
        let wake = WakeOnUnwind(&self.writer_wake, was_empty);
        let encoded = encode(&mut st.out, slot, self.max_frame);
        std::mem::forget(wake);
        let payload_start = match encoded {
            Ok(at) => at,
            // Returns from here, so that the common push's path does not
            // merge with the blob one's (a merge cost it reloads of the
            // lane's state, some 15 instructions a task).
            Err(e) => {
                return self
                    .push_failed(st, e, call, retried, span, preset, was_empty, slot, &encode)
            }
        };
        self.finish_push(st, slot, payload_start, call, retried, span, was_empty)
    }

    /// The rest of a push whose frame is in the lane: takes the slot,
    /// records the task and wakes the writer.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn finish_push(
        &self,
        mut st: MutexGuard<'_, LaneState<O>>,
        slot: u32,
        payload_start: usize,
        call: Option<CallSender<O>>,
        retried: Option<(TaskId, u32)>,
        span: Option<&tracing::Span>,
        was_empty: bool,
    ) -> Result<TaskId, (PushError, Option<CallSender<O>>)> {
        st.free.pop();
        let (id, attempts) = match retried {
            Some(r) => r,
            None => {
                let seq = st.next_seq;
                st.next_seq += 1;
                (TaskId::new(self.index as u32, seq), 0)
            }
        };
        let foreign = id.worker_u32() != self.index as u32;
        let timed = match st.sampler.hit() {
            None => None,
            Some(weight) => {
                let seq = (!foreign).then_some(id.seq);
                Some(self.time_task(&mut st, slot, payload_start, weight, seq))
            }
        };
        // Written without closures: ones that captured `call` cost a drop
        // check per task even when not called.
        let more =
            if call.is_some() || self.retries > 0 || foreign || span.is_some() || timed.is_some() {
                // Keeping a copy of every task costs an allocation per task, so
                // it is done only when lost tasks are to be retried.
                let retry = if self.retries > 0 {
                    Some(Retry {
                        payload: st.out[payload_start..].into(),
                        blobs: std::mem::take(&mut st.retry_blobs),
                        attempts,
                    })
                } else {
                    None
                };
                Some(Box::new(SlotMore {
                    id: if foreign { Some(id) } else { None },
                    call: call.map(|tx| Call { tx, reply: None }),
                    retry,
                    span: span.cloned(),
                    timed,
                }))
            } else {
                None
            };
        st.slots.fill(slot, id.seq, more);
        st.since_yield += 1;
        if st.since_yield >= self.yield_every || st.out.len() >= YIELD_BYTES {
            st.since_yield = 0;
            // The submitter yields before its next push, not after this
            // one: a submit future dropped while yielding must have sent
            // nothing.
            self.yield_due.store(true, Ordering::Relaxed);
        }
        drop(st);
        if was_empty {
            self.writer_wake.notify_one();
        }
        Ok(id)
    }

    /// Makes the task frame just queued for `slot` (its payload at
    /// `payload_at`; the task `seq` of this lane's numbering, unless it
    /// comes from another lane) a timed one, and notes when it was queued.
    #[cold]
    #[inline(never)]
    fn time_task(
        &self,
        st: &mut LaneState<O>,
        slot: u32,
        payload_at: usize,
        weight: u32,
        seq: Option<u64>,
    ) -> Timed {
        protocol::mark_timed(&mut st.out, payload_at, slot);
        let sent_ns = self.ns_at(std::time::Instant::now());
        Self::note_sent(st, seq, sent_ns);
        Timed { sent_ns, weight }
    }

    /// A push whose encoding failed with `e`: when a blob asked for a sink
    /// (or `preset` blobs come with an encoded payload), encodes again with
    /// one and finishes the push; otherwise refuses it.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn push_failed(
        &self,
        mut st: MutexGuard<'_, LaneState<O>>,
        e: CodecError,
        call: Option<CallSender<O>>,
        retried: Option<(TaskId, u32)>,
        span: Option<&tracing::Span>,
        preset: &[Arc<Sealed>],
        was_empty: bool,
        slot: u32,
        encode: &impl Fn(&mut Vec<u8>, u32, usize) -> Result<usize, CodecError>,
    ) -> Result<TaskId, (PushError, Option<CallSender<O>>)> {
        let encoded = if wire::take_wanted() {
            let wake = WakeOnUnwind(&self.writer_wake, was_empty);
            let encoded =
                self.encode_with_blobs(&mut st, preset, |out, max| encode(out, slot, max));
            std::mem::forget(wake);
            encoded
        } else {
            Err(e)
        };
        match encoded {
            Ok(at) => self.finish_push(st, slot, at, call, retried, span, was_empty),
            Err(e) => {
                drop(st);
                if was_empty {
                    // The owed credits, if any, still go out.
                    self.writer_wake.notify_one();
                }
                Err((PushError::Codec(e), call))
            }
        }
    }

    /// Encodes a task frame whose value holds blobs (or whose payload
    /// refers to `preset` ones) with a sink for the current connection:
    /// blobs of at least its threshold go by descriptor, in a `BLOBS`
    /// frame around the task frame, the others inline. Returns where the
    /// task's payload begins in `out`, as `encode` does.
    fn encode_with_blobs(
        &self,
        st: &mut LaneState<O>,
        preset: &[Arc<Sealed>],
        encode: impl Fn(&mut Vec<u8>, usize) -> Result<usize, CodecError>,
    ) -> Result<usize, CodecError> {
        let Some(threshold) = st.blob_threshold else {
            if !preset.is_empty() {
                return Err(CodecError::Serde(
                    "a task with blobs sent by descriptor, re-sent to a worker whose \
                     connection carries none"
                        .into(),
                ));
            }
            let (encoded, _) =
                wire::with_sink(None, Vec::new(), || encode(&mut st.out, self.max_frame));
            return encoded;
        };
        let mut frame = Vec::new();
        let (encoded, blobs) = wire::with_sink(Some(threshold), preset.to_vec(), || {
            encode(&mut frame, usize::MAX)
        });
        let payload = encoded?;
        let start = st.out.len();
        if blobs.is_empty() {
            let len = frame.len() - HEADER_LEN;
            if len > self.max_frame {
                return Err(CodecError::TooLarge {
                    len,
                    max: self.max_frame,
                });
            }
            st.out.extend_from_slice(&frame);
            return Ok(start + payload);
        }
        let sizes: Vec<usize> = blobs.iter().map(|b| b.len()).collect();
        let inner = protocol::put_blobs(
            &mut st.out,
            kind::BLOBS,
            &sizes,
            &frame[HEADER_LEN..],
            self.max_frame,
        )?;
        if self.retries > 0 {
            st.retry_blobs = blobs.clone();
        }
        st.blobs.extend(
            blobs
                .into_iter()
                .map(|sealed| PendingBlob { at: start, sealed }),
        );
        Ok(inner + payload - HEADER_LEN)
    }

    /// Whether a submitter should yield to the runtime before its next push
    /// (so the writer can flush a large batch); clears the request.
    #[inline(always)]
    pub(crate) fn take_yield_due(&self) -> bool {
        self.yield_due.load(Ordering::Relaxed) && self.yield_due.swap(false, Ordering::Relaxed)
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
}
