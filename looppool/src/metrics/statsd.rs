//! Sending figures to a statsd server as gauges, with `cadence`.
//!
//! Every gauge is named `<prefix>.<scope>.<figure>`; see the naming scheme
//! in the [module docs](super#statsd).

use std::net::{SocketAddr, UdpSocket};

use cadence::prelude::*;
use cadence::{BufferedUdpMetricSink, StatsdClient};

use super::PoolStats;
use crate::protocol::report::Resources;

/// Where to send statsd gauges, under which prefix, and from which process.
///
/// Pass it to [`PoolBuilder::statsd`](crate::PoolBuilder::statsd). By default
/// the parent sends every figure: each worker's report as it arrives, and
/// the pool's own figures every report interval. With
/// [`from_workers`](Self::from_workers) each worker sends its own report
/// straight to the server instead (the parent still sends the pool's
/// figures), which spares the parent the work when there are many workers.
///
/// ```
/// use looppool::metrics::Statsd;
///
/// let statsd = Statsd::new("127.0.0.1:8125", "myapp.crawler").from_workers(true);
/// # let _ = statsd;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statsd {
    pub(crate) addr: String,
    pub(crate) prefix: String,
    pub(crate) from_workers: bool,
}

impl Statsd {
    /// Gauges go to the statsd server at `addr` (`host:port`, resolved once
    /// when the pool starts), each named `<prefix>.…`.
    pub fn new(addr: impl Into<String>, prefix: impl Into<String>) -> Self {
        Statsd {
            addr: addr.into(),
            prefix: prefix.into(),
            from_workers: false,
        }
    }

    /// Whether each worker sends its own report to the server (default:
    /// no, the parent sends them).
    pub fn from_workers(mut self, enabled: bool) -> Self {
        self.from_workers = enabled;
        self
    }
}

/// A statsd client: a non-blocking UDP socket that packs the gauges of one
/// report into as few datagrams as fit.
pub(crate) struct Sender {
    client: StatsdClient,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

/// The largest datagram that crosses a typical network without fragments.
const DATAGRAM: usize = 1432;

impl Sender {
    /// A sender to `addr` whose gauges are named `<prefix>.…`.
    pub(crate) fn new(addr: SocketAddr, prefix: &str) -> std::io::Result<Self> {
        let local: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local)?;
        // A statsd server that is slow or absent must never hold up a loop:
        // a datagram that cannot leave at once is dropped, as UDP allows.
        socket.set_nonblocking(true)?;
        let sink = BufferedUdpMetricSink::with_capacity(addr, socket, DATAGRAM)
            .map_err(std::io::Error::other)?;
        Ok(Sender {
            client: StatsdClient::from_sink(prefix, sink),
        })
    }

    fn gauge_u64(&self, key: &str, value: u64) {
        // Errors (no server, full socket buffer) are the datagram's fate.
        let _ = self.client.gauge(key, value);
    }

    fn gauge_f64(&self, key: &str, value: f64) {
        let _ = self.client.gauge(key, value);
    }

    /// Sends one worker's report as `worker.<index>.<figure>` gauges.
    pub(crate) fn report(&self, worker: usize, r: &Resources) {
        let key = |name: &str| format!("worker.{worker}.{name}");
        self.gauge_f64(&key("cpu"), r.cpu);
        self.gauge_u64(&key("rss"), r.rss_bytes);
        self.gauge_u64(&key("maxrss"), r.max_rss_bytes);
        self.gauge_u64(&key("loop.alive_tasks"), r.loop_alive_tasks);
        self.gauge_u64(&key("loop.global_queue"), r.loop_global_queue);
        self.gauge_f64(&key("loop.busy"), r.loop_busy);
        self.gauge_u64(&key("loop.parks"), r.loop_parks);
        self.gauge_u64(&key("tasks.running"), r.tasks_running);
        self.gauge_u64(&key("tasks.done"), r.tasks_done);
        self.gauge_u64(&key("outputs"), r.outputs);
        self.gauge_u64(&key("logs.dropped"), r.logs_dropped);
        self.gauge_f64(&key("loop.lag_max_ms"), r.loop_lag_max_us as f64 / 1e3);
        self.gauge_f64(&key("loop.lag_mean_ms"), r.loop_lag_mean_us as f64 / 1e3);
        let _ = self.client.flush();
    }

    /// Sends the parent's figures: `pool.<figure>` for the whole pool and
    /// `worker.<index>.<figure>` for what the parent knows of each worker.
    pub(crate) fn pool(&self, stats: &PoolStats) {
        self.gauge_u64("pool.workers", stats.workers.len() as u64);
        self.gauge_u64("pool.in_flight", stats.in_flight as u64);
        self.gauge_u64("pool.done", stats.done);
        self.gauge_u64("pool.failed", stats.failed);
        self.gauge_u64("pool.lost", stats.lost);
        self.gauge_u64("pool.restarts", stats.restarts);
        self.gauge_u64("pool.blocked", stats.blocked);
        self.gauge_u64("pool.logs_dropped", stats.logs_dropped);
        for w in &stats.workers {
            let key = |name: &str| format!("worker.{}.{name}", w.worker);
            self.gauge_u64(&key("in_flight"), w.in_flight as u64);
            self.gauge_u64(&key("failed"), w.failed);
            self.gauge_u64(&key("lost"), w.lost);
            self.gauge_u64(&key("restarts"), w.restarts);
            self.gauge_u64(&key("blocked"), w.blocked);
        }
        let _ = self.client.flush();
    }
}
