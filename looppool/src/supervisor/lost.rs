//! Tasks held by a worker that ended: reported lost, or re-sent.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Supervisor;
use crate::error::{TaskError, WorkerLost};
use crate::output::Output;
use crate::parent::lane::{CallOutcome, CallSender, CancelReason, Held, Lane, Retry};
use crate::parent::outputs::{Batch, BatchSender};
use crate::pool::TaskId;

impl<O: serde::de::DeserializeOwned + Send + 'static> Supervisor<O> {
    /// Reports every held task as lost (calls get the error, submitted tasks
    /// become `Lost` items), or re-sends it to a live worker when the retry
    /// policy allows.
    pub(super) fn report_lost(
        &self,
        held: Vec<Held<O>>,
        lost: &WorkerLost,
        outputs: &BatchSender<O>,
    ) {
        let mut items = Vec::new();
        let mut reported = 0;
        for task in held {
            if let Some(reason) = task.cancel {
                // Its cancel was under way: that is its fate, not a loss,
                // and it is not re-sent.
                items.extend(tell_cancelled(task.id, task.call, reason, lost));
                continue;
            }
            match task.retry {
                Some(retry)
                    if retry.attempts < self.lanes[lost.worker].retries()
                        && !self.is_stopping() =>
                {
                    tracing::debug!(task = %task.id, attempt = retry.attempts + 1, "re-sending a lost task");
                    let target = self.retry_target(lost.worker);
                    tokio::spawn(resend(
                        target,
                        task.id,
                        retry,
                        task.call,
                        task.span,
                        lost.clone(),
                        outputs.clone(),
                    ));
                }
                _ => {
                    reported += 1;
                    items.extend(tell_lost(task.id, task.call, lost));
                }
            }
        }
        if reported > 0 {
            self.lanes[lost.worker].obs.count_lost(reported);
        }
        send_lost(outputs, lost.worker, items);
    }

    /// A live worker other than `dead` to re-send its tasks to (or the next
    /// one, which will be waited for, when none is up).
    pub(super) fn retry_target(&self, dead: usize) -> Arc<Lane<O>> {
        let n = self.active.load(Ordering::Relaxed).max(1);
        (1..=n)
            .map(|step| &self.lanes[(dead + step) % n])
            .find(|lane| lane.is_up())
            .unwrap_or(&self.lanes[(dead + 1) % n])
            .clone()
    }
}

/// Re-sends a lost task to `lane`, waiting for room; reports it lost if the
/// pool closes first.
async fn resend<O>(
    lane: Arc<Lane<O>>,
    id: TaskId,
    retry: Retry,
    mut call: Option<CallSender<O>>,
    span: Option<tracing::Span>,
    lost: WorkerLost,
    outputs: BatchSender<O>,
) {
    use crate::parent::lane::PushError;
    loop {
        let attempts = retry.attempts + 1;
        match lane.try_push_retry(
            id,
            &retry.payload,
            &retry.blobs,
            attempts,
            call,
            span.as_ref(),
        ) {
            Ok(_) => return,
            Err((PushError::Full | PushError::Down, back)) => {
                call = back;
                lane.wait_for_space().await;
            }
            Err((_, back)) => {
                send_lost(
                    &outputs,
                    lost.worker,
                    tell_lost(id, back, &lost).into_iter().collect(),
                );
                return;
            }
        }
    }
}

/// Tells a call's waiter that its task was lost with its worker; for a
/// submitted task, returns the `Lost` item for the output stream instead.
fn tell_lost<O>(task: TaskId, call: Option<CallSender<O>>, lost: &WorkerLost) -> Option<Output<O>> {
    match call {
        Some(tx) => {
            let _ = tx.send(CallOutcome::Lost(lost.clone()));
            None
        }
        None => Some(Output::Lost {
            task,
            lost: Box::new(lost.clone()),
        }),
    }
}

/// Tells a call's waiter, or the output stream, that a task whose cancel was
/// under way when its worker was lost ended as its cancel would have.
fn tell_cancelled<O>(
    task: TaskId,
    call: Option<CallSender<O>>,
    reason: CancelReason,
    lost: &WorkerLost,
) -> Option<Output<O>> {
    let worker = lost.worker;
    let outcome = match reason {
        CancelReason::Asked => CallOutcome::Cancelled,
        CancelReason::Deadline(limit) => CallOutcome::Failed(TaskError {
            worker,
            task,
            message: CancelReason::deadline_message(limit),
            panicked: false,
        }),
    };
    match (call, outcome) {
        (Some(tx), outcome) => {
            let _ = tx.send(outcome);
            None
        }
        (None, CallOutcome::Failed(e)) => Some(Output::Failed(Box::new(e))),
        (None, _) => Some(Output::Cancelled { worker, task }),
    }
}

/// Sends the `Lost` items of worker `worker`'s tasks to the output stream,
/// as one batch outside any connection (no generation, no credits).
fn send_lost<O>(outputs: &BatchSender<O>, worker: usize, items: Vec<Output<O>>) {
    if items.is_empty() {
        return;
    }
    let _ = outputs.send(Batch {
        worker,
        generation: 0,
        credits: 0,
        items,
        received: None,
    });
}
