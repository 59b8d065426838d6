//! Growing and shrinking a running pool.

use std::collections::HashSet;
use std::time::Duration;

use looppool::Output;
use looppool_tests::{probe_pool, process_gone, Job};

#[tokio::test]
async fn resize_both_ways_under_load_loses_nothing() {
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .max_workers(6)
        .max_tasks(16)
        .start()
        .await
        .unwrap();
    let total = 3_000u64;
    let producer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..total {
                ids.push(pool.submit(Job::Sleep { ms: 2, value: i }).await.unwrap());
            }
            ids
        })
    };
    let consumer = tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut workers = HashSet::new();
        while seen.len() < total as usize {
            let item = tokio::time::timeout(Duration::from_secs(30), outputs.next())
                .await
                .unwrap()
                .unwrap();
            let Output::Value { value, worker, .. } = item else {
                panic!("{item:?}")
            };
            assert!(seen.insert(value), "value {value} twice");
            workers.insert(worker);
        }
        (outputs, workers)
    });

    tokio::time::sleep(Duration::from_millis(30)).await;
    pool.resize(5).await.unwrap();
    assert_eq!(pool.workers(), 5);
    assert_eq!(pool.pids().len(), 5);
    assert!(pool.pids().iter().all(Option::is_some));
    assert_eq!(pool.call_to(4, Job::WhoAmI).await.unwrap(), 4);
    tokio::time::sleep(Duration::from_millis(30)).await;

    let removed: Vec<u32> = pool.pids()[1..].iter().flatten().copied().collect();
    pool.resize(1).await.unwrap();
    assert_eq!(pool.workers(), 1);
    for pid in removed {
        assert!(
            process_gone(pid),
            "removed worker {pid} exited after draining"
        );
    }
    let err = pool.try_submit_to(3, Job::Nothing).unwrap_err();
    assert!(matches!(
        err.kind(),
        looppool::SubmitErrorKind::NoSuchWorker {
            worker: 3,
            workers: 1
        }
    ));

    let ids = producer.await.unwrap();
    assert_eq!(ids.len(), total as usize);
    let (mut outputs, workers) = consumer.await.unwrap();
    assert!(
        workers.contains(&4),
        "grown workers took tasks: {workers:?}"
    );

    // Grow again onto the indices that were retired.
    pool.resize(3).await.unwrap();
    for w in 0..3 {
        assert_eq!(pool.call_to(w, Job::WhoAmI).await.unwrap(), w as u64);
    }
    let err = pool.resize(7).await.unwrap_err();
    assert!(looppool_tests::report(&err).contains("1 to 6"), "{err}");
    pool.shutdown().await;
    assert!(outputs.next().await.is_none());
}
