//! Operating a running pool: rolling restarts, upgrades, and its control
//! socket.

use std::path::{Path, PathBuf};

use super::Pool;
use crate::error::RestartError;
use crate::worker::Worker;

impl<W: Worker> Pool<W> {
    /// Replaces every worker with a fresh process of the same program, one
    /// at a time, without failing or losing a task.
    ///
    /// For each worker in turn: a replacement process is started beside it
    /// and must complete the handshake and [`Worker::init`] (within the
    /// [start timeout](crate::PoolBuilder::start_timeout)); then the old
    /// worker drains as a [recycled](crate::PoolBuilder::recycle_after_tasks)
    /// one does (it takes no new tasks, finishes those it holds, and
    /// exits), the replacement takes its index, and the next worker follows.
    /// Meanwhile round-robin sends go to the other workers, and sends
    /// targeted at the draining one wait for its replacement; the pool runs
    /// one process more than its size for the time of one handover. Each
    /// handover is a [`WorkerEvent::Recycled`](crate::WorkerEvent::Recycled)
    /// with [`RecycleReason::RollingRestart`](crate::RecycleReason::RollingRestart).
    ///
    /// If a replacement fails to start, the restart stops there: it is
    /// stopped, the worker it was for and those after it keep serving, and
    /// the [`RestartError`] says which were replaced. Resizes wait for a
    /// rolling restart to end, and one rolling restart for another.
    ///
    /// # Errors
    /// [`RestartError`], with [`StartError::Closed`](crate::StartError::Closed)
    /// as its cause when the pool shuts down meanwhile, and a
    /// [`StartError::Config`](crate::StartError::Config) cause for a pool
    /// whose workers come through a [connector](crate::PoolBuilder::connector),
    /// which it does not start itself: a connector starts the one worker of
    /// an index, not a second one beside it (the `looppool-nats` crate docs
    /// say why its broker layout cannot hold two, and how to move its
    /// workers to new code instead).
    ///
    /// # Cancel safety
    /// The restart runs as a task of its own. Dropping the future stops it
    /// after the worker being replaced: that worker's replacement still
    /// takes over once it has started, or is stopped if it fails; no
    /// process is left half-started.
    ///
    /// ```no_run
    /// # async fn demo(pool: looppool::Pool<impl looppool::Worker>) {
    /// match pool.rolling_restart().await {
    ///     Ok(()) => println!("every worker runs a fresh process"),
    ///     Err(e) => eprintln!("{e}: {}", e.cause()),
    /// }
    /// # }
    /// ```
    pub async fn rolling_restart(&self) -> Result<(), RestartError> {
        self.inner.sup.rolling_restart(None).await
    }

    /// Moves every worker to `program`, one at a time, as
    /// [`rolling_restart`](Self::rolling_restart) does: each replacement
    /// runs `program` (with the pool's arguments and environment) and must
    /// pass the handshake, which checks that it runs the same
    /// [`Worker`] types, and `init`. Workers the pool starts later (restarts,
    /// recycling, growth) run `program` once every worker has moved; after
    /// an upgrade that stopped part-way, each worker index keeps to the
    /// program it runs, and growth to the pool's previous program.
    ///
    /// # Errors
    /// As [`rolling_restart`](Self::rolling_restart): a `program` that does
    /// not exist, is not a worker program, or whose `init` fails stops the
    /// upgrade at its first worker, and every worker keeps its previous
    /// process and program.
    ///
    /// # Cancel safety
    /// As [`rolling_restart`](Self::rolling_restart).
    pub async fn upgrade(&self, program: impl Into<PathBuf>) -> Result<(), RestartError> {
        self.inner.sup.rolling_restart(Some(program.into())).await
    }

    /// The path of the pool's [control socket](crate::control), or `None`
    /// when it is off
    /// ([`no_control_socket`](crate::PoolBuilder::no_control_socket), or
    /// the default directory could not be used).
    ///
    /// ```no_run
    /// # async fn demo(pool: looppool::Pool<impl looppool::Worker>) {
    /// if let Some(path) = pool.control_socket() {
    ///     println!("looppool top --socket {}", path.display());
    /// }
    /// # }
    /// ```
    pub fn control_socket(&self) -> Option<&Path> {
        self.inner.control_socket.as_ref().map(|c| c.path())
    }

    /// Stops the control socket's listener and removes its file, once the
    /// pool has shut down.
    pub(super) fn close_control(&self) {
        if let Some(socket) = &self.inner.control_socket {
            socket.close();
        }
    }
}
