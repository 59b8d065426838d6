//! A worker that breaks the protocol after a correct handshake: garbage,
//! oversize and empty frames, unknown kinds, cut fields, trailing bytes,
//! outputs that do not decode as the pool's output type, messages for slots
//! that hold no task, handshake messages out of place, and frames cut short
//! by the worker's death. Each time the parent logs the worker by index,
//! closes its connection, kills and replaces it, reports its tasks lost with
//! `LossCause::Protocol`, and leaves the other workers alone; the pool then
//! serves on every worker. Outputs that arrived complete before the bad
//! bytes are delivered, not reported lost.
//!
//! The bad bytes are written by the real test worker (`Job::WriteRaw`)
//! straight to its connection, so they travel a real socket.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use looppool::{CallError, LossCause, Output, WorkerEvent, WorkerLost};
use looppool_tests::{next_output, probe_pool, process_gone, recorder, Job, Probe};

/// Frame limit of the pools here: small, so that oversize is cheap to say.
const MAX_FRAME: usize = 64 * 1024;

// Message kinds on the wire (worker → parent, and one parent → worker).
const TASK: u8 = 0x02;
const HELLO: u8 = 0x81;
const READY: u8 = 0x82;
const OUTPUT: u8 = 0x84;
const DONE: u8 = 0x85;
const OUTPUT_DONE: u8 = 0x86;
const BYE: u8 = 0x88;

/// A frame: the body's length (4 bytes, little-endian), then the body.
fn frame(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut f = ((rest.len() + 1) as u32).to_le_bytes().to_vec();
    f.push(kind);
    f.extend_from_slice(rest);
    f
}

/// Everything the parent logs on this test's thread, as text.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn install() -> (Log, tracing::subscriber::DefaultGuard) {
        let log = Log::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Worker 0 holds three running tasks, then runs `job`, which makes it
/// break the protocol; worker 1 runs a short task meanwhile. Checks what
/// the module's doc promises and returns how the call was lost.
async fn misbehave(job: Job, expect: &str) -> WorkerLost {
    misbehave_in(probe_pool!(), job, expect).await.0
}

/// [`misbehave`] in a pool built from `builder`; also returns how long the
/// call took to be reported lost.
async fn misbehave_in(
    builder: looppool::PoolBuilder<Probe>,
    job: Job,
    expect: &str,
) -> (WorkerLost, Duration) {
    let (log, _guard) = Log::install();
    let (events, hook) = recorder();
    let (pool, mut outputs) = builder
        .workers(2)
        .max_frame(MAX_FRAME)
        .on_event(hook)
        .start()
        .await
        .unwrap();
    let old_pid = pool.pids()[0].unwrap();
    let mut held = Vec::new();
    for i in 0..3 {
        let sleep = Job::hold(i);
        held.push(pool.submit_to(0, sleep).await.unwrap());
    }
    let spared = pool
        .submit_to(1, Job::Sleep { ms: 200, value: 7 })
        .await
        .unwrap();

    // The call that misbehaves is lost, with the reason.
    let called = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(20), pool.call_to(0, job))
        .await
        .expect("the call ends")
        .unwrap_err();
    let took = called.elapsed();
    let CallError::WorkerLost(lost) = err else {
        panic!("expected a lost worker, got {err:?}")
    };
    assert_eq!((lost.worker, lost.pid), (0, old_pid));
    let LossCause::Protocol(why) = &lost.cause else {
        panic!("expected a protocol loss, got {lost}")
    };
    assert!(why.contains(expect), "{why:?} does not say {expect:?}");
    let text = lost.to_string();
    assert!(
        text.contains("worker 0") && text.contains("protocol violation") && text.contains(expect),
        "{text}"
    );
    // It did not crash: the pool killed it, and says so.
    assert!(!text.contains("crash"), "{text}");
    assert!(text.contains("the pool killed it"), "{text}");

    // The worker's submitted tasks are lost alike, in order; worker 1's
    // task is not affected.
    let mut lost_tasks = Vec::new();
    let mut value = None;
    while lost_tasks.len() < 3 || value.is_none() {
        match next_output(&mut outputs).await {
            Output::Lost { task, lost: l } => {
                assert_eq!(l.cause, lost.cause);
                assert_eq!((l.worker, l.pid), (0, old_pid));
                lost_tasks.push(task);
            }
            Output::Value { task, value: v, .. } => {
                assert_eq!(task, Some(spared));
                value = Some(v);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(lost_tasks, held);
    assert_eq!(value, Some(7));

    // Replaced: the old process is gone (reaped), every worker serves.
    for w in 0..2 {
        assert_eq!(pool.call_to(w, Job::WhoAmI).await.unwrap(), w as u64);
    }
    let new_pid = pool.pids()[0].unwrap();
    assert_ne!(new_pid, old_pid);
    assert!(process_gone(old_pid));
    assert_eq!(pool.in_flight(), vec![0, 0]);

    // Reported as an event ...
    let events = events.lock().unwrap().clone();
    assert!(
        events.iter().any(|e| matches!(e,
            WorkerEvent::Crashed { worker: 0, pid, cause: LossCause::Protocol(w), lost_tasks: 4, .. }
                if *pid == old_pid && w.contains(expect))),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, WorkerEvent::Started { worker: 0, pid } if *pid == new_pid)),
        "{events:#?}"
    );
    // ... and logged, naming the worker: as killed by the pool, not died.
    let lines = log.lines();
    assert!(
        lines.iter().any(|l| l.contains("ERROR")
            && l.contains("worker killed by the pool")
            && l.contains("worker=0")
            && l.contains(expect)),
        "no log line says the pool killed worker 0: {lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("worker died")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("ERROR")
            && l.contains("misbehaving worker")
            && l.contains("worker=0")
            && l.contains(&format!("pid={old_pid}"))
            && l.contains(expect)),
        "no log line names worker 0 and {expect:?}: {lines:#?}"
    );
    pool.shutdown().await;
    (lost, took)
}

#[tokio::test]
async fn garbage_bytes_are_a_protocol_loss() {
    // "not " read as a length prefix announces a 544 MB frame.
    misbehave(
        Job::WriteRaw(b"not a looppool frame at all".to_vec()),
        "exceeds the limit of 65536 bytes",
    )
    .await;
}

#[tokio::test]
async fn an_oversize_frame_is_refused_before_its_body_arrives() {
    let header = (MAX_FRAME as u32 + 1).to_le_bytes().to_vec();
    misbehave(
        Job::WriteRaw(header),
        "frame of 65537 bytes exceeds the limit of 65536 bytes",
    )
    .await;
}

#[tokio::test]
async fn an_empty_frame_is_a_protocol_loss() {
    misbehave(Job::WriteRaw(vec![0, 0, 0, 0]), "empty frame").await;
}

#[tokio::test]
async fn an_unknown_message_kind_is_a_protocol_loss() {
    misbehave(
        Job::WriteRaw(frame(0x7e, &[1, 2, 3])),
        "unknown message kind 0x7e",
    )
    .await;
}

#[tokio::test]
async fn a_parent_message_from_a_worker_is_a_protocol_loss() {
    misbehave(
        Job::WriteRaw(frame(TASK, &[0, 1])),
        "unknown message kind 0x02",
    )
    .await;
}

#[tokio::test]
async fn a_field_cut_inside_its_frame_is_a_protocol_loss() {
    // A completion whose slot varint promises a second byte.
    misbehave(Job::WriteRaw(frame(DONE, &[0x80])), "frame truncated").await;
}

#[tokio::test]
async fn trailing_bytes_are_a_protocol_loss() {
    misbehave(
        Job::WriteRaw(frame(BYE, &[1, 2, 3])),
        "3 unexpected trailing bytes",
    )
    .await;
}

#[tokio::test]
async fn an_output_that_is_not_a_valid_encoding_is_a_protocol_loss() {
    // An unsolicited output (tag 0) whose u64 varint never ends.
    let mut rest = vec![0];
    rest.extend([0xff; 11]);
    misbehave(
        Job::WriteRaw(frame(OUTPUT, &rest)),
        "cannot deserialize an output",
    )
    .await;
}

#[tokio::test]
async fn an_output_of_another_type_is_a_protocol_loss() {
    // The string "hi" where the pool expects a u64: the length reads as a
    // number, and the characters are left over.
    let lost = misbehave(
        Job::WriteRaw(frame(OUTPUT, &[0, 2, b'h', b'i'])),
        "cannot deserialize an output",
    )
    .await;
    assert!(
        lost.to_string().contains("2 unexpected trailing bytes"),
        "{lost}"
    );
}

/// A pool of one worker with this file's frame limit.
async fn one_worker_pool() -> (
    looppool::Pool<looppool_tests::Probe>,
    looppool::Outputs<u64>,
) {
    probe_pool!()
        .workers(1)
        .max_frame(MAX_FRAME)
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn outputs_read_before_a_bad_frame_are_delivered() {
    let (pool, mut outputs) = one_worker_pool().await;
    // The first task takes slot 0 (slots are handed out lowest first).
    let first = pool.submit_to(0, Job::hold(1)).await.unwrap();
    // One write: the first task's last output (slot tag 1, value 41), then
    // garbage. The parent reads both at once; the output was complete, so
    // it is delivered, and only the tasks still held are reported lost.
    let mut bytes = frame(OUTPUT_DONE, &[1, 41]);
    bytes.extend_from_slice(b"not a looppool frame at all");
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        pool.call_to(0, Job::WriteRaw(bytes)),
    )
    .await
    .expect("the call ends")
    .unwrap_err();
    assert!(matches!(err, CallError::WorkerLost(_)), "{err:?}");
    match next_output(&mut outputs).await {
        Output::Value { task, value, .. } => assert_eq!((task, value), (Some(first), 41)),
        other => panic!("expected the first task's output, got {other:?}"),
    }
    // Nothing else: the first task is not also reported lost.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), outputs.next())
            .await
            .is_err(),
        "an item after the delivered output"
    );
    assert_eq!(pool.call_to(0, Job::WhoAmI).await.unwrap(), 0);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_message_for_a_slot_without_a_task_is_a_protocol_loss() {
    // Slot 4000 (varint a0 1f): the pool's default slots end far below.
    misbehave(
        Job::WriteRaw(frame(DONE, &[0xa0, 0x1f])),
        "message for slot 4000, which holds no task",
    )
    .await;
}

#[tokio::test]
async fn a_handshake_message_after_the_handshake_is_a_protocol_loss() {
    misbehave(
        Job::WriteRaw(frame(READY, &[])),
        "handshake message after the handshake",
    )
    .await;
    let mut hello = b"LPWK".to_vec();
    hello.extend([99, 0, 0, 0]);
    misbehave(
        Job::WriteRaw(frame(HELLO, &hello)),
        "handshake message after the handshake",
    )
    .await;
}

#[tokio::test]
async fn a_frame_cut_short_by_the_workers_exit_is_a_protocol_loss() {
    // A frame that announces 16 bytes, of which 2 arrive before the exit.
    let mut cut = 16u32.to_le_bytes().to_vec();
    cut.extend([OUTPUT, 0]);
    misbehave(
        Job::WriteRawThenExit {
            bytes: cut,
            linger_ms: 0,
        },
        "frame truncated",
    )
    .await;
}

/// Garbage whose first four bytes read as a length under the limit: the
/// parent waits for the rest of that "frame" only as long as bytes keep
/// coming, then breaks the connection, though the worker lives on.
#[tokio::test]
async fn a_frame_that_stops_arriving_is_a_protocol_loss() {
    // A header that announces 1000 bytes, then 10 of them.
    let mut bytes = 1000u32.to_le_bytes().to_vec();
    bytes.extend([OUTPUT; 10]);
    let bound = Duration::from_millis(500);
    let (_, took) = misbehave_in(
        probe_pool!().frame_timeout(bound),
        Job::WriteRaw(bytes),
        "frame of 1000 bytes incomplete after 500ms",
    )
    .await;
    assert!(took >= bound, "cut after {took:?}");
    assert!(took < bound + Duration::from_secs(3), "cut after {took:?}");
}

/// The rule is about progress: a frame whose bytes keep coming, each well
/// within the bound, is not cut, however long it takes in all.
#[tokio::test]
async fn a_frame_that_arrives_slowly_but_steadily_is_not_cut() {
    let (events, hook) = recorder();
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .max_frame(MAX_FRAME)
        .frame_timeout(Duration::from_millis(1000))
        .on_event(hook)
        .start()
        .await
        .unwrap();
    let pid = pool.pids()[0];
    // An unsolicited output (tag 0, value 77) in five pieces, 400 ms apart:
    // 1.6 s in all, the first piece half a header.
    let whole = frame(OUTPUT, &[0, 77]);
    let chunks = [
        &whole[..2],
        &whole[2..4],
        &whole[4..5],
        &whole[5..6],
        &whole[6..],
    ]
    .map(<[u8]>::to_vec)
    .to_vec();
    let started = Instant::now();
    pool.submit(Job::WriteRawSlowly {
        chunks,
        gap_ms: 400,
    })
    .await
    .unwrap();
    let out = next_output(&mut outputs).await;
    assert_eq!((out.task(), out.value()), (None, Some(&77)), "{out:?}");
    assert!(started.elapsed() >= Duration::from_millis(1600));
    assert_eq!(pool.call(Job::WhoAmI).await.unwrap(), 0);
    assert_eq!(pool.pids()[0], pid);
    let events = events.lock().unwrap().clone();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, WorkerEvent::Crashed { .. })),
        "{events:#?}"
    );
    pool.shutdown().await;
}

/// A worker that dies with input it never read resets the connection
/// instead of closing it; a frame it cut short is still a protocol loss,
/// not mistaken for a plain crash.
#[tokio::test]
async fn a_frame_cut_short_by_a_worker_dying_with_unread_input_is_a_protocol_loss() {
    let (pool, mut outputs) = one_worker_pool().await;
    let old_pid = pool.pids()[0].unwrap();
    // A whole unsolicited output (tag 0, value 77) as a marker, then the cut
    // frame; the worker then blocks its loop before it exits, so the next
    // task (and the credit the marker gives back) stay unread.
    let mut bytes = frame(OUTPUT, &[0, 77]);
    bytes.extend(16u32.to_le_bytes());
    bytes.extend([OUTPUT, 0]);
    let first = pool
        .submit(Job::WriteRawThenExit {
            bytes,
            linger_ms: 500,
        })
        .await
        .unwrap();
    let marker = next_output(&mut outputs).await;
    assert_eq!((marker.task(), marker.value()), (None, Some(&77)));
    let second = pool.submit(Job::Nothing).await.unwrap();
    let mut lost = Vec::new();
    while lost.len() < 2 {
        match next_output(&mut outputs).await {
            Output::Lost { task, lost: l } => {
                assert_eq!(l.pid, old_pid);
                assert!(
                    matches!(&l.cause, LossCause::Protocol(w) if w.contains("frame truncated")),
                    "{l}"
                );
                lost.push(task);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(lost, vec![first, second]);
    assert_eq!(pool.call(Job::WhoAmI).await.unwrap(), 0);
    pool.shutdown().await;
}

/// A worker that sends outputs without waiting for credits would fill the
/// parent's memory: past its window it is cut off like any other
/// protocol breaker, and the tasks it held are lost.
#[tokio::test]
async fn outputs_beyond_the_credit_window_are_a_protocol_loss() {
    let (pool, mut outputs) = probe_pool!()
        .workers(1)
        .max_results(4)
        .start()
        .await
        .unwrap();
    let old_pid = pool.pids()[0].unwrap();
    let sleep = Job::hold(0);
    let held = pool.submit(sleep).await.unwrap();
    // Ten unsolicited outputs (tag 0, values 100..110) where the window
    // allows four.
    let flood: Vec<u8> = (100..110u8).flat_map(|v| frame(OUTPUT, &[0, v])).collect();
    let flooder = pool.submit(Job::WriteRaw(flood)).await.unwrap();
    let mut unsolicited = 0;
    loop {
        match next_output(&mut outputs).await {
            Output::Value {
                task: None, value, ..
            } => {
                assert!((100..110).contains(&value));
                unsolicited += 1;
            }
            Output::Lost { task, lost } if task == held => {
                assert_eq!(lost.pid, old_pid);
                assert!(
                    matches!(&lost.cause, LossCause::Protocol(w) if w.contains("exceeded its output credit window")),
                    "{lost}"
                );
                break;
            }
            // It may complete in the same read as its flood, or be lost.
            Output::Lost { task, .. } if task == flooder => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(unsolicited <= 10);
    assert_eq!(pool.call(Job::Double(4)).await.unwrap(), 8);
    assert_ne!(pool.pids()[0], Some(old_pid));
    pool.shutdown().await;
}
