//! A `Serialize` impl that panics, on either side of the wire, fails only
//! what it was serializing: in the parent the panic reaches the caller of
//! `submit` or `call` with nothing sent, and the worker's queue goes on; in
//! the worker the task whose output it was fails as a panic, and the worker
//! goes on. Neither leaves part of a frame behind.

use std::future::Future;
use std::time::Duration;

use looppool::{CallError, Output};
use looppool_tests::{brittle_pool, next_output, BrittleJob, Fragile};

fn fine(value: u64) -> BrittleJob {
    BrittleJob::Echo(Fragile {
        value,
        panic: false,
    })
}

fn panicking(value: u64) -> BrittleJob {
    BrittleJob::Echo(Fragile { value, panic: true })
}

/// Awaits `fut`, failing the test after 10 s: a wedged queue hangs.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 10 s"))
}

/// Runs `fut` as a task of its own and returns its panic's message.
async fn panic_of<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> String {
    let joined = within("a panicking submit", tokio::spawn(fut)).await;
    let Err(e) = joined else {
        panic!("expected a panic")
    };
    let payload = e.into_panic();
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_task_whose_serialize_panics_reaches_its_caller_with_nothing_sent() {
    let (pool, mut outputs) = brittle_pool!().workers(1).start().await.unwrap();
    let pid = pool.pids()[0];
    // A reply first: the output credit it frees is owed to the worker, and
    // rides in front of the next task frame, the one that panics.
    assert_eq!(within("a call", pool.call(fine(1))).await.unwrap().value, 1);

    let p = pool.clone();
    let message = panic_of(async move { p.submit(panicking(2)).await }).await;
    assert!(message.contains("Fragile(2) refuses"), "{message:?}");
    let p = pool.clone();
    let message = panic_of(async move { p.call(panicking(3)).await }).await;
    assert!(message.contains("Fragile(3) refuses"), "{message:?}");
    assert_eq!(pool.in_flight(), vec![0]);

    // The same worker serves on, and saw neither task.
    for v in 4..8 {
        let got = within("a call after the panics", pool.call(fine(v))).await;
        assert_eq!(got.unwrap().value, v);
    }
    let task = pool.submit(fine(8)).await.unwrap();
    match next_output(&mut outputs).await {
        Output::Value { task: t, value, .. } => assert_eq!((t, value.value), (Some(task), 8)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(pool.pids()[0], pid);
    assert_eq!(pool.in_flight(), vec![0]);
    within("the shutdown", pool.shutdown()).await;
}

#[tokio::test]
async fn an_output_whose_serialize_panics_fails_its_task_and_the_worker_goes_on() {
    let (pool, mut outputs) = brittle_pool!().workers(1).start().await.unwrap();
    let pid = pool.pids()[0];

    let err = within("a call", pool.call(BrittleJob::EmitPanicking(5)))
        .await
        .unwrap_err();
    let CallError::Task(e) = err else {
        panic!("expected a task failure, got {err:?}")
    };
    assert!(e.panicked, "{e}");
    assert!(e.message.contains("Fragile(5) refuses"), "{e}");

    let task = pool.submit(BrittleJob::EmitPanicking(6)).await.unwrap();
    match next_output(&mut outputs).await {
        Output::Failed(e) => {
            assert_eq!(e.task, task);
            assert!(
                e.panicked && e.message.contains("Fragile(6) refuses"),
                "{e}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }

    // The worker serves on: the same process, nothing held.
    for v in 0..4 {
        let got = within("a call after the panics", pool.call(fine(v))).await;
        assert_eq!(got.unwrap().value, v);
    }
    assert_eq!(pool.pids()[0], pid);
    assert_eq!(pool.in_flight(), vec![0]);
    within("the shutdown", pool.shutdown()).await;
}
