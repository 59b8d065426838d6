//! The parent's watch over one worker's link: the worker's heartbeats,
//! credit refreshes, the local process, and whether the broker delivers
//! what it stored: task messages removed before the worker took them are
//! published again, and a consumer that stopped delivering, or left the
//! worker's subject full, is replaced.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::names::{self, header_u64};
use crate::relay::link::{control_headers, control_payload, ChildCell, Link, Stop};
use crate::relay::publish::Pending;
use crate::relay::sent::{self, Check, Finding};
use crate::relay::Silence;
use crate::sync::lock;

/// What the worker's heartbeats said so far.
#[derive(Debug, Default)]
struct Reports {
    /// How many arrived.
    count: u64,
    /// The task message number up to which the worker took every one.
    taken: u64,
    /// The last output message the broker stored for the worker.
    stored: u64,
    /// The drop counts already absorbed.
    dropped: [u64; 4],
}

/// Heartbeats, credit refreshes, the local process, and the broker's
/// deliveries.
pub(crate) async fn watch(link: &Link<'_>, child: Option<&Arc<Mutex<ChildCell>>>) -> Stop {
    let (client, broker, settings) = (link.client, link.broker, link.settings);
    let n = settings.index;
    let inc = settings.incarnation;
    let mut beats = match client.subscribe(broker.names.heartbeat_subject(n)).await {
        Ok(s) => s,
        Err(e) => return Stop::Broken(format!("cannot watch heartbeats: {e}")),
    };
    let mut silence = Silence::new(settings.silence);
    let mut tick = tokio::time::interval(settings.heartbeat.min(Duration::from_millis(50)));
    let mut last_refresh = Instant::now();
    let mut reports = Reports::default();
    let mut deliveries = Deliveries::new(settings.heartbeat * 3);
    loop {
        tokio::select! {
            beat = beats.next() => match beat {
                Some(m) if header_u64(m.headers.as_ref(), names::INCARNATION) == Some(inc) => {
                    silence.heard();
                    let h = m.headers.as_ref();
                    if let Some(d) = h.and_then(|h| h.get(names::DROPPED)) {
                        link.drops.absorb(d.as_str(), &mut reports.dropped, broker.names.pool(), n);
                    }
                    reports.stored = reports.stored.max(header_u64(h, names::STORED).unwrap_or(0));
                    reports.taken = reports.taken.max(header_u64(h, names::TAKEN).unwrap_or(0));
                    reports.count += 1;
                }
                Some(_) => {}
                None => return Stop::Broken("heartbeat subscription closed".into()),
            },
            _ = tick.tick() => {
                let connected =
                    client.connection_state() == async_nats::connection::State::Connected;
                // Silence while we cannot hear is not the worker's fault.
                if silence.too_long(connected) {
                    return Stop::Silent;
                }
                if !connected {
                    deliveries.disconnected();
                    continue;
                }
                if let Some(stop) = deliveries.check(link, &reports).await {
                    return stop;
                }
                if let Some(child) = child {
                    let exited = lock(child).try_wait();
                    if !matches!(exited, Ok(None)) {
                        // Its last messages may still be on their way.
                        tokio::time::sleep(settings.heartbeat.min(Duration::from_millis(200))).await;
                        return Stop::ProcessEnded;
                    }
                }
                if last_refresh.elapsed() >= settings.heartbeat {
                    last_refresh = Instant::now();
                    let _ = client
                        .publish_with_headers(
                            broker.names.control_subject(n),
                            control_headers(inc),
                            control_payload(link.credit, &[]),
                        )
                        .await;
                }
            }
        }
    }
}

/// Least time between two replacements of a worker's task consumer: the
/// worker pulls again from the new one within a few tenths of a second.
const RENEW_EVERY: Duration = Duration::from_secs(3);

/// How long the broker may refuse every task message for a worker's subject
/// before its task consumer is replaced: the pool itself never fills the
/// subject (it holds twice the tasks the pool sends one worker), so what
/// fills it is messages the consumer will not deliver: messages the worker
/// took, brought back by a broker that crashed before it wrote their
/// removal.
const REFUSED_GRACE: Duration = Duration::from_secs(1);

/// Whether the broker delivers what it stored, both ways.
#[derive(Debug)]
struct Deliveries {
    gap: Gap,
    check: Check,
    /// When the task consumer was last replaced.
    renewed: Option<Instant>,
}

impl Deliveries {
    fn new(grace: Duration) -> Self {
        Deliveries {
            gap: Gap::default(),
            check: Check::new(grace),
            renewed: None,
        }
    }

    /// This side is disconnected: nothing is delivered meanwhile, and
    /// what is late counts from the reconnection.
    fn disconnected(&mut self) {
        self.gap.since = Instant::now();
        self.check.reset();
    }

    /// Checks both directions while connected; the stop, when an output
    /// message is lost for good.
    async fn check(&mut self, link: &Link<'_>, reports: &Reports) -> Option<Stop> {
        let (broker, n, inc) = (link.broker, link.settings.index, link.settings.incarnation);
        self.gap.stored = reports.stored;
        match self.gap.check(link.next.load(Ordering::Relaxed)) {
            Some(GapStep::Lost(lost)) => {
                return Some(Stop::Broken(format!(
                    "the broker stored output message {lost} of worker {n} but never \
                     delivered it (the stream was purged, or the broker lost it)"
                )))
            }
            Some(GapStep::Renew(due)) => {
                tracing::warn!(
                    pool = broker.names.pool(),
                    worker = n,
                    message = due,
                    "an output message the broker stored is not delivered: replacing the \
                     consumer of the worker's outputs"
                );
                link.renew_outputs.notify_one();
            }
            None => {}
        }
        if let Some((k, seq)) = self.check.due(link.sent.taken(reports.taken)) {
            let there = broker.task_message_is(seq, inc, k).await;
            match there.map(|there| self.check.judge(k, there, reports.count)) {
                Ok(Finding::Removed) => {
                    publish_again(link, k).await;
                    self.check.reset();
                }
                Ok(Finding::Stalled) => {
                    self.renew_tasks(link, "the worker's task consumer does not deliver the task messages the broker holds for it")
                        .await;
                }
                Ok(Finding::Wait) | Err(_) => {}
            }
        }
        if link
            .refused
            .since()
            .is_some_and(|since| since.elapsed() >= REFUSED_GRACE)
        {
            self.renew_tasks(
                link,
                "the broker refuses to store the worker's task messages",
            )
            .await;
        }
        None
    }

    /// Replaces the worker's task consumer (at most every [`RENEW_EVERY`]).
    async fn renew_tasks(&mut self, link: &Link<'_>, why: &str) {
        if self.renewed.is_some_and(|at| at.elapsed() < RENEW_EVERY) {
            return;
        }
        self.renewed = Some(Instant::now());
        self.check.reset();
        let (broker, settings) = (link.broker, link.settings);
        let n = settings.index;
        tracing::warn!(
            pool = broker.names.pool(),
            worker = n,
            "{why}: replacing the consumer"
        );
        let renewed = broker
            .renew_task_consumer(n, settings.incarnation, settings.max_running, link.ack_wait)
            .await;
        if let Err(e) = renewed {
            tracing::warn!(pool = broker.names.pool(), worker = n, error = %e, "cannot replace a worker's task consumer; trying again later");
        }
    }
}

/// Publishes again those untaken task messages, from `k` (found removed
/// from the broker before the worker took it) on, that the broker no
/// longer has: a purge or a broker crash takes a run of them. Copies keep their
/// identity, so a worker that took one after all drops it; one the broker
/// will not store now is looked up again at the next check.
async fn publish_again(link: &Link<'_>, k: u64) {
    let (broker, n, inc) = (link.broker, link.settings.index, link.settings.incarnation);
    let subject = broker.names.task_subject(n);
    let mut copies = 0;
    for (k, seq) in link.sent.untaken(k, sent::BATCH) {
        if !matches!(broker.task_message_is(seq, inc, k).await, Ok(false)) {
            continue;
        }
        let Some((message, copy)) = link.sent.copy(k) else {
            continue;
        };
        let headers = message.copy_headers(copy);
        let payload = message.payload.clone();
        let Ok(ack) = broker
            .js
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await
        else {
            break;
        };
        let then = message;
        let _ = link.confirm.send(Pending {
            ack,
            subject: subject.clone(),
            headers,
            payload,
            then,
        });
        copies += 1;
    }
    tracing::warn!(
        pool = broker.names.pool(),
        worker = n,
        message = k,
        copies,
        "task messages were removed from the broker before the worker took them (the stream \
         was purged, or the broker lost them): published them again"
    );
}

/// How long an output message the worker says the broker stored may stay
/// undelivered, while both sides are connected, before the consumer of the
/// worker's outputs is replaced: longer than a dead pull takes to be
/// noticed and pulled again (two missed idle heartbeats, `PULL_HEARTBEAT`)
/// and than a message handed to a pull that died with the broker waits to
/// be handed out again (`OUTPUT_ACK_WAIT`).
const GAP_RENEW: Duration = Duration::from_secs(4);

/// How long such a message may stay undelivered before it counts as lost:
/// the new consumer delivers every message of the subject from the first,
/// at once. Shorter than the core's default heartbeat timeout (10 s), which
/// would otherwise report the worker unresponsive, its pongs being in the
/// lost messages.
const GAP_TIMEOUT: Duration = Duration::from_secs(8);

/// What to do about an output message stored and not delivered.
#[derive(Debug, PartialEq, Eq)]
enum GapStep {
    /// Replace the consumer (the message due).
    Renew(u64),
    /// It is lost (the message).
    Lost(u64),
}

/// Watches for an output message the broker confirmed to the worker but
/// never delivered: the tasks it completed would otherwise wait forever.
#[derive(Debug)]
struct Gap {
    /// The last output message the worker says is stored.
    stored: u64,
    /// The next message due, and since when.
    due: u64,
    since: Instant,
    /// Whether the consumer was replaced for this message.
    renewed: bool,
}

impl Default for Gap {
    fn default() -> Self {
        Gap {
            stored: 0,
            due: 0,
            since: Instant::now(),
            renewed: false,
        }
    }
}

impl Gap {
    /// What to do, if `next` (due) is stored and has been due too long.
    fn check(&mut self, next: u64) -> Option<GapStep> {
        if next != self.due || self.stored < next {
            self.due = next;
            self.since = Instant::now();
            self.renewed = false;
            return None;
        }
        let waited = self.since.elapsed();
        if waited > GAP_TIMEOUT {
            Some(GapStep::Lost(next))
        } else if waited > GAP_RENEW && !self.renewed {
            self.renewed = true;
            Some(GapStep::Renew(next))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undelivered_output_renews_the_consumer_once_then_is_lost() {
        let mut gap = Gap {
            stored: 7,
            ..Gap::default()
        };
        assert_eq!(gap.check(7), None, "just due");
        gap.since = Instant::now() - GAP_RENEW - Duration::from_millis(1);
        assert_eq!(gap.check(7), Some(GapStep::Renew(7)));
        assert_eq!(gap.check(7), None, "renewed once");
        gap.since = Instant::now() - GAP_TIMEOUT - Duration::from_millis(1);
        assert_eq!(gap.check(7), Some(GapStep::Lost(7)));
        assert_eq!(gap.check(8), None, "not stored yet");
    }
}
