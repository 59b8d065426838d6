//! What the view shows of each pool: its last snapshot, rates computed
//! from the one before, and a short history of its throughput.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Instant;

use looppool::control::{Snapshot, WorkerSnapshot};
use looppool::Histogram;

use crate::client::Client;
use crate::procfs::{self, CpuMeter};

/// How many throughput samples the sparkline keeps.
const HISTORY: usize = 120;

/// One pool, as the view knows it.
#[derive(Debug)]
pub(crate) struct PoolView {
    /// Its control socket.
    pub(crate) path: PathBuf,
    /// Its name, as its socket names it (until a snapshot tells the real one).
    pub(crate) label: String,
    client: Option<Client>,
    /// The last snapshot, and when it was taken.
    pub(crate) last: Option<(Instant, Snapshot)>,
    /// Completed tasks per second, pool-wide, over the last interval.
    pub(crate) rate: Option<f64>,
    /// The same per worker, by index.
    pub(crate) worker_rates: Vec<Option<f64>>,
    /// Where time went over the last interval, pool-wide.
    pub(crate) times: Option<Times>,
    /// The same per worker, by index.
    pub(crate) worker_times: Vec<Option<Times>>,
    /// Pool-wide completions per second, oldest first.
    pub(crate) history: VecDeque<u64>,
    /// Why the last refresh failed, if it did.
    pub(crate) error: Option<String>,
    /// CPU samples of local workers without reports.
    cpu: CpuMeter,
}

impl PoolView {
    pub(crate) fn new(path: PathBuf, label: String) -> Self {
        PoolView {
            path,
            label,
            client: None,
            last: None,
            rate: None,
            worker_rates: Vec::new(),
            times: None,
            worker_times: Vec::new(),
            history: VecDeque::new(),
            error: None,
            cpu: CpuMeter::default(),
        }
    }

    /// The pool's name: from its snapshot once there is one.
    pub(crate) fn name(&self) -> &str {
        self.last.as_ref().map_or(&self.label, |(_, s)| &s.pool)
    }

    /// Takes a new snapshot (connecting, or reconnecting after an error)
    /// and updates the rates.
    pub(crate) fn refresh(&mut self) {
        let client = match self.client.take() {
            Some(client) => Ok(client),
            None => {
                Client::connect(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))
            }
        };
        let result = client.and_then(|mut c| c.snapshot().map(|s| (c, s)));
        match result {
            Ok((client, snapshot)) => {
                self.client = Some(client);
                self.error = None;
                self.update(Instant::now(), snapshot);
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// Records `snapshot`, taken at `now`.
    pub(crate) fn update(&mut self, now: Instant, mut snapshot: Snapshot) {
        self.measure(now, &mut snapshot);
        if let Some((then, prev)) = &self.last {
            let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
            let per_sec = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
            let rate = per_sec(snapshot.done, prev.done);
            self.rate = Some(rate);
            self.history.push_back(rate.round() as u64);
            if self.history.len() > HISTORY {
                self.history.pop_front();
            }
            self.worker_rates = snapshot
                .workers
                .iter()
                .map(|w| {
                    let before = prev.workers.iter().find(|p| p.index == w.index)?;
                    Some(per_sec(w.done, before.done))
                })
                .collect();
            self.times = Some(Times::pool(&snapshot, prev));
            self.worker_times = snapshot
                .workers
                .iter()
                .map(|w| {
                    let before = prev.workers.iter().find(|p| p.index == w.index)?;
                    Some(Times::worker(w, before))
                })
                .collect();
        }
        self.last = Some((now, snapshot));
    }

    /// Fills in CPU and memory from `/proc` for the local workers whose
    /// reports do not carry them.
    fn measure(&mut self, now: Instant, snapshot: &mut Snapshot) {
        let parent = snapshot.pid;
        let mut alive = Vec::new();
        for w in &mut snapshot.workers {
            let Some(pid) = w.pid else { continue };
            alive.push(pid);
            if w.cpu_percent.is_none() {
                w.cpu_percent = self.cpu.percent(pid, parent, now);
            }
            if w.rss_bytes.is_none() {
                w.rss_bytes = procfs::rss_bytes(pid, parent);
            }
        }
        self.cpu.keep(&alive);
    }
}

/// Where time went over one interval: the difference of two snapshots'
/// histograms.
#[derive(Debug, Clone)]
pub(crate) struct Times {
    pub(crate) queue_wait: Histogram,
    pub(crate) run_time: Histogram,
    pub(crate) output_wait: Histogram,
}

impl Times {
    /// The pool's, from snapshot `then` to `now`.
    fn pool(now: &Snapshot, then: &Snapshot) -> Self {
        Times {
            queue_wait: now.queue_wait.since(&then.queue_wait),
            run_time: now.run_time.since(&then.run_time),
            output_wait: now.output_wait.since(&then.output_wait),
        }
    }

    /// A worker's, from its snapshot `then` to `now`.
    fn worker(now: &WorkerSnapshot, then: &WorkerSnapshot) -> Self {
        Times {
            queue_wait: now.queue_wait.since(&then.queue_wait),
            run_time: now.run_time.since(&then.run_time),
            output_wait: now.output_wait.since(&then.output_wait),
        }
    }
}
