//! Soak mode: resident memory of the parent (and workers) over one long W1
//! stream, sampled as the outputs arrive. Target: after a warm-up of the
//! first tenth of the tasks, the parent's RSS stays within 5 %.

use std::time::{Duration, Instant};

use crate::report::{self, Row, Target};
use crate::stats::Summary;
use crate::sys;
use crate::workers::Echo;
use crate::workloads::{self as wl, BenchResult};

/// Samples taken over the run.
const SAMPLES: u64 = 100;

/// One sample: tasks done, seconds since the first submit, RSS in KiB.
#[derive(Debug, Clone, Copy)]
struct Sample {
    tasks: u64,
    secs: f64,
    parent_kib: u64,
    workers_kib: u64,
}

/// Runs `tasks` W1 tasks through one pool (timing tasks, or not) and
/// prints the memory rows.
pub(crate) fn run(tasks: u64, timings: bool, json: bool) -> BenchResult<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    eprintln!(
        "soak: {tasks} W1 tasks on 2 workers, task timings {}, at {}, load average {}",
        if timings { "on" } else { "off" },
        sys::utc_now(),
        sys::load_average()
    );
    let run = rt.block_on(stream_sampled(tasks, timings))?;
    let rows = rows(tasks, &run);
    if json {
        for row in &rows {
            println!("{}", report::json_line(row));
        }
    } else {
        print_samples(&run.samples);
        print!("{}", report::table(&rows));
    }
    Ok(())
}

/// What one soak measured.
struct Soak {
    samples: Vec<Sample>,
    wall: Duration,
    parent_cpu: Duration,
    workers_cpu: Duration,
}

/// Streams `tasks` W1 tasks through a fresh pool, sampling RSS
/// [`SAMPLES`] times as the outputs arrive.
async fn stream_sampled(tasks: u64, timings: bool) -> BenchResult<Soak> {
    let every = (tasks / SAMPLES).max(1);
    let on = wl::Defaults {
        timings,
        ..wl::Defaults::ON
    };
    let (pool, mut outputs) = wl::start_with::<Echo>(wl::WORKERS, wl::W1_WINDOW, on, None).await?;
    let pids: Vec<u32> = pool.pids().into_iter().flatten().collect();
    let sample = |tasks, secs| Sample {
        tasks,
        secs,
        parent_kib: sys::rss_kib(std::process::id()).unwrap_or(0),
        workers_kib: pids
            .iter()
            .filter_map(|&p| sys::rss_kib(p))
            .max()
            .unwrap_or(0),
    };
    let mut samples = vec![sample(0, 0.0)];
    let (mut done, mut sum) = (0u64, 0u64);
    let cpu0 = sys::own_cpu_time();
    let workers0: Duration = pids.iter().filter_map(|&p| sys::process_cpu_time(p)).sum();
    let t0 = Instant::now();
    let wall = wl::stream(
        &pool,
        &mut outputs,
        tasks,
        |x| x,
        |v| {
            sum = sum.wrapping_add(v);
            done += 1;
            if done % every == 0 {
                samples.push(sample(done, t0.elapsed().as_secs_f64()));
            }
        },
    )
    .await?;
    let parent_cpu = sys::own_cpu_time() - cpu0;
    let workers_cpu = pids
        .iter()
        .filter_map(|&p| sys::process_cpu_time(p))
        .sum::<Duration>()
        .saturating_sub(workers0);
    pool.shutdown().await;
    if sum != tasks.wrapping_mul(tasks.wrapping_sub(1)) {
        return Err("soak: checksum mismatch".into());
    }
    Ok(Soak {
        samples,
        wall,
        parent_cpu,
        workers_cpu,
    })
}

/// The soak's rows: its rate and CPU per task, and each process's RSS
/// trend after the warm-up.
fn rows(tasks: u64, run: &Soak) -> Vec<Row> {
    let samples = &run.samples;
    // The first sample at or past a tenth of the run is the baseline.
    let warm = samples
        .iter()
        .find(|s| s.tasks >= tasks / 10 && s.tasks > 0)
        .copied()
        .unwrap_or(samples[0]);
    let last = *samples.last().expect("at least the first sample");
    let after: Vec<Sample> = samples
        .iter()
        .filter(|s| s.tasks >= warm.tasks)
        .copied()
        .collect();
    let mib = |kib: u64| kib as f64 / 1024.0;
    let one = |v: f64| Summary::of(&[v]);
    let per_task = |d: Duration| d.as_nanos() as f64 / tasks.max(1) as f64;
    // RSS moves up and down by a few hundred KiB as buffers are swapped and
    // freed, so single samples make a poor baseline: judge the trend, a
    // least-squares line through every sample after the warm-up, from its
    // value at the warm-up's end to its value at the last task.
    let trend = |rss: fn(&Sample) -> u64| {
        let pts: Vec<(f64, f64)> = after
            .iter()
            .map(|s| (s.tasks as f64, mib(rss(s))))
            .collect();
        let (a, b) = least_squares(&pts);
        (a + b * warm.tasks as f64, a + b * last.tasks as f64)
    };
    let (p0, p1) = trend(|s| s.parent_kib);
    let (w0, w1) = trend(|s| s.workers_kib);
    let spread = |rss: fn(&Sample) -> u64| {
        let v: Vec<f64> = after.iter().map(|s| mib(rss(s))).collect();
        Summary::of(&v)
    };
    let (ps, ws) = (spread(|s| s.parent_kib), spread(|s| s.workers_kib));
    let series: Vec<[f64; 3]> = samples
        .iter()
        .map(|s| [s.tasks as f64, mib(s.parent_kib), mib(s.workers_kib)])
        .collect();
    vec![
        Row::new(
            "soak-rate",
            one(tasks as f64 / run.wall.as_secs_f64()),
            "tasks/s",
        )
        .with("tasks", tasks)
        .with("warmup_tasks", warm.tasks)
        .with("parent_cpu_ns_per_task", per_task(run.parent_cpu))
        .with("worker_cpu_ns_per_task", per_task(run.workers_cpu)),
        Row::new("soak-rss-parent-trend", one(p1), "MiB")
            .target("trend-after-warmup", p0, Target::AtMost(1.05))
            .with("samples_tasks_parent_worker_mib", serde_json::json!(series)),
        Row {
            min: ps.min,
            max: ps.max,
            runs: ps.runs,
            ..Row::new("soak-rss-parent-final", one(mib(last.parent_kib)), "MiB")
                .vs("rss-after-warmup", mib(warm.parent_kib))
        },
        Row::new("soak-rss-worker-trend", one(w1), "MiB").target(
            "trend-after-warmup",
            w0,
            Target::AtMost(1.05),
        ),
        Row {
            min: ws.min,
            max: ws.max,
            runs: ws.runs,
            ..Row::new("soak-rss-worker-final", one(mib(last.workers_kib)), "MiB")
                .vs("rss-after-warmup", mib(warm.workers_kib))
        },
    ]
}

/// Prints the RSS samples as a table.
fn print_samples(samples: &[Sample]) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!("RSS over the soak (MiB; the worker column is the larger worker):");
    println!(
        "{:>12}  {:>8}  {:>8}  {:>8}",
        "tasks", "secs", "parent", "worker"
    );
    for s in samples {
        println!(
            "{:>12}  {:>8.2}  {:>8.2}  {:>8.2}",
            s.tasks,
            s.secs,
            mib(s.parent_kib),
            mib(s.workers_kib)
        );
    }
    println!();
}

/// The line `y = a + b x` closest to the points in least squares: (a, b).
fn least_squares(pts: &[(f64, f64)]) -> (f64, f64) {
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return (pts.first().map_or(0.0, |p| p.1), 0.0);
    }
    let (sx, sy) = pts
        .iter()
        .fold((0.0, 0.0), |(sx, sy), &(x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (sxy, sxx) = pts.iter().fold((0.0, 0.0), |(sxy, sxx), &(x, y)| {
        (sxy + (x - mx) * (y - my), sxx + (x - mx) * (x - mx))
    });
    let b = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (my - b * mx, b)
}

#[cfg(test)]
mod tests {
    use super::least_squares;

    #[test]
    fn a_flat_but_noisy_series_has_no_slope() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64, if i % 2 == 0 { 5.0 } else { 6.0 }))
            .collect();
        let (a, b) = least_squares(&pts);
        assert!(b.abs() < 0.1 && (a - 5.5).abs() < 0.5, "{a} {b}");
        let (a, b) = least_squares(&[(0.0, 1.0), (2.0, 5.0)]);
        assert_eq!((a, b), (1.0, 2.0));
    }
}
