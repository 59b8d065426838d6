//! The limit of the broker workloads: the raw JetStream round trip, with
//! plain async-nats and no looppool. Two worker processes (this binary
//! again, selected by [`CHILD_ENV`]), each with its own subject
//! `raw.task.<i>` in a work-queue stream and its own durable pull consumer,
//! as the pool's workers have. The parent publishes 8-byte tasks
//! round-robin (PubAcks awaited pipelined, in order, by a second task),
//! with at most [`WINDOW`] tasks per worker in flight; a worker pulls each
//! task, publishes one 8-byte result to `raw.out.<i>` in a second
//! work-queue stream, and acknowledges the task once the result's PubAck
//! has come (also pipelined); the parent pulls the results from one
//! durable consumer per worker and acknowledges each.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::{mpsc, Semaphore};

use crate::broker_common::{CpuPerTask, CpuProbe, Sizes, OUT_BATCH, WINDOW, WORKERS};
use crate::broker_server::Server;
use crate::stats::Latency;
use crate::workloads::{self as wl, BenchResult};

/// Set (to the broker's URL) in the environment of a raw JetStream worker.
const CHILD_ENV: &str = "LOOPPOOL_BENCH_JS_CHILD";
/// The raw worker's index.
const CHILD_INDEX_ENV: &str = "LOOPPOOL_BENCH_JS_INDEX";

const TASK_STREAM: &str = "RAW_TASK";
const OUT_STREAM: &str = "RAW_OUT";

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
pub(crate) struct RawFigures {
    pub(crate) rates: Vec<f64>,
    pub(crate) cpu: CpuPerTask,
    pub(crate) latency: Vec<Latency>,
    /// CPU per sequential round trip.
    pub(crate) seq_cpu: CpuPerTask,
}

pub(crate) async fn raw_series(server: &Server, s: Sizes) -> BenchResult<RawFigures> {
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
