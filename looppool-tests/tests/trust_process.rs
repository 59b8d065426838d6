//! A worker's death is seen from its process, not only from its connection,
//! and the processes a worker started end with it.

use std::time::{Duration, Instant};

use looppool::{CallError, ExitStatus, LossCause, Output};
use looppool_tests::{eventually, next_output, probe_pool, process_gone, sys, Job};

/// Kills process `pid` when dropped, so that a process a test's worker
/// started never outlives the test, whatever the test's outcome.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        sys::signal(self.0, libc::SIGKILL);
    }
}

/// The pid a `Fork` or `SpawnSleep` job on worker `worker` emitted.
async fn emitted_pid(
    pool: &looppool::Pool<looppool_tests::Probe>,
    outputs: &mut looppool::Outputs<u64>,
    worker: usize,
    job: Job,
) -> u32 {
    pool.submit_to(worker, job).await.unwrap();
    match next_output(outputs).await {
        Output::Value { value, .. } => u32::try_from(value).unwrap(),
        other => panic!("expected a pid, got {other:?}"),
    }
}

#[tokio::test]
async fn a_worker_that_forked_and_died_is_seen_dying() {
    let (pool, mut outputs) = probe_pool!().workers(2).start().await.unwrap();
    let old_pid = pool.pids()[1].unwrap();
    let held = pool.submit_to(1, Job::hold(7)).await.unwrap();
    let caller = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.call_to(1, Job::hold(8)).await })
    };
    // The forked copy holds the connection open for half a minute.
    let forked = emitted_pid(&pool, &mut outputs, 1, Job::Fork { linger_ms: 30_000 }).await;
    let _forked = KillOnDrop(forked);
    pool.submit_to(1, Job::Exit(3)).await.unwrap();

    let died = Instant::now();
    let lost = tokio::time::timeout(Duration::from_secs(5), outputs.next())
        .await
        .expect("the held task is reported within 5 s of its worker's death")
        .unwrap();
    let Output::Lost { task, lost } = lost else {
        panic!("{lost:?}")
    };
    assert_eq!(task, held);
    assert_eq!(lost.worker, 1);
    assert_eq!(lost.pid, old_pid);
    assert_eq!(lost.status, ExitStatus::Code(3));
    assert_eq!(lost.cause, LossCause::Crashed);

    let called = tokio::time::timeout(Duration::from_secs(5), caller)
        .await
        .expect("the pending call returns within 5 s")
        .unwrap();
    assert!(
        matches!(&called, Err(CallError::WorkerLost(l)) if l.pid == old_pid),
        "{called:?}"
    );
    // Back at full size: a new worker 1 that answers.
    assert!(
        eventually(Duration::from_secs(5), || {
            matches!(pool.pids()[1], Some(p) if p != old_pid)
        })
        .await,
        "worker 1 not replaced: {:?}",
        pool.pids()
    );
    assert_eq!(pool.call_to(1, Job::WhoAmI).await.unwrap(), 1);
    assert_eq!(pool.call_to(0, Job::WhoAmI).await.unwrap(), 0);
    assert!(
        died.elapsed() < Duration::from_secs(10),
        "{:?}",
        died.elapsed()
    );
    let report = pool.shutdown_timeout(Duration::from_secs(5)).await;
    assert!(report.drained, "{report:?}");
}

#[tokio::test]
async fn shutdown_timeout_returns_by_its_deadline_when_a_fork_holds_the_connection() {
    let (pool, mut outputs) = probe_pool!().workers(2).start().await.unwrap();
    pool.submit_to(1, Job::hold(7)).await.unwrap();
    let forked = emitted_pid(&pool, &mut outputs, 1, Job::Fork { linger_ms: 30_000 }).await;
    let _forked = KillOnDrop(forked);

    let started = Instant::now();
    let report = tokio::time::timeout(
        Duration::from_secs(15),
        pool.shutdown_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("shutdown_timeout(2 s) returns");
    let took = started.elapsed();
    assert!(!report.drained, "{report:?}");
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    let lost = next_output(&mut outputs).await;
    assert!(
        matches!(&lost, Output::Lost { lost, .. } if lost.cause == LossCause::ShutdownDeadline),
        "{lost:?}"
    );
}

#[tokio::test]
async fn a_forked_copy_of_a_dead_worker_is_killed_with_it() {
    let (pool, mut outputs) = probe_pool!().workers(1).start().await.unwrap();
    let forked = emitted_pid(&pool, &mut outputs, 0, Job::Fork { linger_ms: 30_000 }).await;
    let _forked = KillOnDrop(forked);
    let err = tokio::time::timeout(Duration::from_secs(5), pool.call_to(0, Job::Exit(3)))
        .await
        .expect("the call returns within 5 s")
        .unwrap_err();
    assert!(matches!(err, CallError::WorkerLost(_)), "{err:?}");
    assert!(
        eventually(Duration::from_secs(3), || process_gone(forked)).await,
        "the forked copy {forked} outlived its worker"
    );
}

/// Starts `sleep 1000` from worker 0 of a fresh one-worker pool, ends the
/// worker with `end`, and checks that the sleep goes with it.
async fn the_sleep_goes_with_its_worker(
    end: impl FnOnce(&looppool::Pool<looppool_tests::Probe>, u32),
) {
    let (pool, mut outputs) = probe_pool!().workers(1).start().await.unwrap();
    let worker = pool.pids()[0].unwrap();
    let sleep = emitted_pid(&pool, &mut outputs, 0, Job::SpawnSleep).await;
    let _sleep = KillOnDrop(sleep);
    assert!(!process_gone(sleep));
    end(&pool, worker);
    assert!(
        eventually(Duration::from_secs(3), || process_gone(worker)).await,
        "the worker {worker} did not end"
    );
    assert!(
        eventually(Duration::from_secs(3), || process_gone(sleep)).await,
        "sleep ({sleep}) outlived its worker ({worker})"
    );
    pool.shutdown_timeout(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_process_a_worker_started_dies_when_the_worker_is_sigkilled() {
    the_sleep_goes_with_its_worker(|_, worker| sys::signal(worker, libc::SIGKILL)).await;
}

#[tokio::test]
async fn a_process_a_worker_started_dies_when_the_pool_kills_the_worker() {
    the_sleep_goes_with_its_worker(|pool, _| pool.kill_worker(0)).await;
}

#[tokio::test]
async fn a_process_a_worker_started_dies_when_the_worker_drains_and_exits() {
    let (pool, mut outputs) = probe_pool!().workers(1).start().await.unwrap();
    let worker = pool.pids()[0].unwrap();
    let sleep = emitted_pid(&pool, &mut outputs, 0, Job::SpawnSleep).await;
    let _sleep = KillOnDrop(sleep);
    let report = pool.shutdown_timeout(Duration::from_secs(5)).await;
    assert!(report.drained, "{report:?}");
    assert!(process_gone(worker));
    assert!(
        eventually(Duration::from_secs(3), || process_gone(sleep)).await,
        "sleep ({sleep}) outlived its worker ({worker})"
    );
}
