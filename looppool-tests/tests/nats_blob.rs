//! `looppool::Blob` through a real NATS JetStream broker: the connection
//! carries no descriptors, so blobs above the pool's threshold travel
//! inline, both ways, and arrive whole (as heap bytes, not mapped files).

use std::time::Duration;

use looppool::Blob;
use looppool_nats::NatsPoolBuilder;
use looppool_tests::nats::NatsServer;
use looppool_tests::shm::{Shm, ShmJob, ShmOut};

const WORKER: &str = env!("CARGO_BIN_EXE_test-worker");

#[tokio::test]
async fn blobs_travel_inline_through_the_broker() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (pool, _outputs) = NatsPoolBuilder::<Shm>::new(&server.url, "blobs")
        .program(WORKER)
        .local_workers(1)
        .liveness(Duration::from_millis(200), Duration::from_millis(1000))
        .ack_wait(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    // Above the default threshold, and built in a memory file here.
    let mut b = Blob::build(200_000).unwrap();
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = (i % 13) as u8;
    }
    let blob = b.freeze().unwrap();
    assert!(blob.is_shared());
    let sum = blob.iter().map(|&b| u64::from(b)).sum();
    let seen = pool.call(ShmJob::Inspect(blob.clone())).await.unwrap();
    assert_eq!(
        seen,
        ShmOut::Seen {
            len: 200_000,
            shared: false,
            sum,
        }
    );
    let ShmOut::Blob(back) = pool.call(ShmJob::Echo(blob.clone())).await.unwrap() else {
        panic!("a blob")
    };
    assert!(!back.is_shared());
    assert_eq!(back, blob);
    // Built in the worker's memory file, inline on the way here.
    let job = ShmJob::Make {
        len: 300_000,
        byte: 4,
        built: true,
    };
    let ShmOut::Blob(made) = pool.call(job).await.unwrap() else {
        panic!("a blob")
    };
    assert!(!made.is_shared());
    assert!(made.len() == 300_000 && made.iter().all(|&b| b == 4));
    pool.shutdown().await;
}
