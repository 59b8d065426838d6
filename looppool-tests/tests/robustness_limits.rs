//! The frame limit (`PoolBuilder::max_frame`) on both sides: a task or an
//! output that encodes larger is refused at its sender with a typed error
//! that gives the value back, nothing is written, and the pool and the
//! worker carry on; a limit above the default is honoured end to end.

use std::time::Duration;

use looppool::{CallError, EmitErrorKind, Output, StartError, SubmitErrorKind};
use looppool_tests::{blob_pool, next_output, recorder, BlobJob};
use serde_bytes::ByteBuf;

const MAX_FRAME: usize = 64 * 1024;

/// Bytes a task frame adds to an `Echo` of `n` bytes: the kind, the slot
/// (one byte for the low slots used here), the enum variant and the
/// vector's length (three bytes for lengths from 2^14 to 2^21).
const TASK_OVERHEAD: usize = 1 + 1 + 1 + 3;

fn bytes(n: usize) -> ByteBuf {
    ByteBuf::from((0..n).map(|i| i as u8).collect::<Vec<u8>>())
}

#[tokio::test]
async fn an_oversize_task_is_refused_at_submit_and_given_back() {
    let (events, hook) = recorder();
    let (pool, mut outputs) = blob_pool!()
        .workers(2)
        .max_frame(MAX_FRAME)
        .on_event(hook)
        .start()
        .await
        .unwrap();
    let pids = pool.pids();

    // One byte over the limit, through every way of sending.
    let over = BlobJob::Echo(bytes(MAX_FRAME + 1 - TASK_OVERHEAD));
    let too_large = SubmitErrorKind::TooLarge {
        len: MAX_FRAME + 1,
        max: MAX_FRAME,
    };
    let err = pool.submit(over.clone()).await.unwrap_err();
    assert_eq!(err.kind(), &too_large);
    let text = err.to_string();
    assert!(
        text.contains("65537 bytes exceeds the frame limit of 65536") && text.contains("max_frame"),
        "{text}"
    );
    assert_eq!(err.into_inner(), over, "the task comes back whole");
    let err = pool.try_submit_to(1, over.clone()).unwrap_err();
    assert_eq!(err.kind(), &too_large);
    assert_eq!(err.into_inner(), over);
    let err = pool.broadcast(over.clone()).await.unwrap_err();
    assert_eq!(err.kind(), &too_large);
    match pool.call(over.clone()).await.unwrap_err() {
        CallError::Submit(e) => {
            assert_eq!(e.kind(), &too_large);
            assert_eq!(e.into_inner(), over);
        }
        other => panic!("{other:?}"),
    }
    // Nothing was written or held: no slot is taken, nothing arrives.
    assert_eq!(pool.in_flight(), vec![0, 0]);
    assert_eq!(
        outputs.try_next().err(),
        Some(looppool::TryNextError::Empty)
    );

    // Exactly at the limit passes, and its echo (a smaller frame) comes
    // back whole; the workers are the same processes.
    let at = bytes(MAX_FRAME - TASK_OVERHEAD);
    for w in 0..2 {
        let echoed = pool.call_to(w, BlobJob::Echo(at.clone())).await.unwrap();
        assert_eq!(echoed, at);
    }
    assert_eq!(pool.pids(), pids);
    let events = events.lock().unwrap().clone();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, looppool::WorkerEvent::Crashed { .. })),
        "{events:?}"
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn an_oversize_output_is_refused_in_the_worker_and_given_back() {
    let (pool, mut outputs) = blob_pool!()
        .workers(1)
        .max_frame(MAX_FRAME)
        .start()
        .await
        .unwrap();
    let pid = pool.pids()[0];
    // The handler sees `EmitErrorKind::TooLarge`, takes the value back and
    // fails the task with what it got.
    let want = format!(
        "{:?}: given back 100000 bytes",
        EmitErrorKind::TooLarge {
            len: 100_000 + 1 + 1 + 3,
            max: MAX_FRAME
        }
    );
    match pool.call(BlobJob::Make(100_000)).await.unwrap_err() {
        CallError::Task(e) => assert_eq!(e.message, want),
        other => panic!("{other:?}"),
    }
    let id = pool.submit(BlobJob::Make(100_000)).await.unwrap();
    match next_output(&mut outputs).await {
        Output::Failed(e) => {
            assert_eq!(e.task, id);
            assert_eq!(e.message, want);
            assert!(!e.panicked);
        }
        other => panic!("{other:?}"),
    }
    // The same worker goes on, and an output at the limit passes: the
    // frame of an output of n bytes adds the kind, the tag and the length.
    let n = MAX_FRAME - (1 + 1 + 3);
    let made = pool.call(BlobJob::Make(n as u64)).await.unwrap();
    assert_eq!(made.len(), n);
    let err = pool.call(BlobJob::Make(n as u64 + 1)).await.unwrap_err();
    assert!(matches!(err, CallError::Task(_)), "{err:?}");
    assert_eq!(pool.pids()[0], pid);
    pool.shutdown().await;
}

/// A limit above the 64 MiB default holds on both sides: the worker reads
/// a 70 MiB task and the parent reads a 70 MiB output.
#[tokio::test]
async fn a_limit_above_the_default_is_honoured_in_both_directions() {
    let (pool, _outputs) = blob_pool!()
        .workers(1)
        .max_frame(80 << 20)
        .start()
        .await
        .unwrap();
    let big = ByteBuf::from(vec![0xa5; 70 << 20]);
    let echoed = tokio::time::timeout(
        Duration::from_secs(60),
        pool.call(BlobJob::Echo(big.clone())),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(echoed == big, "the echo differs");
    drop((big, echoed));
    let made = pool.call(BlobJob::Make(75 << 20)).await.unwrap();
    assert_eq!(made.len(), 75 << 20);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_frame_limit_below_the_minimum_is_a_configuration_error() {
    let err = blob_pool!().max_frame(1000).start().await.unwrap_err();
    let StartError::Config(e) = &err else {
        panic!("{err:?}")
    };
    let text = e.to_string();
    assert!(
        text.contains("max_frame(1000)") && text.contains("1024"),
        "{text}"
    );
}

/// The output window (`max_results`) holds while a worker drains to be
/// recycled: the credits its outputs free go back to it, so that its last
/// tasks can finish (they used not to, and the pool hung).
#[tokio::test]
async fn a_worker_draining_for_recycling_gets_its_output_credits_back() {
    let (pool, mut outputs) = looppool_tests::probe_pool!()
        .workers(1)
        .max_results(2)
        .recycle_after_tasks(1)
        .start()
        .await
        .unwrap();
    let first_pid = pool.pids()[0];
    // The repeat completes first and starts the recycling; the sleep still
    // runs, and its output needs a credit the repeat's outputs used.
    let sleep = looppool_tests::Job::Sleep { ms: 100, value: 1 };
    let slow = pool.submit(sleep).await.unwrap();
    let repeat = looppool_tests::Job::Repeat {
        value: 7,
        times: 20,
    };
    pool.submit(repeat).await.unwrap();
    let mut sevens = 0;
    let mut slow_done = false;
    while sevens < 20 || !slow_done {
        match next_output(&mut outputs).await {
            Output::Value { value: 7, .. } => sevens += 1,
            Output::Value { task, value: 1, .. } if task == Some(slow) => slow_done = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    // Drained and replaced, and the replacement serves.
    let job = looppool_tests::Job::WhoAmI;
    assert_eq!(pool.call(job).await.unwrap(), 0);
    assert_ne!(pool.pids()[0], first_pid);
    pool.shutdown().await;
}
