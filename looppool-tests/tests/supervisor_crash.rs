//! Supervision: crashes are noticed, every task's fate is reported, workers
//! are replaced, and restarts are limited.

use std::collections::HashMap;
use std::time::Duration;

use looppool::{CallError, ExitStatus, LossCause, Output, RestartPolicy, WorkerEvent};
use looppool_tests::{eventually, probe_pool, process_gone, recorder, sys, Job, ProbeInit};

#[tokio::test]
async fn an_aborting_worker_fails_its_call_and_is_replaced() {
    let (events, hook) = recorder();
    let (pool, _outputs) = probe_pool!()
        .workers(2)
        .on_event(hook)
        .start()
        .await
        .unwrap();
    let old_pid = pool.pids()[1].unwrap();
    let err = pool.call_to(1, Job::Abort).await.unwrap_err();
    let CallError::WorkerLost(lost) = err else {
        panic!("{err:?}")
    };
    assert_eq!(lost.worker, 1);
    assert_eq!(lost.pid, old_pid);
    assert_eq!(lost.status, ExitStatus::Signal(libc::SIGABRT));
    assert_eq!(lost.cause, LossCause::Crashed);
    assert!(lost.to_string().contains("SIGABRT"), "{lost}");
    // The replacement serves under the same index, with a new pid.
    assert_eq!(pool.call_to(1, Job::WhoAmI).await.unwrap(), 1);
    let new_pid = pool.pids()[1].unwrap();
    assert_ne!(new_pid, old_pid);
    assert!(process_gone(old_pid));
    let events = events.lock().unwrap().clone();
    assert!(events.iter().any(|e| matches!(e, WorkerEvent::Crashed { worker: 1, pid, status: ExitStatus::Signal(_), lost_tasks: 1, .. } if *pid == old_pid)), "{events:?}");
    assert!(
        events.iter().any(|e| matches!(
            e,
            WorkerEvent::Restarting {
                worker: 1,
                attempt: 1,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, WorkerEvent::Started { worker: 1, pid } if *pid == new_pid)),
        "{events:?}"
    );
    pool.shutdown().await;
}

#[tokio::test]
async fn process_exit_reports_the_exit_code_and_loses_only_that_workers_tasks() {
    let (pool, mut outputs) = probe_pool!().workers(2).start().await.unwrap();
    // Worker 0 gets slow tasks, then an exit; worker 1 gets slow tasks only.
    let mut on_zero = Vec::new();
    for i in 0..5 {
        on_zero.push(
            pool.submit_to(
                0,
                Job::Sleep {
                    ms: 5_000,
                    value: i,
                },
            )
            .await
            .unwrap(),
        );
    }
    let mut on_one = Vec::new();
    for i in 0..5 {
        on_one.push(
            pool.submit_to(
                1,
                Job::Sleep {
                    ms: 200,
                    value: 100 + i,
                },
            )
            .await
            .unwrap(),
        );
    }
    let exit = pool.submit_to(0, Job::Exit(7)).await.unwrap();
    on_zero.push(exit);
    let mut lost = Vec::new();
    let mut values = Vec::new();
    while lost.len() + values.len() < 11 {
        match tokio::time::timeout(Duration::from_secs(20), outputs.next())
            .await
            .unwrap()
            .unwrap()
        {
            Output::Lost { task, lost: why } => {
                assert_eq!(why.status, ExitStatus::Code(7));
                assert_eq!(why.worker, 0);
                lost.push(task);
            }
            Output::Value { value, .. } => values.push(value),
            other => panic!("{other:?}"),
        }
    }
    lost.sort();
    assert_eq!(lost, on_zero, "exactly worker 0's tasks are lost, in order");
    values.sort();
    assert_eq!(
        values,
        (100..105).collect::<Vec<_>>(),
        "worker 1's tasks are unaffected"
    );
    assert_eq!(pool.call_to(0, Job::Double(4)).await.unwrap(), 8);
    pool.shutdown().await;
}

#[tokio::test]
async fn kill_9_during_a_stream_accounts_for_every_task() {
    let (pool, mut outputs) = probe_pool!()
        .workers(3)
        .restart_policy(RestartPolicy::intensity(100, Duration::from_secs(10)))
        .start()
        .await
        .unwrap();
    let submitted = 3_000u64;
    let producer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..submitted {
                ids.push(pool.submit(Job::Sleep { ms: 1, value: i }).await.unwrap());
            }
            ids
        })
    };
    let callers: Vec<_> = (0..4)
        .map(|c| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let (mut ok, mut lost) = (0, 0);
                for i in 0..200u64 {
                    match pool
                        .call(Job::Sleep {
                            ms: 1,
                            value: c * 1000 + i,
                        })
                        .await
                    {
                        Ok(v) => {
                            assert_eq!(v, c * 1000 + i);
                            ok += 1;
                        }
                        Err(CallError::WorkerLost(_)) => lost += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                (ok, lost)
            })
        })
        .collect();
    let killer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for round in 0..6 {
                tokio::time::sleep(Duration::from_millis(40)).await;
                if let Some(pid) = pool.pids()[round % 3] {
                    sys::signal(pid, libc::SIGKILL);
                }
            }
        })
    };
    let mut fate: HashMap<looppool::TaskId, &str> = HashMap::new();
    let mut items = 0;
    while items < submitted {
        let item = tokio::time::timeout(Duration::from_secs(30), outputs.next())
            .await
            .expect("no hang")
            .unwrap();
        let (task, what) = match &item {
            Output::Value { task, .. } => (task.unwrap(), "value"),
            Output::Failed(e) => (e.task, "failed"),
            Output::Lost { task, .. } => (*task, "lost"),
            other => panic!("{other:?}"),
        };
        assert!(
            fate.insert(task, what).is_none(),
            "task {task} reported twice"
        );
        items += 1;
    }
    killer.await.unwrap();
    let ids = producer.await.unwrap();
    let (mut ok, mut lost_calls) = (0, 0);
    for c in callers {
        let (o, l) = c.await.unwrap();
        ok += o;
        lost_calls += l;
    }
    assert_eq!(ok + lost_calls, 800, "every call resolved");
    for id in &ids {
        assert!(fate.contains_key(id), "task {id} never reported");
    }
    let lost = fate.values().filter(|w| **w == "lost").count();
    assert!(lost + lost_calls > 0, "the kills must have cost something");
    // The pool is whole and serving again.
    assert!(
        eventually(Duration::from_secs(10), || pool
            .pids()
            .iter()
            .all(Option::is_some))
        .await
    );
    for w in 0..3 {
        assert_eq!(pool.call_to(w, Job::WhoAmI).await.unwrap(), w as u64);
    }
    pool.shutdown().await;
}

#[tokio::test]
async fn restart_intensity_exceeded_fails_the_pool_clearly() {
    let (events, hook) = recorder();
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .on_event(hook)
        .restart_policy(
            RestartPolicy::intensity(3, Duration::from_secs(60))
                .with_backoff(Duration::ZERO, Duration::ZERO),
        )
        .start()
        .await
        .unwrap();
    for _ in 0..4 {
        let err = pool.call_to(0, Job::Exit(1)).await.unwrap_err();
        assert!(err.is_worker_lost(), "{err:?}");
    }
    assert!(eventually(Duration::from_secs(5), || pool.failure().is_some()).await);
    let reason = pool.failure().unwrap();
    assert!(
        reason.contains("more than 3 worker restarts within 60s"),
        "{reason}"
    );
    let err = pool.submit(Job::Nothing).await.unwrap_err();
    assert!(err.is_closed());
    assert!(
        tokio::time::timeout(Duration::from_secs(5), outputs.next())
            .await
            .unwrap()
            .is_none(),
        "the stream ends"
    );
    let events = events.lock().unwrap().clone();
    assert!(
        matches!(events.last(), Some(WorkerEvent::PoolFailed { .. })),
        "{events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, WorkerEvent::Restarting { .. }))
            .count(),
        3
    );
}

#[tokio::test]
async fn a_failing_initialiser_on_restart_is_a_start_failure_not_a_loop() {
    let marker = std::env::temp_dir().join(format!("looppool-failinit-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let (events, hook) = recorder();
    let init = ProbeInit {
        fail_if_exists: Some(marker.clone()),
        ..Default::default()
    };
    let (pool, _outputs) = probe_pool!()
        .workers(2)
        .init(init)
        .on_event(hook)
        .restart_policy(
            RestartPolicy::intensity(3, Duration::from_secs(60))
                .with_backoff(Duration::from_millis(1), Duration::from_millis(5)),
        )
        .start()
        .await
        .unwrap();
    std::fs::write(&marker, b"x").unwrap();
    let err = pool.call_to(0, Job::Exit(9)).await.unwrap_err();
    assert!(err.is_worker_lost());
    assert!(
        eventually(Duration::from_secs(10), || pool.failure().is_some()).await,
        "the pool gives up"
    );
    let events = events.lock().unwrap().clone();
    let start_failures: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::StartFailed { worker: 0, error } => Some(error.clone()),
            _ => None,
        })
        .collect();
    assert!(!start_failures.is_empty(), "{events:?}");
    assert!(
        start_failures[0].contains("initialiser failed"),
        "{start_failures:?}"
    );
    let _ = std::fs::remove_file(&marker);
}

#[tokio::test]
async fn dropping_the_pool_kills_and_reaps_its_workers() {
    let (pool, mut outputs) = probe_pool!().workers(3).start().await.unwrap();
    let id = pool.submit_to(2, Job::hold(1)).await.unwrap();
    let pids: Vec<u32> = pool.pids().into_iter().flatten().collect();
    assert_eq!(pids.len(), 3);
    drop(pool);
    for pid in &pids {
        // Reaped at once: not even a zombie is left.
        assert_eq!(
            looppool_tests::process_state(*pid),
            None,
            "worker {pid} still exists"
        );
    }
    let item = tokio::time::timeout(Duration::from_secs(5), outputs.next())
        .await
        .unwrap()
        .unwrap();
    let Output::Lost { task, lost } = item else {
        panic!("{item:?}")
    };
    assert_eq!(task, id);
    assert_eq!(lost.cause, LossCause::PoolKilled);
}

#[tokio::test]
async fn workers_ignore_sigint_and_sigterm_by_default() {
    let (pool, _outputs) = probe_pool!().workers(1).start().await.unwrap();
    let pid = pool.pids()[0].unwrap();
    sys::signal(pid, libc::SIGINT);
    sys::signal(pid, libc::SIGTERM);
    assert_eq!(pool.call(Job::Double(2)).await.unwrap(), 4);
    assert_eq!(pool.pids()[0], Some(pid), "the same process still serves");
    pool.shutdown().await;

    let (pool, _outputs) = probe_pool!()
        .workers(1)
        .signals(looppool::Signals::Terminate)
        .start()
        .await
        .unwrap();
    let pid = pool.pids()[0].unwrap();
    let busy = pool.clone();
    let call = tokio::spawn(async move {
        busy.call(Job::Sleep {
            ms: 10_000,
            value: 0,
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    sys::signal(pid, libc::SIGTERM);
    let err = call.await.unwrap().unwrap_err();
    let CallError::WorkerLost(lost) = err else {
        panic!("{err:?}")
    };
    assert_eq!(lost.status, ExitStatus::Signal(libc::SIGTERM));
    pool.shutdown().await;
}

#[tokio::test]
async fn worker_process_titles_name_pool_and_index() {
    let (pool, _outputs) = probe_pool!()
        .workers(2)
        .name("titled")
        .start()
        .await
        .unwrap();
    for (index, pid) in pool.pids().into_iter().enumerate() {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.unwrap())).unwrap();
        let argv0 =
            String::from_utf8_lossy(cmdline.split(|&b| b == 0).next().unwrap()).into_owned();
        assert_eq!(argv0, format!("test-worker: titled worker {index}"));
    }
    pool.shutdown().await;
}
