//! Messages the pool dropped rather than applied, counted and logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sync::lock;

/// Why a message (or one frame of it) was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drop {
    /// Not a message of the pool's making: headers missing or unreadable,
    /// a payload that is not whole frames, a frame the wrong way round.
    Malformed,
    /// For a task that is not (or no longer) where it says: another
    /// incarnation's, a finished task's, a slot since reused.
    Stale,
    /// A copy of a message already applied (a broker redelivery).
    Duplicate,
    /// Past the bound on what the parent holds for out-of-order messages.
    Overflow,
}

#[derive(Debug, Default)]
struct Inner {
    malformed: AtomicU64,
    stale: AtomicU64,
    duplicate: AtomicU64,
    overflow: AtomicU64,
    /// When the last warning was logged, and the total then.
    logged: Mutex<Option<(Instant, u64)>>,
}

/// Counts of broker messages a pool dropped rather than applied: a cheap,
/// cloneable handle, from [`NatsPoolBuilder::drop_counts`].
///
/// A message is dropped when it is malformed, belongs to no task the pool
/// holds (another life of a worker, a finished task), repeats one already
/// applied, or lies past the bound on out-of-order messages. None of these
/// is a reason to replace a worker or fail the pool: the message is
/// counted here and logged (a warning at most once a second, with the
/// totals). Counts made in workers reach the parent with their heartbeats.
///
/// Each count is read on its own (relaxed), and only ever grows.
///
/// [`NatsPoolBuilder::drop_counts`]: crate::NatsPoolBuilder::drop_counts
#[derive(Debug, Clone, Default)]
pub struct DropCounts(Arc<Inner>);

/// How often the warning about dropped messages is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(1);

impl DropCounts {
    /// Messages (or frames) that the pool did not make: missing or
    /// unreadable headers, payloads that are not looppool frames.
    pub fn malformed(&self) -> u64 {
        self.0.malformed.load(Ordering::Relaxed)
    }

    /// Messages for a task the pool no longer holds there: another life of
    /// the worker, a finished task, a slot since given to another task.
    pub fn stale(&self) -> u64 {
        self.0.stale.load(Ordering::Relaxed)
    }

    /// Copies of messages already applied, which a broker may redeliver
    /// after it restarts.
    pub fn duplicates(&self) -> u64 {
        self.0.duplicate.load(Ordering::Relaxed)
    }

    /// Out-of-order output messages past what the parent holds for each
    /// worker.
    pub fn overflow(&self) -> u64 {
        self.0.overflow.load(Ordering::Relaxed)
    }

    /// The sum of the counts.
    pub fn total(&self) -> u64 {
        self.malformed() + self.stale() + self.duplicates() + self.overflow()
    }

    /// Counts `n` drops for `why`, and warns (rate-limited) for all but
    /// duplicates, which a broker restart makes by the thousand.
    pub(crate) fn add(&self, why: Drop, n: u64, pool: &str, worker: usize) {
        if n == 0 {
            return;
        }
        let counter = match why {
            Drop::Malformed => &self.0.malformed,
            Drop::Stale => &self.0.stale,
            Drop::Duplicate => &self.0.duplicate,
            Drop::Overflow => &self.0.overflow,
        };
        counter.fetch_add(n, Ordering::Relaxed);
        let level_warn = why != Drop::Duplicate;
        let total = self.total();
        let mut logged = lock(&self.0.logged);
        if logged.is_some_and(|(at, _)| at.elapsed() < LOG_EVERY) {
            return;
        }
        let since = logged.map_or(0, |(_, t)| t);
        *logged = Some((Instant::now(), total));
        drop(logged);
        if level_warn {
            tracing::warn!(
                pool,
                worker,
                reason = ?why,
                dropped_since_last = total - since,
                malformed = self.malformed(),
                stale = self.stale(),
                duplicates = self.duplicates(),
                overflow = self.overflow(),
                "dropped broker messages the pool cannot apply"
            );
        } else {
            tracing::debug!(
                pool,
                worker,
                duplicates = self.duplicates(),
                "dropped redelivered broker messages"
            );
        }
    }
}

impl DropCounts {
    /// The counts as a header value, for a worker's heartbeat.
    pub(crate) fn encode(&self) -> String {
        format!(
            "{},{},{},{}",
            self.malformed(),
            self.stale(),
            self.duplicates(),
            self.overflow()
        )
    }

    /// Adds what a worker's heartbeat reports (`header`, its running totals)
    /// beyond what it reported before (`seen`, updated).
    pub(crate) fn absorb(&self, header: &str, seen: &mut [u64; 4], pool: &str, worker: usize) {
        let mut totals = [0u64; 4];
        let mut parts = header.split(',');
        for t in &mut totals {
            match parts.next().and_then(|p| p.parse().ok()) {
                Some(v) => *t = v,
                None => return,
            }
        }
        let kinds = [
            Drop::Malformed,
            Drop::Stale,
            Drop::Duplicate,
            Drop::Overflow,
        ];
        for ((kind, total), seen) in kinds.into_iter().zip(totals).zip(seen.iter_mut()) {
            self.add(kind, total.saturating_sub(*seen), pool, worker);
            *seen = (*seen).max(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_totals_are_added_once() {
        let parent = DropCounts::default();
        let mut seen = [0; 4];
        parent.absorb("1,2,3,0", &mut seen, "p", 0);
        parent.absorb("1,2,3,0", &mut seen, "p", 0);
        parent.absorb("2,2,3,0", &mut seen, "p", 0);
        parent.absorb("garbage", &mut seen, "p", 0);
        assert_eq!(
            (parent.malformed(), parent.stale(), parent.duplicates()),
            (2, 2, 3)
        );
        assert_eq!(parent.total(), 7);
    }
}
