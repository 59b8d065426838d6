//! Chaos with a ledger: 200,000 tasks through `submit` and `call` while
//! workers are killed (SIGKILL) and stopped (SIGSTOP) at random every ~50 ms.
//! Every task has exactly one fate, no output reaches another task, nothing
//! hangs, and the pool ends at full size.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use looppool::{CallError, LossCause, Output, RestartPolicy, TaskId};
use looppool_tests::{assert_whole, probe_pool, sys, Job, Rng};

const WORKERS: usize = 4;
const SUBMITS: u64 = 190_000;
const CALLS: u64 = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_has_one_fate_and_its_own_outputs_under_kills_and_stops() {
    let (pool, mut outputs) = probe_pool!()
        .workers(WORKERS)
        .max_tasks(WORKERS * 256)
        // A stopped worker is found within a second.
        .heartbeat(Duration::from_millis(100), Duration::from_secs(1))
        .restart_policy(
            RestartPolicy::intensity(u32::MAX, Duration::from_secs(1))
                .with_backoff(Duration::from_millis(1), Duration::from_millis(10)),
        )
        .start()
        .await
        .unwrap();

    // The ledger: which input each submitted task carried.
    let producer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut ledger = HashMap::with_capacity(SUBMITS as usize);
            for i in 0..SUBMITS {
                let id = pool.submit(Job::Double(i)).await.unwrap();
                assert!(ledger.insert(id, i).is_none(), "id {id} given twice");
            }
            ledger
        })
    };
    let caller = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let (mut ok, mut lost) = (0u64, 0u64);
            for i in 0..CALLS {
                let x = 1_000_000 + i;
                match pool.call(Job::Double(x)).await {
                    Ok(v) => {
                        assert_eq!(v, 2 * x, "call {i} got another task's reply");
                        ok += 1;
                    }
                    Err(CallError::WorkerLost(_)) => lost += 1,
                    Err(e) => panic!("call {i}: {e}"),
                }
            }
            (ok, lost)
        })
    };
    let chaos = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
            let (mut kills, mut stops) = (0u32, 0u32);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(30 + rng.next() % 40)).await;
                let victim = (rng.next() % WORKERS as u64) as usize;
                let Some(pid) = pool.pids()[victim] else {
                    continue;
                };
                if rng.next().is_multiple_of(2) {
                    pool.kill_worker(victim);
                    kills += 1;
                } else {
                    sys::signal(pid, libc::SIGSTOP);
                    stops += 1;
                }
            }
            (kills, stops)
        })
    };

    // Every item, as it came: checked against the ledger once it is whole.
    let mut fate: HashMap<TaskId, Output<u64>> = HashMap::with_capacity(SUBMITS as usize);
    while fate.len() < SUBMITS as usize {
        let item = tokio::time::timeout(Duration::from_secs(60), outputs.next())
            .await
            .unwrap_or_else(|_| panic!("hung with {} of {SUBMITS} fates", fate.len()))
            .expect("the stream goes on");
        let task = match &item {
            Output::Value { task, .. } => task.expect("a task's output"),
            Output::Lost { task, lost } => {
                assert!(
                    matches!(lost.cause, LossCause::Crashed | LossCause::Unresponsive),
                    "{lost}"
                );
                *task
            }
            other => panic!("unexpected {other:?}"),
        };
        if let Some(before) = fate.insert(task, item) {
            panic!(
                "task {task} has two fates: {before:?} and {:?}",
                fate[&task]
            );
        }
    }
    let ledger = producer.await.unwrap();
    let (kills, stops) = chaos.await.unwrap();
    let (ok_calls, lost_calls) = caller.await.unwrap();
    assert_eq!(ok_calls + lost_calls, CALLS, "no call left pending");
    assert_eq!(ledger.len(), SUBMITS as usize);
    let mut lost = 0;
    for (task, item) in &fate {
        let input = *ledger
            .get(task)
            .unwrap_or_else(|| panic!("a fate for {task}, which was never submitted"));
        match item {
            Output::Value { value, .. } => {
                assert_eq!(*value, 2 * input, "task {task} got another task's value")
            }
            _ => lost += 1,
        }
    }
    eprintln!(
        "{kills} kills, {stops} stops: {lost} tasks and {lost_calls} calls lost, {} tasks and \
         {ok_calls} calls completed",
        SUBMITS as usize - lost
    );
    assert!(
        kills + stops > 40,
        "the chaos happened: {kills} kills, {stops} stops"
    );
    // Nothing more arrives: every task was reported exactly once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        outputs.try_next().err(),
        Some(looppool::TryNextError::Empty)
    );
    assert_whole(&pool).await;
    let report = pool.shutdown_timeout(Duration::from_secs(20)).await;
    assert!(report.drained, "{report:?}");
    assert!(outputs.next().await.is_none());
}
