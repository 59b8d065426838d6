//! The original package's instrumented worker: a pool whose workers report
//! CPU, memory and loop backlog to statsd, whose errors, panics and log
//! events all reach the parent's log, and whose workers show their pool and
//! index in `ps` (process titles are automatic).
//!
//! ```sh
//! cargo run --release --example instrumented --features statsd
//! # with a statsd server elsewhere, and a report every second:
//! STATSD_ADDR=127.0.0.1:8125 REPORT_INTERVAL_MS=1000 cargo run --release --example instrumented --features statsd
//! ```
//!
//! With `SENTRY_DSN` set and the `sentry` feature (`--features
//! statsd,sentry`), the failed tasks and worker panics also go to Sentry,
//! as events tagged with pool, worker, pid and task.
//!
//! Watch the gauges arrive with `nc -ul 8125` in another terminal. The
//! example runs a few seconds of mixed work (computing, waiting, failing,
//! panicking, and one handler that blocks its loop), prints the pool's
//! figures and exits.

use std::rc::Rc;
use std::time::{Duration, Instant};

use looppool::metrics::Statsd;
use looppool::{BoxError, InitContext, Output, Pool, TaskContext, Worker};
use serde::{Deserialize, Serialize};

/// What the instrumented worker is asked to do.
#[derive(Debug, Serialize, Deserialize)]
enum Job {
    /// Compute for this many milliseconds, without awaiting.
    Compute(u64),
    /// Wait this many milliseconds on the loop.
    Wait(u64),
    /// Return an error.
    Fail(String),
    /// Panic.
    Panic(String),
}

struct Instrumented {
    index: usize,
}

impl Worker for Instrumented {
    const NAME: &'static str = "instrumented";
    type Init = ();
    type Task = Job;
    type Output = u64;

    async fn init(_: (), cx: InitContext<u64>) -> Result<Self, BoxError> {
        tracing::info!(pool = cx.pool_name(), "worker {} ready", cx.worker_index());
        Ok(Instrumented {
            index: cx.worker_index(),
        })
    }

    async fn handle(self: Rc<Self>, job: Job, cx: TaskContext<u64>) -> Result<(), BoxError> {
        match job {
            Job::Compute(ms) => {
                let until = Instant::now() + Duration::from_millis(ms);
                let mut n = 0u64;
                while Instant::now() < until {
                    n = n.wrapping_add(1);
                }
                if ms >= 100 {
                    tracing::warn!(ms, "a long computation held up the loop");
                }
                cx.emit(n).await?;
            }
            Job::Wait(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                tracing::debug!(ms, worker = self.index, "waited");
                cx.emit(ms).await?;
            }
            Job::Fail(why) => {
                tracing::error!(%why, "giving up on a task");
                return Err(why.into());
            }
            Job::Panic(why) => panic!("{why}"),
        }
        Ok(())
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Logs to stderr; with `SENTRY_DSN` set (and the `sentry` feature), also
/// sends `ERROR` lines (failed tasks, worker panics) to Sentry, tagged by
/// `looppool::metrics::sentry_tags`. The guard returned flushes Sentry as
/// it is dropped.
fn init_logging() -> Option<Box<dyn std::any::Any>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer().with_target(true);
    #[cfg(feature = "sentry")]
    if let Ok(dsn) = std::env::var("SENTRY_DSN") {
        use tracing_subscriber::Layer;
        let mut options = sentry::ClientOptions::default();
        options.before_send = Some(std::sync::Arc::new(looppool::metrics::sentry_tags));
        let guard = sentry::init((dsn, options));
        let errors = sentry::integrations::tracing::ErrorLayer::new()
            .with_filter(tracing_subscriber::filter::LevelFilter::ERROR);
        tracing_subscriber::registry().with(fmt).with(errors).init();
        return Some(Box::new(guard));
    }
    tracing_subscriber::registry().with(fmt).init();
    None
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a process the pool started, this runs the worker and never returns.
    looppool::worker_main!(Instrumented);

    let _sentry = init_logging();
    let statsd_addr = env_or("STATSD_ADDR", "127.0.0.1:8125".to_owned());
    let interval = Duration::from_millis(env_or("REPORT_INTERVAL_MS", 10_000u64).max(1));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (pool, mut outputs) = Pool::<Instrumented>::builder()
            .workers(2)
            .name("instrumented")
            .report_interval(interval)
            .statsd(Statsd::new(statsd_addr.as_str(), "instrumented"))
            .blocked_threshold(Duration::from_millis(200))
            // Failed tasks are errors here: they reach the log, and Sentry.
            .failed_task_log_level(tracing::Level::ERROR)
            .start()
            .await?;
        tracing::info!(statsd = %statsd_addr, ?interval, pids = ?pool.pids(), "pool started");

        // Consume outputs as they come, counting what happened.
        let consumer = tokio::spawn(async move {
            let (mut values, mut failed) = (0u64, 0u64);
            while let Some(item) = outputs.next().await {
                match item {
                    Output::Value { .. } => values += 1,
                    _ => failed += 1,
                }
            }
            (values, failed)
        });

        // A few seconds of mixed work.
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut i = 0u64;
        while Instant::now() < deadline {
            let job = match i % 20 {
                7 => Job::Fail(format!("task {i} found nothing")),
                13 => Job::Panic(format!("task {i} tripped")),
                _ if i.is_multiple_of(2) => Job::Compute(2),
                _ => Job::Wait(20),
            };
            pool.submit(job).await?;
            if i == 50 {
                // One handler that blocks its loop past the threshold.
                pool.submit_to(0, Job::Compute(300)).await?;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        pool.shutdown().await;
        let (values, failed) = consumer.await?;
        let stats = pool.stats();
        println!(
            "{i} tasks sent: {values} outputs, {} done, {} failed ({failed} failure items), {} blocked-loop episodes",
            stats.done, stats.failed, stats.blocked
        );
        for w in &stats.workers {
            match &w.last_report {
                Some(r) => println!(
                    "worker {}: cpu {:.2}, rss {:.1} MiB, peak {:.1} MiB, loop busy {:.2}",
                    w.worker,
                    r.cpu,
                    r.rss_bytes as f64 / 1048576.0,
                    r.max_rss_bytes as f64 / 1048576.0,
                    r.loop_busy
                ),
                None => println!(
                    "worker {}: no report yet (REPORT_INTERVAL_MS={} is longer than the run)",
                    w.worker,
                    interval.as_millis()
                ),
            }
        }
        Ok(())
    })
}
