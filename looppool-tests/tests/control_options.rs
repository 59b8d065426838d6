//! Per-task options with real worker processes: a task's own deadline
//! fails it (running, or never started when it passes while the task waits
//! behind a stopped worker), and replaces the pool-wide task timeout.

use std::time::{Duration, Instant};

use looppool::{CallError, Output};
use looppool_tests::{eventually, next_output, probe_pool, sys, Job};

#[tokio::test]
async fn a_task_past_its_own_deadline_fails_as_one_past_the_pool_timeout() {
    let (pool, mut outputs) = probe_pool!().workers(1).start().await.unwrap();
    let started = Instant::now();
    let id = pool
        .task(Job::Mark {
            value: 1,
            ms: 60_000,
        })
        .timeout(Duration::from_millis(300))
        .submit()
        .await
        .unwrap();
    assert_eq!(next_output(&mut outputs).await.value(), Some(&1));
    match next_output(&mut outputs).await {
        Output::Failed(e) => {
            assert_eq!(e.task, id);
            assert!(
                e.message.contains("exceeded its deadline of 300ms"),
                "{}",
                e.message
            );
        }
        other => panic!("expected its deadline, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(5));

    // A call: the same failure, as its error.
    let called = pool
        .task(Job::hold(2))
        .timeout(Duration::from_millis(200))
        .call()
        .await;
    match called {
        Err(CallError::Task(e)) => assert!(e.message.contains("deadline"), "{e}"),
        other => panic!("{other:?}"),
    }
    // A task within its deadline completes.
    let quick = pool
        .task(Job::Double(5))
        .timeout(Duration::from_secs(5))
        .call();
    assert_eq!(quick.await.unwrap(), 10);
    assert_eq!(pool.in_flight(), [0]);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_task_deadline_replaces_the_pool_wide_timeout() {
    let (pool, _outputs) = probe_pool!()
        .workers(1)
        .task_timeout(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    // Longer than the pool's timeout, within its own.
    let job = Job::Sleep { ms: 400, value: 7 };
    let longer = pool
        .task(job.clone())
        .timeout(Duration::from_secs(5))
        .call();
    assert_eq!(longer.await.unwrap(), 7);
    // Without one, the pool's timeout applies.
    match pool.call(job).await {
        Err(CallError::Task(e)) => assert!(e.message.contains("100ms"), "{e}"),
        other => panic!("{other:?}"),
    }
    pool.shutdown().await;
}

#[tokio::test]
async fn a_task_whose_deadline_passes_behind_a_stopped_worker_never_starts() {
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .no_heartbeat()
        .start()
        .await
        .unwrap();
    let pid = pool.pids()[0].unwrap();
    sys::signal(pid, libc::SIGSTOP);
    assert!(
        eventually(Duration::from_secs(5), || looppool_tests::process_state(
            pid
        ) == Some('T'))
        .await
    );
    // Fill the connection, so the task waits in the parent's buffer.
    let key = "k".repeat(64 * 1024);
    for value in 0..64 {
        let job = Job::Set {
            key: key.clone(),
            value,
        };
        pool.submit_to(0, job).await.unwrap();
    }
    let id = pool
        .task(Job::Mark { value: 1, ms: 0 })
        .timeout(Duration::from_millis(200))
        .submit()
        .await
        .unwrap();
    // Setup, not an assertion: the deadline passes while the worker is stopped.
    tokio::time::sleep(Duration::from_millis(400)).await;
    sys::signal(pid, libc::SIGCONT);
    match next_output(&mut outputs).await {
        Output::Failed(e) => {
            assert_eq!(e.task, id);
            assert!(e.message.contains("deadline"), "{}", e.message);
        }
        other => panic!("the task started: {other:?}"),
    }
    assert!(eventually(Duration::from_secs(10), || pool.in_flight() == [0]).await);
    pool.shutdown().await;
}
