//! Failures through a real NATS broker: remote workers killed with SIGKILL
//! mid-task under both delivery modes, local workers killed, and the broker
//! restarted under load. Every task must be accounted for.

use std::collections::BTreeMap;
use std::time::Duration;

use looppool::{Output, WorkerEvent};
use looppool_nats::Delivery;
use looppool_tests::nats::{remote_worker, NatsServer};
use looppool_tests::{recorder, sys, Job, Probe};

const WORKER: &str = env!("CARGO_BIN_EXE_test-worker");

fn pool(url: &str, name: &str) -> looppool_nats::NatsPoolBuilder<Probe> {
    looppool_tests::nats::probe_pool(WORKER, url, name)
}

/// Takes outputs until `n` tasks have ended, keyed by task value.
async fn settle(
    outputs: &mut looppool::Outputs<u64>,
    n: usize,
    mut on_each: impl FnMut(usize),
) -> (
    BTreeMap<u64, usize>,
    Vec<(looppool::TaskId, looppool::WorkerLost)>,
) {
    let mut values = BTreeMap::new();
    let mut lost = Vec::new();
    let mut ended = 0;
    while ended < n {
        let item = tokio::time::timeout(Duration::from_secs(60), outputs.next())
            .await
            .unwrap_or_else(|_| panic!("only {ended} of {n} tasks ended within 60 s"))
            .expect("the stream goes on");
        match item {
            Output::Value { value, .. } => *values.entry(value).or_default() += 1,
            Output::Lost { task, lost: why } => lost.push((task, *why)),
            other => panic!("no task fails here: {other:?}"),
        }
        ended += 1;
        on_each(ended);
    }
    (values, lost)
}

/// Kills a remote worker while it runs tasks; returns what ended how.
async fn kill_remote_mid_task(
    server: &NatsServer,
    name: &str,
    delivery: Delivery,
) -> (
    BTreeMap<u64, usize>,
    Vec<(looppool::TaskId, looppool::WorkerLost)>,
    Vec<WorkerEvent>,
) {
    let mut remote = remote_worker(WORKER, &server.url, name, "probe", Some(1));
    let (events, hook) = recorder();
    let (pool, mut outputs) = pool(&server.url, name)
        .local_workers(1)
        .remote_workers(1)
        .delivery(delivery)
        .configure(move |b| b.on_event(hook))
        .start()
        .await
        .unwrap();
    let remote_pid = remote.id();
    assert_eq!(pool.pids()[1], Some(remote_pid));
    let n = 400;
    for i in 0..n {
        pool.submit(Job::Sleep { ms: 10, value: i }).await.unwrap();
    }
    let mut killed = false;
    let result = settle(&mut outputs, n as usize, |ended| {
        if ended == 40 && !killed {
            sys::signal(remote_pid, libc::SIGKILL);
            killed = true;
        }
    })
    .await;
    assert!(killed);
    let _ = remote.wait();
    // A new remote worker takes the lost one's place.
    let mut replacement = remote_worker(WORKER, &server.url, name, "probe", None);
    assert_eq!(pool.call_to(1, Job::WhoAmI).await.unwrap(), 1);
    assert_eq!(pool.pids()[1], Some(replacement.id()));
    pool.shutdown().await;
    assert_eq!(replacement.wait().unwrap().code(), Some(0));
    let events = events.lock().unwrap().clone();
    (result.0, result.1, events)
}

fn crashed_worker_1(events: &[WorkerEvent]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, WorkerEvent::Crashed { worker: 1, .. }))
}

#[tokio::test]
async fn at_least_once_a_killed_remote_workers_tasks_run_elsewhere() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (values, lost, events) =
        kill_remote_mid_task(&server, "alo", Delivery::AtLeastOnce { max_deliveries: 5 }).await;
    assert!(lost.is_empty(), "nothing is lost at least once: {lost:?}");
    assert_eq!(values.len(), 400, "every task completed");
    assert!(
        values.values().all(|&c| c == 1),
        "each task ended once for the caller"
    );
    assert!(crashed_worker_1(&events), "{events:?}");
}

#[tokio::test]
async fn at_most_once_a_killed_remote_workers_tasks_are_reported_lost() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (values, lost, events) = kill_remote_mid_task(&server, "amo", Delivery::AtMostOnce).await;
    assert_eq!(values.len() + lost.len(), 400, "every task accounted for");
    assert!(values.values().all(|&c| c == 1), "none ran twice");
    assert!(!lost.is_empty(), "the killed worker held tasks");
    for (task, why) in &lost {
        assert_eq!(task.worker(), 1, "only the killed worker's tasks are lost");
        assert_eq!(why.worker, 1);
    }
    assert!(crashed_worker_1(&events), "{events:?}");
}

#[tokio::test]
async fn a_killed_local_worker_is_seen_at_once_and_replaced() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (events, hook) = recorder();
    let (pool, mut outputs) = pool(&server.url, "localkill")
        .local_workers(2)
        .delivery(Delivery::AtMostOnce)
        .configure(move |b| b.on_event(hook))
        .start()
        .await
        .unwrap();
    let victim = pool.pids()[0].unwrap();
    for i in 0..100 {
        pool.submit(Job::Sleep { ms: 20, value: i }).await.unwrap();
    }
    sys::signal(victim, libc::SIGKILL);
    let (values, lost) = settle(&mut outputs, 100, |_| {}).await;
    assert_eq!(values.len() + lost.len(), 100);
    assert!(lost.iter().all(|(t, _)| t.worker() == 0));
    assert!(
        looppool_tests::eventually(Duration::from_secs(10), || pool.pids()[0]
            .is_some_and(|p| p != victim))
        .await,
        "worker 0 was replaced"
    );
    assert_eq!(pool.call_to(0, Job::WhoAmI).await.unwrap(), 0);
    let crash = events
        .lock()
        .unwrap()
        .iter()
        .find_map(|e| match e {
            WorkerEvent::Crashed {
                worker: 0, status, ..
            } => Some(*status),
            _ => None,
        })
        .expect("a crash event for worker 0");
    assert_eq!(crash, looppool::ExitStatus::Signal(libc::SIGKILL));
    pool.shutdown().await;
}

#[tokio::test]
async fn a_broker_restart_under_load_loses_nothing() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let url = server.url.clone();
    let (events, hook) = recorder();
    let (pool, mut outputs) = pool(&url, "restart")
        .local_workers(2)
        .configure(move |b| b.on_event(hook))
        .start()
        .await
        .unwrap();
    let n = 3000u64;
    let producer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for i in 0..n {
                pool.submit(Job::Sleep { ms: 1, value: i }).await.unwrap();
            }
        })
    };
    // The broker goes away mid-stream for longer than the liveness
    // silence (1 s), which must not count while nobody can hear.
    let mut server = Some(server);
    let mut restarter = None;
    let (values, lost) = settle(&mut outputs, n as usize, |ended| {
        if ended == 500 {
            let mut s = server.take().unwrap();
            restarter = Some(std::thread::spawn(move || {
                s.restart(Duration::from_millis(1500));
                s
            }));
        }
    })
    .await;
    producer.await.unwrap();
    let _server = restarter.expect("restarted").join().unwrap();
    assert!(lost.is_empty(), "{lost:?}");
    assert_eq!(values.len() as u64, n, "every task completed");
    assert!(values.values().all(|&c| c == 1));
    assert!(
        !events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, WorkerEvent::Crashed { .. })),
        "no worker was declared lost: {:?}",
        events.lock().unwrap()
    );
    let report = pool.shutdown().await;
    assert!(report.drained, "{report:?}");
}

#[tokio::test]
async fn a_silent_remote_worker_is_declared_lost_and_leaves_when_it_wakes() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let mut remote = remote_worker(WORKER, &server.url, "silent", "probe", Some(1));
    let (events, hook) = recorder();
    let (pool, mut outputs) = pool(&server.url, "silent")
        .local_workers(1)
        .remote_workers(1)
        .configure(move |b| b.on_event(hook))
        .start()
        .await
        .unwrap();
    let pid = remote.id();
    for i in 0..200 {
        pool.submit(Job::Sleep { ms: 10, value: i }).await.unwrap();
    }
    // Frozen, not dead: its connection stays open, only its heartbeats stop.
    sys::signal(pid, libc::SIGSTOP);
    let (values, lost) = settle(&mut outputs, 200, |_| {}).await;
    assert!(lost.is_empty(), "{lost:?}");
    assert_eq!(values.len(), 200);
    assert!(values.values().all(|&c| c == 1), "each task ended once");
    let declared = events.lock().unwrap().iter().find_map(|e| match e {
        WorkerEvent::Crashed {
            worker: 1, status, ..
        } => Some(*status),
        _ => None,
    });
    assert_eq!(declared, Some(looppool::ExitStatus::Unknown));
    // Woken up, it finds itself replaced and exits without taking tasks.
    sys::signal(pid, libc::SIGCONT);
    let woke = std::time::Instant::now();
    let status = loop {
        if let Some(s) = remote.try_wait().unwrap() {
            break s;
        }
        assert!(woke.elapsed() < Duration::from_secs(10), "the zombie stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "{status:?}");
    // Nothing more arrives from it.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), outputs.next())
            .await
            .is_err(),
        "no output after every task ended"
    );
    pool.shutdown().await;
}
