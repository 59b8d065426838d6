//! The pool's streams and consumers: created by the parent, bound by workers.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;

use crate::names::Names;

/// Output messages a worker may have in the broker before its publishes are
/// refused (the parent's credits bound them far lower in normal operation).
const OUTPUT_BACKLOG: i64 = 100_000;

/// The parent's handle on the pool's objects in the broker.
#[derive(Debug, Clone)]
pub(crate) struct Broker {
    pub(crate) js: jetstream::Context,
    pub(crate) names: Names,
    tasks: stream::Stream,
    outputs: stream::Stream,
    /// Both streams' settings, to create them again if they are deleted.
    configs: std::sync::Arc<[stream::Config; 2]>,
}

/// `url` without credentials (the user and password, or token, before an
/// `@`), for messages: `nats://user:secret@host:4222` is
/// `nats://host:4222`. Each URL of a comma-separated list is treated.
pub(crate) fn public_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let (scheme, rest) = match one.find("://") {
                Some(i) => one.split_at(i + 3),
                None => ("", one),
            };
            let end = rest.find('/').unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}{}", &rest[at + 1..]),
                None => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// A work-queue stream `name` over `subjects` that refuses a message
/// past `per_subject` on its subject (rather than dropping an old one),
/// with a two-minute window for duplicate message ids.
fn work_queue(
    name: String,
    subjects: String,
    per_subject: i64,
    storage: stream::StorageType,
) -> stream::Config {
    stream::Config {
        name,
        subjects: vec![subjects],
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        max_messages_per_subject: per_subject,
        storage,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// Creates `config`'s stream, or brings an existing one to `config`.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, String> {
    let name = config.name.clone();
    match js.create_stream(config.clone()).await {
        Ok(s) => Ok(s),
        Err(_) => {
            js.update_stream(config)
                .await
                .map_err(|e| err(&format!("cannot create or update stream {name}"), e))?;
            js.get_stream(&name)
                .await
                .map_err(|e| err(&format!("cannot open stream {name}"), e))
        }
    }
}

/// How long the parent's output consumer waits for the acknowledgement of
/// a message it handed out before handing it out again. The parent
/// acknowledges on receipt, so this is how long a message handed to a pull
/// that died with the broker (killed and restarted) waits: short, as the
/// parent gives an output message stored but not delivered only a few
/// seconds. A copy handed out while the parent was merely slow is dropped
/// by its sequence number.
const OUTPUT_ACK_WAIT: Duration = Duration::from_secs(2);

impl Broker {
    /// Creates (or updates) the pool's task and output streams. Each worker
    /// subject holds at most `per_worker` messages: a publish beyond is
    /// refused by the broker.
    pub(crate) async fn setup(
        js: jetstream::Context,
        names: Names,
        per_worker: usize,
        storage: stream::StorageType,
    ) -> Result<Self, String> {
        // A work-queue subject counts delivered messages until they are
        // acknowledged, and a worker acknowledges a task only once its
        // completing output is stored, by which time the pool may have sent
        // the next task in its place: room for two windows, plus the init
        // and stop messages. The pool's own bound (`max_tasks`) is what
        // gives Full errors.
        let task_config = work_queue(
            names.task_stream(),
            names.task_subjects(),
            2 * per_worker as i64 + 8,
            storage,
        );
        let output_config = work_queue(
            names.output_stream(),
            names.output_subjects(),
            OUTPUT_BACKLOG,
            storage,
        );
        let tasks = ensure_stream(&js, task_config.clone()).await?;
        let outputs = ensure_stream(&js, output_config.clone()).await?;
        Ok(Broker {
            js,
            names,
            tasks,
            outputs,
            configs: std::sync::Arc::new([task_config, output_config]),
        })
    }

    /// Creates again a stream of the pool that is gone from the broker
    /// (deleted by hand, or by a stranger): a worker that joins after that
    /// finds its queue in place.
    async fn restore_streams(&self) -> Result<(), String> {
        for config in self.configs.iter() {
            if self.js.get_stream(&config.name).await.is_err() {
                tracing::warn!(
                    pool = self.names.pool(),
                    stream = %config.name,
                    "the pool's stream is gone from the broker (deleted?): creating it again"
                );
                ensure_stream(&self.js, config.clone()).await?;
            }
        }
        Ok(())
    }

    /// Gives worker `n` a clean slate for incarnation `inc`: the consumers
    /// of earlier incarnations are deleted (so that a worker declared dead
    /// receives nothing more), what they left in the worker's subjects is
    /// purged (the pool already reported or re-sent it), and new consumers
    /// are created. `max_running` is the broker's bound on the tasks the
    /// worker holds unacknowledged.
    pub(crate) async fn reset_worker(
        &self,
        n: usize,
        inc: u64,
        max_running: usize,
        ack_wait: Duration,
    ) -> Result<(), String> {
        self.restore_streams().await?;
        self.retire_worker(n).await?;
        self.tasks
            .purge()
            .filter(self.names.task_subject(n))
            .await
            .map_err(|e| err("cannot purge a worker's task subject", e))?;
        self.outputs
            .purge()
            .filter(self.names.output_subject(n))
            .await
            .map_err(|e| err("cannot purge a worker's output subject", e))?;
        self.tasks
            .create_consumer(self.task_consumer_config(n, inc, max_running, ack_wait))
            .await
            .map_err(|e| err("cannot create a worker's task consumer", e))?;
        self.outputs
            .create_consumer(self.output_consumer_config(n, inc))
            .await
            .map_err(|e| err("cannot create a worker's output consumer", e))?;
        Ok(())
    }

    /// Worker `n`'s task consumer in incarnation `inc`: `max_running` is
    /// the broker's bound on the tasks the worker holds unacknowledged.
    fn task_consumer_config(
        &self,
        n: usize,
        inc: u64,
        max_running: usize,
        ack_wait: Duration,
    ) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.names.task_consumer(n, inc)),
            filter_subject: self.names.task_subject(n),
            ack_policy: consumer::AckPolicy::Explicit,
            // The init and stop messages are acknowledged on receipt.
            max_ack_pending: max_running as i64 + 2,
            ack_wait,
            ..Default::default()
        }
    }

    /// The parent's consumer of worker `n`'s outputs in incarnation `inc`.
    fn output_consumer_config(&self, n: usize, inc: u64) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.names.output_consumer(n, inc)),
            filter_subject: self.names.output_subject(n),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 4096,
            ack_wait: OUTPUT_ACK_WAIT,
            ..Default::default()
        }
    }

    /// Replaces worker `n`'s task consumer with a new one of the same name
    /// and settings, which delivers every message of the worker's subject
    /// from the first.
    ///
    /// A consumer restored by a broker restarted after a crash may never
    /// deliver again (nats-server 2.9 redelivers first, and a message due
    /// for redelivery that the stream no longer holds stops it), or may
    /// have left behind messages the stream brought back, which then fill
    /// the subject. The new consumer knows nothing of either: the worker's
    /// pull, ended by the deletion, pulls again from it, and drops (and
    /// acknowledges, so removes) the messages it already took.
    pub(crate) async fn renew_task_consumer(
        &self,
        n: usize,
        inc: u64,
        max_running: usize,
        ack_wait: Duration,
    ) -> Result<(), String> {
        // Already gone is fine: it is created again below.
        let _ = self
            .tasks
            .delete_consumer(&self.names.task_consumer(n, inc))
            .await;
        self.tasks
            .create_consumer(self.task_consumer_config(n, inc, max_running, ack_wait))
            .await
            .map_err(|e| err("cannot create a worker's task consumer again", e))?;
        Ok(())
    }

    /// Replaces the parent's consumer of worker `n`'s outputs, as
    /// [`renew_task_consumer`](Self::renew_task_consumer) does for tasks;
    /// returns the new one. The caller stops pulling from the old one
    /// first, or sees it deleted.
    pub(crate) async fn renew_output_consumer(
        &self,
        n: usize,
        inc: u64,
    ) -> Result<consumer::PullConsumer, String> {
        let _ = self
            .outputs
            .delete_consumer(&self.names.output_consumer(n, inc))
            .await;
        self.outputs
            .create_consumer(self.output_consumer_config(n, inc))
            .await
            .map_err(|e| err("cannot create a worker's output consumer again", e))
    }

    /// Deletes every consumer of worker `n`, whatever its incarnation.
    pub(crate) async fn retire_worker(&self, n: usize) -> Result<(), String> {
        for (stream, prefix) in [
            (&self.tasks, format!("w{n}-")),
            (&self.outputs, format!("o{n}-")),
        ] {
            let mut names = stream.consumer_names();
            let mut doomed = Vec::new();
            while let Some(name) = names.next().await {
                let name = name.map_err(|e| err("cannot list consumers", e))?;
                if name.starts_with(&prefix) {
                    doomed.push(name);
                }
            }
            for name in doomed {
                // Already gone is fine.
                let _ = stream.delete_consumer(&name).await;
            }
        }
        Ok(())
    }

    /// Whether the task stream still holds task message `k` of incarnation
    /// `inc` at `seq` (`false` also when the stream itself is gone, or
    /// holds another message there: a broker that lost the end of its
    /// stream in a crash stores the next messages at the same sequences).
    pub(crate) async fn task_message_is(&self, seq: u64, inc: u64, k: u64) -> Result<bool, String> {
        use async_nats::jetstream::stream::RawMessageErrorKind as Kind;
        match self.tasks.get_raw_message(seq).await {
            Ok(m) => {
                let h = Some(&m.headers);
                Ok(
                    crate::names::header_u64(h, crate::names::INCARNATION) == Some(inc)
                        && crate::names::header_u64(h, crate::names::TASK) == Some(k),
                )
            }
            Err(e) => match e.kind() {
                Kind::NoMessageFound => Ok(false),
                Kind::JetStream(j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(false)
                }
                _ => Err(err("cannot look up a task message", e)),
            },
        }
    }

    /// The parent's consumer of worker `n`'s outputs.
    pub(crate) async fn output_consumer(
        &self,
        n: usize,
        inc: u64,
    ) -> Result<consumer::PullConsumer, String> {
        self.outputs
            .get_consumer(&self.names.output_consumer(n, inc))
            .await
            .map_err(|e| err("cannot open a worker's output consumer", e))
    }
}

#[cfg(test)]
mod tests {
    use super::public_url;

    #[test]
    fn credentials_never_reach_a_message() {
        assert_eq!(public_url("nats://u:secret@h:4222"), "nats://h:4222");
        assert_eq!(public_url("tls://tok@h"), "tls://h");
        assert_eq!(public_url("u:p@h:1,nats://h2:2"), "h:1,nats://h2:2");
        assert_eq!(public_url("nats://h:4222/x@y"), "nats://h:4222/x@y");
    }
}
