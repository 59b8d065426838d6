//! Cancellation by task id, with real worker processes: a running handler
//! is dropped, a cleanup handler sees the signal, a task not yet written
//! never starts, every task ends exactly once when cancels race
//! completions, a dropped `call` frees its slot, and a worker that dies or
//! blocks with a cancel under way.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use looppool::{BlockedCancel, CallError, LossCause, Output, Pool, TaskId};
use looppool_tests::{eventually, next_output, probe_pool, sys, Job, Probe};

/// Stops (SIGSTOP) worker `worker` and waits until the kernel says so.
async fn stop(pool: &Pool<Probe>, worker: usize) -> u32 {
    let pid = pool.pids()[worker].expect("a live worker");
    sys::signal(pid, libc::SIGSTOP);
    assert!(
        eventually(Duration::from_secs(5), || looppool_tests::process_state(
            pid
        ) == Some('T'))
        .await,
        "worker {worker} (pid {pid}) did not stop"
    );
    pid
}

/// Sends worker `worker` tasks whose frames fill its connection while it
/// is stopped, so that what is sent next stays in the parent's buffer.
async fn fill_connection(pool: &Pool<Probe>, worker: usize) -> Vec<TaskId> {
    let key = "k".repeat(64 * 1024);
    let mut ids = Vec::new();
    // 4 MiB: more than a socket pair's buffers hold.
    for value in 0..64 {
        let job = Job::Set {
            key: key.clone(),
            value,
        };
        ids.push(pool.submit_to(worker, job).await.unwrap());
    }
    ids
}

#[tokio::test]
async fn a_running_task_is_dropped_and_ends_cancelled_once() {
    let (pool, mut outputs) = probe_pool!().workers(1).start().await.unwrap();
    let id = pool
        .submit(Job::Mark {
            value: 10,
            ms: 60_000,
        })
        .await
        .unwrap();
    // It started: its first output arrived.
    assert_eq!(next_output(&mut outputs).await.value(), Some(&10));
    let asked = Instant::now();
    assert!(pool.cancel(id));
    assert!(!pool.cancel(id), "a second cancel is refused");
    match next_output(&mut outputs).await {
        Output::Cancelled { task, worker } => {
            assert_eq!((task, worker), (id, 0));
        }
        other => panic!("expected the cancel, got {other:?}"),
    }
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert!(!pool.cancel(id), "an ended task cannot be cancelled");
    // Its slot is free and the worker carries on.
    assert_eq!(pool.in_flight(), [0]);
    assert_eq!(pool.call(Job::Double(4)).await.unwrap(), 8);
    assert_eq!(
        pool.stats().workers[0].restarts,
        0,
        "no worker was replaced"
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn a_cleanup_handler_sees_the_signal_and_finishes_within_the_grace_period() {
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .cancel_grace(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    let job = Job::Cleanup {
        value: 77,
        ms: 60_000,
        cleanup_ms: 50,
    };
    let id = pool.submit_to(0, job).await.unwrap();
    // Tasks start in order: once this call is answered, the first runs.
    assert_eq!(pool.call_to(0, Job::Double(1)).await.unwrap(), 2);
    assert!(pool.cancel(id));
    assert_eq!(
        next_output(&mut outputs).await.value(),
        Some(&77),
        "its cleanup ran"
    );
    assert!(
        matches!(next_output(&mut outputs).await, Output::Cancelled { task, .. } if task == id)
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn a_cleanup_longer_than_the_grace_period_is_cut_short() {
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .cancel_grace(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let job = Job::Cleanup {
        value: 77,
        ms: 60_000,
        cleanup_ms: 30_000,
    };
    let id = pool.submit_to(0, job).await.unwrap();
    assert_eq!(pool.call_to(0, Job::Double(1)).await.unwrap(), 2);
    let asked = Instant::now();
    assert!(pool.cancel(id));
    match next_output(&mut outputs).await {
        Output::Cancelled { task, .. } => assert_eq!(task, id),
        other => panic!("expected the cancel without the cleanup's output, got {other:?}"),
    }
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn a_task_not_yet_written_to_its_stopped_worker_never_starts() {
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .no_heartbeat()
        .start()
        .await
        .unwrap();
    let pid = stop(&pool, 0).await;
    let fillers = fill_connection(&pool, 0).await;
    let id = pool.submit(Job::Mark { value: 10, ms: 0 }).await.unwrap();
    assert!(pool.cancel(id));
    sys::signal(pid, libc::SIGCONT);
    // The fillers complete (no outputs); the cancelled task never emits.
    match next_output(&mut outputs).await {
        Output::Cancelled { task, .. } => assert_eq!(task, id),
        other => panic!("the cancelled task ran: {other:?}"),
    }
    assert!(
        eventually(Duration::from_secs(10), || pool.in_flight() == [0]).await,
        "{} fillers and the cancelled task end",
        fillers.len()
    );
    let stats = pool.stats();
    assert_eq!(stats.done, fillers.len() as u64);
    pool.shutdown().await;
}

#[tokio::test]
async fn cancels_racing_completions_leave_every_task_exactly_one_fate() {
    const TASKS: u64 = 10_000;
    let (pool, mut outputs) = probe_pool!().workers(2).start().await.unwrap();
    let producer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut refused = Vec::new();
            for x in 0..TASKS {
                // Even values: a task that emits, waits 0 to 2 ms, emits
                // again; cancelled at once, later, or not at all.
                let id = pool
                    .submit(Job::Mark {
                        value: 2 * x,
                        ms: x % 3,
                    })
                    .await
                    .unwrap();
                match x % 4 {
                    0 | 1 => {
                        if !pool.cancel(id) {
                            refused.push(id);
                        }
                    }
                    2 => {
                        tokio::task::yield_now().await;
                        if !pool.cancel(id) {
                            refused.push(id);
                        }
                    }
                    _ => refused.push(id),
                }
            }
            refused
        })
    };
    // Per task: the values it emitted, and whether it ended cancelled.
    let mut seen: HashMap<TaskId, (Vec<u64>, u32)> = HashMap::new();
    let mut ended = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while ended < TASKS {
        let left = deadline.saturating_duration_since(Instant::now());
        let item = tokio::time::timeout(left, outputs.next())
            .await
            .unwrap_or_else(|_| panic!("stalled with {ended} of {TASKS} ended"))
            .expect("the stream goes on");
        match item {
            Output::Value {
                task: Some(task),
                value,
                ..
            } => {
                let entry = seen.entry(task).or_default();
                assert_eq!(entry.1, 0, "an output after the task's cancel");
                entry.0.push(value);
                if value % 2 == 1 {
                    ended += 1;
                }
            }
            Output::Cancelled { task, .. } => {
                let entry = seen.entry(task).or_default();
                assert!(
                    !entry.0.iter().any(|v| v % 2 == 1),
                    "cancelled after completing"
                );
                entry.1 += 1;
                assert_eq!(entry.1, 1, "cancelled twice");
                ended += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let refused = producer.await.unwrap();
    assert_eq!(seen.len() as u64, TASKS);
    for id in refused {
        assert_eq!(
            seen[&id].1, 0,
            "a task whose cancel was refused ended cancelled"
        );
    }
    let cancelled = seen.values().filter(|(_, c)| *c == 1).count();
    assert!(cancelled > 0, "no cancel won a race");
    assert!(
        eventually(Duration::from_secs(5), || pool.in_flight() == [0, 0]).await,
        "every slot is free"
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn a_dropped_call_cancels_its_task_and_frees_its_slot_unless_detached() {
    // One slot: the next call can only run once the dropped one's is free.
    let (pool, _outputs) = probe_pool!().workers(1).max_tasks(1).start().await.unwrap();
    let dropped = tokio::time::timeout(Duration::from_millis(100), pool.call(Job::hold(1))).await;
    assert!(dropped.is_err(), "the call was still waiting");
    let started = Instant::now();
    assert_eq!(pool.call(Job::Double(21)).await.unwrap(), 42);
    assert!(started.elapsed() < Duration::from_secs(5));

    // Detached: the task runs on after its future is dropped.
    let detached = pool.task(Job::Sleep { ms: 300, value: 5 }).detach().call();
    assert!(tokio::time::timeout(Duration::from_millis(50), detached)
        .await
        .is_err());
    assert_eq!(pool.in_flight(), [1], "the detached task still runs");
    assert!(eventually(Duration::from_secs(5), || pool.in_flight() == [0]).await);
    assert_eq!(pool.stats().done, 2, "the detached task completed");
    pool.shutdown().await;
}

#[tokio::test]
async fn a_cancelled_task_whose_worker_is_killed_ends_cancelled_and_the_others_lost() {
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .no_heartbeat()
        .start()
        .await
        .unwrap();
    let cancelled = pool.submit(Job::hold(1)).await.unwrap();
    let others = [
        pool.submit(Job::hold(2)).await.unwrap(),
        pool.submit(Job::hold(3)).await.unwrap(),
    ];
    assert_eq!(pool.call(Job::Double(1)).await.unwrap(), 2);
    // Stopped: the worker cannot answer the cancel before it dies.
    let pid = stop(&pool, 0).await;
    assert!(pool.cancel(cancelled));
    sys::signal(pid, libc::SIGKILL);
    let mut fates = HashMap::new();
    for _ in 0..3 {
        match next_output(&mut outputs).await {
            Output::Cancelled { task, .. } => assert!(fates.insert(task, "cancelled").is_none()),
            Output::Lost { task, .. } => assert!(fates.insert(task, "lost").is_none()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(fates[&cancelled], "cancelled");
    for id in others {
        assert_eq!(fates[&id], "lost");
    }
    looppool_tests::assert_whole(&pool).await;
    pool.shutdown().await;
}

#[tokio::test]
async fn a_blocked_handler_is_left_to_finish_by_default() {
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .cancel_grace(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    // Spins 1 s in its first poll: the cancel is read only after it ended.
    let id = pool
        .submit(Job::Spin {
            ms: 1_000,
            value: 9,
        })
        .await
        .unwrap();
    // The worker's loop is blocked, so nothing can tell when it read the
    // task: give the writer time to write it (otherwise the cancel would
    // find it unwritten, and skip it).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(pool.cancel(id));
    match next_output(&mut outputs).await {
        Output::Value { task, value, .. } => assert_eq!((task, value), (Some(id), 9)),
        other => panic!("the completion stands, got {other:?}"),
    }
    assert_eq!(pool.stats().workers[0].restarts, 0);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_blocked_handler_gets_its_worker_replaced_under_that_policy() {
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .cancel_grace(Duration::from_millis(100))
        .on_blocked_cancel(BlockedCancel::ReplaceWorker)
        .heartbeat(Duration::from_secs(1), Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let other = pool.submit(Job::hold(1)).await.unwrap();
    let id = pool
        .submit(Job::Spin {
            ms: 15_000,
            value: 9,
        })
        .await
        .unwrap();
    // As above: let the writer write the task before the cancel.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    assert!(pool.cancel(id));
    let mut fates = HashMap::new();
    for _ in 0..2 {
        match next_output(&mut outputs).await {
            Output::Cancelled { task, .. } => assert!(fates.insert(task, None).is_none()),
            Output::Lost { task, lost } => assert!(fates.insert(task, Some(lost.cause)).is_none()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(fates[&id], None, "the spinning task ends cancelled");
    assert_eq!(fates[&other], Some(LossCause::Unresponsive));
    looppool_tests::assert_whole(&pool).await;
    pool.shutdown().await;
}

#[tokio::test]
async fn cancelling_an_unknown_task_is_refused() {
    let (pool, _outputs) = probe_pool!().workers(2).start().await.unwrap();
    let id = pool.submit(Job::Nothing).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || pool.in_flight() == [0, 0]).await);
    assert!(!pool.cancel(id), "it completed");
    match pool.call(Job::Fail("x".into())).await {
        Err(CallError::Task(_)) => {}
        other => panic!("{other:?}"),
    }
    pool.shutdown().await;
}
