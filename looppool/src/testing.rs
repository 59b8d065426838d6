//! Running a [`Worker`] inside a test, without a pool or a worker program.
//!
//! [`TestWorker`] starts one worker on a thread of its own, with its own
//! current-thread tokio runtime and `LocalSet` (handlers need not be
//! `Send`), and speaks the pool's wire protocol to it over an in-memory
//! [`Connection::pair`]: the init value, the tasks and the outputs are
//! serialized as a pool would serialize them, so a type that does not
//! round-trip fails here as it would in a pool.
//!
//! Unlike a worker process, it leaves the test process alone: it installs no
//! panic hook, changes no signal disposition, reads and changes no
//! environment variable, installs no global `tracing` subscriber, does not
//! rename the thread it runs on and never exits the process. A later failing
//! `assert_eq!` in the test prints its message as usual, and Ctrl-C still
//! stops `cargo test`.
//!
//! What it does not have: several workers, restarts, task timeouts,
//! reports, log forwarding and the blocked-loop watchdog; for those, test
//! with a [`Pool`](crate::Pool) started on a worker program (see the crate's
//! "Testing your workers").
//!
//! ```
//! use std::rc::Rc;
//! use looppool::testing::TestWorker;
//! use looppool::{BoxError, InitContext, TaskContext, Worker};
//!
//! struct Multiplier(u64);
//!
//! impl Worker for Multiplier {
//!     const NAME: &'static str = "multiplier";
//!     type Init = u64;
//!     type Task = u64;
//!     type Output = u64;
//!
//!     async fn init(factor: u64, _: InitContext<u64>) -> Result<Self, BoxError> {
//!         Ok(Multiplier(factor))
//!     }
//!
//!     async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
//!         if x == 0 {
//!             return Err("zero".into());
//!         }
//!         cx.emit(self.0 * x).await?;
//!         cx.emit(self.0 * x + 1).await?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let w = TestWorker::<Multiplier>::start(3).await?;
//! assert_eq!(w.run(7).await?, vec![21, 22]);
//! assert_eq!(w.run(0).await.unwrap_err().message(), "zero");
//! w.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::marker::PhantomData;

use tokio::sync::{oneshot, Mutex};

use crate::codec::{self, DEFAULT_MAX_FRAME};
use crate::protocol::{self, kind, FromWorker, Init, PROTOCOL_VERSION};
use crate::transport::{self, Connection, FrameReader, WriteHalf};
use crate::worker::runtime::{serve_hosted, Host};
use crate::{StartError, TaskError, TaskId, Worker};

/// The output window the harness gives its worker.
const OUTPUT_CREDITS: u32 = 1024;
/// The frame bytes one output credit covers.
const CREDIT_BYTES: u64 = 64 * 1024;
/// Bytes the in-memory connection buffers per direction.
const BUFFER: usize = 256 * 1024;

/// One worker `W` running in the test process, on a thread of its own.
///
/// Start it with [`start`](Self::start), run tasks one at a time with
/// [`run`](Self::run), and end it with [`shutdown`](Self::shutdown), which
/// runs the worker's [`shutdown`](Worker::shutdown) hook. Dropped without
/// `shutdown`, the worker drains its running task and ends in the
/// background. See the [module documentation](self).
pub struct TestWorker<W: Worker> {
    parent: Mutex<Parent>,
    ended: oneshot::Receiver<i32>,
    _worker: PhantomData<fn() -> W>,
}

/// The harness's end of the connection.
struct Parent {
    reader: FrameReader,
    writer: WriteHalf,
    /// Outputs emitted outside any task, kept for
    /// [`TestWorker::take_unsolicited`].
    unsolicited: Vec<Vec<u8>>,
    /// The next task's sequence number.
    seq: u64,
}

impl<W: Worker> TestWorker<W> {
    /// Starts worker `W` and runs its initialiser on `init`.
    ///
    /// Fails with [`StartError::Init`] when the initialiser returns an error
    /// or panics, and with [`StartError::Handshake`] when the worker's end
    /// went away or the init value does not serialize.
    pub async fn start(init: W::Init) -> Result<Self, StartError> {
        let handshake = |reason: String| StartError::Handshake { worker: 0, reason };
        let mut payload = Vec::new();
        codec::put_serde(&mut payload, &init)
            .map_err(|e| handshake(format!("cannot serialize the init value: {e}")))?;

        let (ours, theirs) = Connection::pair(BUFFER);
        let (tx, ended) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("looppool-test-{}", W::NAME))
            .spawn(move || {
                let code = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => tokio::task::LocalSet::new()
                        .block_on(&runtime, serve_hosted::<W>(theirs, Host::Test)),
                    Err(e) => {
                        eprintln!("looppool test worker: cannot build its runtime: {e}");
                        1
                    }
                };
                let _ = tx.send(code);
            })
            .map_err(|e| handshake(format!("cannot start the worker's thread: {e}")))?;

        let (reader, writer) = ours.into_split();
        let mut parent = Parent {
            reader: FrameReader::new(reader, DEFAULT_MAX_FRAME),
            writer,
            unsolicited: Vec::new(),
            seq: 0,
        };
        match parent.next().await.map_err(handshake)? {
            Frame::Hello(protocol) if protocol == PROTOCOL_VERSION => {}
            other => return Err(handshake(format!("expected a hello, got {other:?}"))),
        }
        let init = Init {
            index: 0,
            pool: format!("test-{}", W::NAME),
            output_credits: OUTPUT_CREDITS,
            max_frame: DEFAULT_MAX_FRAME as u64,
            report_interval_ms: 0,
            blocked_threshold_ms: 0,
            // Off: no global subscriber is installed.
            log_level: 0,
            task_timeout_ms: 0,
            credit_bytes: CREDIT_BYTES,
            cancel_grace_ms: 1000,
            // An in-memory connection: blobs travel inline.
            blob_threshold: 0,
        };
        let mut frame = Vec::new();
        protocol::put_init(&mut frame, &init, &payload, usize::MAX)
            .map_err(|e| handshake(e.to_string()))?;
        parent.send(&frame).await.map_err(handshake)?;
        match parent.next().await.map_err(handshake)? {
            Frame::Ready => Ok(TestWorker {
                parent: Mutex::new(parent),
                ended,
                _worker: PhantomData,
            }),
            Frame::InitFailed(message) => Err(StartError::Init { worker: 0, message }),
            other => Err(handshake(format!("expected ready, got {other:?}"))),
        }
    }

    /// Runs one task to its end; its outputs in the order it emitted them,
    /// or the [`TaskError`] its handler returned (or panicked with).
    ///
    /// Calls from several tasks take turns. A worker that went away ends
    /// the call with a `TaskError` saying so.
    pub async fn run(&self, task: W::Task) -> Result<Vec<W::Output>, TaskError> {
        let mut parent = self.parent.lock().await;
        let seq = parent.seq;
        parent.seq += 1;
        let fail = |message: String, panicked: bool| TaskError {
            worker: 0,
            task: TaskId::new(0, seq),
            message,
            panicked,
        };
        let mut frame = Vec::new();
        let encoded = match protocol::put_task(&mut frame, 0, &task, DEFAULT_MAX_FRAME) {
            // The connection is in memory: blobs travel inline.
            Err(_) if crate::blob::wire::take_wanted() => {
                crate::blob::wire::with_sink(None, Vec::new(), || {
                    protocol::put_task(&mut frame, 0, &task, DEFAULT_MAX_FRAME)
                })
                .0
            }
            other => other,
        };
        encoded.map_err(|e| fail(format!("cannot serialize the task: {e}"), false))?;
        parent.send(&frame).await.map_err(|e| fail(e, false))?;
        let mut outputs = Vec::new();
        loop {
            let (last, payload) = match parent.next().await.map_err(|e| fail(e, false))? {
                Frame::Output(Some(0), payload) => (false, payload),
                Frame::OutputDone(payload) => (true, payload),
                Frame::Done => return Ok(outputs),
                Frame::Failed(message, panicked) => return Err(fail(message, panicked)),
                other => {
                    return Err(fail(
                        format!("unexpected message from the worker: {other:?}"),
                        false,
                    ))
                }
            };
            let output = codec::get_serde::<W::Output>(&payload)
                .map_err(|e| fail(format!("cannot deserialize an output: {e}"), false))?;
            outputs.push(output);
            if last {
                return Ok(outputs);
            }
        }
    }

    /// The outputs the worker emitted outside any task (through its
    /// [`InitContext`](crate::InitContext)'s emitter) that arrived while a
    /// task ran, in order; taking them empties the list.
    pub async fn take_unsolicited(&self) -> Vec<W::Output> {
        let mut parent = self.parent.lock().await;
        std::mem::take(&mut parent.unsolicited)
            .iter()
            .filter_map(|payload| codec::get_serde(payload).ok())
            .collect()
    }

    /// Stops the worker: runs its shutdown hook and waits for its thread's
    /// runtime to end. Returns what a worker process would exit with: 0
    /// after a clean stop.
    pub async fn shutdown(self) -> i32 {
        let mut parent = self.parent.into_inner();
        let mut stop = Vec::new();
        protocol::put_simple(&mut stop, kind::STOP, None);
        if parent.send(&stop).await.is_ok() {
            // Until its goodbye (or the end of the connection).
            while let Ok(frame) = parent.next().await {
                if matches!(frame, Frame::Bye) {
                    break;
                }
            }
        }
        drop(parent);
        self.ended.await.unwrap_or(101)
    }
}

impl<W: Worker> std::fmt::Debug for TestWorker<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestWorker")
            .field("worker", &W::NAME)
            .finish()
    }
}

/// A message from the worker, owning what the harness keeps of it.
#[derive(Debug)]
enum Frame {
    Hello(u32),
    Ready,
    InitFailed(String),
    Output(Option<u32>, Vec<u8>),
    OutputDone(Vec<u8>),
    Done,
    Failed(String, bool),
    Bye,
}

impl Parent {
    /// Writes `frames` to the worker.
    async fn send(&mut self, frames: &[u8]) -> Result<(), String> {
        transport::write_batch(&mut self.writer, frames)
            .await
            .map_err(|e| format!("the worker went away: {e}"))
    }

    /// The worker's next message that is not a report, a log event, a pong
    /// or an unsolicited output; gives back the output credits its frames
    /// spend.
    async fn next(&mut self) -> Result<Frame, String> {
        loop {
            let mut credits = 0;
            let frame = loop {
                let body = match self.reader.next_frame() {
                    Ok(Some(body)) => body,
                    Ok(None) => break None,
                    Err(e) => return Err(format!("bad frame from the worker: {e}")),
                };
                let cost = protocol::output_cost(body.len(), CREDIT_BYTES, OUTPUT_CREDITS);
                let frame = match FromWorker::decode(body)
                    .map_err(|e| format!("bad message from the worker: {e}"))?
                {
                    FromWorker::Hello { protocol, .. } => Frame::Hello(protocol),
                    FromWorker::Ready => Frame::Ready,
                    FromWorker::InitFailed(message) => Frame::InitFailed(message),
                    FromWorker::Output {
                        slot: None,
                        payload,
                    } => {
                        credits += cost;
                        self.unsolicited.push(payload.to_vec());
                        continue;
                    }
                    FromWorker::Output { slot, payload } => {
                        credits += cost;
                        Frame::Output(slot, payload.to_vec())
                    }
                    FromWorker::OutputDone { payload, .. } => {
                        credits += cost;
                        Frame::OutputDone(payload.to_vec())
                    }
                    // Never sent: this harness sends no cancel.
                    FromWorker::Done(_) | FromWorker::Cancelled(_) => Frame::Done,
                    // Never sent: this harness times no task.
                    FromWorker::DoneTimed { .. } => Frame::Done,
                    FromWorker::Failed { failure, .. }
                    | FromWorker::FailedTimed { failure, .. } => {
                        credits += cost;
                        Frame::Failed(failure.message, failure.panicked)
                    }
                    FromWorker::Bye => Frame::Bye,
                    // Never sent: the worker was told to send blobs inline.
                    FromWorker::Blobs(_) => {
                        return Err("a frame with blobs over an in-memory connection".into())
                    }
                    FromWorker::Report(_) | FromWorker::Log(_) | FromWorker::Pong(_) => continue,
                };
                break Some(frame);
            };
            if credits > 0 {
                let mut frame = Vec::new();
                protocol::put_simple(&mut frame, kind::CREDIT, Some(credits.into()));
                // A worker that went away shows at the next read.
                let _ = self.send(&frame).await;
            }
            if let Some(frame) = frame {
                return Ok(frame);
            }
            match self.reader.fill().await {
                Ok(true) => {}
                Ok(false) => return Err("the worker went away".into()),
                Err(e) => return Err(format!("cannot read from the worker: {e}")),
            }
        }
    }
}
