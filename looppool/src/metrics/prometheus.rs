//! An HTTP endpoint serving the pool's figures in Prometheus' text format.
//!
//! The encoding is `prometheus-client`'s; the HTTP side is a minimal
//! responder on a tokio `TcpListener` (`GET /metrics`, one request per
//! connection), which keeps an HTTP server out of the dependencies. A new
//! registry is filled from [`PoolStats`] at every scrape, so the figures are
//! as fresh as the last worker reports and nothing is kept between scrapes.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Metric, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Histogram, PoolStats};
use crate::sync::lock;

type Labels = Vec<(&'static str, String)>;
type IntGauges = Family<Labels, Gauge>;
type FloatGauges = Family<Labels, Gauge<f64, AtomicU64>>;
type Counters = Family<Labels, Counter>;
type Histograms = Family<Labels, Hist>;

/// A [`Histogram`] already counted, as a Prometheus histogram in seconds
/// (`prometheus-client`'s own type only counts observations itself).
#[derive(Debug, Clone, Default)]
struct Hist(Arc<Mutex<Histogram>>);

impl Hist {
    fn set(&self, h: &Histogram) {
        *lock(&self.0) = h.clone();
    }
}

impl TypedMetric for Hist {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Hist {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        let h = lock(&self.0).clone();
        // Per-bucket counts: the encoder makes them cumulative.
        let buckets: Vec<(f64, u64)> = h
            .buckets()
            .map(|(bound, count)| (bound.map_or(f64::INFINITY, |b| b.as_secs_f64()), count))
            .collect();
        encoder.encode_histogram::<NoLabelSet>(h.sum().as_secs_f64(), h.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Where [`Families::visit`] puts each family: a registry (the endpoint's)
/// or a collector's descriptor encoder.
trait Sink {
    fn add<M: Metric + TypedMetric + Clone>(&mut self, name: &str, help: &str, metric: &M);
}

impl Sink for Registry {
    fn add<M: Metric + TypedMetric + Clone>(&mut self, name: &str, help: &str, metric: &M) {
        self.register(name, help, metric.clone());
    }
}

/// Encodes each family as it is visited; keeps the first error.
struct Describe<'a> {
    encoder: DescriptorEncoder<'a>,
    result: Result<(), fmt::Error>,
}

impl Sink for Describe<'_> {
    fn add<M: Metric + TypedMetric + Clone>(&mut self, name: &str, help: &str, metric: &M) {
        if self.result.is_ok() {
            self.result = self
                .encoder
                // The period `Registry::register` adds to a help text.
                .encode_descriptor(name, &format!("{help}."), None, M::TYPE)
                .and_then(|encoder| metric.encode(encoder));
        }
    }
}

/// The metric families of one scrape.
#[derive(Default)]
struct Families {
    workers: IntGauges,
    up: IntGauges,
    in_flight: IntGauges,
    rss: IntGauges,
    max_rss: IntGauges,
    alive: IntGauges,
    global_queue: IntGauges,
    running: IntGauges,
    cpu: FloatGauges,
    busy: FloatGauges,
    lag_max: FloatGauges,
    lag_mean: FloatGauges,
    age: FloatGauges,
    done: Counters,
    failed: Counters,
    lost: Counters,
    restarts: Counters,
    blocked: Counters,
    logs_dropped: Counters,
    /// Queue wait, run time and output wait: per worker, then pool-wide.
    worker_times: [Histograms; 3],
    pool_times: [Histograms; 3],
}

/// The timing histograms' names (after `looppool_` or
/// `looppool_worker_`) and what each measures.
const TIMES: [(&str, &str); 3] = [
    (
        "queue_wait_seconds",
        "time in the pool other than the run, of a sample of tasks",
    ),
    (
        "run_time_seconds",
        "run time, from the handler's first poll to its completion, of a sample of tasks",
    ),
    (
        "output_wait_seconds",
        "time from reaching the parent to the consumer taking it, of a sample of output items",
    ),
];

impl Families {
    /// The families filled from `stats`.
    fn of(stats: &PoolStats) -> Self {
        let families = Families::default();
        families.record(stats);
        families
    }

    /// Hands every family, with its name and help, to `sink`.
    fn visit(&self, sink: &mut impl Sink) {
        sink.add(
            "looppool_workers",
            "Worker processes the pool runs",
            &self.workers,
        );
        sink.add(
            "looppool_worker_up",
            "Whether the worker has a live process (1) or is being replaced (0)",
            &self.up,
        );
        sink.add(
            "looppool_worker_in_flight",
            "Tasks queued or running on the worker",
            &self.in_flight,
        );
        self.visit_reports(sink);
        sink.add(
            "looppool_worker_report_age_seconds",
            "Seconds since the worker's last report arrived",
            &self.age,
        );
        sink.add(
            "looppool_worker_tasks_done",
            "Tasks of this worker index that completed",
            &self.done,
        );
        sink.add(
            "looppool_worker_tasks_failed",
            "Tasks of this worker index whose handler failed or panicked",
            &self.failed,
        );
        sink.add(
            "looppool_worker_tasks_lost",
            "Tasks of this worker index lost with its process",
            &self.lost,
        );
        sink.add(
            "looppool_worker_restarts",
            "Times this worker index's process was replaced",
            &self.restarts,
        );
        sink.add(
            "looppool_worker_blocked",
            "Times this worker's loop was blocked past the threshold",
            &self.blocked,
        );
        sink.add(
            "looppool_worker_logs_dropped",
            "Log events this worker dropped because its log buffer was full",
            &self.logs_dropped,
        );
        for (i, (name, help)) in TIMES.iter().enumerate() {
            let help = format!("Estimated distribution of the {help}");
            sink.add(
                &format!("looppool_worker_{name}"),
                &format!("{help}, per worker"),
                &self.worker_times[i],
            );
            sink.add(
                &format!("looppool_{name}"),
                &format!("{help}, for the whole pool"),
                &self.pool_times[i],
            );
        }
    }

    /// Hands the families of the workers' last reports to `sink`.
    fn visit_reports(&self, sink: &mut impl Sink) {
        sink.add(
            "looppool_worker_rss_bytes",
            "Resident memory of the worker at its last report",
            &self.rss,
        );
        sink.add(
            "looppool_worker_max_rss_bytes",
            "Peak resident memory of the worker at its last report",
            &self.max_rss,
        );
        sink.add(
            "looppool_worker_loop_alive_tasks",
            "Tasks alive on the worker's tokio runtime (tokio's num_alive_tasks)",
            &self.alive,
        );
        sink.add(
            "looppool_worker_loop_global_queue",
            "Tasks in the worker runtime's injection queue (tokio's global_queue_depth)",
            &self.global_queue,
        );
        sink.add(
            "looppool_worker_tasks_running",
            "Handlers in progress on the worker at its last report",
            &self.running,
        );
        sink.add(
            "looppool_worker_cpu",
            "CPU used by the worker over its last report interval, as a fraction of one core",
            &self.cpu,
        );
        sink.add(
            "looppool_worker_loop_busy",
            "Fraction of its last report interval the worker's loop was busy",
            &self.busy,
        );
        sink.add(
            "looppool_worker_loop_lag_max_seconds",
            "Worst lag of the worker's loop (how late a timer on it fired) over its last report interval",
            &self.lag_max,
        );
        sink.add(
            "looppool_worker_loop_lag_mean_seconds",
            "Mean lag of the worker's loop over its last report interval",
            &self.lag_mean,
        );
    }

    /// Sets every family from `stats`.
    fn record(&self, stats: &PoolStats) {
        let pool = || vec![("pool", stats.pool.clone())];
        self.workers
            .get_or_create(&pool())
            .set(stats.workers.len() as i64);
        let pool_times = [&stats.queue_wait, &stats.run_time, &stats.output_wait];
        for (family, h) in self.pool_times.iter().zip(pool_times) {
            family.get_or_create(&pool()).set(h);
        }
        for w in &stats.workers {
            let labels = vec![
                ("pool", stats.pool.clone()),
                ("worker", w.worker.to_string()),
            ];
            let int = |family: &IntGauges, value: u64| {
                family
                    .get_or_create(&labels)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            };
            let count = |family: &Counters, value: u64| {
                family.get_or_create(&labels).inc_by(value);
            };
            int(&self.up, u64::from(w.pid.is_some()));
            int(&self.in_flight, w.in_flight as u64);
            count(&self.done, w.done);
            count(&self.failed, w.failed);
            count(&self.lost, w.lost);
            count(&self.restarts, w.restarts);
            count(&self.blocked, w.blocked);
            count(&self.logs_dropped, w.logs_dropped);
            let times = [&w.queue_wait, &w.run_time, &w.output_wait];
            for (family, h) in self.worker_times.iter().zip(times) {
                family.get_or_create(&labels).set(h);
            }
            if let Some(r) = &w.last_report {
                int(&self.rss, r.rss_bytes);
                int(&self.max_rss, r.max_rss_bytes);
                int(&self.alive, r.loop_alive_tasks);
                int(&self.global_queue, r.loop_global_queue);
                int(&self.running, r.tasks_running);
                self.cpu.get_or_create(&labels).set(r.cpu);
                self.busy.get_or_create(&labels).set(r.loop_busy);
                let lag_max = r.loop_lag_max.as_secs_f64();
                self.lag_max.get_or_create(&labels).set(lag_max);
                let lag_mean = r.loop_lag_mean.as_secs_f64();
                self.lag_mean.get_or_create(&labels).set(lag_mean);
                self.age
                    .get_or_create(&labels)
                    .set(r.received.elapsed().as_secs_f64());
            }
        }
    }
}

/// Encodes `stats` in the Prometheus text format (version 0.0.4).
pub(crate) fn encode(stats: &PoolStats) -> String {
    let mut registry = Registry::default();
    Families::of(stats).visit(&mut registry);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

/// A `prometheus-client` [`Collector`] of a pool's figures, to register in
/// the application's own [`Registry`] (from
/// [`Pool::prometheus_collector`](crate::Pool::prometheus_collector)).
///
/// At each scrape it takes a fresh [`Pool::stats`](crate::Pool::stats)
/// snapshot and encodes the same families as the endpoint of
/// `PoolBuilder::prometheus` (see [the module docs](crate::metrics#prometheus)).
/// The worker reports' figures (CPU, memory, loop backlog) appear only when
/// reports are on (`PoolBuilder::report_interval`, or a statsd or Prometheus
/// exporter).
///
/// The collector does not keep the pool alive: it holds a weak reference,
/// and once every [`Pool`](crate::Pool) handle is dropped it encodes
/// nothing at all.
///
/// ```no_run
/// # fn demo(pool: &looppool::Pool<impl looppool::Worker>) {
/// use prometheus_client::registry::Registry;
///
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(pool.prometheus_collector()));
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// # }
/// ```
#[derive(Clone)]
pub struct PoolCollector {
    snapshot: Arc<dyn Fn() -> Option<PoolStats> + Send + Sync>,
}

impl PoolCollector {
    /// A collector encoding what `snapshot` returns; nothing once it
    /// returns `None`.
    pub(crate) fn new(snapshot: impl Fn() -> Option<PoolStats> + Send + Sync + 'static) -> Self {
        PoolCollector {
            snapshot: Arc::new(snapshot),
        }
    }
}

impl fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolCollector").finish_non_exhaustive()
    }
}

impl Collector for PoolCollector {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let Some(stats) = (self.snapshot)() else {
            return Ok(());
        };
        let mut describe = Describe {
            encoder,
            result: Ok(()),
        };
        Families::of(&stats).visit(&mut describe);
        describe.result
    }
}

/// Serves `GET /metrics` on `listener` until the task is aborted (when the
/// pool is dropped); once the pool is gone (`collect` returns `None`) it
/// answers 503.
pub(crate) async fn serve<F>(listener: TcpListener, collect: F)
where
    F: Fn() -> Option<PoolStats> + Send + Sync + Clone + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let collect = collect.clone();
        tokio::spawn(async move {
            // A client that does not send its request in time is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(10), respond(stream, collect)).await;
        });
    }
}

/// The largest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;

async fn respond<F: Fn() -> Option<PoolStats>>(
    mut stream: TcpStream,
    collect: F,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        if head.len() > MAX_REQUEST {
            return reply(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            )
            .await;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" {
        return reply(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n",
        )
        .await;
    }
    if path != "/metrics" {
        return reply(&mut stream, "404 Not Found", "text/plain", "try /metrics\n").await;
    }
    match collect() {
        Some(stats) => {
            let body = encode(&stats);
            reply(&mut stream, "200 OK", prometheus_text::CONTENT_TYPE, &body).await
        }
        None => {
            reply(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                "pool gone\n",
            )
            .await
        }
    }
}

async fn reply(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds the endpoint's listener (port 0 picks a free port).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
