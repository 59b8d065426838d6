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

use std::collections::BTreeMap;
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
use crate::names::{self, header_u64};
use crate::relay::publish::{self, Pending};
use crate::settings::Settings;
use crate::sync::lock;

/// What the relay knows of how its worker ended.
#[derive(Debug, Default)]
pub(crate) struct Ending {
    /// Set once the relay stopped: the worker is gone for the pool.
    pub(crate) ended: bool,
    /// The exit code the worker announced, if it did.
    pub(crate) status: Option<ExitStatus>,
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
        } = self;
        let n = settings.index;
        let inc = settings.incarnation;
        let (reader, mut writer) = conn.into_split();
        let credit = Arc::new(AtomicU64::new(0));
        let (confirm_tx, confirm_rx) = mpsc::unbounded_channel();
        let confirmer = tokio::spawn(publish::confirm(
            broker.js.clone(),
            confirm_rx,
            |()| async {},
        ));
        let stop = {
            let down = down(&broker, &client, &settings, reader, &credit, confirm_tx);
            let up = up(&broker, &settings, &hello, &mut writer);
            let watch = watch(&client, &broker, &settings, &credit, child.as_ref());
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
            if let Stop::Exited(code) = stop {
                e.status = Some(ExitStatus::Code(code));
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
async fn down(
    broker: &Broker,
    client: &async_nats::Client,
    settings: &Settings,
    mut reader: ReadHalf,
    credit: &AtomicU64,
    confirm: mpsc::UnboundedSender<Pending<()>>,
) -> Stop {
    let n = settings.index;
    let inc = settings.incarnation;
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
                Ok(Role::Init | Role::Task(_) | Role::Stop | Role::Cancel(_)) => {
                    seq += 1;
                    let mut headers = HeaderMap::new();
                    headers.insert(names::INCARNATION, inc.to_string().as_str());
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
                            let _ = confirm.send(Pending {
                                ack,
                                subject: subject.clone(),
                                headers,
                                payload: f,
                                then: (),
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

/// Worker → pool, in the worker's order, each message once.
async fn up(broker: &Broker, settings: &Settings, hello: &[u8], writer: &mut WriteHalf) -> Stop {
    let n = settings.index;
    let inc = settings.incarnation;
    if writer.write_all(hello).await.is_err() {
        return Stop::PoolClosed;
    }
    let consumer = match broker.output_consumer(n, inc).await {
        Ok(c) => c,
        Err(e) => return Stop::Broken(e),
    };
    let mut next = 1u64;
    let mut early: BTreeMap<u64, (Bytes, Option<i32>)> = BTreeMap::new();
    loop {
        let mut messages = match consumer
            .stream()
            .max_messages_per_batch(512)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
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
                    tracing::debug!(worker = n, error = %e, "output stream hiccup");
                    continue;
                }
            };
            let headers = message.headers.as_ref();
            let theirs = header_u64(headers, names::INCARNATION);
            let seq = header_u64(headers, names::SEQUENCE);
            let exit = header_u64(headers, names::EXIT).map(|c| c as i32);
            let payload = message.payload.clone();
            let (Some(theirs), Some(seq)) = (theirs, seq) else {
                let _ = message.ack().await;
                return Stop::Broken("an output message without incarnation or sequence".into());
            };
            if theirs == inc && seq >= next {
                early.insert(seq, (payload, exit));
            }
            // Otherwise another life's leftover, or a redelivery already
            // handed on. The pool gets what is due before the broker its ack.
            let mut exited = None;
            while let Some((payload, exit)) = early.remove(&next) {
                next += 1;
                if writer.write_all(&payload).await.is_err() {
                    return Stop::PoolClosed;
                }
                if let Some(code) = exit {
                    exited = Some(code);
                    break;
                }
            }
            let _ = message.ack().await;
            if let Some(code) = exited {
                return Stop::Exited(code);
            }
        }
    }
}

/// Heartbeats, credit refreshes, and the local process.
async fn watch(
    client: &async_nats::Client,
    broker: &Broker,
    settings: &Settings,
    credit: &AtomicU64,
    child: Option<&Arc<Mutex<ChildCell>>>,
) -> Stop {
    let n = settings.index;
    let inc = settings.incarnation;
    let mut beats = match client.subscribe(broker.names.heartbeat_subject(n)).await {
        Ok(s) => s,
        Err(e) => return Stop::Broken(format!("cannot watch heartbeats: {e}")),
    };
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(settings.heartbeat.min(Duration::from_millis(50)));
    let mut last_refresh = Instant::now();
    loop {
        tokio::select! {
            beat = beats.next() => match beat {
                Some(m) if header_u64(m.headers.as_ref(), names::INCARNATION) == Some(inc) => {
                    last = Instant::now();
                }
                Some(_) => {}
                None => return Stop::Broken("heartbeat subscription closed".into()),
            },
            _ = tick.tick() => {
                if client.connection_state() != async_nats::connection::State::Connected {
                    // Silence while we cannot hear is not the worker's fault.
                    last = Instant::now();
                    continue;
                }
                if last.elapsed() > settings.silence {
                    return Stop::Silent;
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
                            control_payload(credit, &[]),
                        )
                        .await;
                }
            }
        }
    }
}
