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
//! - The broker's deliveries are watched (see `watch`): a consumer that
//!   stops delivering is replaced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::{HeaderMap, HeaderValue};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use looppool::transport::frame::{self, Role};
use looppool::transport::{Connection, ReadHalf, WriteHalf};
use looppool::ExitStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

use crate::broker::Broker;
use crate::counters::DropCounts;
use crate::names;
use crate::relay::link::{control_headers, control_payload, Link, Stop};
pub(crate) use crate::relay::link::{ChildCell, Ending};
use crate::relay::outputs::{Inflight, Intake, Taken};
use crate::relay::publish::{self, Pending, Refused};
use crate::relay::sent::{Sent, Untaken};
use crate::relay::watch::watch;
use crate::settings::Settings;
use crate::sync::lock;

/// Everything one relay needs.
pub(crate) struct ParentRelay {
    pub(crate) broker: Broker,
    pub(crate) client: async_nats::Client,
    pub(crate) settings: Settings,
    /// The broker's wait for a task's acknowledgement.
    pub(crate) ack_wait: Duration,
    /// The pool's end of the link is the other side of this connection.
    pub(crate) conn: Connection,
    /// The worker's hello, handed to the pool first.
    pub(crate) hello: Bytes,
    pub(crate) ending: Arc<Mutex<Ending>>,
    pub(crate) child: Option<Arc<Mutex<ChildCell>>>,
    pub(crate) drops: DropCounts,
}

impl ParentRelay {
    pub(crate) async fn run(self) {
        let ParentRelay {
            broker,
            client,
            settings,
            ack_wait,
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
        let refused = Arc::new(Refused::default());
        let renew_outputs = Notify::new();
        let (confirm_tx, confirm_rx) = mpsc::unbounded_channel();
        let link = Link {
            broker: &broker,
            client: &client,
            settings: &settings,
            ack_wait,
            credit: &credit,
            drops: &drops,
            inflight: &inflight,
            next: &next,
            sent: &sent,
            refused: &refused,
            confirm: &confirm_tx,
            renew_outputs: &renew_outputs,
        };
        let stored = sent.clone();
        let mut confirmer = tokio::spawn(publish::confirm(
            broker.js.clone(),
            confirm_rx,
            refused.clone(),
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
                // Task messages the broker will not store would leave
                // their tasks without a fate.
                c = &mut confirmer => Stop::Broken(match c {
                    Ok(Err(why)) => why,
                    _ => "the confirmation of task messages stopped".into(),
                }),
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
        record(&ending, &stop, &settings);
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

/// Records in `ending` how the link ended.
fn record(ending: &Mutex<Ending>, stop: &Stop, settings: &Settings) {
    let mut e = lock(ending);
    match stop {
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

/// Worker → pool, in the worker's order, each message once, each frame
/// to its own task.
async fn up(link: &Link<'_>, hello: &[u8], writer: &mut WriteHalf) -> Stop {
    let n = link.settings.index;
    let inc = link.settings.incarnation;
    if writer.write_all(hello).await.is_err() {
        return Stop::PoolClosed;
    }
    let mut consumer = match link.broker.output_consumer(n, inc).await {
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
        let pulled = pull(link, &consumer, &mut intake, writer).await;
        match pulled {
            Pulled::Stop(stop) => return stop,
            Pulled::Again => tokio::time::sleep(Duration::from_millis(200)).await,
            Pulled::Renew => match link.broker.renew_output_consumer(n, inc).await {
                Ok(c) => consumer = c,
                Err(e) => {
                    tracing::warn!(worker = n, error = %e, "cannot replace the consumer of a worker's outputs; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
        }
    }
}

/// How one pull from the output consumer ended.
enum Pulled {
    /// The link ends.
    Stop(Stop),
    /// The pull is dead: pull again.
    Again,
    /// The watch asked for a new consumer.
    Renew,
}

/// Pulls worker outputs from `consumer` and hands them to the pool until
/// the pull dies, the link ends, or the watch asks for a new consumer.
async fn pull(
    link: &Link<'_>,
    consumer: &PullConsumer,
    intake: &mut Intake<'_>,
    writer: &mut WriteHalf,
) -> Pulled {
    let n = link.settings.index;
    let mut messages = match consumer
        .stream()
        .max_messages_per_batch(512)
        .heartbeat(crate::relay::PULL_HEARTBEAT)
        .expires(Duration::from_secs(30))
        .messages()
        .await
    {
        Ok(m) => m,
        Err(e) => {
            if let Some(why) = deleted(&e.to_string()) {
                return Pulled::Stop(Stop::Broken(why));
            }
            tracing::warn!(worker = n, error = %e, "cannot pull outputs; retrying");
            return Pulled::Again;
        }
    };
    loop {
        let message = tokio::select! {
            m = messages.next() => m,
            () = link.renew_outputs.notified() => return Pulled::Renew,
        };
        let message = match message {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                if let Some(why) = deleted(&e.to_string()) {
                    return Pulled::Stop(Stop::Broken(why));
                }
                tracing::debug!(worker = n, error = %e, "output stream hiccup");
                if crate::relay::pull_is_dead(&e, link.client) {
                    return Pulled::Again;
                }
                continue;
            }
            None => return Pulled::Again,
        };
        let taken = intake.take(message.headers.as_ref(), message.payload.clone());
        // The pool gets what is due before the broker its ack.
        if let Taken::Frames(frames, exited) = taken {
            if writer.write_all(&frames).await.is_err() {
                return Pulled::Stop(Stop::PoolClosed);
            }
            if let Some(code) = exited {
                let _ = message.ack().await;
                return Pulled::Stop(Stop::Exited(code));
            }
        }
        let _ = message.ack().await;
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
