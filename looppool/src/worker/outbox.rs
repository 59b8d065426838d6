//! The worker's outgoing frames and its output-credit window.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::Serialize;
use tokio::sync::Notify;

use crate::blob::wire;
use crate::codec::{self, CodecError};
use crate::error::{EmitError, EmitErrorKind};
use crate::protocol::{self, kind, Failure};
use crate::transport::blobs::{BlobSender, PendingBlob};
use crate::transport::{self, WriteHalf};

/// The worker's end of the wire going out: the frames waiting to be
/// written and the output-credit window. Only its own methods touch them.
pub(crate) struct Outbox {
    max_frame: usize,
    /// The frame bytes one output credit covers.
    credit_bytes: u64,
    /// The whole output window, in credits.
    window: u32,
    /// Blobs of at least this many bytes go to the parent by descriptor;
    /// `None`: the connection carries none.
    blob_threshold: Option<usize>,
    frames: RefCell<Frames>,
    /// Woken on the empty → non-empty transition of `frames.buf`.
    writer_wake: Notify,
    /// Woken when the parent returns output credits.
    credit_wake: Notify,
    /// Set once the last frame is queued: the writer returns when drained.
    closing: Cell<bool>,
    /// Outputs emitted, for reports.
    outputs: Cell<u64>,
}

/// Frames waiting to be written, and the output window.
struct Frames {
    buf: Vec<u8>,
    /// Output credits left: an output or a failure spends
    /// [`output_cost`](protocol::output_cost) of them (one unless large).
    credits: u32,
    /// Where the last frame in `buf` starts, when it is an output of a task
    /// (start offset, slot): a completion right behind it is folded into it.
    last_output: Option<(usize, u32)>,
    /// Outputs emitted before the ready message (by the initialiser or its
    /// background work): the parent reads only handshake messages until
    /// then, so they are held here and queued right behind it.
    early: Option<Vec<u8>>,
    /// Blobs whose descriptors go out with the frames in `buf`.
    blobs: Vec<PendingBlob>,
}

impl Outbox {
    /// An outbox for frames up to `max_frame` bytes, with a window of
    /// `credits` output credits of `credit_bytes` bytes each, holding
    /// outputs back until [`push_ready`](Self::push_ready); blobs of at
    /// least `blob_threshold` bytes go by descriptor.
    pub(crate) fn new(
        max_frame: usize,
        credits: u32,
        credit_bytes: u64,
        blob_threshold: Option<usize>,
    ) -> Self {
        Outbox {
            max_frame,
            credit_bytes: credit_bytes.max(1),
            window: credits,
            blob_threshold,
            frames: RefCell::new(Frames {
                buf: Vec::with_capacity(64 * 1024),
                credits,
                last_output: None,
                early: Some(Vec::new()),
                blobs: Vec::new(),
            }),
            writer_wake: Notify::new(),
            credit_wake: Notify::new(),
            closing: Cell::new(false),
            outputs: Cell::new(0),
        }
    }

    /// The largest frame the parent accepts.
    pub(crate) fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Outputs emitted so far.
    pub(crate) fn outputs(&self) -> u64 {
        self.outputs.get()
    }

    fn push_with(&self, f: impl FnOnce(&mut Frames)) {
        let mut out = self.frames.borrow_mut();
        let was_empty = out.buf.is_empty();
        f(&mut out);
        if was_empty && !out.buf.is_empty() {
            self.writer_wake.notify_one();
        }
    }

    /// Appends a frame that is not an output (a report or a log record)
    /// unless the out buffer already holds `limit` bytes or is in use
    /// further up this thread's stack; false when it did not.
    pub(crate) fn try_push_frame(&self, limit: usize, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let Ok(mut out) = self.frames.try_borrow_mut() else {
            return false;
        };
        if out.buf.len() >= limit {
            return false;
        }
        let was_empty = out.buf.is_empty();
        f(&mut out.buf);
        out.last_output = None;
        drop(out);
        if was_empty {
            self.writer_wake.notify_one();
        }
        true
    }

    /// Queues `value` as an output of the task in wire slot `slot` (none:
    /// of no task), spending its credits; a full error when too few are
    /// left.
    #[inline(always)]
    pub(crate) fn try_emit<O: Serialize>(
        &self,
        slot: Option<u32>,
        value: O,
    ) -> Result<(), EmitError<O>> {
        let mut out = self.frames.borrow_mut();
        if self.closing.get() {
            return Err(EmitError::new(EmitErrorKind::Closed, value));
        }
        if out.credits == 0 {
            return Err(EmitError::new(EmitErrorKind::Full, value));
        }
        let was_empty = out.buf.is_empty();
        let early = out.early.is_some();
        let Frames {
            buf,
            early: held,
            credits,
            ..
        } = &mut *out;
        let target = held.as_mut().unwrap_or(buf);
        let start = target.len();
        let tag = slot.map_or(0, |s| u64::from(s) + 1);
        match protocol::put_tagged(target, kind::OUTPUT, tag, &value, self.max_frame) {
            Ok(()) => {}
            Err(CodecError::TooLarge { len, max }) => {
                return Err(EmitError::new(EmitErrorKind::TooLarge { len, max }, value))
            }
            Err(e) => {
                if !wire::take_wanted() {
                    return Err(EmitError::new(EmitErrorKind::Encode(e.to_string()), value));
                }
                // A blob asked for a sink: encode again, for the connection.
                let emitted = self.emit_with_blobs(&mut out, tag, value);
                drop(out);
                if emitted.is_ok() && was_empty && !early {
                    self.writer_wake.notify_one();
                }
                return emitted;
            }
        }
        let body = target.len() - start - codec::HEADER_LEN;
        let cost = protocol::output_cost(body, self.credit_bytes, self.window);
        if cost > *credits {
            // A large output, and too few credits for it: taken back.
            target.truncate(start);
            return Err(EmitError::new(EmitErrorKind::Full, value));
        }
        *credits -= cost;
        if !early {
            out.last_output = slot.map(|s| (start, s));
        }
        self.outputs.set(self.outputs.get() + 1);
        drop(out);
        if was_empty && !early {
            self.writer_wake.notify_one();
        }
        Ok(())
    }

    /// Queues an output (of wire tag `tag`) whose value holds blobs, encoded
    /// again with a sink for the connection: blobs of at least its
    /// threshold go by descriptor, in a `WORKER_BLOBS` frame around the
    /// output frame, and count for its credits; the others inline. Before
    /// the ready message every blob goes inline.
    #[cold]
    #[inline(never)]
    fn emit_with_blobs<O: Serialize>(
        &self,
        out: &mut Frames,
        tag: u64,
        value: O,
    ) -> Result<(), EmitError<O>> {
        let early = out.early.is_some();
        let threshold = if early { None } else { self.blob_threshold };
        let mut frame = Vec::new();
        let (encoded, blobs) = wire::with_sink(threshold, Vec::new(), || {
            protocol::put_tagged(&mut frame, kind::OUTPUT, tag, &value, usize::MAX)
        });
        if let Err(e) = encoded {
            return Err(EmitError::new(EmitErrorKind::Encode(e.to_string()), value));
        }
        let Frames {
            buf,
            early: held,
            credits,
            blobs: pending,
            last_output,
        } = out;
        let target = held.as_mut().unwrap_or(buf);
        let start = target.len();
        let sizes: Vec<usize> = blobs.iter().map(|b| b.len()).collect();
        let size = if blobs.is_empty() {
            let len = frame.len() - codec::HEADER_LEN;
            if len > self.max_frame {
                let kind = EmitErrorKind::TooLarge {
                    len,
                    max: self.max_frame,
                };
                return Err(EmitError::new(kind, value));
            }
            target.extend_from_slice(&frame);
            len
        } else {
            let inner = &frame[codec::HEADER_LEN..];
            match protocol::put_blobs(target, kind::WORKER_BLOBS, &sizes, inner, self.max_frame) {
                Ok(_) => {}
                Err(CodecError::TooLarge { len, max }) => {
                    return Err(EmitError::new(EmitErrorKind::TooLarge { len, max }, value))
                }
                Err(e) => return Err(EmitError::new(EmitErrorKind::Encode(e.to_string()), value)),
            }
            target.len() - start - codec::HEADER_LEN + sizes.iter().sum::<usize>()
        };
        let cost = protocol::output_cost(size, self.credit_bytes, self.window);
        if cost > *credits {
            target.truncate(start);
            return Err(EmitError::new(EmitErrorKind::Full, value));
        }
        *credits -= cost;
        // Only the buffer after the ready message carries descriptors.
        pending.extend(
            blobs
                .into_iter()
                .map(|sealed| PendingBlob { at: start, sealed }),
        );
        // A frame with blobs is not folded into its task's completion.
        *last_output = match tag.checked_sub(1) {
            Some(slot) if !early && sizes.is_empty() => Some((start, slot as u32)),
            _ => None,
        };
        self.outputs.set(self.outputs.get() + 1);
        Ok(())
    }

    /// Emits `value`, waiting while the output window is shut.
    pub(crate) fn emit<O: Serialize>(&self, slot: Option<u32>, value: O) -> Emit<'_, O> {
        Emit {
            outbox: self,
            slot,
            value: Some(value),
            credits: None,
        }
    }

    /// Adds the `n` credits the parent returned, and wakes the emits that
    /// wait for them.
    pub(crate) fn refill(&self, n: u32) {
        let mut out = self.frames.borrow_mut();
        out.credits = out.credits.saturating_add(n);
        drop(out);
        self.credit_wake.notify_waiters();
    }

    /// Queues the completion of the task in wire slot `slot`.
    pub(crate) fn push_done(&self, slot: u32) {
        self.push_with(|out| {
            match out.last_output {
                Some((start, s)) if s == slot => {
                    // The task's last output is the buffer's last frame:
                    // mark it as completing the task instead of writing a
                    // separate completion frame.
                    out.buf[start + codec::HEADER_LEN] = kind::OUTPUT_DONE;
                }
                _ => protocol::put_simple(&mut out.buf, kind::DONE, Some(slot.into())),
            }
            out.last_output = None;
        });
    }

    /// Queues the completion of the timed task in wire slot `slot`, which
    /// ran for `ran_ns`: a frame of its own, never folded into the task's
    /// last output.
    pub(crate) fn push_done_timed(&self, slot: u32, ran_ns: u64) {
        self.push_with(|out| {
            protocol::put_done_timed(&mut out.buf, slot, ran_ns);
            out.last_output = None;
        });
    }

    /// Queues the failure of the task in wire slot `slot` (which ran for
    /// `ran_ns`, if timed), spending output credits as an output of its
    /// size would: the parent holds a failure for its consumer as it holds
    /// a value (and gives a call's credits back at once). Gives the
    /// failure back when too few credits are left.
    pub(crate) fn try_push_failed(
        &self,
        slot: u32,
        failure: Failure,
        ran_ns: Option<u64>,
    ) -> Result<(), Failure> {
        let mut out = self.frames.borrow_mut();
        if out.credits == 0 {
            return Err(failure);
        }
        let was_empty = out.buf.is_empty();
        let start = out.buf.len();
        protocol::put_failed(&mut out.buf, slot, &failure, ran_ns, self.max_frame);
        let body = out.buf.len() - start - codec::HEADER_LEN;
        let cost = protocol::output_cost(body, self.credit_bytes, self.window);
        if cost > out.credits {
            out.buf.truncate(start);
            return Err(failure);
        }
        out.credits -= cost;
        out.last_output = None;
        drop(out);
        if was_empty {
            self.writer_wake.notify_one();
        }
        Ok(())
    }

    /// Queues the failure of the task in wire slot `slot`, waiting while
    /// the output window is shut, as [`emit`](Self::emit) does.
    pub(crate) async fn push_failed(&self, slot: u32, mut failure: Failure, ran_ns: Option<u64>) {
        loop {
            // Single-threaded: nothing returns credits between the attempt
            // and the wait, whose `Notified` is woken once it exists.
            let credits = self.credit_wake.notified();
            match self.try_push_failed(slot, failure, ran_ns) {
                Ok(()) => return,
                Err(back) => failure = back,
            }
            credits.await;
        }
    }

    /// Queues a message with at most a number in it (a pong, the bye).
    pub(crate) fn push_simple(&self, kind: u8, value: Option<u64>) {
        self.push_with(|out| {
            protocol::put_simple(&mut out.buf, kind, value);
            out.last_output = None;
        });
    }

    /// Queues the message that the initialiser failed with `message`.
    pub(crate) fn push_init_failed(&self, message: &str) {
        let max_frame = self.max_frame;
        self.push_with(|out| {
            let _ = protocol::put_value(&mut out.buf, kind::INIT_FAILED, message, max_frame);
        });
    }

    /// Queues the ready message, then the outputs held back until it.
    pub(crate) fn push_ready(&self) {
        self.push_with(|out| {
            protocol::put_simple(&mut out.buf, kind::READY, None);
            if let Some(early) = out.early.take() {
                out.buf.extend_from_slice(&early);
            }
            out.last_output = None;
        });
    }

    /// Refuses further outputs, and lets the writer return once the frames
    /// queued so far are written.
    pub(crate) fn close(&self) {
        self.closing.set(true);
        self.writer_wake.notify_one();
    }

    /// Writes queued frames to `io` until the outbox closes; one `write` per
    /// batch, after the descriptors of the blobs it carries (on `blobs`).
    /// When the parent is gone, exits the process if `exit_when_gone` (a
    /// worker process), else stops writing (a test's worker).
    pub(crate) async fn write_to(
        &self,
        mut io: WriteHalf,
        exit_when_gone: bool,
        mut blobs: Option<BlobSender>,
    ) {
        let mut batch = Vec::new();
        let mut pending = Vec::new();
        loop {
            let took = {
                let mut out = self.frames.borrow_mut();
                std::mem::swap(&mut out.buf, &mut batch);
                if !out.blobs.is_empty() {
                    std::mem::swap(&mut out.blobs, &mut pending);
                }
                out.last_output = None;
                !batch.is_empty()
            };
            if !took {
                if self.closing.get() {
                    return;
                }
                self.writer_wake.notified().await;
                continue;
            }
            let written = match (pending.is_empty(), blobs.as_mut()) {
                (true, _) => transport::flush_batch(&mut io, &mut batch).await,
                (false, Some(blobs)) => blobs.flush(&mut io, &mut batch, &mut pending).await,
                (false, None) => Err(std::io::Error::other("blobs queued without a blob socket")),
            };
            if written.is_err() {
                // The parent is gone: nobody is left to work for.
                if exit_when_gone {
                    std::process::exit(0);
                }
                return;
            }
        }
    }
}

/// The future of an `emit`: tries at once, and waits for credits only if
/// the window is shut.
///
/// Written by hand rather than as an `async fn`: a task's future holds it,
/// and nested async state machines (with the wait for credits inline) made
/// that future much larger, and it is moved on every task.
pub(crate) struct Emit<'a, O> {
    outbox: &'a Outbox,
    slot: Option<u32>,
    value: Option<O>,
    /// The wait for credits, boxed: it is needed only when the window is shut.
    credits: Option<Pin<Box<tokio::sync::futures::Notified<'a>>>>,
}

// `Emit` holds no self-references: the wait it boxes is pinned in the box.
impl<O> Unpin for Emit<'_, O> {}

impl<O: Serialize> Future for Emit<'_, O> {
    type Output = Result<(), EmitError<O>>;

    // Inlined into the handler's future, as is `try_emit`: a result returned
    // through memory was stored in pieces and reloaded whole by the caller,
    // a stalled load that cost more than the rest of the emit.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if let Some(wait) = &mut this.credits {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.credits = None;
            }
            let Some(value) = this.value.take() else {
                panic!("`Emit` polled after it completed");
            };
            match this.outbox.try_emit(this.slot, value) {
                Err(e) if e.is_full() => this.value = Some(e.into_inner()),
                other => return Poll::Ready(other),
            }
            // Single-threaded: nothing can return credits between the check
            // above and this wait's registration (its first poll, next turn
            // of this loop), so no wake-up is missed.
            this.credits = Some(Box::pin(this.outbox.credit_wake.notified()));
        }
    }
}
