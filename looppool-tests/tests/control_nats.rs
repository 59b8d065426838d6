//! Cancellation and per-task deadlines for workers reached through a real
//! NATS JetStream broker: the same fates as in a local pool, the cancel
//! ordered behind its task on the broker's task stream.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use looppool::{Output, TaskId};
use looppool_tests::nats::NatsServer;
use looppool_tests::{next_output, Job, Probe};

const WORKER: &str = env!("CARGO_BIN_EXE_test-worker");

fn pool(url: &str, name: &str) -> looppool_nats::NatsPoolBuilder<Probe> {
    looppool_tests::nats::probe_pool(WORKER, url, name)
}

#[tokio::test]
async fn cancels_and_deadlines_through_the_broker_end_each_task_once() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (pool, mut outputs) = pool(&server.url, "control")
        .local_workers(2)
        .start()
        .await
        .unwrap();

    // A running task: dropped, its fate told once.
    let id = pool
        .submit_to(
            0,
            Job::Mark {
                value: 10,
                ms: 60_000,
            },
        )
        .await
        .unwrap();
    assert_eq!(next_output(&mut outputs).await.value(), Some(&10));
    assert!(pool.cancel(id));
    match next_output(&mut outputs).await {
        Output::Cancelled { task, .. } => assert_eq!(task, id),
        other => panic!("expected the cancel, got {other:?}"),
    }

    // Cancelled as soon as it is sent: the cancel must not overtake it on
    // the way to the worker (it would find nothing to cancel, and the task
    // would run its minute).
    for turns in 0..40 {
        let id = pool
            .submit_to(
                1,
                Job::Mark {
                    value: 20,
                    ms: 60_000,
                },
            )
            .await
            .unwrap();
        // From at once to long enough for the task's frame to leave the
        // pool's buffer and reach the broker, not yet the worker.
        for _ in 0..turns {
            tokio::task::yield_now().await;
        }
        assert!(pool.cancel(id));
        loop {
            match next_output(&mut outputs).await {
                Output::Cancelled { task, .. } => {
                    assert_eq!(task, id);
                    break;
                }
                Output::Value { value: 20, .. } => {}
                other => panic!("expected the cancel, got {other:?}"),
            }
        }
    }

    // A task's own deadline.
    let timed = pool
        .task(Job::hold(1))
        .timeout(Duration::from_millis(300))
        .submit()
        .await
        .unwrap();
    match next_output(&mut outputs).await {
        Output::Failed(e) => {
            assert_eq!(e.task, timed);
            assert!(e.message.contains("deadline"), "{}", e.message);
        }
        other => panic!("expected its deadline, got {other:?}"),
    }

    // Cancels racing completions: every task ends once, none twice.
    const TASKS: u64 = 500;
    let mut ids = Vec::new();
    for x in 0..TASKS {
        let id = pool
            .submit(Job::Mark {
                value: 2 * x,
                ms: x % 3,
            })
            .await
            .unwrap();
        if x % 2 == 0 {
            pool.cancel(id);
        }
        ids.push(id);
    }
    let mut fates: HashMap<TaskId, u32> = HashMap::new();
    let mut ended = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ended < TASKS {
        let left = deadline.saturating_duration_since(Instant::now());
        let item = tokio::time::timeout(left, outputs.next())
            .await
            .unwrap_or_else(|_| panic!("stalled with {ended} of {TASKS} ended"))
            .unwrap();
        match item {
            Output::Value {
                task: Some(task),
                value,
                ..
            } if value % 2 == 1 => {
                *fates.entry(task).or_default() += 1;
                ended += 1;
            }
            Output::Value { .. } => {}
            Output::Cancelled { task, .. } => {
                *fates.entry(task).or_default() += 1;
                ended += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        ids.iter().all(|id| fates.get(id) == Some(&1)),
        "each task ends once"
    );
    // Nothing more comes: no cancelled task is run again.
    let late = tokio::time::timeout(Duration::from_millis(500), outputs.next()).await;
    assert!(late.is_err(), "a late item: {late:?}");
    pool.shutdown().await;
}
