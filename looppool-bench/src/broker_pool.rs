//! W1 and W2 through the broker with `looppool-nats`: a pool of
//! [`WORKERS`] local workers with the pool's default window.

use std::time::Instant;

use looppool::Pool;

use crate::broker_common::{CpuPerTask, CpuProbe, Sizes, WINDOW, WORKERS};
use crate::broker_server::Server;
use crate::stats::Latency;
use crate::workers::Echo;
use crate::workloads::{self as wl, BenchResult};

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

pub(crate) struct W1Broker {
    pub(crate) rates: Vec<f64>,
    pub(crate) cpu: CpuPerTask,
}

pub(crate) async fn w1_broker(server: &Server, s: Sizes) -> BenchResult<W1Broker> {
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

pub(crate) async fn w2_broker(
    server: &Server,
    s: Sizes,
) -> BenchResult<(Vec<Latency>, CpuPerTask)> {
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
