//! Peer mode: one cold run of one workload, printed as one JSON line in the
//! record format of the Python peer harness, so that its `run_all.py
//! --extra-peer 'looppool-rs=.../looppool-bench'` runs this binary in the
//! same rounds as the Python pools.
//!
//! The harness calls `looppool-bench --workload Wn` (plus `--workers N` for
//! W6 and `--n N` for its quick mode). Like the Python peers, a run starts
//! its own pool and is not warmed up; `startup_s` (pool start until every
//! worker answered a probe) is reported apart from the task phase.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::stats::Latency;
use crate::sys;
use looppool::{Outputs, Pool, Worker};

use crate::workers::{Bytes, Echo, Mixed, MixedTask, Sleeper};
use crate::workloads::{self as wl, BenchResult};

/// The name this binary reports in the `peer` field.
pub(crate) const PEER: &str = "looppool-rs";

/// One record, with the fields `summarize.py` reads.
#[derive(Debug, Serialize)]
struct Record {
    peer: &'static str,
    workload: String,
    params: Map<String, Value>,
    wall_s: f64,
    rate: Option<f64>,
    rate_unit: &'static str,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

fn round(v: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    (v * k).round() / k
}

fn secs(d: Duration) -> f64 {
    round(d.as_secs_f64(), 6)
}

/// Runs `workload` once and prints its record.
pub(crate) fn run(workload: &str, workers: usize, n: Option<u64>) -> BenchResult<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let record = rt.block_on(measure(workload, workers, n))?;
    println!("{}", serde_json::to_string(&record)?);
    Ok(())
}

/// The common frame of W1–W5: start, probe, the task phase, shutdown.
#[derive(Debug, Clone, Copy)]
struct Phase {
    startup: Duration,
    wall: Duration,
    shutdown: Duration,
    seen: usize,
}

async fn measure(workload: &str, workers: usize, n: Option<u64>) -> BenchResult<Record> {
    let mut params = Map::new();
    params.insert("workers".into(), workers.into());
    params.insert("runtime".into(), "current_thread".into());
    let mut extra = Map::new();
    let (phase, rate, unit) = match workload {
        "W1" => {
            let n = n.unwrap_or(200_000);
            window(&mut params, wl::W1_WINDOW, workers);
            params.insert("n".into(), n.into());
            let (pool, mut out, mut phase) = begin::<Echo>(workers, wl::W1_WINDOW, || 0).await?;
            phase.wall = wl::w1_once(&pool, &mut out, n).await?;
            end(&pool, &mut phase).await;
            (phase, n as f64 / phase.wall.as_secs_f64(), "tasks/s")
        }
        "W2" => measure_w2(workers, n, &mut params, &mut extra).await?,
        "W3" => {
            let n = n.unwrap_or(20_000);
            window(&mut params, wl::W3_IN_FLIGHT, workers);
            params.insert("n".into(), n.into());
            params.insert("sleep_s".into(), json!(wl::W3_SLEEP_MS as f64 / 1e3));
            extra.insert("scaled".into(), (n != 20_000).into());
            extra.insert("ideal_wall_s".into(), secs(wl::w3_ideal(n, workers)).into());
            let (pool, mut out, mut phase) =
                begin::<Sleeper>(workers, wl::W3_IN_FLIGHT, || 0).await?;
            phase.wall = wl::w3_once(&pool, &mut out, n).await?;
            end(&pool, &mut phase).await;
            (phase, n as f64 / phase.wall.as_secs_f64(), "tasks/s")
        }
        "W4" => {
            let n = n.unwrap_or(4_000);
            window(&mut params, wl::W3_IN_FLIGHT, workers);
            params.insert("n".into(), n.into());
            params.insert("spin_s".into(), json!(f64::from(wl::W4_SPIN_US) / 1e6));
            params.insert("sleep_s".into(), json!(f64::from(wl::W4_SLEEP_MS) / 1e3));
            extra.insert(
                "ideal_wall_s_async".into(),
                json!(round(
                    n as f64 * f64::from(wl::W4_SPIN_US) / 1e6 / workers as f64,
                    3
                )),
            );
            let probe = || MixedTask {
                spin_us: 0,
                sleep_ms: 0,
            };
            let (pool, mut out, mut phase) =
                begin::<Mixed>(workers, wl::W3_IN_FLIGHT, probe).await?;
            phase.wall = wl::w4_once(&pool, &mut out, n).await?;
            end(&pool, &mut phase).await;
            (phase, n as f64 / phase.wall.as_secs_f64(), "tasks/s")
        }
        "W5" => {
            let n = n.unwrap_or(1_000);
            window(&mut params, wl::W5_IN_FLIGHT, workers);
            params.insert("n".into(), n.into());
            params.insert("payload_bytes".into(), wl::W5_SIZE.into());
            let (pool, mut out, mut phase) =
                begin::<Bytes>(workers, wl::W5_IN_FLIGHT, Default::default).await?;
            phase.wall = wl::w5_once(&pool, &mut out, n).await?;
            end(&pool, &mut phase).await;
            let wall = phase.wall.as_secs_f64();
            extra.insert("tasks_s".into(), round(n as f64 / wall, 1).into());
            let rate = (n as usize * wl::W5_SIZE) as f64 / wall / 1e6;
            (phase, rate, "MB/s each way")
        }
        "W6" => return measure_w6(workload, workers, params, extra).await,
        other => return Err(format!("unknown workload {other}").into()),
    };
    let mut head = Map::new();
    head.insert("startup_s".into(), secs(phase.startup).into());
    head.insert("shutdown_s".into(), secs(phase.shutdown).into());
    head.insert("workers_seen".into(), phase.seen.into());
    head.append(&mut extra);
    head.insert("time".into(), sys::utc_now().into());
    Ok(Record {
        peer: PEER,
        workload: workload.into(),
        params,
        wall_s: secs(phase.wall),
        rate: Some(round(rate, 3)),
        rate_unit: unit,
        extra: head,
    })
}

/// W2: `n` sequential calls after a warm-up; the latency percentiles go
/// into `extra`.
async fn measure_w2(
    workers: usize,
    n: Option<u64>,
    params: &mut Map<String, Value>,
    extra: &mut Map<String, Value>,
) -> BenchResult<(Phase, f64, &'static str)> {
    let n = n.unwrap_or(5_000);
    let warmup = 200;
    window(params, wl::W1_WINDOW, workers);
    params.insert("n".into(), n.into());
    params.insert("warmup".into(), warmup.into());
    let (pool, _out, mut phase) = begin::<Echo>(workers, wl::W1_WINDOW, || 0).await?;
    let mut samples = Vec::with_capacity(n as usize);
    let mut counted_from = Instant::now();
    for i in 0..warmup + n {
        if i == warmup {
            counted_from = Instant::now();
        }
        let t = Instant::now();
        let y = pool.call(i).await.map_err(|e| e.to_string())?;
        if i >= warmup {
            samples.push(t.elapsed().as_nanos() as u64);
        }
        if y != 2 * i {
            return Err(format!("call({i}) answered {y}").into());
        }
    }
    phase.wall = counted_from.elapsed();
    end(&pool, &mut phase).await;
    let l = Latency::from_nanos(&samples);
    extra.insert("p50_us".into(), round(l.p50_us, 2).into());
    extra.insert("p99_us".into(), round(l.p99_us, 2).into());
    extra.insert("mean_us".into(), round(l.mean_us, 2).into());
    extra.insert("max_us".into(), round(l.max_us, 2).into());
    Ok((phase, n as f64 / phase.wall.as_secs_f64(), "roundtrips/s"))
}

/// W6: one start and stop of a pool of `workers`; a record of its own,
/// with no rate.
async fn measure_w6(
    workload: &str,
    workers: usize,
    params: Map<String, Value>,
    mut extra: Map<String, Value>,
) -> BenchResult<Record> {
    let (start, stop) = wl::w6_once(workers).await?;
    extra.insert("start_s".into(), secs(start).into());
    extra.insert("stop_s".into(), secs(stop).into());
    extra.insert(
        "note".into(),
        "start = PoolBuilder::start() (workers executed, handshaken and initialised); \
         stop = Pool::shutdown() (drained, exited and reaped)"
            .into(),
    );
    extra.insert("time".into(), sys::utc_now().into());
    Ok(Record {
        peer: PEER,
        workload: workload.into(),
        params,
        wall_s: secs(start + stop),
        rate: None,
        rate_unit: "s",
        extra,
    })
}

fn window(params: &mut Map<String, Value>, per_worker: usize, workers: usize) {
    params.insert("max_tasks".into(), (per_worker * workers).into());
    params.insert("max_results".into(), (2 * per_worker * workers).into());
    params.insert("in_flight_per_worker".into(), per_worker.into());
}

/// Starts a pool and probes every worker: the start-up figure.
async fn begin<W: Worker>(
    workers: usize,
    window: usize,
    probe: impl Fn() -> W::Task,
) -> BenchResult<(Pool<W>, Outputs<W::Output>, Phase)> {
    let t0 = Instant::now();
    let (pool, outputs) = wl::start::<W>(workers, window).await?;
    wl::probe_all(&pool, probe).await?;
    let phase = Phase {
        startup: t0.elapsed(),
        wall: Duration::ZERO,
        shutdown: Duration::ZERO,
        seen: pool.pids().iter().flatten().count(),
    };
    Ok((pool, outputs, phase))
}

/// Shuts the pool down and times it.
async fn end<W: Worker>(pool: &Pool<W>, phase: &mut Phase) {
    let t = Instant::now();
    pool.shutdown().await;
    phase.shutdown = t.elapsed();
}
