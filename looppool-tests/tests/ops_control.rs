//! The control socket: where it is and who may use it, its JSON-lines
//! requests against a live pool, malformed and hostile clients, and its
//! removal however the pool ends.
#![cfg(target_os = "linux")]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use looppool::{Output, Outputs, Pool};
use looppool_tests::{probe_pool, Job, Probe};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// A fresh directory path (not yet created) for one test's sockets.
fn socket_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("looppool-ctl-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A probe pool of two workers whose control socket is in `dir`.
async fn two_workers_listening_in(dir: &Path) -> (Pool<Probe>, Outputs<u64>) {
    probe_pool!()
        .workers(2)
        .control_socket(dir)
        .start()
        .await
        .unwrap()
}

/// A control-socket client speaking JSON lines.
struct Client {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Client {
    async fn connect(path: &Path) -> Client {
        let (read, write) = UnixStream::connect(path).await.unwrap().into_split();
        Client {
            read: BufReader::new(read),
            write,
        }
    }

    /// Sends `line` (a newline is added) and returns the reply.
    async fn ask_raw(&mut self, line: &[u8]) -> Value {
        self.write.write_all(line).await.unwrap();
        self.write.write_all(b"\n").await.unwrap();
        self.reply().await
    }

    async fn ask(&mut self, request: Value) -> Value {
        self.ask_raw(request.to_string().as_bytes()).await
    }

    /// The next reply line, parsed.
    async fn reply(&mut self) -> Value {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(10), self.read.read_line(&mut line));
        read.await.expect("a reply in time").unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
    }
}

fn error_kind(reply: &Value) -> &str {
    assert_eq!(reply["ok"], false, "{reply}");
    reply["error"]["kind"].as_str().unwrap()
}

/// Polls `check` every 10 ms until it holds, or panics after 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_socket_is_private_listed_and_removed_at_shutdown() {
    let dir = socket_dir("private");
    let (pool, _outputs) = probe_pool!()
        .workers(1)
        .name("web/v1")
        .control_socket(&dir)
        .start()
        .await
        .unwrap();
    let path = pool.control_socket().unwrap().to_owned();
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    let dir_meta = std::fs::symlink_metadata(&dir).unwrap();
    assert!(dir_meta.is_dir());
    assert_eq!(dir_meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(dir_meta.uid(), me);
    let sock_meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(sock_meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(sock_meta.uid(), me);

    let found = looppool::control::sockets(&dir).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].path, path);
    assert_eq!(found[0].pool, "web_v1");
    assert_eq!(found[0].pid, std::process::id());

    assert!(pool.shutdown().await.drained);
    assert!(
        !path.exists(),
        "the socket is removed when shutdown returns"
    );
    assert!(looppool::control::sockets(&dir).unwrap().is_empty());
    std::fs::remove_dir(&dir).unwrap();
}

/// The message of a configuration error (what to change).
fn config_message(err: &looppool::StartError) -> String {
    match err {
        looppool::StartError::Config(e) => e.to_string(),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_directory_open_to_others_is_refused() {
    let dir = socket_dir("open");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = probe_pool!()
        .workers(1)
        .control_socket(&dir)
        .start()
        .await
        .unwrap_err();
    assert!(config_message(&err).contains("mode 755"), "{err:?}");
    let link = socket_dir("link");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let err = probe_pool!()
        .workers(1)
        .control_socket(&link)
        .start()
        .await
        .unwrap_err();
    assert!(config_message(&err).contains("symlink"), "{err:?}");
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_dir(&dir).unwrap();
}

#[tokio::test]
async fn snapshot_matches_the_pools_stats() {
    let dir = socket_dir("snapshot");
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .report_interval(Duration::from_millis(50))
        .control_socket(&dir)
        .start()
        .await
        .unwrap();
    for x in 0..10 {
        pool.call(Job::Double(x)).await.unwrap();
    }
    pool.submit(Job::Fail("no".into())).await.unwrap();
    assert!(matches!(outputs.next().await, Some(Output::Failed { .. })));
    // Held tasks, so that `in_flight` is not trivially zero.
    pool.submit_to(1, Job::hold(0)).await.unwrap();
    eventually("a report from every worker", || {
        let stats = pool.stats();
        stats.workers.iter().all(|w| w.last_report.is_some())
    })
    .await;

    let mut client = Client::connect(pool.control_socket().unwrap()).await;
    let reply = client
        .ask(serde_json::json!({"op": "snapshot", "id": 7}))
        .await;
    let stats = pool.stats();
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["ok"], true);
    let snap: looppool::control::Snapshot =
        serde_json::from_value(reply["snapshot"].clone()).unwrap();
    assert_eq!(snap.pool, stats.pool);
    assert_eq!(snap.pid, std::process::id());
    assert_eq!(snap.state, "running");
    assert_eq!(snap.worker_capacity, pool.worker_capacity());
    assert_eq!(
        (
            snap.in_flight,
            snap.done,
            snap.failed,
            snap.lost,
            snap.restarts
        ),
        (
            stats.in_flight,
            stats.done,
            stats.failed,
            stats.lost,
            stats.restarts
        )
    );
    assert_eq!((snap.in_flight, snap.done, snap.failed), (1, 10, 1));
    assert_eq!(snap.workers.len(), 2);
    for (w, s) in snap.workers.iter().zip(&stats.workers) {
        assert_eq!(w.index, s.worker);
        assert_eq!(w.pid, s.pid);
        assert_eq!(w.state, looppool::control::WorkerState::Running);
        assert_eq!(
            (w.in_flight, w.done, w.failed, w.lost, w.restarts),
            (s.in_flight, s.done, s.failed, s.lost, s.restarts)
        );
        assert!(w.rss_bytes.unwrap() > 0);
        assert!(w.cpu_percent.unwrap() >= 0.0);
        assert!(w.loop_busy_percent.is_some());
    }
    pool.shutdown_timeout(Duration::from_millis(100)).await;
    let _ = std::fs::remove_dir(&dir);
}

#[tokio::test]
async fn resize_and_recycle_through_the_socket_change_the_pool() {
    let dir = socket_dir("actions");
    let (pool, mut outputs) = probe_pool!()
        .workers(2)
        .max_workers(4)
        .control_socket(&dir)
        .start()
        .await
        .unwrap();
    let mut client = Client::connect(pool.control_socket().unwrap()).await;

    let reply = client
        .ask(serde_json::json!({"op": "resize", "workers": 3}))
        .await;
    assert_eq!(reply, serde_json::json!({"ok": true}));
    assert_eq!(pool.workers(), 3);
    assert!(pool.pids().iter().all(Option::is_some));
    let reply = client
        .ask(serde_json::json!({"op": "resize", "workers": 9}))
        .await;
    assert_eq!(error_kind(&reply), "invalid");
    let reply = client
        .ask(serde_json::json!({"op": "resize", "workers": 2}))
        .await;
    assert_eq!(reply["ok"], true);
    assert_eq!(pool.workers(), 2);

    // Recycling drains: a task the worker holds completes, it is not lost.
    let before = pool.pids();
    pool.submit_to(0, Job::Sleep { ms: 300, value: 5 })
        .await
        .unwrap();
    let reply = client
        .ask(serde_json::json!({"op": "recycle", "worker": 0, "id": "r"}))
        .await;
    assert_eq!(reply, serde_json::json!({"id": "r", "ok": true}));
    match outputs.next().await {
        Some(Output::Value { value, worker, .. }) => assert_eq!((value, worker), (5, 0)),
        other => panic!("expected the held task's output, got {other:?}"),
    }
    eventually("worker 0's replacement", || {
        let pids = pool.pids();
        pids[0].is_some() && pids[0] != before[0]
    })
    .await;
    assert_eq!(pool.pids()[1], before[1], "worker 1 is left alone");
    let stats = pool.stats();
    assert_eq!((stats.workers[0].restarts, stats.lost), (1, 0));
    assert_eq!(pool.call(Job::Double(4)).await.unwrap(), 8);

    let reply = client
        .ask(serde_json::json!({"op": "recycle", "worker": 2}))
        .await;
    assert_eq!(error_kind(&reply), "no_such_worker");
    pool.shutdown().await;
    let _ = std::fs::remove_dir(&dir);
}

#[tokio::test]
async fn cancel_through_the_socket_ends_the_task_cancelled() {
    let dir = socket_dir("cancel");
    let (pool, mut outputs) = two_workers_listening_in(&dir).await;
    let mut client = Client::connect(pool.control_socket().unwrap()).await;
    let pids = pool.pids();
    // Long enough that only the cancel can end it within the test.
    let long = pool.submit(Job::hold(1)).await.unwrap();
    let other = pool.submit(Job::Sleep { ms: 200, value: 2 }).await.unwrap();
    let reply = client
        .ask(serde_json::json!({"op": "cancel", "task": long.to_string(), "id": 1}))
        .await;
    assert_eq!(reply, serde_json::json!({"id": 1, "ok": true}));
    // The other form of the id; a cancel already under way is refused.
    let again = serde_json::json!({"worker": long.worker(), "seq": long.seq()});
    let reply = client
        .ask(serde_json::json!({"op": "cancel", "task": again}))
        .await;
    assert_eq!(error_kind(&reply), "no_such_task");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let item = tokio::time::timeout(Duration::from_secs(10), outputs.next()).await;
        match item.expect("an output in time") {
            Some(Output::Cancelled { task, .. }) => seen.push(("cancelled", task)),
            Some(Output::Value { task, value, .. }) => {
                assert_eq!(value, 2);
                seen.push(("value", task.unwrap()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, [("cancelled", long), ("value", other)]);
    // An ended task cannot be cancelled; the workers were not touched.
    let reply = client
        .ask(serde_json::json!({"op": "cancel", "task": other.to_string()}))
        .await;
    assert_eq!(error_kind(&reply), "no_such_task");
    assert_eq!(pool.pids(), pids);
    assert_eq!(pool.stats().lost, 0);
    pool.shutdown().await;
    let _ = std::fs::remove_dir(&dir);
}

#[tokio::test]
async fn malformed_requests_get_errors_and_the_pool_serves_on() {
    let dir = socket_dir("malformed");
    let (pool, _outputs) = two_workers_listening_in(&dir).await;
    let pids = pool.pids();
    let mut client = Client::connect(pool.control_socket().unwrap()).await;
    let cases: &[(&[u8], &str)] = &[
        (b"not json", "bad_json"),
        (b"\xff\xfe{}", "bad_json"),
        (b"[1,2]", "bad_request"),
        (b"{}", "bad_request"),
        (br#"{"op":5}"#, "bad_request"),
        (br#"{"op":"explode"}"#, "unknown_op"),
        (br#"{"op":"resize","workers":"two"}"#, "bad_request"),
        (br#"{"op":"resize","workers":-1}"#, "bad_request"),
        (br#"{"op":"recycle","worker":1.5}"#, "bad_request"),
        (br#"{"op":"resize","workers":0}"#, "invalid"),
        (br#"{"op":"cancel","task":3}"#, "bad_request"),
        (br#"{"op":"cancel","task":"w0#99999"}"#, "no_such_task"),
        (br#"{"op":"cancel","task":"w7#1"}"#, "no_such_task"),
    ];
    for (line, kind) in cases {
        let reply = client.ask_raw(line).await;
        assert_eq!(
            error_kind(&reply),
            *kind,
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    let reply = client.ask_raw(br#"{"op":"explode","id":[1]}"#).await;
    assert_eq!(reply["id"], serde_json::json!([1]));
    // A line over the limit: refused, its bytes discarded, the connection
    // still in step.
    let long = vec![b'x'; looppool::control::MAX_LINE + 1000];
    let reply = client.ask_raw(&long).await;
    assert_eq!(error_kind(&reply), "line_too_long");
    let reply = client.ask(serde_json::json!({"op": "snapshot"})).await;
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["snapshot"]["workers"].as_array().unwrap().len(), 2);

    assert_eq!(pool.pids(), pids, "no worker was disturbed");
    assert_eq!(pool.call(Job::Double(21)).await.unwrap(), 42);
    assert_eq!(pool.stats().restarts, 0);
    pool.shutdown().await;
    let _ = std::fs::remove_dir(&dir);
}

#[tokio::test]
async fn silent_and_surplus_clients_do_not_hold_up_the_pool() {
    let dir = socket_dir("crowd");
    let (pool, _outputs) = two_workers_listening_in(&dir).await;
    let path = pool.control_socket().unwrap().to_owned();
    // A hundred clients that connect and never send.
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(UnixStream::connect(&path).await.unwrap());
    }
    let started = Instant::now();
    for x in 0..50 {
        assert_eq!(pool.call(Job::Double(x)).await.unwrap(), 2 * x);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    // Those past the limit were told so at once and disconnected.
    let mut busy = 0;
    for stream in &mut silent[looppool::control::MAX_CLIENTS..] {
        let mut text = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text));
        read.await
            .expect("a surplus client is disconnected")
            .unwrap();
        let reply: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(error_kind(&reply), "busy");
        busy += 1;
    }
    assert_eq!(busy, 100 - looppool::control::MAX_CLIENTS);
    // Once the silent ones hang up, their slots serve others again.
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = Client::connect(&path).await;
        let reply = client.ask(serde_json::json!({"op": "snapshot"})).await;
        if reply["ok"] == true {
            break;
        }
        assert_eq!(error_kind(&reply), "busy");
        assert!(Instant::now() < deadline, "slots are freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.shutdown().await;
    let _ = std::fs::remove_dir(&dir);
}

#[tokio::test]
async fn a_pool_dropped_with_clients_connected_still_ends() {
    let dir = socket_dir("dropped");
    let (pool, _outputs) = two_workers_listening_in(&dir).await;
    let path = pool.control_socket().unwrap().to_owned();
    let pids: Vec<u32> = pool.pids().into_iter().flatten().collect();
    let mut client = Client::connect(&path).await;
    assert_eq!(
        client.ask(serde_json::json!({"op": "snapshot"})).await["ok"],
        true
    );
    let mut idle = UnixStream::connect(&path).await.unwrap();
    drop(pool);
    assert!(!path.exists(), "the socket goes with the pool");
    for pid in pids {
        eventually("the workers' end", || looppool_tests::process_gone(pid)).await;
    }
    // Both connections were closed by the pool's side. The idle one may
    // not have been accepted yet when the listener ended: then it is reset
    // rather than closed, which ends it just the same.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest));
    match read.await.expect("the connection ends") {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), client.read.read_line(&mut line));
    assert_eq!(read.await.expect("the connection ends").unwrap(), 0);
    let _ = std::fs::remove_dir(&dir);
}

/// A `control-parent` process, killed when dropped: a failed assertion
/// must not leave it running (it holds the test's stderr open, which would
/// keep `cargo test` waiting).
struct Parent(std::process::Child);

impl Parent {
    fn id(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL, and reap it.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `control-parent` with its socket in `dir` (as user `uid`, when
/// given) and returns it with its socket's path.
fn control_parent(dir: &Path, uid: Option<u32>) -> (Parent, PathBuf) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_control-parent"));
    cmd.arg(env!("CARGO_BIN_EXE_test-worker"))
        .arg(dir)
        .stdout(Stdio::piped());
    if let Some(uid) = uid {
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, uid);
    }
    let mut child = Parent(cmd.spawn().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(!line.is_empty(), "control-parent printed its socket");
    (child, PathBuf::from(line.trim()))
}

#[tokio::test]
async fn the_socket_of_a_killed_parent_is_cleaned_up() {
    let dir = socket_dir("killed");
    let (mut parent, path) = control_parent(&dir, None);
    assert!(path.exists());
    // Answered while the parent lives.
    let mut client = Client::connect(&path).await;
    let reply = client.ask(serde_json::json!({"op": "snapshot"})).await;
    assert_eq!(reply["snapshot"]["pid"], parent.id());
    drop(client);
    parent.kill();
    assert!(path.exists(), "SIGKILL leaves the socket behind");
    // The next pool in the directory removes it (as `sockets` does).
    let (pool, _outputs) = probe_pool!()
        .workers(1)
        .control_socket(&dir)
        .start()
        .await
        .unwrap();
    assert!(!path.exists(), "the next pool removed the stale socket");
    let found = looppool::control::sockets(&dir).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(Some(found[0].path.as_path()), pool.control_socket());

    // And `sockets` alone (what `looppool top` calls).
    let (mut parent, path) = control_parent(&dir, None);
    parent.kill();
    assert!(path.exists());
    assert_eq!(looppool::control::sockets(&dir).unwrap().len(), 1);
    assert!(!path.exists(), "sockets() removed the stale socket");
    pool.shutdown().await;
    let _ = std::fs::remove_dir(&dir);
}

/// The peer check, against a real peer of another user. Root can reach a
/// socket whatever its mode, so a pool run as `nobody` and a client run as
/// root (these tests' usual user in containers) is the one pairing where
/// the file's mode lets a foreign peer through and `SO_PEERCRED` alone
/// must refuse it. Run as another user, the test checks what it can: a
/// foreign socket cannot even be reached.
#[tokio::test]
async fn a_peer_of_another_user_is_refused() {
    const NOBODY: u32 = 65534;
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    if me != 0 {
        eprintln!("not root: the pool cannot be run as another user; checked by unit tests");
        return;
    }
    // A directory the other user owns, inside one it can enter.
    let dir = socket_dir("peer");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let inner = dir.join("nobody");
    std::fs::create_dir(&inner).unwrap();
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&inner, Some(NOBODY), Some(NOBODY)).unwrap();

    let (mut parent, path) = control_parent(&inner, Some(NOBODY));
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), NOBODY);
    let mut client = Client::connect(&path).await;
    let reply = client.reply().await;
    assert_eq!(error_kind(&reply), "forbidden");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("uid 0"));
    // Disconnected: nothing more is read.
    let mut rest = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), client.read.read_line(&mut rest));
    assert_eq!(read.await.expect("the connection ends").unwrap(), 0);
    parent.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// On by default, in the default directory; off with one call.
#[tokio::test]
async fn the_socket_is_on_by_default_and_can_be_turned_off() {
    let (pool, _outputs): (Pool<Probe>, _) = probe_pool!().workers(1).start().await.unwrap();
    let path = pool.control_socket().expect("on by default").to_owned();
    assert!(path.starts_with(looppool::control::default_dir().unwrap()));
    let mut client = Client::connect(&path).await;
    assert_eq!(
        client.ask(serde_json::json!({"op": "snapshot"})).await["ok"],
        true
    );
    pool.shutdown().await;
    assert!(!path.exists());

    let (pool, _outputs) = probe_pool!()
        .workers(1)
        .no_control_socket()
        .start()
        .await
        .unwrap();
    assert!(pool.control_socket().is_none());
    pool.shutdown().await;
}

/// A client that hangs up right after its request: the request is carried
/// out all the same.
#[tokio::test]
async fn a_request_whose_client_hangs_up_is_still_carried_out() {
    let dir = socket_dir("hangup");
    let (pool, _outputs) = two_workers_listening_in(&dir).await;
    let before = pool.pids();
    let mut stream = UnixStream::connect(pool.control_socket().unwrap())
        .await
        .unwrap();
    stream
        .write_all(b"{\"op\":\"rolling_restart\"}\n")
        .await
        .unwrap();
    drop(stream);
    eventually("every worker replaced", || {
        let pids = pool.pids();
        pids.iter().zip(&before).all(|(a, b)| a.is_some() && a != b)
    })
    .await;
    assert_eq!(pool.call(Job::Double(2)).await.unwrap(), 4);
    let stats = pool.stats();
    assert_eq!((stats.lost, stats.failed), (0, 0));
    pool.shutdown().await;
    let _ = std::fs::remove_dir(&dir);
}

/// A shutdown while a client waits for a rolling restart: the client's
/// connection ends, the socket goes, the pool's processes end.
#[tokio::test]
async fn a_shutdown_while_a_client_waits_closes_its_connection() {
    let dir = socket_dir("shutdown");
    let (pool, _outputs) = two_workers_listening_in(&dir).await;
    let path = pool.control_socket().unwrap().to_owned();
    let pids: Vec<u32> = pool.pids().into_iter().flatten().collect();
    // Worker 0 drains for a while, which holds the restart.
    pool.submit_to(0, Job::Sleep { ms: 500, value: 1 })
        .await
        .unwrap();
    let mut client = Client::connect(&path).await;
    client
        .write
        .write_all(b"{\"op\":\"rolling_restart\"}\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(pool.shutdown().await.drained);
    assert!(
        !path.exists(),
        "the socket is removed when shutdown returns"
    );
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), client.read.read_line(&mut line));
    match read.await.expect("the connection ends") {
        // Closed without a reply, or (had the restart ended first) with one.
        Ok(0) => {}
        Ok(_) => assert_eq!(error_kind(&serde_json::from_str(&line).unwrap()), "closed"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
    }
    for pid in pids {
        eventually("the workers' end", || looppool_tests::process_gone(pid)).await;
    }
    let _ = std::fs::remove_dir(&dir);
}

/// A pool whose workers come through a NATS broker has the same socket: a
/// snapshot of its workers, a recycle; a rolling restart, which it cannot
/// do for workers it reaches through a connector, says so.
#[tokio::test]
async fn a_broker_pool_is_operated_through_its_socket_too() {
    let Some(server) = looppool_tests::nats::NatsServer::start() else {
        return;
    };
    let dir = socket_dir("nats");
    let socket_dir = dir.clone();
    let worker = env!("CARGO_BIN_EXE_test-worker");
    let (pool, mut outputs) = looppool_tests::nats::probe_pool(worker, &server.url, "ops")
        .local_workers(2)
        .configure(move |b| b.control_socket(socket_dir))
        .start()
        .await
        .unwrap();
    pool.submit(Job::Double(4)).await.unwrap();
    assert!(matches!(
        looppool_tests::next_output(&mut outputs).await,
        Output::Value { value: 8, .. }
    ));
    let mut client = Client::connect(pool.control_socket().unwrap()).await;
    let reply = client.ask(serde_json::json!({"op": "snapshot"})).await;
    let snap: looppool::control::Snapshot =
        serde_json::from_value(reply["snapshot"].clone()).unwrap();
    assert_eq!(snap.workers.len(), 2);
    assert_eq!(snap.done, 1);
    let reply = client
        .ask(serde_json::json!({"op": "rolling_restart"}))
        .await;
    assert_eq!(error_kind(&reply), "unsupported");
    let before = pool.pids();
    let reply = client
        .ask(serde_json::json!({"op": "recycle", "worker": 0}))
        .await;
    assert_eq!(reply["ok"], true);
    eventually("worker 0's replacement", || {
        let pids = pool.pids();
        pids[0].is_some() && pids[0] != before[0]
    })
    .await;
    assert_eq!(pool.call(Job::Double(5)).await.unwrap(), 10);
    pool.shutdown().await;
    let _ = std::fs::remove_dir(&dir);
}
