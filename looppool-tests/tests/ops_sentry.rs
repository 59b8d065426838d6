//! Workers' errors and panics reach Sentry, as a parent with the `sentry`
//! crate's tracing integration sends them, tagged with pool, worker, pid
//! and task: the envelopes are recorded by a local HTTP endpoint the test
//! starts in place of Sentry.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use looppool::Output;
use looppool_tests::{next_output, probe_pool, Job};
use serde_json::Value;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Layer, SubscriberExt};

/// An HTTP endpoint on a loopback port that records each request's body
/// and answers 200.
fn endpoint() -> (u16, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let recorded = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                recorded.lock().unwrap().push(body);
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        }
    });
    (port, bodies)
}

/// The events in the recorded envelopes: each envelope is a header line,
/// then an item header line and its payload per item.
fn events(bodies: &[Vec<u8>]) -> Vec<Value> {
    let mut found = Vec::new();
    for body in bodies {
        let text = String::from_utf8_lossy(body);
        let mut lines = text.lines().skip(1);
        while let (Some(header), Some(payload)) = (lines.next(), lines.next()) {
            let header: Value = serde_json::from_str(header).unwrap_or_default();
            if header["type"] == "event" {
                found.push(serde_json::from_str(payload).unwrap());
            }
        }
    }
    found
}

#[tokio::test]
async fn worker_errors_and_panics_reach_sentry_tagged() {
    let (port, bodies) = endpoint();
    let mut options = sentry::ClientOptions::default();
    options.before_send = Some(Arc::new(looppool::metrics::sentry_tags));
    let client = sentry::init((format!("http://public@127.0.0.1:{port}/1"), options));
    assert!(client.is_enabled());
    // This test's thread only: the pool's tasks run on it (a current-thread
    // runtime), so they log through this subscriber.
    let errors = sentry::integrations::tracing::ErrorLayer::new().with_filter(LevelFilter::ERROR);
    let subscriber = tracing_subscriber::registry().with(errors);
    let _subscriber = tracing::subscriber::set_default(subscriber);

    let (pool, mut outputs) = probe_pool!()
        .name("sentried")
        .workers(2)
        .failed_task_log_level(tracing::Level::ERROR)
        .start()
        .await
        .unwrap();
    let failing = pool
        .submit_to(1, Job::Fail("disk on fire".into()))
        .await
        .unwrap();
    let panicking = pool
        .submit_to(0, Job::Panic("kaboom".into()))
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(matches!(next_output(&mut outputs).await, Output::Failed(_)));
    }
    let pids = pool.pids();
    assert!(client.flush(Some(Duration::from_secs(10))));
    pool.shutdown().await;

    let events = events(&bodies.lock().unwrap());
    let tagged = |task: looppool::TaskId, text: &str| {
        events
            .iter()
            .find(|e| e["tags"]["task"] == task.to_string() && e.to_string().contains(text))
    };
    for (task, text, worker) in [(failing, "disk on fire", 1), (panicking, "kaboom", 0)] {
        let event = tagged(task, text)
            .unwrap_or_else(|| panic!("no event for {task} ({text}) in {events:#?}"));
        // Error is the protocol's default level, which the SDK leaves out.
        assert!(
            event["level"].is_null() || event["level"] == "error",
            "{event}"
        );
        assert_eq!(event["tags"]["pool"], "sentried");
        assert_eq!(event["tags"]["worker"], worker.to_string());
        assert_eq!(event["tags"]["pid"], pids[worker].unwrap().to_string());
    }
}
