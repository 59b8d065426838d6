//! Hung-worker forensics: when the heartbeat finds a worker stuck, its
//! event names the tasks the worker held, for how long, and says what its
//! threads were doing, read before the kill; a passed deadline and a
//! blocked loop are reported with the same.
#![cfg(target_os = "linux")]

#[path = "support/capture.rs"]
mod capture;

use std::time::Duration;

use capture::{Capture, Captured};
use looppool::{HeldTask, Output, WorkerEvent};
use looppool_tests::{eventually, next_output, probe_pool, recorder, Events, Job};

/// The `Unresponsive` event of worker 0: its held tasks and stack.
async fn unresponsive(events: &Events) -> (Vec<HeldTask>, Option<String>) {
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
    let tasks: Vec<_> = held.iter().map(|h| h.task).collect();
    assert_eq!(tasks, [spinning, queued]);
    // Held since they were sent: about the 300 ms of silence (whose last
    // pong may have come up to a ping interval before they were sent),
    // and not seconds.
    for h in &held {
        let held_for = h.held_for.expect("a quiet pool times every task");
        assert!(
            held_for >= Duration::from_millis(250) && held_for < Duration::from_secs(10),
            "{h}"
        );
    }
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
    let sleeping = pool.submit(Job::hold(0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    looppool_tests::sys::signal(pool.pids()[0].unwrap(), libc::SIGSTOP);
    let (held, stack) = unresponsive(&events).await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].task, sleeping);
    let held_for = held[0].held_for.unwrap();
    assert!(held_for >= Duration::from_millis(250), "{}", held[0]);
    let stack = stack.unwrap();
    assert!(stack.contains("state T"), "{stack}");
    assert!(!stack.contains("state R"), "{stack}");
    pool.shutdown().await;
}

/// Waits until the parent logged an event whose message is `message`;
/// fails the test after 20 s.
async fn warned(capture: &Capture, message: &str) -> Captured {
    let mut found = None;
    let seen = eventually(Duration::from_secs(20), || {
        found = capture
            .matching(|e| e.message == message)
            .into_iter()
            .next();
        found.is_some()
    })
    .await;
    assert!(
        seen,
        "no {message:?} among {:#?}",
        capture.matching(|_| true)
    );
    let found = found.unwrap();
    assert_eq!(found.level, tracing::Level::WARN, "{found:?}");
    assert_eq!(found.target, "looppool::metrics", "{found:?}");
    found
}

/// Whether the `held` field names `task` with how long it was held.
fn names_held(e: &Captured, task: looppool::TaskId) -> bool {
    e.field("held").contains(&format!("{task} (held "))
}

#[tokio::test]
async fn a_blocked_loop_is_reported_with_the_tasks_held_and_the_threads_state() {
    let (capture, _guard) = Capture::install();
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .blocked_threshold(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let sleeping = pool.submit(Job::hold(0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let spinning = pool.submit(Job::Spin { ms: 500, value: 1 }).await.unwrap();
    let e = warned(&capture, "worker event loop blocked").await;
    println!("{e:?}");
    assert!(e.field("tasks").contains(&spinning.to_string()), "{e:?}");
    assert!(
        names_held(&e, sleeping) && names_held(&e, spinning),
        "{e:?}"
    );
    // Read by the worker's watchdog while its loop was held: that thread
    // was running.
    let stack = e.field("stack");
    assert!(stack.contains("(probe-w0): state R"), "{stack}");
    next_output(&mut outputs).await;
    pool.shutdown_timeout(Duration::ZERO).await;
}

#[tokio::test]
async fn a_task_past_its_own_deadline_is_reported_with_what_the_worker_held() {
    let (capture, _guard) = Capture::install();
    let (pool, mut outputs) = probe_pool!().workers(1).start().await.unwrap();
    let other = pool.submit(Job::hold(0)).await.unwrap();
    let late = pool
        .task(Job::hold(1))
        .timeout(Duration::from_millis(200))
        .submit()
        .await
        .unwrap();
    let e = warned(&capture, "task passed its deadline: cancelling it").await;
    println!("{e:?}");
    assert_eq!(e.field("task"), late.to_string());
    assert!(names_held(&e, other) && names_held(&e, late), "{e:?}");
    // The parent read the worker's threads: its loop waits (sleeping
    // tasks), it does not run.
    let stack = e.field("stack");
    assert!(stack.contains("(probe-w0): state S"), "{stack}");
    assert!(matches!(next_output(&mut outputs).await, Output::Failed(f) if f.task == late));
    pool.shutdown_timeout(Duration::ZERO).await;
}

#[tokio::test]
async fn a_task_past_the_pool_timeout_is_reported_by_its_worker() {
    let (capture, _guard) = Capture::install();
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .task_timeout(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let late = pool.submit(Job::hold(0)).await.unwrap();
    let e = warned(&capture, "task passed the pool's task timeout").await;
    println!("{e:?}");
    assert_eq!(e.field("task"), late.to_string());
    assert!(names_held(&e, late), "{e:?}");
    let stack = e.field("stack");
    assert!(stack.contains("(probe-w0)"), "{stack}");
    assert!(matches!(next_output(&mut outputs).await, Output::Failed(f) if f.task == late));
    pool.shutdown().await;
}
