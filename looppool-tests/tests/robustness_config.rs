//! Mistakes that stop a pool from starting fail fast, with a message that
//! says what to change: a worker program built from other sources, one that
//! is not a looppool worker at all (wrong magic, wrong protocol version,
//! garbage, silence, an early exit), one that does not exist or cannot run,
//! and settings that contradict each other.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use looppool::{Pool, RestartPolicy, StartError, WorkerEvent};
use looppool_tests::{eventually, probe_pool, recorder, Blob, Job, Probe};

/// A scratch directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("looppool-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The handshake failure of a pool of probes run by `program args`.
async fn handshake_failure(program: &str, args: &[&str]) -> String {
    let err = Pool::<Probe>::builder()
        .init_default()
        .program(program)
        .args(args)
        .workers(2)
        .start_timeout(Duration::from_millis(500))
        .start()
        .await
        .unwrap_err();
    let StartError::Handshake { worker, reason } = &err else {
        panic!("expected a handshake failure, got {err:?}")
    };
    assert!(*worker < 2);
    assert_eq!(err.worker(), Some(*worker));
    assert!(err.to_string().contains(reason.as_str()));
    reason.clone()
}

fn assert_says(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{text:?} does not say {part:?}");
    }
}

#[tokio::test]
async fn a_worker_built_from_other_sources_is_refused_at_the_handshake() {
    let program = env!("CARGO_BIN_EXE_probe-v2");
    let reason = handshake_failure(program, &[]).await;
    assert_says(
        &reason,
        &[
            "worker \"probe\"",
            program,
            "different message types",
            "fingerprint",
            "rebuild the worker program from the same sources",
        ],
    );
}

/// A deploy that swaps the worker binary under a running pool: the
/// replacement of a dead worker is refused at the handshake (a start
/// failure, not a crash loop of mismatched messages), and the pool
/// recovers when the right binary is back.
#[tokio::test]
async fn a_binary_swapped_under_a_running_pool_is_refused_on_restart() {
    let dir = scratch("swap");
    let link = dir.join("worker");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_test-worker"), &link).unwrap();
    let (events, hook) = recorder();
    let (pool, _outputs) = Pool::<Probe>::builder()
        .init_default()
        .program(&link)
        .workers(1)
        .on_event(hook)
        .restart_policy(
            RestartPolicy::intensity(50, Duration::from_secs(60))
                .with_backoff(Duration::from_millis(50), Duration::from_millis(200)),
        )
        .start()
        .await
        .unwrap();
    assert_eq!(pool.call(Job::Double(2)).await.unwrap(), 4);

    let swap = |target: &str| {
        let tmp = dir.join("worker.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
    };
    swap(env!("CARGO_BIN_EXE_probe-v2"));
    pool.kill_worker(0);
    let refused = |events: &[WorkerEvent]| {
        events.iter().any(|e| {
            matches!(e, WorkerEvent::StartFailed { worker: 0, error }
                if error.contains("fingerprint") && error.contains("rebuild"))
        })
    };
    assert!(
        eventually(Duration::from_secs(20), || refused(&events.lock().unwrap())).await,
        "{:#?}",
        events.lock().unwrap()
    );
    assert!(pool.failure().is_none(), "the policy still allows restarts");

    swap(env!("CARGO_BIN_EXE_test-worker"));
    assert_eq!(pool.call(Job::Double(5)).await.unwrap(), 10);
    pool.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_hello_without_the_magic_is_not_a_looppool_worker() {
    let program = env!("CARGO_BIN_EXE_bad-handshake");
    let reason = handshake_failure(program, &["wrong-magic"]).await;
    assert_says(
        &reason,
        &[
            program,
            "is not a looppool worker",
            "magic",
            "looppool::worker_main!(Probe)",
        ],
    );
}

#[tokio::test]
async fn a_hello_for_another_protocol_version_is_refused() {
    let reason = handshake_failure(env!("CARGO_BIN_EXE_bad-handshake"), &["wrong-version"]).await;
    assert_says(
        &reason,
        &[
            "protocol version 99",
            "this pool speaks",
            "build both from the same looppool version",
        ],
    );
}

#[tokio::test]
async fn a_program_writing_text_to_its_descriptor_3_is_not_a_looppool_worker() {
    let reason = handshake_failure(env!("CARGO_BIN_EXE_bad-handshake"), &["garbage"]).await;
    // "usag" read as a length announces a frame far above the hello limit.
    assert_says(
        &reason,
        &[
            "is not a looppool worker",
            "exceeds the limit of 65536 bytes",
            "worker_main!",
        ],
    );
}

#[tokio::test]
async fn a_silent_program_times_out_with_a_hint() {
    let started = std::time::Instant::now();
    let reason = handshake_failure(env!("CARGO_BIN_EXE_bad-handshake"), &["silent"]).await;
    assert!(started.elapsed() < Duration::from_secs(10), "fails fast");
    assert_says(
        &reason,
        &[
            "sent no hello within 500ms",
            "looppool::worker_main!(Probe)",
            "start_timeout",
        ],
    );
}

#[tokio::test]
async fn a_program_that_exits_at_once_is_not_a_looppool_worker() {
    let reason = handshake_failure(env!("CARGO_BIN_EXE_bad-handshake"), &["exit"]).await;
    assert_says(
        &reason,
        &[
            "exited before the handshake (exit code 0)",
            "instead of becoming worker \"probe\"",
            "looppool::worker_main!(Probe)",
        ],
    );
}

#[tokio::test]
async fn a_program_that_does_not_know_the_worker_says_so() {
    let err = Pool::<Blob>::builder()
        .init_default()
        .program(env!("CARGO_BIN_EXE_probe-v2"))
        .workers(1)
        .start()
        .await
        .unwrap_err();
    let StartError::Handshake { reason, .. } = &err else {
        panic!("{err:?}")
    };
    assert_says(
        reason,
        &[
            "does not know a worker named \"blob\"",
            "list Blob in looppool::worker_main!",
        ],
    );
}

#[tokio::test]
async fn a_missing_or_unrunnable_program_fails_before_anything_starts() {
    let dir = scratch("programs");
    let missing = dir.join("no-such-worker");
    for program in [missing.clone(), dir.clone()] {
        let err = probe_pool!().program(&program).start().await.unwrap_err();
        let StartError::Config(e) = &err else {
            panic!("{err:?}")
        };
        assert_says(
            &e.to_string(),
            &[
                &program.display().to_string(),
                "does not exist or is not a file",
                "looppool::worker_main!(Probe)",
            ],
        );
    }

    let not_executable = dir.join("data.txt");
    std::fs::write(&not_executable, b"not a program").unwrap();
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = probe_pool!()
        .program(&not_executable)
        .workers(1)
        .start()
        .await
        .unwrap_err();
    let StartError::Spawn {
        worker,
        program,
        source,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(*worker, 0);
    assert_eq!(program, &not_executable.display().to_string());
    assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains(program.as_str()), "{err}");
    // The OS error is the source, and a report prints it once.
    assert_eq!(
        looppool_tests::report(&err),
        format!("cannot start worker 0 with {program}: {source}")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn contradictory_settings_fail_fast_and_say_what_to_change() {
    type Builder = looppool::PoolBuilder<Probe>;
    let cases: Vec<(&str, Builder, &[&str])> = vec![
        (
            "no workers",
            probe_pool!().workers(0),
            &["workers(0)", "at least one worker"],
        ),
        (
            "too many workers",
            probe_pool!().workers(5000),
            &["workers(5000)", "use at most 4096"],
        ),
        (
            "fewer task slots than workers",
            probe_pool!().workers(4).max_tasks(3),
            &["max_tasks(3)", "raise max_tasks or lower workers"],
        ),
        (
            "fewer result slots than workers",
            probe_pool!().workers(4).max_results(2),
            &["max_results(2)", "raise max_results or lower workers"],
        ),
        (
            "too many task slots per worker",
            probe_pool!().workers(1).max_tasks(1 << 25),
            &["max_tasks(33554432)", "lower max_tasks or raise workers"],
        ),
        (
            "a tiny frame limit",
            probe_pool!().max_frame(100),
            &["max_frame(100)", "use at least 1024"],
        ),
        (
            "a frame limit beyond the length prefix",
            probe_pool!().max_frame(u32::MAX as usize + 1),
            &["max_frame(4294967296)", "use at most 4294967295"],
        ),
        (
            "a heartbeat timeout shorter than its interval",
            probe_pool!().heartbeat(Duration::from_secs(1), Duration::from_millis(10)),
            &["heartbeat(1s, 10ms)", "timeout of at least one interval"],
        ),
        (
            "no start time",
            probe_pool!().start_timeout(Duration::ZERO),
            &["start_timeout(0)", "use a positive duration"],
        ),
        (
            "no task time",
            probe_pool!().task_timeout(Duration::ZERO),
            &["task_timeout(0)", "use a positive duration"],
        ),
        (
            "more retries than an id can tell apart",
            probe_pool!().retry_lost(70_000),
            &["retry_lost(70000)", "use at most 65535"],
        ),
        (
            "recycling before any task",
            probe_pool!().recycle_after_tasks(0),
            &["recycle_after_tasks(0)", "use at least 1"],
        ),
        (
            "fewer maximum workers than workers",
            probe_pool!().workers(3).max_workers(2),
            &["max_workers(2)", "raise max_workers"],
        ),
        (
            "an empty name",
            probe_pool!().name(""),
            &["name", "non-empty"],
        ),
    ];
    for (what, builder, parts) in cases {
        let started = std::time::Instant::now();
        let err = builder.start().await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: not fast"
        );
        let StartError::Config(e) = &err else {
            panic!("{what}: expected a configuration error, got {err:?}")
        };
        assert_eq!(err.worker(), None);
        // A report states the failure, then its cause, once.
        let text = looppool_tests::report(&err);
        assert_eq!(text, format!("invalid pool configuration: {e}"));
        for part in parts {
            assert!(
                text.contains(part),
                "{what}: {text:?} does not say {part:?}"
            );
        }
    }
}

/// Not a mistake: an initialiser may emit (its `InitContext::emitter` is
/// for that). Those outputs must not reach the parent before the ready
/// message, which would fail the handshake ("unexpected message during
/// the handshake"); they arrive once the worker is up.
#[tokio::test]
async fn an_initialiser_that_emits_starts_and_its_outputs_arrive() {
    let (pool, mut outputs) = looppool_tests::blob_pool!()
        .workers(2)
        .init(3)
        .start()
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..6 {
        match looppool_tests::next_output(&mut outputs).await {
            looppool::Output::Value {
                worker,
                task: None,
                value,
            } => seen.push((worker, value.into_vec())),
            other => panic!("{other:?}"),
        }
    }
    seen.sort();
    let want: Vec<(usize, Vec<u8>)> = (0..2)
        .flat_map(|w| (0..3u8).map(move |i| (w, vec![i])))
        .collect();
    assert_eq!(seen, want);
    let echo = looppool_tests::BlobJob::Echo(vec![9u8; 3].into());
    for w in 0..2 {
        assert_eq!(
            pool.call_to(w, echo.clone()).await.unwrap().into_vec(),
            vec![9; 3]
        );
    }
    pool.shutdown().await;
}
