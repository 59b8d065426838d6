//! Control workloads (issue 17): how fast a cancel reaches its task's end,
//! and how short calls fare beside long tasks under each dispatch policy.
//!
//! - `cancel-p50`/`cancel-p99`: from `Pool::cancel` of a running task (a
//!   sleep on the worker's loop) until its `Cancelled` item reaches the
//!   parent's consumer. Target: p50 at most twice W2's p50 of the same run
//!   (a cancel is one frame each way, as a call is).
//! - `hol-p99`: p99 of 2,000 sequential short calls to a pool of two
//!   workers, one of which runs 100 ms busy tasks back to back, under
//!   least-loaded dispatch. Target: at most twice the p99 of the same calls
//!   with no long tasks (`hol-base-p99`). `hol-rr-p99` is round-robin
//!   beside it (200 calls: each other one waits for a long task).

use std::time::{Duration, Instant};

use looppool::{Dispatch, Output, Pool};
use tokio::runtime::Runtime;

use crate::report::{progress, Row, Target};
use crate::stats::{Latency, Summary};
use crate::workers::{Mixed, MixedTask, Sleeper};
use crate::workloads::BenchResult;

/// Cancels measured per repetition.
const CANCELS: usize = 2_000;
/// Short calls per repetition, least-loaded and without long tasks.
const HOL_CALLS: usize = 2_000;
/// Short calls per repetition under round-robin, each other one behind a
/// long task.
const HOL_RR_CALLS: usize = 40;
/// The long tasks' busy loop.
const LONG_SPIN_US: u32 = 100_000;

/// Runs the chosen control workloads; `w2_p50` is W2's p50 of this run, in
/// µs, when it ran.
pub(crate) fn run(
    runs: impl Fn(&str) -> bool,
    reps: usize,
    w2_p50: Option<f64>,
    rt: &Runtime,
    rows: &mut Vec<Row>,
) -> BenchResult<()> {
    if runs("cancel") {
        progress(&format!("cancel: {CANCELS} cancels of a running task"));
        let series = rt.block_on(cancel_series(reps))?;
        let p50 = Summary::of(&series.iter().map(|l| l.p50_us).collect::<Vec<_>>());
        let p99 = Summary::of(&series.iter().map(|l| l.p99_us).collect::<Vec<_>>());
        let mut r50 = Row::new("cancel-p50", p50, "us").with("n", CANCELS);
        if let Some(w2) = w2_p50 {
            r50 = r50.target("W2-p50", w2, Target::AtMost(2.0));
        }
        rows.push(r50);
        rows.push(Row::new("cancel-p99", p99, "us").with("n", CANCELS));
    }
    if runs("hol") {
        progress(&format!("hol: {HOL_CALLS} short calls, no long tasks"));
        let base = rt.block_on(hol_series(reps, Dispatch::LeastLoaded, false, HOL_CALLS))?;
        progress(&format!(
            "hol: {HOL_CALLS} short calls beside 100 ms tasks, least-loaded"
        ));
        let ll = rt.block_on(hol_series(reps, Dispatch::LeastLoaded, true, HOL_CALLS))?;
        progress(&format!(
            "hol: {HOL_RR_CALLS} short calls beside 100 ms tasks, round-robin"
        ));
        let rr = rt.block_on(hol_series(reps, Dispatch::RoundRobin, true, HOL_RR_CALLS))?;
        let p99 = |s: &[Latency]| Summary::of(&s.iter().map(|l| l.p99_us).collect::<Vec<_>>());
        let base = p99(&base);
        rows.push(Row::new("hol-base-p99", base, "us").with("n", HOL_CALLS));
        rows.push(
            Row::new("hol-p99", p99(&ll), "us")
                .target("hol-base-p99", base.median, Target::AtMost(2.0))
                .with("n", HOL_CALLS)
                .with("dispatch", "least-loaded"),
        );
        rows.push(
            Row::new("hol-rr-p99", p99(&rr), "us")
                .vs("hol-base-p99", base.median)
                .with("n", HOL_RR_CALLS)
                .with("dispatch", "round-robin"),
        );
    }
    Ok(())
}

/// Starts a pool of two `W` workers with `dispatch`.
async fn start<W: looppool::Worker>(
    dispatch: Dispatch,
) -> BenchResult<(Pool<W>, looppool::Outputs<W::Output>)> {
    let mut builder = Pool::<W>::builder()
        .workers(2)
        .dispatch(dispatch)
        .name("bench");
    if let Some(program) = std::env::var_os(crate::workloads::PROGRAM_ENV) {
        builder = builder.program(program);
    }
    Ok(builder.start().await?)
}

async fn cancel_series(reps: usize) -> BenchResult<Vec<Latency>> {
    let (pool, mut outputs) = start::<Sleeper>(Dispatch::RoundRobin).await?;
    let mut series = Vec::with_capacity(reps);
    for _ in 0..reps {
        let mut samples = Vec::with_capacity(CANCELS);
        for _ in 0..CANCELS {
            let id = pool.submit_to(0, 60_000).await?;
            // Tasks start in order: once this is answered, the long one runs.
            pool.call_to(0, 0).await.map_err(|e| e.to_string())?;
            let t = Instant::now();
            if !pool.cancel(id) {
                return Err("cancel: the running task was not held".into());
            }
            match outputs.next().await {
                Some(Output::Cancelled { task, .. }) if task == id => {}
                other => return Err(format!("cancel: expected the cancel, got {other:?}").into()),
            }
            samples.push(t.elapsed().as_nanos() as u64);
        }
        series.push(Latency::from_nanos(&samples));
    }
    pool.shutdown().await;
    Ok(series)
}

async fn hol_series(
    reps: usize,
    dispatch: Dispatch,
    long: bool,
    calls: usize,
) -> BenchResult<Vec<Latency>> {
    let (pool, _outputs) = start::<Mixed>(dispatch).await?;
    let short = MixedTask {
        spin_us: 0,
        sleep_ms: 0,
    };
    // Two feeders, each calling a long task on worker 0 as soon as its
    // last one ended: one always runs and the next waits behind it, with
    // no idle gap between them.
    let long_task = MixedTask {
        spin_us: LONG_SPIN_US,
        sleep_ms: 0,
    };
    let feeders: Vec<_> = (0..if long { 2 } else { 0 })
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { while pool.call_to(0, long_task).await.is_ok() {} })
        })
        .collect();
    if long {
        // The long tasks are under way before the first short call.
        while pool.in_flight()[0] < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut series = Vec::with_capacity(reps);
    for _ in 0..reps {
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            pool.call(short).await.map_err(|e| e.to_string())?;
            samples.push(t.elapsed().as_nanos() as u64);
        }
        series.push(Latency::from_nanos(&samples));
    }
    for feeder in feeders {
        feeder.abort();
    }
    pool.shutdown_timeout(Duration::from_secs(1)).await;
    Ok(series)
}
