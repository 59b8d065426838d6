//! The parent's record of the task messages the broker stored for a worker
//! and the worker has not yet taken, to notice one removed before it was
//! delivered (the stream purged, or the message lost by a broker that
//! crashed) and publish it again: the task in it would otherwise keep its
//! slot without a fate.
//!
//! A work-queue stream removes a message when its consumer acknowledges it,
//! which the worker does only after it took the message, or when the
//! stream is purged or loses it. So the oldest message the worker has not
//! taken (the worker reports every number up to which it took all, with its
//! heartbeats), if the broker no longer has it a while after it was stored,
//! was removed without being delivered.
//!
//! The same check notices a consumer that stopped delivering: the oldest
//! message the worker has not taken still in the stream, while the worker
//! goes on reporting, means the broker does not hand it out. (A consumer
//! restored by a broker restarted after a crash can stop for good; see
//! `Broker::renew_task_consumer`.)
//!
//! Publishing a message again never runs its task twice, whatever the
//! delivery mode: the copy keeps the message's identity (incarnation and
//! number), and a worker runs each number once and drops a copy of one it
//! took. So a check that raced the worker (it took and acknowledged the
//! message just before the broker was asked, and its report was late)
//! costs one dropped copy, never a task or a worker.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, HeaderValue};
use bytes::Bytes;

use crate::sync::lock;

/// How long the oldest untaken message may be missing from the stream
/// before it counts as removed: longer than a worker's report of what it
/// took takes to arrive (its heartbeat), so that a message just taken and
/// acknowledged is not mistaken for one removed.
pub(crate) const GRACE: Duration = Duration::from_secs(3);

/// The worker's reports that must arrive after a message was found missing
/// before it counts as removed: the first may have left the worker before
/// the broker was asked; a second one says what the worker took since.
const REPORTS: u64 = 2;

/// How long the oldest untaken message must stay in the stream, once
/// found there, before it counts as not delivered (with [`REPORTS`] of the
/// worker's reports meanwhile).
const STALL_WAIT: Duration = Duration::from_secs(1);

/// Untaken messages looked up (and published again if missing) at most in
/// one pass, so that the watch keeps hearing heartbeats meanwhile.
pub(crate) const BATCH: usize = 256;

/// A task message the broker stored, kept until the worker takes it.
#[derive(Debug, Clone)]
pub(crate) struct Untaken {
    /// Its number (its identity, with the incarnation).
    pub(crate) k: u64,
    /// What it takes to publish it again.
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

impl Untaken {
    /// Its headers for publishing it again for the `copy`-th time: a
    /// message id of its own, so that a broker that still remembers the
    /// first one (a purge keeps the duplicate window) stores it.
    pub(crate) fn copy_headers(&self, copy: u32) -> HeaderMap {
        let mut headers = self.headers.clone();
        let id = self
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map_or("", |v| v.as_str());
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            HeaderValue::from(format!("{id}.r{copy}").as_str()),
        );
        headers
    }
}

/// One stored message: where, what, and how often it was published again.
#[derive(Debug)]
struct Entry {
    seq: u64,
    message: Untaken,
    copies: u32,
}

/// Task messages the broker stored for one worker incarnation, with their
/// stream sequences, down to the last one the worker took.
#[derive(Debug, Default)]
pub(crate) struct Sent(std::sync::Mutex<BTreeMap<u64, Entry>>);

impl Sent {
    /// The broker stored `message` at stream sequence `seq` (again, for a
    /// copy: it keeps its count of copies).
    pub(crate) fn stored(&self, message: Untaken, seq: u64) {
        let mut sent = lock(&self.0);
        let copies = sent.get(&message.k).map_or(0, |e| e.copies);
        sent.insert(
            message.k,
            Entry {
                seq,
                message,
                copies,
            },
        );
    }

    /// The worker took every message up to `k`; the oldest it has not
    /// taken, with its stream sequence.
    pub(crate) fn taken(&self, k: u64) -> Option<(u64, u64)> {
        let mut sent = lock(&self.0);
        while sent.first_key_value().is_some_and(|(&first, _)| first <= k) {
            sent.pop_first();
        }
        sent.first_key_value().map(|(&k, e)| (k, e.seq))
    }

    /// The oldest untaken messages from `from` on, at most `at_most`, as
    /// (number, stream sequence).
    pub(crate) fn untaken(&self, from: u64, at_most: usize) -> Vec<(u64, u64)> {
        lock(&self.0)
            .range(from..)
            .take(at_most)
            .map(|(&k, e)| (k, e.seq))
            .collect()
    }

    /// Message `k`, to publish again, with the number of this copy; `None`
    /// once the worker took it.
    pub(crate) fn copy(&self, k: u64) -> Option<(Untaken, u32)> {
        let mut sent = lock(&self.0);
        let e = sent.get_mut(&k)?;
        e.copies += 1;
        Some((e.message.clone(), e.copies))
    }
}

/// What the broker's answers about the oldest untaken message mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finding {
    /// Nothing yet.
    Wait,
    /// It was removed before the worker took it: publish it again.
    Removed,
    /// It is there, and the worker does not receive it: the worker's
    /// consumer stopped delivering.
    Stalled,
}

/// When to ask the broker whether the oldest untaken message is still
/// there, and what its presence or absence means.
#[derive(Debug)]
pub(crate) struct Check {
    grace: Duration,
    /// The oldest untaken message last seen, and since when.
    oldest: Option<(u64, Instant)>,
    /// The message looked up, whether the broker had it, since when, and
    /// the worker's reports counted then: the reports arriving meanwhile
    /// say whether it took it after all.
    looked: Option<(u64, bool, Instant, u64)>,
    last_asked: Instant,
}

impl Check {
    /// Checks with `grace` as the least time a message must be untaken,
    /// then missing, before it counts as removed.
    pub(crate) fn new(grace: Duration) -> Self {
        Check {
            grace: grace.max(GRACE),
            oldest: None,
            looked: None,
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
        if self.looked.is_some_and(|(m, ..)| m != k) {
            self.looked = None;
        }
        let since = self.oldest.map_or(Instant::now(), |(_, at)| at);
        if since.elapsed() < self.grace || self.last_asked.elapsed() < Duration::from_secs(1) {
            return None;
        }
        self.last_asked = Instant::now();
        Some((k, seq))
    }

    /// What it means that the broker has message `k` (`there`) or not,
    /// the worker's reports being `reports` (a count of them all).
    ///
    /// Missing, and still untaken a grace period and [`REPORTS`] reports
    /// after it was first found missing: removed. There, and still untaken
    /// [`REPORTS`] reports and a second after it was first found there
    /// (having been the oldest untaken for the grace period before): the
    /// consumer does not deliver it.
    pub(crate) fn judge(&mut self, k: u64, there: bool, reports: u64) -> Finding {
        match self.looked {
            Some((m, was, at, then)) if m == k && was == there => {
                let waited = if there { STALL_WAIT } else { self.grace };
                if at.elapsed() < waited || reports < then + REPORTS {
                    Finding::Wait
                } else if there {
                    Finding::Stalled
                } else {
                    Finding::Removed
                }
            }
            _ => {
                self.looked = Some((k, there, Instant::now(), reports));
                Finding::Wait
            }
        }
    }

    /// Starts over (after a broker outage: the worker could not take
    /// anything meanwhile, nor report it; after publishing copies: they
    /// take a while to arrive).
    pub(crate) fn reset(&mut self) {
        self.oldest = None;
        self.looked = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(k: u64) -> Untaken {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("7.{k}").as_str(),
        );
        Untaken {
            k,
            headers,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn what_the_worker_took_is_forgotten() {
        let sent = Sent::default();
        for k in 1..=5 {
            sent.stored(message(k), 100 + k);
        }
        assert_eq!(sent.taken(0), Some((1, 101)));
        assert_eq!(sent.taken(3), Some((4, 104)));
        assert_eq!(sent.untaken(4, 8), vec![(4, 104), (5, 105)]);
        assert_eq!(sent.taken(5), None);
        assert!(sent.copy(5).is_none(), "taken: nothing to publish again");
    }

    #[test]
    fn each_copy_has_a_message_id_of_its_own() {
        let sent = Sent::default();
        sent.stored(message(4), 104);
        let (m, copy) = sent.copy(4).unwrap();
        assert_eq!(copy, 1);
        let id = |h: &HeaderMap| {
            h.get(async_nats::header::NATS_MESSAGE_ID)
                .unwrap()
                .to_string()
        };
        assert_eq!(id(&m.copy_headers(copy)), "7.4.r1");
        sent.stored(m, 230);
        assert_eq!(sent.taken(0), Some((4, 230)), "the copy's sequence");
        assert_eq!(sent.copy(4).unwrap().1, 2);
    }

    #[test]
    fn the_broker_is_asked_only_after_the_grace() {
        let mut check = Check::new(Duration::ZERO);
        assert_eq!(check.due(None), None);
        assert_eq!(check.due(Some((4, 104))), None, "within the grace");
        assert_eq!(
            check.judge(4, false, 0),
            Finding::Wait,
            "missing once is not removed"
        );
        assert_eq!(
            check.judge(4, true, 5),
            Finding::Wait,
            "there once is not stalled"
        );
    }

    #[test]
    fn a_missing_message_counts_only_after_two_later_reports() {
        let mut check = Check::new(Duration::ZERO);
        check.grace = Duration::ZERO;
        assert_eq!(check.judge(4, false, 10), Finding::Wait);
        assert_eq!(
            check.judge(4, false, 11),
            Finding::Wait,
            "one report may predate the look-up"
        );
        assert_eq!(check.judge(4, false, 12), Finding::Removed);
        assert_eq!(
            check.judge(4, true, 12),
            Finding::Wait,
            "found there after all: it starts over"
        );
    }

    #[test]
    fn a_message_there_but_not_taken_counts_after_two_reports_and_a_second() {
        let mut check = Check::new(Duration::ZERO);
        check.grace = Duration::ZERO;
        assert_eq!(check.judge(4, true, 10), Finding::Wait);
        assert_eq!(check.judge(4, true, 12), Finding::Wait, "within a second");
        let (k, there, _, then) = check.looked.unwrap();
        check.looked = Some((k, there, Instant::now() - STALL_WAIT, then));
        assert_eq!(check.judge(4, true, 11), Finding::Wait, "one report only");
        assert_eq!(check.judge(4, true, 12), Finding::Stalled);
        assert_eq!(
            check.judge(5, true, 40),
            Finding::Wait,
            "another message starts over"
        );
    }
}
