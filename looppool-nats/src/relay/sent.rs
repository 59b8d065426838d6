//! The parent's record of the task messages the broker stored for a worker
//! and the worker has not yet taken, to notice one removed before it was
//! delivered: the stream purged, or its messages lost by the broker. The
//! tasks in them would otherwise keep their slots without a fate.
//!
//! A work-queue stream removes a message when its consumer acknowledges it,
//! which the worker does only after it took the message, or when the
//! stream is purged or loses it. So the oldest message the worker has not
//! taken (the worker reports every number up to which it took all, with its
//! heartbeats), if the broker no longer has it a while after it was stored,
//! was removed without being delivered.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// How long the oldest untaken message may be missing from the stream
/// before it counts as removed: longer than a worker's report of what it
/// took takes to arrive (its heartbeat), so that a message just taken and
/// acknowledged is not mistaken for one removed.
pub(crate) const GRACE: Duration = Duration::from_secs(3);

/// Task-message numbers the broker stored for one worker incarnation, with
/// their stream sequences, down to the last one the worker took.
#[derive(Debug, Default)]
pub(crate) struct Sent(std::sync::Mutex<BTreeMap<u64, u64>>);

impl Sent {
    /// The broker stored task message `k` at stream sequence `seq`.
    pub(crate) fn stored(&self, k: u64, seq: u64) {
        lock(&self.0).insert(k, seq);
    }

    /// The worker took every message up to `k`; the oldest it has not
    /// taken, with its stream sequence.
    pub(crate) fn taken(&self, k: u64) -> Option<(u64, u64)> {
        let mut sent = lock(&self.0);
        while sent.first_key_value().is_some_and(|(&first, _)| first <= k) {
            sent.pop_first();
        }
        sent.first_key_value().map(|(&k, &seq)| (k, seq))
    }
}

/// When to ask the broker whether the oldest untaken message is still
/// there, and what its absence means.
#[derive(Debug)]
pub(crate) struct Check {
    grace: Duration,
    /// The oldest untaken message last seen, and since when.
    oldest: Option<(u64, Instant)>,
    /// The message found missing, and since when: the worker's reports
    /// arriving meanwhile say whether it took it after all.
    missing: Option<(u64, Instant)>,
    last_asked: Instant,
}

impl Check {
    /// Checks with `grace` as the least time a message must be untaken,
    /// then missing, before it counts as removed.
    pub(crate) fn new(grace: Duration) -> Self {
        Check {
            grace: grace.max(GRACE),
            oldest: None,
            missing: None,
            last_asked: Instant::now(),
        }
    }

    /// The stream sequence to look up now, if `oldest` (number, sequence)
    /// has been untaken for the grace period and the broker was not asked
    /// in the last second.
    pub(crate) fn due(&mut self, oldest: Option<(u64, u64)>) -> Option<(u64, u64)> {
        let Some((k, seq)) = oldest else {
            self.oldest = None;
            return None;
        };
        if self.oldest.is_none_or(|(seen, _)| seen != k) {
            self.oldest = Some((k, Instant::now()));
        }
        if self.missing.is_some_and(|(m, _)| m != k) {
            self.missing = None;
        }
        let since = self.oldest.map_or(Instant::now(), |(_, at)| at);
        if since.elapsed() < self.grace || self.last_asked.elapsed() < Duration::from_secs(1) {
            return None;
        }
        self.last_asked = Instant::now();
        Some((k, seq))
    }

    /// Whether message `k`, which the broker has (`there`) or not, counts
    /// as removed before delivery: missing, and still untaken a grace
    /// period after it was first found missing.
    pub(crate) fn removed(&mut self, k: u64, there: bool) -> bool {
        if there {
            self.missing = None;
            return false;
        }
        match self.missing {
            Some((m, at)) if m == k => at.elapsed() >= self.grace,
            _ => {
                self.missing = Some((k, Instant::now()));
                false
            }
        }
    }

    /// Starts over (after a broker outage: the worker could not take
    /// anything meanwhile, nor report it).
    pub(crate) fn reset(&mut self) {
        self.oldest = None;
        self.missing = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_worker_took_is_forgotten() {
        let sent = Sent::default();
        for k in 1..=5 {
            sent.stored(k, 100 + k);
        }
        assert_eq!(sent.taken(0), Some((1, 101)));
        assert_eq!(sent.taken(3), Some((4, 104)));
        assert_eq!(sent.taken(5), None);
    }

    #[test]
    fn the_broker_is_asked_only_after_the_grace() {
        let mut check = Check::new(Duration::ZERO);
        assert_eq!(check.due(None), None);
        assert_eq!(check.due(Some((4, 104))), None, "within the grace");
        assert!(!check.removed(4, false), "missing once is not removed");
        assert!(!check.removed(4, true));
    }
}
