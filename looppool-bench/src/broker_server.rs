//! The broker benchmarks' private `nats-server`, with or without users.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use looppool_nats::auth::{Permissions, Role};
use looppool_nats::Credentials;

use crate::sys;
use crate::workloads::BenchResult;

/// The password of every user of a server started with users (a
/// throwaway broker on loopback).
const PASSWORD: &str = "bench-password";

/// A private `nats-server -js` on a free loopback port with a temporary
/// store; stopped by its pid and its store removed on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) dir: PathBuf,
    pub(crate) url: String,
    /// Whether clients must log in as a pool's parent or worker user.
    users: bool,
}

impl Server {
    pub(crate) fn start(binary: &Path) -> BenchResult<Server> {
        Self::launch(binary, None)
    }

    /// A server whose only users are a parent and a worker user for each
    /// of `pools`, with their roles' permissions (the crate docs' secure
    /// setup, without TLS).
    pub(crate) fn start_with_users(binary: &Path, pools: &[&str]) -> BenchResult<Server> {
        let mut users = String::new();
        for pool in pools {
            for (role, name) in [(Role::Parent, "parent"), (Role::Worker, "worker")] {
                let p = Permissions::for_role(pool, role)?;
                users.push_str(&format!(
                    "  {{ user: {pool}-{name}, password: {PASSWORD}, permissions: {} }}\n",
                    p.to_server_config()
                ));
            }
        }
        Self::launch(
            binary,
            Some(format!("authorization {{ users = [\n{users}] }}\n")),
        )
    }

    fn launch(binary: &Path, config: Option<String>) -> BenchResult<Server> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "looppool-bench-nats-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("server.conf");
        if let Some(text) = &config {
            std::fs::write(&conf, text)?;
        }
        let spawned = looppool_nats::server::spawn_with_config(
            binary,
            &dir,
            None,
            config.is_some().then_some(conf.as_path()),
        );
        let (child, url) = spawned.inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        Ok(Server {
            child,
            dir,
            url,
            users: config.is_some(),
        })
    }

    /// The parent's and the workers' credentials for pool `pool`, when the
    /// server has users.
    pub(crate) fn credentials(&self, pool: &str) -> Option<(Credentials, Credentials)> {
        self.users.then(|| {
            (
                Credentials::user_password(format!("{pool}-parent"), PASSWORD),
                Credentials::user_password(format!("{pool}-worker"), PASSWORD),
            )
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The pid is our own child's, not yet reaped: SIGTERM lets the
        // server flush its store.
        sys::signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
