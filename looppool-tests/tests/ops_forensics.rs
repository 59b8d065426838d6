//! Hung-worker forensics: when the heartbeat finds a worker stuck, its
//! event names the tasks the worker held and says what its threads were
//! doing, read before the kill.
#![cfg(target_os = "linux")]

use std::time::Duration;

use looppool::{Output, WorkerEvent};
use looppool_tests::{next_output, probe_pool, recorder, Events, Job};

/// The `Unresponsive` event of worker 0: its held tasks and stack.
async fn unresponsive(events: &Events) -> (Vec<looppool::TaskId>, Option<String>) {
    for _ in 0..1000 {
        let found = events.lock().unwrap().iter().find_map(|e| match e {
            WorkerEvent::Unresponsive {
                worker: 0,
                held,
                stack,
                ..
            } => Some((held.clone(), stack.clone())),
            _ => None,
        });
        if let Some(found) = found {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no Unresponsive event: {:?}", events.lock().unwrap());
}

#[tokio::test]
async fn a_spinning_worker_is_reported_with_its_tasks_and_running_thread() {
    let (events, hook) = recorder();
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .heartbeat(Duration::from_millis(50), Duration::from_millis(300))
        .on_event(hook)
        .start()
        .await
        .unwrap();
    // A handler that never yields, and a task queued behind it.
    let spinning = pool
        .submit(Job::Spin {
            ms: 3_600_000,
            value: 0,
        })
        .await
        .unwrap();
    let queued = pool.submit(Job::Double(1)).await.unwrap();
    let (held, stack) = unresponsive(&events).await;
    assert_eq!(held, [spinning, queued]);
    let stack = stack.expect("a local worker's threads are read");
    // Its loop's thread was running (spinning), not waiting.
    assert!(stack.contains("state R"), "{stack}");
    // Named as the worker names its loop's thread.
    assert!(stack.contains("(probe-w0)"), "{stack}");
    // Each held task is then reported lost, as before.
    let mut lost = Vec::new();
    for _ in 0..2 {
        match next_output(&mut outputs).await {
            Output::Lost { task, .. } => lost.push(task),
            other => panic!("expected a lost task, got {other:?}"),
        }
    }
    lost.sort();
    assert_eq!(lost, [spinning, queued]);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_stopped_worker_is_reported_stopped() {
    let (events, hook) = recorder();
    let (pool, _outputs) = probe_pool!()
        .workers(1)
        .heartbeat(Duration::from_millis(50), Duration::from_millis(300))
        .on_event(hook)
        .start()
        .await
        .unwrap();
    let sleeping = pool
        .submit(Job::Sleep {
            ms: 60_000,
            value: 0,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    looppool_tests::sys::signal(pool.pids()[0].unwrap(), libc::SIGSTOP);
    let (held, stack) = unresponsive(&events).await;
    assert_eq!(held, [sleeping]);
    let stack = stack.unwrap();
    assert!(stack.contains("state T"), "{stack}");
    assert!(!stack.contains("state R"), "{stack}");
    pool.shutdown().await;
}
