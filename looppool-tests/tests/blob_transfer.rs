//! `looppool::Blob` between a pool and its local workers: large blobs cross
//! as sealed memory files mapped on the other side (both ways), small ones
//! and those under the pool's threshold inline; their bytes count against
//! the frame limit and the output byte bound as inline bytes would; and a
//! lost task is re-sent with its blob. (Descriptor counts are checked in
//! `blob_descriptors.rs`, a process of its own.)

use std::time::Duration;

use looppool::{Blob, CallError, Output, SubmitErrorKind};
use looppool_tests::shm::{Shm, ShmJob, ShmOut};
use looppool_tests::{shm_pool, take};

const WAIT: Duration = Duration::from_secs(30);

/// A blob of `len` bytes built in a memory file: byte `i` is `i % 251`.
fn built(len: usize) -> Blob {
    let mut b = Blob::build(len).unwrap();
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    b.freeze().unwrap()
}

fn sum(blob: &Blob) -> u64 {
    blob.iter().map(|&b| u64::from(b)).sum()
}

fn the_blob(out: ShmOut) -> Blob {
    match out {
        ShmOut::Blob(blob) => blob,
        other => panic!("expected a blob, got {other:?}"),
    }
}

/// How the worker saw a task's blob.
async fn seen(pool: &looppool::Pool<Shm>, blob: Blob) -> ShmOut {
    pool.call(ShmJob::Inspect(blob)).await.unwrap()
}

#[tokio::test]
async fn a_large_blob_crosses_as_a_mapped_file_both_ways() {
    let (pool, _outputs) = shm_pool!().workers(1).start().await.unwrap();
    let blob = built(1 << 20);
    assert_eq!(
        seen(&pool, blob.clone()).await,
        ShmOut::Seen {
            len: 1 << 20,
            shared: true,
            sum: sum(&blob),
        }
    );
    // Echoed: the worker passes on the file it got, mapped here again.
    let back = the_blob(pool.call(ShmJob::Echo(blob.clone())).await.unwrap());
    assert!(back.is_shared());
    assert_eq!(back, blob);
    // Made in the worker, built in place or from a vector.
    for built in [true, false] {
        let job = ShmJob::Make {
            len: 300_000,
            byte: 9,
            built,
        };
        let made = the_blob(pool.call(job).await.unwrap());
        assert!(made.is_shared(), "built: {built}");
        assert_eq!(made.len(), 300_000);
        assert!(made.iter().all(|&b| b == 9));
    }
    pool.shutdown().await;
}

#[tokio::test]
async fn the_threshold_decides_which_blobs_go_by_descriptor() {
    let (pool, _outputs) = shm_pool!().workers(1).start().await.unwrap();
    // From a vector, above the default threshold: copied into a file once.
    let big = Blob::from(vec![3u8; 200_000]);
    assert!(!big.is_shared());
    let want = ShmOut::Seen {
        len: 200_000,
        shared: true,
        sum: 600_000,
    };
    assert_eq!(seen(&pool, big).await, want);
    // Below it (and below the least threshold), inline.
    for len in [1_000usize, 100_000] {
        let small = Blob::from(vec![1u8; len]);
        let want = ShmOut::Seen {
            len: len as u64,
            shared: false,
            sum: len as u64,
        };
        assert_eq!(seen(&pool, small).await, want);
    }
    pool.shutdown().await;

    // A pool that sends every blob inline.
    let (pool, _outputs) = shm_pool!()
        .workers(1)
        .blob_threshold(usize::MAX)
        .start()
        .await
        .unwrap();
    let blob = built(1 << 20);
    let ShmOut::Seen { shared, sum: s, .. } = seen(&pool, blob.clone()).await else {
        panic!("a report")
    };
    assert!(!shared);
    assert_eq!(s, sum(&blob));
    let job = ShmJob::Make {
        len: 1 << 20,
        byte: 1,
        built: true,
    };
    assert!(!the_blob(pool.call(job).await.unwrap()).is_shared());
    pool.shutdown().await;
}

#[tokio::test]
async fn a_blobs_bytes_count_against_the_frame_limit() {
    let (pool, _outputs) = shm_pool!()
        .workers(1)
        .max_frame(256 * 1024)
        .start()
        .await
        .unwrap();
    let err = pool.submit(ShmJob::Echo(built(1 << 20))).await.unwrap_err();
    assert!(
        matches!(err.kind(), SubmitErrorKind::TooLarge { len, max: 262_144 } if *len > 1 << 20),
        "{err}"
    );
    let job = ShmJob::Make {
        len: 1 << 20,
        byte: 1,
        built: true,
    };
    let Err(CallError::Task(e)) = pool.call(job).await else {
        panic!("the emit is refused")
    };
    assert!(e.message.contains("TooLarge"), "{e}");
    // Under the limit, it goes.
    assert!(seen(&pool, built(200_000)).await != ShmOut::Fds(0));
    pool.shutdown().await;
}

/// How many 1 MiB outputs a worker gets out while nobody reads them, with
/// a bound of 4 MiB of unread outputs; the blobs go by descriptor unless
/// `inline`.
async fn unread_outputs_that_fit(inline: bool) -> usize {
    let mut builder = shm_pool!()
        .workers(1)
        .max_results(64)
        .max_result_bytes(4 << 20)
        .unread_outputs_warning(Duration::ZERO);
    if inline {
        builder = builder.blob_threshold(usize::MAX);
    }
    let (pool, mut outputs) = builder.start().await.unwrap();
    for _ in 0..10 {
        let job = ShmJob::Make {
            len: 1 << 20,
            byte: 2,
            built: true,
        };
        pool.submit(job).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut fit = 0;
    while let Ok(item) = outputs.try_next() {
        assert!(matches!(item, Output::Value { .. }), "{item:?}");
        fit += 1;
    }
    // Read, the others come.
    take(&mut outputs, 10 - fit, WAIT).await;
    pool.shutdown().await;
    fit
}

#[tokio::test]
async fn blobs_count_against_the_output_byte_bound_as_inline_bytes_do() {
    let by_descriptor = unread_outputs_that_fit(false).await;
    let inline = unread_outputs_that_fit(true).await;
    // 64 credits of 64 KiB: a 1 MiB output costs 17 of them.
    assert_eq!((by_descriptor, inline), (3, 3));
}

#[tokio::test]
async fn a_lost_task_is_sent_again_with_its_blob() {
    let (pool, mut outputs) = shm_pool!().workers(2).retry_lost(1).start().await.unwrap();
    let blob = built(1 << 20);
    let job = ShmJob::InspectLater {
        blob: blob.clone(),
        ms: 3_000,
    };
    pool.submit_to(0, job).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = pool.pids()[0].unwrap();
    looppool_tests::sys::signal(pid, libc::SIGKILL);
    let Output::Value { worker, value, .. } = take(&mut outputs, 1, WAIT).await.remove(0) else {
        panic!("the task is retried, not lost")
    };
    assert_eq!(worker, 1);
    assert_eq!(
        value,
        ShmOut::Seen {
            len: 1 << 20,
            shared: true,
            sum: sum(&blob),
        }
    );
    pool.shutdown().await;
}
