//! Chaos: workers killed at random while 100,000 tasks flow.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use looppool::{CallError, Output, RestartPolicy, TaskId};
use looppool_tests::{assert_whole, probe_pool, Job, Rng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_is_accounted_for_exactly_once_under_random_kills() {
    let workers = 4;
    let (pool, mut outputs) = probe_pool!()
        .workers(workers)
        .max_tasks(4 * 256)
        .restart_policy(
            RestartPolicy::intensity(u32::MAX, Duration::from_secs(1))
                .with_backoff(Duration::from_millis(1), Duration::from_millis(10)),
        )
        .start()
        .await
        .unwrap();
    let total = 100_000u64;

    let producer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(total as usize);
            for i in 0..total {
                ids.push(pool.submit(Job::Double(i)).await.unwrap());
            }
            ids
        })
    };
    let caller = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let (mut ok, mut lost) = (0u32, 0u32);
            for i in 0..2_000u64 {
                match pool.call(Job::Double(i)).await {
                    Ok(v) => {
                        assert_eq!(v, 2 * i);
                        ok += 1;
                    }
                    Err(CallError::WorkerLost(_)) => lost += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            (ok, lost)
        })
    };
    let killer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
            let mut kills = 0u32;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                tokio::time::sleep(Duration::from_millis(2 + rng.next() % 6)).await;
                let victim = (rng.next() % workers as u64) as usize;
                if pool.pids()[victim].is_some() {
                    pool.kill_worker(victim);
                    kills += 1;
                }
            }
            kills
        })
    };

    let mut fate: HashMap<TaskId, char> = HashMap::with_capacity(total as usize);
    let mut values = 0u64;
    while fate.len() < total as usize {
        let item = tokio::time::timeout(Duration::from_secs(60), outputs.next())
            .await
            .expect("no hang")
            .expect("the stream goes on");
        let (task, what) = match item {
            Output::Value { task, value, .. } => {
                values += value;
                (task.expect("a task's output"), 'v')
            }
            Output::Lost { task, .. } => (task, 'l'),
            other => panic!("{other:?}"),
        };
        assert!(
            fate.insert(task, what).is_none(),
            "task {task} accounted for twice"
        );
    }
    let ids = producer.await.unwrap();
    let kills = killer.await.unwrap();
    let (ok, lost_calls) = caller.await.unwrap();
    assert_eq!(ok + lost_calls, 2_000, "no call left pending");
    assert!(ids.iter().all(|id| fate.contains_key(id)));
    let lost = fate.values().filter(|&&w| w == 'l').count();
    eprintln!(
        "{kills} kills: {lost} tasks and {lost_calls} calls lost, {} completed",
        total as usize - lost
    );
    assert!(kills > 50, "the chaos happened: {kills} kills");
    assert!(values > 0);
    // Nothing more arrives: every task was reported exactly once.
    assert_eq!(
        outputs.try_next().err(),
        Some(looppool::TryNextError::Empty)
    );
    assert_whole(&pool).await;
    pool.shutdown().await;
    assert!(outputs.next().await.is_none());
}
