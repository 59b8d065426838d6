//! The main mode: the raw limits first, then the pool workloads, each
//! repeated and reported as its median, compared with its limit.

use std::time::Duration;

use tokio::runtime::{Builder, Runtime};

use crate::cli::{Options, Plan};
use crate::raw;
use crate::report::{self, progress, Row, Target};
use crate::stats::{median, Latency, Summary};
use crate::sys::{self, Machine, Pinned};
use crate::workers::{Bytes, Mixed, Sleeper};
use crate::workloads::{self as wl, BenchResult};

/// The raw figures the workloads are compared with.
#[derive(Debug, Default)]
struct Limits {
    echo_1pair: Option<f64>,
    echo_2pair: Option<f64>,
    /// (p50, p99) in µs: as the kernel places the processes, and pinned.
    ping: Option<(f64, f64)>,
    ping_pinned: Option<(f64, f64)>,
    bulk: Option<f64>,
}

/// Runs the benchmark and prints its rows.
pub(crate) fn run(opts: &Options) -> BenchResult<()> {
    let plan = Plan::new(opts.quick);
    let machine = Machine::describe();
    let header = format!(
        "looppool-bench {} at {}: {} CPUs ({}), kernel {}, load average {}{}",
        env!("CARGO_PKG_VERSION"),
        sys::utc_now(),
        machine.nproc,
        machine.cpu_model,
        machine.kernel,
        machine.load,
        if opts.quick { ", --quick" } else { "" }
    );
    if opts.json {
        eprintln!("{header}");
    } else {
        println!("{header}\n");
    }
    let pin_cpu = match opts.pin_cpu {
        Some(cpu) => cpu,
        None => sys::first_allowed_cpu()?,
    };
    let mut rows = Vec::new();
    let limits = raw_limits(opts, &plan, pin_cpu, &mut rows)?;
    let rt = Builder::new_current_thread().enable_all().build()?;
    if opts.runs("W1") {
        w1(&plan, &limits, &rt, &mut rows)?;
    }
    if opts.runs("W1-LONG") {
        w1_long(&plan, &rt, &mut rows)?;
    }
    if opts.runs("hb") {
        w1_heartbeat_cost(&plan, &rt, &mut rows)?;
    }
    if opts.runs("hist") {
        w1_timings_cost(&plan, &rt, &mut rows)?;
    }
    if opts.runs("W2") {
        w2(&plan, pin_cpu, &limits, &rt, &mut rows)?;
    }
    if opts.runs("W3") {
        w3(&plan, &rt, &mut rows)?;
    }
    if opts.runs("W4") {
        w4(&plan, &rt, &mut rows)?;
    }
    if opts.runs("W5") {
        w5(&plan, &limits, &rt, &mut rows)?;
        let w5 = rows.iter().find(|r| r.workload == "W5").map(|r| r.value);
        crate::blobs::w5_blob(&plan, w5, &rt, &mut rows)?;
    }
    if opts.runs("W5-64MIB") {
        crate::blobs::w5_64mib(&plan, &rt, &mut rows)?;
    }
    if opts.runs("W6") {
        w6(&plan, &rt, &mut rows)?;
    }
    let w2_p50 = rows
        .iter()
        .find(|r| r.workload == "W2-p50")
        .map(|r| r.value);
    crate::control::run(|w| opts.runs(w), plan.reps, w2_p50, &rt, &mut rows)?;
    if crate::broker::chosen(opts) {
        crate::broker::run(opts, &rt, &mut rows)?;
    }
    if opts.json {
        for row in &rows {
            println!("{}", report::json_line(row));
        }
    } else {
        print!("{}", report::table(&rows));
        println!("\nload average after the run: {}", sys::load_average());
    }
    Ok(())
}

/// Runs `f` `reps` times and collects its results.
fn repeat<T>(reps: usize, mut f: impl FnMut() -> BenchResult<T>) -> BenchResult<Vec<T>> {
    (0..reps).map(|_| f()).collect()
}

fn raw_limits(
    opts: &Options,
    plan: &Plan,
    pin_cpu: usize,
    rows: &mut Vec<Row>,
) -> BenchResult<Limits> {
    let all = opts.runs("raw");
    let mut limits = Limits::default();
    if all || opts.runs("W1") {
        progress("raw: pipelined echo of 20-byte frames, 1 pair");
        let v = repeat(plan.reps, || {
            Ok(raw::echo_frames_per_sec(1, plan.echo_frames_1pair)?)
        })?;
        let s = Summary::of(&v);
        limits.echo_1pair = Some(s.median);
        rows.push(Row::new("raw-echo-1pair", s, "frames/s").with("frames", plan.echo_frames_1pair));
        progress("raw: pipelined echo of 20-byte frames, 2 pairs");
        let v = repeat(plan.reps, || {
            Ok(raw::echo_frames_per_sec(
                2,
                plan.echo_frames_per_pair_2pair,
            )?)
        })?;
        let s = Summary::of(&v);
        limits.echo_2pair = Some(s.median);
        rows.push(
            Row::new("raw-echo-2pair", s, "frames/s")
                .with("frames_per_pair", plan.echo_frames_per_pair_2pair),
        );
    }
    if all || opts.runs("W2") {
        progress("raw: blocking ping-pong of 20-byte frames");
        let series = raw::ping_pong(plan.reps, plan.ping_warmup, plan.ping_n)?;
        limits.ping = Some(latency_rows(rows, "raw-pingpong", &series, None));
        progress(&format!(
            "raw: ping-pong, everything pinned to CPU {}",
            pin_cpu
        ));
        let pinned = Pinned::all_threads_to(pin_cpu)?;
        let series = raw::ping_pong(plan.reps, plan.ping_warmup, plan.ping_n)?;
        drop(pinned);
        limits.ping_pinned = Some(latency_rows(rows, "raw-pingpong-pinned", &series, None));
    }
    if all || opts.runs("W5") {
        progress("raw: echo of 1 MiB frames");
        let v = repeat(plan.reps, || Ok(raw::bulk_mb_per_sec(plan.bulk_n)?))?;
        let s = Summary::of(&v);
        limits.bulk = Some(s.median);
        rows.push(Row::new("raw-bulk-1MiB", s, "MB/s").with("frames", plan.bulk_n));
    }
    Ok(limits)
}

/// Pushes a p50 and a p99 row for a latency series (each the median over
/// repetitions); with `limits`, judged against the raw (p50, p99) at 2× and
/// 3×. Returns the medians (p50, p99).
fn latency_rows(
    rows: &mut Vec<Row>,
    name: &str,
    series: &[Latency],
    limits: Option<(&str, (f64, f64))>,
) -> (f64, f64) {
    let p50 = Summary::of(&series.iter().map(|l| l.p50_us).collect::<Vec<_>>());
    let p99 = Summary::of(&series.iter().map(|l| l.p99_us).collect::<Vec<_>>());
    let mean = median(&series.iter().map(|l| l.mean_us).collect::<Vec<_>>());
    let max = series.iter().map(|l| l.max_us).fold(0.0, f64::max);
    let mut r50 = Row::new(format!("{name}-p50"), p50, "us").with("mean_us", mean);
    let mut r99 = Row::new(format!("{name}-p99"), p99, "us").with("max_us", max);
    if let Some((of, (l50, l99))) = limits {
        r50 = r50.target(format!("{of}-p50"), l50, Target::AtMost(2.0));
        r99 = r99.target(format!("{of}-p99"), l99, Target::AtMost(3.0));
    }
    rows.push(r50);
    rows.push(r99);
    (p50.median, p99.median)
}

fn w1(plan: &Plan, limits: &Limits, rt: &Runtime, rows: &mut Vec<Row>) -> BenchResult<()> {
    let warmup = Duration::from_millis(plan.w1_warmup_ms);
    for (name, flavour) in [("W1", "current_thread"), ("W1-mt", "multi_thread")] {
        progress(&format!(
            "{name}: {} tiny tasks, {flavour} parent",
            plan.w1_n
        ));
        let f = if flavour == "current_thread" {
            rt.block_on(wl::w1_series(plan.reps, plan.w1_n, warmup))?
        } else {
            let mt = Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            mt.block_on(wl::w1_series(plan.reps, plan.w1_n, warmup))?
        };
        let s = Summary::of(&f.rates);
        let diag = |row: Row| {
            row.with("runtime", flavour)
                .with("n", plan.w1_n)
                .with(
                    "warmup_s_per_pool",
                    f.warmup.0.as_secs_f64() / f.rates.len().max(1) as f64,
                )
                .with("parent_cpu_ns_per_task", median(&f.parent_cpu_ns))
                .with("parent_sys_ns_per_task", median(&f.parent_sys_ns))
                .with("worker_cpu_ns_per_task", median(&f.worker_cpu_ns))
                .with("parent_switches_per_1k_tasks", median(&f.switches_per_k))
                .with("parent_preempted_per_1k_tasks", median(&f.preempted_per_k))
                .with("cpus_busy_machine", median(&f.cpu_machine))
                .with("cpus_bench", median(&f.cpu_bench))
                .with("rates_per_pool", f.rates.clone())
        };
        let mut row = diag(Row::new(name, s, "tasks/s"));
        if let Some(echo1) = limits.echo_1pair {
            row = if name == "W1" {
                row.target("raw-echo-1pair", echo1, Target::AtLeast(0.15))
            } else {
                row.vs("raw-echo-1pair", echo1)
            };
        }
        rows.push(row);
        if let Some(echo2) = limits.echo_2pair {
            rows.push(
                Row::new(format!("{name}-vs-2pair"), s, "tasks/s").vs("raw-echo-2pair", echo2),
            );
        }
        if name == "W1" {
            let one = |kib: u64| Summary::of(&[kib as f64 / 1024.0]);
            rows.push(Row::new(
                "rss-parent-after-W1",
                one(f.rss_parent_kib),
                "MiB",
            ));
            let max = f.rss_workers_kib.iter().copied().max().unwrap_or(0);
            rows.push(
                Row::new("rss-worker-after-W1", one(max), "MiB")
                    .with("each_kib", f.rss_workers_kib.clone()),
            );
        }
    }
    Ok(())
}

/// Pools W1-long keeps for a whole run of `Plan::w1_long_n` tasks each.
const W1_LONG_POOLS: usize = 3;

/// W1-long: three pools in a row, each kept for `w1_long_n` tasks, against
/// the median fresh-pool W1 of the same run (measured here when W1 was not
/// chosen). The row's value is the slowest pool's rate: every pool must
/// keep its speed for its whole life, not only the median one.
fn w1_long(plan: &Plan, rt: &Runtime, rows: &mut Vec<Row>) -> BenchResult<()> {
    let warmup = Duration::from_millis(plan.w1_warmup_ms);
    let fresh = match rows.iter().find(|r| r.workload == "W1") {
        Some(row) => row.value,
        None => {
            progress(&format!(
                "W1-long: fresh-pool W1 for the comparison, {} tasks",
                plan.w1_n
            ));
            let f = rt.block_on(wl::w1_series(plan.reps, plan.w1_n, warmup))?;
            Summary::of(&f.rates).median
        }
    };
    let pools = w1_long_pools(plan, rt, "W1-long", None)?;
    rows.push(w1_long_row("W1-long", plan, &pools, fresh));
    // The same with the parent on one CPU and the workers on the others,
    // as `PoolBuilder::worker_cpus` allows: what a fixed placement gives.
    let allowed = sys::allowed_cpus()?;
    if let [parent_cpu, rest @ ..] = allowed.as_slice() {
        if !rest.is_empty() {
            let pinned = Pinned::all_threads_to(*parent_cpu)?;
            let placed = w1_long_pools(plan, rt, "W1-long-placed", Some(rest));
            drop(pinned);
            rows.push(
                w1_long_row("W1-long-placed", plan, &placed?, fresh)
                    .with("parent_cpu", *parent_cpu)
                    .with("worker_cpus", rest.to_vec()),
            );
        }
    }
    Ok(())
}

/// Runs W1-long's pools one after another.
fn w1_long_pools(
    plan: &Plan,
    rt: &Runtime,
    name: &str,
    cpus: Option<&[usize]>,
) -> BenchResult<Vec<wl::W1Long>> {
    let warmup = Duration::from_millis(plan.w1_warmup_ms);
    let mut pools = Vec::new();
    for i in 1..=W1_LONG_POOLS {
        progress(&format!(
            "{name}: pool {i} of {W1_LONG_POOLS}, {} tasks",
            plan.w1_long_n
        ));
        pools.push(rt.block_on(wl::w1_long_pool(plan.w1_long_n, plan.w1_n, warmup, cpus))?);
    }
    Ok(pools)
}

/// The row of W1-long's pools: the slowest pool's rate against the fresh
/// pools' median.
fn w1_long_row(name: &str, plan: &Plan, pools: &[wl::W1Long], fresh: f64) -> Row {
    let rates: Vec<f64> = pools.iter().map(|p| p.rate).collect();
    let slowest = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let chunk_span = |p: &wl::W1Long| {
        let min = p.chunk_rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = p.chunk_rates.iter().copied().fold(0.0, f64::max);
        vec![min, median(&p.chunk_rates), max]
    };
    Row::new(name, Summary::of(&[slowest]), "tasks/s")
        .with("n_per_pool", plan.w1_long_n)
        .with("rates_per_pool", rates)
        .with(
            "chunk_rates_min_median_max",
            pools.iter().map(chunk_span).collect::<Vec<_>>(),
        )
        .with(
            "chunk_rates",
            pools
                .iter()
                .map(|p| p.chunk_rates.clone())
                .collect::<Vec<_>>(),
        )
        .with("chunk", plan.w1_n)
        .with(
            "parent_preempted_per_1k_tasks",
            pools.iter().map(|p| p.preempted_per_k).collect::<Vec<_>>(),
        )
        .target("W1-fresh-median", fresh, Target::AtLeast(0.8))
}

/// W1 with heartbeats (the default) against W1 without, alternating.
fn w1_heartbeat_cost(plan: &Plan, rt: &Runtime, rows: &mut Vec<Row>) -> BenchResult<()> {
    progress(&format!(
        "hb: {} tiny tasks, heartbeats on and off in turn",
        plan.w1_n
    ));
    let off = wl::Defaults {
        heartbeat: false,
        ..wl::Defaults::ON
    };
    w1_pair_rows(plan, rt, rows, off, ["W1-heartbeat", "W1-no-heartbeat"])
}

/// W1 with task timings (the default) against W1 without, alternating.
fn w1_timings_cost(plan: &Plan, rt: &Runtime, rows: &mut Vec<Row>) -> BenchResult<()> {
    progress(&format!(
        "hist: {} tiny tasks, task timings on and off in turn",
        plan.w1_n
    ));
    let off = wl::Defaults {
        timings: false,
        ..wl::Defaults::ON
    };
    w1_pair_rows(plan, rt, rows, off, ["W1-timings", "W1-no-timings"])
}

/// The rows of W1 on default pools (`names[0]`) against W1 on pools with
/// the defaults `off` (`names[1]`), in alternating repetitions.
fn w1_pair_rows(
    plan: &Plan,
    rt: &Runtime,
    rows: &mut Vec<Row>,
    off: wl::Defaults,
    names: [&str; 2],
) -> BenchResult<()> {
    let warmup = Duration::from_millis(plan.w1_warmup_ms);
    let (on, off) = rt.block_on(wl::w1_pair_series(
        plan.reps,
        plan.w1_n,
        warmup,
        wl::Defaults::ON,
        off,
    ))?;
    let off_rate = Summary::of(&off.rates);
    let cpu = |f: &wl::W1Figures| median(&f.parent_cpu_ns);
    rows.push(
        Row::new(names[1], off_rate, "tasks/s")
            .with("parent_cpu_ns_per_task", cpu(&off))
            .with("rates_per_pool", off.rates.clone()),
    );
    rows.push(
        Row::new(names[0], Summary::of(&on.rates), "tasks/s")
            .with("parent_cpu_ns_per_task", cpu(&on))
            .with("rates_per_pool", on.rates.clone())
            .target(names[1], off_rate.median, Target::AtLeast(0.98)),
    );
    Ok(())
}

fn w2(
    plan: &Plan,
    pin_cpu: usize,
    limits: &Limits,
    rt: &Runtime,
    rows: &mut Vec<Row>,
) -> BenchResult<()> {
    progress(&format!(
        "W2: {} sequential calls, kernel placement",
        plan.w2_n
    ));
    let (series, cpus) = rt.block_on(wl::w2_series(plan.reps, plan.w2_warmup, plan.w2_n))?;
    let start = rows.len();
    latency_rows(
        rows,
        "W2",
        &series,
        limits.ping.map(|l| ("raw-pingpong", l)),
    );
    for row in &mut rows[start..] {
        row.extra.insert("workers_cpus".into(), cpus.clone().into());
    }
    progress(&format!("W2: pinned to CPU {}", pin_cpu));
    let pinned = Pinned::all_threads_to(pin_cpu)?;
    let result = rt.block_on(wl::w2_series(plan.reps, plan.w2_warmup, plan.w2_n));
    drop(pinned);
    let (series, cpus) = result?;
    let start = rows.len();
    latency_rows(
        rows,
        "W2-pinned",
        &series,
        limits.ping_pinned.map(|l| ("raw-pingpong-pinned", l)),
    );
    for row in &mut rows[start..] {
        row.extra.insert("workers_cpus".into(), cpus.clone().into());
    }
    Ok(())
}

fn w3(plan: &Plan, rt: &Runtime, rows: &mut Vec<Row>) -> BenchResult<()> {
    progress(&format!("W3: {} tasks of a 50 ms sleep", plan.w3_n));
    let (walls, cpu) = rt.block_on(async {
        let (pool, mut outputs) = wl::start::<Sleeper>(wl::WORKERS, wl::W3_IN_FLIGHT).await?;
        wl::probe_all(&pool, || 0).await?;
        let n = plan.w3_n;
        let r = wl::reps_on(&pool, &mut outputs, plan.reps, async |p, o| {
            wl::w3_once(p, o, n).await
        })
        .await?;
        pool.shutdown().await;
        BenchResult::Ok(r)
    })?;
    let ideal = wl::w3_ideal(plan.w3_n, wl::WORKERS).as_secs_f64();
    rows.push(
        with_cpu(Row::new("W3", secs(&walls), "s"), cpu)
            .target("ideal", ideal, Target::AtMost(1.05))
            .with("n", plan.w3_n)
            .with("in_flight_per_worker", wl::W3_IN_FLIGHT),
    );
    Ok(())
}

fn w4(plan: &Plan, rt: &Runtime, rows: &mut Vec<Row>) -> BenchResult<()> {
    progress(&format!(
        "W4: {} tasks of 1 ms CPU + 10 ms sleep",
        plan.w4_n
    ));
    let (walls, cpu) = rt.block_on(async {
        let (pool, mut outputs) = wl::start::<Mixed>(wl::WORKERS, wl::W3_IN_FLIGHT).await?;
        wl::probe_all(&pool, || crate::workers::MixedTask {
            spin_us: 0,
            sleep_ms: 0,
        })
        .await?;
        let n = plan.w4_n;
        let r = wl::reps_on(&pool, &mut outputs, plan.reps, async |p, o| {
            wl::w4_once(p, o, n).await
        })
        .await?;
        pool.shutdown().await;
        BenchResult::Ok(r)
    })?;
    let ideal = wl::w4_ideal(plan.w4_n, wl::WORKERS).as_secs_f64();
    rows.push(
        with_cpu(Row::new("W4", secs(&walls), "s"), cpu)
            .target("ideal", ideal, Target::AtMost(1.10))
            .with("n", plan.w4_n)
            .with("in_flight_per_worker", wl::W3_IN_FLIGHT),
    );
    Ok(())
}

fn w5(plan: &Plan, limits: &Limits, rt: &Runtime, rows: &mut Vec<Row>) -> BenchResult<()> {
    progress(&format!("W5: {} payloads of 1 MiB echoed", plan.w5_n));
    let (walls, cpu) = rt.block_on(async {
        let (pool, mut outputs) = wl::start::<Bytes>(wl::WORKERS, wl::W5_IN_FLIGHT).await?;
        // Warm-up: the buffers grow to their working size.
        wl::w5_once(&pool, &mut outputs, plan.w5_n.min(50)).await?;
        let n = plan.w5_n;
        let r = wl::reps_on(&pool, &mut outputs, plan.reps, async |p, o| {
            wl::w5_once(p, o, n).await
        })
        .await?;
        pool.shutdown().await;
        BenchResult::Ok(r)
    })?;
    let bytes = (plan.w5_n as usize * wl::W5_SIZE) as f64;
    let rates: Vec<f64> = walls
        .iter()
        .map(|w| bytes / w.as_secs_f64() / 1e6)
        .collect();
    let mut row = with_cpu(Row::new("W5", Summary::of(&rates), "MB/s"), cpu)
        .with("n", plan.w5_n)
        .with("in_flight_per_worker", wl::W5_IN_FLIGHT);
    if let Some(bulk) = limits.bulk {
        row = row.target("raw-bulk-1MiB", bulk, Target::AtLeast(0.5));
    }
    rows.push(row);
    Ok(())
}

/// The median of wall times, in seconds.
fn secs(walls: &[Duration]) -> Summary {
    Summary::of(&walls.iter().map(Duration::as_secs_f64).collect::<Vec<_>>())
}

/// Adds how busy the machine and the bench were, in CPUs on average.
fn with_cpu(row: Row, cpu: sys::CpuUse) -> Row {
    row.with("cpus_busy_machine", cpu.machine)
        .with("cpus_bench", cpu.bench)
}

fn w6(plan: &Plan, rt: &Runtime, rows: &mut Vec<Row>) -> BenchResult<()> {
    for workers in [2, 8] {
        progress(&format!("W6: start and stop a pool of {workers}"));
        let times = repeat(plan.reps, || rt.block_on(wl::w6_once(workers)))?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let start: Vec<f64> = times.iter().map(|t| ms(t.0)).collect();
        let stop: Vec<f64> = times.iter().map(|t| ms(t.1)).collect();
        let total: Vec<f64> = times.iter().map(|t| ms(t.0 + t.1)).collect();
        rows.push(Row::new(
            format!("W6-{workers}-start"),
            Summary::of(&start),
            "ms",
        ));
        rows.push(Row::new(
            format!("W6-{workers}-stop"),
            Summary::of(&stop),
            "ms",
        ));
        let mut row = Row::new(format!("W6-{workers}"), Summary::of(&total), "ms");
        if workers == 8 {
            row = row.target("budget", 20.0, Target::AtMost(1.0));
        }
        rows.push(row);
    }
    Ok(())
}
