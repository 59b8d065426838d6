//! A runaway task is contained: with `memory_limit`, a worker whose task
//! allocates without end dies at the limit, its task is reported lost with
//! `LossCause::OutOfMemory`, and nothing else is disturbed.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use looppool::transport::{ConnectFuture, Connector};
use looppool::{CallError, ExitStatus, LossCause, Output, StartError, WorkerEvent};
use looppool_tests::{eventually, next_output, probe_pool, process_gone, recorder, Job, Probe};

const LIMIT: u64 = 256 << 20;
/// The hog's own cap: a test whose limit does not work stops here.
const HOG_CAP: u64 = 4 << 30;

/// A peak-memory field of process `pid` (`VmHWM`, `VmData`, ...) in bytes.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Watches process `pid` from a thread of its own until it is gone, and
/// returns its peak resident memory (`VmHWM`) as last seen. Kills it (and
/// says so) when the peak passes `guard`, so that a broken limit fails the
/// test instead of filling the machine.
fn watch_peak(pid: u32, guard: u64) -> std::thread::JoinHandle<(u64, bool)> {
    std::thread::spawn(move || {
        let mut peak = 0;
        let killed = AtomicBool::new(false);
        while !process_gone(pid) {
            if let Some(hwm) = status_bytes(pid, "VmHWM") {
                peak = peak.max(hwm);
            }
            if peak > guard && !killed.swap(true, Ordering::Relaxed) {
                looppool_tests::sys::signal(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (peak, killed.load(Ordering::Relaxed))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_task_dies_at_the_memory_limit_and_is_reported_out_of_memory() {
    let (events, hook) = recorder();
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .memory_limit(LIMIT)
        .on_event(hook)
        .start()
        .await
        .unwrap();
    let pids: Vec<u32> = pool.pids().into_iter().map(Option::unwrap).collect();
    let hog_pid = pids[0];
    // Work on the other worker that spans the hog's life.
    let mut others = HashSet::new();
    for i in 0..10 {
        others.insert(
            pool.submit_to(1, Job::Sleep { ms: 100, value: i })
                .await
                .unwrap(),
        );
    }
    let peak = watch_peak(hog_pid, 2 * LIMIT);
    let started = Instant::now();
    let hog = pool.submit_to(0, Job::Hog(HOG_CAP)).await.unwrap();
    let mut lost = None;
    while lost.is_none() || !others.is_empty() {
        match next_output(&mut outputs).await {
            Output::Lost { task, lost: why } if task == hog => {
                lost = Some((*why, started.elapsed()));
            }
            Output::Value {
                task: Some(task), ..
            } if others.remove(&task) => {}
            other => panic!("unexpected item {other:?}"),
        }
    }
    let (peak, guard_killed) = peak.join().unwrap();
    let (why, after) = lost.unwrap();
    assert!(
        !guard_killed,
        "the worker held {} MiB, more than twice its {} MiB limit: killed by the test",
        peak >> 20,
        LIMIT >> 20
    );
    assert_eq!(why.cause, LossCause::OutOfMemory, "{why}");
    assert_eq!((why.worker, why.pid), (0, hog_pid), "{why}");
    assert!(after < Duration::from_secs(5), "lost only after {after:?}");
    assert!(
        peak > LIMIT / 2 && peak < 2 * LIMIT,
        "peak resident memory {} MiB against a {} MiB limit",
        peak >> 20,
        LIMIT >> 20
    );
    eprintln!(
        "hog lost after {after:?}: {why}; peak resident {} MiB",
        peak >> 20
    );

    // The event says the same, and worker 1 never died.
    assert!(
        eventually(Duration::from_secs(10), || pool
            .pids()
            .iter()
            .all(Option::is_some)
            && pool.pids()[0] != Some(hog_pid))
        .await,
        "the pool is back at full size"
    );
    assert_eq!(pool.pids()[1], Some(pids[1]), "the other worker lives on");
    let events = events.lock().unwrap().clone();
    assert!(
        events.iter().any(|e| matches!(e,
            WorkerEvent::Crashed { worker: 0, pid, cause: LossCause::OutOfMemory, lost_tasks: 1, .. }
                if *pid == hog_pid)),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, WorkerEvent::Crashed { worker: 1, .. })),
        "{events:?}"
    );
    // Both workers serve, the replacement afresh.
    assert_eq!(pool.call_to(0, Job::Double(20)).await.unwrap(), 40);
    assert_eq!(pool.call_to(1, Job::Double(21)).await.unwrap(), 42);
    assert_eq!(pool.call_to(0, Job::Hold(0)).await.unwrap(), 0);
    let report = pool.shutdown_timeout(Duration::from_secs(10)).await;
    assert!(report.drained, "{report:?}");
}

#[tokio::test]
async fn a_call_that_runs_out_of_memory_fails_with_worker_lost() {
    let (pool, _outputs) = probe_pool!()
        .workers(1)
        .memory_limit(LIMIT)
        .start()
        .await
        .unwrap();
    let pid = pool.pids()[0].unwrap();
    let peak = watch_peak(pid, 2 * LIMIT);
    let err = pool.call(Job::Hog(HOG_CAP)).await.unwrap_err();
    let (_, guard_killed) = peak.join().unwrap();
    assert!(!guard_killed, "the worker passed twice its limit");
    let CallError::WorkerLost(lost) = &err else {
        panic!("expected WorkerLost, got {err:?}")
    };
    assert_eq!(lost.cause, LossCause::OutOfMemory, "{lost}");
    assert!(lost.to_string().contains("out of memory"), "{lost}");
    // Memory, not another abort: a plain abort is still a crash.
    assert_eq!(pool.call(Job::Double(1)).await.unwrap(), 2);
    let err = pool.call(Job::Abort).await.unwrap_err();
    let CallError::WorkerLost(lost) = &err else {
        panic!("expected WorkerLost, got {err:?}")
    };
    assert_eq!(lost.cause, LossCause::Crashed, "{lost}");
    assert_eq!(lost.status, ExitStatus::Signal(libc::SIGABRT), "{lost}");
    pool.shutdown().await;
}

#[tokio::test]
async fn memory_under_the_limit_is_usable() {
    let (pool, _outputs) = probe_pool!()
        .workers(1)
        .memory_limit(LIMIT)
        .start()
        .await
        .unwrap();
    assert_eq!(
        pool.call(Job::Hog(128 << 20)).await.unwrap(),
        128 << 20,
        "half the limit fits"
    );
    pool.shutdown().await;
}

/// A connector that reaches nothing: only the configuration is checked.
struct Nowhere;

impl Connector for Nowhere {
    fn connect(&self, _index: usize) -> ConnectFuture<'_> {
        Box::pin(async { Err(io::Error::other("nowhere")) })
    }

    fn describe(&self) -> String {
        "nowhere".into()
    }
}

#[tokio::test]
async fn nonsense_memory_limits_are_refused_with_what_to_change() {
    type Builder = looppool::PoolBuilder<Probe>;
    let cases: Vec<(&str, Builder, &[&str])> = vec![
        (
            "a limit no worker can start in",
            probe_pool!().memory_limit(1 << 20),
            &["memory_limit(1048576)", "use at least 33554432"],
        ),
        (
            "a limit beyond the address space",
            probe_pool!().memory_limit(u64::MAX),
            &["memory_limit(18446744073709551615)", "leave it unset"],
        ),
        (
            "recycling above the hard limit",
            probe_pool!()
                .memory_limit(LIMIT)
                .recycle_above_memory(LIMIT),
            &["recycle_above_memory(268435456)", "below the limit"],
        ),
        (
            "a limit on workers behind a connector",
            looppool::Pool::<Probe>::builder()
                .init_default()
                .connector(Nowhere)
                .memory_limit(LIMIT),
            &["memory_limit", "connector"],
        ),
    ];
    for (what, builder, parts) in cases {
        let err = builder.start().await.unwrap_err();
        let StartError::Config(e) = &err else {
            panic!("{what}: expected a configuration error, got {err:?}")
        };
        let text = e.to_string();
        for part in parts {
            assert!(
                text.contains(part),
                "{what}: {text:?} does not say {part:?}"
            );
        }
    }
    // A recycling threshold below the limit is the intended pairing.
    let (pool, _outputs) = probe_pool!()
        .workers(1)
        .memory_limit(LIMIT)
        .recycle_above_memory(LIMIT / 4 * 3)
        .start()
        .await
        .unwrap();
    assert_eq!(pool.call(Job::Double(2)).await.unwrap(), 4);
    pool.shutdown().await;
}
