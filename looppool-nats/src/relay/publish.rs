//! Publishing to a stream until the broker has stored the message.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

/// A published message waiting for the broker's acknowledgement, with what
/// it takes to send it again, and `then`: what to do once it is stored.
pub(crate) struct Pending<T> {
    pub(crate) ack: PublishAckFuture,
    pub(crate) subject: String,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
    pub(crate) then: T,
}

/// How long a message is published again before the link is given up as
/// broken (the broker refuses it for good, or stays away).
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// Waits until `p` is stored, publishing it again (same message id, so the
/// broker stores it once) after a failed or timed-out acknowledgement;
/// returns its `then` and the stream sequence it was stored at.
async fn stored<T>(js: jetstream::Context, p: Pending<T>) -> Result<(T, u64), String> {
    let mut last = match p.ack.await {
        Ok(ack) => return Ok((p.then, ack.sequence)),
        Err(e) => e.to_string(),
    };
    let since = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    while since.elapsed() < GIVE_UP_AFTER {
        let sent = js
            .publish_with_headers(p.subject.clone(), p.headers.clone(), p.payload.clone())
            .await;
        match sent {
            Ok(ack) => match ack.await {
                Ok(ack) => return Ok((p.then, ack.sequence)),
                Err(e) => last = e.to_string(),
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
/// and runs `on_stored` for each as it is stored, with its stream sequence. Returns once `rx` is
/// closed and every message is stored, or with the first message the broker
/// would not store.
pub(crate) async fn confirm<T, F, Fut>(
    js: jetstream::Context,
    mut rx: mpsc::UnboundedReceiver<Pending<T>>,
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
                Some(p) => waiting.push(stored(js.clone(), p)),
                None => open = false,
            },
            Some(stored) = waiting.next(), if !waiting.is_empty() => on_stored(stored?).await,
        }
    }
    Ok(())
}
