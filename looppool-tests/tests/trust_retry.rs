//! A retried task's outputs say which attempt made them, so a consumer can
//! discard those of an attempt that was superseded.

use std::time::Duration;

use looppool::Output;
use looppool_tests::{eventually, next_output, probe_pool, Job};

#[tokio::test]
async fn each_output_names_its_attempt() {
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .retry_lost(1)
        .start()
        .await
        .unwrap();
    let id = pool
        .submit_to(
            0,
            Job::EmitThenHoldOn {
                hold_on: 0,
                value: 7,
            },
        )
        .await
        .unwrap();
    assert_eq!(id.attempt(), 0, "a task as sent is its first attempt");

    // The first attempt's output arrives; then its worker dies mid-task.
    let first = next_output(&mut outputs).await;
    assert_eq!(first.task(), Some(id));
    assert_eq!(first.attempt(), Some(0), "{first:?}");
    let pid = pool.pids()[0].unwrap();
    pool.kill_worker(0);

    // The retry, on the other worker, emits again under the same id,
    // marked as the second attempt; the task then completes.
    let second = next_output(&mut outputs).await;
    let Output::Value { task, value, .. } = &second else {
        panic!("expected the retry's value, got {second:?}");
    };
    assert_eq!((*task, *value), (Some(id), 7));
    assert_eq!(second.attempt(), Some(1), "{second:?}");
    assert_eq!(task.map(|t| t.attempt()), Some(1));
    assert!(
        eventually(Duration::from_secs(10), || pool.pids()[0]
            .is_some_and(|p| p != pid))
        .await
    );
    assert_eq!(pool.in_flight(), vec![0, 0], "the retry completed");
    pool.shutdown().await;
}
