//! Resource reports, statsd gauges, the Prometheus endpoint and collector, and the stats
//! snapshot, with real worker processes and real sockets: a UDP socket bound
//! by the test stands in for the statsd server.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use looppool::metrics::Statsd;
use looppool::Output;
use looppool_tests::{eventually, next_output, probe_pool, Job};

/// One gauge line: `name:value|type`.
#[derive(Debug, Clone)]
struct Gauge {
    name: String,
    value: f64,
    kind: String,
    /// The address the datagram came from.
    from: SocketAddr,
}

/// A statsd server stand-in: records every line it receives.
#[derive(Clone)]
struct FakeStatsd {
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<Gauge>>>,
}

impl FakeStatsd {
    fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let lines: Arc<Mutex<Vec<Gauge>>> = Default::default();
        let sink = lines.clone();
        // The thread ends with the test process.
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                for line in text.lines().filter(|l| !l.is_empty()) {
                    let (name, rest) = line.split_once(':').expect("name:value|type");
                    let (value, kind) = rest.split_once('|').expect("value|type");
                    sink.lock().unwrap().push(Gauge {
                        name: name.to_owned(),
                        value: value.parse().expect("a number"),
                        kind: kind.to_owned(),
                        from,
                    });
                }
            }
        });
        FakeStatsd { addr, lines }
    }

    fn named(&self, name: &str) -> Vec<Gauge> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.name == name)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Gauge> {
        self.lines.lock().unwrap().clone()
    }
}

const REPORT_GAUGES: [&str; 11] = [
    "cpu",
    "rss",
    "maxrss",
    "loop.alive_tasks",
    "loop.global_queue",
    "loop.busy",
    "loop.parks",
    "tasks.running",
    "tasks.done",
    "outputs",
    "logs.dropped",
];

#[tokio::test]
async fn statsd_gauges_tell_an_idle_worker_from_a_busy_one() {
    let statsd = FakeStatsd::start();
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .report_interval(Duration::from_millis(200))
        .statsd(Statsd::new(statsd.addr.to_string(), "test.lp"))
        .start()
        .await
        .unwrap();

    // Every report gauge of both workers arrives, as a gauge.
    let all_there = eventually(Duration::from_secs(20), || {
        (0..2).all(|w| {
            REPORT_GAUGES
                .iter()
                .all(|g| !statsd.named(&format!("test.lp.worker.{w}.{g}")).is_empty())
        })
    })
    .await;
    assert!(all_there, "missing gauges among {:#?}", statsd.all());
    assert!(
        statsd.all().iter().all(|g| g.kind == "g"),
        "{:#?}",
        statsd.all()
    );
    for w in 0..2 {
        for rss in statsd.named(&format!("test.lp.worker.{w}.rss")) {
            assert!(rss.value > 1048576.0, "{rss:?}");
        }
        let rss = statsd.named(&format!("test.lp.worker.{w}.rss"));
        let maxrss = statsd.named(&format!("test.lp.worker.{w}.maxrss"));
        assert!(maxrss[0].value >= rss[0].value, "{maxrss:?} {rss:?}");
    }

    // Worker 0 computes for about 3 s (its loop runs the 50 ms tasks back to
    // back, so the report made when it is free again covers them all);
    // worker 1 stays idle.
    for _ in 0..60 {
        pool.submit_to(0, Job::Spin { ms: 50, value: 1 })
            .await
            .unwrap();
    }
    let busy = eventually(Duration::from_secs(30), || {
        statsd
            .named("test.lp.worker.0.cpu")
            .iter()
            .any(|g| g.value > 0.5)
    })
    .await;
    let cpu0: Vec<f64> = statsd
        .named("test.lp.worker.0.cpu")
        .iter()
        .map(|g| g.value)
        .collect();
    assert!(busy, "worker 0 never looked busy: {cpu0:?}");
    for _ in 0..60 {
        next_output(&mut outputs).await;
    }
    let done = eventually(Duration::from_secs(20), || {
        statsd
            .named("test.lp.worker.0.tasks.done")
            .iter()
            .any(|g| g.value >= 60.0)
    })
    .await;
    assert!(done, "{:?}", statsd.named("test.lp.worker.0.tasks.done"));
    let cpu1: Vec<f64> = statsd
        .named("test.lp.worker.1.cpu")
        .iter()
        .map(|g| g.value)
        .collect();
    println!("cpu of busy worker 0: {cpu0:?}");
    println!("cpu of idle worker 1: {cpu1:?}");
    assert!(cpu1.len() >= 3, "{cpu1:?}");
    assert!(
        cpu1.iter().all(|&c| (0.0..0.5).contains(&c)),
        "idle worker 1: {cpu1:?}"
    );
    let busy0: Vec<f64> = statsd
        .named("test.lp.worker.0.loop.busy")
        .iter()
        .map(|g| g.value)
        .collect();
    assert!(
        busy0.iter().any(|&b| b > 0.5),
        "loop busy of worker 0: {busy0:?}"
    );
    assert!(busy0
        .iter()
        .chain(&cpu1)
        .all(|v| v.is_finite() && *v >= 0.0));

    // The parent's own figures, sent every interval.
    let pool_done = eventually(Duration::from_secs(20), || {
        statsd
            .named("test.lp.pool.done")
            .iter()
            .any(|g| g.value >= 60.0)
    })
    .await;
    assert!(pool_done, "{:?}", statsd.named("test.lp.pool.done"));
    assert!(statsd
        .named("test.lp.pool.workers")
        .iter()
        .all(|g| g.value == 2.0));
    assert!(!statsd.named("test.lp.worker.1.in_flight").is_empty());
    // In this mode the parent sends everything, from one socket.
    let sources: HashSet<SocketAddr> = statsd.all().iter().map(|g| g.from).collect();
    assert_eq!(sources.len(), 1, "{sources:?}");
    pool.shutdown().await;
}

#[tokio::test]
async fn statsd_from_workers_sends_from_each_worker() {
    let statsd = FakeStatsd::start();
    let (pool, _outputs) = probe_pool!()
        .workers(2)
        .report_interval(Duration::from_millis(100))
        .statsd(Statsd::new(statsd.addr.to_string(), "byworker").from_workers(true))
        .start()
        .await
        .unwrap();
    let there = eventually(Duration::from_secs(20), || {
        !statsd.named("byworker.worker.0.cpu").is_empty()
            && !statsd.named("byworker.worker.1.cpu").is_empty()
            && !statsd.named("byworker.pool.in_flight").is_empty()
    })
    .await;
    assert!(there, "{:#?}", statsd.all());
    let from =
        |name: &str| -> HashSet<SocketAddr> { statsd.named(name).iter().map(|g| g.from).collect() };
    let (w0, w1, parent) = (
        from("byworker.worker.0.rss"),
        from("byworker.worker.1.rss"),
        from("byworker.pool.in_flight"),
    );
    assert_eq!(w0.len(), 1, "{w0:?}");
    assert_eq!(w1.len(), 1, "{w1:?}");
    assert!(w0.is_disjoint(&w1) && w0.is_disjoint(&parent) && w1.is_disjoint(&parent));
    pool.shutdown().await;
}

#[tokio::test]
async fn stats_count_done_failed_lost_and_restarts() {
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .report_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    for x in 0..10 {
        pool.submit_to(x as usize % 2, Job::Double(x))
            .await
            .unwrap();
    }
    for worker in [0, 0, 1] {
        pool.submit_to(worker, Job::Fail("no".into()))
            .await
            .unwrap();
    }
    pool.submit_to(1, Job::Panic("ouch".into())).await.unwrap();
    let mut failed = 0;
    for _ in 0..14 {
        if let Output::Failed(_) = next_output(&mut outputs).await {
            failed += 1;
        }
    }
    assert_eq!(failed, 4);

    // Both workers report; each report comes from the worker's process.
    let reported = eventually(Duration::from_secs(20), || {
        pool.stats()
            .workers
            .iter()
            .all(|w| w.last_report.as_ref().is_some_and(|r| r.tasks_done == 7))
    })
    .await;
    let stats = pool.stats();
    assert!(reported, "{stats:#?}");
    let pids = pool.pids();
    for w in &stats.workers {
        let r = w.last_report.as_ref().unwrap();
        assert_eq!(Some(r.pid), pids[w.worker]);
        assert_eq!(w.pid, pids[w.worker]);
        assert!(r.rss_bytes > 1 << 20, "{r:?}");
        assert!(r.max_rss_bytes >= r.rss_bytes, "{r:?}");
        assert!((0.0..=1.0).contains(&r.loop_busy), "{r:?}");
        assert!(r.cpu >= 0.0, "{r:?}");
        assert!(r.interval >= Duration::from_millis(25), "{r:?}");
        assert_eq!(r.outputs, 5, "{r:?}");
        assert_eq!(r.tasks_running, 0, "{r:?}");
    }
    assert_eq!(stats.workers[0].done, 5);
    assert_eq!(stats.workers[0].failed, 2);
    assert_eq!(stats.workers[1].done, 5);
    assert_eq!(stats.workers[1].failed, 2);
    assert_eq!(
        (stats.done, stats.failed, stats.lost, stats.restarts),
        (10, 4, 0, 0)
    );
    assert_eq!(stats.in_flight, 0);

    // A worker killed holding two tasks: both lost, one restart.
    for _ in 0..2 {
        pool.submit_to(1, Job::hold(0)).await.unwrap();
    }
    assert!(eventually(Duration::from_secs(20), || pool.stats().in_flight == 2).await);
    let old_pid = pool.pids()[1];
    pool.kill_worker(1);
    for _ in 0..2 {
        assert!(matches!(
            next_output(&mut outputs).await,
            Output::Lost { .. }
        ));
    }
    let replaced = eventually(Duration::from_secs(20), || {
        let s = pool.stats();
        s.workers[1].restarts == 1 && s.workers[1].pid.is_some() && s.workers[1].pid != old_pid
    })
    .await;
    let stats = pool.stats();
    assert!(replaced, "{stats:#?}");
    assert_eq!(stats.workers[1].lost, 2);
    assert_eq!(stats.workers[0].lost, 0);
    assert_eq!((stats.lost, stats.restarts, stats.in_flight), (2, 1, 0));
    // The counts belong to the index and go on across the replacement.
    assert_eq!(stats.workers[1].done, 5);
    pool.shutdown().await;
}

/// `GET path` on `addr`; returns the status line, headers and body.
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a header");
    (head.to_owned(), body.to_owned())
}

/// Samples of a text exposition: `name{labels}` → value.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("name value");
            (key.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

#[tokio::test]
async fn prometheus_endpoint_serves_every_worker() {
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .report_interval(Duration::from_millis(50))
        .prometheus(([127, 0, 0, 1], 0))
        .start()
        .await
        .unwrap();
    let addr = pool.prometheus_addr().expect("the endpoint is on");
    assert_ne!(addr.port(), 0);
    for x in 0..3 {
        pool.submit_to(0, Job::Double(x)).await.unwrap();
    }
    pool.submit_to(1, Job::Fail("no".into())).await.unwrap();
    for _ in 0..4 {
        next_output(&mut outputs).await;
    }
    let reported = eventually(Duration::from_secs(20), || {
        pool.stats().workers.iter().all(|w| w.last_report.is_some())
    })
    .await;
    assert!(reported);

    let (head, body) = tokio::task::spawn_blocking(move || http_get(addr, "/metrics"))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(body.contains("# TYPE looppool_worker_cpu gauge"), "{body}");
    assert!(
        body.contains("# TYPE looppool_worker_tasks_done_total counter"),
        "{body}"
    );
    let s = samples(&body);
    let at = |name: &str, worker: usize| -> f64 {
        let key = format!("{name}{{pool=\"probe\",worker=\"{worker}\"}}");
        *s.get(&key).unwrap_or_else(|| panic!("no {key} in\n{body}"))
    };
    assert_eq!(s["looppool_workers{pool=\"probe\"}"], 2.0);
    for w in 0..2 {
        assert_eq!(at("looppool_worker_up", w), 1.0);
        assert!(at("looppool_worker_rss_bytes", w) > 1048576.0);
        assert!(at("looppool_worker_max_rss_bytes", w) >= at("looppool_worker_rss_bytes", w));
        assert!((0.0..1.0).contains(&at("looppool_worker_cpu", w)));
        assert!(at("looppool_worker_report_age_seconds", w) < 20.0);
        at("looppool_worker_loop_alive_tasks", w);
        at("looppool_worker_loop_global_queue", w);
        at("looppool_worker_loop_busy", w);
        assert_eq!(at("looppool_worker_in_flight", w), 0.0);
        assert_eq!(at("looppool_worker_tasks_lost_total", w), 0.0);
        assert_eq!(at("looppool_worker_restarts_total", w), 0.0);
    }
    assert_eq!(at("looppool_worker_tasks_done_total", 0), 3.0);
    assert_eq!(at("looppool_worker_tasks_failed_total", 0), 0.0);
    assert_eq!(at("looppool_worker_tasks_done_total", 1), 0.0);
    assert_eq!(at("looppool_worker_tasks_failed_total", 1), 1.0);

    let (head, _) = tokio::task::spawn_blocking(move || http_get(addr, "/nothing"))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    pool.shutdown().await;
}

/// Encodes `registry` in the text format.
fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

#[tokio::test]
async fn prometheus_collector_joins_the_apps_registry() {
    // No endpoint and no reports: the pool's counts only.
    let (pool, mut outputs) = probe_pool!().workers(2).start().await.unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    // The app's own metric beside the pool's.
    let own = prometheus_client::metrics::counter::Counter::<u64>::default();
    registry.register("app_requests", "The app's own counter", own.clone());
    own.inc();
    registry.register_collector(Box::new(pool.prometheus_collector()));

    for x in 0..3 {
        pool.submit_to(0, Job::Double(x)).await.unwrap();
    }
    pool.submit_to(1, Job::Fail("no".into())).await.unwrap();
    for _ in 0..4 {
        next_output(&mut outputs).await;
    }
    let body = encode(&registry);
    // OpenMetrics: the family is named without `_total`, its samples with.
    assert!(
        body.contains("# TYPE looppool_worker_tasks_done counter"),
        "{body}"
    );
    let s = samples(&body);
    let at = |name: &str, worker: usize| -> f64 {
        let key = format!("{name}{{pool=\"probe\",worker=\"{worker}\"}}");
        *s.get(&key).unwrap_or_else(|| panic!("no {key} in\n{body}"))
    };
    assert_eq!(s["app_requests_total"], 1.0);
    assert_eq!(s["looppool_workers{pool=\"probe\"}"], 2.0);
    assert_eq!(at("looppool_worker_tasks_done_total", 0), 3.0);
    assert_eq!(at("looppool_worker_tasks_done_total", 1), 0.0);
    assert_eq!(at("looppool_worker_tasks_failed_total", 1), 1.0);
    assert_eq!(at("looppool_worker_up", 1), 1.0);

    // A fresh snapshot at each scrape.
    pool.submit_to(0, Job::Double(9)).await.unwrap();
    next_output(&mut outputs).await;
    assert_eq!(
        samples(&encode(&registry))
            ["looppool_worker_tasks_done_total{pool=\"probe\",worker=\"0\"}"],
        4.0
    );

    // The collector does not keep the pool alive; once it is gone it
    // encodes nothing, and the app's own metrics are still there.
    drop(pool);
    let body = encode(&registry);
    assert!(!body.contains("looppool_"), "{body}");
    assert_eq!(samples(&body)["app_requests_total"], 1.0);
}

#[tokio::test]
async fn observability_settings_are_checked() {
    let err = probe_pool!()
        .blocked_threshold(Duration::from_millis(1))
        .start()
        .await
        .unwrap_err();
    assert!(
        looppool_tests::report(&err).contains("blocked_threshold"),
        "{err}"
    );
    let err = probe_pool!()
        .report_interval(Duration::ZERO)
        .start()
        .await
        .unwrap_err();
    assert!(
        looppool_tests::report(&err).contains("report_interval"),
        "{err}"
    );
    let err = probe_pool!()
        .statsd(Statsd::new("no-such-host.invalid:8125", "x"))
        .start()
        .await
        .unwrap_err();
    assert!(
        looppool_tests::report(&err).contains("statsd address"),
        "{err}"
    );
    // A taken port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = probe_pool!()
        .prometheus(taken.local_addr().unwrap())
        .start()
        .await
        .unwrap_err();
    assert!(looppool_tests::report(&err).contains("Prometheus"), "{err}");
}
