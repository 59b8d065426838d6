//! Messages the pool did not make, on its own subjects, published by a
//! plain NATS client while calls run; streams deleted under load; a broker
//! that is not there. None of it may replace a healthy worker or fail the
//! pool, and every task still ends once.

use std::time::Duration;

use bytes::Bytes;
use looppool::{CallError, LossCause, Output, StartError};
use looppool_nats::async_nats::{self, HeaderMap};
use looppool_nats::Delivery;
use looppool_tests::nats::NatsServer;
use looppool_tests::{crashes, eventually, recorder, Job};

const WORKER: &str = env!("CARGO_BIN_EXE_test-worker");

/// Malformed messages: no headers, garbage payloads, unreadable or
/// contradictory headers.
fn malformed(subject: &str, i: usize) -> (HeaderMap, Bytes) {
    let mut h = HeaderMap::new();
    match i % 5 {
        0 => {}
        1 => h.insert("Lp-Inc", "not a number"),
        2 => {
            h.insert("Lp-Inc", "1");
            h.insert("Lp-Seq", "x");
            h.insert("Lp-Task", "-1");
        }
        3 => h.insert("Lp-Tasks", "garbage"),
        // Unique per stream, or the broker itself drops the copies.
        _ => h.insert("Nats-Msg-Id", format!("junk-{subject}-{i}").as_str()),
    }
    let payload = match i % 3 {
        0 => Bytes::new(),
        1 => Bytes::from_static(b"\xff\xff\xff\x7fnot a frame"),
        _ => Bytes::from(vec![0x02u8; 64]),
    };
    (h, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_on_every_pool_subject_are_dropped_and_counted() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (events, hook) = recorder();
    let builder = looppool_tests::nats::probe_pool(WORKER, &server.url, "junk");
    let drops = builder.drop_counts();
    let (pool, _outputs) = builder
        .local_workers(2)
        .configure(move |b| b.on_event(hook))
        .start()
        .await
        .unwrap();
    let calls = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for x in 0..300u64 {
                assert_eq!(pool.call(Job::Double(x)).await.unwrap(), 2 * x);
            }
        })
    };
    let stranger = async_nats::connect(&server.url).await.unwrap();
    let mut subjects = vec!["lp.junk.owner".to_owned(), "lp.junk.join".to_owned()];
    for n in 0..2 {
        for kind in ["task", "out", "ctl", "hb"] {
            subjects.push(format!("lp.junk.{kind}.{n}"));
        }
    }
    for subject in &subjects {
        for i in 0..50 {
            let (headers, payload) = malformed(subject, i);
            stranger
                .publish_with_headers(subject.clone(), headers, payload)
                .await
                .unwrap();
        }
    }
    stranger.flush().await.unwrap();
    calls.await.unwrap();
    // 50 on each worker's task and output subjects are judged and counted
    // (by the workers, whose counts come with their heartbeats, and by
    // the parent); the rest are ignored as another incarnation's.
    assert!(
        eventually(Duration::from_secs(10), || drops.malformed() >= 200).await,
        "counted: {drops:?} ({} malformed)",
        drops.malformed()
    );
    assert!(crashes(&events).is_empty(), "{:?}", crashes(&events));
    assert_eq!(pool.stats().restarts, 0);
    assert_eq!(pool.call(Job::Double(21)).await.unwrap(), 42);
    pool.shutdown().await;
}

/// The incarnation of worker `n`, from its heartbeats (no secret: anyone
/// on the broker sees them).
async fn incarnation(client: &async_nats::Client, pool: &str, n: usize) -> String {
    use futures_util::StreamExt;
    let mut beats = client.subscribe(format!("lp.{pool}.hb.{n}")).await.unwrap();
    let beat = tokio::time::timeout(Duration::from_secs(5), beats.next())
        .await
        .expect("a heartbeat")
        .unwrap();
    beat.headers.unwrap().get("Lp-Inc").unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_far_future_sequence_numbers_do_not_grow_the_parent() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let builder = looppool_tests::nats::probe_pool(WORKER, &server.url, "future");
    let drops = builder.drop_counts();
    let (pool, _outputs) = builder.local_workers(1).start().await.unwrap();
    let stranger = async_nats::connect(&server.url).await.unwrap();
    let inc = incarnation(&stranger, "future", 0).await;
    let before = looppool_tests::resident_bytes();
    // 1,000 messages of one well-formed frame of 128 KiB (a worker log
    // record, as far as the relay reads it): 125 MiB if the parent kept them.
    let forged = 1000;
    let body = vec![0x8au8; 128 << 10];
    let mut frame = (body.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&body);
    let payload = Bytes::from(frame);
    for i in 0..forged {
        let mut h = HeaderMap::new();
        h.insert("Lp-Inc", inc.as_str());
        h.insert("Lp-Seq", (1_000_000_000u64 + i).to_string().as_str());
        stranger
            .publish_with_headers("lp.future.out.0", h, payload.clone())
            .await
            .unwrap();
        if i % 100 == 0 {
            stranger.flush().await.unwrap();
        }
    }
    stranger.flush().await.unwrap();
    assert!(
        eventually(Duration::from_secs(30), || drops.overflow() >= forged).await,
        "dropped past the bound: {}",
        drops.overflow()
    );
    let grown = looppool_tests::resident_bytes().saturating_sub(before);
    assert!(grown < 40 << 20, "the parent grew by {} MiB", grown >> 20);
    assert_eq!(pool.call(Job::Double(4)).await.unwrap(), 8);
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_streams_under_load_lose_tasks_with_a_fate_and_come_back() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (pool, mut outputs) = looppool_tests::nats::probe_pool(WORKER, &server.url, "gone")
        .local_workers(2)
        .delivery(Delivery::AtMostOnce)
        .start()
        .await
        .unwrap();
    // Ending one after the other over two seconds, so that most are
    // running or queued when the streams go.
    let n = 200;
    for i in 0..n {
        pool.submit(Job::Sleep {
            ms: 10 * i,
            value: i,
        })
        .await
        .unwrap();
    }
    let stranger = async_nats::connect(&server.url).await.unwrap();
    let js = async_nats::jetstream::new(stranger);
    let (mut values, mut lost) = (0, 0);
    let mut example = String::new();
    while values + lost < n {
        let item = tokio::time::timeout(Duration::from_secs(30), outputs.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} tasks ended within 30 s", values + lost))
            .expect("the stream goes on");
        match item {
            Output::Value { .. } => values += 1,
            Output::Lost { lost: why, .. } => {
                lost += 1;
                if example.is_empty() {
                    example = why.to_string();
                }
                assert!(
                    matches!(&why.cause, LossCause::Transport(w) if w.contains("deleted")),
                    "the cause says the stream was deleted: {why}"
                );
            }
            other => panic!("{other:?}"),
        }
        if values + lost == 20 {
            js.delete_stream("LP_gone_TASK").await.unwrap();
            js.delete_stream("LP_gone_OUT").await.unwrap();
        }
    }
    eprintln!(
        "streams deleted under load: {values} tasks completed, {lost} reported lost, as: {example}"
    );
    assert!(lost > 0, "the deleted streams held tasks");
    // The pool creates them again as its workers rejoin.
    let back = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match pool.call(Job::Double(5)).await {
                Ok(v) => break v,
                Err(CallError::WorkerLost(_)) => continue,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the pool serves again within 30 s");
    assert_eq!(back, 10);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_broker_that_is_not_there_is_a_broker_error_without_the_password() {
    // A port nothing listens on: a server started and stopped.
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    server.stop();
    let url = format!("nats://alice:s3cret@127.0.0.1:{port}");
    let err = looppool_tests::nats::probe_pool(WORKER, &url, "absent")
        .local_workers(1)
        .start()
        .await
        .unwrap_err();
    let StartError::Broker { url: shown, .. } = &err else {
        panic!("expected a broker error, got {err:?}");
    };
    assert_eq!(shown, &format!("nats://127.0.0.1:{port}"));
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    assert!(chain.contains("cannot use the broker at"), "{chain}");
    assert!(!chain.contains("s3cret"), "{chain}");
    assert!(!format!("{err:?}").contains("s3cret"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_streams_under_load_leave_every_task_one_fate() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (pool, mut outputs) = looppool_tests::nats::probe_pool(WORKER, &server.url, "purged")
        .local_workers(2)
        .delivery(Delivery::AtMostOnce)
        .start()
        .await
        .unwrap();
    let n = 20_000u64;
    let producer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for i in 0..n {
                pool.submit(Job::Double(i)).await.unwrap();
            }
        })
    };
    let stranger = async_nats::connect(&server.url).await.unwrap();
    let js = async_nats::jetstream::new(stranger);
    let mut fates = std::collections::HashMap::<u64, usize>::new();
    let (mut ended, mut lost, mut purges) = (0u64, 0u64, 0u64);
    let mut causes = std::collections::BTreeSet::new();
    while ended < n {
        let item = tokio::time::timeout(Duration::from_secs(40), outputs.next())
            .await
            .unwrap_or_else(|_| panic!("only {ended} of {n} tasks ended within 40 s"))
            .expect("the stream goes on");
        match item {
            Output::Value {
                task: Some(task), ..
            } => {
                *fates
                    .entry(task.seq() << 1 | task.worker() as u64)
                    .or_default() += 1
            }
            Output::Lost { task, lost: why } => {
                *fates
                    .entry(task.seq() << 1 | task.worker() as u64)
                    .or_default() += 1;
                lost += 1;
                causes.insert(why.cause.to_string());
            }
            other => panic!("{other:?}"),
        }
        ended += 1;
        // Purges land between a task's publish and its delivery now and
        // then: ten of them under load take some tasks' messages away.
        if purges < 10 && ended >= (purges + 1) * n / 12 {
            for stream in ["LP_purged_TASK", "LP_purged_OUT"] {
                js.get_stream(stream).await.unwrap().purge().await.unwrap();
            }
            purges += 1;
        }
    }
    producer.await.unwrap();
    eprintln!(
        "streams purged 10 times under load: {n} tasks, {lost} reported lost, as: {causes:?}"
    );
    assert_eq!(fates.len() as u64, n, "every task ended");
    assert!(fates.values().all(|&c| c == 1), "each task ended once");
    for cause in &causes {
        assert!(
            cause.contains("purged") || cause.contains("lost it"),
            "{cause}"
        );
        // A task message purged before its worker took it is published
        // again: only purged output messages cost tasks.
        assert!(!cause.contains("task message"), "{cause}");
    }
    assert_eq!(pool.call(Job::Double(5)).await.unwrap(), 10);
    pool.shutdown().await;
}
