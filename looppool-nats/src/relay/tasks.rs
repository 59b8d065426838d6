//! The worker's intake: task messages from its consumer become frames for
//! the worker runtime, each task once, and control messages become credits
//! and pings; the parent's heartbeat is watched.
//!
//! A task message is recognised by its identity (incarnation and number,
//! see [`ids`](crate::relay::ids)), never by where the broker stored it: a
//! broker that restarts may deliver a message again, under a new stream
//! sequence or its old one, and may resurrect messages of earlier
//! incarnations; a consumer the parent replaced delivers again every
//! message still in the subject. Each number runs once; a copy of one still
//! running asks for more time, a copy of one done is acknowledged again,
//! and a message of another incarnation, for a busy slot, or not of the
//! pool's making is dropped and counted.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, consumer, AckKind};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use looppool::transport::frame::{self, Role};
use looppool::transport::WriteHalf;
use tokio::io::AsyncWriteExt;

use crate::counters::{Drop, DropCounts};
use crate::names::{self, header_u64};
use crate::relay::ids::Seen;
use crate::relay::Silence;
use crate::settings::Settings;

/// A running task's message number and, at least once, its pending
/// acknowledgement.
pub(crate) type Held = (u64, Option<Acker>);

/// Which task messages this incarnation has seen.
#[derive(Default)]
pub(crate) struct Tracking {
    /// Running tasks by slot.
    pub(crate) running: HashMap<u32, Held>,
    /// Message numbers of running tasks.
    pub(crate) running_ids: HashSet<u64>,
    /// Every message number received.
    pub(crate) seen: Seen,
    /// Whether the init arrived (a second one is dropped).
    pub(crate) init: bool,
}

impl Tracking {
    pub(crate) fn complete(&mut self, slot: u32) -> Option<Held> {
        let (k, acker) = self.running.remove(&slot)?;
        self.running_ids.remove(&k);
        Some((k, acker))
    }
}

/// What the worker's relay tasks share.
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) pool: String,
    pub(crate) tracking: RefCell<Tracking>,
    pub(crate) drops: DropCounts,
    /// The sequence number of the last output message the broker stored.
    pub(crate) stored: Cell<u64>,
}

impl Shared {
    fn dropped(&self, why: Drop) {
        self.drops.add(why, 1, &self.pool, self.settings.index);
    }
}

/// Broker → runtime: task messages and control messages; also watches the
/// parent's heartbeat.
pub(crate) async fn intake(
    client: async_nats::Client,
    shared: Rc<Shared>,
    tasks: consumer::PullConsumer,
    mut control: async_nats::Subscriber,
    mut owner_beats: async_nats::Subscriber,
    mut writer: WriteHalf,
) {
    let settings = &shared.settings;
    let inc = settings.incarnation;
    let mut credit_seen = 0u64;
    let mut owner = Silence::new(settings.silence);
    let mut tick = tokio::time::interval(settings.heartbeat);
    let mut messages = None;
    loop {
        if messages.is_none() {
            match tasks
                .stream()
                .max_messages_per_batch(settings.max_running.max(1))
                .heartbeat(crate::relay::PULL_HEARTBEAT)
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(m) => messages = Some(m),
                Err(e) => {
                    if is_gone(&e.to_string()) {
                        leave("this worker's task consumer is gone from the broker (the pool replaced the worker, or the stream was deleted)");
                    }
                    tokio::time::sleep(PULL_AGAIN).await;
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
                    let mut frames = Vec::new();
                    if let Some(bytes) = accept(message, &shared).await {
                        // Credits count only from a task message of ours.
                        frames = credit_frame(credit, &mut credit_seen);
                        frames.extend_from_slice(&bytes);
                    }
                    if !frames.is_empty() && writer.write_all(&frames).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "task stream hiccup");
                    if crate::relay::pull_is_dead(&e, &client) {
                        // Pull again, from the consumer the parent renewed
                        // (it may not be there yet: pause).
                        messages = None;
                        tokio::time::sleep(PULL_AGAIN).await;
                    }
                }
                None => {
                    messages = None;
                    tokio::time::sleep(PULL_AGAIN).await;
                }
            },
            c = control.next() => {
                let Some(c) = c else { return };
                if header_u64(c.headers.as_ref(), names::INCARNATION) != Some(inc) {
                    continue;
                }
                if c.headers.as_ref().and_then(|h| h.get(names::KILL)).is_some() {
                    leave_now();
                }
                let Some(frames) = control_frames(&c.payload, &mut credit_seen) else {
                    shared.dropped(Drop::Malformed);
                    continue;
                };
                if !frames.is_empty() && writer.write_all(&frames).await.is_err() {
                    return;
                }
            }
            o = owner_beats.next() => {
                if o.is_none() {
                    return;
                }
                owner.heard();
            }
            _ = tick.tick() => {
                let connected = client.connection_state() == async_nats::connection::State::Connected;
                if owner.too_long(connected) {
                    leave("the parent stopped sending heartbeats");
                }
            }
        }
    }
}

/// The pause before pulling again after a pull ended or went dead.
const PULL_AGAIN: Duration = Duration::from_millis(200);

/// A control message's frames for the runtime: the credit its total adds,
/// then its pings. `None` when it is not the parent's making: too short,
/// or anything but whole ping frames after the total.
fn control_frames(payload: &[u8], credit_seen: &mut u64) -> Option<Vec<u8>> {
    let total = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let mut rest = &payload[8..];
    while !rest.is_empty() {
        let len = frame::frame_len(rest)?;
        // Only pings ride on control messages; anything else would reach
        // the runtime as a breach of its protocol.
        if frame::role(&rest[..len]) != Ok(Role::Other) {
            return None;
        }
        rest = &rest[len..];
    }
    let mut frames = credit_frame(Some(total), credit_seen);
    frames.extend_from_slice(&payload[8..]);
    Some(frames)
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

/// What one task message is to this incarnation.
enum Verdict {
    /// New: hand its frame to the runtime.
    Run(Role),
    /// A copy of the task still running in this slot.
    Running(u32),
    /// A copy of a message already taken in.
    Duplicate,
    /// Not for this incarnation, or for a slot already busy.
    Stale,
    /// Not of the pool's making.
    Malformed,
}

/// Judges a task message by its identity and frame, recording it if new.
fn judge(headers: Option<&HeaderMap>, payload: &[u8], shared: &Shared) -> Verdict {
    let inc = header_u64(headers, names::INCARNATION);
    let (Some(inc), Some(k)) = (inc, header_u64(headers, names::TASK)) else {
        return Verdict::Malformed;
    };
    if inc != shared.settings.incarnation {
        // An earlier life's message, resurrected by a broker restart.
        return Verdict::Stale;
    }
    if frame::frame_len(payload) != Some(payload.len()) {
        return Verdict::Malformed;
    }
    let role = match frame::role(payload) {
        Ok(r @ (Role::Task(_) | Role::Init | Role::Stop | Role::Cancel(_))) => r,
        _ => return Verdict::Malformed,
    };
    let mut t = shared.tracking.borrow_mut();
    if t.running_ids.contains(&k) {
        return match role {
            Role::Task(slot) => Verdict::Running(slot),
            _ => Verdict::Duplicate,
        };
    }
    let busy = match role {
        Role::Task(slot) => t.running.contains_key(&slot),
        Role::Init => t.init,
        _ => false,
    };
    if !t.seen.insert(k) {
        return Verdict::Duplicate;
    }
    if busy {
        return Verdict::Stale;
    }
    match role {
        Role::Task(slot) => {
            t.running.insert(slot, (k, None));
            t.running_ids.insert(k);
        }
        Role::Init => t.init = true,
        _ => {}
    }
    Verdict::Run(role)
}

/// Takes one task message in: the frame to hand to the runtime, or `None`
/// for a message dropped (and counted) or a redelivery already handled.
async fn accept(message: jetstream::Message, shared: &Shared) -> Option<Bytes> {
    let (message, acker) = message.split();
    let verdict = judge(message.headers.as_ref(), &message.payload, shared);
    match verdict {
        Verdict::Run(Role::Task(slot)) => {
            if shared.settings.at_most_once {
                let _ = acker.ack().await;
            } else if let Some(held) = shared.tracking.borrow_mut().running.get_mut(&slot) {
                held.1 = Some(acker);
            }
            Some(message.payload)
        }
        Verdict::Run(_) => {
            let _ = acker.ack().await;
            Some(message.payload)
        }
        Verdict::Running(slot) => {
            // Still running past the ack wait, or redelivered by a broker
            // restart or a renewed consumer: ask for more time rather than
            // run it twice.
            shared.dropped(Drop::Duplicate);
            if !shared.settings.at_most_once {
                let _ = acker.ack_with(AckKind::Progress).await;
                // The latest delivery's acknowledgement is the one to use
                // once the task is done: the consumer that made the first
                // may since have been replaced.
                if let Some(held) = shared.tracking.borrow_mut().running.get_mut(&slot) {
                    held.1 = Some(acker);
                }
            }
            None
        }
        Verdict::Duplicate => {
            shared.dropped(Drop::Duplicate);
            let _ = acker.ack().await;
            None
        }
        Verdict::Stale | Verdict::Malformed => {
            let why = if matches!(verdict, Verdict::Stale) {
                Drop::Stale
            } else {
                Drop::Malformed
            };
            shared.dropped(why);
            let _ = acker.ack_with(AckKind::Term).await;
            None
        }
    }
}

pub(crate) fn is_gone(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("consumer not found") || e.contains("consumer deleted") || e.contains("not found")
}

/// Exits because the pool no longer wants this worker.
pub(crate) fn leave(why: &str) -> ! {
    eprintln!("looppool-nats worker: {why}; exiting");
    std::process::exit(1)
}

/// Exits at once: the parent killed this worker.
fn leave_now() -> ! {
    std::process::exit(137)
}
