//! What a parent holds for a consumer that does not read, with real worker
//! processes: failures count against the output bound as values do, large
//! outputs against a byte bound, and a worker kept waiting is logged.

#[path = "support/capture.rs"]
mod capture;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capture::Capture;
use looppool::{CallError, Output};
use looppool_tests::{blob_pool, eventually, probe_pool, resident_bytes, take, BlobJob, Job};
use tokio::sync::Mutex;
use tracing::Level;

/// The tests measure this process's memory, or count what the pool holds:
/// one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const MIB: u64 = 1 << 20;

/// Issue 14, defect 7: with nobody reading, a stream of failing tasks grew
/// the parent without bound (values stayed flat).
#[tokio::test]
async fn unread_failures_count_against_the_output_bound() {
    let _one = ONE_AT_A_TIME.lock().await;
    const TASKS: usize = 3000;
    const BOUND: usize = 64;
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .max_tasks(BOUND)
        .max_results(BOUND)
        .start()
        .await
        .unwrap();
    let submitted = Arc::new(AtomicUsize::new(0));
    let submitter = {
        let (pool, submitted) = (pool.clone(), submitted.clone());
        tokio::spawn(async move {
            for i in 0..TASKS {
                pool.submit(Job::Fail(format!("failure {i} {}", "x".repeat(1000))))
                    .await
                    .unwrap();
                submitted.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Nobody reads for a while: the worker runs out of output credits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut held = 0;
    while let Ok(item) = outputs.try_next() {
        assert!(matches!(item, Output::Failed(_)), "{item:?}");
        held += 1;
    }
    let sent = submitted.load(Ordering::Relaxed);
    eprintln!("held {held} failures, {sent} tasks submitted");
    assert!(
        held <= BOUND,
        "the parent held {held} unread failures, more than max_results({BOUND})"
    );
    assert!(
        sent <= 2 * BOUND,
        "{sent} tasks were accepted: failures in the stream plus task slots allow {}",
        2 * BOUND
    );

    // Read, and everything arrives.
    let rest = take(&mut outputs, TASKS - held, Duration::from_secs(20)).await;
    assert!(rest.iter().all(|o| matches!(o, Output::Failed(_))));
    submitter.await.unwrap();

    // A call's failure goes to its caller, and its credit comes back at
    // once: many more failing calls than the window, with nobody reading.
    for i in 0..4 * BOUND {
        let called = tokio::time::timeout(
            Duration::from_secs(10),
            pool.call(Job::Fail(format!("call {i}"))),
        )
        .await
        .expect("a failing call does not wait for the consumer");
        assert!(matches!(called, Err(CallError::Task(_))), "{called:?}");
    }
    assert_eq!(
        outputs.try_next().err(),
        Some(looppool::TryNextError::Empty)
    );
    pool.shutdown().await;
}

/// Issue 14, defect 8: the output bound counted items, not bytes: 64 unread
/// outputs of 8 MiB held 513 MiB in the parent.
#[tokio::test]
async fn unread_large_outputs_count_against_a_byte_bound() {
    let _one = ONE_AT_A_TIME.lock().await;
    const OUTPUTS: usize = 64;
    const SIZE: u64 = 8 * MIB;
    const BOUND: u64 = 64 * MIB;
    let (pool, mut outputs) = blob_pool!()
        .workers(1)
        .max_tasks(8)
        .max_result_bytes(BOUND as usize)
        .start()
        .await
        .unwrap();
    // Warm up: the buffers a large output needs once are in the baseline.
    for _ in 0..2 {
        pool.submit(BlobJob::Make(SIZE)).await.unwrap();
        take(&mut outputs, 1, Duration::from_secs(20)).await;
    }
    let rss = resident_bytes();
    let submitter = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for _ in 0..OUTPUTS {
                pool.submit(BlobJob::Make(SIZE)).await.unwrap();
            }
        })
    };
    // Nobody reads for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = resident_bytes().saturating_sub(rss);
    eprintln!(
        "resident memory grew by {} MiB with {OUTPUTS} outputs of {} MiB unread",
        grown / MIB,
        SIZE / MIB
    );
    assert!(
        grown < 2 * BOUND,
        "the parent grew by {} MiB for unread outputs, with max_result_bytes of {} MiB",
        grown / MIB,
        BOUND / MIB
    );

    // Read, and everything arrives, whole.
    let all = take(&mut outputs, OUTPUTS, Duration::from_secs(30)).await;
    for item in all {
        match item {
            Output::Value { value, .. } => assert_eq!(value.len() as u64, SIZE),
            other => panic!("unexpected item {other:?}"),
        }
    }
    submitter.await.unwrap();
    pool.shutdown().await;
}

/// Issue 14, defect 11: a program that keeps the output stream alive but
/// never reads it hung with no log line.
#[tokio::test]
async fn a_worker_waiting_on_unread_outputs_is_logged_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (capture, _guard) = Capture::install();
    const THRESHOLD: Duration = Duration::from_millis(500);
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .max_results(64)
        .unread_outputs_warning(THRESHOLD)
        .start()
        .await
        .unwrap();
    let waits = |c: &Capture| {
        c.matching(|e| {
            e.level == Level::WARN
                && e.target.starts_with("looppool::supervisor")
                && e.message.contains("unread outputs")
        })
    };
    // Worker 1 emits more than its window, and nobody reads.
    pool.submit_to(
        1,
        Job::Repeat {
            value: 7,
            times: 100,
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(THRESHOLD / 2).await;
    assert!(waits(&capture).is_empty(), "warned before the threshold");
    assert!(
        eventually(Duration::from_secs(10), || !waits(&capture).is_empty()).await,
        "no warning among {:#?}",
        capture.matching(|_| true)
    );
    // It goes on waiting: still one warning for the one episode.
    tokio::time::sleep(4 * THRESHOLD).await;
    let warned = waits(&capture);
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert_eq!(warned[0].field("worker"), "1", "{warned:#?}");
    assert!(!warned[0].field("waited_ms").is_empty(), "{warned:#?}");

    // Read, and the worker finishes its task.
    take(&mut outputs, 100, Duration::from_secs(20)).await;
    assert_eq!(pool.call_to(1, Job::Double(1)).await.unwrap(), 2);
    pool.shutdown().await;
}
