//! The parent's end: frames the pool writes become broker messages for the
//! worker, and the worker's output messages become frames for the pool.
//!
//! - The init, each task and the stop go to the worker's task subject, one
//!   message each, with a message id so that a publish retried after a
//!   broker outage is stored once.
//! - Credits and pings go to the worker's control subject (core NATS). The
//!   credit travels as a running total, so a lost control message is
//!   repaired by the next one; the total is re-sent on every heartbeat.
//! - The worker's output messages are numbered; they are handed to the pool
//!   in that order, exactly once, whatever the broker redelivers.
//! - The worker is gone when it says so (its last message carries its exit
//!   code), when its heartbeats stop for the silence period while this side
//!   is connected to the broker, or, for a local process, when it exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, HeaderValue};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use looppool::transport::frame::{self, Role};
use looppool::transport::{Connection, ReadHalf, WriteHalf};
use looppool::ExitStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::counters::DropCounts;
use crate::names::{self, header_u64};
use crate::relay::outputs::{Inflight, Intake, Taken};
use crate::relay::publish::{self, Pending};
use crate::relay::sent::{self, Check, Sent, Untaken};
use crate::relay::Silence;
use crate::settings::Settings;
use crate::sync::lock;

/// What the relay knows of how its worker ended.
#[derive(Debug, Default)]
pub(crate) struct Ending {
    /// Set once the relay stopped: the worker is gone for the pool.
    pub(crate) ended: bool,
    /// The exit code the worker announced, if it did.
    pub(crate) status: Option<ExitStatus>,
    /// Why the link ended, when the broker (not the worker) ended it: the
    /// cause its lost tasks are reported with.
    pub(crate) reason: Option<String>,
}

/// A local worker process, shared by the relay (which watches it) and the
/// pool's peer handle (which kills and reaps it).
#[derive(Debug)]
pub(crate) struct ChildCell {
    child: std::process::Child,
    status: Option<ExitStatus>,
}

impl ChildCell {
    pub(crate) fn new(child: std::process::Child) -> Self {
        ChildCell {
            child,
            status: None,
        }
    }

    pub(crate) fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
        }
    }

    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?.map(ExitStatus::from);
        }
        Ok(self.status)
    }

    pub(crate) fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = ExitStatus::from(self.child.wait()?);
        self.status = Some(s);
        Ok(s)
    }
}

/// Everything one relay needs.
pub(crate) struct ParentRelay {
    pub(crate) broker: Broker,
    pub(crate) client: async_nats::Client,
    pub(crate) settings: Settings,
    /// The pool's end of the link is the other side of this connection.
    pub(crate) conn: Connection,
    /// The worker's hello, handed to the pool first.
    pub(crate) hello: Bytes,
    pub(crate) ending: Arc<Mutex<Ending>>,
    pub(crate) child: Option<Arc<Mutex<ChildCell>>>,
    pub(crate) drops: DropCounts,
}

/// What the relay's three directions share.
struct Link<'a> {
    broker: &'a Broker,
    client: &'a async_nats::Client,
    settings: &'a Settings,
    /// The output credits the pool returned so far.
    credit: &'a AtomicU64,
    drops: &'a DropCounts,
    inflight: &'a Inflight,
    /// The next output message due from the worker.
    next: &'a AtomicU64,
    /// Task messages stored and not yet taken by the worker.
    sent: &'a Sent,
    /// Where task messages go to be confirmed stored (and recorded in
    /// `sent`).
    confirm: &'a mpsc::UnboundedSender<Pending<Untaken>>,
}

/// Why the relay stopped.
#[derive(Debug)]
enum Stop {
    /// The pool closed its end.
    PoolClosed,
    /// The worker announced its exit.
    Exited(i32),
    /// The worker fell silent.
    Silent,
    /// The local process ended.
    ProcessEnded,
    /// The broker refused something for good.
    Broken(String),
}

impl ParentRelay {
    pub(crate) async fn run(self) {
        let ParentRelay {
            broker,
            client,
            settings,
            conn,
            hello,
            ending,
            child,
            drops,
        } = self;
        let n = settings.index;
        let inc = settings.incarnation;
        let (reader, mut writer) = conn.into_split();
        let (credit, next) = (AtomicU64::new(0), AtomicU64::new(1));
        let inflight = Inflight::default();
        let sent = Arc::new(Sent::default());
        let (confirm_tx, confirm_rx) = mpsc::unbounded_channel();
        let link = Link {
            broker: &broker,
            client: &client,
            settings: &settings,
            credit: &credit,
            drops: &drops,
            inflight: &inflight,
            next: &next,
            sent: &sent,
            confirm: &confirm_tx,
        };
        let stored = sent.clone();
        let confirmer = tokio::spawn(publish::confirm(
            broker.js.clone(),
            confirm_rx,
            move |(message, seq)| {
                stored.stored(message, seq);
                async {}
            },
        ));
        let stop = {
            let down = down(&link, reader);
            let up = up(&link, &hello, &mut writer);
            let watch = watch(&link, child.as_ref());
            tokio::select! {
                s = down => s,
                s = up => s,
                s = watch => s,
            }
        };
        confirmer.abort();
        tracing::debug!(
            pool = broker.names.pool(),
            worker = n,
            incarnation = inc,
            ?stop,
            "relay stopped"
        );
        {
            let mut e = lock(&ending);
            match &stop {
                Stop::Exited(code) => e.status = Some(ExitStatus::Code(*code)),
                Stop::Broken(why) => e.reason = Some(why.clone()),
                Stop::Silent => {
                    e.reason = Some(format!(
                        "no heartbeat for {:?} while connected to the broker",
                        settings.silence
                    ))
                }
                Stop::PoolClosed | Stop::ProcessEnded => {}
            }
            e.ended = true;
        }
        if let Stop::Broken(why) = &stop {
            tracing::error!(pool = broker.names.pool(), worker = n, error = %why, "broker link broken");
        }
        // The pool sees the end of the connection and reaps the worker.
        let _ = writer.shutdown().await;
        if !matches!(stop, Stop::Exited(_)) {
            // A worker declared gone must not take more tasks.
            kill_message(&client, &broker, n, inc).await;
        }
        let _ = broker.retire_worker(n).await;
    }
}

/// Tells incarnation `inc` of worker `n` to exit at once.
pub(crate) async fn kill_message(client: &async_nats::Client, broker: &Broker, n: usize, inc: u64) {
    let mut headers = HeaderMap::new();
    headers.insert(names::INCARNATION, inc.to_string().as_str());
    headers.insert(names::KILL, "1");
    let _ = client
        .publish_with_headers(broker.names.control_subject(n), headers, Bytes::new())
        .await;
    let _ = client.flush().await;
}

/// Pool → worker.
async fn down(link: &Link<'_>, mut reader: ReadHalf) -> Stop {
    let (broker, client, credit) = (link.broker, link.client, link.credit);
    let n = link.settings.index;
    let inc = link.settings.incarnation;
    let subject = broker.names.task_subject(n);
    let control = broker.names.control_subject(n);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut seq = 0u64;
    loop {
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Stop::PoolClosed,
            Ok(_) => {}
        }
        let mut pings = Vec::new();
        let mut credited = false;
        for f in crate::relay::take_frames(&mut buf) {
            match frame::role(&f) {
                // A cancel rides the task stream: it must reach the worker
                // behind the task it names, and before that slot's next task.
                Ok(role @ (Role::Init | Role::Task(_) | Role::Stop | Role::Cancel(_))) => {
                    // The message's number is its identity (see `ids`).
                    seq += 1;
                    if let Role::Task(slot) = role {
                        link.inflight.sent(slot, seq);
                    }
                    let mut headers = HeaderMap::new();
                    headers.insert(names::INCARNATION, inc.to_string().as_str());
                    headers.insert(names::TASK, seq.to_string().as_str());
                    headers.insert(
                        async_nats::header::NATS_MESSAGE_ID,
                        HeaderValue::from(format!("{inc:x}.{seq}").as_str()),
                    );
                    if credited {
                        // Credits returned just before a task ride with it
                        // (a call's reply frees one before the next call).
                        let total = credit.load(Ordering::Relaxed);
                        headers.insert(names::CREDIT, total.to_string().as_str());
                        credited = false;
                    }
                    let sent = broker
                        .js
                        .publish_with_headers(subject.clone(), headers.clone(), f.clone())
                        .await;
                    match sent {
                        Ok(ack) => {
                            let then = Untaken {
                                k: seq,
                                headers: headers.clone(),
                                payload: f.clone(),
                            };
                            let _ = link.confirm.send(Pending {
                                ack,
                                subject: subject.clone(),
                                headers,
                                payload: f,
                                then,
                            });
                        }
                        Err(e) => return Stop::Broken(format!("cannot publish a task: {e}")),
                    }
                }
                Ok(Role::Credit(c)) => {
                    credit.fetch_add(c.into(), Ordering::Relaxed);
                    credited = true;
                }
                Ok(_) => pings.extend_from_slice(&f),
                Err(e) => return Stop::Broken(format!("the pool wrote {e}")),
            }
        }
        if credited || !pings.is_empty() {
            let _ = client
                .publish_with_headers(
                    control.clone(),
                    control_headers(inc),
                    control_payload(credit, &pings),
                )
                .await;
        }
    }
}

fn control_headers(inc: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(names::INCARNATION, inc.to_string().as_str());
    headers
}

/// A control message: the credit total so far, then frames for the worker.
fn control_payload(credit: &AtomicU64, frames: &[u8]) -> Bytes {
    let mut payload = Vec::with_capacity(8 + frames.len());
    payload.extend_from_slice(&credit.load(Ordering::Relaxed).to_le_bytes());
    payload.extend_from_slice(frames);
    payload.into()
}

/// Worker → pool, in the worker's order, each message once, each frame
/// to its own task.
async fn up(link: &Link<'_>, hello: &[u8], writer: &mut WriteHalf) -> Stop {
    let n = link.settings.index;
    let inc = link.settings.incarnation;
    if writer.write_all(hello).await.is_err() {
        return Stop::PoolClosed;
    }
    let consumer = match link.broker.output_consumer(n, inc).await {
        Ok(c) => c,
        Err(e) => return Stop::Broken(e),
    };
    let mut intake = Intake::new(
        inc,
        n,
        link.broker.names.pool(),
        link.drops,
        link.inflight,
        link.next,
    );
    loop {
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(512)
            .heartbeat(PULL_HEARTBEAT)
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                if let Some(why) = deleted(&e.to_string()) {
                    return Stop::Broken(why);
                }
                tracing::warn!(worker = n, error = %e, "cannot pull outputs; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(m) => m,
                // Missed heartbeats while the broker restarts: the stream
                // recovers by itself.
                Err(e) => {
                    if let Some(why) = deleted(&e.to_string()) {
                        return Stop::Broken(why);
                    }
                    tracing::debug!(worker = n, error = %e, "output stream hiccup");
                    continue;
                }
            };
            let taken = intake.take(message.headers.as_ref(), message.payload.clone());
            // The pool gets what is due before the broker its ack.
            if let Taken::Frames(frames, exited) = taken {
                if writer.write_all(&frames).await.is_err() {
                    return Stop::PoolClosed;
                }
                if let Some(code) = exited {
                    let _ = message.ack().await;
                    return Stop::Exited(code);
                }
            }
            let _ = message.ack().await;
        }
    }
}

/// Why the link cannot go on, when a pull error says the worker's output
/// consumer or the stream beneath it was deleted: the messages in them are
/// gone, so the worker's tasks are reported lost (or retried), and the
/// stream is created again when a worker next joins.
fn deleted(error: &str) -> Option<String> {
    let e = error.to_ascii_lowercase();
    (e.contains("consumer deleted") || e.contains("not found")).then(|| {
        format!(
            "the pool's output stream or this worker's consumer was deleted from the broker \
             ({error}): the messages in it are lost"
        )
    })
}

/// Heartbeats, credit refreshes, and the local process.
async fn watch(link: &Link<'_>, child: Option<&Arc<Mutex<ChildCell>>>) -> Stop {
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
    let mut dropped = [0u64; 4];
    let mut gap = Gap::default();
    let (mut taken, mut reports) = (0, 0u64);
    let mut check = Check::new(settings.heartbeat * 3);
    loop {
        tokio::select! {
            beat = beats.next() => match beat {
                Some(m) if header_u64(m.headers.as_ref(), names::INCARNATION) == Some(inc) => {
                    silence.heard();
                    let h = m.headers.as_ref();
                    if let Some(d) = h.and_then(|h| h.get(names::DROPPED)) {
                        link.drops.absorb(d.as_str(), &mut dropped, broker.names.pool(), n);
                    }
                    gap.stored = gap.stored.max(header_u64(h, names::STORED).unwrap_or(0));
                    taken = header_u64(h, names::TAKEN).unwrap_or(0).max(taken);
                    reports += 1;
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
                    gap.since = Instant::now();
                    check.reset();
                    continue;
                }
                if let Some(lost) = gap.check(link.next.load(Ordering::Relaxed)) {
                    return Stop::Broken(format!(
                        "the broker stored output message {lost} of worker {n} but never \
                         delivered it (the stream was purged, or the broker lost it)"
                    ));
                }
                if let Some((k, seq)) = check.due(link.sent.taken(taken)) {
                    let there = broker.task_message_is(seq, inc, k).await;
                    if there.is_ok_and(|there| check.removed(k, there, reports)) {
                        publish_again(link, k).await;
                        check.reset();
                    }
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
/// undelivered, while both sides are connected, before it counts as lost.
/// Long enough for the output pull to recover from a broker restart (its
/// idle heartbeat, `PULL_HEARTBEAT`, notices a dead pull), and shorter than
/// the core's default heartbeat timeout (10 s), which would otherwise
/// report the worker unresponsive, its pongs being in the lost messages.
/// A message the broker handed to a pull that died with it is handed out
/// again once the output consumer's acknowledgement wait
/// (`OUTPUT_ACK_WAIT`, well below this) has passed.
const GAP_TIMEOUT: Duration = Duration::from_secs(8);

/// The idle heartbeat of the output pull: a pull the broker forgot in a
/// restart is noticed after two of them are missed.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);

/// Watches for an output message the broker confirmed to the worker but
/// never delivered: the tasks it completed would otherwise wait forever.
#[derive(Debug)]
struct Gap {
    /// The last output message the worker says is stored.
    stored: u64,
    /// The next message due, and since when.
    due: u64,
    since: Instant,
}

impl Default for Gap {
    fn default() -> Self {
        Gap {
            stored: 0,
            due: 0,
            since: Instant::now(),
        }
    }
}

impl Gap {
    /// The message lost, if `next` (due) is stored and has been due too long.
    fn check(&mut self, next: u64) -> Option<u64> {
        if next != self.due || self.stored < next {
            self.due = next;
            self.since = Instant::now();
            return None;
        }
        (self.since.elapsed() > GAP_TIMEOUT).then_some(next)
    }
}
