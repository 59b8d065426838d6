//! A pool whose workers are reached through a NATS JetStream broker: two
//! workers started on this machine, and any number joining from elsewhere.
//! Each task counts primes (CPU work) and then waits on a timer (async
//! work); every reply says which worker, process, host and network
//! namespace handled it. The parent shows a `call`, a few hundred
//! `submit`s with their outputs, a `broadcast`, a summary per worker and the
//! pool's statistics, then shuts the pool down.
//!
//! Needs nothing but `nats-server` (Debian package `nats-server`): without a
//! broker URL the example starts a private one on a free loopback port.
//!
//! ```sh
//! cargo run --release -p looppool-nats --example broker_pool
//! # through a broker of your own, waiting for two more workers to join:
//! NATS_URL=nats://broker:4222 REMOTE_WORKERS=2 \
//!     cargo run --release -p looppool-nats --example broker_pool
//! # ...and on each other host, the same binary as a worker of pool `demo`:
//! LOOPPOOL_NATS_URL=nats://broker:4222 LOOPPOOL_NATS_POOL=demo ./broker_pool
//! ```
//!
//! Settings of the parent (all optional): `NATS_URL` (a broker to use
//! instead of a private one), `POOL_NAME` (default `demo`), `LOCAL_WORKERS`
//! (default 2), `REMOTE_WORKERS` (default 0), `TASKS` (default 400).
//!
//! With a broker that authenticates its users (see the crate docs'
//! *Security* section), the parent takes its credentials from the same
//! variables as workers (`LOOPPOOL_NATS_USER` and `LOOPPOOL_NATS_PASSWORD`,
//! `LOOPPOOL_NATS_CA`, ...: `Credentials::from_env`), and gives its local
//! workers `WORKER_USER` and `WORKER_PASSWORD` when set.
//! `broker_pool --server-users POOL PARENT_PASSWORD WORKER_PASSWORD`
//! prints an `authorization` block for `nats-server` with a user per role
//! (`POOL-parent`, `POOL-worker`) and the role's permissions.
//!
//! The parent reads `NATS_URL`, not `LOOPPOOL_NATS_URL`: a process started
//! with `LOOPPOOL_NATS_URL` is a worker (see `run_if_remote` below), and the
//! same binary is both. `scripts/netns-demo.sh` runs this example with the
//! broker, the parent and two workers in separate network namespaces.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, ExitCode};
use std::rc::Rc;
use std::time::{Duration, Instant};

use looppool::{BoxError, InitContext, Output, TaskContext, Worker};
use looppool_nats::NatsPoolBuilder;
use serde::{Deserialize, Serialize};

type Error = Box<dyn std::error::Error>;

/// What the parent asks of a worker.
#[derive(Debug, Serialize, Deserialize)]
enum Job {
    /// Count the primes below `below` (CPU work that holds the worker's
    /// loop), then wait `pause_ms` on a timer (which does not).
    Crunch { id: u32, below: u32, pause_ms: u64 },
    /// Say where you run.
    Identify,
}

/// Where a worker runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Place {
    worker: usize,
    host: String,
    pid: u32,
    /// `net:[inode]`: differs between network namespaces.
    netns: String,
}

/// What a worker sends back.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Crunched { id: u32, primes: u32, by: Place },
    Here(Place),
}

/// The worker: the same code whether the pool started it on this machine or
/// it joined from another host.
struct Cruncher {
    place: Place,
}

impl Worker for Cruncher {
    const NAME: &'static str = "cruncher";
    type Init = ();
    type Task = Job;
    type Output = Reply;

    async fn init(_: (), cx: InitContext<Reply>) -> Result<Self, BoxError> {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let netns = std::fs::read_link("/proc/self/ns/net")
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        Ok(Cruncher {
            place: Place {
                worker: cx.worker_index(),
                host: read("/proc/sys/kernel/hostname").trim().to_owned(),
                pid: std::process::id(),
                netns,
            },
        })
    }

    async fn handle(self: Rc<Self>, job: Job, cx: TaskContext<Reply>) -> Result<(), BoxError> {
        let reply = match job {
            Job::Crunch {
                id,
                below,
                pause_ms,
            } => {
                let primes = count_primes(below);
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                Reply::Crunched {
                    id,
                    primes,
                    by: self.place.clone(),
                }
            }
            Job::Identify => Reply::Here(self.place.clone()),
        };
        cx.emit(reply).await?;
        Ok(())
    }
}

/// Primes below `n`, by trial division: deliberately plain CPU work.
fn count_primes(n: u32) -> u32 {
    (2..n)
        .filter(|&k| (2..).take_while(|d| d * d <= k).all(|d| k % d != 0))
        .count() as u32
}

/// The sizes of the tasks, in turn.
const SIZES: [u32; 5] = [20_000, 30_000, 40_000, 50_000, 60_000];

fn crunch(id: u32) -> Job {
    Job::Crunch {
        id,
        below: SIZES[id as usize % SIZES.len()],
        pause_ms: 5 + u64::from(id % 10),
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    // Started with LOOPPOOL_NATS_URL and LOOPPOOL_NATS_POOL (by the pool for
    // its local workers, or by hand on another host), this process is a
    // worker: it joins the pool, serves it and exits here.
    looppool_nats::run_if_remote::<Cruncher>();

    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, pool, parent_password, worker_password] = args.as_slice() {
        if flag == "--server-users" {
            return print_server_users(pool, parent_password, worker_password);
        }
    }
    match parent() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("broker_pool: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A `nats-server` `authorization` block: a user per role of `pool`,
/// with only the permissions that role needs.
fn print_server_users(pool: &str, parent_password: &str, worker_password: &str) -> ExitCode {
    use looppool_nats::auth::{Permissions, Role};
    let mut users = String::new();
    for (role, name, password) in [
        (Role::Parent, "parent", parent_password),
        (Role::Worker, "worker", worker_password),
    ] {
        match Permissions::for_role(pool, role) {
            Ok(p) => users.push_str(&format!(
                "    {{ user: \"{pool}-{name}\", password: \"{password}\", permissions: {} }}\n",
                p.to_server_config()
            )),
            Err(e) => {
                eprintln!("broker_pool: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("authorization {{\n  users = [\n{users}  ]\n}}");
    ExitCode::SUCCESS
}

fn parent() -> Result<(), Error> {
    // Dropped last: stops the private broker, on success and on error alike.
    let (url, _broker) = match std::env::var("NATS_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let broker = PrivateBroker::start()?;
            println!("started a private nats-server at {}", broker.url);
            (broker.url.clone(), Some(broker))
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::select! {
            result = run(&url) => result,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        }
    })
}

async fn run(url: &str) -> Result<(), Error> {
    let pool_name: String = env_or("POOL_NAME", "demo".to_owned());
    let local: usize = env_or("LOCAL_WORKERS", 2);
    let remote: usize = env_or("REMOTE_WORKERS", 0);
    let tasks: u32 = env_or("TASKS", 400);

    if remote > 0 {
        println!(
            "waiting for {remote} remote worker(s): start them with \
             LOOPPOOL_NATS_URL={url} LOOPPOOL_NATS_POOL={pool_name} <this binary>"
        );
    }
    let started = Instant::now();
    let mut builder = NatsPoolBuilder::<Cruncher>::new(url, pool_name.as_str())
        .credentials(looppool_nats::Credentials::from_env()?);
    if let (Ok(user), Ok(password)) = (
        std::env::var("WORKER_USER"),
        std::env::var("WORKER_PASSWORD"),
    ) {
        let mut worker = looppool_nats::Credentials::user_password(user, password);
        if let Ok(ca) = std::env::var(looppool_nats::CA_ENV) {
            worker = worker.root_certificates(ca);
        }
        builder = builder.worker_credentials(worker);
    }
    let (pool, mut outputs) = builder
        .local_workers(local)
        .remote_workers(remote)
        .start()
        .await?;
    println!(
        "pool {pool_name:?}: {} workers through {url} in {:.2?}, pids {:?}",
        pool.workers(),
        started.elapsed(),
        pool.pids()
    );

    // A call waits for the task's first output.
    if let Reply::Crunched { primes, by, .. } = pool.call(crunch(0)).await? {
        println!(
            "call: {primes} primes below {} (worker {} on {}, pid {})",
            SIZES[0], by.worker, by.host, by.pid
        );
    }

    // Submit from another task while this one consumes the outputs: submit
    // waits when the pool's bound on queued tasks is reached, and only
    // consuming outputs frees it.
    let started = Instant::now();
    let submitter = tokio::spawn({
        let pool = pool.clone();
        async move {
            for id in 0..tasks {
                pool.submit(crunch(id)).await?;
            }
            Ok::<_, looppool::SubmitError<Job>>(())
        }
    });
    let expected: Vec<u32> = SIZES.iter().map(|&n| count_primes(n)).collect();
    let mut places: BTreeMap<usize, Place> = BTreeMap::new();
    let mut handled: BTreeMap<usize, u32> = BTreeMap::new();
    let mut problems = 0;
    for _ in 0..tasks {
        let item = outputs
            .next()
            .await
            .ok_or("the output stream ended early")?;
        match item {
            Output::Value {
                value: Reply::Crunched { id, primes, by },
                ..
            } => {
                if primes != expected[id as usize % SIZES.len()] {
                    println!("task {id}: wrong count {primes}");
                    problems += 1;
                }
                *handled.entry(by.worker).or_default() += 1;
                places.insert(by.worker, by);
            }
            other => {
                println!("unexpected: {other:?}");
                problems += 1;
            }
        }
    }
    submitter.await??;
    let elapsed = started.elapsed();
    println!(
        "{tasks} tasks in {elapsed:.2?} ({:.0} tasks/s)",
        f64::from(tasks) / elapsed.as_secs_f64()
    );

    // A broadcast sends one copy to every worker; the replies arrive in the
    // output stream.
    pool.broadcast(Job::Identify).await?;
    for _ in 0..pool.workers() {
        let item = outputs
            .next()
            .await
            .ok_or("the output stream ended early")?;
        match item {
            Output::Value {
                value: Reply::Here(place),
                ..
            } => {
                println!(
                    "broadcast: worker {} is pid {} on host {} ({})",
                    place.worker, place.pid, place.host, place.netns
                );
                places.insert(place.worker, place);
            }
            other => {
                println!("unexpected: {other:?}");
                problems += 1;
            }
        }
    }

    println!("per worker:");
    for (worker, place) in &places {
        println!(
            "  worker {worker}: {:>4} tasks, host {}, pid {}, {}",
            handled.get(worker).copied().unwrap_or(0),
            place.host,
            place.pid,
            place.netns
        );
    }
    let stats = pool.stats();
    println!(
        "stats: {} done, {} failed, {} lost, {} restarts, {} in flight",
        stats.done, stats.failed, stats.lost, stats.restarts, stats.in_flight
    );

    let report = pool.shutdown().await;
    // The stream ends once every worker has exited.
    while let Some(item) = outputs.next().await {
        println!("after shutdown: {item:?}");
    }
    if !report.drained || report.failure.is_some() {
        return Err(format!("shutdown: {report:?}").into());
    }
    if problems > 0 {
        return Err(format!("{problems} problems").into());
    }
    println!("done: {tasks} tasks through the broker");
    Ok(())
}

/// A `nats-server -js` of our own on a free loopback port, with its store in
/// a temporary directory; both go when it is dropped.
struct PrivateBroker {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl PrivateBroker {
    fn start() -> Result<Self, Error> {
        let binary = looppool_nats::server::locate().ok_or(
            "nats-server not found: install it (Debian: apt-get install nats-server), \
             set NATS_SERVER to its path, or set NATS_URL to a running broker",
        )?;
        let dir = std::env::temp_dir().join(format!("broker-pool-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        match looppool_nats::server::spawn(&binary, &dir, None) {
            Ok((child, url)) => Ok(PrivateBroker { child, dir, url }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e.into())
            }
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // The store is thrown away, so there is nothing to shut down gently.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
