//! An HTTP endpoint serving the pool's figures in Prometheus' text format.
//!
//! The encoding is `prometheus-client`'s; the HTTP side is a minimal
//! responder on a tokio `TcpListener` (`GET /metrics`, one request per
//! connection), which keeps an HTTP server out of the dependencies. A new
//! registry is filled from [`PoolStats`] at every scrape, so the figures are
//! as fresh as the last worker reports and nothing is kept between scrapes.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::PoolStats;

type Labels = Vec<(&'static str, String)>;
type IntGauges = Family<Labels, Gauge>;
type FloatGauges = Family<Labels, Gauge<f64, AtomicU64>>;
type Counters = Family<Labels, Counter>;

/// Registers a new metric (family) under `name` and returns it.
fn register<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// The metric families of one scrape, registered in its registry.
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
    age: FloatGauges,
    done: Counters,
    failed: Counters,
    lost: Counters,
    restarts: Counters,
    blocked: Counters,
    logs_dropped: Counters,
}

impl Families {
    /// Registers every family in `registry`.
    fn register(registry: &mut Registry) -> Self {
        Families {
            workers: register(
                registry,
                "looppool_workers",
                "Worker processes the pool runs",
            ),
            up: register(
                registry,
                "looppool_worker_up",
                "Whether the worker has a live process (1) or is being replaced (0)",
            ),
            in_flight: register(
                registry,
                "looppool_worker_in_flight",
                "Tasks queued or running on the worker",
            ),
            rss: register(
                registry,
                "looppool_worker_rss_bytes",
                "Resident memory of the worker at its last report",
            ),
            max_rss: register(
                registry,
                "looppool_worker_max_rss_bytes",
                "Peak resident memory of the worker at its last report",
            ),
            alive: register(
                registry,
                "looppool_worker_loop_alive_tasks",
                "Tasks alive on the worker's tokio runtime (tokio's num_alive_tasks)",
            ),
            global_queue: register(
                registry,
                "looppool_worker_loop_global_queue",
                "Tasks in the worker runtime's injection queue (tokio's global_queue_depth)",
            ),
            running: register(
                registry,
                "looppool_worker_tasks_running",
                "Handlers in progress on the worker at its last report",
            ),
            cpu: register(
                registry,
                "looppool_worker_cpu",
                "CPU used by the worker over its last report interval, as a fraction of one core",
            ),
            busy: register(
                registry,
                "looppool_worker_loop_busy",
                "Fraction of its last report interval the worker's loop was busy",
            ),
            age: register(
                registry,
                "looppool_worker_report_age_seconds",
                "Seconds since the worker's last report arrived",
            ),
            done: register(
                registry,
                "looppool_worker_tasks_done",
                "Tasks of this worker index that completed",
            ),
            failed: register(
                registry,
                "looppool_worker_tasks_failed",
                "Tasks of this worker index whose handler failed or panicked",
            ),
            lost: register(
                registry,
                "looppool_worker_tasks_lost",
                "Tasks of this worker index lost with its process",
            ),
            restarts: register(
                registry,
                "looppool_worker_restarts",
                "Times this worker index's process was replaced",
            ),
            blocked: register(
                registry,
                "looppool_worker_blocked",
                "Times this worker's loop was blocked past the threshold",
            ),
            logs_dropped: register(
                registry,
                "looppool_worker_logs_dropped",
                "Log events this worker dropped because its log buffer was full",
            ),
        }
    }

    /// Sets every family from `stats`.
    fn record(&self, stats: &PoolStats) {
        let pool = || vec![("pool", stats.pool.clone())];
        self.workers
            .get_or_create(&pool())
            .set(stats.workers.len() as i64);
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
            if let Some(r) = &w.last_report {
                int(&self.rss, r.rss_bytes);
                int(&self.max_rss, r.max_rss_bytes);
                int(&self.alive, r.loop_alive_tasks);
                int(&self.global_queue, r.loop_global_queue);
                int(&self.running, r.tasks_running);
                self.cpu.get_or_create(&labels).set(r.cpu);
                self.busy.get_or_create(&labels).set(r.loop_busy);
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
    Families::register(&mut registry).record(stats);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
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
