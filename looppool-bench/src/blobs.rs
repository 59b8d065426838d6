//! Payloads as `looppool::Blob`: W5 with its 1 MiB payloads as blobs
//! (`W5-blob`, beside W5's byte vectors), and `W5-64MiB`, 64 MiB blobs
//! echoed, beside the raw socket's echo of 64 MiB frames
//! (`raw-bulk-64MiB`) and the machine's memcpy bandwidth (`memcpy-64MiB`),
//! the ceiling of any copy.

use std::time::{Duration, Instant};

use looppool::{Blob, Outputs, Pool};
use tokio::runtime::Runtime;

use crate::cli::Plan;
use crate::raw;
use crate::report::{Row, Target};
use crate::stats::Summary;
use crate::workers::BlobEcho;
use crate::workloads::{self as wl, BenchResult};

/// W5-64MiB's payload, and its tasks per repetition (as the 200).
const BIG: usize = 64 << 20;
const BIG_TASKS: u64 = 200;

/// A blob of `len` bytes of W5's pattern, written in place in its memory
/// file.
fn pattern(len: usize) -> BenchResult<Blob> {
    let mut b = Blob::build(len)?;
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = i as u8;
    }
    Ok(b.freeze()?)
}

/// Starts a pool of blob echoers with W5's window, and a frame limit that
/// lets `len`-byte blobs through (their bytes count against it).
async fn start(len: usize) -> BenchResult<(Pool<BlobEcho>, Outputs<Blob>)> {
    let mut builder = Pool::<BlobEcho>::builder()
        .workers(wl::WORKERS)
        .max_tasks(wl::W5_IN_FLIGHT * wl::WORKERS)
        .max_results(2 * wl::W5_IN_FLIGHT * wl::WORKERS)
        .max_frame(2 * len.max(looppool::DEFAULT_MAX_FRAME))
        .max_result_bytes(8 * len.max(1 << 20) * wl::WORKERS)
        .name("bench");
    if let Some(program) = std::env::var_os(wl::PROGRAM_ENV) {
        builder = builder.program(program);
    }
    Ok(builder.start().await?)
}

/// `n` blobs of `len` bytes echoed, recycled as W5 recycles its buffers
/// (the echo of one is sent again); each echo's length and a few bytes are
/// checked. Wall time.
async fn echo_once(
    pool: &Pool<BlobEcho>,
    outputs: &mut Outputs<Blob>,
    n: u64,
    len: usize,
) -> BenchResult<Duration> {
    let spare = ((2 * pool.workers() * pool.worker_capacity()) as u64 + 2).min(n);
    let (back, buffers) = tokio::sync::mpsc::unbounded_channel();
    let first = pattern(len)?;
    let probes: Vec<(usize, u8)> = [0, 1, len / 2, len - 1]
        .iter()
        .map(|&i| (i, first[i]))
        .collect();
    let _ = back.send(first);
    for _ in 1..spare {
        let _ = back.send(pattern(len)?);
    }
    wl::echo_recycled(pool, outputs, n, buffers, back, &probes, "W5-blob").await
}

/// Megabytes (10^6 B) per second of `reps` series of `n` echoes of `len`
/// bytes, after a warm-up series; with the machine's and the bench's CPU use.
fn echo_rates(
    rt: &Runtime,
    reps: usize,
    n: u64,
    len: usize,
) -> BenchResult<(Vec<f64>, crate::sys::CpuUse, bool)> {
    rt.block_on(async {
        let (pool, mut outputs) = start(len).await?;
        echo_once(&pool, &mut outputs, n.min(20), len).await?;
        let (walls, cpu) = wl::reps_on(&pool, &mut outputs, reps, async |p, o| {
            echo_once(p, o, n, len).await
        })
        .await?;
        // Whether the blobs went by descriptor (they are mapped here).
        let shared = pool.call(pattern(len)?).await?.is_shared();
        pool.shutdown().await;
        let rates = walls
            .iter()
            .map(|w| (n as usize * len) as f64 / w.as_secs_f64() / 1e6)
            .collect();
        BenchResult::Ok((rates, cpu, shared))
    })
}

/// The W5-blob row: W5's 1 MiB payloads as blobs, compared with W5.
pub(crate) fn w5_blob(
    plan: &Plan,
    w5: Option<f64>,
    rt: &Runtime,
    rows: &mut Vec<Row>,
) -> BenchResult<()> {
    crate::report::progress(&format!("W5-blob: {} blobs of 1 MiB echoed", plan.w5_n));
    let (rates, cpu, shared) = echo_rates(rt, plan.reps, plan.w5_n, wl::W5_SIZE)?;
    let mut row = Row::new("W5-blob", Summary::of(&rates), "MB/s")
        .with("n", plan.w5_n)
        .with("by_descriptor", shared)
        .with("cpus_busy_machine", cpu.machine)
        .with("cpus_bench", cpu.bench);
    if let Some(w5) = w5 {
        row = row.vs("W5", w5);
    }
    rows.push(row);
    Ok(())
}

/// The machine's memcpy bandwidth over `len` bytes: MB/s of each of `reps`
/// copies (after one that faults the pages in).
fn memcpy_rates(reps: usize, len: usize) -> Vec<f64> {
    let src = vec![0x5au8; len];
    let mut dst = vec![0u8; len];
    dst.copy_from_slice(&src);
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
            len as f64 / t.elapsed().as_secs_f64() / 1e6
        })
        .collect()
}

/// W5-64MiB: 200 blobs of 64 MiB echoed, against the raw socket echo of
/// 64 MiB frames, with memcpy bandwidth beside them.
pub(crate) fn w5_64mib(plan: &Plan, rt: &Runtime, rows: &mut Vec<Row>) -> BenchResult<()> {
    let quick = plan.reps < 5;
    let raw_frames = if quick { 4 } else { 16 };
    crate::report::progress(&format!("raw: echo of {raw_frames} frames of 64 MiB"));
    let raw: Vec<f64> = (0..plan.reps)
        .map(|_| raw::bulk_mb_per_sec_of(raw_frames, BIG))
        .collect::<Result<_, _>>()?;
    let raw = Summary::of(&raw);
    rows.push(Row::new("raw-bulk-64MiB", raw, "MB/s").with("frames", raw_frames));
    let memcpy = Summary::of(&memcpy_rates(plan.reps.max(5), BIG));
    rows.push(Row::new("memcpy-64MiB", memcpy, "MB/s"));
    let n = if quick { 20 } else { BIG_TASKS };
    crate::report::progress(&format!("W5-64MiB: {n} blobs of 64 MiB echoed"));
    let (rates, cpu, shared) = echo_rates(rt, plan.reps, n, BIG)?;
    rows.push(
        Row::new("W5-64MiB", Summary::of(&rates), "MB/s")
            .target("raw-bulk-64MiB", raw.median, Target::AtLeast(3.0))
            .with("n", n)
            .with("by_descriptor", shared)
            .with("memcpy_mb_s", memcpy.median)
            .with("cpus_busy_machine", cpu.machine)
            .with("cpus_bench", cpu.bench),
    );
    Ok(())
}
