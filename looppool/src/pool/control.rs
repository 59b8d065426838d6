//! Control over submitted work: cancellation, and the dispatch policies.

use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::time::Duration;

use std::sync::Arc;

use super::Pool;
use crate::parent::lane::{CancelReason, CancelSent, Lane};
use crate::supervisor::Supervisor;
use crate::task_id::TaskId;
use crate::worker::Worker;

/// How long a cancelled task that awaits
/// [`TaskContext::cancelled`](crate::TaskContext::cancelled) may run on to
/// clean up, unless [`PoolBuilder::cancel_grace`](crate::PoolBuilder::cancel_grace) says otherwise.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(1);

/// How round-robin sends ([`Pool::submit`], [`Pool::call`], [`Pool::task`])
/// choose their worker; set with [`PoolBuilder::dispatch`](crate::PoolBuilder::dispatch).
/// Targeted sends ([`Pool::submit_to`], [`Pool::call_to`],
/// [`Pool::broadcast`]) are not affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Dispatch {
    /// The workers in turn, skipping one whose queue is full while another
    /// has room. The default, and the cheapest: for tasks of similar cost.
    #[default]
    RoundRobin,
    /// The worker with the fewest tasks queued or running (ties in turn),
    /// skipping a full one as round-robin does. For tasks of very unequal
    /// cost: a short task does not wait behind a long one while another
    /// worker is idle. It reads every worker's count per send.
    LeastLoaded,
    /// A task with a [key](crate::TaskBuilder::key) goes to the worker
    /// its key chooses by rendezvous hashing over the worker indices, for
    /// workers that keep state per key. Tasks of one key start in the order
    /// they were sent. A key keeps its worker while it is replaced after a
    /// crash (the replacement has the same index); only when
    /// [`Pool::resize`] removes its worker does a key move, and a grown
    /// pool takes over a share of the keys (about one in `n`) for its new
    /// workers, none from one old worker to another. A send with a key
    /// waits for its worker (it is not skipped when full); tasks without a
    /// key go round-robin.
    Keyed,
}

/// What the pool does when a cancelled task's worker does not answer the
/// cancel within twice the [grace period](crate::PoolBuilder::cancel_grace):
/// its handler is blocking the loop (it does not reach an await point).
/// Set with [`PoolBuilder::on_blocked_cancel`](crate::PoolBuilder::on_blocked_cancel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BlockedCancel {
    /// Nothing more: the task ends cancelled when its handler next yields
    /// (the heartbeat still replaces a worker whose loop stops answering
    /// altogether). The default: it never costs other tasks their run.
    #[default]
    Wait,
    /// Kill the worker and replace it, as the heartbeat would: the
    /// cancelled task ends [cancelled](crate::Output::Cancelled), and every
    /// other task the worker held is reported
    /// [lost](crate::Output::Lost) ([`LossCause::Unresponsive`](crate::LossCause::Unresponsive)),
    /// or retried under [`retry_lost`](crate::PoolBuilder::retry_lost).
    ReplaceWorker,
}

/// The pool's control settings, from its builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Control {
    pub(crate) dispatch: Dispatch,
    pub(crate) grace: Duration,
    pub(crate) on_blocked: BlockedCancel,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            dispatch: Dispatch::RoundRobin,
            grace: DEFAULT_CANCEL_GRACE,
            on_blocked: BlockedCancel::Wait,
        }
    }
}

/// The hash of a task's key, as keyed dispatch uses it: the same in every
/// process and run (SipHash with fixed keys).
pub(crate) fn key_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    #[allow(deprecated)] // SipHasher: fixed keys, stable across runs.
    let mut h = std::hash::SipHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// The worker of `n` that key hash `key` goes to: the index with the
/// highest score (rendezvous hashing). Removing an index moves only its
/// own keys; adding one takes keys only for itself.
pub(crate) fn rendezvous(key: u64, n: usize) -> usize {
    (0..n)
        .max_by_key(|&i| mix(key ^ mix(i as u64 ^ 0x9e37_79b9_7f4a_7c15)))
        .unwrap_or(0)
}

/// A 64-bit finaliser (splitmix64's): every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Under [`BlockedCancel::ReplaceWorker`], replaces the worker of `lane` if
/// the cancel of `id`, sent to connection `generation`, is not answered
/// within twice the grace period.
fn watch_cancel<O: serde::de::DeserializeOwned + Send + 'static>(
    ctl: &Control,
    lane: &Arc<Lane<O>>,
    sup: &Arc<Supervisor<O>>,
    generation: u64,
    id: TaskId,
) {
    if ctl.on_blocked != BlockedCancel::ReplaceWorker {
        return;
    }
    // A call future dropped outside a runtime cannot watch: the cancel
    // still goes out, and the heartbeat still guards the worker.
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (lane, sup) = (lane.clone(), sup.clone());
    let worker = lane.index;
    let wait = ctl.grace.saturating_mul(2);
    rt.spawn(async move {
        tokio::time::sleep(wait).await;
        if lane.still_cancelling(generation, id) {
            tracing::warn!(
                worker,
                task = %id,
                "a cancelled task's worker did not answer within {wait:?}: replacing it"
            );
            lane.unresponsive.store(true, Ordering::SeqCst);
            sup.kill(worker);
        }
    });
}

/// Cancels task `id` of the pool of `sup` for `reason`, as
/// [`Pool::cancel`] says; also what the control socket's `cancel` does.
pub(crate) fn cancel_in<O: serde::de::DeserializeOwned + Send + 'static>(
    sup: &Arc<Supervisor<O>>,
    ctl: &Control,
    id: TaskId,
    reason: CancelReason,
) -> bool {
    let lanes = &sup.lanes;
    let Some(first) = lanes.get(id.worker()) else {
        return false;
    };
    let mut found = (first.cancel(id, reason), first);
    if found.0 == CancelSent::NotHeld && first.retries() > 0 {
        // A lost task re-sent under its id may be on any worker.
        for lane in lanes.iter().filter(|l| l.index != id.worker()) {
            found = (lane.cancel(id, reason), lane);
            if found.0 != CancelSent::NotHeld {
                break;
            }
        }
    }
    match found {
        (CancelSent::Sent { generation }, lane) => {
            watch_cancel(ctl, lane, sup, generation, id);
            true
        }
        (CancelSent::NotHeld, _) => false,
    }
}

impl<W: Worker> Pool<W> {
    /// Cancels task `id`. Returns true when the pool held the task and its
    /// cancel is now under way; false when the task already ended (its
    /// fate stands), is unknown, or is already being cancelled.
    ///
    /// The task then ends exactly once: [`Output::Cancelled`](crate::Output::Cancelled)
    /// for a `submit`ted task, [`CallError::Cancelled`](crate::CallError::Cancelled)
    /// for a `call`, unless it completed (or failed) before the worker read
    /// the cancel, which then stands. A task whose frame the pool has not
    /// yet written to its worker's connection (a worker that is stopped,
    /// or slow to read) never starts. A worker starts each task as it reads
    /// it, so a task already written starts, and is then dropped at its
    /// first await point, as a running one is: its handler is dropped at
    /// the await point where it waits, or, if it awaits
    /// [`TaskContext::cancelled`](crate::TaskContext::cancelled), after it
    /// returns or its grace period passes; a handler that blocks its loop
    /// is dealt with by [`BlockedCancel`]. If its worker dies meanwhile,
    /// the task ends cancelled, not lost, and is not retried.
    ///
    /// ```no_run
    /// # async fn demo(pool: looppool::Pool<impl looppool::Worker<Task = u64>>) {
    /// let id = pool.submit(7).await.unwrap();
    /// assert!(pool.cancel(id));
    /// assert!(!pool.cancel(id), "its cancel is already under way");
    /// # }
    /// ```
    pub fn cancel(&self, id: TaskId) -> bool {
        self.cancel_for(id, CancelReason::Asked)
    }

    /// Cancels task `id` for `reason`; see [`cancel`](Self::cancel).
    pub(crate) fn cancel_for(&self, id: TaskId, reason: CancelReason) -> bool {
        cancel_in(&self.inner.sup, &self.inner.control, id, reason)
    }

    /// Starts the deadline of task `id`, sent to worker `worker` with a
    /// deadline of its own: past `limit`, it is cancelled and ends failed.
    /// The timer holds the lane, not the pool: a pool dropped meanwhile
    /// still kills its workers at once.
    pub(super) fn arm_deadline(&self, worker: usize, id: TaskId, limit: Duration) {
        let ctl = self.inner.control;
        let lane = self.inner.lanes[worker].clone();
        let sup = self.inner.sup.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            if let CancelSent::Sent { generation } = lane.cancel(id, CancelReason::Deadline(limit))
            {
                sup.report_deadline(worker, id, limit);
                watch_cancel(&ctl, &lane, &sup, generation, id);
            }
        });
    }

    /// The worker a round-robin send tries first, by the dispatch policy.
    #[inline(always)]
    pub(super) fn choose(&self) -> usize {
        match self.inner.control.dispatch {
            Dispatch::LeastLoaded => self.least_loaded(),
            Dispatch::RoundRobin | Dispatch::Keyed => self.pick(),
        }
    }

    /// The running worker with the fewest tasks in flight, the first in
    /// turn among equals.
    #[cold]
    fn least_loaded(&self) -> usize {
        let n = self.workers();
        let start = self.pick();
        let mut best = (usize::MAX, start);
        for k in 0..n {
            let i = (start + k) % n;
            let lane = &self.inner.lanes[i];
            if !lane.is_up() {
                continue;
            }
            let load = lane.in_flight();
            if load < best.0 {
                best = (load, i);
                if load == 0 {
                    break;
                }
            }
        }
        // The turn goes on from the worker chosen, so ties rotate.
        self.inner.next.store(best.1 + 1, Ordering::Relaxed);
        best.1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_the_keys_of_a_removed_worker() {
        let before: Vec<usize> = (0..2000u64).map(|k| rendezvous(key_hash(&k), 4)).collect();
        let after: Vec<usize> = (0..2000u64).map(|k| rendezvous(key_hash(&k), 3)).collect();
        for (b, a) in before.iter().zip(&after) {
            if *b < 3 {
                assert_eq!(a, b, "a key of a kept worker moved");
            }
        }
        // Every worker gets a fair share.
        for w in 0..4 {
            let share = before.iter().filter(|&&b| b == w).count();
            assert!(
                (350..650).contains(&share),
                "worker {w} got {share} of 2000"
            );
        }
    }

    #[test]
    fn growing_moves_keys_only_to_the_new_worker() {
        for k in 0..2000u64 {
            let (b, a) = (rendezvous(key_hash(&k), 3), rendezvous(key_hash(&k), 4));
            assert!(a == b || a == 3, "key {k} moved from {b} to {a}");
        }
    }
}
