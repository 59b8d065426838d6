//! No descriptor of a `looppool::Blob` is leaked, in the parent
//! (`/proc/self/fd`) or in its workers (`/proc/PID/fd`): across 100,000
//! blobs, a worker killed with SIGKILL while blobs travel, and workers that
//! lie about the descriptors their frames announce (one that never sends
//! them, sends a file that is not sealed, of another size, a pipe, under
//! the wrong sequence number, one the frame does not use, or announces
//! more than the frame limit). Each liar is reported lost with
//! `LossCause::Protocol` at once (the parent never waits for a descriptor
//! that did not come) and replaced.
//!
//! One test, its scenarios in turn: tests of one file share a process, and
//! the counts are the process's.

use std::time::{Duration, Instant};

use looppool::{Blob, CallError, LossCause, Output};
use looppool_tests::shm::{open_fds, Lie, Shm, ShmJob, ShmOut};
use looppool_tests::{eventually, shm_pool, take};

const WAIT: Duration = Duration::from_secs(30);

fn built(len: usize) -> Blob {
    let mut b = Blob::build(len).unwrap();
    b.fill(0xa5);
    b.freeze().unwrap()
}

fn the_blob(out: ShmOut) -> Blob {
    match out {
        ShmOut::Blob(blob) => blob,
        other => panic!("expected a blob, got {other:?}"),
    }
}

fn parent_fds() -> u64 {
    open_fds(std::process::id())
}

/// The descriptors open in each worker of `pool`.
async fn worker_fds(pool: &looppool::Pool<Shm>) -> Vec<u64> {
    let mut counts = Vec::new();
    for i in 0..pool.workers() {
        match pool.call_to(i, ShmJob::CountFds).await.unwrap() {
            ShmOut::Fds(n) => counts.push(n),
            other => panic!("a count, got {other:?}"),
        }
    }
    counts
}

#[tokio::test]
async fn no_descriptor_is_leaked() {
    across_100_000_blobs().await;
    when_a_worker_is_killed_while_blobs_travel().await;
    for (lie, says) in [
        (Lie::NoDescriptor, "is not there"),
        (Lie::Unsealed, "not sealed"),
        (Lie::WrongSize, "holds 8192 bytes, its frame announced 4096"),
        (Lie::Pipe, "not a sealable memory file"),
        (
            Lie::WrongSequence,
            "blob descriptor 5 arrived where 0 was due",
        ),
        (Lie::Unused, "announcing 1 blobs whose output holds 0"),
        (Lie::TooLarge, "exceeds the limit of 65536 bytes"),
    ] {
        when_a_worker_lies(lie, says).await;
    }
}

async fn across_100_000_blobs() {
    const N: u64 = 100_000;
    let (pool, mut outputs) = shm_pool!()
        .workers(2)
        .blob_threshold(4096)
        .start()
        .await
        .unwrap();
    let blob = built(4096);
    // Warm up (the runtime's own descriptors), then count.
    for _ in 0..100 {
        pool.call(ShmJob::Echo(blob.clone())).await.unwrap();
    }
    let (parent, workers) = (parent_fds(), worker_fds(&pool).await);

    let producer = {
        let pool = pool.clone();
        let blob = blob.clone();
        tokio::spawn(async move {
            for i in 0..N {
                // Every 1,000th a fresh blob from a vector: a new file each.
                let b = if i % 1000 == 0 {
                    Blob::from(vec![7u8; 5000])
                } else {
                    blob.clone()
                };
                pool.submit(ShmJob::Echo(b)).await.unwrap();
            }
        })
    };
    let mut shared = 0;
    for _ in 0..N {
        let Output::Value { value, .. } = tokio::time::timeout(WAIT, outputs.next())
            .await
            .expect("an output in time")
            .expect("the stream goes on")
        else {
            panic!("every echo arrives")
        };
        let back = the_blob(value);
        shared += usize::from(back.is_shared());
        assert!(back.len() == 4096 || back.len() == 5000);
    }
    producer.await.unwrap();
    assert_eq!(shared, N as usize, "every blob went by descriptor");
    assert_eq!(parent_fds(), parent, "descriptors in the parent");
    assert_eq!(
        worker_fds(&pool).await,
        workers,
        "descriptors in the workers"
    );
    pool.shutdown().await;
}

async fn when_a_worker_is_killed_while_blobs_travel() {
    let (pool, mut outputs) = shm_pool!().workers(2).start().await.unwrap();
    let blob = built(1 << 20);
    pool.call(ShmJob::Echo(blob.clone())).await.unwrap();
    let parent = parent_fds();
    let old = pool.pids()[0].unwrap();
    for _ in 0..200 {
        pool.submit_to(0, ShmJob::Echo(blob.clone())).await.unwrap();
    }
    looppool_tests::sys::signal(old, libc::SIGKILL);
    let items = take(&mut outputs, 200, WAIT).await;
    let lost = items
        .iter()
        .filter(|o| matches!(o, Output::Lost { .. }))
        .count();
    assert!(lost > 0, "the kill came while tasks were queued");
    drop(items);
    // The replacement serves blobs; the descriptors of the old worker's
    // blobs (queued, in flight, in its socket) are all gone.
    assert!(
        eventually(WAIT, || pool.pids()[0].is_some_and(|p| p != old)).await,
        "worker 0 is replaced"
    );
    let back = the_blob(pool.call_to(0, ShmJob::Echo(blob.clone())).await.unwrap());
    assert_eq!(back, blob);
    drop(back);
    assert_eq!(parent_fds(), parent, "descriptors in the parent");
    pool.shutdown().await;
}

async fn when_a_worker_lies(lie: Lie, says: &str) {
    let (pool, _outputs) = shm_pool!()
        .workers(2)
        .max_frame(64 * 1024)
        .blob_threshold(4096)
        .start()
        .await
        .unwrap();
    // Worker 0 has sent no blob yet: the liar's descriptor is its first.
    pool.call_to(1, ShmJob::Echo(built(8192))).await.unwrap();
    let (parent, spared) = (parent_fds(), worker_fds(&pool).await[1]);
    let old = pool.pids()[0].unwrap();
    let asked = Instant::now();
    let err = tokio::time::timeout(WAIT, pool.call_to(0, ShmJob::Lie(lie)))
        .await
        .expect("the liar is reported, not waited for")
        .unwrap_err();
    let CallError::WorkerLost(lost) = err else {
        panic!("{lie:?}: expected a lost worker, got {err:?}")
    };
    let LossCause::Protocol(why) = &lost.cause else {
        panic!("{lie:?}: expected a protocol loss, got {lost}")
    };
    assert!(why.contains(says), "{lie:?}: {why:?} does not say {says:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{lie:?}: reported after {:?}",
        asked.elapsed()
    );
    // Replaced, and serving blobs again; nothing left open.
    assert!(
        eventually(WAIT, || pool.pids()[0].is_some_and(|p| p != old)).await,
        "{lie:?}: worker 0 is replaced"
    );
    let back = the_blob(pool.call_to(0, ShmJob::Echo(built(8192))).await.unwrap());
    assert!(back.is_shared());
    drop(back);
    assert_eq!(parent_fds(), parent, "{lie:?}: descriptors in the parent");
    assert_eq!(
        worker_fds(&pool).await[1],
        spared,
        "{lie:?}: the other worker's"
    );
    pool.shutdown().await;
}
