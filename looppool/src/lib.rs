//! A pool of worker **processes**, each running its own single-threaded tokio
//! event loop, that exchange typed messages with a parent.
//!
//! Heavy asynchronous programs mix IO-bound work with CPU-bound steps that
//! are coupled to the event loop. One process is not enough, and a thread
//! pool does not fit because the CPU work needs the loop. `looppool` starts N
//! worker processes; each runs its own loop, holds its own (not necessarily
//! `Send`) state, and handles many tasks at once. Processes also isolate
//! crashes (`panic = "abort"`, FFI faults, OOM), let non-thread-safe native
//! libraries be used in parallel, and give per-worker memory that can be
//! recycled.
//!
//! # Quick example
//!
//! ```no_run
//! use std::rc::Rc;
//! use looppool::{BoxError, InitContext, Output, Pool, TaskContext, Worker};
//!
//! struct Doubler;
//!
//! impl Worker for Doubler {
//!     const NAME: &'static str = "doubler";
//!     type Init = ();
//!     type Task = u64;
//!     type Output = u64;
//!
//!     async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> {
//!         Ok(Doubler)
//!     }
//!
//!     async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
//!         cx.emit(2 * x).await?;
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // In a process the pool started, this runs the worker and never returns.
//!     looppool::worker_main!(Doubler);
//!
//!     let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//!     rt.block_on(async {
//!         let (pool, mut outputs) = Pool::<Doubler>::builder().workers(2).start().await?;
//!         assert_eq!(pool.call(21).await?, 42);
//!         for x in 0..10 {
//!             pool.submit(x).await?;
//!         }
//!         let mut sum = 0;
//!         for _ in 0..10 {
//!             if let Some(Output::Value { value, .. }) = outputs.next().await {
//!                 sum += value;
//!             }
//!         }
//!         assert_eq!(sum, 90);
//!         pool.shutdown().await;
//!         Ok(())
//!     })
//! }
//! ```
//!
//! # How it works
//!
//! The pool starts each worker by executing a program (by default the current
//! executable, `/proc/self/exe`) with an environment variable naming the
//! [`Worker`] to run; [`worker_main!`] at the top of `main` turns such a
//! process into a worker. Each worker is connected to the parent by its own
//! Unix socketpair carrying length-delimited frames: tasks, outputs,
//! completions and credits, with a handshake that checks the protocol
//! version and the message types.
//!
//! Every queue is bounded by credits, as the original Python package's two
//! semaphores did: each worker holds at most `max_tasks / workers` queued plus
//! running tasks ([`Pool::submit`] waits, [`Pool::try_submit`] returns the
//! task in a *full* error), and at most `max_results / workers` outputs may
//! wait for the parent's consumer ([`TaskContext::emit`] waits,
//! [`TaskContext::try_emit`] returns *full*). No output is ever dropped.
//!
//! # Failure semantics
//!
//! | what happens | a `submit`ted task | a `call` |
//! |---|---|---|
//! | the handler returns `Err` or panics | an [`Output::Failed`] item; the worker carries on | [`CallError::Task`] |
//! | the worker process dies (killed, `abort`, `exit`) | an [`Output::Lost`] item naming worker, pid and exit status | [`CallError::WorkerLost`] |
//! | the worker breaks the protocol (garbage, oversize frame, undecodable output) | the connection is closed, the worker killed and replaced; its tasks are [`Output::Lost`] with [`LossCause::Protocol`] | [`CallError::WorkerLost`] |
//! | the pool is shut down | runs to completion first | runs to completion first |
//! | a shutdown deadline passes | [`Output::Lost`] with [`LossCause::ShutdownDeadline`] | [`CallError::WorkerLost`] |
//! | the pool is dropped | [`Output::Lost`] with [`LossCause::PoolKilled`] | (no call can be pending) |
//! | the worker's loop stops answering heartbeats ([`PoolBuilder::heartbeat`]) | the worker is killed and replaced; [`Output::Lost`] with [`LossCause::Unresponsive`] | [`CallError::WorkerLost`] |
//! | the task runs past [`PoolBuilder::task_timeout`] | its handler is dropped; an [`Output::Failed`] item | [`CallError::Task`] |
//! | the worker is recycled ([`PoolBuilder::recycle_after_tasks`], [`PoolBuilder::recycle_above_memory`]) or removed by [`Pool::resize`] | it drains first: every task it holds completes | completes |
//!
//! With [`PoolBuilder::retry_lost`]`(n)`, a task lost with its worker is
//! first re-sent to a live worker, up to `n` times, under its original
//! [`TaskId`]; only then is it reported lost. Use it for idempotent work only:
//! a lost task may have run partly before its worker died.
//!
//! Every task accepted by `submit` ends in exactly one of: its outputs
//! followed by completion (no item), a `Failed` item, or a `Lost` item. A
//! dead worker is replaced under the [`RestartPolicy`]; tasks sent to other
//! workers are not affected. Compared with other pools:
//! `multiprocessing.Pool` hangs on a dead worker, `ProcessPoolExecutor`
//! breaks the whole pool and fails every pending task, and the original
//! looppool keeps routing to the dead worker. Here only the dead worker's own
//! tasks fail, each with a reason, and nothing waits forever.
//!
//! Workers never outlive the parent: each is started with a parent-death
//! signal (SIGKILL, armed from a thread that lives as long as the process),
//! and exits when its connection ends.
//!
//! # Testing your workers
//!
//! Under `cargo test` the current executable is the test harness, so point
//! the pool at a binary of your package that runs your workers:
//!
//! ```toml
//! # Cargo.toml
//! [[bin]]
//! name = "my-workers"
//! ```
//!
//! ```text
//! // src/bin/my-workers.rs
//! fn main() {
//!     looppool::worker_main!(my_crate::Doubler);
//! }
//!
//! // tests/doubler.rs
//! #[tokio::test]
//! async fn doubles() {
//!     let (pool, _outputs) = looppool::Pool::<my_crate::Doubler>::builder()
//!         .program(env!("CARGO_BIN_EXE_my-workers"))
//!         .workers(2)
//!         .start()
//!         .await
//!         .unwrap();
//!     assert_eq!(pool.call(21).await.unwrap(), 42);
//!     pool.shutdown().await;
//! }
//! ```
//!
//! This crate's own integration tests (`looppool-tests`) are built this way.
//!
//! # Layout
//!
//! - [`pool`](Pool): the parent's handle, its builder and the output stream;
//!   per-worker *lanes* hold each worker's queue and credits.
//! - [`worker`](Worker): the trait users implement and the worker process's
//!   runtime.
//! - `supervisor`: starts workers, notices their end, reports lost tasks and
//!   restarts them.
//! - `transport`: frames over a byte stream (a socketpair locally), the seam
//!   for other transports.
//! - `codec` and `protocol`: framing, and the wire messages.
//! - `sys`: the only module with `unsafe` (parent-death signal, descriptors).
//! - [`metrics`]: stats, resource reports, statsd and Prometheus, the
//!   blocked-loop detector, and worker logs forwarded to the parent.
//!
//! # Feature flags
//!
//! - `statsd` (on by default): `PoolBuilder::statsd` sends reports to a
//!   statsd server, with the `cadence` crate.
//! - `prometheus`: `PoolBuilder::prometheus` serves the pool's figures at
//!   `/metrics`, encoded with the `prometheus-client` crate.
//!
//! # Platform support
//!
//! Linux. The parent-death signal and `/proc/self/exe` are Linux features.
#![doc(test(attr(deny(warnings), allow(dead_code))))]
#![deny(unsafe_code)]

mod codec;
mod error;
pub mod metrics;
mod pool;
mod protocol;
mod supervisor;
mod sys;
pub mod transport;
pub mod worker;

/// Entry points for the fuzz targets in `fuzz/`: thin wrappers around the
/// private wire decoders. Only with the `fuzzing` feature; not public API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use crate::codec::{self, FrameDecoder, HEADER_LEN};
    use crate::pool::connection::{read_loop, ReadEnd};
    use crate::pool::lane::Lane;
    use crate::protocol::{FromWorker, ToWorker};
    use crate::transport::FrameReader;

    /// Splits `data` into frames of at most `max_frame` bytes and decodes
    /// each as a message of either direction, and its payload as a few
    /// types. Returns how many frames were whole. Panics only on a broken
    /// invariant (a body over the limit, or bytes counted twice).
    pub fn frames(data: &[u8], max_frame: usize) -> usize {
        let max_frame = max_frame.max(1);
        let mut decoder = FrameDecoder::new(max_frame);
        let mut used = 0;
        let mut n = 0;
        while let Ok(Some(body)) = decoder.next_frame(data) {
            assert!(!body.is_empty() && body.len() <= max_frame);
            used += HEADER_LEN + body.len();
            assert!(used <= data.len());
            from_worker(body);
            to_worker(body);
            n += 1;
        }
        assert!(decoder.wanted(data) <= HEADER_LEN + max_frame);
        n
    }

    /// Decodes `body` as a worker → parent message, and its payload (if it
    /// has one) as a `u64`, a `String` and a `Vec<u8>`. True if it decoded.
    pub fn from_worker(body: &[u8]) -> bool {
        match FromWorker::decode(body) {
            Ok(FromWorker::Output { payload, .. } | FromWorker::OutputDone { payload, .. }) => {
                payloads(payload);
                true
            }
            Ok(_) => true,
            Err(e) => {
                let _ = e.to_string();
                false
            }
        }
    }

    /// Decodes `body` as a parent → worker message, and its payload (if it
    /// has one) as a few types. True if it decoded.
    pub fn to_worker(body: &[u8]) -> bool {
        match ToWorker::decode(body) {
            Ok(ToWorker::Task { payload, .. } | ToWorker::Init(_, payload)) => {
                payloads(payload);
                true
            }
            Ok(_) => true,
            Err(e) => {
                let _ = e.to_string();
                false
            }
        }
    }

    fn payloads(payload: &[u8]) {
        let _ = codec::get_serde::<u64>(payload);
        let _ = codec::get_serde::<String>(payload);
        let _ = codec::get_serde::<Vec<u8>>(payload);
        let _ = codec::get_serde::<(u32, Option<String>, bool)>(payload);
    }

    /// Feeds `data` to the parent's reader for a worker that holds `tasks`
    /// tasks (at most 16), as if the worker had sent it, in reads of at most
    /// `chunk` bytes. Returns how the reader ended: `"bye"`, `"eof"` or
    /// `"broken: <why>"`.
    pub fn parent_reader(data: &[u8], tasks: u8, chunk: usize, max_frame: usize) -> String {
        let lane = Arc::new(Lane::<u64>::new(0, 16, max_frame.max(1), 0));
        let generation = lane.open(1, None, 16).expect("a new lane opens");
        for _ in 0..tasks.min(16) {
            let _ = lane.try_push(&(), None);
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let io = Chunks {
            data: data.to_vec(),
            at: 0,
            chunk: chunk.max(1),
        };
        let reader = FrameReader::new(Box::pin(io), max_frame.max(1));
        let mut fut = std::pin::pin!(read_loop(lane.clone(), generation, reader, tx));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let end = loop {
            if let Poll::Ready(end) = fut.as_mut().poll(&mut cx) {
                break end;
            }
        };
        while rx.try_recv().is_ok() {}
        assert!(lane.in_flight() <= 16);
        match end {
            ReadEnd::Bye => "bye".into(),
            ReadEnd::Eof => "eof".into(),
            ReadEnd::Broken(why) => format!("broken: {why}"),
        }
    }

    /// An in-memory stream read in pieces of at most `chunk` bytes.
    struct Chunks {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl tokio::io::AsyncRead for Chunks {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = (self.data.len() - self.at)
                .min(self.chunk)
                .min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }
}

pub use codec::DEFAULT_MAX_FRAME;
pub use error::{
    BuildError, CallError, EmitError, EmitErrorKind, ExitStatus, LossCause, StartError,
    SubmitError, SubmitErrorKind, TaskError, WorkerLost,
};
pub use metrics::{PoolStats, WorkerReport, WorkerStats};
pub use pool::{Output, Outputs, Pool, PoolBuilder, ShutdownReport, Signals, TaskId};
pub use supervisor::{RecycleReason, RestartPolicy, WorkerEvent};
pub use worker::{BoxError, Emitter, InitContext, TaskContext, Worker};
