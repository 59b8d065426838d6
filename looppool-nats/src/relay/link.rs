//! What the three directions of the parent's relay share: the link's
//! state, why it stopped, and how a worker's end is told about.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use looppool::ExitStatus;
use tokio::sync::{mpsc, Notify};

use crate::broker::Broker;
use crate::counters::DropCounts;
use crate::names;
use crate::relay::outputs::Inflight;
use crate::relay::publish::{Pending, Refused};
use crate::relay::sent::{Sent, Untaken};
use crate::settings::Settings;

/// What the relay knows of how its worker ended.
#[derive(Debug, Default)]
pub(crate) struct Ending {
    /// Set once the relay stopped: the worker is gone for the pool.
    pub(crate) ended: bool,
    /// The exit code the worker announced, if it did.
    pub(crate) status: Option<ExitStatus>,
    /// Why the link ended, when the broker (not the worker) ended it: the
    /// cause its lost tasks are reported with.
    pub(crate) reason: Option<String>,
}

/// A local worker process, shared by the relay (which watches it) and the
/// pool's peer handle (which kills and reaps it).
#[derive(Debug)]
pub(crate) struct ChildCell {
    child: std::process::Child,
    status: Option<ExitStatus>,
}

impl ChildCell {
    pub(crate) fn new(child: std::process::Child) -> Self {
        ChildCell {
            child,
            status: None,
        }
    }

    pub(crate) fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
        }
    }

    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?.map(ExitStatus::from);
        }
        Ok(self.status)
    }

    pub(crate) fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let s = ExitStatus::from(self.child.wait()?);
        self.status = Some(s);
        Ok(s)
    }
}

/// What the relay's three directions share.
pub(crate) struct Link<'a> {
    pub(crate) broker: &'a Broker,
    pub(crate) client: &'a async_nats::Client,
    pub(crate) settings: &'a Settings,
    /// The broker's wait for a task's acknowledgement (the task consumer's
    /// setting, to create it again).
    pub(crate) ack_wait: Duration,
    /// The output credits the pool returned so far.
    pub(crate) credit: &'a AtomicU64,
    pub(crate) drops: &'a DropCounts,
    pub(crate) inflight: &'a Inflight,
    /// The next output message due from the worker.
    pub(crate) next: &'a AtomicU64,
    /// Task messages stored and not yet taken by the worker.
    pub(crate) sent: &'a Sent,
    /// Since when the broker refuses the worker's task messages, if it does.
    pub(crate) refused: &'a Refused,
    /// Where task messages go to be confirmed stored (and recorded in
    /// `sent`).
    pub(crate) confirm: &'a mpsc::UnboundedSender<Pending<Untaken>>,
    /// Asks the output direction to replace its consumer.
    pub(crate) renew_outputs: &'a Notify,
}

/// Why the relay stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The pool closed its end.
    PoolClosed,
    /// The worker announced its exit.
    Exited(i32),
    /// The worker fell silent.
    Silent,
    /// The local process ended.
    ProcessEnded,
    /// The broker refused something for good.
    Broken(String),
}

/// The headers of a control message to incarnation `inc`.
pub(crate) fn control_headers(inc: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(names::INCARNATION, inc.to_string().as_str());
    headers
}

/// A control message: the credit total so far, then frames for the worker.
pub(crate) fn control_payload(credit: &AtomicU64, frames: &[u8]) -> Bytes {
    let mut payload = Vec::with_capacity(8 + frames.len());
    payload.extend_from_slice(&credit.load(Ordering::Relaxed).to_le_bytes());
    payload.extend_from_slice(frames);
    payload.into()
}
