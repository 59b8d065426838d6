//! Running one task: its future's cell, its first poll in place, and what
//! its result becomes on the wire.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use super::panic::{in_task, panic_message, CatchUnwind};
use super::shared::Shared;
use super::BoxError;
use crate::protocol::Failure;

/// A task's future in a heap cell that outlives it. A task that completes in
/// its first poll (most do) leaves the cell empty for the next task of the
/// same type, so it costs no allocation; a task that has to wait keeps its
/// cell, moved into the spawned task, and the next one allocates anew.
/// (With a fresh `Box` per task, `malloc` and `free` were a large share of
/// the worker's work.)
pub(crate) type TaskCell<F> = Pin<Box<Option<F>>>;

/// Starts a task: polls its future once in place, and spawns it only if it
/// has to wait. `spare` is the spare cell for futures of this type; a
/// `timed` task's completion tells how long it ran, from just before its
/// first poll.
///
/// The future is made by `make` right where it is stored: built first and
/// then passed in, it was copied on the way into the cell, and those copies
/// (stalled on loads of what was just stored) were a measurable part of the
/// worker's time per task.
#[inline(always)]
pub(crate) fn run_task<F>(
    shared: &Rc<Shared>,
    slot: u32,
    timed: bool,
    make: impl FnOnce() -> F,
    spare: &mut Option<TaskCell<F>>,
) where
    F: Future<Output = Result<(), BoxError>> + 'static,
{
    let mut cell = spare.take().unwrap_or_else(|| Box::pin(None));
    cell.set(Some(make()));
    let mut noop = Context::from_waker(Waker::noop());
    let started = timed.then(Instant::now);
    // The future is polled again by the spawned task (with a real waker) if
    // it is not ready now, so the no-op waker loses nothing.
    let polled = shared.polling(slot, || {
        in_task(|| {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                let fut = cell
                    .as_mut()
                    .as_pin_mut()
                    .expect("the cell was just filled");
                fut.poll(&mut noop)
            }))
        })
    });
    match polled {
        Ok(Poll::Ready(result)) => {
            // Dropped before the completion is queued: whatever its drop
            // emits still belongs to the task.
            cell.set(None);
            *spare = Some(cell);
            shared.complete(slot, result.map_err(failure_of), started.map(ran_ns));
        }
        Ok(Poll::Pending) => {
            let shared = shared.clone();
            let cancel = shared.cancels.arm(slot);
            tokio::task::spawn_local(async move {
                let polling = Polling {
                    shared: &shared,
                    slot,
                    fut: CatchUnwind(InCell(cell)),
                };
                // Biased towards the cancel: a cancelled handler is not
                // resumed past the await point it stopped at (unless it
                // awaits the cancellation, and so gets the grace period).
                let polled = tokio::select! {
                    biased;
                    () = cancel.drop_due(shared.cancels.grace) => None,
                    polled = polling => Some(polled),
                };
                // A handler that finished its cleanup after the cancel was
                // cancelled all the same: its fate is told once, as such.
                let result = match polled {
                    Some(_) if cancel.is_requested() => None,
                    Some(Ok(result)) => Some(result.map_err(failure_of)),
                    Some(Err(message)) => Some(Err(Failure {
                        message,
                        panicked: true,
                    })),
                    None => None,
                };
                match result {
                    Some(result) => shared.complete(slot, result, started.map(ran_ns)),
                    None => shared.cancelled(slot),
                }
            });
        }
        Err(payload) => {
            let message = panic_message(payload);
            drop(cell);
            let failure = Failure {
                message,
                panicked: true,
            };
            shared.complete(slot, Err(failure), started.map(ran_ns));
        }
    }
}

/// Nanoseconds since `started`.
fn ran_ns(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A task's future bounded by the pool's task timeout; when the timeout
/// passes, the worker reports it (with its threads' state) to the parent
/// before the task's failure, naming slot `slot`.
pub(crate) async fn with_deadline<F>(
    handler: F,
    limit: std::time::Duration,
    shared: Rc<Shared>,
    slot: u32,
) -> Result<(), BoxError>
where
    F: Future<Output = Result<(), BoxError>>,
{
    match tokio::time::timeout(limit, handler).await {
        Ok(result) => result,
        Err(_) => {
            shared.report_deadline(slot, limit);
            Err(format!("task exceeded its deadline of {limit:?}").into())
        }
    }
}

/// Polls the future in a filled task cell.
struct InCell<F>(TaskCell<F>);

impl<F: Future> Future for InCell<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.0.as_mut().as_pin_mut() {
            Some(fut) => fut.poll(cx),
            None => unreachable!("a spawned task's cell holds its future until it completes"),
        }
    }
}

fn failure_of(e: BoxError) -> Failure {
    Failure {
        message: error_chain(&*e),
        panicked: false,
    }
}

/// An error's message followed by the messages of its sources.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// A task's future, polled under the blocked-loop watch.
struct Polling<'a, F> {
    shared: &'a Shared,
    slot: u32,
    fut: F,
}

impl<F: Future + Unpin> Future for Polling<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let fut = &mut this.fut;
        this.shared.polling(this.slot, || Pin::new(fut).poll(cx))
    }
}
