//! The pool workloads W1–W6: each function measures one repetition (or a
//! series of them on one pool) and returns raw figures; `bench` and `peer`
//! turn them into rows or records.

use std::time::{Duration, Instant};

use looppool::{Output, Outputs, Pool, Worker};
use serde_bytes::ByteBuf;

use crate::stats::Latency;
use crate::sys;
use crate::workers::{Bytes, Echo, Mixed, MixedTask, Sleeper};

/// Any error of a bench run, as text for the person running it.
pub(crate) type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Workers of the pool workloads unless said otherwise.
pub(crate) const WORKERS: usize = 2;
/// W1's task and output window per worker: deep enough that the writers
/// move big batches (a lane yields every eighth of its window, here 2,048
/// tasks) with several in flight, so the workers seldom drain and sleep
/// (each wake-up may land a worker on the parent's vCPU; see BENCHMARKS.md).
/// Twice this moved W1 a little further but no longer kept the soak's RSS
/// flat within 5 %.
pub(crate) const W1_WINDOW: usize = 16384;
/// W3/W4: tasks in flight per worker.
pub(crate) const W3_IN_FLIGHT: usize = 1000;
/// W3: each task's sleep.
pub(crate) const W3_SLEEP_MS: u64 = 50;
/// W4: each task's busy loop, then its sleep.
pub(crate) const W4_SPIN_US: u32 = 1000;
pub(crate) const W4_SLEEP_MS: u32 = 10;
/// W5: each task's payload.
pub(crate) const W5_SIZE: usize = 1 << 20;
/// W5: payloads in flight per worker. Two (double buffering) keeps both
/// sides busy; more only spreads the copies over more memory than the caches
/// hold (a sweep of 1, 2, 4, 8, 16, 32 on this machine gave the best MB/s at
/// 1-2 and a third less at 8).
pub(crate) const W5_IN_FLIGHT: usize = 2;

/// Names the worker program when `/proc/self/exe` would not do (for
/// profiling the parent under valgrind).
pub(crate) const PROGRAM_ENV: &str = "LOOPPOOL_BENCH_PROGRAM";

/// Starts a pool of `workers` workers with `window` tasks and twice as many
/// outputs per worker.
///
/// An output window only as deep as the task window runs dry whenever the
/// consumer is a batch behind the reader (the reader frees a task's slot,
/// and the producer refills it, before the consumer takes its output): the
/// worker then parks each new task in a spawned task until credits return.
/// With 16,384 of each per worker, 2.4-4 % of W1's tasks parked; twice the
/// outputs took W1 from 9.4-12.3 to 12.3-17.3 M tasks/s in five alternating
/// rounds.
pub(crate) async fn start<W: Worker>(
    workers: usize,
    window: usize,
) -> BenchResult<(Pool<W>, Outputs<W::Output>)> {
    start_with(workers, window, Defaults::ON, None).await
}

/// Which of the pool's defaults that cost something are on: the workloads
/// run with both, and the `hb` and `hist` rows compare each with its
/// absence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Defaults {
    pub(crate) heartbeat: bool,
    pub(crate) timings: bool,
}

impl Defaults {
    /// Both on, as a pool starts by default.
    pub(crate) const ON: Defaults = Defaults {
        heartbeat: true,
        timings: true,
    };
}

/// [`start`], with the defaults of `on`, and with the workers kept on
/// `cpus` if given.
pub(crate) async fn start_with<W: Worker>(
    workers: usize,
    window: usize,
    on: Defaults,
    cpus: Option<&[usize]>,
) -> BenchResult<(Pool<W>, Outputs<W::Output>)> {
    let mut builder = Pool::<W>::builder()
        .workers(workers)
        .max_tasks(window * workers)
        .max_results(2 * window * workers)
        .name("bench");
    if !on.heartbeat {
        builder = builder.no_heartbeat();
    }
    if !on.timings {
        builder = builder.no_task_timings();
    }
    if let Some(cpus) = cpus {
        builder = builder.worker_cpus(cpus.iter().copied());
    }
    // Under valgrind `/proc/self/exe` is valgrind itself: name the program.
    if let Some(program) = std::env::var_os(PROGRAM_ENV) {
        builder = builder.program(program);
    }
    Ok(builder.start().await?)
}

/// Sends one trivial task to every worker and waits for each answer, as the
/// peers' start-up figure requires.
pub(crate) async fn probe_all<W: Worker>(
    pool: &Pool<W>,
    task: impl Fn() -> W::Task,
) -> BenchResult<()> {
    for i in 0..pool.workers() {
        pool.call_to(i, task())
            .await
            .map_err(|e| format!("probe of worker {i}: {e}"))?;
    }
    Ok(())
}

/// Submits `n` tasks from a producer task while this task takes the `n`
/// outputs from the stream; returns the time from the first submit to the
/// last output.
pub(crate) async fn stream<W>(
    pool: &Pool<W>,
    outputs: &mut Outputs<W::Output>,
    n: u64,
    make: impl Fn(u64) -> W::Task + Send + 'static,
    on_value: impl FnMut(W::Output),
) -> BenchResult<Duration>
where
    W: Worker,
    W::Task: Send + Sync,
{
    let producer = move |p: Pool<W>| async move {
        for i in 0..n {
            p.submit(make(i)).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    stream_with(pool, outputs, n, producer, on_value).await
}

/// Like [`stream`], with the producer task given: it gets a handle to the
/// pool and must submit the `n` tasks.
pub(crate) async fn stream_with<W, F>(
    pool: &Pool<W>,
    outputs: &mut Outputs<W::Output>,
    n: u64,
    producer: impl FnOnce(Pool<W>) -> F,
    mut on_value: impl FnMut(W::Output),
) -> BenchResult<Duration>
where
    W: Worker,
    F: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let start = Instant::now();
    let producer = tokio::spawn(producer(pool.clone()));
    let mut got = 0;
    let failure = loop {
        if got == n {
            break None;
        }
        match outputs.next().await {
            Some(Output::Value { value, .. }) => {
                on_value(value);
                got += 1;
            }
            Some(Output::Failed(e)) => break Some(format!("a task failed: {e}")),
            Some(Output::Lost { task, lost }) => break Some(format!("task {task} lost: {lost}")),
            Some(_) => break Some("an unexpected output item".into()),
            None => break Some(format!("the output stream ended after {got} of {n}")),
        }
    };
    let took = start.elapsed();
    if let Some(why) = failure {
        producer.abort();
        return Err(why.into());
    }
    producer.await??;
    Ok(took)
}

/// One W1 repetition: `n` tiny tasks, every output summed and checked.
pub(crate) async fn w1_once(
    pool: &Pool<Echo>,
    outputs: &mut Outputs<u64>,
    n: u64,
) -> BenchResult<Duration> {
    let mut sum = 0u64;
    let took = stream(pool, outputs, n, |x| x, |v| sum += v).await?;
    let want = n * n.saturating_sub(1);
    if sum != want {
        return Err(format!("W1 checksum: got {sum}, want {want}").into());
    }
    Ok(took)
}

/// What a W1 series measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct W1Figures {
    /// Tasks per second of each timed repetition.
    pub(crate) rates: Vec<f64>,
    /// Parent CPU (all threads) per task, per repetition.
    pub(crate) parent_cpu_ns: Vec<f64>,
    /// The part of it spent in the kernel, per task, per repetition.
    pub(crate) parent_sys_ns: Vec<f64>,
    /// Workers' CPU together per task, per repetition (10 ms tick resolution).
    pub(crate) worker_cpu_ns: Vec<f64>,
    /// Parent context switches per 1,000 tasks, per repetition.
    pub(crate) switches_per_k: Vec<f64>,
    /// The involuntary part of them (preemptions), per repetition.
    pub(crate) preempted_per_k: Vec<f64>,
    /// How long the warm-ups ran together, and how many tasks they took.
    pub(crate) warmup: (Duration, u64),
    /// CPUs busy on the machine, and in the bench's processes, during
    /// each timed repetition.
    pub(crate) cpu_machine: Vec<f64>,
    pub(crate) cpu_bench: Vec<f64>,
    /// Resident memory after the last repetition: parent, then each worker (KiB).
    pub(crate) rss_parent_kib: u64,
    pub(crate) rss_workers_kib: Vec<u64>,
}

/// W1: `reps` timed repetitions of `n` tasks, each on a fresh pool of 2
/// workers warmed up for at least `warmup` first.
///
/// A fresh pool per repetition, as the raw echo spawns a fresh child per
/// repetition: where the kernel places the parent and its workers on the
/// machine's CPUs is settled when the pool starts and then lasts the pool's
/// life, so repetitions on one pool would measure one placement `reps`
/// times, and its median would be one draw, not a median.
pub(crate) async fn w1_series(reps: usize, n: u64, warmup: Duration) -> BenchResult<W1Figures> {
    let mut f = W1Figures::default();
    for _ in 0..reps {
        w1_on_fresh_pool(n, warmup, Defaults::ON, &mut f).await?;
    }
    Ok(f)
}

/// W1 on pools with the defaults `a` and on pools with `b`, in alternating
/// repetitions so that both see the same machine: what a default costs
/// (heartbeats, timings).
pub(crate) async fn w1_pair_series(
    reps: usize,
    n: u64,
    warmup: Duration,
    a: Defaults,
    b: Defaults,
) -> BenchResult<(W1Figures, W1Figures)> {
    let (mut fa, mut fb) = (W1Figures::default(), W1Figures::default());
    for rep in 0..reps {
        // Alternate which goes first, so neither always follows the other.
        for first in [rep % 2 == 0, rep % 2 != 0] {
            let (on, f) = if first { (a, &mut fa) } else { (b, &mut fb) };
            w1_on_fresh_pool(n, warmup, on, f).await?;
        }
    }
    Ok((fa, fb))
}

/// What one long-lived W1 pool did.
#[derive(Debug, Clone, Default)]
pub(crate) struct W1Long {
    /// Tasks per second over the whole run of the pool.
    pub(crate) rate: f64,
    /// Tasks per second of each chunk, in order: a slow state that sets in
    /// and lasts shows as a step.
    pub(crate) chunk_rates: Vec<f64>,
    /// Parent preemptions per 1,000 tasks over the run.
    pub(crate) preempted_per_k: f64,
}

/// W1-long: `n` tasks through one pool of 2 workers (warmed up for
/// `warmup` first, and kept on `cpus` if given), streamed in chunks of
/// `chunk` whose rates are kept, so that a rate that falls during a pool's
/// life, and stays down, is seen.
pub(crate) async fn w1_long_pool(
    n: u64,
    chunk: u64,
    warmup: Duration,
    cpus: Option<&[usize]>,
) -> BenchResult<W1Long> {
    let (pool, mut outputs) = start_with::<Echo>(WORKERS, W1_WINDOW, Defaults::ON, cpus).await?;
    let began = Instant::now();
    while began.elapsed() < warmup {
        w1_once(&pool, &mut outputs, chunk).await?;
    }
    let sw0 = sys::context_switches();
    let mut long = W1Long::default();
    let mut done = 0;
    let mut took = Duration::ZERO;
    while done < n {
        let k = chunk.min(n - done);
        let t = w1_once(&pool, &mut outputs, k).await?;
        long.chunk_rates.push(k as f64 / t.as_secs_f64());
        took += t;
        done += k;
    }
    let sw1 = sys::context_switches();
    long.rate = n as f64 / took.as_secs_f64();
    long.preempted_per_k = (sw1.1 - sw0.1) as f64 * 1000.0 / n as f64;
    pool.shutdown().await;
    Ok(long)
}

/// One W1 repetition on a pool of its own, after its warm-up.
async fn w1_on_fresh_pool(
    n: u64,
    warmup: Duration,
    on: Defaults,
    f: &mut W1Figures,
) -> BenchResult<()> {
    let (pool, mut outputs) = start_with::<Echo>(WORKERS, W1_WINDOW, on, None).await?;
    let pids: Vec<u32> = pool.pids().into_iter().flatten().collect();
    let began = Instant::now();
    let mut warm_tasks = 0;
    while began.elapsed() < warmup {
        w1_once(&pool, &mut outputs, n).await?;
        warm_tasks += n;
    }
    f.warmup.0 += began.elapsed();
    f.warmup.1 += warm_tasks;
    let worker_cpu = || -> Duration { pids.iter().filter_map(|&p| sys::process_cpu_time(p)).sum() };
    let meter = sys::CpuMeter::start(&pids);
    let (cpu0, wcpu0, sw0) = (sys::own_cpu_times(), worker_cpu(), sys::context_switches());
    let took = w1_once(&pool, &mut outputs, n).await?;
    let (cpu1, wcpu1, sw1) = (sys::own_cpu_times(), worker_cpu(), sys::context_switches());
    let cpu = meter.stop();
    f.cpu_machine.push(cpu.machine);
    f.cpu_bench.push(cpu.bench);
    f.rates.push(n as f64 / took.as_secs_f64());
    let (user, system) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    f.parent_cpu_ns
        .push((user + system).as_nanos() as f64 / n as f64);
    f.parent_sys_ns.push(system.as_nanos() as f64 / n as f64);
    f.worker_cpu_ns
        .push((wcpu1.saturating_sub(wcpu0)).as_nanos() as f64 / n as f64);
    let per_k = |count: u64| count as f64 * 1000.0 / n as f64;
    f.switches_per_k
        .push(per_k((sw1.0 + sw1.1) - (sw0.0 + sw0.1)));
    f.preempted_per_k.push(per_k(sw1.1 - sw0.1));
    f.rss_parent_kib = sys::rss_kib(std::process::id()).unwrap_or(0);
    f.rss_workers_kib = pids.iter().filter_map(|&p| sys::rss_kib(p)).collect();
    pool.shutdown().await;
    Ok(())
}

/// W2: `reps` series of `n` sequential calls, each series after `warmup`
/// uncounted calls, on one pool. Also returns the workers' allowed CPUs.
pub(crate) async fn w2_series(
    reps: usize,
    warmup: usize,
    n: usize,
) -> BenchResult<(Vec<Latency>, Vec<String>)> {
    let (pool, _outputs) = start::<Echo>(WORKERS, W1_WINDOW).await?;
    let cpus = pool
        .pids()
        .into_iter()
        .flatten()
        .filter_map(sys::cpus_allowed)
        .collect();
    let mut series = Vec::with_capacity(reps);
    let mut x = 0u64;
    for _ in 0..reps {
        let mut samples = Vec::with_capacity(n);
        for i in 0..warmup + n {
            x += 1;
            let t = Instant::now();
            let y = pool.call(x).await.map_err(|e| e.to_string())?;
            let ns = t.elapsed().as_nanos() as u64;
            if y != 2 * x {
                return Err(format!("W2: call({x}) answered {y}").into());
            }
            if i >= warmup {
                samples.push(ns);
            }
        }
        series.push(Latency::from_nanos(&samples));
    }
    pool.shutdown().await;
    Ok((series, cpus))
}

/// Runs `once` `reps` times on a started pool; returns each wall time and
/// the CPU use over all of them.
pub(crate) async fn reps_on<W: Worker>(
    pool: &Pool<W>,
    outputs: &mut Outputs<W::Output>,
    reps: usize,
    mut once: impl AsyncFnMut(&Pool<W>, &mut Outputs<W::Output>) -> BenchResult<Duration>,
) -> BenchResult<(Vec<Duration>, sys::CpuUse)> {
    let pids: Vec<u32> = pool.pids().into_iter().flatten().collect();
    let meter = sys::CpuMeter::start(&pids);
    let mut walls = Vec::with_capacity(reps);
    for _ in 0..reps {
        walls.push(once(pool, outputs).await?);
    }
    Ok((walls, meter.stop()))
}

/// W3 on a started pool: `n` tasks that each sleep 50 ms; wall time.
pub(crate) async fn w3_once(
    pool: &Pool<Sleeper>,
    outputs: &mut Outputs<u64>,
    n: u64,
) -> BenchResult<Duration> {
    stream(pool, outputs, n, |_| W3_SLEEP_MS, |_| {}).await
}

/// W3's ideal wall time: waves of `workers × 1,000` concurrent 50 ms sleeps.
pub(crate) fn w3_ideal(n: u64, workers: usize) -> Duration {
    let waves = n.div_ceil((workers * W3_IN_FLIGHT) as u64);
    Duration::from_millis(waves * W3_SLEEP_MS)
}

/// W4 on a started pool: `n` tasks of 1 ms busy loop and a 10 ms sleep.
pub(crate) async fn w4_once(
    pool: &Pool<Mixed>,
    outputs: &mut Outputs<u64>,
    n: u64,
) -> BenchResult<Duration> {
    let task = MixedTask {
        spin_us: W4_SPIN_US,
        sleep_ms: W4_SLEEP_MS,
    };
    stream(pool, outputs, n, move |_| task, |_| {}).await
}

/// W4's ideal wall time: the busy loops shared evenly by the workers (each
/// has a core of its own at best).
pub(crate) fn w4_ideal(n: u64, workers: usize) -> Duration {
    let cores = workers.min(std::thread::available_parallelism().map_or(1, usize::from));
    Duration::from_micros(n * u64::from(W4_SPIN_US) / cores as u64)
}

/// The W5 payload: 1 MiB of the byte pattern the peers use.
pub(crate) fn w5_payload() -> ByteBuf {
    ByteBuf::from((0..W5_SIZE).map(|i| i as u8).collect::<Vec<u8>>())
}

/// W5 on a started pool: `n` payloads of 1 MiB echoed; wall time.
///
/// Each echo's length and a few bytes are checked. The consumer hands each
/// echo back to the producer as a later task (it holds the same bytes), so
/// the bench itself copies no payload: every copy measured is the pool's.
pub(crate) async fn w5_once(
    pool: &Pool<Bytes>,
    outputs: &mut Outputs<ByteBuf>,
    n: u64,
) -> BenchResult<Duration> {
    let data = w5_payload();
    let probes: Vec<(usize, u8)> = [0, 1, W5_SIZE / 2, W5_SIZE - 1]
        .iter()
        .map(|&i| (i, data[i]))
        .collect();
    // Enough buffers for every task the pool can hold, and as many outputs.
    let spare = (2 * pool.workers() * pool.worker_capacity()) as u64 + 2;
    let (back, buffers) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..spare.min(n) {
        let _ = back.send(data.clone());
    }
    echo_recycled(pool, outputs, n, buffers, back, &probes, "W5").await
}

/// Echoes `n` payloads through `pool`, the producer taking them from
/// `buffers` (filled beforehand: the payloads in flight at most) and the consumer handing
/// each echo back through `back` as a later task, so the bench copies no
/// payload. Each echo's length and the bytes at `probes` are checked
/// against the first payload's. Wall time.
pub(crate) async fn echo_recycled<W, P>(
    pool: &Pool<W>,
    outputs: &mut Outputs<P>,
    n: u64,
    mut buffers: tokio::sync::mpsc::UnboundedReceiver<P>,
    back: tokio::sync::mpsc::UnboundedSender<P>,
    probes: &[(usize, u8)],
    what: &str,
) -> BenchResult<Duration>
where
    W: Worker<Task = P, Output = P>,
    P: AsRef<[u8]> + Send + Sync + 'static,
{
    let len = probes.iter().map(|&(i, _)| i + 1).max().unwrap_or(0);
    let (mut bad, mut recycled) = (0u64, buffers.len() as u64);
    let no_buffer = format!("{what}: no buffer came back");
    let producer = move |p: Pool<W>| async move {
        for _ in 0..n {
            let buf = buffers.recv().await.ok_or(no_buffer.clone())?;
            p.submit(buf).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let took = stream_with(pool, outputs, n, producer, |b: P| {
        let bytes = b.as_ref();
        if bytes.len() != len || probes.iter().any(|&(i, v)| bytes[i] != v) {
            bad += 1;
        }
        if recycled < n {
            recycled += 1;
            let _ = back.send(b);
        }
    })
    .await?;
    if bad > 0 {
        return Err(format!("{what}: {bad} echoes of {len} bytes differ from their task").into());
    }
    Ok(took)
}

/// W6: starts a pool of `workers` and shuts it down with no tasks; returns
/// (start, stop).
pub(crate) async fn w6_once(workers: usize) -> BenchResult<(Duration, Duration)> {
    let t0 = Instant::now();
    let (pool, outputs) = Pool::<Echo>::builder()
        .workers(workers)
        .name("bench")
        .start()
        .await?;
    let t1 = Instant::now();
    let report = pool.shutdown().await;
    let t2 = Instant::now();
    drop(outputs);
    if !report.drained {
        return Err("W6: the pool did not drain".into());
    }
    Ok((t1 - t0, t2 - t1))
}
