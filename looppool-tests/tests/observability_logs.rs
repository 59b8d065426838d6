//! One log for all processes: workers' tracing events, panics and dropped
//! counts reach the parent's subscriber, and the blocked-loop detector warns
//! there, with real worker processes.

#[path = "support/capture.rs"]
mod capture;

use std::time::Duration;

use capture::{Capture, Captured};
use looppool::CallError;
use looppool_tests::{eventually, probe_pool, Job};
use tracing::level_filters::LevelFilter;
use tracing::{Instrument, Level};

/// Waits until an event matching `pred` was recorded; fails the test after
/// 20 s.
async fn wait_for(capture: &Capture, what: &str, pred: impl Fn(&Captured) -> bool) -> Captured {
    let mut found = None;
    let seen = eventually(Duration::from_secs(20), || {
        found = capture.matching(&pred).into_iter().next();
        found.is_some()
    })
    .await;
    assert!(seen, "no {what} among {:#?}", capture.matching(|_| true));
    found.unwrap()
}

fn from_worker(e: &Captured) -> bool {
    e.target == "looppool::worker"
}

#[tokio::test]
async fn worker_events_reach_the_parent_with_worker_fields() {
    let (capture, _guard) = Capture::install();
    let (pool, _outputs) = probe_pool!()
        .workers(2)
        .worker_log_level(LevelFilter::DEBUG)
        .start()
        .await
        .unwrap();
    let pid = pool.pids()[1].unwrap().to_string();
    // Trace is below the level; info last, as a barrier: events of one
    // worker arrive in order, so once it is here the others would be too.
    let levels = [
        (5, "at trace"),
        (1, "at error"),
        (2, "at warn"),
        (4, "at debug"),
        (3, "at info"),
    ];
    for (level, message) in levels {
        let job = Job::Log {
            level,
            message: message.into(),
        };
        assert!(matches!(
            pool.call_to(1, job).await,
            Err(CallError::NoReply { .. })
        ));
    }
    wait_for(&capture, "info event", |e| {
        from_worker(e) && e.message == "at info"
    })
    .await;

    for (level, message) in [
        (Level::ERROR, "at error"),
        (Level::WARN, "at warn"),
        (Level::DEBUG, "at debug"),
        (Level::INFO, "at info"),
    ] {
        let found = capture.matching(|e| from_worker(e) && e.message == message);
        assert_eq!(found.len(), 1, "{message}: {found:#?}");
        let e = &found[0];
        assert_eq!(e.level, level, "{e:#?}");
        assert_eq!(e.field("pool"), "probe", "{e:#?}");
        assert_eq!(e.field("worker"), "1", "{e:#?}");
        assert_eq!(e.field("pid"), pid, "{e:#?}");
        assert_eq!(e.field("log.target"), "looppool_tests", "{e:#?}");
        assert!(e.field("log.file").ends_with("lib.rs"), "{e:#?}");
        assert!(e.field("log.line").parse::<u32>().is_ok(), "{e:#?}");
        assert_eq!(e.field("fields"), "answer=42", "{e:#?}");
        assert_eq!(e.field("spans"), "probe_task{job=log}", "{e:#?}");
    }
    assert!(
        capture
            .matching(|e| from_worker(e) && e.message == "at trace")
            .is_empty(),
        "a trace event passed a debug filter"
    );
    assert_eq!(pool.stats().logs_dropped, 0);
    pool.shutdown().await;
}

/// The events of `message` from the worker, and the parent's spans each was
/// relayed in; waits (up to 20 s) until there are `n` of them.
async fn scopes_of(capture: &Capture, message: &str, n: usize) -> Vec<String> {
    let mut found = vec![];
    let seen = eventually(Duration::from_secs(20), || {
        found = capture.matching(|e| from_worker(e) && e.message == message);
        found.len() >= n
    })
    .await;
    assert!(seen, "{n} events {message:?} expected, got {found:#?}");
    found.into_iter().map(|e| e.scope).collect()
}

#[tokio::test]
async fn handler_events_carry_the_span_their_task_was_sent_in() {
    let (capture, _guard) = Capture::install();
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .worker_log_level(LevelFilter::INFO)
        .start()
        .await
        .unwrap();
    // Many calls at once, each in a span of its own: every event, from the
    // handler's first poll and from a later one, must land in its task's
    // span and in no other.
    let mut calls = tokio::task::JoinSet::new();
    for k in 0..40u64 {
        let pool = pool.clone();
        let job = Job::LogAround {
            ms: 5 + k % 7,
            message: format!("call {k}"),
        };
        calls.spawn(
            async move { pool.call(job).await.unwrap() }
                .instrument(tracing::info_span!("request", id = k)),
        );
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap();
    }
    // Submitted tasks: the span is current only while `submit` runs.
    for k in 0..20u64 {
        let job = Job::LogAround {
            ms: 1,
            message: format!("submit {k}"),
        };
        pool.submit(job)
            .instrument(tracing::info_span!("batch", n = k))
            .await
            .unwrap();
    }
    let job = Job::LogAround {
        ms: 1,
        message: "outside any span".into(),
    };
    pool.submit(job).await.unwrap();
    for _ in 0..21 {
        outputs.next().await.unwrap();
    }

    for k in 0..40 {
        let scopes = scopes_of(&capture, &format!("call {k}"), 2).await;
        assert_eq!(scopes, vec![format!("request{{id={k}}}"); 2], "call {k}");
    }
    for k in 0..20 {
        let scopes = scopes_of(&capture, &format!("submit {k}"), 2).await;
        assert_eq!(scopes, vec![format!("batch{{n={k}}}"); 2], "submit {k}");
    }
    let scopes = scopes_of(&capture, "outside any span", 2).await;
    assert_eq!(scopes, ["", ""]);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_retried_task_keeps_its_span() {
    let (capture, _guard) = Capture::install();
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .retry_lost(1)
        .worker_log_level(LevelFilter::INFO)
        .start()
        .await
        .unwrap();
    let job = Job::LogAround {
        ms: 1000,
        message: "retried".into(),
    };
    pool.submit(job)
        .instrument(tracing::info_span!("request", id = 7))
        .await
        .unwrap();
    // Its first attempt logged: kill that worker while the task sleeps.
    let first = wait_for(&capture, "first attempt's event", |e| {
        from_worker(e) && e.message == "retried"
    })
    .await;
    let pid: u32 = first.field("pid").parse().unwrap();
    looppool_tests::sys::signal(pid, libc::SIGKILL);
    let out = outputs.next().await.unwrap();
    assert_eq!(out.attempt(), Some(1), "{out:?}");
    let events = capture.matching(|e| from_worker(e) && e.message == "retried");
    // The first attempt's first event, then the second attempt's two, on
    // the other worker.
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_ne!(events[2].field("pid"), pid.to_string(), "{events:#?}");
    for e in &events {
        assert_eq!(e.scope, "request{id=7}", "{e:#?}");
    }
    pool.shutdown().await;
}

#[tokio::test]
async fn log_level_off_forwards_nothing() {
    let (capture, _guard) = Capture::install();
    let (pool, _outputs) = probe_pool!()
        .workers(1)
        .worker_log_level(LevelFilter::OFF)
        .start()
        .await
        .unwrap();
    let job = Job::Log {
        level: 1,
        message: "unheard".into(),
    };
    assert!(pool.call(job).await.is_err());
    // The failure travels behind the log event, had there been one.
    assert!(pool.call(Job::Fail("barrier".into())).await.is_err());
    let e = wait_for(&capture, "task failure", |e| {
        e.message == "task failed" && e.field("message") == "barrier"
    })
    .await;
    // Failed tasks are logged at DEBUG by default: the caller has them.
    assert_eq!(e.level, Level::DEBUG);
    assert!(e.field("task").starts_with("w0#"), "no task in {e:#?}");
    assert!(capture.matching(from_worker).is_empty());
    pool.shutdown().await;
}

#[tokio::test]
async fn panics_reach_the_parent_with_message_and_location() {
    let (capture, _guard) = Capture::install();
    let (pool, _outputs) = probe_pool!()
        .workers(1)
        .failed_task_log_level(Level::WARN)
        .start()
        .await
        .unwrap();
    let pid = pool.pids()[0].unwrap().to_string();

    // A handler's panic: a task failure, logged with message and location,
    // at the level asked for.
    let err = pool.call(Job::Panic("boom in a handler".into())).await;
    assert!(matches!(err, Err(CallError::Task(_))), "{err:?}");
    let e = wait_for(&capture, "task panic", |e| {
        e.message == "task failed" && e.field("message").contains("boom in a handler")
    })
    .await;
    assert_eq!(e.level, Level::WARN);
    assert_eq!(e.field("panicked"), "true");
    assert_eq!(e.field("pid"), pid);
    assert!(
        e.field("message").contains("looppool-tests/src/lib.rs:"),
        "no location in {e:#?}"
    );

    // A panic in background work: forwarded as an error event.
    assert_eq!(
        pool.call(Job::PanicInBackground("boom in the background".into()))
            .await
            .unwrap(),
        0
    );
    let e = wait_for(&capture, "background panic", |e| {
        from_worker(e) && e.message.contains("boom in the background")
    })
    .await;
    assert_eq!(e.level, Level::ERROR);
    assert_eq!(e.field("log.target"), "panic");
    assert_eq!(e.field("worker"), "0");
    assert_eq!(e.field("pid"), pid);
    assert!(e.field("log.file").ends_with("lib.rs"), "{e:#?}");
    assert!(
        e.message.contains("looppool-tests/src/lib.rs:"),
        "no location in {e:#?}"
    );
    // The worker lives on.
    assert_eq!(pool.call(Job::Double(2)).await.unwrap(), 4);
    assert_eq!(pool.pids()[0].unwrap().to_string(), pid);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_log_flood_is_bounded_and_every_drop_counted() {
    let (capture, _guard) = Capture::install();
    let (pool, _outputs) = probe_pool!().workers(1).start().await.unwrap();
    let count = 20_000u64;
    // About 20 MB of events in one poll: far past the worker's 1 MiB bounds.
    let job = Job::LogFlood {
        count: count as u32,
        bytes: 1000,
    };
    assert_eq!(pool.call(job).await.unwrap(), count);

    let flood = |e: &Captured| from_worker(e) && e.message.len() == 1000;
    let dropped_in = |events: &[Captured]| -> u64 {
        events
            .iter()
            .map(|e| e.field("dropped").parse::<u64>().unwrap())
            .sum()
    };
    let warnings = |c: &Capture| c.matching(|e| e.message.starts_with("worker dropped log events"));
    let all_accounted = eventually(Duration::from_secs(30), || {
        capture.matching(flood).len() as u64 + dropped_in(&warnings(&capture)) == count
    })
    .await;
    let received = capture.matching(flood).len() as u64;
    let dropped = dropped_in(&warnings(&capture));
    assert!(
        all_accounted,
        "{received} received + {dropped} dropped != {count}"
    );
    println!("log flood: {received} events received, {dropped} dropped and counted");
    assert!(dropped > 0, "nothing was dropped");
    assert!(received > 0, "nothing got through");
    // The bound: at most about 2 MiB of 1 kB events were kept.
    assert!(received < 2_500, "{received} events kept");
    assert!(warnings(&capture)
        .iter()
        .all(|e| e.level == Level::WARN && e.field("worker") == "0"));
    assert_eq!(pool.stats().logs_dropped, dropped);
    assert_eq!(pool.stats().workers[0].logs_dropped, dropped);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_blocked_loop_is_reported_naming_the_task() {
    let (capture, _guard) = Capture::install();
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .blocked_threshold(Duration::from_millis(250))
        .start()
        .await
        .unwrap();
    let pid = pool.pids()[0].unwrap().to_string();
    // Worker 1 waits without blocking; worker 0 computes without awaiting.
    let sleeper = pool
        .submit_to(1, Job::Sleep { ms: 1200, value: 1 })
        .await
        .unwrap();
    let short = pool
        .submit_to(0, Job::Spin { ms: 20, value: 2 })
        .await
        .unwrap();
    let spinner = pool
        .submit_to(0, Job::Spin { ms: 1200, value: 3 })
        .await
        .unwrap();
    for _ in 0..3 {
        let item = looppool_tests::next_output(&mut outputs).await;
        assert!(item.value().is_some(), "{item:?}");
    }

    let e = wait_for(&capture, "blocked-loop warning", |e| {
        e.message == "worker event loop blocked"
    })
    .await;
    assert_eq!(e.level, Level::WARN);
    assert_eq!(e.field("worker"), "0", "{e:#?}");
    assert_eq!(e.field("pid"), pid, "{e:#?}");
    assert_eq!(e.field("threshold_ms"), "250");
    let blocked_ms: u64 = e.field("blocked_ms").parse().unwrap();
    println!("blocked loop: {e:?}");
    assert!((1_000..10_000).contains(&blocked_ms), "{e:#?}");
    assert_eq!(e.field("tasks"), spinner.to_string(), "{e:#?}");
    assert!(!e.field("tasks").contains(&short.to_string()));
    assert!(!e.field("tasks").contains(&sleeper.to_string()));

    let stats = pool.stats();
    assert_eq!(stats.workers[0].blocked, 1, "{stats:#?}");
    assert_eq!(stats.workers[1].blocked, 0, "{stats:#?}");
    assert_eq!(stats.blocked, 1);
    assert_eq!(
        capture
            .matching(|e| e.message == "worker event loop blocked")
            .len(),
        1
    );
    pool.shutdown().await;
}
