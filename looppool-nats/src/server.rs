//! A private `nats-server` for tests, benchmarks and examples: where the
//! binary is, and starting one with JetStream on a free loopback port.
//!
//! Not needed to use a pool (any broker with JetStream will do); the
//! workspace's tests, its bench program and the `broker_pool` example use
//! these to start a throwaway broker of their own, and so can yours.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that names the `nats-server` binary for
/// [`locate`].
pub const SERVER_ENV: &str = "NATS_SERVER";

/// How long [`spawn`] waits for the server to write its ports file.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The `nats-server` binary: the path in `$NATS_SERVER` as it is, else the
/// first `nats-server` file on the `PATH`, then in `/usr/sbin`,
/// `/usr/local/sbin` and `/sbin` (Debian's package `nats-server` installs
/// to `/usr/sbin`, which is not on every user's `PATH`). `None` when there
/// is none.
pub fn locate() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(SERVER_ENV) {
        return Some(path.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

/// Starts `binary` as `nats-server -js` on `127.0.0.1`, on `port` or (with
/// `None`) a free port, with its JetStream store in `dir/js` and its ports
/// file in `dir`, which must exist. Returns the process and its client URL
/// (`nats://127.0.0.1:PORT`) once the server has written its ports file.
///
/// The caller owns the process: it stops it (`SIGTERM` lets the server
/// flush its store first) and removes `dir`.
///
/// # Errors
/// When the binary cannot be started, or the server exits or writes no
/// ports file within 10 s (the process is then killed and reaped).
pub fn spawn(binary: &Path, dir: &Path, port: Option<u16>) -> io::Result<(Child, String)> {
    spawn_with_config(binary, dir, port, None)
}

/// [`spawn`], with the server's configuration file `config` (users,
/// permissions, TLS: see the crate's *Security* section); the address,
/// port and store given here take precedence over the file's.
///
/// # Errors
/// As [`spawn`]; a configuration the server refuses makes it exit at
/// start-up.
pub fn spawn_with_config(
    binary: &Path,
    dir: &Path,
    port: Option<u16>,
    config: Option<&Path>,
) -> io::Result<(Child, String)> {
    let port = port.map_or("-1".to_owned(), |p| p.to_string());
    let mut cmd = Command::new(binary);
    if let Some(config) = config {
        cmd.arg("-c").arg(config);
    }
    let mut child = cmd
        .args(["-js", "-a", "127.0.0.1", "-p", &port, "-sd"])
        .arg(dir.join("js"))
        .arg("--ports_file_dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {}: {e}", binary.display())))?;
    match wait_for_url(&mut child, dir) {
        Ok(url) => Ok((child, url)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// The client URL from `child`'s ports file in `dir`, once it is written:
/// `{"nats":["nats://127.0.0.1:PORT"], ...}`.
fn wait_for_url(child: &mut Child, dir: &Path) -> io::Result<String> {
    let ports = dir.join(format!("nats-server_{}.ports", child.id()));
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&ports) {
            // With TLS required, the server lists its URL as tls://.
            if let Some(url) = text
                .split('"')
                .find(|s| s.starts_with("nats://") || s.starts_with("tls://"))
            {
                return Ok(url.replacen("tls://", "nats://", 1));
            }
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "nats-server exited at start-up ({status})"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "nats-server wrote no {} within {START_TIMEOUT:?}",
            ports.display()
        ),
    ))
}
