//! Supervision policies: retries, recycling, task deadlines, heartbeats.

use std::collections::HashSet;
use std::time::Duration;

use looppool::{CallError, LossCause, Output, RecycleReason, WorkerEvent};
use looppool_tests::{next_output, probe_pool, recorder, submit_all, Job};

#[tokio::test]
async fn lost_tasks_are_retried_on_a_live_worker() {
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .retry_lost(1)
        .start()
        .await
        .unwrap();
    let mut ids = HashSet::new();
    for i in 0..10 {
        ids.insert(
            pool.submit_to(0, Job::Sleep { ms: 300, value: i })
                .await
                .unwrap(),
        );
    }
    // Worker 0 dies holding all ten: they are re-sent to worker 1.
    tokio::time::sleep(Duration::from_millis(50)).await;
    pool.kill_worker(0);
    let mut values = Vec::new();
    while values.len() < 10 {
        match next_output(&mut outputs).await {
            Output::Value {
                task,
                value,
                worker,
            } => {
                assert!(
                    ids.remove(&task.unwrap()),
                    "each task once, under its original id"
                );
                assert_eq!(worker, 1, "re-sent to the live worker");
                values.push(value);
            }
            other => panic!("{other:?}"),
        }
    }
    values.sort();
    assert_eq!(values, (0..10).collect::<Vec<_>>());
    // A task that kills every worker it runs on is tried twice, then lost.
    let err = pool.call_to(0, Job::Exit(2)).await.unwrap_err();
    let CallError::WorkerLost(lost) = err else {
        panic!("{err:?}")
    };
    assert_eq!(lost.status, looppool::ExitStatus::Code(2));
    assert_eq!(lost.worker, 1, "lost on the second worker it ran on");
    pool.shutdown().await;
}

#[tokio::test]
async fn workers_are_recycled_after_their_share_of_tasks_and_nothing_is_lost() {
    let (events, hook) = recorder();
    // A short queue (8 per worker): a recycled worker drains what it holds, so
    // it completes its share plus at most one queue's worth.
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .max_tasks(16)
        .recycle_after_tasks(100)
        .on_event(hook)
        .start()
        .await
        .unwrap();
    let producer = submit_all(&pool, (0..1000).map(|i| Job::Sleep { ms: 1, value: i }));
    let mut seen = HashSet::new();
    for _ in 0..1000 {
        let item = next_output(&mut outputs).await;
        let value = item.into_value().expect("no task failed or was lost");
        assert!(seen.insert(value));
    }
    producer.await.unwrap();
    let events = events.lock().unwrap().clone();
    let recycled: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::Recycled {
                reason: RecycleReason::Tasks { completed },
                ..
            } => Some(*completed),
            _ => None,
        })
        .collect();
    // 500 tasks per worker, recycled about every 100 (±10 %).
    assert!(recycled.len() >= 6, "{events:?}");
    assert!(
        recycled.iter().all(|&c| (90..=110 + 8).contains(&c)),
        "{recycled:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, WorkerEvent::Crashed { .. })),
        "{events:?}"
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn workers_are_recycled_when_their_memory_passes_the_limit() {
    let (events, hook) = recorder();
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .recycle_above_memory(64 << 20)
        .on_event(hook)
        .start()
        .await
        .unwrap();
    let first_pid = pool.pids()[0].unwrap();
    assert_eq!(pool.call(Job::Hold(100 << 20)).await.unwrap(), 100 << 20);
    // Tasks sent while the worker is being replaced wait for the replacement.
    let mut ids = HashSet::new();
    for i in 0..20 {
        ids.insert(pool.submit(Job::Sleep { ms: 5, value: i }).await.unwrap());
    }
    for _ in 0..20 {
        let item = next_output(&mut outputs).await;
        assert!(ids.remove(&item.task().unwrap()), "{item:?}");
        assert!(item.value().is_some(), "{item:?}");
    }
    assert!(
        looppool_tests::eventually(Duration::from_secs(10), || pool.pids()[0]
            .is_some_and(|p| p != first_pid))
        .await,
        "the worker was replaced"
    );
    let events = events.lock().unwrap().clone();
    assert!(
        events.iter().any(|e| matches!(e, WorkerEvent::Recycled { worker: 0, pid, reason: RecycleReason::Memory { rss_bytes } }
            if *pid == first_pid && *rss_bytes > 64 << 20)),
        "{events:?}"
    );
    assert_eq!(
        pool.call(Job::Hold(0)).await.unwrap(),
        0,
        "the new worker starts afresh"
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn a_task_past_its_deadline_is_reported_failed() {
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .task_timeout(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let err = pool
        .call(Job::Sleep {
            ms: 5_000,
            value: 1,
        })
        .await
        .unwrap_err();
    let CallError::Task(e) = err else {
        panic!("{err:?}")
    };
    assert!(e.message.contains("deadline of 100ms"), "{}", e.message);
    let id = pool
        .submit(Job::Sleep {
            ms: 5_000,
            value: 1,
        })
        .await
        .unwrap();
    let Output::Failed(e) = next_output(&mut outputs).await else {
        panic!()
    };
    assert_eq!(e.task, id);
    // Quick tasks are unaffected.
    assert_eq!(pool.call(Job::Sleep { ms: 10, value: 3 }).await.unwrap(), 3);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_worker_whose_loop_stops_answering_heartbeats_is_replaced() {
    let (events, hook) = recorder();
    let (pool, _outputs) = probe_pool!()
        .workers(1)
        .heartbeat(Duration::from_millis(50), Duration::from_millis(300))
        .on_event(hook)
        .start()
        .await
        .unwrap();
    // An hour of busy CPU: no await, so no deadline could stop it.
    let err = pool
        .call(Job::Spin {
            ms: 3_600_000,
            value: 0,
        })
        .await
        .unwrap_err();
    let CallError::WorkerLost(lost) = err else {
        panic!("{err:?}")
    };
    assert_eq!(lost.cause, LossCause::Unresponsive);
    assert_eq!(
        pool.call(Job::Double(1)).await.unwrap(),
        2,
        "the replacement serves"
    );
    let events = events.lock().unwrap().clone();
    assert!(events.iter().any(|e| matches!(e, WorkerEvent::Unresponsive { worker: 0, silent_for, .. } if *silent_for >= Duration::from_millis(300))), "{events:?}");
    // A healthy worker that idles is not killed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, WorkerEvent::Unresponsive { .. }))
            .count(),
        1
    );
    pool.shutdown().await;
}
