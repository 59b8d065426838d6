//! The worker's end: its task messages become frames for the worker runtime,
//! and the frames the runtime writes become output messages for the parent.
//!
//! At least once (the default), a task message is acknowledged only once
//! the output message that completes the task is stored by the broker, so a
//! worker that dies before leaves it to be re-sent. At most once, it is
//! acknowledged on receipt. A task the broker delivers again to the same
//! incarnation (an acknowledgement lost in a broker outage, or a task
//! running longer than the ack wait) is not run twice.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, consumer, AckKind};
use async_nats::{HeaderMap, HeaderValue};
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use looppool::transport::frame::{self, Role};
use looppool::transport::{ReadHalf, WriteHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::names::{self, header_u64, Names};
use crate::relay::publish::{self, Pending};
use crate::settings::Settings;

/// Completed task messages remembered, so that a late redelivery of one is
/// acknowledged again rather than run again.
const REMEMBERED: usize = 65_536;

/// A task's stream sequence and, at least once, its pending acknowledgement.
type Held = (u64, Option<Acker>);

/// Which task messages this incarnation has seen.
#[derive(Default)]
struct Tracking {
    /// Running tasks by slot: their stream sequence and acknowledgement.
    running: HashMap<u32, Held>,
    /// Stream sequences of running tasks.
    running_seqs: HashSet<u64>,
    /// Stream sequences of recently completed tasks, oldest first.
    done: VecDeque<u64>,
    done_set: HashSet<u64>,
}

impl Tracking {
    fn complete(&mut self, slot: u32) -> Option<Held> {
        let (seq, acker) = self.running.remove(&slot)?;
        self.running_seqs.remove(&seq);
        Some((seq, acker))
    }

    fn remember_done(&mut self, seq: u64) {
        if self.done_set.insert(seq) {
            self.done.push_back(seq);
            if self.done.len() > REMEMBERED {
                if let Some(old) = self.done.pop_front() {
                    self.done_set.remove(&old);
                }
            }
        }
    }
}

/// The worker's link to its pool through the broker, after a successful join.
pub(crate) struct WorkerRelay {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) names: Names,
    pub(crate) settings: Settings,
}

impl WorkerRelay {
    /// Relays until the worker runtime finishes, then announces its exit
    /// code; returns it.
    pub(crate) async fn run(
        self,
        reader: ReadHalf,
        writer: WriteHalf,
        serving: tokio::task::JoinHandle<i32>,
    ) -> Result<i32, String> {
        let WorkerRelay {
            client,
            js,
            names,
            settings,
        } = self;
        let n = settings.index;
        let inc = settings.incarnation;
        let control = client
            .subscribe(names.control_subject(n))
            .await
            .map_err(|e| format!("cannot subscribe to control messages: {e}"))?;
        let owner = client
            .subscribe(names.owner_subject())
            .await
            .map_err(|e| format!("cannot watch the parent's heartbeat: {e}"))?;
        let tasks: consumer::PullConsumer = js
            .get_consumer_from_stream(names.task_consumer(n, inc), names.task_stream())
            .await
            .map_err(|e| format!("cannot bind this worker's task consumer: {e}"))?;
        let tracking = Rc::new(RefCell::new(Tracking::default()));
        let intake = tokio::task::spawn_local(intake(
            client.clone(),
            settings.clone(),
            tasks,
            control,
            owner,
            writer,
            tracking.clone(),
        ));
        let heartbeat = tokio::task::spawn_local(heartbeat(
            client.clone(),
            names.heartbeat_subject(n),
            settings.clone(),
        ));
        let (confirm_tx, confirm_rx) = mpsc::unbounded_channel();
        let done = tracking.clone();
        let confirming = publish::confirm(js.clone(), confirm_rx, move |completed: Vec<Held>| {
            let done = done.clone();
            async move {
                // The completing output is stored: the tasks are done.
                for (seq, acker) in completed {
                    if let Some(acker) = acker {
                        let _ = acker.ack().await;
                    }
                    done.borrow_mut().remember_done(seq);
                }
            }
        });
        let confirmer = tokio::task::spawn_local(async move {
            if let Err(why) = confirming.await {
                // Outputs that cannot be stored would be lost silently:
                // leave, so that the pool sees this worker gone.
                leave(&why);
            }
        });
        let out = Outbox {
            js,
            subject: names.output_subject(n),
            inc,
            seq: 0,
            confirm: confirm_tx,
        };
        let result = relay_out(out, reader, serving, &settings, &tracking).await;
        // Every output is stored (or the link is gone): stop taking tasks.
        let _ = confirmer.await;
        intake.abort();
        heartbeat.abort();
        let _ = client.flush().await;
        result
    }
}

/// Publishes the worker's output messages, numbered.
struct Outbox {
    js: jetstream::Context,
    subject: String,
    inc: u64,
    seq: u64,
    confirm: mpsc::UnboundedSender<Pending<Vec<Held>>>,
}

impl Outbox {
    async fn publish(
        &mut self,
        payload: Bytes,
        exit: Option<i32>,
        completed: Vec<(u64, Option<Acker>)>,
    ) -> Result<(), String> {
        self.seq += 1;
        let mut headers = HeaderMap::new();
        headers.insert(names::INCARNATION, self.inc.to_string().as_str());
        headers.insert(names::SEQUENCE, self.seq.to_string().as_str());
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            HeaderValue::from(format!("{:x}.o{}", self.inc, self.seq).as_str()),
        );
        if let Some(code) = exit {
            headers.insert(names::EXIT, code.to_string().as_str());
        }
        let ack = self
            .js
            .publish_with_headers(self.subject.clone(), headers.clone(), payload.clone())
            .await
            .map_err(|e| format!("cannot publish outputs: {e}"))?;
        let _ = self.confirm.send(Pending {
            ack,
            subject: self.subject.clone(),
            headers,
            payload,
            then: completed,
        });
        Ok(())
    }
}

/// Runtime → parent: whole frames, batched into messages no larger than the
/// broker allows; the task messages they complete travel with them.
async fn relay_out(
    mut out: Outbox,
    mut reader: ReadHalf,
    serving: tokio::task::JoinHandle<i32>,
    settings: &Settings,
    tracking: &Rc<RefCell<Tracking>>,
) -> Result<i32, String> {
    // Room for the headers within the broker's limit.
    let limit = settings.max_payload.saturating_sub(512).max(1024);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut serving = serving;
    let mut code = None;
    while code.is_none() {
        tokio::select! {
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => code = Some((&mut serving).await.unwrap_or(101)),
                Ok(_) => {}
            },
            // The runtime's tasks may keep its end open after it finished:
            // take what it wrote, then stop.
            finished = &mut serving => {
                code = Some(finished.unwrap_or(101));
                while let Some(Ok(n)) = reader.read_buf(&mut buf).now_or_never() {
                    if n == 0 {
                        break;
                    }
                }
            }
        }
        let mut batch = BytesMut::new();
        let mut completed = Vec::new();
        for f in crate::relay::take_frames(&mut buf) {
            if !batch.is_empty() && batch.len() + f.len() > limit {
                out.publish(batch.split().freeze(), None, std::mem::take(&mut completed))
                    .await?;
            }
            if let Ok(Role::Completes(slot)) = frame::role(&f) {
                if let Some(done) = tracking.borrow_mut().complete(slot) {
                    completed.push(done);
                }
            }
            batch.extend_from_slice(&f);
        }
        if !batch.is_empty() {
            out.publish(batch.freeze(), None, completed).await?;
        }
    }
    let code = code.unwrap_or(101);
    out.publish(Bytes::new(), Some(code), Vec::new()).await?;
    Ok(code)
}

/// Broker → runtime: task messages and control messages; also watches the
/// parent's heartbeat.
#[allow(clippy::too_many_arguments)]
async fn intake(
    client: async_nats::Client,
    settings: Settings,
    tasks: consumer::PullConsumer,
    mut control: async_nats::Subscriber,
    mut owner: async_nats::Subscriber,
    mut writer: WriteHalf,
    tracking: Rc<RefCell<Tracking>>,
) {
    let inc = settings.incarnation;
    let mut credit_seen = 0u64;
    let mut owner_heard = Instant::now();
    let mut tick = tokio::time::interval(settings.heartbeat);
    let mut messages = None;
    loop {
        if messages.is_none() {
            match tasks
                .stream()
                .max_messages_per_batch(settings.max_running.max(1))
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(m) => messages = Some(m),
                Err(e) => {
                    if is_gone(&e.to_string()) {
                        leave("the pool replaced this worker (its task consumer is gone)");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let Some(stream) = messages.as_mut() else {
            continue;
        };
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(message)) => {
                    let credit = header_u64(message.headers.as_ref(), names::CREDIT);
                    let mut frames = credit_frame(credit, &mut credit_seen);
                    if let Some(bytes) = accept(message, &settings, &tracking).await {
                        frames.extend_from_slice(&bytes);
                    }
                    if !frames.is_empty() && writer.write_all(&frames).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "task stream hiccup");
                    if is_gone(&e.to_string()) {
                        messages = None;
                    }
                }
                None => messages = None,
            },
            c = control.next() => {
                let Some(c) = c else { return };
                if header_u64(c.headers.as_ref(), names::INCARNATION) != Some(inc) {
                    continue;
                }
                if c.headers.as_ref().and_then(|h| h.get(names::KILL)).is_some() {
                    leave_now();
                }
                let Some(total) = c.payload.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes) else {
                    continue;
                };
                let mut frames = credit_frame(Some(total), &mut credit_seen);
                frames.extend_from_slice(&c.payload[8..]);
                if !frames.is_empty() && writer.write_all(&frames).await.is_err() {
                    return;
                }
            }
            o = owner.next() => {
                if o.is_none() {
                    return;
                }
                owner_heard = Instant::now();
            }
            _ = tick.tick() => {
                if client.connection_state() != async_nats::connection::State::Connected {
                    owner_heard = Instant::now();
                } else if owner_heard.elapsed() > settings.silence {
                    leave("the parent stopped sending heartbeats");
                }
            }
        }
    }
}

/// A credit frame for what `total` adds to the credits already passed on.
fn credit_frame(total: Option<u64>, seen: &mut u64) -> Vec<u8> {
    let mut frames = Vec::new();
    if let Some(total) = total.filter(|t| t > seen) {
        let delta = u32::try_from(total - *seen).unwrap_or(u32::MAX);
        *seen += u64::from(delta);
        frame::put_credit(&mut frames, delta);
    }
    frames
}

/// Takes one task message in: the frame to hand to the runtime, or `None`
/// for a redelivery already handled.
async fn accept(
    message: jetstream::Message,
    settings: &Settings,
    tracking: &Rc<RefCell<Tracking>>,
) -> Option<Bytes> {
    let seq = message.info().ok()?.stream_sequence;
    let (running, done) = {
        let t = tracking.borrow();
        (t.running_seqs.contains(&seq), t.done_set.contains(&seq))
    };
    if running {
        // Still running past the ack wait: ask for more time.
        let _ = message.ack_with(AckKind::Progress).await;
        return None;
    }
    if done {
        let _ = message.ack().await;
        return None;
    }
    let (message, acker) = message.split();
    let payload = message.payload;
    match frame::role(&payload) {
        Ok(Role::Task(slot)) => {
            let acker = if settings.at_most_once {
                let _ = acker.ack().await;
                None
            } else {
                Some(acker)
            };
            let mut t = tracking.borrow_mut();
            t.running.insert(slot, (seq, acker));
            t.running_seqs.insert(seq);
        }
        Ok(Role::Init | Role::Stop | Role::Cancel(_)) => {
            let _ = acker.ack().await;
            tracking.borrow_mut().remember_done(seq);
        }
        _ => {
            tracing::error!("the task subject carried something other than a task; dropped");
            let _ = acker.ack_with(AckKind::Term).await;
            return None;
        }
    }
    Some(payload)
}

/// Publishes heartbeats for as long as the worker lives.
async fn heartbeat(client: async_nats::Client, subject: String, settings: Settings) {
    let mut tick = tokio::time::interval(settings.heartbeat);
    loop {
        tick.tick().await;
        let mut headers = HeaderMap::new();
        headers.insert(
            names::INCARNATION,
            settings.incarnation.to_string().as_str(),
        );
        let _ = client
            .publish_with_headers(subject.clone(), headers, Bytes::new())
            .await;
    }
}

fn is_gone(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("consumer not found") || e.contains("consumer deleted") || e.contains("not found")
}

/// Exits because the pool no longer wants this worker.
fn leave(why: &str) -> ! {
    eprintln!("looppool-nats worker: {why}; exiting");
    std::process::exit(1)
}

/// Exits at once: the parent killed this worker.
fn leave_now() -> ! {
    std::process::exit(137)
}
