//! The worker's outgoing frames and its output-credit window.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use serde::Serialize;
use tokio::sync::Notify;

use crate::codec::{self, CodecError};
use crate::error::{EmitError, EmitErrorKind};
use crate::protocol::{self, kind, Failure};
use crate::transport::{self, WriteHalf};

/// State shared by everything running in one worker process.
pub(crate) struct Shared {
    pub(crate) index: usize,
    pub(crate) pool_name: String,
    pub(crate) max_frame: usize,
    pub(crate) out: RefCell<OutBuf>,
    /// Woken on the empty → non-empty transition of `out.buf`.
    pub(crate) writer_wake: Notify,
    /// Woken when the parent returns output credits.
    pub(crate) credit_wake: Notify,
    /// Tasks started and not yet completed.
    pub(crate) running: Cell<usize>,
    /// Woken when `running` drops to zero.
    pub(crate) idle: Notify,
    /// Set when the parent asked the worker to stop.
    pub(crate) stop_requested: Cell<bool>,
    pub(crate) stop_wake: Notify,
    /// Set once the last frame is queued: the writer returns when drained.
    pub(crate) closing: Cell<bool>,
    /// Tasks running longer than this fail.
    pub(crate) task_timeout: Option<std::time::Duration>,
    /// Counts for reports, and the blocked-loop watch.
    pub(crate) obs: super::observe::Observe,
}

/// Frames waiting to be written, and the output window.
pub(crate) struct OutBuf {
    pub(crate) buf: Vec<u8>,
    /// Outputs the worker may still emit before the parent takes some.
    pub(crate) credits: u32,
    /// Where the last frame in `buf` starts, when it is an output of a task
    /// (start offset, slot): a completion right behind it is folded into it.
    pub(crate) last_output: Option<(usize, u32)>,
    /// Outputs emitted before the ready message (by the initialiser or its
    /// background work): the parent reads only handshake messages until
    /// then, so they are held here and queued right behind it.
    pub(crate) early: Option<Vec<u8>>,
}

impl Shared {
    pub(crate) fn push_with(&self, f: impl FnOnce(&mut OutBuf)) {
        let mut out = self.out.borrow_mut();
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
        let Ok(mut out) = self.out.try_borrow_mut() else {
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

    #[inline(always)]
    pub(crate) fn try_emit<O: Serialize>(
        &self,
        slot: Option<u32>,
        value: O,
    ) -> Result<(), EmitError<O>> {
        let mut out = self.out.borrow_mut();
        if self.closing.get() {
            return Err(EmitError::new(EmitErrorKind::Closed, value));
        }
        if out.credits == 0 {
            return Err(EmitError::new(EmitErrorKind::Full, value));
        }
        let was_empty = out.buf.is_empty();
        let early = out.early.is_some();
        let OutBuf {
            buf, early: held, ..
        } = &mut *out;
        let target = held.as_mut().unwrap_or(buf);
        let start = target.len();
        let tag = slot.map_or(0, |s| u64::from(s) + 1);
        match protocol::put_tagged(target, kind::OUTPUT, tag, &value, self.max_frame) {
            Ok(()) => {}
            Err(CodecError::TooLarge { len, max }) => {
                return Err(EmitError::new(EmitErrorKind::TooLarge { len, max }, value))
            }
            Err(e) => return Err(EmitError::new(EmitErrorKind::Encode(e.to_string()), value)),
        }
        out.credits -= 1;
        if !early {
            out.last_output = slot.map(|s| (start, s));
        }
        self.obs.outputs.set(self.obs.outputs.get() + 1);
        drop(out);
        if was_empty && !early {
            self.writer_wake.notify_one();
        }
        Ok(())
    }

    /// Emits `value`, waiting while the output window is shut.
    pub(crate) fn emit<O: Serialize>(&self, slot: Option<u32>, value: O) -> Emit<'_, O> {
        Emit {
            shared: self,
            slot,
            value: Some(value),
            credits: None,
        }
    }

    pub(crate) fn complete(&self, slot: u32, result: Result<(), Failure>) {
        self.push_with(|out| {
            match result {
                Ok(()) => match out.last_output {
                    Some((start, s)) if s == slot => {
                        // The task's last output is the buffer's last frame:
                        // mark it as completing the task instead of writing a
                        // separate completion frame.
                        out.buf[start + codec::HEADER_LEN] = kind::OUTPUT_DONE;
                    }
                    _ => protocol::put_simple(&mut out.buf, kind::DONE, Some(slot.into())),
                },
                Err(failure) => protocol::put_failed(&mut out.buf, slot, &failure, self.max_frame),
            }
            out.last_output = None;
        });
        self.obs.done.set(self.obs.done.get() + 1);
        let running = self.running.get() - 1;
        self.running.set(running);
        // Only the drain after a stop waits for `idle` (and it checks
        // `running` first): a notification per idle moment would take the
        // `Notify`'s lock after nearly every task.
        if running == 0 && self.stop_requested.get() {
            self.idle.notify_waiters();
        }
    }

    pub(crate) fn push_simple(&self, kind: u8, value: Option<u64>) {
        self.push_with(|out| {
            protocol::put_simple(&mut out.buf, kind, value);
            out.last_output = None;
        });
    }
}

/// The future of an `emit`: tries at once, and waits for credits only if
/// the window is shut.
///
/// Written by hand rather than as an `async fn`: a task's future holds it,
/// and the nested async state machines (with the wait for credits inline)
/// made an echo handler's future 232 bytes, moved twice per task.
pub(crate) struct Emit<'a, O> {
    shared: &'a Shared,
    slot: Option<u32>,
    value: Option<O>,
    /// The wait for credits, boxed: it is needed only when the window is shut.
    credits: Option<Pin<Box<tokio::sync::futures::Notified<'a>>>>,
}

// `Emit` holds no self-references: the wait it boxes is pinned in the box.
impl<O> Unpin for Emit<'_, O> {}

impl<O: Serialize> Future for Emit<'_, O> {
    type Output = Result<(), EmitError<O>>;

    // Inlined into the handler's future, as is `try_emit`: returned through
    // memory, the 32-byte result was stored in pieces and reloaded whole by
    // the caller, a stalled load that cost more than the rest of the emit.
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
            match this.shared.try_emit(this.slot, value) {
                Err(e) if e.is_full() => this.value = Some(e.into_inner()),
                other => return Poll::Ready(other),
            }
            // Single-threaded: nothing can return credits between the check
            // above and this wait's registration (its first poll, next turn
            // of this loop), so no wake-up is missed.
            this.credits = Some(Box::pin(this.shared.credit_wake.notified()));
        }
    }
}

/// Writes queued frames until the worker closes; one `write` per batch.
pub(crate) async fn write_loop(shared: Rc<Shared>, mut io: WriteHalf) {
    let mut batch = Vec::new();
    loop {
        let took = {
            let mut out = shared.out.borrow_mut();
            std::mem::swap(&mut out.buf, &mut batch);
            out.last_output = None;
            !batch.is_empty()
        };
        if !took {
            if shared.closing.get() {
                return;
            }
            shared.writer_wake.notified().await;
            continue;
        }
        if transport::write_batch(&mut io, &batch).await.is_err() {
            // The parent is gone: nobody is left to work for.
            std::process::exit(0);
        }
        batch.clear();
        if batch.capacity() > 4 * 1024 * 1024 {
            batch = Vec::new();
        }
    }
}
