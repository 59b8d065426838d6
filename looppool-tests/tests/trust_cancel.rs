//! Cancel safety of the sending operations, with real worker processes: a
//! future dropped before it completes has sent nothing.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use looppool::Output;
use looppool_tests::{probe_pool, Job};

/// Polls `fut` once; `None` if it was still pending (and is then dropped,
/// as a `select!` whose other branch won drops it).
fn poll_once<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// Submits `tasks` tasks through `send`, each future polled once and
/// dropped while pending (then tried again after the runtime ran); returns
/// how many returned `Ok` and how many values the workers emitted in all.
async fn sent_and_ran<F, Fut>(tasks: u64, workers: usize, send: F) -> (u64, u64)
where
    F: Fn(&looppool::Pool<looppool_tests::Probe>) -> Fut,
    Fut: Future<Output = bool>,
{
    let (pool, mut outputs) = probe_pool!()
        .workers(workers)
        .max_tasks(4096 * workers)
        .start()
        .await
        .unwrap();
    let consumer = tokio::spawn(async move {
        let mut values = 0u64;
        while let Some(item) = outputs.next().await {
            match item {
                Output::Value { .. } => values += 1,
                other => panic!("unexpected item {other:?}"),
            }
        }
        values
    });
    let mut ok = 0;
    let mut dropped = 0;
    while ok < tasks {
        match poll_once(send(&pool)) {
            Some(true) => ok += 1,
            Some(false) => panic!("submit failed"),
            None => {
                dropped += 1;
                // Let the writer, the reader and the consumer run.
                tokio::task::yield_now().await;
            }
        }
    }
    assert!(
        dropped > 0,
        "no submit was ever pending: the test proves nothing"
    );
    let report = pool.shutdown_timeout(Duration::from_secs(30)).await;
    assert!(report.drained, "{report:?}");
    drop(pool);
    let values = tokio::time::timeout(Duration::from_secs(30), consumer)
        .await
        .expect("the stream ends after shutdown")
        .unwrap();
    (ok, values)
}

#[tokio::test]
async fn a_dropped_submit_sent_nothing() {
    let (ok, ran) = sent_and_ran(20_000, 2, |pool| {
        let pool = pool.clone();
        async move { pool.submit(Job::Double(1)).await.is_ok() }
    })
    .await;
    assert_eq!(ran, ok, "tasks that ran although their submit was dropped");
}

#[tokio::test]
async fn a_dropped_submit_to_sent_nothing() {
    let (ok, ran) = sent_and_ran(20_000, 1, |pool| {
        let pool = pool.clone();
        async move { pool.submit_to(0, Job::Double(1)).await.is_ok() }
    })
    .await;
    assert_eq!(
        ran, ok,
        "tasks that ran although their submit_to was dropped"
    );
}
