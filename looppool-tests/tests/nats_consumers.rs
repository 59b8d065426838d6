//! A worker's task consumer that stops delivering, or that leaves the
//! worker's subject full of messages it will never deliver, as a broker
//! restarted after a crash can leave it: the pool notices within seconds,
//! replaces the consumer, and every task still ends once, with no worker
//! lost.
//!
//! The broken consumer is made by a plain client of a broker without
//! permissions: it replaces worker 0's task consumer with one of the same
//! name that reads another subject, so it delivers nothing of worker 0's.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use looppool::Output;
use looppool_nats::async_nats::jetstream::{self, consumer};
use looppool_nats::async_nats::{self, HeaderMap};
use looppool_nats::Delivery;
use looppool_tests::nats::NatsServer;
use looppool_tests::{recorder, Job};

const WORKER: &str = env!("CARGO_BIN_EXE_test-worker");

/// How long the tasks of a worker whose consumer broke may take to end:
/// well above what noticing and replacing the consumer takes (about 5 s
/// with the probe pool's 200 ms heartbeat), well below forever.
const BOUND: Duration = Duration::from_secs(20);

/// Replaces worker 0's task consumer of pool `pool` with one of the same
/// name that delivers nothing to it.
async fn break_the_task_consumer(js: &jetstream::Context, pool: &str) {
    let stream = js.get_stream(format!("LP_{pool}_TASK")).await.unwrap();
    let mut names = stream.consumer_names();
    let mut name = None;
    while let Some(n) = names.next().await {
        let n = n.unwrap();
        if n.starts_with("w0-") {
            name = Some(n);
        }
    }
    let name = name.expect("worker 0's task consumer");
    let mut config = stream
        .get_consumer::<consumer::pull::Config>(&name)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    stream.delete_consumer(&name).await.unwrap();
    config.filter_subject = format!("lp.{pool}.task.999");
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: config.durable_name,
            filter_subject: config.filter_subject,
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: config.max_ack_pending,
            ack_wait: config.ack_wait,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Worker 0's task consumer reads worker 0's subject.
async fn task_consumer_reads(js: &jetstream::Context, pool: &str) -> bool {
    let stream = js.get_stream(format!("LP_{pool}_TASK")).await.unwrap();
    let mut names = stream.consumer_names();
    while let Some(n) = names.next().await {
        let n = n.unwrap();
        if n.starts_with("w0-") {
            let c = stream
                .get_consumer::<consumer::pull::Config>(&n)
                .await
                .unwrap();
            return c.cached_info().config.filter_subject == format!("lp.{pool}.task.0");
        }
    }
    false
}

/// Submits `n` tasks and waits for each to end with its own value within
/// [`BOUND`]; returns how long they took.
async fn every_task_ends(
    pool: &looppool::Pool<looppool_tests::Probe>,
    outputs: &mut looppool::Outputs<u64>,
    n: u64,
) -> Duration {
    let started = Instant::now();
    let mut ids = std::collections::HashMap::new();
    for i in 0..n {
        ids.insert(pool.submit(Job::Double(i)).await.unwrap(), i);
    }
    let mut ended = 0;
    while ended < n {
        let item = tokio::time::timeout_at((started + BOUND).into(), outputs.next())
            .await
            .unwrap_or_else(|_| panic!("only {ended} of {n} tasks ended within {BOUND:?}"))
            .expect("the stream goes on");
        match item {
            Output::Value {
                task: Some(task),
                value,
                ..
            } => {
                let i = ids.remove(&task).expect("a task of ours, once");
                assert_eq!(value, 2 * i);
            }
            other => panic!("{other:?}"),
        }
        ended += 1;
    }
    started.elapsed()
}

/// Starts `builder`'s pool of two local workers with `hook` as its event
/// hook, sees 10 tasks through, then breaks worker 0's task
/// consumer from a connection of its own (returned for the checks).
async fn start_then_break_the_task_consumer(
    builder: looppool_nats::NatsPoolBuilder<looppool_tests::Probe>,
    hook: impl Fn(&looppool::WorkerEvent) + Send + Sync + 'static,
    url: &str,
    name: &str,
) -> (
    looppool::Pool<looppool_tests::Probe>,
    looppool::Outputs<u64>,
    jetstream::Context,
) {
    let (pool, mut outputs) = builder
        .local_workers(2)
        .configure(move |b| b.on_event(hook))
        .start()
        .await
        .unwrap();
    every_task_ends(&pool, &mut outputs, 10).await;
    let stranger = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(stranger);
    break_the_task_consumer(&js, name).await;
    (pool, outputs, js)
}

async fn a_consumer_that_delivers_nothing_is_replaced(name: &str, delivery: Delivery) {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (events, hook) = recorder();
    let builder = looppool_tests::nats::probe_pool(WORKER, &server.url, name).delivery(delivery);
    let (pool, mut outputs, js) =
        start_then_break_the_task_consumer(builder, hook, &server.url, name).await;
    // Half of them go to worker 0, whose consumer delivers nothing.
    let took = every_task_ends(&pool, &mut outputs, 200).await;
    eprintln!("{name}: the tasks of a worker whose consumer delivered nothing ended in {took:?}");
    assert!(
        task_consumer_reads(&js, name).await,
        "the consumer was replaced"
    );
    let crashed = looppool_tests::crashes(&events);
    assert!(crashed.is_empty(), "no worker was lost: {crashed:?}");
    assert_eq!(pool.stats().restarts, 0);
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_a_task_consumer_that_delivers_nothing_is_replaced() {
    a_consumer_that_delivers_nothing_is_replaced(
        "stuck-alo",
        Delivery::AtLeastOnce { max_deliveries: 5 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_a_task_consumer_that_delivers_nothing_is_replaced() {
    a_consumer_that_delivers_nothing_is_replaced("stuck-amo", Delivery::AtMostOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_full_of_messages_its_consumer_never_delivers_is_emptied() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let name = "full";
    let (events, hook) = recorder();
    let builder = looppool_tests::nats::probe_pool(WORKER, &server.url, name);
    let drops = builder.drop_counts();
    let (pool, mut outputs, js) =
        start_then_break_the_task_consumer(builder, hook, &server.url, name).await;
    // Fill worker 0's subject up to the broker's limit with messages its
    // consumer will not deliver, as a crashed broker brings back messages
    // behind its consumer: the broker then refuses the pool's tasks.
    let mut filled = 0u64;
    loop {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("left-behind-{filled}").as_str());
        let stored = js
            .publish_with_headers(
                format!("lp.{name}.task.0"),
                headers,
                Bytes::from_static(b"left behind"),
            )
            .await
            .unwrap()
            .await;
        if stored.is_err() {
            break;
        }
        filled += 1;
    }
    assert!(filled > 1000, "the subject took {filled} messages");
    let took = every_task_ends(&pool, &mut outputs, 200).await;
    eprintln!("{filled} messages left behind in a worker's subject: its tasks ended in {took:?}");
    assert!(
        task_consumer_reads(&js, name).await,
        "the consumer was replaced"
    );
    let crashed = looppool_tests::crashes(&events).len();
    assert_eq!(crashed, 0, "no worker was lost");
    // The worker dropped what it was finally handed (and so removed it).
    assert!(
        looppool_tests::eventually(Duration::from_secs(10), || drops.malformed() >= filled).await,
        "{} of {filled} dropped",
        drops.malformed()
    );
    pool.shutdown().await;
}
