//! `looppool-bench`: what this machine's socketpairs can do, then what a
//! looppool pool does with them.
//!
//! ```text
//! cargo run --release -p looppool-bench                  # full run, a table (about a minute)
//! cargo run --release -p looppool-bench -- --quick       # smoke run, a few seconds
//! cargo run --release -p looppool-bench -- --json --only W1,W2
//! cargo run --release -p looppool-bench -- --soak        # parent RSS over 10 M tasks
//! cargo run --release -p looppool-bench -- --broker      # W1, W2 through a NATS broker
//! looppool-bench --workload W1 [--workers N] [--n N]     # one record for the Python peer harness
//! ```
//!
//! One run first measures the limits of the machine with the pool's framing
//! (4-byte little-endian length, then the body) and no pool: pipelined echo
//! of 20-byte frames over one and two socketpairs, blocking ping-pong (as
//! placed by the kernel, and with everything pinned to one CPU), and echo of
//! 1 MiB frames. Then it runs the pool workloads W1–W6 on a current_thread
//! parent runtime, each repeated with its median reported, and compares each
//! with its limit and target. See `BENCHMARKS.md` at the workspace root.
//!
//! The binary is its own worker program: the pool re-executes it
//! (`/proc/self/exe`) and `looppool::worker_main!` at the top of `main` runs
//! the requested worker. The raw limits' far end is this binary too,
//! selected by an environment variable (see [`raw`]).
//!
//! # Layout
//!
//! - [`cli`]: options and the size of each measurement;
//! - [`raw`]: the machine's limits over plain socketpairs;
//! - [`broker`]: W1 and W2 through NATS JetStream beside a raw JetStream
//!   round trip;
//! - [`workers`]: the worker types; [`workloads`]: W1–W6; [`control`]: cancel and hol;
//!   [`blobs`]: W5 with `looppool::Blob` payloads, and W5-64MiB;
//! - [`bench`](mod@bench): the main mode; [`soak`]: the memory soak; [`peer`]: the
//!   peer harness's record;
//! - [`report`] and [`stats`]: rows, tables, JSON, medians;
//! - [`sys`]: affinity, RSS, CPU time, machine description.

use std::process::ExitCode;

mod bench;
mod blobs;
mod broker;
mod broker_common;
mod broker_pool;
mod broker_raw;
mod broker_server;
mod cli;
mod control;
mod peer;
mod raw;
mod report;
mod soak;
mod stats;
mod sys;
mod workers;
mod workloads;

fn main() -> ExitCode {
    // A worker the broker pool (`--broker`) started joins it here and never
    // returns.
    looppool_nats::run_if_remote::<workers::Echo>();
    // A process the pool started runs its worker here and never returns.
    looppool::worker_main!(
        workers::Echo,
        workers::Sleeper,
        workers::Mixed,
        workers::Bytes,
        workers::BlobEcho
    );
    // A raw-limit child echoes here and never returns.
    raw::child_main_if_requested();
    // A raw JetStream worker of the broker limit, likewise.
    broker::child_main_if_requested();

    let opts = match cli::parse(std::env::args().skip(1)) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("looppool-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match &opts.mode {
        cli::Mode::Help => {
            print!("{}", cli::USAGE);
            Ok(())
        }
        cli::Mode::Bench => bench::run(&opts),
        cli::Mode::Soak { tasks } => soak::run(*tasks, opts.timings, opts.json),
        cli::Mode::Peer {
            workload,
            workers,
            n,
        } => peer::run(workload, *workers, *n),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = e.source();
            while let Some(cause) = source {
                message += &format!(": {cause}");
                source = cause.source();
            }
            eprintln!("looppool-bench: {message}");
            ExitCode::FAILURE
        }
    }
}
