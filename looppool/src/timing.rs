//! Where a task's time goes: the [`Histogram`] of a duration, the
//! lock-free histograms each worker index keeps, and the sampler that
//! chooses which tasks are timed. What is measured, and why a sample, is in
//! [the metrics docs](crate::metrics#where-time-goes).
//!
//! A timed task's path: the parent's lane draws it from its [`Sampler`]
//! as it queues its frame, marks the frame timed and notes the time; the
//! worker measures the run and says how long in the completion; the
//! reader, which read the clock once for the whole read, counts the run
//! and the rest of the stay in the lane's [`Timings`]. The output consumer
//! draws items from a sampler of its own and counts their wait there too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod sampler;
mod sent;

pub(crate) use sampler::Sampler;
pub(crate) use sent::SentLog;

/// About how many tasks a second each worker index times, and how many
/// outputs of each worker the consumer's side times, at most.
pub(crate) const TIMED_PER_SEC: u32 = 1000;

/// The buckets' upper bounds, in nanoseconds: 1, 2, 5 steps from 1 µs to
/// 100 s. One more bucket holds what is longer.
const BOUNDS_NS: [u64; 25] = {
    let mut bounds = [0u64; 25];
    let steps = [1, 2, 5];
    let mut i = 0;
    let mut decade = 1_000u64;
    while i < 25 {
        bounds[i] = steps[i % 3] * decade;
        if i % 3 == 2 {
            decade *= 10;
        }
        i += 1;
    }
    bounds
};

/// Buckets of a histogram: one per bound, and the last, unbounded.
const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// The bucket of a duration of `ns` nanoseconds.
fn bucket_of(ns: u64) -> usize {
    BOUNDS_NS.partition_point(|&bound| bound < ns)
}

/// The distribution of a duration (queue wait, run time, output wait) over
/// a sample of tasks, in buckets of 1, 2, 5 steps from 1 µs to 100 s.
///
/// Counts are estimates of how many tasks (or outputs) fell in each
/// bucket: each timed one counts for the tasks it stands for (see
/// [which tasks are timed](crate::metrics#where-time-goes)). A bucket holds
/// the durations above the previous bound up to its own; the last one
/// holds those above 100 s.
///
/// In JSON (the control socket's snapshot) a histogram is
/// `{"count":N,"sum_ns":S,"buckets":[[LE_NS,COUNT],...]}`, with the
/// buckets that hold anything, each named by its upper bound in
/// nanoseconds (`null` for the last).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "Repr", into = "Repr")]
pub struct Histogram {
    counts: [u64; BUCKETS],
    sum_ns: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .field("mean", &self.mean())
            .finish()
    }
}

impl Histogram {
    /// How many tasks (or outputs) it counts: an estimate, see above.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0, |sum, &c| sum.saturating_add(c))
    }

    /// Whether it counts nothing.
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
    }

    /// The sum of the durations it counts (saturating at `u64::MAX`
    /// nanoseconds).
    pub fn sum(&self) -> Duration {
        Duration::from_nanos(self.sum_ns)
    }

    /// The mean duration; `None` when it counts nothing.
    pub fn mean(&self) -> Option<Duration> {
        let count = self.count();
        (count > 0).then(|| Duration::from_nanos(self.sum_ns / count))
    }

    /// Each bucket's upper bound (`None` for the last, unbounded one) and
    /// count, shortest first.
    pub fn buckets(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        self.counts.iter().enumerate().map(|(i, &count)| {
            let bound = BOUNDS_NS.get(i).map(|&ns| Duration::from_nanos(ns));
            (bound, count)
        })
    }

    /// An estimate of quantile `q` (0.5 for the median, 0.99 for the 99th
    /// percentile): linear within the bucket it falls in, as Prometheus'
    /// `histogram_quantile` estimates it; the last bucket's lower bound
    /// (100 s) when it falls there. `None` when it counts nothing.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (below + c) as f64 >= rank {
                let low = if i == 0 { 0 } else { BOUNDS_NS[i - 1] };
                let Some(&high) = BOUNDS_NS.get(i) else {
                    return Some(Duration::from_nanos(low));
                };
                let within = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
                let ns = low as f64 + within * (high - low) as f64;
                return Some(Duration::from_nanos(ns as u64));
            }
            below += c;
        }
        None
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine = mine.saturating_add(theirs);
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    /// What was counted since `earlier`, an older histogram of the same
    /// figure: for the distribution over an interval.
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let mut delta = self.clone();
        for (now, then) in delta.counts.iter_mut().zip(earlier.counts) {
            *now = now.saturating_sub(then);
        }
        delta.sum_ns = self.sum_ns.saturating_sub(earlier.sum_ns);
        delta
    }
}

/// The JSON form of a [`Histogram`].
#[derive(Serialize, Deserialize)]
struct Repr {
    count: u64,
    sum_ns: u64,
    /// (upper bound in ns, `None` for the last; count), non-empty only.
    buckets: Vec<(Option<u64>, u64)>,
}

impl From<Histogram> for Repr {
    fn from(h: Histogram) -> Self {
        Repr {
            count: h.count(),
            sum_ns: h.sum_ns,
            buckets: h
                .counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0)
                .map(|(i, &c)| (BOUNDS_NS.get(i).copied(), c))
                .collect(),
        }
    }
}

impl From<Repr> for Histogram {
    /// Each bucket goes where its upper bound falls: exactly where it came
    /// from when both ends have the same bounds.
    fn from(r: Repr) -> Self {
        let mut h = Histogram {
            sum_ns: r.sum_ns,
            ..Histogram::default()
        };
        for (bound, count) in r.buckets {
            let i = bound.map_or(BUCKETS - 1, bucket_of);
            h.counts[i] = h.counts[i].saturating_add(count);
        }
        h
    }
}

/// A histogram that its one writer (a worker's reader, the output
/// consumer) updates without a lock, and that [`Pool::stats`] reads at any
/// time: each bucket is consistent in itself, the buckets and the sum
/// together as of about the same moment.
///
/// [`Pool::stats`]: crate::Pool::stats
#[derive(Debug, Default)]
pub(crate) struct AtomicHistogram {
    counts: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl AtomicHistogram {
    /// Counts a duration of `ns` nanoseconds `weight` times.
    pub(crate) fn record(&self, ns: u64, weight: u32) {
        let weight = u64::from(weight);
        self.counts[bucket_of(ns)].fetch_add(weight, Ordering::Relaxed);
        let add = ns.saturating_mul(weight);
        // Saturates rather than wraps: a worker that reports absurd run
        // times must not turn the sum into a small one.
        let _ = self
            .sum_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sum| {
                Some(sum.saturating_add(add))
            });
    }

    /// A copy of its counts.
    pub(crate) fn snapshot(&self) -> Histogram {
        Histogram {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// The three histograms of one worker index, which its replacement
/// processes continue.
#[derive(Debug, Default)]
pub(crate) struct Timings {
    /// Whether tasks are timed at all (see `PoolBuilder::no_task_timings`).
    pub(crate) on: bool,
    pub(crate) queue_wait: AtomicHistogram,
    pub(crate) run_time: AtomicHistogram,
    pub(crate) output_wait: AtomicHistogram,
}

impl Timings {
    /// Timings that are on, or off.
    pub(crate) fn new(on: bool) -> Self {
        Timings {
            on,
            ..Timings::default()
        }
    }

    /// Records a timed task that was in the pool for `in_pool_ns` and ran
    /// for `ran_ns` of it, counting for `weight` tasks.
    pub(crate) fn record_task(&self, in_pool_ns: u64, ran_ns: u64, weight: u32) {
        self.run_time.record(ran_ns, weight);
        // A worker whose clock runs fast (or that lies) may report a run
        // longer than the task's whole stay: its wait is then nothing.
        self.queue_wait
            .record(in_pool_ns.saturating_sub(ran_ns), weight);
    }
}

#[cfg(test)]
mod tests;
