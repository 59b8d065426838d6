//! The worker's side of observability: what the parent asked for, and the
//! start of the reporter, the blocked-loop watchdog and log forwarding.
//! See [`crate::metrics`] for what each does.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::shared::Shared;
use super::watchdog::Watch;
use super::{logging, report, watchdog};
use crate::protocol::report::{self as wire, STATSD_ENV};
use crate::protocol::Init;

/// What the parent asked the worker to report, read from its `init`
/// message before the initialiser runs.
#[derive(Debug)]
pub(crate) struct Observe {
    report_interval: Option<Duration>,
    log_level: tracing::level_filters::LevelFilter,
    statsd: Option<(String, String)>,
}

impl Observe {
    /// What `init` asks for; the statsd target comes from the environment
    /// when `read_env` (a worker process), never in a test's worker.
    pub(crate) fn new(init: &Init, read_env: bool) -> Self {
        Observe {
            report_interval: (init.report_interval_ms > 0)
                .then(|| Duration::from_millis(init.report_interval_ms)),
            log_level: wire::filter_from_u8(init.log_level),
            statsd: if read_env { statsd_target() } else { None },
        }
    }

    /// Before the initialiser: starts forwarding log events and panics.
    pub(crate) fn begin(&self, shared: &Rc<Shared>) {
        logging::install(shared, self.log_level);
    }

    /// After the worker is ready: starts the reporter and the watchdog.
    pub(crate) fn start(&self, shared: &Rc<Shared>) {
        if let Some(watch) = &shared.watch {
            start_watchdog(shared, watch.clone());
        }
        if let Some(interval) = self.report_interval {
            let statsd = statsd_sender(shared, self.statsd.as_ref());
            tokio::task::spawn_local(report::run(shared.clone(), interval, statsd));
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

/// Starts the watchdog thread and the loop's stamping task.
fn start_watchdog(shared: &Rc<Shared>, watch: Arc<Watch>) {
    let who = format!(
        "worker {} (pid {}) of pool {:?}",
        shared.index,
        std::process::id(),
        shared.pool_name
    );
    if !watchdog::start_thread(&watch, who) {
        return;
    }
    let shared = Rc::downgrade(shared);
    tokio::task::spawn_local(async move {
        let mut ticker = tokio::time::interval(watch.period());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.loop_turned(&watch);
        }
    });
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
