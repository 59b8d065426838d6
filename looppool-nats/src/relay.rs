//! The two ends of a worker's link through the broker. Each relays
//! looppool's frames between a local [`Connection`](looppool::transport::Connection)
//! and the broker's subjects, so that the pool and the worker runtime above
//! them run unchanged.

pub(crate) mod ids;
mod link;
mod outputs;
pub(crate) mod parent;
mod publish;
mod sent;
mod tasks;
mod watch;
pub(crate) mod worker;

use std::time::{Duration, Instant};

/// How much later than this side the other side may reconnect after a
/// broker outage: the client's reconnect delay grows to 4 s between
/// attempts, so one side can be back that long before the other, and
/// the other's silence meanwhile is the outage's, not its own.
pub(crate) const RECONNECT_LAG: Duration = Duration::from_secs(5);

/// The idle heartbeat asked of the broker for the pool's pulls: a pull the
/// broker no longer serves (lost in a restart, or its consumer renewed) is
/// noticed after two of them are missed, and pulled again.
pub(crate) const PULL_HEARTBEAT: Duration = Duration::from_secs(2);

/// Whether pull error `e` means the pull is dead and must be made again:
/// its consumer was deleted (renewed by the parent, or gone), nothing
/// answers for it, or the broker stopped sending its idle heartbeats while
/// this side is connected. Other errors pass: the client recovers from
/// them by itself.
pub(crate) fn pull_is_dead(
    e: &async_nats::jetstream::consumer::pull::MessagesError,
    client: &async_nats::Client,
) -> bool {
    use async_nats::jetstream::consumer::pull::MessagesErrorKind as Kind;
    match e.kind() {
        Kind::ConsumerDeleted | Kind::NoResponders => true,
        Kind::MissingHeartbeat => {
            client.connection_state() == async_nats::connection::State::Connected
        }
        _ => false,
    }
}

/// The other side's silence, counted only while this side is connected,
/// and from [`RECONNECT_LAG`] after it reconnected.
#[derive(Debug)]
pub(crate) struct Silence {
    heard: Instant,
    limit: Duration,
}

impl Silence {
    pub(crate) fn new(limit: Duration) -> Self {
        Silence {
            heard: Instant::now(),
            limit,
        }
    }

    /// The other side was heard.
    pub(crate) fn heard(&mut self) {
        self.heard = Instant::now();
    }

    /// Whether the other side has been silent too long; `connected` is
    /// this side's state.
    pub(crate) fn too_long(&mut self, connected: bool) -> bool {
        let now = Instant::now();
        if !connected {
            self.heard = now + RECONNECT_LAG;
            return false;
        }
        now.saturating_duration_since(self.heard) > self.limit
    }
}

/// Splits the whole frames at the start of `buf` off, returning them as one
/// buffer each; what remains is the start of an incomplete frame.
pub(crate) fn take_frames(buf: &mut bytes::BytesMut) -> Vec<bytes::Bytes> {
    let mut frames = Vec::new();
    while let Some(len) = looppool::transport::frame::frame_len(buf) {
        frames.push(buf.split_to(len).freeze());
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_while_disconnected_and_just_after_does_not_count() {
        let mut s = Silence::new(Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.too_long(true));
        assert!(!s.too_long(false));
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            !s.too_long(true),
            "the other side may still be reconnecting"
        );
        s.heard();
        assert!(!s.too_long(true));
    }
}
