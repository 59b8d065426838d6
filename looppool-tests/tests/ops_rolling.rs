//! Rolling restarts and upgrades: every worker replaced one at a time under
//! load without a task failed or lost, and replacements that fail leave the
//! old workers serving.
#![cfg(target_os = "linux")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use looppool::{Output, RecycleReason, StartError, WorkerEvent};
use looppool_tests::{assert_whole, probe_pool, recorder, Job, ProbeInit};

/// The program process `pid` runs.
fn exe(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

/// The processes (anywhere on the machine) running `program`, but
/// zombies: a replacement that failed must not be left running.
fn running(program: &Path) -> Vec<u32> {
    let program = program.canonicalize().unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let same = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == program);
        if same && !looppool_tests::process_gone(pid) {
            found.push(pid);
        }
    }
    found
}

/// The live processes of pool `pool` (by the title its workers' command
/// lines start with).
fn pool_processes(pool: &str) -> Vec<u32> {
    let title = format!(": {pool} worker ");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let arg0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        if String::from_utf8_lossy(arg0).contains(&title) && !looppool_tests::process_gone(pid) {
            found.push(pid);
        }
    }
    found
}

/// 100,000 tasks, half `submit`ted and half `call`ed, while every worker is
/// replaced: each submitted task has its one output, each call its reply,
/// nothing failed or lost, every pid changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_nothing() {
    const TASKS: u64 = 100_000;
    let (events, hook) = recorder();
    let (pool, mut outputs) = probe_pool!()
        .workers(3)
        .on_event(hook)
        .start()
        .await
        .unwrap();
    let before = pool.pids();
    let restarted = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    // Submitted tasks by id, with the value each must produce.
    let ledger = Arc::new(std::sync::Mutex::new(HashMap::new()));

    // Two submitters and two callers share the numbers 0..; each goes on
    // until TASKS were sent and the restart has ended.
    let mut load = tokio::task::JoinSet::new();
    for kind in ["submit", "submit", "call", "call"] {
        let (pool, next, restarted) = (pool.clone(), next.clone(), restarted.clone());
        let ledger = ledger.clone();
        load.spawn(async move {
            let mut calls = 0u64;
            loop {
                let x = next.fetch_add(1, Ordering::Relaxed);
                if x >= TASKS && restarted.load(Ordering::SeqCst) {
                    return calls;
                }
                if kind == "call" {
                    let got = pool.call(Job::Double(x)).await;
                    assert_eq!(got.unwrap(), 2 * x, "call {x}");
                    calls += 1;
                } else {
                    let id = pool.submit(Job::Double(x)).await.unwrap();
                    ledger.lock().unwrap().insert(id, 2 * x);
                }
            }
        });
    }
    // The consumer checks each output against the ledger as it comes.
    let consumer = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let mut seen = 0u64;
            while let Some(item) = outputs.next().await {
                match item {
                    Output::Value {
                        task: Some(id),
                        value,
                        ..
                    } => {
                        // The submitter records the id after `submit`
                        // returns, which may be after its output arrived.
                        let want = loop {
                            if let Some(v) = ledger.lock().unwrap().remove(&id) {
                                break v;
                            }
                            tokio::task::yield_now().await;
                        };
                        assert_eq!(value, want, "output of {id}");
                        seen += 1;
                    }
                    other => panic!("unexpected output {other:?}"),
                }
            }
            seen
        })
    };

    // Let the load build up, then replace every worker under it.
    while next.load(Ordering::Relaxed) < 10_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pool.rolling_restart().await.unwrap();
    let sent_during = next.load(Ordering::Relaxed);
    restarted.store(true, Ordering::SeqCst);
    let mut calls = 0;
    while let Some(joined) = load.join_next().await {
        calls += joined.unwrap();
    }
    let sent = next.load(Ordering::Relaxed);
    assert!(
        sent_during < TASKS,
        "the restart ended under load ({sent_during} sent)"
    );

    let after = pool.pids();
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a.is_some() && a != b,
            "every pid changed: {before:?} -> {after:?}"
        );
    }
    let stats = pool.stats();
    assert_eq!((stats.failed, stats.lost), (0, 0));
    let report = pool.shutdown().await;
    assert!(report.drained);
    let submitted = consumer.await.unwrap();
    assert!(
        ledger.lock().unwrap().is_empty(),
        "every submitted task had its output"
    );
    // Each loop sent one number more than it ran (the one that told it to
    // stop), so runs plus loops = numbers taken.
    assert_eq!(submitted + calls + 4, sent);
    assert!(submitted + calls >= TASKS);
    let recycled: Vec<usize> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::Recycled {
                worker,
                reason: RecycleReason::RollingRestart,
                ..
            } => Some(*worker),
            _ => None,
        })
        .collect();
    assert_eq!(recycled, [0, 1, 2], "one handover per worker, in order");
}

#[tokio::test]
async fn an_upgrade_moves_every_worker_and_its_restarts_to_the_new_program() {
    let next = PathBuf::from(env!("CARGO_BIN_EXE_probe-next"));
    let (pool, _outputs) = probe_pool!().workers(2).start().await.unwrap();
    for pid in pool.pids().into_iter().flatten() {
        assert_eq!(exe(pid), Path::new(env!("CARGO_BIN_EXE_test-worker")));
    }
    pool.upgrade(&next).await.unwrap();
    for pid in pool.pids().into_iter().flatten() {
        assert_eq!(exe(pid), next);
    }
    assert_whole(&pool).await;
    // A crash's replacement, and a worker the pool grows, run it too.
    let old = pool.pids()[0].unwrap();
    pool.kill_worker(0);
    assert!(
        looppool_tests::eventually(Duration::from_secs(10), || {
            matches!(pool.pids()[0], Some(p) if p != old)
        })
        .await
    );
    assert_eq!(exe(pool.pids()[0].unwrap()), next);
    pool.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_to_a_program_that_fails_init_leaves_the_old_workers_serving() {
    let broken = PathBuf::from(env!("CARGO_BIN_EXE_probe-broken-init"));
    let (events, hook) = recorder();
    let (pool, _outputs) = probe_pool!()
        .workers(2)
        .on_event(hook)
        .start()
        .await
        .unwrap();
    let pids = pool.pids();
    let err = pool.upgrade(&broken).await.unwrap_err();
    assert_eq!((err.worker(), err.replaced()), (0, 0));
    match err.cause() {
        StartError::Init { worker, message } => {
            assert_eq!(*worker, 0);
            assert!(
                message.contains("this build's initialiser fails"),
                "{message}"
            );
        }
        other => panic!("expected an init failure, got {other:?}"),
    }
    assert!(err.to_string().contains("no worker was replaced"), "{err}");
    assert_eq!(pool.pids(), pids, "the old workers serve on");
    assert_whole(&pool).await;
    assert_eq!(pool.stats().restarts, 0);
    assert!(
        running(&broken).is_empty(),
        "the failed replacement was stopped"
    );
    assert!(!events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, WorkerEvent::Recycled { .. })));
    // Its later restarts keep the old program.
    let old = pool.pids()[1];
    pool.kill_worker(1);
    // Until the replacement runs: the killed process keeps its pid in the
    // pool until it is reaped.
    assert!(
        looppool_tests::eventually(Duration::from_secs(10), || {
            matches!(pool.pids()[1], Some(p) if Some(p) != old)
        })
        .await
    );
    assert_whole(&pool).await;
    assert_eq!(
        exe(pool.pids()[1].unwrap()),
        Path::new(env!("CARGO_BIN_EXE_test-worker"))
    );
    // A missing program fails as plainly.
    let err = pool.upgrade("/nonexistent/worker").await.unwrap_err();
    assert!(matches!(err.cause(), StartError::Spawn { .. }), "{err:?}");
    pool.shutdown().await;
}

/// A replacement that fails part-way (worker 1's, here) stops the restart:
/// worker 0 runs its replacement, workers 1 and 2 their old processes.
#[tokio::test]
async fn a_replacement_failing_part_way_stops_the_restart_there() {
    let marker = std::env::temp_dir().join(format!("looppool-rolling-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let (events, hook) = recorder();
    // Once worker 0's replacement is in, every later init fails.
    let fail_after = {
        let marker = marker.clone();
        move |e: &WorkerEvent| {
            hook(e);
            if let WorkerEvent::Recycled { worker: 0, .. } = e {
                std::fs::write(&marker, b"").unwrap();
            }
        }
    };
    let (pool, _outputs) = probe_pool!()
        .init(ProbeInit {
            fail_if_exists: Some(marker.clone()),
            ..Default::default()
        })
        .workers(3)
        .on_event(fail_after)
        .start()
        .await
        .unwrap();
    let before = pool.pids();
    let err = pool.rolling_restart().await.unwrap_err();
    assert_eq!((err.worker(), err.replaced()), (1, 1));
    assert!(
        matches!(err.cause(), StartError::Init { worker: 1, .. }),
        "{err:?}"
    );
    let after = pool.pids();
    assert_ne!(after[0], before[0]);
    assert_eq!(after[1..], before[1..]);
    std::fs::remove_file(&marker).unwrap();
    assert_whole(&pool).await;
    let stats = pool.stats();
    assert_eq!((stats.lost, stats.failed), (0, 0));
    let recycled = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, WorkerEvent::Recycled { .. }))
        .count();
    assert_eq!(recycled, 1);
    pool.shutdown().await;
}

/// A worker that holds a task keeps its replacement waiting; a shutdown
/// meanwhile ends the restart with `Closed` and stops the replacement.
#[tokio::test]
async fn a_shutdown_during_a_rolling_restart_stops_it_and_its_replacement() {
    let name = "rolling-shutdown";
    let (pool, mut outputs) = probe_pool!().name(name).workers(2).start().await.unwrap();
    let before = pool.pids();
    // Worker 0 drains for 1 s before its replacement may take over.
    pool.submit_to(
        0,
        Job::Sleep {
            ms: 1_000,
            value: 9,
        },
    )
    .await
    .unwrap();
    let restart = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.rolling_restart().await })
    };
    // Until the replacement has started beside worker 0.
    let staged =
        looppool_tests::eventually(Duration::from_secs(10), || pool_processes(name).len() > 2)
            .await;
    assert!(staged, "a replacement started beside the draining worker");
    let report = pool.shutdown().await;
    assert!(report.drained, "the held task completed");
    match looppool_tests::next_output(&mut outputs).await {
        Output::Value { value, .. } => assert_eq!(value, 9),
        other => panic!("expected the held task's output, got {other:?}"),
    }
    let err = restart.await.unwrap().unwrap_err();
    assert_eq!(err.worker(), 0);
    assert!(matches!(err.cause(), StartError::Closed), "{err:?}");
    // Nothing of the pool outlives its shutdown: old workers and the
    // replacement alike.
    for pid in before.into_iter().flatten() {
        assert!(looppool_tests::process_gone(pid));
    }
    let left =
        looppool_tests::eventually(Duration::from_secs(5), || pool_processes(name).is_empty())
            .await;
    assert!(
        left,
        "no process of the pool runs on: {:?}",
        pool_processes(name)
    );
}
