//! The worker's end: its task messages become frames for the worker runtime,
//! and the frames the runtime writes become output messages for the parent.
//!
//! At least once (the default), a task message is acknowledged only once
//! the output message that completes it is stored by the broker, so a
//! worker that dies before leaves it to be re-sent. At most once, it is
//! acknowledged on receipt.
//!
//! Task messages are taken in by [`tasks`](crate::relay::tasks), each
//! once, by its identity. Every output message names the task of each slot
//! it speaks for, so the parent applies it to that task only.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, consumer};
use async_nats::{HeaderMap, HeaderValue};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use looppool::transport::frame::{self, Role};
use looppool::transport::{ReadHalf, WriteHalf};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::counters::DropCounts;
use crate::names::{self, Names};
use crate::relay::ids;
use crate::relay::publish::{self, Pending};
use crate::relay::tasks::{intake, leave, Shared, Tracking};
use crate::settings::Settings;

/// The worker's link to its pool through the broker, after a successful join.
pub(crate) struct WorkerRelay {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) names: Names,
    pub(crate) settings: Settings,
}

/// An output message's sequence number and the acknowledgements of the
/// task messages it completes.
type Completed = (u64, Vec<Acker>);

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
        let shared = Rc::new(Shared {
            settings: settings.clone(),
            pool: names.pool().to_owned(),
            tracking: RefCell::new(Tracking::default()),
            drops: DropCounts::default(),
            stored: Cell::new(0),
        });
        let intake = tokio::task::spawn_local(intake(
            client.clone(),
            shared.clone(),
            tasks,
            control,
            owner,
            writer,
        ));
        let heartbeat = tokio::task::spawn_local(heartbeat(
            client.clone(),
            names.heartbeat_subject(n),
            shared.clone(),
        ));
        let (confirm_tx, confirm_rx) = mpsc::unbounded_channel();
        let on_stored = shared.clone();
        let confirming = publish::confirm(
            js.clone(),
            confirm_rx,
            Default::default(),
            move |((seq, acks), _): (Completed, u64)| {
                let shared = on_stored.clone();
                async move {
                    // The completing output is stored: the tasks are done.
                    shared.stored.set(shared.stored.get().max(seq));
                    for acker in acks {
                        let _ = acker.ack().await;
                    }
                }
            },
        );
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
        let result = relay_out(out, reader, serving, &shared).await;
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
    confirm: mpsc::UnboundedSender<Pending<Completed>>,
}

impl Outbox {
    /// Publishes `payload`, tagged with the task of each slot its frames
    /// speak for; `acks` are the task messages it completes.
    async fn publish(
        &mut self,
        payload: Bytes,
        exit: Option<i32>,
        acks: Vec<Acker>,
        tags: &HashMap<u32, u64>,
    ) -> Result<(), String> {
        self.seq += 1;
        let mut headers = HeaderMap::new();
        headers.insert(names::INCARNATION, self.inc.to_string().as_str());
        headers.insert(names::SEQUENCE, self.seq.to_string().as_str());
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            HeaderValue::from(format!("{:x}.o{}", self.inc, self.seq).as_str()),
        );
        if !tags.is_empty() {
            headers.insert(names::TAGS, ids::encode_tags(tags).as_str());
        }
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
            then: (self.seq, acks),
        });
        Ok(())
    }
}

/// One output message being filled.
#[derive(Default)]
struct Batch {
    frames: BytesMut,
    acks: Vec<Acker>,
    tags: HashMap<u32, u64>,
}

impl Batch {
    /// Bytes it takes in the broker's message, tags included.
    fn size(&self) -> usize {
        self.frames.len() + self.tags.len() * ids::TAG_BYTES
    }

    async fn publish(&mut self, out: &mut Outbox) -> Result<(), String> {
        let frames = self.frames.split().freeze();
        let acks = std::mem::take(&mut self.acks);
        let result = out.publish(frames, None, acks, &self.tags).await;
        self.tags.clear();
        result
    }
}

/// Runtime → parent: whole frames, batched into messages no larger than the
/// broker allows, each tagged with its tasks; the task messages they
/// complete travel with them.
async fn relay_out(
    mut out: Outbox,
    mut reader: ReadHalf,
    serving: tokio::task::JoinHandle<i32>,
    shared: &Shared,
) -> Result<i32, String> {
    // Room for the other headers within the broker's limit.
    let limit = shared.settings.max_payload.saturating_sub(512).max(1024);
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
        let mut batch = Batch::default();
        for f in crate::relay::take_frames(&mut buf) {
            // Which task the frame speaks for, read before the batch may be
            // sent: a completion's acknowledgement goes with its frame.
            let (tag, ack) = match frame::role(&f) {
                Ok(Role::Completes(slot)) => match shared.tracking.borrow_mut().complete(slot) {
                    Some((k, ack)) => (Some((slot, k)), ack),
                    None => (None, None),
                },
                Ok(Role::Emits(slot)) => {
                    let t = shared.tracking.borrow();
                    (t.running.get(&slot).map(|(k, _)| (slot, *k)), None)
                }
                _ => (None, None),
            };
            let extra = tag.map_or(0, |_| ids::TAG_BYTES);
            if !batch.frames.is_empty() && batch.size() + f.len() + extra > limit {
                batch.publish(&mut out).await?;
            }
            if let Some((slot, k)) = tag {
                batch.tags.insert(slot, k);
            }
            batch.acks.extend(ack);
            batch.frames.extend_from_slice(&f);
        }
        if !batch.frames.is_empty() {
            batch.publish(&mut out).await?;
        }
    }
    let code = code.unwrap_or(101);
    out.publish(Bytes::new(), Some(code), Vec::new(), &HashMap::new())
        .await?;
    Ok(code)
}

/// Publishes heartbeats for as long as the worker lives, with what it
/// dropped and the last output message the broker stored.
async fn heartbeat(client: async_nats::Client, subject: String, shared: Rc<Shared>) {
    let mut tick = tokio::time::interval(shared.settings.heartbeat);
    loop {
        tick.tick().await;
        let mut headers = HeaderMap::new();
        headers.insert(
            names::INCARNATION,
            shared.settings.incarnation.to_string().as_str(),
        );
        headers.insert(names::DROPPED, shared.drops.encode().as_str());
        headers.insert(names::STORED, shared.stored.get().to_string().as_str());
        let taken = shared.tracking.borrow().seen.floor();
        headers.insert(names::TAKEN, taken.to_string().as_str());
        let _ = client
            .publish_with_headers(subject.clone(), headers, Bytes::new())
            .await;
    }
}
