//! The stream of outputs from every worker, with end-to-end backpressure.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::mpsc;

use super::lane::Lane;
use crate::error::TryNextError;
use crate::output::Output;
use crate::timing::{Sampler, TIMED_PER_SEC};

/// A batch of items from one read of one worker's connection.
pub(crate) struct Batch<O> {
    pub(crate) worker: usize,
    pub(crate) generation: u64,
    /// Output credits to give back to the worker once the batch is taken.
    pub(crate) credits: u32,
    pub(crate) items: Vec<Output<O>>,
    /// When its items reached the parent, if they are timed: an item's
    /// output wait runs from then until the consumer takes it.
    pub(crate) received: Option<Instant>,
}

pub(crate) type BatchSender<O> = mpsc::UnboundedSender<Batch<O>>;

/// The outputs of every worker of a pool, in the order each worker emitted
/// them (there is no order between workers).
///
/// The channel behind it needs no bound of its own: workers may only emit
/// (or report a failure) while they hold output credits, and the stream
/// hands credits back as the consumer takes items, so at most the pool's
/// `max_results` items, and about its `max_result_bytes`, are ever waiting
/// here (see [the bounds](crate#every-queue-is-bounded-by-credits)). When the consumer
/// is slow, workers wait in `emit`.
///
/// Dropping the stream discards further outputs (returning their credits), so
/// a program that only uses `call` does not stall its workers.
///
/// The stream ends after the last output of the last worker once the pool has
/// shut down.
pub struct Outputs<O> {
    rx: mpsc::UnboundedReceiver<Batch<O>>,
    lanes: Arc<[Arc<Lane<O>>]>,
    /// The rest of the batch being consumed, last item first (taken with
    /// `pop`), and the worker it came from: the emptied vector goes back to
    /// that worker's reader, which fills it again (see `SpareBatches`).
    current: Vec<Output<O>>,
    current_from: usize,
    /// Credits of the batch being consumed not yet given back:
    /// (worker, generation, credits).
    pending: Option<(usize, u64, u32)>,
    /// Values taken from the current batch since credits were last given back.
    taken: u32,
    /// Which items' output wait is timed, and the clock it adjusts by.
    sampler: Sampler,
    epoch: Instant,
    /// When the current batch's items reached the parent, if timed.
    current_received: Option<Instant>,
}

/// Values taken from a batch between two returns of their credits. A batch
/// can hold a worker's whole output window (one read of 64 KiB carries
/// thousands of small outputs); returned only at its end, the credits came
/// back after the tasks whose slots the same read freed were already sent
/// again, and the worker, out of credits, had to park every one of them.
const RETURN_EVERY: u32 = 256;

impl<O> fmt::Debug for Outputs<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outputs")
            .field("buffered", &self.current.len())
            .finish_non_exhaustive()
    }
}

impl<O> Outputs<O> {
    /// The stream of the batches `rx` receives from the readers of
    /// `lanes`; with timings on, about [`TIMED_PER_SEC`] items a second
    /// per worker of the `workers` the pool starts with are timed.
    pub(crate) fn new(
        rx: mpsc::UnboundedReceiver<Batch<O>>,
        lanes: Arc<[Arc<Lane<O>>]>,
        workers: usize,
    ) -> Self {
        let on = lanes.first().is_some_and(|lane| lane.timings.on);
        let per_sec = TIMED_PER_SEC.saturating_mul(workers.max(1) as u32);
        Outputs {
            rx,
            lanes,
            current: Vec::new(),
            current_from: 0,
            pending: None,
            taken: 0,
            sampler: Sampler::per_sec(on, u64::MAX, per_sec),
            epoch: Instant::now(),
            current_received: None,
        }
    }

    /// The next item, or `None` once the pool has shut down and every output
    /// was taken.
    ///
    /// # Cancel safety
    /// Cancel safe: no item is taken unless it is returned.
    // The asynchronous `next` of a stream (as `StreamExt::next`), which
    // clippy takes for `Iterator::next` once it is not an `async fn`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> impl std::future::Future<Output = Option<Output<O>>> + '_ {
        // A plain `poll_fn`, not an `async fn` around one: that state
        // machine was measurable per item on the consumer's side.
        std::future::poll_fn(move |cx| self.poll_next_item(cx))
    }

    /// Takes the next item if one is ready, without waiting.
    ///
    /// # Errors
    /// [`TryNextError::Empty`] when no item is ready yet (more may come:
    /// try again, or wait with [`next`](Self::next)), and
    /// [`TryNextError::Ended`] once the stream has ended (where `next`
    /// returns `None`).
    pub fn try_next(&mut self) -> Result<Output<O>, TryNextError> {
        let waker = std::task::Waker::noop();
        match self.poll_next_item(&mut Context::from_waker(waker)) {
            Poll::Ready(Some(item)) => Ok(item),
            Poll::Ready(None) => Err(TryNextError::Ended),
            Poll::Pending => Err(TryNextError::Empty),
        }
    }

    fn poll_next_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Output<O>>> {
        loop {
            if let Some(item) = self.current.pop() {
                if let Some(weight) = self.sampler.hit() {
                    self.time_item(weight);
                }
                if self.current.is_empty() {
                    self.give_back_credits();
                    if let Some(lane) = self.lanes.get(self.current_from) {
                        lane.batches.keep(std::mem::take(&mut self.current));
                    }
                } else if !matches!(item, Output::Lost { .. }) {
                    // Each value or failure spent at least one credit (a
                    // large one more, which come back with the batch's end).
                    self.taken += 1;
                    if self.taken == RETURN_EVERY {
                        self.give_back_some();
                    }
                }
                return Poll::Ready(Some(item));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => {
                    self.taken = 0;
                    self.pending = Some((batch.worker, batch.generation, batch.credits));
                    let mut items = batch.items;
                    items.reverse();
                    self.current = items;
                    self.current_from = batch.worker;
                    self.current_received = batch.received;
                    if let Some(at) = batch.received {
                        let ns = at.saturating_duration_since(self.epoch).as_nanos();
                        self.sampler.adjust(u64::try_from(ns).unwrap_or(u64::MAX));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Counts the output wait of the item being taken, for `weight` items,
    /// in its worker's histogram (unless it was not timed: a `Lost` item).
    #[cold]
    #[inline(never)]
    fn time_item(&self, weight: u32) {
        let (Some(received), Some(lane)) =
            (self.current_received, self.lanes.get(self.current_from))
        else {
            return;
        };
        let waited = u64::try_from(received.elapsed().as_nanos()).unwrap_or(u64::MAX);
        lane.timings.output_wait.record(waited, weight);
    }

    /// Gives back every credit of the current batch not given back yet.
    fn give_back_credits(&mut self) {
        self.taken = 0;
        if let Some((worker, generation, credits)) = self.pending.take() {
            if let Some(lane) = self.lanes.get(worker) {
                lane.return_output_credits(generation, credits);
            }
        }
    }

    /// Gives back the credits of the values taken so far from the current
    /// batch.
    fn give_back_some(&mut self) {
        let taken = std::mem::take(&mut self.taken);
        if let Some((worker, generation, credits)) = &mut self.pending {
            let n = taken.min(*credits);
            *credits -= n;
            if let Some(lane) = self.lanes.get(*worker) {
                lane.return_output_credits(*generation, n);
            }
        }
    }
}

impl<O> futures_core::Stream for Outputs<O> {
    type Item = Output<O>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Outputs holds no self-references, so it is Unpin.
        self.get_mut().poll_next_item(cx)
    }
}

impl<O> Unpin for Outputs<O> {}

impl<O> Drop for Outputs<O> {
    fn drop(&mut self) {
        // Give back the credits of everything not taken, so workers that
        // still emit are not left waiting.
        self.current.clear();
        self.give_back_credits();
        self.rx.close();
        while let Ok(batch) = self.rx.try_recv() {
            if let Some(lane) = self.lanes.get(batch.worker) {
                lane.return_output_credits(batch.generation, batch.credits);
            }
        }
    }
}
