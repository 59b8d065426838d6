//! How a program becomes a worker: `worker_main!` as the first line of a
//! `#[tokio::main]` (inside the program's runtime), and a program that
//! forgot it, which must fail to start a pool rather than start itself
//! again and again.
//!
//! Every program runs under a cap: its descendants are counted while it
//! runs, and it is killed (its workers die with it) when they exceed the
//! cap or it outlives its deadline, so a regression cannot take the machine
//! down.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use looppool_tests::sys;

/// What a capped run of a program left.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The most descendants seen at once.
    most_descendants: usize,
}

/// The live descendants of `root`, from each process's parent in /proc.
fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if let Some(ppid) = rest.split(' ').nth(1).and_then(|p| p.parse::<u32>().ok()) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            found.push(child);
            todo.push(child);
        }
    }
    found
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "looppool-worker-entry-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `program` to its end, killing it when it has more than `cap`
/// descendants at once or runs past `deadline`.
fn run_capped(program: &str, env: &[(&str, &str)], cap: usize, deadline: Duration) -> Run {
    let dir = scratch(
        std::path::Path::new(program)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap(),
    );
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(program)
        .envs(env.iter().copied())
        .env_remove("LOOPPOOL_WORKER")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut most = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let count = descendants(child.id()).len();
        most = most.max(count);
        if count > cap || started.elapsed() > deadline {
            // Its workers die with it (the parent-death signal), and theirs.
            sys::signal(child.id(), libc::SIGKILL);
            let _ = child.wait();
            panic!(
                "{program} had {count} descendants after {:?} (cap {cap}, deadline {deadline:?}); \
                 stderr:\n{}",
                started.elapsed(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let run = Run {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
        most_descendants: most,
    };
    let _ = std::fs::remove_dir_all(&dir);
    run
}

/// The README's example, with `worker_main!` as the first line of a
/// multi-thread `#[tokio::main]`, runs its workers and prints the output.
#[test]
fn the_readme_example_with_tokio_main_runs() {
    let run = run_capped(
        env!("CARGO_BIN_EXE_readme-main"),
        &[],
        8,
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert!(run.stdout.contains("value: 2"), "stdout:\n{}", run.stdout);
    assert!(
        !run.stderr.contains("Cannot start a runtime"),
        "stderr:\n{}",
        run.stderr
    );
    assert!(
        run.most_descendants <= 4,
        "{} descendants",
        run.most_descendants
    );
}

/// The same with a current-thread `#[tokio::main]`.
#[test]
fn the_readme_example_with_a_current_thread_tokio_main_runs() {
    let run = run_capped(
        env!("CARGO_BIN_EXE_readme-main-current-thread"),
        &[],
        8,
        Duration::from_secs(30),
    );
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert!(run.stdout.contains("value: 2"), "stdout:\n{}", run.stdout);
}

/// A program that forgot `worker_main!`: its workers run its `main`, and
/// their `start` fails at once with an error that says what to add, so the
/// pool's start fails too, naming the missing macro; no process starts a
/// pool of its own.
#[test]
fn a_program_without_worker_main_does_not_start_itself_recursively() {
    let dir = scratch("forgot-log");
    let log = dir.join("runs");
    let run = run_capped(
        env!("CARGO_BIN_EXE_forgot-worker-main"),
        &[("FORGOT_LOG", log.to_str().unwrap())],
        4,
        Duration::from_secs(30),
    );
    let runs = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let depths: Vec<&str> = runs.lines().filter_map(|l| l.split(' ').nth(1)).collect();
    assert!(
        !run.stderr.contains("nested at depth"),
        "a worker started a pool of its own:\n{}",
        run.stderr
    );
    // The program itself and its two workers, nothing below them.
    assert_eq!(
        depths.len(),
        3,
        "runs of main:\n{runs}\nstderr:\n{}",
        run.stderr
    );
    assert!(depths.iter().all(|&d| d == "0" || d == "1"), "{runs}");
    assert!(
        run.most_descendants <= 2,
        "{} descendants",
        run.most_descendants
    );
    assert_eq!(run.code, Some(1), "stderr:\n{}", run.stderr);
    // Each worker's own `start` refused, saying what to add and where.
    assert!(
        run.stderr.contains(
            "(depth 1): start failed: this process was started by a looppool pool as worker \
             \"doubler\" but never became a worker"
        ),
        "stderr:\n{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("put `looppool::worker_main!(Doubler)` as the first line of `main`"),
        "stderr:\n{}",
        run.stderr
    );
    // The parent's start failed, naming the missing macro with the type.
    let parent = run
        .stderr
        .lines()
        .find(|l| l.contains("(depth 0): start failed"))
        .unwrap_or_else(|| panic!("stderr:\n{}", run.stderr));
    assert!(
        parent.contains("instead of becoming worker \"doubler\"")
            && parent.contains("put looppool::worker_main!(Doubler) as the first line of its main"),
        "{parent}"
    );
}
