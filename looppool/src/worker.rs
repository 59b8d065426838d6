//! The worker side: the [`Worker`] trait users implement, and the process that runs it.
//!
//! A worker process runs one single-threaded tokio runtime. Its state lives on
//! that thread only, so it need not be `Send`; tasks run concurrently on the
//! loop, each as its own future.
//!
//! # Layout
//!
//! From the bottom up; a module uses only those above it in this list:
//!
//! - `process`: what the pool and a worker process agree on outside the
//!   wire: environment markers, exit codes.
//! - `outbox`: the frames going to the parent, the output-credit window and
//!   the write loop.
//! - `panic`: catching panics around user code, their message, the hook.
//! - `watchdog`: the blocked-loop detector's state and thread.
//! - `shared`: the state of one worker process (its outbox, task counts,
//!   the stop, the watch).
//! - `task`: running one task: its cell, its first poll, its completion.
//! - `context`: what user code sees ([`Emitter`], [`InitContext`],
//!   [`TaskContext`]).
//! - `logging`: `tracing` events and stray panics forwarded to the parent.
//! - `report`: the periodic resource report.
//! - `observe`: what the parent asked to observe, and starting it.
//! - `runtime`: [`serve`]: the handshake, the initialiser, the read loop,
//!   the drain.
//! - `entry`: how a process becomes a worker, and [`run_worker_runtime`].

use std::future::Future;
use std::rc::Rc;

use serde::{de::DeserializeOwned, Serialize};

mod cancel;
mod context;
pub(crate) mod entry;
mod logging;
mod observe;
mod outbox;
mod panic;
pub(crate) mod process;
mod report;
pub(crate) mod runtime;
mod shared;
mod task;
mod watchdog;

pub use context::{Emitter, InitContext, TaskContext};
pub use entry::run_worker_runtime;
pub use process::WORKER_ENV;
pub use runtime::serve;

#[doc(hidden)]
pub mod __private {
    pub use super::entry::{requested_worker, run, unknown_worker};
}

/// The error type handlers and initialisers return: anything that converts
/// with `?`. Only its message (and the messages of its sources) crosses to the
/// parent.
pub type BoxError = Box<dyn std::error::Error>;

/// The code that runs inside each worker process.
///
/// Implement it for your worker's state. The pool creates one value per
/// process with [`init`](Worker::init), then calls [`handle`](Worker::handle)
/// for every task sent to that worker. Handlers of one worker run concurrently
/// on its event loop and start in the order their tasks were sent.
///
/// # Examples
///
/// ```
/// use std::rc::Rc;
/// use looppool::{BoxError, InitContext, TaskContext, Worker};
///
/// struct Doubler;
///
/// impl Worker for Doubler {
///     const NAME: &'static str = "doubler";
///     type Init = ();
///     type Task = u64;
///     type Output = u64;
///
///     async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> {
///         Ok(Doubler)
///     }
///
///     async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
///         cx.emit(2 * x).await?;
///         Ok(())
///     }
/// }
/// ```
pub trait Worker: Sized + 'static {
    /// The name under which the worker program knows this type. The pool
    /// passes it to the program it starts, and
    /// [`worker_main!`](crate::worker_main) dispatches on it.
    const NAME: &'static str;

    /// Bump this when the message types change in a way that old and new
    /// builds cannot share: the handshake then refuses a mismatched program.
    const VERSION: u32 = 0;

    /// Sent once by the parent to every worker, for its initialiser (this
    /// replaces sharing data through `fork`). Give it with
    /// [`PoolBuilder::init`](crate::PoolBuilder::init): a pool whose `Init`
    /// is not `()` refuses to start without it (or an explicit
    /// [`init_default`](crate::PoolBuilder::init_default)). It needs no
    /// `Default`.
    type Init: Serialize + DeserializeOwned + 'static;

    /// A task, sent by the parent.
    type Task: Serialize + DeserializeOwned + 'static;

    /// An output, emitted by the worker; zero, one or many per task, or
    /// unsolicited ones from background work.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Creates the worker's state, once per process, on the worker's loop.
    ///
    /// `cx` tells the worker its index and gives it an [`Emitter`] for
    /// outputs that belong to no task, which background work spawned here
    /// (with `tokio::task::spawn_local`) may keep.
    ///
    /// An error here is reported to the parent as a start-up failure, not as
    /// a crash.
    fn init(
        init: Self::Init,
        cx: InitContext<Self::Output>,
    ) -> impl Future<Output = Result<Self, BoxError>>;

    /// Handles one task. Emit outputs through `cx`; return an error (or
    /// panic) to report the task failed: the worker itself carries on.
    fn handle(
        self: Rc<Self>,
        task: Self::Task,
        cx: TaskContext<Self::Output>,
    ) -> impl Future<Output = Result<(), BoxError>>;

    /// Runs once when the pool shuts down, after the running tasks finished
    /// and before the worker's last outputs are flushed.
    fn shutdown(self: Rc<Self>) -> impl Future<Output = ()> {
        async {}
    }
}

/// Turns a process started by a pool into a worker; does nothing otherwise.
///
/// Put it first in `main`, before anything else runs, listing every
/// [`Worker`] type this program can run. In a process that a pool started,
/// it runs the requested worker and exits; in any other process it returns.
///
/// `main` may be a plain `fn main` or a `#[tokio::main]` one (either
/// flavour), and it may be the first line of a `#[tokio::test]`: inside a
/// runtime, the worker runs on a thread of its own with its own
/// current-thread runtime, and the process exits from there, so the rest of
/// `main` never runs in a worker. A program without it cannot start pools
/// from a process a pool started: its `start` fails with
/// [`StartError::NotAWorker`](crate::StartError::NotAWorker) rather than
/// start the program again in every worker.
///
/// ```no_run
/// # use std::rc::Rc;
/// # use looppool::{BoxError, InitContext, TaskContext, Worker};
/// # struct Doubler;
/// # impl Worker for Doubler {
/// #     const NAME: &'static str = "doubler";
/// #     type Init = (); type Task = u64; type Output = u64;
/// #     async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
/// #     async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
/// #         cx.emit(2 * x).await?; Ok(())
/// #     }
/// # }
/// #[tokio::main]
/// async fn main() {
///     looppool::worker_main!(Doubler);
///     // ... the parent's code: start a pool of Doublers ...
/// }
/// ```
#[macro_export]
macro_rules! worker_main {
    ($($worker:ty),+ $(,)?) => {{
        if let ::std::option::Option::Some(name) = $crate::worker::__private::requested_worker() {
            $(
                if name == <$worker as $crate::Worker>::NAME {
                    $crate::worker::__private::run::<$worker>();
                }
            )+
            $crate::worker::__private::unknown_worker(
                &name,
                &[$(<$worker as $crate::Worker>::NAME),+],
            );
        }
    }};
}

/// `W`'s type as its program names it, without module paths
/// (`Doubler`, `Echo<Job>`), for messages that tell what to write.
pub(crate) fn short_type_name<W: ?Sized>() -> String {
    let full = std::any::type_name::<W>();
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            // A path's prefix: keep only what follows its last `::`.
            chars.next();
            segment.clear();
        } else if c.is_alphanumeric() || c == '_' {
            segment.push(c);
        } else {
            out.push_str(&segment);
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(&segment);
    out
}

/// A stable fingerprint of a worker's message types, checked at the handshake.
pub(crate) fn fingerprint<W: Worker>() -> u64 {
    // FNV-1a: stable across builds and compilers, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    };
    feed(W::NAME.as_bytes());
    feed(&W::VERSION.to_le_bytes());
    feed(std::any::type_name::<W::Init>().as_bytes());
    feed(std::any::type_name::<W::Task>().as_bytes());
    feed(std::any::type_name::<W::Output>().as_bytes());
    hash
}
