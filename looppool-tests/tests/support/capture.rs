//! A tracing layer that records the parent's events, for assertions.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// One recorded event.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    pub(crate) level: Level,
    pub(crate) target: String,
    pub(crate) message: String,
    pub(crate) fields: HashMap<String, String>,
    /// The parent's spans the event happened in, outermost first:
    /// `a{x=1}:b{}`.
    #[allow(dead_code)] // Not every test file that shares this reads it.
    pub(crate) scope: String,
}

impl Captured {
    /// A field's value as text, or "" when absent.
    pub(crate) fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }
}

/// Records every event of the thread it is installed on.
#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    /// Records this thread's events (a `#[tokio::test]` runs the pool's
    /// tasks on it) until the guard is dropped.
    pub(crate) fn install() -> (Capture, tracing::subscriber::DefaultGuard) {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        (capture, tracing::subscriber::set_default(subscriber))
    }

    /// The events recorded so far that match `pred`.
    pub(crate) fn matching(&self, pred: impl Fn(&Captured) -> bool) -> Vec<Captured> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| pred(e))
            .cloned()
            .collect()
    }
}

/// Splits the event's message (the first `message` field, its format
/// string) from its fields, where a later field named `message` goes.
struct Fields<'a> {
    message: &'a mut Option<String>,
    fields: &'a mut HashMap<String, String>,
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" && self.message.is_none() {
            *self.message = Some(value.to_owned());
        } else {
            self.fields
                .insert(field.name().to_owned(), value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

/// A span's fields as `name=value` text, in the registry's extensions.
struct SpanText(String);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut message = None;
        let mut fields = HashMap::new();
        attrs.record(&mut Fields {
            message: &mut message,
            fields: &mut fields,
        });
        let mut text: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        text.sort();
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanText(text.join(" ")));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let scope = ctx.event_scope(event).map_or_else(String::new, |scope| {
            let spans: Vec<String> = scope
                .from_root()
                .map(|span| {
                    let ext = span.extensions();
                    let text = ext.get::<SpanText>().map_or("", |t| t.0.as_str());
                    format!("{}{{{text}}}", span.name())
                })
                .collect();
            spans.join(":")
        });
        let mut message = None;
        let mut fields = HashMap::new();
        event.record(&mut Fields {
            message: &mut message,
            fields: &mut fields,
        });
        self.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            message: message.unwrap_or_default(),
            fields,
            scope,
        });
    }
}
