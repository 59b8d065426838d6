//! One stopped worker must not stall the pool: round-robin sends skip a
//! full worker while another has room, and the default heartbeat replaces
//! the stopped one, its tasks reported lost as unresponsive.

use std::time::{Duration, Instant};

use looppool::{LossCause, Output};
use looppool_tests::{eventually, probe_pool, sys, Job};

/// Stops (SIGSTOP) worker `worker` and waits until the kernel says so.
async fn stop(pool: &looppool::Pool<looppool_tests::Probe>, worker: usize) -> u32 {
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

#[tokio::test]
async fn submit_skips_a_stopped_worker_and_the_heartbeat_replaces_it() {
    let (pool, mut outputs) = probe_pool!()
        .workers(4)
        .max_tasks(4 * 16)
        .start()
        .await
        .unwrap();
    let stopped = stop(&pool, 0).await;

    // 2,000 tasks through round-robin while worker 0 cannot take any:
    // after its 16 slots fill, every send goes to the other three.
    let started = Instant::now();
    let producer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for x in 0..2_000u64 {
                pool.submit(Job::Double(x)).await.unwrap();
            }
        })
    };
    let mut values = 0;
    let mut lost = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while values + lost.len() < 2_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, outputs.next()).await {
            Ok(Some(Output::Value { .. })) => {
                values += 1;
                if values == 2_000 - 16 {
                    // Everything but worker 0's share arrived: the three
                    // others never waited on it.
                    assert!(
                        started.elapsed() < Duration::from_secs(5),
                        "the others' tasks took {:?}: submit waited on the stopped worker",
                        started.elapsed()
                    );
                }
            }
            Ok(Some(Output::Lost { lost: why, task })) => lost.push((task, why)),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => panic!(
                "stalled: {values} values and {} lost of 2,000 after {:?}",
                lost.len(),
                started.elapsed()
            ),
        }
    }
    producer.await.unwrap();
    // The stopped worker's tasks end lost as unresponsive, by the default
    // heartbeat, and the pool is whole again.
    assert_eq!(lost.len(), 16, "worker 0's full queue is lost");
    for (task, why) in &lost {
        assert_eq!(task.worker(), 0);
        assert_eq!(why.cause, LossCause::Unresponsive, "{why}");
    }
    assert!(
        eventually(Duration::from_secs(10), || pool.pids()[0]
            .is_some_and(|p| p != stopped))
        .await,
        "worker 0 was replaced"
    );
    sys::signal(stopped, libc::SIGKILL);
    assert_eq!(pool.call(Job::Double(21)).await.unwrap(), 42);
    pool.shutdown().await;
}

#[tokio::test]
async fn try_submit_refuses_only_when_every_worker_is_full() {
    let (pool, _outputs) = probe_pool!()
        .workers(2)
        .max_tasks(2 * 8)
        .start()
        .await
        .unwrap();
    let stopped = stop(&pool, 0).await;
    for _ in 0..8 {
        pool.try_submit_to(0, Job::Nothing).unwrap();
    }
    // Worker 1 has 8 free slots: none of these may be refused because
    // worker 0 is full.
    for x in 0..8 {
        if let Err(e) = pool.try_submit(Job::Double(x)) {
            panic!("try_submit {x} refused although worker 1 has room: {e}");
        }
    }
    sys::signal(stopped, libc::SIGKILL);
}
