//! A private NATS server with JetStream for one test: a free loopback port,
//! a temporary store, stopped by its pid.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A running `nats-server -js`, stopped and its store removed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    config: Option<PathBuf>,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
}

impl NatsServer {
    /// Starts a server, or returns `None` (after saying so) when no
    /// `nats-server` is installed. Under `CI=true` a missing server fails
    /// the test instead: CI must install it.
    pub fn start() -> Option<Self> {
        let Some(binary) = looppool_nats::server::locate() else {
            if std::env::var_os("CI").is_some_and(|v| v == "true") {
                panic!("nats-server is not installed, and CI=true: .ci/run must install it");
            }
            eprintln!("skipping: nats-server not found (install Debian's nats-server, or set NATS_SERVER)");
            return None;
        };
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "looppool-nats-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let mut server = NatsServer {
            child: None,
            binary,
            dir,
            port: 0,
            url: String::new(),
            config: None,
        };
        server.launch(None);
        Some(server)
    }

    /// Starts a server with configuration `config` (the text of a
    /// `nats-server` configuration file), as [`start`](Self::start).
    /// `config` may name files in [`dir`](Self::dir) as `$DIR`.
    pub fn start_with_config(config: impl FnOnce(&std::path::Path) -> String) -> Option<Self> {
        let mut server = Self::start()?;
        server.stop();
        let path = server.dir.join("server.conf");
        std::fs::write(&path, config(&server.dir)).expect("server configuration");
        server.config = Some(path);
        server.launch(None);
        Some(server)
    }

    /// The server's own temporary directory (removed with it), for
    /// certificates and keys.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn launch(&mut self, port: Option<u16>) {
        let (child, url) = looppool_nats::server::spawn_with_config(
            &self.binary,
            &self.dir,
            port,
            self.config.as_deref(),
        )
        .unwrap_or_else(|e| panic!("cannot start nats-server: {e}"));
        self.child = Some(child);
        self.port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the ports file");
        self.url = format!("nats://127.0.0.1:{}", self.port);
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::sys::signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server with SIGKILL (no chance to flush its store) and
    /// starts it again on the same port and store after `downtime`.
    pub fn crash_restart(&mut self, downtime: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::thread::sleep(downtime);
        self.launch(Some(self.port));
    }

    /// Stops the server and starts it again on the same port and store,
    /// after `downtime`.
    pub fn restart(&mut self, downtime: Duration) {
        self.stop();
        std::thread::sleep(downtime);
        self.launch(Some(self.port));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts worker `program` (the test worker) as a remote worker of pool
/// `pool`, running worker type `worker`, joining as `index` when given.
pub fn remote_worker(
    program: &str,
    url: &str,
    pool: &str,
    worker: &str,
    index: Option<usize>,
) -> Child {
    let mut cmd = Command::new(program);
    cmd.env("LOOPPOOL_NATS_URL", url)
        .env("LOOPPOOL_NATS_POOL", pool)
        .env("LOOPPOOL_NATS_WORKER", worker)
        .stdin(Stdio::null());
    if let Some(i) = index {
        cmd.env("LOOPPOOL_NATS_INDEX", i.to_string());
    }
    cmd.spawn().expect("cannot start the test worker")
}

/// A builder for a pool of [`crate::Probe`]s run by worker `program` (the
/// test worker) through the broker at `url`, with the short liveness and
/// ack-wait periods the tests use.
pub fn probe_pool(
    program: &str,
    url: &str,
    pool: &str,
) -> looppool_nats::NatsPoolBuilder<crate::Probe> {
    looppool_nats::NatsPoolBuilder::<crate::Probe>::new(url, pool)
        .program(program)
        .init_default()
        .liveness(Duration::from_millis(200), Duration::from_millis(1000))
        .ack_wait(Duration::from_secs(2))
}
