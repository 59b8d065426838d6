//! The core pool behaviour, with real worker processes.

use std::collections::HashMap;
use std::time::Duration;

use looppool::{CallError, Output, SubmitErrorKind};
use looppool_tests::{probe_pool, submit_all, take, Job, ProbeInit};

/// How long [`take`] waits for each output.
const WAIT: Duration = Duration::from_secs(20);

fn values(items: Vec<Output<u64>>) -> Vec<u64> {
    items
        .into_iter()
        .map(|i| i.into_value().expect("a value"))
        .collect()
}

#[tokio::test]
async fn ten_tasks_to_eight_workers_give_ten_outputs() {
    let (pool, mut outputs) = probe_pool!().workers(8).start().await.unwrap();
    for x in 0..10 {
        pool.submit(Job::Double(x)).await.unwrap();
    }
    let mut got = values(take(&mut outputs, 10, WAIT).await);
    got.sort();
    assert_eq!(got, (0..10).map(|x| 2 * x).collect::<Vec<_>>());
    pool.shutdown().await;
    assert!(outputs.next().await.is_none(), "stream ends after shutdown");
}

#[tokio::test]
async fn round_robin_gives_each_worker_an_equal_share() {
    let (pool, mut outputs) = probe_pool!().workers(8).start().await.unwrap();
    for _ in 0..800 {
        pool.submit(Job::WhoAmI).await.unwrap();
    }
    let mut per_worker: HashMap<u64, usize> = HashMap::new();
    for item in take(&mut outputs, 800, WAIT).await {
        let Output::Value {
            worker,
            value,
            task,
            ..
        } = item
        else {
            panic!("unexpected {item:?}")
        };
        assert_eq!(
            worker as u64, value,
            "tagged with the worker that emitted it"
        );
        assert_eq!(task.unwrap().worker(), worker);
        *per_worker.entry(value).or_default() += 1;
    }
    assert_eq!(per_worker.len(), 8);
    assert!(per_worker.values().all(|&n| n == 100), "{per_worker:?}");
    pool.shutdown().await;
}

#[tokio::test]
async fn stateful_workers_see_their_own_sets() {
    let (pool, mut outputs) = probe_pool!().workers(4).start().await.unwrap();
    let n = 4 * 25;
    for i in 0..n {
        pool.submit(Job::Set {
            key: format!("k{}", i / 4),
            value: i,
        })
        .await
        .unwrap();
    }
    for i in 0..n {
        pool.submit(Job::Get {
            key: format!("k{}", i / 4),
        })
        .await
        .unwrap();
    }
    // Round-robin sends set i and get i to the same worker, and tasks to one
    // worker start in order, so every get sees its set.
    let mut got = values(take(&mut outputs, n as usize, WAIT).await);
    got.sort();
    assert_eq!(got, (0..n).collect::<Vec<_>>());
    pool.shutdown().await;
}

#[tokio::test]
async fn targeted_sends_reach_the_named_worker() {
    let (pool, mut outputs) = probe_pool!().workers(3).start().await.unwrap();
    for worker in [2, 0, 1, 2, 2] {
        assert_eq!(
            pool.call_to(worker, Job::WhoAmI).await.unwrap(),
            worker as u64
        );
        let id = pool.submit_to(worker, Job::WhoAmI).await.unwrap();
        assert_eq!(id.worker(), worker);
        let item = take(&mut outputs, 1, WAIT).await.pop().unwrap();
        assert_eq!(item.value(), Some(&(worker as u64)));
    }
    let err = pool.try_submit_to(7, Job::Nothing).unwrap_err();
    assert_eq!(
        err.kind(),
        &SubmitErrorKind::NoSuchWorker {
            worker: 7,
            workers: 3
        }
    );
    assert_eq!(err.into_inner(), Job::Nothing);
    pool.shutdown().await;
}

#[tokio::test]
async fn broadcast_reaches_every_worker_once_in_order() {
    let (pool, mut outputs) = probe_pool!().workers(4).start().await.unwrap();
    // A set sent to each worker first: the broadcast get must start after it.
    for w in 0..4 {
        pool.submit_to(
            w,
            Job::Set {
                key: "b".into(),
                value: 100 + w as u64,
            },
        )
        .await
        .unwrap();
    }
    let ids = pool.broadcast(Job::Get { key: "b".into() }).await.unwrap();
    assert_eq!(
        ids.iter().map(|id| id.worker()).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let mut seen: Vec<(usize, u64)> = take(&mut outputs, 4, WAIT)
        .await
        .into_iter()
        .map(|item| (item.worker(), item.into_value().unwrap()))
        .collect();
    seen.sort();
    assert_eq!(seen, vec![(0, 100), (1, 101), (2, 102), (3, 103)]);
    pool.shutdown().await;
    assert!(
        outputs.next().await.is_none(),
        "exactly one copy per worker"
    );
}

#[tokio::test]
async fn a_failing_handler_leaves_every_worker_usable() {
    let (pool, mut outputs) = probe_pool!().workers(2).start().await.unwrap();
    for w in 0..2 {
        let err = pool
            .call_to(w, Job::Fail("bad input".into()))
            .await
            .unwrap_err();
        let CallError::Task(e) = err else {
            panic!("expected a task error, got {err:?}")
        };
        assert_eq!(e.worker, w);
        assert_eq!(e.message, "bad input");
        assert!(!e.panicked);

        let err = pool
            .call_to(w, Job::Panic("kaboom".into()))
            .await
            .unwrap_err();
        let CallError::Task(e) = err else {
            panic!("expected a task error, got {err:?}")
        };
        assert!(e.panicked);
        assert!(e.message.contains("kaboom"), "{}", e.message);
        assert!(
            e.message.contains("src/lib.rs"),
            "names the location: {}",
            e.message
        );
    }
    let failed = pool.submit(Job::Fail("submitted".into())).await.unwrap();
    let item = take(&mut outputs, 1, WAIT).await.pop().unwrap();
    let Output::Failed(e) = item else {
        panic!("expected a failure item, got {item:?}")
    };
    assert_eq!(e.task, failed);
    assert_eq!(e.message, "submitted");
    // Both workers still serve.
    for w in 0..2 {
        assert_eq!(pool.call_to(w, Job::Double(5)).await.unwrap(), 10);
    }
    assert_eq!(pool.pids().iter().flatten().count(), 2);
    pool.shutdown().await;
}

#[tokio::test]
async fn call_reports_no_reply_and_extra_outputs_go_to_the_stream() {
    let (pool, mut outputs) = probe_pool!().workers(1).start().await.unwrap();
    let err = pool.call(Job::Nothing).await.unwrap_err();
    assert!(
        matches!(err, CallError::NoReply { worker: 0, .. }),
        "{err:?}"
    );
    assert_eq!(
        pool.call(Job::Repeat { value: 9, times: 3 }).await.unwrap(),
        9
    );
    assert_eq!(values(take(&mut outputs, 2, WAIT).await), vec![9, 9]);
    pool.shutdown().await;
}

#[tokio::test]
async fn try_submit_past_the_bound_is_full_and_accepted_tasks_all_run() {
    let (pool, mut outputs) = probe_pool!().workers(2).max_tasks(8).start().await.unwrap();
    assert_eq!(pool.worker_capacity(), 4);
    let mut accepted = 0;
    let mut full = 0;
    for i in 0..20 {
        match pool.try_submit(Job::Sleep { ms: 100, value: i }) {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert!(e.is_full(), "{e}");
                assert!(matches!(e.into_inner(), Job::Sleep { value, .. } if value == i));
                full += 1;
            }
        }
    }
    assert_eq!(accepted, 8);
    assert_eq!(full, 12);
    assert_eq!(take(&mut outputs, 8, WAIT).await.len(), 8);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_slow_consumer_loses_no_output() {
    // A window of 4 outputs per worker, 2,000 outputs: workers must wait for
    // the consumer again and again.
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .max_results(8)
        .start()
        .await
        .unwrap();
    let jobs = (0..20).map(|i| Job::Repeat {
        value: i,
        times: 100,
    });
    let producer = submit_all(&pool, jobs);
    let mut counts = HashMap::new();
    for (n, item) in take(&mut outputs, 2000, WAIT).await.into_iter().enumerate() {
        if n % 250 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        *counts.entry(item.into_value().unwrap()).or_insert(0) += 1;
    }
    producer.await.unwrap();
    assert_eq!(counts.len(), 20);
    assert!(counts.values().all(|&c| c == 100), "{counts:?}");
    pool.shutdown().await;
    assert!(outputs.next().await.is_none());
}

#[tokio::test]
async fn init_payload_and_unsolicited_outputs_arrive() {
    let init = ProbeInit {
        offset: 1000,
        unsolicited: 5,
        ..Default::default()
    };
    let (pool, mut outputs) = probe_pool!().workers(2).init(init).start().await.unwrap();
    assert_eq!(pool.call(Job::Double(1)).await.unwrap(), 1002);
    let items = take(&mut outputs, 10, WAIT).await;
    for item in &items {
        let Output::Value { task, value, .. } = item else {
            panic!("{item:?}")
        };
        assert!(task.is_none(), "unsolicited outputs belong to no task");
        assert!((1_000_000..1_000_005).contains(value));
    }
    let mut per_worker = HashMap::new();
    for item in items {
        *per_worker.entry(item.worker()).or_insert(0) += 1;
    }
    assert_eq!(per_worker, HashMap::from([(0, 5), (1, 5)]));
    pool.shutdown().await;
}

#[tokio::test]
async fn shutdown_drains_running_tasks_and_runs_the_hook() {
    let dir = std::env::temp_dir().join(format!("looppool-shutdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::env::set_var("PROBE_SHUTDOWN_MARKER", &dir);
    let (pool, mut outputs) = probe_pool!().workers(2).start().await.unwrap();
    for i in 0..10 {
        pool.submit(Job::Sleep { ms: 30, value: i }).await.unwrap();
    }
    let report = pool.shutdown().await;
    assert!(report.drained);
    let mut got = Vec::new();
    while let Some(item) = outputs.next().await {
        got.push(item.into_value().unwrap());
    }
    got.sort();
    assert_eq!(
        got,
        (0..10).collect::<Vec<_>>(),
        "every queued task ran before the workers exited"
    );
    for w in 0..2 {
        assert!(
            dir.join(format!("worker-{w}")).exists(),
            "shutdown hook ran on worker {w}"
        );
    }
    let err = pool.submit(Job::Nothing).await.unwrap_err();
    assert!(err.is_closed());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn start_stop_with_pending_tasks_never_hangs() {
    for round in 0..16u64 {
        let (pool, mut outputs) = probe_pool!().workers(2).start().await.unwrap();
        for i in 0..(round % 16) {
            pool.submit(Job::Double(i)).await.unwrap();
        }
        let report = tokio::time::timeout(Duration::from_secs(20), pool.shutdown())
            .await
            .expect("shutdown hung");
        assert!(report.drained);
        let mut n = 0;
        while let Some(item) = outputs.next().await {
            item.into_value().unwrap();
            n += 1;
        }
        assert_eq!(n, round % 16);
    }
}

#[tokio::test]
async fn shutdown_with_deadline_kills_stragglers_and_reports_their_tasks() {
    let (pool, mut outputs) = probe_pool!().workers(1).start().await.unwrap();
    let id = pool.submit(Job::hold(1)).await.unwrap();
    let report = pool.shutdown_timeout(Duration::from_millis(200)).await;
    assert!(!report.drained);
    let item = take(&mut outputs, 1, WAIT).await.pop().unwrap();
    let Output::Lost { task, lost } = item else {
        panic!("{item:?}")
    };
    assert_eq!(task, id);
    assert_eq!(lost.cause, looppool::LossCause::ShutdownDeadline);
    assert!(outputs.next().await.is_none());
}

#[tokio::test]
async fn invalid_settings_are_refused_with_a_reason() {
    let err = probe_pool!().workers(0).start().await.unwrap_err();
    assert!(
        looppool_tests::report(&err).contains("at least one worker"),
        "{err}"
    );
    let err = probe_pool!()
        .workers(4)
        .max_tasks(3)
        .start()
        .await
        .unwrap_err();
    assert!(
        looppool_tests::report(&err)
            .contains("max_tasks(3) is smaller than the number of workers (4)"),
        "{err}"
    );
    let err = probe_pool!()
        .workers(4)
        .max_results(2)
        .start()
        .await
        .unwrap_err();
    assert!(
        looppool_tests::report(&err).contains("max_results(2)"),
        "{err}"
    );
    let err = looppool::Pool::<looppool_tests::Probe>::builder()
        .init_default()
        .program("/nonexistent/worker")
        .start()
        .await
        .unwrap_err();
    assert!(
        looppool_tests::report(&err).contains("/nonexistent/worker"),
        "{err}"
    );
}

#[tokio::test]
async fn a_program_that_is_not_a_worker_is_refused_clearly() {
    let err = looppool::Pool::<looppool_tests::Probe>::builder()
        .init_default()
        .program("/bin/true")
        .workers(1)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, looppool::StartError::Handshake { worker: 0, .. }),
        "{err:?}"
    );
    assert!(
        looppool_tests::report(&err).contains("instead of becoming worker"),
        "{err}"
    );
}

#[tokio::test]
async fn an_initialiser_error_fails_start() {
    let init = ProbeInit {
        fail_on: Some(1),
        ..Default::default()
    };
    let err = probe_pool!()
        .workers(2)
        .init(init)
        .start()
        .await
        .unwrap_err();
    let looppool::StartError::Init { worker, message } = err else {
        panic!("{err:?}")
    };
    assert_eq!(worker, 1);
    assert_eq!(message, "refusing to start worker 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_callers_on_a_multi_thread_runtime() {
    let (pool, _outputs) = probe_pool!()
        .workers(2)
        .max_tasks(64)
        .start()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for c in 0..8u64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..500 {
                assert_eq!(
                    pool.call(Job::Double(c * 1000 + i)).await.unwrap(),
                    2 * (c * 1000 + i)
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    pool.shutdown().await;
}

#[tokio::test]
async fn a_deep_stream_arrives_whole_and_in_each_workers_order() {
    // Deep windows put thousands of outputs in one read of the parent, more
    // than one batch of the output stream holds: the batches of a read must
    // all arrive, in order, with their credits given back.
    const N: u64 = 40_000;
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .max_tasks(16_384)
        .max_results(32_768)
        .start()
        .await
        .unwrap();
    let producer = submit_all(&pool, (0..N).map(Job::Double));
    let mut last: HashMap<usize, u64> = HashMap::new();
    let mut seen = 0u64;
    let mut sum = 0u64;
    for item in take(&mut outputs, N as usize, WAIT).await {
        let worker = item.worker();
        let value = item.into_value().expect("a value");
        if let Some(&before) = last.get(&worker) {
            assert!(value > before, "worker {worker}: {value} after {before}");
        }
        last.insert(worker, value);
        seen += 1;
        sum += value;
    }
    producer.await.unwrap();
    assert_eq!(seen, N);
    assert_eq!(sum, N * (N - 1), "every task's output, once");
    pool.shutdown().await;
    assert!(outputs.next().await.is_none());
}
