//! `looppool top` against a real running pool: `--json` and `--once` read
//! its workers, and the live view, run in a terminal multiplexer (tmux) as
//! a person would use it, shows the worker rows and recycles a worker on a
//! key press.
//!
//! A test program of its own (`harness = false`): the pool's workers are
//! this program, so `worker_main!` must come first in `main`.

use std::path::Path;
use std::process::{Command, Output};
use std::rc::Rc;
use std::time::{Duration, Instant};

use looppool::{BoxError, InitContext, Pool, TaskContext, Worker};

/// Sleeps `ms` milliseconds, then answers.
struct Sleeper;

impl Worker for Sleeper {
    const NAME: &'static str = "sleeper";
    type Init = ();
    type Task = u64;
    type Output = u64;

    async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> {
        Ok(Sleeper)
    }

    async fn handle(self: Rc<Self>, ms: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        cx.emit(ms).await?;
        Ok(())
    }
}

fn main() {
    looppool::worker_main!(Sleeper);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let mut passed = 0;
    // Each test in turn, with a fresh socket directory.
    macro_rules! run {
        ($test:ident) => {
            let name = stringify!($test);
            if filter.as_deref().is_none_or(|f| name.contains(f)) {
                let dir = std::env::temp_dir()
                    .join(format!("looppool-top-{}-{name}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                println!("test {name} ...");
                runtime.block_on($test(&dir));
                let _ = std::fs::remove_dir_all(&dir);
                println!("test {name} ... ok");
                passed += 1;
            }
        };
    }
    run!(json_lists_the_workers);
    run!(once_prints_a_frame_with_every_worker);
    run!(the_live_view_recycles_a_worker_on_a_key);
    println!("{passed} passed, 0 failed");
}

/// A pool of 3 workers with its control socket in `dir`.
async fn pool(dir: &Path, name: &str) -> Pool<Sleeper> {
    let (pool, outputs) = Pool::<Sleeper>::builder()
        .workers(3)
        .name(name)
        .control_socket(dir)
        .start()
        .await
        .unwrap();
    // Outputs are not read: `submit` is not used.
    drop(outputs);
    pool
}

/// Runs `looppool` with `args` on a thread, so that the pool (on this
/// thread's runtime) serves it meanwhile.
async fn looppool(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let run = std::thread::spawn(move || {
        Command::new(env!("CARGO_BIN_EXE_looppool"))
            .args(&args)
            .output()
            .unwrap()
    });
    while !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.join().unwrap()
}

async fn json_lists_the_workers(dir: &Path) {
    let pool = pool(dir, "top-json").await;
    for ms in [1, 2, 3] {
        pool.call(ms).await.unwrap();
    }
    let dir_arg = dir.to_str().unwrap();
    let out = looppool(&["top", "--dir", dir_arg, "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one pool, one line: {text}");
    let snap: looppool::control::Snapshot = serde_json_from(lines[0]);
    assert_eq!(snap.pool, "top-json");
    assert_eq!(snap.pid, std::process::id());
    assert_eq!(snap.done, 3);
    // The three calls slept 1, 2 and 3 ms: timed (a quiet pool times every
    // task), each in the histogram of the worker that ran it.
    assert_eq!(snap.run_time.count(), 3, "{:?}", snap.run_time);
    let fastest = snap.run_time.quantile(0.0).unwrap();
    assert!(fastest >= Duration::from_micros(500), "{fastest:?}");
    let per_worker: u64 = snap.workers.iter().map(|w| w.run_time.count()).sum();
    assert_eq!(per_worker, 3);
    assert!(lines[0].contains("\"run_time\":{\"count\":3"), "{text}");
    let pids: Vec<Option<u32>> = snap.workers.iter().map(|w| w.pid).collect();
    assert_eq!(pids, pool.pids());
    // By name, by pid, and by socket: the same pool; an unknown name fails.
    let pid = std::process::id().to_string();
    for args in [
        vec!["top", "--dir", dir_arg, "--json", "top-json"],
        vec!["top", "--dir", dir_arg, "--json", &pid],
    ] {
        let out = looppool(&args).await;
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1);
    }
    let socket = pool.control_socket().unwrap().to_str().unwrap().to_owned();
    let out = looppool(&["top", "--socket", &socket, "--json"]).await;
    assert!(out.status.success());
    let out = looppool(&["top", "--dir", dir_arg, "--json", "nope"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pool named \"nope\""));
    pool.shutdown().await;
}

fn serde_json_from(line: &str) -> looppool::control::Snapshot {
    // The CLI's own JSON reader is serde_json; the test reads with the
    // same derive through looppool's types.
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

async fn once_prints_a_frame_with_every_worker(dir: &Path) {
    let pool = pool(dir, "top-once").await;
    // Work in flight while the frame is taken: 30 tasks of 2 s.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let pool = pool.clone();
        calls.spawn(async move { pool.call(2_000).await.unwrap() });
    }
    wait_until(|| pool.in_flight().iter().sum::<usize>() == 30).await;
    let dir_arg = dir.to_str().unwrap();
    let out = looppool(&["top", "--dir", dir_arg, "--once", "--interval", "200"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frame = String::from_utf8(out.stdout).unwrap();
    assert!(frame.contains("top-once"), "{frame}");
    assert!(frame.contains("in flight 30"), "{frame}");
    // Nothing completed over the interval: no times to show yet.
    assert!(
        frame.contains("queue wait p50 - p99 -  run p50 - p99 -  output wait p50 - p99 -"),
        "{frame}"
    );
    assert!(frame.contains("LAG") && frame.contains("RUN99"), "{frame}");
    for (index, pid) in pool.pids().into_iter().enumerate() {
        let row = worker_row(&frame, index).unwrap_or_else(|| panic!("no row {index}:\n{frame}"));
        assert_eq!(row[1], pid.unwrap().to_string(), "{frame}");
        assert_eq!(row[2], "running");
        assert_eq!(row[3], "10", "10 tasks in flight on each worker:\n{frame}");
    }
    pool.shutdown().await;
    assert_eq!(calls.join_all().await, vec![2_000; 30]);
}

/// The cells of worker `index`'s row in a frame: the line inside a box
/// that starts with the index and has a pid.
fn worker_row(frame: &str, index: usize) -> Option<Vec<String>> {
    frame.lines().find_map(|line| {
        let inner = line.trim_matches(|c| c == '│' || c == ' ');
        let cells: Vec<String> = inner.split_whitespace().map(String::from).collect();
        let is_row =
            cells.len() > 3 && cells[0] == index.to_string() && cells[1].parse::<u32>().is_ok();
        is_row.then_some(cells)
    })
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A private tmux server for one test, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// Whether tmux is there; under CI it must be (`.ci/run` installs it).
fn tmux_available() -> bool {
    let found = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var_os("CI").is_none(), "tmux is missing under CI");
        eprintln!("tmux is not installed: the live view's test is skipped");
    }
    found
}

async fn the_live_view_recycles_a_worker_on_a_key(dir: &Path) {
    if !tmux_available() {
        return;
    }
    let pool = pool(dir, "top-live").await;
    let before = pool.pids();
    let tmux = Tmux {
        socket: format!("looppool-top-{}", std::process::id()),
    };
    let command = format!(
        "{} top --dir {} --interval 200",
        env!("CARGO_BIN_EXE_looppool"),
        dir.display()
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "150",
        "-y",
        "30",
        &command,
    ]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    // The worker rows, as a person sees them.
    let mut screen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (0..3).any(|i| worker_row(&screen, i).is_none()) {
        assert!(
            Instant::now() < deadline,
            "no worker rows on screen:\n{screen}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        screen = tmux.screen();
    }
    assert!(screen.contains("top-live"), "{screen}");
    for (index, pid) in before.iter().enumerate() {
        assert_eq!(
            worker_row(&screen, index).unwrap()[1],
            pid.unwrap().to_string()
        );
    }
    // Down to worker 1, and `r`: it is recycled, the others are not.
    assert!(tmux
        .run(&["send-keys", "-t", "top", "Down"])
        .status
        .success());
    assert!(tmux.run(&["send-keys", "-t", "top", "r"]).status.success());
    wait_until(|| matches!(pool.pids()[1], Some(p) if Some(p) != before[1])).await;
    assert_eq!((pool.pids()[0], pool.pids()[2]), (before[0], before[2]));
    let new_pid = pool.pids()[1].unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        screen = tmux.screen();
        let shown = worker_row(&screen, 1).is_some_and(|r| r[1] == new_pid);
        if shown && screen.contains("recycle worker 1 of top-live: done") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new pid and the outcome on screen:\n{screen}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `q` quits, and the terminal's session with it.
    assert!(tmux.run(&["send-keys", "-t", "top", "q"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.run(&["has-session", "-t", "top"]).status.success() {
        assert!(Instant::now() < deadline, "top did not quit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.shutdown().await;
}
