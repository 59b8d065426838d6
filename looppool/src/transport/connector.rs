//! Reaching workers some other way than a local child process.
//!
//! By default a pool starts each worker as a child process and talks to it
//! over a socketpair. A [`Connector`] replaces that step: it hands the pool a
//! [`Link`] (a [`Connection`] that speaks looppool's frames, and a [`Peer`]
//! that can stop the worker and tell how it ended). Everything above it (the
//! handshake, credits, supervision, retries, events, statistics, shutdown)
//! stays the same. A broker transport is one such connector.

use std::future::Future;
use std::io;
use std::pin::Pin;

use super::Connection;
use crate::event::ExitStatus;

/// The future a [`Connector`] returns.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Link>> + Send + 'a>>;

/// Reaches worker `index` of a pool, in place of starting a child process.
///
/// The pool calls [`connect`](Connector::connect) once per worker start
/// (including restarts and workers added by a resize) and bounds each call,
/// with the handshake that follows, by the builder's `start_timeout`. The
/// worker at the far end must run [`crate::worker::serve`] on its end of the
/// connection.
///
/// # Examples
///
/// An in-process connector, as a test might use one: each worker is a thread
/// with its own worker runtime, joined through an in-memory connection.
///
/// ```
/// use looppool::transport::{Connection, ConnectFuture, Connector, Link, Peer};
/// use looppool::ExitStatus;
/// # use std::rc::Rc;
/// # use looppool::{BoxError, InitContext, TaskContext, Worker};
/// # struct Doubler;
/// # impl Worker for Doubler {
/// #     const NAME: &'static str = "doubler";
/// #     type Init = ();
/// #     type Task = u64;
/// #     type Output = u64;
/// #     async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
/// #     async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
/// #         cx.emit(2 * x).await?;
/// #         Ok(())
/// #     }
/// # }
///
/// struct Threads;
///
/// struct ThreadPeer(Option<std::thread::JoinHandle<i32>>);
///
/// impl Peer for ThreadPeer {
///     fn kill(&mut self) {}
///     fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
///         match &self.0 {
///             Some(h) if !h.is_finished() => Ok(None),
///             _ => self.wait().map(Some),
///         }
///     }
///     fn wait(&mut self) -> std::io::Result<ExitStatus> {
///         let code = self.0.take().map_or(Ok(0), |h| h.join()).unwrap_or(101);
///         Ok(ExitStatus::Code(code))
///     }
/// }
///
/// impl Connector for Threads {
///     fn connect(&self, _index: usize) -> ConnectFuture<'_> {
///         Box::pin(async {
///             let (ours, theirs) = Connection::pair(64 * 1024);
///             let thread = std::thread::spawn(move || {
///                 looppool::worker::run_worker_runtime(looppool::worker::serve::<Doubler>(theirs))
///             });
///             Ok(Link { connection: ours, peer: Box::new(ThreadPeer(Some(thread))) })
///         })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (pool, _outputs) = looppool::Pool::<Doubler>::builder()
///     .workers(2)
///     .connector(Threads)
///     .start()
///     .await?;
/// assert_eq!(pool.call(21).await?, 42);
/// pool.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub trait Connector: Send + Sync + 'static {
    /// Starts or waits for worker `index` and returns a link to it. The
    /// worker says hello first, over the link's connection.
    fn connect(&self, index: usize) -> ConnectFuture<'_>;

    /// How error messages name what this connector reaches (a program, a
    /// broker address).
    fn describe(&self) -> String {
        std::any::type_name::<Self>().to_owned()
    }
}

/// A worker reached by a [`Connector`].
pub struct Link {
    /// Carries the frames to and from the worker.
    pub connection: Connection,
    /// Stops the worker and tells how it ended.
    pub peer: Box<dyn Peer>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

/// The life of one worker behind a [`Link`], as the supervisor sees it.
///
/// [`std::process::Child`] is a peer: a connector that starts local
/// processes returns them as they are.
pub trait Peer: Send + 'static {
    /// Stops the worker at once, without draining (SIGKILL for a process).
    fn kill(&mut self);

    /// How the worker ended, or `None` while it still runs. The supervisor
    /// polls this after the connection ended, and kills a worker that has
    /// not ended two seconds later.
    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>>;

    /// Blocks until the worker ended. Called only after [`kill`](Peer::kill).
    fn wait(&mut self) -> io::Result<ExitStatus>;

    /// The id of the worker's process, when the worker is a child process
    /// of this one that only this peer waits for (reaps).
    ///
    /// The pool then watches the process itself (a pidfd) and takes its
    /// exit as the end of the connection, even if a process it forked still
    /// holds the connection open; what the worker wrote before it exited is
    /// still read. `None` (the default), as for a worker reached through a
    /// broker: the end of the connection alone says that the worker ended.
    fn process_id(&self) -> Option<u32> {
        None
    }

    /// Why the transport lost the worker, when it knows more than the exit
    /// status says (a broker stream deleted, a worker's heartbeats lost):
    /// the tasks it held are then reported lost with
    /// [`LossCause::Transport`](crate::LossCause::Transport). Asked once,
    /// after the worker ended; `None` (the default) leaves the cause to the
    /// pool.
    fn loss_cause(&mut self) -> Option<String> {
        None
    }
}

impl Peer for std::process::Child {
    fn kill(&mut self) {
        let _ = std::process::Child::kill(self);
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        std::process::Child::try_wait(self).map(|s| s.map(ExitStatus::from))
    }

    fn wait(&mut self) -> io::Result<ExitStatus> {
        std::process::Child::wait(self).map(ExitStatus::from)
    }

    fn process_id(&self) -> Option<u32> {
        Some(self.id())
    }
}

/// Spawns `cmd` as a child tied to this process, as the pool spawns its
/// local workers: it receives SIGKILL when this process dies, however it
/// dies, so it never outlives its parent. For connectors that start local
/// processes.
///
/// # Errors
/// The operating system's error when the program cannot be executed.
pub async fn spawn_tied_child(cmd: std::process::Command) -> io::Result<std::process::Child> {
    crate::sys::spawn_tied_child(cmd).await
}
