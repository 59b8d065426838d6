//! What the broker workloads share: their shape (workers, window, sizes)
//! and the CPU time each party spends per task.

use std::time::Duration;

use crate::report::Row;
use crate::stats::median;
use crate::sys;

/// Workers of every broker workload.
pub(crate) const WORKERS: usize = 2;
/// Tasks in flight per worker: the pool's default (`max_tasks` 2,048 per
/// worker), and the raw worker's pull batch.
pub(crate) const WINDOW: usize = 2048;
/// The parent's pull batch of results, as the pool's relay uses.
pub(crate) const OUT_BATCH: usize = 512;

/// Sizes of the broker workloads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) reps: usize,
    /// Tasks of each pipelined repetition (raw and W1-broker).
    pub(crate) n: u64,
    /// Sequential round trips of each latency series, after `warmup`.
    pub(crate) calls: usize,
    pub(crate) warmup: usize,
}

impl Sizes {
    pub(crate) fn new(quick: bool) -> Sizes {
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

/// CPU per task of each party, medians over the repetitions, in µs.
#[derive(Debug, Default, Clone)]
pub(crate) struct CpuPerTask {
    parent: Vec<f64>,
    workers: Vec<f64>,
    server: Vec<f64>,
    /// Whole machine's busy CPUs over the timed repetitions.
    machine_cpus: Vec<f64>,
}

pub(crate) fn cpu_fields(row: Row, c: &CpuPerTask) -> Row {
    row.with("parent_cpu_us_per_task", median(&c.parent))
        .with("workers_cpu_us_per_task", median(&c.workers))
        .with("server_cpu_us_per_task", median(&c.server))
        .with("cpus_busy_machine", median(&c.machine_cpus))
}

/// Samples the CPU time of the parent, the workers and the server around
/// one repetition.
pub(crate) struct CpuProbe {
    parent: Duration,
    workers: Duration,
    server: Duration,
    meter: sys::CpuMeter,
}

impl CpuProbe {
    pub(crate) fn start(workers: &[u32], server: u32) -> CpuProbe {
        CpuProbe {
            parent: sys::own_cpu_time(),
            workers: cpu_of(workers),
            server: cpu_of(&[server]),
            meter: sys::CpuMeter::start(&[]),
        }
    }

    pub(crate) fn stop(self, workers: &[u32], server: u32, n: u64, into: &mut CpuPerTask) {
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
