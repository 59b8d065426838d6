//! Forwarding a worker's `tracing` events and panics to the parent.
//!
//! The worker installs a global subscriber (a `tracing-subscriber`
//! registry with [`ForwardLayer`]) that encodes each event as a `LOG`
//! frame. On the loop's thread the frame goes straight into the
//! connection's out buffer, in order with the outputs and completions around
//! it; on other threads, or while frames wait, it goes to a queue that a
//! task on the loop moves into the out buffer.
//!
//! Log frames never wait on the parent's credit, so they are bounded in
//! bytes instead: a frame is written to the out buffer only while it holds
//! less than [`LOG_BUFFER`] bytes, and the queue holds at most as much.
//! Beyond that events are dropped and counted; the count travels with the
//! next record (the parent warns with it) and in every resource report.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

use super::panic::payload_text;
use super::shared::Shared;
use crate::codec::CodecError;
use crate::protocol::report::{self as wire, LogRecord};
use crate::protocol::{self, kind};

/// Most bytes of log frames a worker keeps waiting, in its out buffer and
/// in its queue each.
pub(crate) const LOG_BUFFER: usize = 1 << 20;

/// Longest message or field text kept when a record exceeds the frame limit.
const CUT: usize = 4096;

/// The process's log forwarding, once installed.
static QUEUE: OnceLock<LogQueue> = OnceLock::new();

thread_local! {
    /// The worker's shared state, on the loop's thread only.
    static LOOP: RefCell<Option<Weak<Shared>>> = const { RefCell::new(None) };
}

/// Log frames from other threads (or waiting behind a full out buffer).
#[derive(Debug)]
struct LogQueue {
    max_frame: usize,
    frames: Mutex<Vec<u8>>,
    /// Bytes in `frames`; while non-zero, the loop's thread queues too, so
    /// that records keep their order.
    queued: AtomicUsize,
    /// Events dropped since the last record that was sent.
    dropped_since: AtomicU64,
    /// Events dropped in all.
    dropped_total: AtomicU64,
    /// Wakes the task that moves `frames` to the out buffer.
    wake: tokio::sync::Notify,
}

/// Events this process dropped so far.
pub(crate) fn dropped_total() -> u64 {
    QUEUE
        .get()
        .map_or(0, |q| q.dropped_total.load(Ordering::Relaxed))
}

/// Installs the forwarding subscriber for events up to `level` (nothing for
/// `OFF`), and starts the task that drains its queue.
pub(crate) fn install(shared: &Rc<Shared>, level: LevelFilter) {
    if level == LevelFilter::OFF {
        return;
    }
    let queue = LogQueue {
        max_frame: shared.out.max_frame(),
        frames: Mutex::new(Vec::new()),
        queued: AtomicUsize::new(0),
        dropped_since: AtomicU64::new(0),
        dropped_total: AtomicU64::new(0),
        wake: tokio::sync::Notify::new(),
    };
    if QUEUE.set(queue).is_err() {
        return;
    }
    LOOP.with(|l| *l.borrow_mut() = Some(Rc::downgrade(shared)));
    let subscriber = tracing_subscriber::registry().with(ForwardLayer { max: level });
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        eprintln!(
            "looppool worker {}: a global tracing subscriber is already set; \
             its events are not forwarded to the parent",
            shared.index
        );
    }
    tokio::task::spawn_local(drain(Rc::downgrade(shared)));
}

/// Sends a panic outside any task to the parent as an error event; false
/// when forwarding is off (the caller then prints it).
pub(crate) fn forward_panic(info: &std::panic::PanicHookInfo<'_>) -> bool {
    if QUEUE.get().is_none() {
        return false;
    }
    let message = payload_text(info.payload());
    let location = info.location();
    let thread = std::thread::current();
    let mut rec = LogRecord {
        level: wire::level_to_u8(tracing::Level::ERROR),
        target: "panic".into(),
        message: format!(
            "panicked{}: {message}",
            location.map_or(String::new(), |l| format!(" at {l}"))
        ),
        fields: format!("thread={}", thread.name().unwrap_or("unnamed")),
        spans: String::new(),
        file: location.map(|l| l.file().to_owned()),
        line: location.map(|l| l.line()),
        dropped: 0,
        slot: None,
    };
    // The panicking thread may hold the queue's lock: never wait for it here.
    send(&mut rec, false)
}

/// Sends `rec` to the parent, directly when on the loop's thread and
/// nothing waits, else through the queue; false when forwarding is off.
fn send(rec: &mut LogRecord, may_block: bool) -> bool {
    let Some(q) = QUEUE.get() else {
        return false;
    };
    if q.queued.load(Ordering::Acquire) == 0 {
        let shared = LOOP
            .try_with(|l| l.try_borrow().ok()?.as_ref()?.upgrade())
            .ok()
            .flatten();
        if let Some(shared) = shared {
            rec.dropped = q.dropped_since.swap(0, Ordering::Relaxed);
            // Only a record written in order with the task's own frames may
            // name its slot (see `LogRecord::slot`).
            rec.slot = shared.polled_slot();
            let mut encoded = true;
            let written = shared.out.try_push_frame(LOG_BUFFER, |buf| {
                encoded = encode(buf, rec, q.max_frame);
            });
            if written && encoded {
                return true;
            }
            q.dropped_since.fetch_add(rec.dropped, Ordering::Relaxed);
            rec.dropped = 0;
            rec.slot = None;
            if written {
                // Not even a cut record fits the frame limit.
                q.drop_one();
                return true;
            }
        }
    }
    q.enqueue(rec, may_block);
    true
}

impl LogQueue {
    fn drop_one(&self) {
        self.dropped_since.fetch_add(1, Ordering::Relaxed);
        self.dropped_total.fetch_add(1, Ordering::Relaxed);
    }

    fn enqueue(&self, rec: &mut LogRecord, may_block: bool) {
        let frames = if may_block {
            Some(crate::sync::lock(&self.frames))
        } else {
            self.frames.try_lock().ok()
        };
        let Some(mut frames) = frames else {
            self.drop_one();
            return;
        };
        let start = frames.len();
        rec.dropped = self.dropped_since.swap(0, Ordering::Relaxed);
        if !encode(&mut frames, rec, self.max_frame) || frames.len() > LOG_BUFFER {
            frames.truncate(start);
            self.dropped_since.fetch_add(rec.dropped, Ordering::Relaxed);
            self.drop_one();
            return;
        }
        self.queued.store(frames.len(), Ordering::Release);
        drop(frames);
        self.wake.notify_one();
    }
}

/// Appends `rec` as a `LOG` frame, cut to fit the frame limit if needed;
/// false when even the cut record does not fit.
fn encode(buf: &mut Vec<u8>, rec: &mut LogRecord, max_frame: usize) -> bool {
    match protocol::put_value(buf, kind::LOG, &*rec, max_frame) {
        Ok(()) => true,
        Err(CodecError::TooLarge { .. }) => {
            for text in [&mut rec.message, &mut rec.fields, &mut rec.spans] {
                if text.len() > CUT {
                    let mut end = CUT;
                    while !text.is_char_boundary(end) {
                        end -= 1;
                    }
                    text.truncate(end);
                    text.push('…');
                }
            }
            protocol::put_value(buf, kind::LOG, &*rec, max_frame).is_ok()
        }
        Err(_) => false,
    }
}

/// Moves queued frames into the out buffer as it has room, and sends the
/// dropped count when no record carried it.
async fn drain(shared: Weak<Shared>) {
    let Some(q) = QUEUE.get() else {
        return;
    };
    loop {
        q.wake.notified().await;
        loop {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let moved = {
                let mut frames = crate::sync::lock(&q.frames);
                let moved = frames.is_empty()
                    || shared
                        .out
                        .try_push_frame(LOG_BUFFER, |buf| buf.extend_from_slice(&frames));
                if moved {
                    frames.clear();
                    q.queued.store(0, Ordering::Release);
                }
                moved
            };
            if moved {
                let dropped = q.dropped_since.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    let rec = LogRecord {
                        level: 0,
                        target: String::new(),
                        message: String::new(),
                        fields: String::new(),
                        spans: String::new(),
                        file: None,
                        line: None,
                        dropped,
                        slot: None,
                    };
                    shared.out.try_push_frame(usize::MAX, |buf| {
                        let _ = protocol::put_value(buf, kind::LOG, &rec, usize::MAX);
                    });
                }
                break;
            }
            // The out buffer is full: the parent reads slowly. Look again soon.
            drop(shared);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The layer that turns events into log records.
struct ForwardLayer {
    max: LevelFilter,
}

/// A span's fields as text, kept in the registry's extensions.
struct SpanFields(String);

impl<S> Layer<S> for ForwardLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut text = String::new();
        attrs.record(&mut FieldText(&mut text));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(text));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<SpanFields>() {
                values.record(&mut FieldText(&mut fields.0));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut message = String::new();
        let mut fields = String::new();
        event.record(&mut EventText {
            message: &mut message,
            fields: FieldText(&mut fields),
        });
        let mut spans = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if !spans.is_empty() {
                    spans.push(':');
                }
                spans.push_str(span.name());
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    if !f.0.is_empty() {
                        let _ = write!(spans, "{{{}}}", f.0);
                    }
                }
            }
        }
        let mut rec = LogRecord {
            level: wire::level_to_u8(*meta.level()),
            target: meta.target().to_owned(),
            message,
            fields,
            spans,
            file: meta.file().map(str::to_owned),
            line: meta.line(),
            dropped: 0,
            slot: None,
        };
        send(&mut rec, true);
    }
}

/// Writes fields as `name=value`, separated by spaces.
struct FieldText<'a>(&'a mut String);

impl FieldText<'_> {
    fn sep(&mut self, field: &Field) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        self.0.push_str(field.name());
        self.0.push('=');
    }
}

impl Visit for FieldText<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.sep(field);
        self.0.push_str(value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.sep(field);
        let _ = write!(self.0, "{value:?}");
    }
}

/// Splits an event's `message` from its other fields.
struct EventText<'a> {
    message: &'a mut String,
    fields: FieldText<'a>,
}

impl Visit for EventText<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields.record_str(field, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields.record_debug(field, value);
        }
    }
}
