//! The pool's control socket: a Unix socket through which a program of the
//! same user (`looppool top`, a script) reads a running pool's figures and
//! acts on it.
//!
//! # On by default
//!
//! Every pool listens on a control socket unless
//! [`PoolBuilder::no_control_socket`](crate::PoolBuilder::no_control_socket)
//! turns it off: a tool such as `looppool top` can only find pools that
//! listen, and the pool that misbehaves in production is rarely the one
//! that was started with an opt-in. The cost is one listener task that
//! sleeps until a client connects, one descriptor and one file per pool.
//! When the default directory cannot be used (a read-only `/tmp`, a
//! directory owned by someone else) the pool logs a warning and starts
//! without a socket; a directory chosen with
//! [`PoolBuilder::control_socket`](crate::PoolBuilder::control_socket)
//! that cannot be used fails the start instead.
//!
//! # Where
//!
//! In [`default_dir`]: `$XDG_RUNTIME_DIR/looppool/` when `XDG_RUNTIME_DIR`
//! is set (an absolute path), else `/tmp/looppool-<uid>/`. The directory is
//! created with mode 0700 and, before every use, checked to be a real
//! directory (not a symlink) owned by the user with no access for group or
//! others; the socket itself is made mode 0600. The socket is named
//! `<pool name>.<pid>.<n>.sock` (the name with characters other than
//! letters, digits, `-` and `_` replaced by `_`, cut to 40 bytes; `n`
//! counts the pools of the process), which [`sockets`] parses.
//!
//! The socket is removed when the pool has shut down (when
//! [`Pool::shutdown`](crate::Pool::shutdown) returns), when it failed, and
//! when it is dropped. A process killed with SIGKILL cannot remove its
//! socket: the next pool started in the same directory, and [`sockets`]
//! (which `looppool top` calls), remove the sockets of processes that no
//! longer exist.
//!
//! # Security
//!
//! Three checks, each enough alone: the directory admits only its owner,
//! the socket file is 0600, and each connection's peer credentials
//! (`SO_PEERCRED`) must carry the pool process's effective uid; any other
//! peer (root included) gets one `forbidden` error line and is
//! disconnected. A client can read the pool's figures, resize it, recycle
//! its workers and cancel its tasks, nothing else: no task is sent, no
//! output read.
//!
//! # Protocol
//!
//! JSON lines over the socket: one request per line (UTF-8 JSON object, at
//! most [`MAX_LINE`] bytes), one reply per line, in order. A request names
//! its operation in `"op"` and may carry an `"id"` (any JSON value), which
//! its reply echoes.
//!
//! | request | reply |
//! |---|---|
//! | `{"op":"snapshot"}` | `{"ok":true,"snapshot":{...}}`, a [`Snapshot`] |
//! | `{"op":"resize","workers":4}` | `{"ok":true}` once the pool has that many workers (as [`Pool::resize`](crate::Pool::resize)) |
//! | `{"op":"recycle","worker":1}` | `{"ok":true}` once worker 1 was asked to drain: it finishes what it holds and is replaced, as when recycled after [`recycle_after_tasks`](crate::PoolBuilder::recycle_after_tasks) ([`RecycleReason::Requested`](crate::RecycleReason::Requested)) |
//! | `{"op":"cancel","task":"w1#42"}` (or `"task":{"worker":1,"seq":42}`) | `{"ok":true}` once the cancel of that task is under way, as [`Pool::cancel`](crate::Pool::cancel) returning true; a `no_such_task` error when the pool does not hold it (it ended, was never sent, or is already being cancelled). The task's fate reaches its sender as [`Output::Cancelled`](crate::Output::Cancelled) or [`CallError::Cancelled`](crate::CallError::Cancelled), as any cancel's |
//! | `{"op":"rolling_restart"}` | `{"ok":true}` once every worker was replaced, one at a time, as [`Pool::rolling_restart`](crate::Pool::rolling_restart) does (it may take as long as the workers take to drain); a `restart_failed` error, whose message says which workers were replaced, when a replacement did not start (the others keep serving) |
//!
//! ```text
//! → {"op":"recycle","worker":7,"id":"a"}
//! ← {"id":"a","ok":false,"error":{"kind":"no_such_worker","message":"no worker 7: the pool has 2"}}
//! ```
//!
//! An error reply is `{"ok":false,"error":{"kind":K,"message":M}}`, where
//! `K` is one of `bad_json` (not JSON, or not UTF-8), `bad_request` (not an
//! object, no `op`, a missing or mistyped field), `unknown_op`,
//! `line_too_long` (the line's bytes are discarded up to its newline),
//! `unsupported` (a rolling restart of a pool whose workers come through a
//! connector), `restart_failed`, `no_such_worker`, `no_such_task`,
//! `not_running` (the worker is starting,
//! stopping or already recycling), `invalid` (a resize out of bounds),
//! `closed` (the pool is stopping), `start_failed` (a resize's new worker
//! did not start), `busy` (too many clients: [`MAX_CLIENTS`]), `forbidden`
//! (another user). The messages are for people and may change; the kinds
//! will not. A malformed request never reaches the pool, and the
//! connection stays open after every error but `busy` and `forbidden`.
//!
//! A client that sends nothing for [`IDLE_TIMEOUT`], or does not read its
//! replies for [`WRITE_TIMEOUT`], is disconnected. The listener never
//! holds the pool: each request reaches it through a weak reference, and
//! a dropped pool ends the listener and every connection.
//!
//! ```no_run
//! use std::io::{BufRead, BufReader, Write};
//! use std::os::unix::net::UnixStream;
//!
//! # fn main() -> std::io::Result<()> {
//! for socket in looppool::control::sockets(&looppool::control::default_dir()?)? {
//!     let mut stream = UnixStream::connect(&socket.path)?;
//!     stream.write_all(b"{\"op\":\"snapshot\"}\n")?;
//!     let mut reply = String::new();
//!     BufReader::new(stream).read_line(&mut reply)?;
//!     println!("{} (pid {}): {reply}", socket.pool, socket.pid);
//! }
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{BuildError, StartError};
use crate::supervisor::Supervisor;

mod dir;
mod ops;
mod server;
mod snapshot;

pub use dir::{default_dir, sockets, SocketInfo};
pub(crate) use ops::Cancel;
pub use snapshot::{Snapshot, WorkerSnapshot, WorkerState};

/// The longest request line, in bytes, newline excluded.
pub const MAX_LINE: usize = 64 * 1024;

/// The most clients served at once; one more gets a `busy` error and is
/// disconnected, so that clients cannot use up the parent's descriptors.
pub const MAX_CLIENTS: usize = 16;

/// How long a client may send nothing (or take to finish a line) before it
/// is disconnected.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a reply may wait for a client that does not read before the
/// client is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a pool's control socket goes, as the builder was told.
#[derive(Debug, Clone, Default)]
pub(crate) enum Setting {
    /// In [`default_dir`]; on trouble, warn and go without.
    #[default]
    Default,
    /// In this directory; on trouble, fail the start.
    Dir(PathBuf),
    /// No socket.
    Off,
}

/// A pool's listening control socket: ends the listener and removes the
/// socket file when dropped.
#[derive(Debug)]
pub(crate) struct Handle {
    path: PathBuf,
    listener: tokio::task::AbortHandle,
}

impl Handle {
    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Stops listening and removes the socket file (again, harmlessly).
    pub(crate) fn close(&self) {
        self.listener.abort();
        dir::remove_socket(&self.path);
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.close();
    }
}

/// A bound control socket whose listener has not started yet (the pool's
/// workers are starting); removed if dropped so.
#[derive(Debug)]
pub(crate) struct Bound {
    path: PathBuf,
    listener: Option<tokio::net::UnixListener>,
}

impl Bound {
    /// Starts the listener, which reaches the pool through a weak
    /// reference to `sup`.
    pub(crate) fn serve<O: serde::de::DeserializeOwned + Send + 'static>(
        mut self,
        sup: &Arc<Supervisor<O>>,
        cancel: Cancel,
    ) -> Handle {
        let path = std::mem::take(&mut self.path);
        let listener = self.listener.take();
        let target = Arc::new(ops::SupTarget::new(sup, cancel));
        // `bind` always sets the listener; `take` leaves `Drop` nothing to do.
        let task = match listener {
            Some(l) => tokio::spawn(server::serve(l, target, path.clone(), sup.ended())),
            None => tokio::spawn(async {}),
        };
        Handle {
            path,
            listener: task.abort_handle(),
        }
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if self.listener.is_some() {
            dir::remove_socket(&self.path);
        }
    }
}

/// Binds pool `pool`'s control socket as `setting` says, before its
/// workers start, so that a directory that cannot be used fails the start
/// before anything runs.
///
/// # Errors
/// [`StartError::Config`] when a directory chosen by the builder cannot be
/// used; trouble with the default directory is only logged.
pub(crate) fn bind(setting: &Setting, pool: &str) -> Result<Option<Bound>, StartError> {
    let (dir, required) = match setting {
        Setting::Off => return Ok(None),
        Setting::Dir(dir) => (dir.clone(), true),
        Setting::Default => match default_dir() {
            Ok(dir) => (dir, false),
            Err(e) => {
                tracing::warn!(pool, error = %e, "no control socket: no directory for it");
                return Ok(None);
            }
        },
    };
    match dir::bind(&dir, pool) {
        Ok((path, listener)) => Ok(Some(Bound {
            path,
            listener: Some(listener),
        })),
        Err(e) if required => Err(BuildError::new(format!(
            "cannot make the control socket in {}: {e}",
            dir.display()
        ))
        .into()),
        Err(e) => {
            tracing::warn!(pool, dir = %dir.display(), error = %e, "no control socket");
            Ok(None)
        }
    }
}
