//! Dispatch policies with real worker processes: least-loaded keeps short
//! calls off a worker busy with long tasks; keyed dispatch keeps each key's
//! tasks on one worker, in order, across a crash and a replacement, and
//! moves a key only when `resize` removes its worker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use looppool::{Dispatch, Output, Pool, TaskId};
use looppool_tests::{assert_whole, eventually, probe_pool, Job, Probe};

/// The worker each of `keys` keys goes to, from one task per key.
async fn workers_of_keys(pool: &Pool<Probe>, keys: usize, seq: u64) -> Vec<usize> {
    let mut workers = Vec::with_capacity(keys);
    for k in 0..keys {
        let key = format!("key-{k}");
        let job = Job::Keyed {
            key: key.clone(),
            seq,
        };
        let reply = pool.task(job).key(&key).call().await.unwrap();
        workers.push((reply / 2) as usize);
    }
    workers
}

#[tokio::test]
async fn least_loaded_sends_short_calls_past_a_worker_busy_with_long_tasks() {
    for dispatch in [Dispatch::LeastLoaded, Dispatch::RoundRobin] {
        let (pool, _outputs) = probe_pool!()
            .workers(2)
            .dispatch(dispatch)
            .start()
            .await
            .unwrap();
        // Worker 0 keeps a long task in flight throughout.
        pool.submit_to(0, Job::hold(0)).await.unwrap();
        let mut on_busy = 0;
        let started = Instant::now();
        for _ in 0..200 {
            if pool.call(Job::WhoAmI).await.unwrap() == 0 {
                on_busy += 1;
            }
        }
        match dispatch {
            Dispatch::LeastLoaded => assert_eq!(on_busy, 0, "a short call went to the busy worker"),
            _ => assert!(on_busy >= 50, "round-robin alternates: {on_busy} of 200"),
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        pool.shutdown_timeout(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn keyed_tasks_start_in_order_on_one_worker_under_load() {
    const TASKS: u64 = 100_000;
    const KEYS: u64 = 64;
    let (pool, mut outputs) = probe_pool!()
        .workers(4)
        .dispatch(Dispatch::Keyed)
        .start()
        .await
        .unwrap();
    let producer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut keys: HashMap<TaskId, u64> = HashMap::new();
            for n in 0..TASKS {
                let key = n % KEYS;
                let job = Job::Keyed {
                    key: key.to_string(),
                    seq: n / KEYS,
                };
                let id = pool.task(job).key(&key.to_string()).submit().await.unwrap();
                keys.insert(id, key);
            }
            keys
        })
    };
    let mut results = Vec::with_capacity(TASKS as usize);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (results.len() as u64) < TASKS {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, outputs.next()).await {
            Ok(Some(Output::Value {
                task: Some(task),
                value,
                worker,
            })) => results.push((task, worker, value)),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => panic!("stalled after {} of {TASKS}", results.len()),
        }
    }
    let keys = producer.await.unwrap();
    let mut worker_of: HashMap<u64, usize> = HashMap::new();
    for (task, worker, value) in results {
        assert_eq!(
            value % 2,
            1,
            "a task of key {} started out of order",
            keys[&task]
        );
        assert_eq!(value / 2, worker as u64);
        let first = *worker_of.entry(keys[&task]).or_insert(worker);
        assert_eq!(first, worker, "key {} moved", keys[&task]);
    }
    let used: std::collections::HashSet<_> = worker_of.values().collect();
    assert_eq!(used.len(), 4, "the keys spread over every worker");
    pool.shutdown().await;
}

#[tokio::test]
async fn a_key_keeps_its_worker_across_a_crash_and_its_replacement() {
    let (pool, _outputs) = probe_pool!()
        .workers(4)
        .dispatch(Dispatch::Keyed)
        .start()
        .await
        .unwrap();
    let before = workers_of_keys(&pool, 32, 0).await;
    let victim = before[0];
    let pid = pool.pids()[victim].unwrap();
    pool.kill_worker(victim);
    assert!(
        eventually(Duration::from_secs(10), || pool.pids()[victim]
            .is_some_and(|p| p != pid))
        .await
    );
    assert_whole(&pool).await;
    let after = workers_of_keys(&pool, 32, 1).await;
    assert_eq!(before, after, "no key moved");
    pool.shutdown().await;
}

#[tokio::test]
async fn resize_moves_only_the_keys_of_removed_workers() {
    let (pool, _outputs) = probe_pool!()
        .workers(4)
        .dispatch(Dispatch::Keyed)
        .start()
        .await
        .unwrap();
    let four = workers_of_keys(&pool, 64, 0).await;
    pool.resize(3).await.unwrap();
    let three = workers_of_keys(&pool, 64, 1).await;
    for (k, (a, b)) in four.iter().zip(&three).enumerate() {
        if *a < 3 {
            assert_eq!(a, b, "key {k} of a kept worker moved");
        } else {
            assert!(*b < 3, "key {k} still goes to the removed worker");
        }
    }
    assert!(four.contains(&3), "some key was on the removed worker");
    pool.resize(4).await.unwrap();
    let grown = workers_of_keys(&pool, 64, 2).await;
    for (k, (a, b)) in three.iter().zip(&grown).enumerate() {
        assert!(
            a == b || *b == 3,
            "key {k} moved from {a} to {b}, not to the new worker"
        );
    }
    assert_eq!(grown, four, "the same keys as before the shrink");
    pool.shutdown().await;
}
