//! The worker's side of observability: the counts its reports carry, and
//! the start of the reporter, the blocked-loop watchdog and log forwarding.
//! See [`crate::metrics`] for what each does.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::shared::Shared;
use super::watchdog::Watch;
use super::{logging, report, watchdog};
use crate::metrics::STATSD_ENV;
use crate::protocol::report as wire;
use crate::protocol::Init;

/// Per-process observability state, part of the worker's `Shared`.
#[derive(Debug)]
pub(crate) struct Observe {
    /// Tasks completed or failed.
    pub(crate) done: Cell<u64>,
    watch: Option<Arc<Watch>>,
    report_interval: Option<Duration>,
    log_level: tracing::level_filters::LevelFilter,
    statsd: Option<(String, String)>,
}

impl Observe {
    pub(crate) fn new(init: &Init) -> Self {
        Observe {
            done: Cell::new(0),
            watch: (init.blocked_threshold_ms > 0)
                .then(|| Arc::new(Watch::new(Duration::from_millis(init.blocked_threshold_ms)))),
            report_interval: (init.report_interval_ms > 0)
                .then(|| Duration::from_millis(init.report_interval_ms)),
            log_level: wire::filter_from_u8(init.log_level),
            statsd: statsd_target(),
        }
    }

    /// Runs `poll`, a poll of the task in wire slot `slot`, under the
    /// blocked-loop watch.
    #[inline]
    pub(crate) fn polling<R>(&self, shared: &Shared, slot: u32, poll: impl FnOnce() -> R) -> R {
        match &self.watch {
            None => poll(),
            Some(watch) => watch.polling(shared, slot, poll),
        }
    }
}

/// Takes the statsd target the parent passed in the environment.
fn statsd_target() -> Option<(String, String)> {
    let value = std::env::var(STATSD_ENV).ok()?;
    // Not for the worker's own children.
    std::env::remove_var(STATSD_ENV);
    let (addr, prefix) = value.split_once(' ')?;
    Some((addr.to_owned(), prefix.to_owned()))
}

/// Before the initialiser: starts forwarding log events and panics.
pub(crate) fn begin(shared: &Rc<Shared>) {
    logging::install(shared, shared.obs.log_level);
}

/// After the worker is ready: starts the reporter and the watchdog.
pub(crate) fn start(shared: &Rc<Shared>) {
    let obs = &shared.obs;
    if let Some(watch) = &obs.watch {
        watchdog::start(shared, watch.clone());
    }
    if let Some(interval) = obs.report_interval {
        let statsd = statsd_sender(shared, obs.statsd.as_ref());
        tokio::task::spawn_local(report::run(shared.clone(), interval, statsd));
    }
}

#[cfg(feature = "statsd")]
fn statsd_sender(shared: &Shared, target: Option<&(String, String)>) -> report::Statsd {
    let (addr, prefix) = target?;
    let sender = addr
        .parse()
        .map_err(|e: std::net::AddrParseError| e.to_string())
        .and_then(|addr| {
            crate::metrics::statsd::Sender::new(addr, prefix).map_err(|e| e.to_string())
        });
    match sender {
        Ok(sender) => Some(Box::new(move |worker, report| {
            sender.report(worker, report)
        })),
        Err(e) => {
            tracing::warn!(
                worker = shared.index,
                "cannot send reports to statsd at {addr}: {e}"
            );
            None
        }
    }
}

#[cfg(not(feature = "statsd"))]
fn statsd_sender(_: &Shared, _: Option<&(String, String)>) -> report::Statsd {
    None
}
