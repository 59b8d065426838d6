//! Publishing to a stream until the broker has stored the message.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use crate::sync::lock;

/// A published message waiting for the broker's acknowledgement, with what
/// it takes to send it again, and `then`: what to do once it is stored.
pub(crate) struct Pending<T> {
    pub(crate) ack: PublishAckFuture,
    pub(crate) subject: String,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
    pub(crate) then: T,
}

/// Since when the broker refuses to store messages on a subject (its
/// subject is full, or its store failed), if it does: set by the first
/// such refusal, cleared by the next message stored.
#[derive(Debug, Default)]
pub(crate) struct Refused(Mutex<Option<Instant>>);

impl Refused {
    /// Since when every message was refused, if the last one was.
    pub(crate) fn since(&self) -> Option<Instant> {
        *lock(&self.0)
    }

    fn refused(&self) {
        lock(&self.0).get_or_insert_with(Instant::now);
    }

    fn stored(&self) {
        *lock(&self.0) = None;
    }
}

/// Whether the broker refused to store a message (as opposed to not
/// answering in time).
fn is_refusal(e: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::ErrorCode;
    let code = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .map(|j| j.error_code());
    code == Some(ErrorCode::STREAM_STORE_FAILED)
}

/// How long a message is published again before the link is given up as
/// broken (the broker refuses it for good, or stays away).
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// Waits until `p` is stored, publishing it again (same message id, so the
/// broker stores it once) after a failed or timed-out acknowledgement;
/// returns its `then` and the stream sequence it was stored at.
async fn stored<T>(
    js: jetstream::Context,
    p: Pending<T>,
    refused: &Refused,
) -> Result<(T, u64), String> {
    let outcome = |result: Result<jetstream::publish::PublishAck, _>| match result {
        Ok(ack) => {
            refused.stored();
            Ok(ack.sequence)
        }
        Err(e) => {
            if is_refusal(&e) {
                refused.refused();
            }
            Err(e.to_string())
        }
    };
    let mut last = match outcome(p.ack.await) {
        Ok(seq) => return Ok((p.then, seq)),
        Err(e) => e,
    };
    let since = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    while since.elapsed() < GIVE_UP_AFTER {
        let sent = js
            .publish_with_headers(p.subject.clone(), p.headers.clone(), p.payload.clone())
            .await;
        match sent {
            Ok(ack) => match outcome(ack.await) {
                Ok(seq) => return Ok((p.then, seq)),
                Err(e) => last = e,
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
    Err(format!(
        "the broker did not store a message to {} within {GIVE_UP_AFTER:?}: {last}",
        p.subject
    ))
}

/// Confirms every message sent on `rx`, all at once rather than one after
/// the other (a broker outage times out many acknowledgements together),
/// and runs `on_stored` for each as it is stored, with its stream
/// sequence; `refused` tells since when the broker refuses them. Returns
/// once `rx` is closed and every message is stored, or with the first
/// message the broker would not store.
pub(crate) async fn confirm<T, F, Fut>(
    js: jetstream::Context,
    mut rx: mpsc::UnboundedReceiver<Pending<T>>,
    refused: std::sync::Arc<Refused>,
    mut on_stored: F,
) -> Result<(), String>
where
    F: FnMut((T, u64)) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut waiting = FuturesUnordered::new();
    let mut open = true;
    while open || !waiting.is_empty() {
        tokio::select! {
            p = rx.recv(), if open => match p {
                Some(p) => waiting.push(stored(js.clone(), p, &refused)),
                None => open = false,
            },
            Some(stored) = waiting.next(), if !waiting.is_empty() => on_stored(stored?).await,
        }
    }
    Ok(())
}
