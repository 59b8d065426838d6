//! Broker workloads (issue 7): W1 and W2 through a NATS JetStream broker
//! with `looppool-nats`, beside the raw JetStream round trip of the same
//! shape measured in the same run.
//!
//! A private `nats-server -js` is started on a free loopback port with a
//! temporary store directory, and stopped by its pid (its store removed) at
//! the end. Then:
//!
//! - `raw-js-roundtrip`: the limit. Plain async-nats, no looppool. Two
//!   worker processes (this binary again, selected by [`CHILD_ENV`]), each
//!   with its own subject `raw.task.<i>` in a work-queue stream and its own
//!   durable pull consumer, as the pool's workers have. The parent publishes
//!   8-byte tasks round-robin (PubAcks awaited pipelined, in order, by a
//!   second task), with at most [`WINDOW`] tasks per worker in flight; a
//!   worker pulls each task, publishes one 8-byte result to `raw.out.<i>` in
//!   a second work-queue stream, and acknowledges the task once the result's
//!   PubAck has come (also pipelined); the parent pulls the results from one
//!   durable consumer per worker and acknowledges each. Round trips per
//!   second, then sequential round trips (publish, wait for the result) as
//!   a latency series.
//! - `W1-broker`: W1's tiny echo tasks through `looppool-nats` with 2 local
//!   workers; tasks/s against the raw round-trip rate, target ≥ 0.8.
//! - `W2-broker`: sequential `pool.call`s; p50 and p99 against the raw
//!   sequential round trip; target p50 ≤ 1.25× (= 1/0.8) and p99 ≤ 2×.
//!
//! Both use file storage, the pool's default.

use std::process::{Child, Command, Stdio};

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use looppool::Pool;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, Semaphore};

use crate::broker_server::Server;
use crate::cli::Options;
use crate::report::{Row, Target};
use crate::stats::{median, Latency, Summary};
use crate::sys;
use crate::workers::Echo;
use crate::workloads::{self as wl, BenchResult};

/// Set (to the broker's URL) in the environment of a raw JetStream worker.
pub(crate) const CHILD_ENV: &str = "LOOPPOOL_BENCH_JS_CHILD";
/// The raw worker's index.
const CHILD_INDEX_ENV: &str = "LOOPPOOL_BENCH_JS_INDEX";

/// Workers of every broker workload.
const WORKERS: usize = 2;
/// Tasks in flight per worker: the pool's default (`max_tasks` 2,048 per
/// worker), and the raw worker's pull batch.
const WINDOW: usize = 2048;
/// The parent's pull batch of results, as the pool's relay uses.
const OUT_BATCH: usize = 512;

const TASK_STREAM: &str = "RAW_TASK";
const OUT_STREAM: &str = "RAW_OUT";

/// Sizes of the broker workloads.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    reps: usize,
    /// Tasks of each pipelined repetition (raw and W1-broker).
    n: u64,
    /// Sequential round trips of each latency series, after `warmup`.
    calls: usize,
    warmup: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                reps: 2,
                n: 5_000,
                calls: 200,
                warmup: 50,
            }
        } else {
            Sizes {
                reps: 5,
                n: 20_000,
                calls: 1_000,
                warmup: 100,
            }
        }
    }
}

/// Whether any broker workload was chosen.
pub(crate) fn chosen(opts: &Options) -> bool {
    ["raw-js", "W1-broker", "W2-broker"]
        .iter()
        .any(|w| opts.runs(w))
}

/// Runs the chosen broker workloads and pushes their rows. Without
/// `nats-server` it says so and returns, unless `--broker` asked for them.
pub(crate) fn run(opts: &Options, rt: &Runtime, rows: &mut Vec<Row>) -> BenchResult<()> {
    match run_all(opts, rt, rows) {
        Err(e) if !opts.broker => {
            // The full run keeps the other workloads' rows.
            progress(&format!("broker workloads failed, rows skipped: {e}"));
            Ok(())
        }
        r => r,
    }
}

/// How long one broker measurement (a series of repetitions) may take
/// before it counts as hung.
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs `f` on `rt`, failing after [`DEADLINE`].
fn within<T>(
    rt: &Runtime,
    what: &str,
    f: impl std::future::Future<Output = BenchResult<T>>,
) -> BenchResult<T> {
    rt.block_on(async {
        tokio::time::timeout(DEADLINE, f)
            .await
            .map_err(|_| format!("{what} did not finish within {DEADLINE:?}"))?
    })
}

fn run_all(opts: &Options, rt: &Runtime, rows: &mut Vec<Row>) -> BenchResult<()> {
    let Some(binary) = looppool_nats::server::locate() else {
        let why = "nats-server not found (install Debian's nats-server, or set NATS_SERVER)";
        if opts.broker {
            return Err(format!("--broker: {why}").into());
        }
        progress(&format!("skipping the broker workloads: {why}"));
        return Ok(());
    };
    let sizes = Sizes::new(opts.quick);
    let server = Server::start(&binary)?;
    progress(&format!(
        "broker: {} -js at {}, store {}",
        binary.display(),
        server.url,
        server.dir.display()
    ));

    progress(&format!(
        "raw-js-roundtrip: {} tasks through JetStream, {WORKERS} worker processes",
        sizes.n
    ));
    let raw = within(rt, "raw-js-roundtrip", raw_series(&server, sizes))?;
    let raw_rate = Summary::of(&raw.rates);
    rows.push(
        cpu_fields(Row::new("raw-js-roundtrip", raw_rate, "tasks/s"), &raw.cpu)
            .with("n", sizes.n)
            .with("workers", WORKERS as u64)
            .with("window_per_worker", WINDOW as u64),
    );
    let raw_lat = latency_medians(&raw.latency);
    rows.push(cpu_fields(
        latency_row("raw-js-seq-p50", &raw.latency, |l| l.p50_us, sizes.calls)
            .with("mean_us", raw_lat.2),
        &raw.seq_cpu,
    ));
    rows.push(
        latency_row("raw-js-seq-p99", &raw.latency, |l| l.p99_us, sizes.calls)
            .with("max_us", raw_lat.3),
    );

    // The same workloads again with users and permissions on, in the same
    // run, against the same raw limits.
    let secured = Server::start_with_users(&binary, &["bench-w1", "bench-w2"])?;
    for (server, suffix) in [(&server, ""), (&secured, "-auth")] {
        if opts.runs("W1-broker") {
            let name = format!("W1-broker{suffix}");
            progress(&format!(
                "{name}: {} tiny tasks through looppool-nats, {WORKERS} local workers",
                sizes.n
            ));
            let f = within(rt, &name, w1_broker(server, sizes))?;
            rows.push(
                cpu_fields(Row::new(&name, Summary::of(&f.rates), "tasks/s"), &f.cpu)
                    .target("raw-js-roundtrip", raw_rate.median, Target::AtLeast(0.8))
                    .with("n", sizes.n),
            );
        }
        if opts.runs("W2-broker") {
            let name = format!("W2-broker{suffix}");
            progress(&format!(
                "{name}: {} sequential calls through looppool-nats",
                sizes.calls
            ));
            let (series, cpu) = within(rt, &name, w2_broker(server, sizes))?;
            let (_, _, mean, max) = latency_medians(&series);
            rows.push(cpu_fields(
                latency_row(&format!("{name}-p50"), &series, |l| l.p50_us, sizes.calls)
                    .target("raw-js-seq-p50", raw_lat.0, Target::AtMost(1.25))
                    .with("mean_us", mean),
                &cpu,
            ));
            rows.push(
                latency_row(&format!("{name}-p99"), &series, |l| l.p99_us, sizes.calls)
                    .target("raw-js-seq-p99", raw_lat.1, Target::AtMost(2.0))
                    .with("max_us", max),
            );
        }
    }
    drop(secured);
    drop(server);
    Ok(())
}

fn progress(what: &str) {
    eprintln!("[{}] {what}", sys::utc_now());
}

/// Medians over the series of (p50, p99, mean) and the largest max.
fn latency_medians(series: &[Latency]) -> (f64, f64, f64, f64) {
    let m = |f: fn(&Latency) -> f64| median(&series.iter().map(f).collect::<Vec<_>>());
    (
        m(|l| l.p50_us),
        m(|l| l.p99_us),
        m(|l| l.mean_us),
        series.iter().map(|l| l.max_us).fold(0.0, f64::max),
    )
}

fn latency_row(name: &str, series: &[Latency], f: fn(&Latency) -> f64, calls: usize) -> Row {
    Row::new(
        name,
        Summary::of(&series.iter().map(f).collect::<Vec<_>>()),
        "us",
    )
    .with("calls_per_series", calls as u64)
}

/// CPU per task of each party, medians over the repetitions, in µs.
#[derive(Debug, Default, Clone)]
struct CpuPerTask {
    parent: Vec<f64>,
    workers: Vec<f64>,
    server: Vec<f64>,
    /// Whole machine's busy CPUs over the timed repetitions.
    machine_cpus: Vec<f64>,
}

fn cpu_fields(row: Row, c: &CpuPerTask) -> Row {
    row.with("parent_cpu_us_per_task", median(&c.parent))
        .with("workers_cpu_us_per_task", median(&c.workers))
        .with("server_cpu_us_per_task", median(&c.server))
        .with("cpus_busy_machine", median(&c.machine_cpus))
}

/// Samples the CPU time of the parent, the workers and the server around
/// one repetition.
struct CpuProbe {
    parent: Duration,
    workers: Duration,
    server: Duration,
    meter: sys::CpuMeter,
}

impl CpuProbe {
    fn start(workers: &[u32], server: u32) -> CpuProbe {
        CpuProbe {
            parent: sys::own_cpu_time(),
            workers: cpu_of(workers),
            server: cpu_of(&[server]),
            meter: sys::CpuMeter::start(&[]),
        }
    }

    fn stop(self, workers: &[u32], server: u32, n: u64, into: &mut CpuPerTask) {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        into.parent.push(per(sys::own_cpu_time() - self.parent));
        into.workers
            .push(per(cpu_of(workers).saturating_sub(self.workers)));
        into.server
            .push(per(cpu_of(&[server]).saturating_sub(self.server)));
        into.machine_cpus.push(self.meter.stop().machine);
    }
}

fn cpu_of(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|&p| sys::process_cpu_time(p)).sum()
}

// ------------------------------------------------------------ raw limit --

fn task_subject(i: usize) -> String {
    format!("raw.task.{i}")
}

fn out_subject(i: usize) -> String {
    format!("raw.out.{i}")
}

fn context(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client)
}

/// Runs the raw JetStream worker and exits if this process is one; returns
/// otherwise. Called at the top of `main`, before any runtime exists.
pub(crate) fn child_main_if_requested() {
    let Some(url) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let index: usize = std::env::var(CHILD_INDEX_ENV)
        .ok()
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let code = match rt.block_on(raw_worker(url.to_string_lossy().into_owned(), index)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("looppool-bench raw JetStream worker {index}: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// The raw worker: pulls tasks, publishes `2 * x` for each, acknowledges
/// each task once its result is stored; an empty task ends it.
async fn raw_worker(url: String, i: usize) -> BenchResult<()> {
    let client = async_nats::connect(url.as_str()).await?;
    let js = context(client.clone());
    let tasks: consumer::PullConsumer = js
        .get_consumer_from_stream(format!("w{i}"), TASK_STREAM)
        .await?;
    let mut messages = tasks
        .stream()
        .max_messages_per_batch(WINDOW)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(
        jetstream::context::PublishAckFuture,
        jetstream::message::Acker,
    )>();
    // Results' PubAcks in order, then the tasks' acks: pipelined.
    let confirmer = tokio::spawn(async move {
        while let Some((stored, acker)) = rx.recv().await {
            stored.await.map_err(|e| e.to_string())?;
            acker.ack().await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    });
    let subject = out_subject(i);
    while let Some(message) = messages.next().await {
        let (message, acker) = message?.split();
        let Some(x) = message
            .payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
        else {
            acker.ack().await.map_err(|e| e.to_string())?;
            break;
        };
        let stored = js
            .publish(subject.clone(), (2 * x).to_le_bytes().to_vec().into())
            .await?;
        tx.send((stored, acker))?;
    }
    drop(tx);
    confirmer.await??;
    client.flush().await?;
    Ok(())
}

/// The raw rig: streams, consumers, worker processes, and the parent's
/// merged result stream.
struct RawRig {
    client: async_nats::Client,
    js: jetstream::Context,
    children: Vec<Child>,
    results: futures_util::stream::SelectAll<consumer::pull::Stream>,
}

impl Drop for RawRig {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl RawRig {
    async fn start(url: &str) -> BenchResult<RawRig> {
        let client = async_nats::connect(url).await?;
        let js = context(client.clone());
        let mut streams = Vec::new();
        for (name, subjects) in [(TASK_STREAM, "raw.task.*"), (OUT_STREAM, "raw.out.*")] {
            streams.push(
                js.create_stream(stream::Config {
                    name: name.into(),
                    subjects: vec![subjects.into()],
                    retention: stream::RetentionPolicy::WorkQueue,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await?,
            );
        }
        let mut results = Vec::new();
        for i in 0..WORKERS {
            streams[0]
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(format!("w{i}")),
                    filter_subject: task_subject(i),
                    ack_policy: consumer::AckPolicy::Explicit,
                    max_ack_pending: WINDOW as i64,
                    ..Default::default()
                })
                .await?;
            let outs = streams[1]
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(format!("o{i}")),
                    filter_subject: out_subject(i),
                    ack_policy: consumer::AckPolicy::Explicit,
                    max_ack_pending: 4096,
                    ..Default::default()
                })
                .await?;
            results.push(
                outs.stream()
                    .max_messages_per_batch(OUT_BATCH)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(30))
                    .messages()
                    .await?,
            );
        }
        let program = std::env::var_os(wl::PROGRAM_ENV).unwrap_or_else(|| "/proc/self/exe".into());
        let mut rig = RawRig {
            client,
            js,
            children: Vec::new(),
            results: futures_util::stream::select_all(results),
        };
        for i in 0..WORKERS {
            rig.children.push(
                Command::new(&program)
                    .env(CHILD_ENV, url)
                    .env(CHILD_INDEX_ENV, i.to_string())
                    .stdin(Stdio::null())
                    .spawn()?,
            );
        }
        Ok(rig)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The next result, acknowledged.
    async fn next_result(&mut self) -> BenchResult<u64> {
        let m = self
            .results
            .next()
            .await
            .ok_or("the raw result stream ended")??;
        let v = m
            .payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or("a raw result without a u64")?;
        m.ack().await.map_err(|e| e.to_string())?;
        Ok(v)
    }

    /// `n` round trips pipelined, at most `WINDOW` per worker in flight;
    /// the time from the first publish to the last result.
    async fn pipelined(&mut self, n: u64) -> BenchResult<Duration> {
        let window = Arc::new(Semaphore::new(WORKERS * WINDOW));
        let js = self.js.clone();
        let permits = window.clone();
        let start = Instant::now();
        let producer = tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel::<jetstream::context::PublishAckFuture>();
            let confirmer = tokio::spawn(async move {
                while let Some(stored) = rx.recv().await {
                    stored.await.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            });
            for x in 0..n {
                permits.acquire().await.map_err(|e| e.to_string())?.forget();
                let stored = js
                    .publish(
                        task_subject(x as usize % WORKERS),
                        x.to_le_bytes().to_vec().into(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = tx.send(stored);
            }
            drop(tx);
            confirmer.await.map_err(|e| e.to_string())?
        });
        let mut sum = 0u64;
        for _ in 0..n {
            sum += self.next_result().await?;
            window.add_permits(1);
        }
        let took = start.elapsed();
        producer.await??;
        let want = n * n.saturating_sub(1);
        if sum != want {
            return Err(format!("raw-js-roundtrip checksum: got {sum}, want {want}").into());
        }
        Ok(took)
    }

    /// `warmup + n` sequential round trips; the last `n` as latencies.
    async fn sequential(&mut self, warmup: usize, n: usize) -> BenchResult<Latency> {
        let mut samples = Vec::with_capacity(n);
        for i in 0..warmup + n {
            let x = i as u64 + 1;
            let t = Instant::now();
            let stored = self
                .js
                .publish(task_subject(i % WORKERS), x.to_le_bytes().to_vec().into())
                .await?;
            let y = self.next_result().await?;
            let ns = t.elapsed().as_nanos() as u64;
            stored.await?;
            if y != 2 * x {
                return Err(format!("raw-js-seq: task {x} answered {y}").into());
            }
            if i >= warmup {
                samples.push(ns);
            }
        }
        Ok(Latency::from_nanos(&samples))
    }

    /// Stops the workers with an empty task each.
    async fn stop(mut self) -> BenchResult<()> {
        for i in 0..WORKERS {
            self.js
                .publish(task_subject(i), Vec::new().into())
                .await?
                .await?;
        }
        self.client.flush().await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            while c.try_wait()?.is_none() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }
}

/// What the raw rig measured.
struct RawFigures {
    rates: Vec<f64>,
    cpu: CpuPerTask,
    latency: Vec<Latency>,
    /// CPU per sequential round trip.
    seq_cpu: CpuPerTask,
}

async fn raw_series(server: &Server, s: Sizes) -> BenchResult<RawFigures> {
    let mut rig = RawRig::start(&server.url).await?;
    let pids = rig.pids();
    // Warm-up: workers connected and bound, the store's files grown.
    rig.pipelined(s.n.min(5_000)).await?;
    let mut f = RawFigures {
        rates: vec![],
        cpu: CpuPerTask::default(),
        latency: vec![],
        seq_cpu: CpuPerTask::default(),
    };
    for _ in 0..s.reps {
        let probe = CpuProbe::start(&pids, server.pid());
        let took = rig.pipelined(s.n).await?;
        probe.stop(&pids, server.pid(), s.n, &mut f.cpu);
        f.rates.push(s.n as f64 / took.as_secs_f64());
    }
    for _ in 0..s.reps {
        let probe = CpuProbe::start(&pids, server.pid());
        f.latency.push(rig.sequential(s.warmup, s.calls).await?);
        let trips = (s.warmup + s.calls) as u64;
        probe.stop(&pids, server.pid(), trips, &mut f.seq_cpu);
    }
    rig.stop().await?;
    Ok(f)
}

// ------------------------------------------------------- through the pool --

async fn start_pool(
    server: &Server,
    name: &str,
) -> BenchResult<(Pool<Echo>, looppool::Outputs<u64>)> {
    let mut builder = looppool_nats::NatsPoolBuilder::<Echo>::new(server.url.clone(), name)
        .local_workers(WORKERS)
        .max_tasks(WORKERS * WINDOW)
        .configure(|b| b.max_results(WORKERS * WINDOW));
    if let Some(program) = std::env::var_os(wl::PROGRAM_ENV) {
        builder = builder.program(program);
    }
    if let Some((parent, worker)) = server.credentials(name) {
        builder = builder.credentials(parent).worker_credentials(worker);
    }
    let (pool, outputs) = builder.start().await?;
    wl::probe_all(&pool, || 0).await?;
    Ok((pool, outputs))
}

struct W1Broker {
    rates: Vec<f64>,
    cpu: CpuPerTask,
}

async fn w1_broker(server: &Server, s: Sizes) -> BenchResult<W1Broker> {
    let (pool, mut outputs) = start_pool(server, "bench-w1").await?;
    let pids: Vec<u32> = pool.pids().into_iter().flatten().collect();
    wl::w1_once(&pool, &mut outputs, s.n.min(5_000)).await?;
    let mut f = W1Broker {
        rates: vec![],
        cpu: CpuPerTask::default(),
    };
    for _ in 0..s.reps {
        let probe = CpuProbe::start(&pids, server.pid());
        let took = wl::w1_once(&pool, &mut outputs, s.n).await?;
        probe.stop(&pids, server.pid(), s.n, &mut f.cpu);
        f.rates.push(s.n as f64 / took.as_secs_f64());
    }
    pool.shutdown().await;
    Ok(f)
}

async fn w2_broker(server: &Server, s: Sizes) -> BenchResult<(Vec<Latency>, CpuPerTask)> {
    let (pool, _outputs) = start_pool(server, "bench-w2").await?;
    let pids: Vec<u32> = pool.pids().into_iter().flatten().collect();
    let mut cpu = CpuPerTask::default();
    let mut series = Vec::with_capacity(s.reps);
    let mut x = 0u64;
    for _ in 0..s.reps {
        let probe = CpuProbe::start(&pids, server.pid());
        let mut samples = Vec::with_capacity(s.calls);
        for i in 0..s.warmup + s.calls {
            x += 1;
            let t = Instant::now();
            let y = pool.call(x).await.map_err(|e| e.to_string())?;
            let ns = t.elapsed().as_nanos() as u64;
            if y != 2 * x {
                return Err(format!("W2-broker: call({x}) answered {y}").into());
            }
            if i >= s.warmup {
                samples.push(ns);
            }
        }
        probe.stop(&pids, server.pid(), (s.warmup + s.calls) as u64, &mut cpu);
        series.push(Latency::from_nanos(&samples));
    }
    pool.shutdown().await;
    Ok((series, cpu))
}
