//! Broker workloads: W1 and W2 through a NATS JetStream broker
//! with `looppool-nats`, beside the raw JetStream round trip of the same
//! shape measured in the same run.
//!
//! A private `nats-server -js` is started on a free loopback port with a
//! temporary store directory, and stopped by its pid (its store removed) at
//! the end. Then:
//!
//! - `raw-js-roundtrip`: the limit, plain async-nats with no looppool, as
//!   [`broker_raw`](crate::broker_raw) describes: round trips per second,
//!   then sequential round trips (publish, wait for the result) as a
//!   latency series.
//! - `W1-broker`: W1's tiny echo tasks through `looppool-nats` with 2 local
//!   workers; tasks/s against the raw round-trip rate, target ≥ 0.8.
//! - `W2-broker`: sequential `pool.call`s; p50 and p99 against the raw
//!   sequential round trip; target p50 ≤ 1.25× (= 1/0.8) and p99 ≤ 2×.
//!
//! Both use file storage, the pool's default.

use std::time::Duration;

use tokio::runtime::Runtime;

use crate::broker_common::{cpu_fields, Sizes, WINDOW, WORKERS};
use crate::broker_pool::{w1_broker, w2_broker};
use crate::broker_raw::raw_series;
use crate::broker_server::Server;
use crate::cli::Options;
use crate::report::{progress, Row, Target};
use crate::stats::{median, Latency, Summary};
use crate::workloads::BenchResult;

pub(crate) use crate::broker_raw::child_main_if_requested;

/// Whether any broker workload was chosen.
pub(crate) fn chosen(opts: &Options) -> bool {
    ["raw-js", "W1-broker", "W2-broker"]
        .iter()
        .any(|w| opts.runs(w))
}

/// Runs the chosen broker workloads and pushes their rows. Without
/// `nats-server` it says so and returns, unless `--broker` asked for them.
pub(crate) fn run(opts: &Options, rt: &Runtime, rows: &mut Vec<Row>) -> BenchResult<()> {
    match run_all(opts, rt, rows) {
        Err(e) if !opts.broker => {
            // The full run keeps the other workloads' rows.
            progress(&format!("broker workloads failed, rows skipped: {e}"));
            Ok(())
        }
        r => r,
    }
}

/// How long one broker measurement (a series of repetitions) may take
/// before it counts as hung.
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs `f` on `rt`, failing after [`DEADLINE`].
fn within<T>(
    rt: &Runtime,
    what: &str,
    f: impl std::future::Future<Output = BenchResult<T>>,
) -> BenchResult<T> {
    rt.block_on(async {
        tokio::time::timeout(DEADLINE, f)
            .await
            .map_err(|_| format!("{what} did not finish within {DEADLINE:?}"))?
    })
}

fn run_all(opts: &Options, rt: &Runtime, rows: &mut Vec<Row>) -> BenchResult<()> {
    let Some(binary) = looppool_nats::server::locate() else {
        let why = "nats-server not found (install Debian's nats-server, or set NATS_SERVER)";
        if opts.broker {
            return Err(format!("--broker: {why}").into());
        }
        progress(&format!("skipping the broker workloads: {why}"));
        return Ok(());
    };
    let sizes = Sizes::new(opts.quick);
    let server = Server::start(&binary)?;
    progress(&format!(
        "broker: {} -js at {}, store {}",
        binary.display(),
        server.url,
        server.dir.display()
    ));

    progress(&format!(
        "raw-js-roundtrip: {} tasks through JetStream, {WORKERS} worker processes",
        sizes.n
    ));
    let raw = within(rt, "raw-js-roundtrip", raw_series(&server, sizes))?;
    let raw_rate = Summary::of(&raw.rates);
    rows.push(
        cpu_fields(Row::new("raw-js-roundtrip", raw_rate, "tasks/s"), &raw.cpu)
            .with("n", sizes.n)
            .with("workers", WORKERS as u64)
            .with("window_per_worker", WINDOW as u64),
    );
    let raw_lat = latency_medians(&raw.latency);
    rows.push(cpu_fields(
        latency_row("raw-js-seq-p50", &raw.latency, |l| l.p50_us, sizes.calls)
            .with("mean_us", raw_lat.2),
        &raw.seq_cpu,
    ));
    rows.push(
        latency_row("raw-js-seq-p99", &raw.latency, |l| l.p99_us, sizes.calls)
            .with("max_us", raw_lat.3),
    );

    // The same workloads again with users and permissions on, in the same
    // run, against the same raw limits.
    let secured = Server::start_with_users(&binary, &["bench-w1", "bench-w2"])?;
    for (server, suffix) in [(&server, ""), (&secured, "-auth")] {
        if opts.runs("W1-broker") {
            let name = format!("W1-broker{suffix}");
            progress(&format!(
                "{name}: {} tiny tasks through looppool-nats, {WORKERS} local workers",
                sizes.n
            ));
            let f = within(rt, &name, w1_broker(server, sizes))?;
            rows.push(
                cpu_fields(Row::new(&name, Summary::of(&f.rates), "tasks/s"), &f.cpu)
                    .target("raw-js-roundtrip", raw_rate.median, Target::AtLeast(0.8))
                    .with("n", sizes.n),
            );
        }
        if opts.runs("W2-broker") {
            let name = format!("W2-broker{suffix}");
            progress(&format!(
                "{name}: {} sequential calls through looppool-nats",
                sizes.calls
            ));
            let (series, cpu) = within(rt, &name, w2_broker(server, sizes))?;
            let (_, _, mean, max) = latency_medians(&series);
            rows.push(cpu_fields(
                latency_row(&format!("{name}-p50"), &series, |l| l.p50_us, sizes.calls)
                    .target("raw-js-seq-p50", raw_lat.0, Target::AtMost(1.25))
                    .with("mean_us", mean),
                &cpu,
            ));
            rows.push(
                latency_row(&format!("{name}-p99"), &series, |l| l.p99_us, sizes.calls)
                    .target("raw-js-seq-p99", raw_lat.1, Target::AtMost(2.0))
                    .with("max_us", max),
            );
        }
    }
    drop(secured);
    drop(server);
    Ok(())
}

/// Medians over the series of (p50, p99, mean) and the largest max.
fn latency_medians(series: &[Latency]) -> (f64, f64, f64, f64) {
    let m = |f: fn(&Latency) -> f64| median(&series.iter().map(f).collect::<Vec<_>>());
    (
        m(|l| l.p50_us),
        m(|l| l.p99_us),
        m(|l| l.mean_us),
        series.iter().map(|l| l.max_us).fold(0.0, f64::max),
    )
}

fn latency_row(name: &str, series: &[Latency], f: fn(&Latency) -> f64, calls: usize) -> Row {
    Row::new(
        name,
        Summary::of(&series.iter().map(f).collect::<Vec<_>>()),
        "us",
    )
    .with("calls_per_series", calls as u64)
}
