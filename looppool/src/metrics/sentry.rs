//! Sentry: tags for the events that the `sentry` crate's tracing
//! integration makes of a pool's log lines.

use sentry_core::protocol::{Context, Event, Value};

/// The fields of a pool's log lines that become tags.
const TAGGED: [&str; 4] = ["pool", "worker", "pid", "task"];

/// The context in which the `sentry` crate's tracing integration puts an
/// event's fields (as its `ErrorLayer` documents).
const FIELDS_CONTEXT: &str = "Rust Tracing Fields";

/// Tags `event` with the pool, worker index, pid and task id its fields
/// carry, for Sentry's `before_send` hook.
///
/// A pool logs each failed task (at
/// [`PoolBuilder::failed_task_log_level`](crate::PoolBuilder::failed_task_log_level))
/// and re-emits its workers' log lines and panics in the parent, with the
/// fields `pool`, `worker`, `pid` and, for a task's, `task`. With the
/// `sentry` crate's `ErrorLayer` installed, an `ERROR` line becomes a
/// Sentry event with those fields in its `Rust Tracing Fields` context;
/// this copies them to tags, which Sentry searches, groups and alerts on.
/// Events without them pass unchanged; none is dropped.
///
/// ```ignore
/// let mut options = sentry::ClientOptions::default();
/// options.before_send = Some(std::sync::Arc::new(looppool::metrics::sentry_tags));
/// let _sentry = sentry::init((dsn, options));
/// tracing_subscriber::registry()
///     .with(tracing_subscriber::fmt::layer())
///     .with(sentry::integrations::tracing::ErrorLayer::new().with_filter(LevelFilter::ERROR))
///     .init();
/// ```
///
/// (The `instrumented` example does this when `SENTRY_DSN` is set.)
pub fn sentry_tags(mut event: Event<'static>) -> Option<Event<'static>> {
    let Some(Context::Other(fields)) = event.contexts.get(FIELDS_CONTEXT) else {
        return Some(event);
    };
    let tags: Vec<(String, String)> = TAGGED
        .iter()
        .filter_map(|&name| {
            let text = match fields.get(name)? {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((name.to_owned(), text))
        })
        .collect();
    event.tags.extend(tags);
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn moves_the_pool_fields_to_tags_and_leaves_other_events_alone() {
        let mut fields = BTreeMap::new();
        fields.insert("pool".to_owned(), Value::from("web"));
        fields.insert("worker".to_owned(), Value::from(2));
        fields.insert("pid".to_owned(), Value::from(4242));
        fields.insert("task".to_owned(), Value::from("w2#7"));
        fields.insert("message".to_owned(), Value::from("boom"));
        let mut event = Event::default();
        event
            .contexts
            .insert(FIELDS_CONTEXT.to_owned(), Context::Other(fields));
        let tagged = sentry_tags(event).unwrap();
        let tags: Vec<(&str, &str)> = tagged
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            tags,
            [
                ("pid", "4242"),
                ("pool", "web"),
                ("task", "w2#7"),
                ("worker", "2")
            ]
        );
        let plain = sentry_tags(Event::default()).unwrap();
        assert!(plain.tags.is_empty());
    }
}
