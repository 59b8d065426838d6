//! Pools whose workers are reached through a real NATS JetStream broker:
//! the local-mode scenarios that apply, remote workers joining as separate
//! processes, and two pools on one broker kept apart.

use std::collections::HashMap;
use std::time::Duration;

use looppool::{CallError, Output, TaskError};
use looppool_nats::NatsPoolBuilder;
use looppool_tests::nats::{remote_worker, NatsServer};
use looppool_tests::{take, Job, Probe, ProbeInit};

const WORKER: &str = env!("CARGO_BIN_EXE_test-worker");

fn pool(url: &str, name: &str) -> looppool_nats::NatsPoolBuilder<Probe> {
    looppool_tests::nats::probe_pool(WORKER, url, name)
}

/// How long [`take`] waits for each output.
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn local_workers_through_the_broker_serve_tasks_calls_and_broadcasts() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (pool, mut outputs) = pool(&server.url, "basics")
        .local_workers(2)
        .configure(|b| {
            b.init(ProbeInit {
                offset: 1000,
                ..Default::default()
            })
        })
        .start()
        .await
        .unwrap();
    assert_eq!(pool.workers(), 2);

    // Round-robin submits, each output once.
    for x in 0..200 {
        pool.submit(Job::Double(x)).await.unwrap();
    }
    let mut got: Vec<u64> = take(&mut outputs, 200, WAIT)
        .await
        .into_iter()
        .map(|o| o.into_value().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, (0..200).map(|x| 2 * x + 1000).collect::<Vec<_>>());

    // Calls, targeted sends, and a broadcast reaching every worker once.
    assert_eq!(pool.call(Job::Double(21)).await.unwrap(), 1042);
    assert_eq!(pool.call_to(1, Job::WhoAmI).await.unwrap(), 1);
    pool.submit_to(0, Job::WhoAmI).await.unwrap();
    let Output::Value { worker, value, .. } = take(&mut outputs, 1, WAIT).await.remove(0) else {
        panic!("a value")
    };
    assert_eq!((worker, value), (0, 0));
    pool.broadcast(Job::WhoAmI).await.unwrap();
    let mut who: Vec<u64> = take(&mut outputs, 2, WAIT)
        .await
        .into_iter()
        .map(|o| o.into_value().unwrap())
        .collect();
    who.sort();
    assert_eq!(who, vec![0, 1]);

    // Several outputs per task, then failures reported with their message.
    assert_eq!(
        pool.call(Job::Repeat { value: 7, times: 3 }).await.unwrap(),
        7
    );
    assert_eq!(take(&mut outputs, 2, WAIT).await.len(), 2);
    match pool.call(Job::Fail("no such thing".into())).await {
        Err(CallError::Task(TaskError { message, .. })) => {
            assert!(message.contains("no such thing"), "{message}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    match pool.call(Job::Panic("boom".into())).await {
        Err(CallError::Task(e)) => assert!(e.panicked && e.message.contains("boom"), "{e:?}"),
        other => panic!("expected a panic, got {other:?}"),
    }

    // The workers are real processes of this machine.
    let pids = pool.pids();
    assert_eq!(pids.len(), 2);
    assert_eq!(
        pool.call_to(0, Job::Pid).await.unwrap(),
        u64::from(pids[0].unwrap())
    );

    // Shutdown drains queued tasks first.
    for _ in 0..50 {
        pool.submit(Job::Sleep { ms: 5, value: 9 }).await.unwrap();
    }
    let report = pool.shutdown().await;
    assert!(report.drained && report.failure.is_none(), "{report:?}");
    let rest = take(&mut outputs, 50, WAIT).await;
    assert!(rest
        .iter()
        .all(|o| matches!(o, Output::Value { value: 9, .. })));
    assert!(
        outputs.next().await.is_none(),
        "the stream ends after shutdown"
    );
    for pid in pids.into_iter().flatten() {
        assert!(
            looppool_tests::eventually(Duration::from_secs(5), || looppool_tests::process_gone(
                pid
            ))
            .await,
            "worker {pid} exited"
        );
    }
}

#[tokio::test]
async fn remote_workers_join_as_the_index_they_ask_for() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    // The remote processes start before the pool: they keep asking to join.
    let mut second = remote_worker(WORKER, &server.url, "joins", "probe", Some(2));
    let mut first = remote_worker(WORKER, &server.url, "joins", "probe", None);
    let (pool, _outputs) = pool(&server.url, "joins")
        .local_workers(1)
        .remote_workers(2)
        .start()
        .await
        .unwrap();
    assert_eq!(pool.workers(), 3);
    let pids = pool.pids();
    assert_eq!(
        pids[1],
        Some(first.id()),
        "the unnamed worker took the first open place"
    );
    assert_eq!(pids[2], Some(second.id()), "the worker asking for 2 got 2");
    for i in 0..3 {
        assert_eq!(pool.call_to(i, Job::WhoAmI).await.unwrap(), i as u64);
    }
    let report = pool.shutdown().await;
    assert!(report.drained, "{report:?}");
    assert_eq!(first.wait().unwrap().code(), Some(0), "a clean exit");
    assert_eq!(second.wait().unwrap().code(), Some(0));
}

#[tokio::test]
async fn two_pools_on_one_broker_stay_apart() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (a, mut a_out) = pool(&server.url, "alpha")
        .local_workers(2)
        .configure(|b| {
            b.init(ProbeInit {
                offset: 1,
                ..Default::default()
            })
        })
        .start()
        .await
        .unwrap();
    let (b, mut b_out) = pool(&server.url, "beta")
        .local_workers(2)
        .configure(|b| {
            b.init(ProbeInit {
                offset: 2,
                ..Default::default()
            })
        })
        .start()
        .await
        .unwrap();
    for x in 0..100 {
        a.submit(Job::Double(x)).await.unwrap();
        b.submit(Job::Double(x)).await.unwrap();
    }
    let mut seen: HashMap<&str, Vec<u64>> = HashMap::new();
    for (name, out) in [("alpha", &mut a_out), ("beta", &mut b_out)] {
        for o in take(out, 100, WAIT).await {
            seen.entry(name).or_default().push(o.into_value().unwrap());
        }
    }
    for (name, offset) in [("alpha", 1), ("beta", 2)] {
        let mut v = seen.remove(name).unwrap();
        v.sort();
        assert_eq!(
            v,
            (0..100).map(|x| 2 * x + offset).collect::<Vec<_>>(),
            "{name}"
        );
    }
    // Neither stream received anything of the other.
    a.shutdown().await;
    b.shutdown().await;
    assert!(a_out.next().await.is_none());
    assert!(b_out.next().await.is_none());
}

#[tokio::test]
async fn a_full_worker_queue_is_a_full_error() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (pool, mut outputs) = pool(&server.url, "full")
        .local_workers(1)
        .max_tasks(4)
        .start()
        .await
        .unwrap();
    for _ in 0..4 {
        pool.try_submit(Job::Sleep { ms: 300, value: 1 }).unwrap();
    }
    let err = pool.try_submit(Job::Double(1)).unwrap_err();
    assert_eq!(*err.kind(), looppool::SubmitErrorKind::Full, "{err}");
    assert_eq!(take(&mut outputs, 4, WAIT).await.len(), 4);
    pool.try_submit(Job::Double(1)).unwrap();
    pool.shutdown().await;
}

#[tokio::test]
async fn a_program_that_never_joins_is_a_start_error() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    // `true` exits at once without joining.
    let err = NatsPoolBuilder::<Probe>::new(&server.url, "nojoin")
        .init_default()
        .program("/bin/true")
        .local_workers(1)
        .start()
        .await
        .unwrap_err();
    let text = looppool_tests::report(&err);
    assert!(text.contains("before joining"), "{text}");
    // And a bad pool id is refused before anything starts.
    let err = NatsPoolBuilder::<Probe>::new(&server.url, "no.dots")
        .init_default()
        .local_workers(1)
        .start()
        .await
        .unwrap_err();
    assert!(looppool_tests::report(&err).contains("pool id"), "{err}");
}

#[tokio::test]
async fn resize_stats_reports_and_init_failures_work_through_the_broker() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    // An initialiser that fails is a start error naming the worker.
    let err = pool(&server.url, "initfail")
        .local_workers(2)
        .configure(|b| {
            b.init(ProbeInit {
                fail_on: Some(1),
                ..Default::default()
            })
            .restart_policy(looppool::RestartPolicy::never())
        })
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, looppool::StartError::Init { worker: 1, .. }),
        "{err}"
    );

    let (pool, mut outputs) = pool(&server.url, "grow")
        .local_workers(1)
        .configure(|b| b.max_workers(3).report_interval(Duration::from_millis(100)))
        .start()
        .await
        .unwrap();
    // Growing adds places for remote workers, which join them.
    let grow = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.resize(3).await })
    };
    let mut joiners = vec![
        remote_worker(WORKER, &server.url, "grow", "probe", None),
        remote_worker(WORKER, &server.url, "grow", "probe", None),
    ];
    grow.await.unwrap().unwrap();
    assert_eq!(pool.workers(), 3);
    for x in 0..300 {
        pool.submit(Job::Double(x)).await.unwrap();
    }
    let got = take(&mut outputs, 300, WAIT).await;
    let mut per_worker = HashMap::new();
    for o in got {
        let Output::Value { worker, .. } = o else {
            panic!("{o:?}")
        };
        *per_worker.entry(worker).or_insert(0) += 1;
    }
    assert_eq!(per_worker.len(), 3, "{per_worker:?}");
    // Statistics and resource reports arrive as in local mode.
    assert!(
        looppool_tests::eventually(Duration::from_secs(5), || {
            let s = pool.stats();
            s.done >= 300 && s.workers.iter().take(3).all(|w| w.last_report.is_some())
        })
        .await,
        "{:?}",
        pool.stats()
    );
    // Shrinking drains the removed remote workers, which exit cleanly.
    pool.resize(1).await.unwrap();
    assert_eq!(pool.workers(), 1);
    for j in &mut joiners {
        assert_eq!(j.wait().unwrap().code(), Some(0));
    }
    assert_eq!(pool.call(Job::WhoAmI).await.unwrap(), 0);
    pool.shutdown().await;
}

#[tokio::test]
async fn tasks_through_the_broker_are_timed_as_local_ones() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (pool, mut outputs) = pool(&server.url, "timed")
        .local_workers(1)
        .start()
        .await
        .unwrap();
    // The run is measured by the worker, the stay by the parent: through a
    // broker, the queue wait includes both trips through it.
    for x in 0..3 {
        pool.submit(Job::Sleep { ms: 50, value: x }).await.unwrap();
    }
    take(&mut outputs, 3, WAIT).await;
    let timed = looppool_tests::eventually(Duration::from_secs(5), || {
        pool.stats().workers[0].run_time.count() == 3
    })
    .await;
    let stats = pool.stats();
    println!("{:?}", stats.workers[0]);
    assert!(timed, "{:?}", stats.workers[0]);
    let run = &stats.workers[0].run_time;
    let in_50_to_100_ms = run
        .buckets()
        .filter(|(bound, _)| *bound == Some(Duration::from_millis(100)))
        .map(|(_, n)| n)
        .sum::<u64>();
    assert_eq!(in_50_to_100_ms, 3, "{run:?}");
    assert_eq!(stats.queue_wait.count(), 3);
    assert_eq!(stats.output_wait.count(), 3);
    pool.shutdown().await;
}
