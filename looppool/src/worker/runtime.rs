//! The worker process: its loop, its connection to the parent, and its tasks.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use serde::Serialize;
use tokio::sync::Notify;

use super::context::{InitContext, TaskContext};
use super::entry::SIGNALS_ENV;
use super::{BoxError, Worker};
use crate::codec::{self, CodecError, DEFAULT_MAX_FRAME};
use crate::error::{EmitError, EmitErrorKind};
use crate::protocol::{self, kind, Failure, Hello, ToWorker};
use crate::sys;
use crate::transport::{self, Connection, FrameReader, WriteHalf};

/// Exit code of a worker whose initialiser failed.
pub(crate) const EXIT_INIT_FAILED: i32 = 3;
/// Exit code of a program asked to run a worker it does not know.
pub(crate) const EXIT_UNKNOWN_WORKER: i32 = 4;
/// Exit code of a worker that broke off because of a protocol error.
pub(crate) const EXIT_PROTOCOL: i32 = 5;

/// State shared by everything running in one worker process.
pub(crate) struct Shared {
    pub(crate) index: usize,
    pub(crate) pool_name: String,
    pub(crate) max_frame: usize,
    out: RefCell<OutBuf>,
    /// Woken on the empty → non-empty transition of `out.buf`.
    writer_wake: Notify,
    /// Woken when the parent returns output credits.
    credit_wake: Notify,
    /// Tasks started and not yet completed.
    pub(crate) running: Cell<usize>,
    /// Woken when `running` drops to zero.
    idle: Notify,
    /// Set when the parent asked the worker to stop.
    stop_requested: Cell<bool>,
    stop_wake: Notify,
    /// Set once the last frame is queued: the writer returns when drained.
    closing: Cell<bool>,
    /// Tasks running longer than this fail.
    task_timeout: Option<std::time::Duration>,
    /// Counts for reports, and the blocked-loop watch.
    pub(crate) obs: super::observe::Observe,
}

/// Frames waiting to be written, and the output window.
struct OutBuf {
    buf: Vec<u8>,
    /// Outputs the worker may still emit before the parent takes some.
    credits: u32,
    /// Where the last frame in `buf` starts, when it is an output of a task
    /// (start offset, slot): a completion right behind it is folded into it.
    last_output: Option<(usize, u32)>,
    /// Outputs emitted before the ready message (by the initialiser or its
    /// background work): the parent reads only handshake messages until
    /// then, so they are held here and queued right behind it.
    early: Option<Vec<u8>>,
}

impl Shared {
    fn push_with(&self, f: impl FnOnce(&mut OutBuf)) {
        let mut out = self.out.borrow_mut();
        let was_empty = out.buf.is_empty();
        f(&mut out);
        if was_empty && !out.buf.is_empty() {
            self.writer_wake.notify_one();
        }
    }

    /// Appends a frame that is not an output (a report or a log record)
    /// unless the out buffer already holds `limit` bytes or is in use
    /// further up this thread's stack; false when it did not.
    pub(crate) fn try_push_frame(&self, limit: usize, f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let Ok(mut out) = self.out.try_borrow_mut() else {
            return false;
        };
        if out.buf.len() >= limit {
            return false;
        }
        let was_empty = out.buf.is_empty();
        f(&mut out.buf);
        out.last_output = None;
        drop(out);
        if was_empty {
            self.writer_wake.notify_one();
        }
        true
    }

    #[inline(always)]
    pub(crate) fn try_emit<O: Serialize>(
        &self,
        slot: Option<u32>,
        value: O,
    ) -> Result<(), EmitError<O>> {
        let mut out = self.out.borrow_mut();
        if self.closing.get() {
            return Err(EmitError::new(EmitErrorKind::Closed, value));
        }
        if out.credits == 0 {
            return Err(EmitError::new(EmitErrorKind::Full, value));
        }
        let was_empty = out.buf.is_empty();
        let early = out.early.is_some();
        let OutBuf {
            buf, early: held, ..
        } = &mut *out;
        let target = held.as_mut().unwrap_or(buf);
        let start = target.len();
        let tag = slot.map_or(0, |s| u64::from(s) + 1);
        match protocol::put_tagged(target, kind::OUTPUT, tag, &value, self.max_frame) {
            Ok(()) => {}
            Err(CodecError::TooLarge { len, max }) => {
                return Err(EmitError::new(EmitErrorKind::TooLarge { len, max }, value))
            }
            Err(e) => return Err(EmitError::new(EmitErrorKind::Encode(e.to_string()), value)),
        }
        out.credits -= 1;
        if !early {
            out.last_output = slot.map(|s| (start, s));
        }
        self.obs.outputs.set(self.obs.outputs.get() + 1);
        drop(out);
        if was_empty && !early {
            self.writer_wake.notify_one();
        }
        Ok(())
    }

    /// Emits `value`, waiting while the output window is shut.
    pub(crate) fn emit<O: Serialize>(&self, slot: Option<u32>, value: O) -> Emit<'_, O> {
        Emit {
            shared: self,
            slot,
            value: Some(value),
            credits: None,
        }
    }

    fn complete(&self, slot: u32, result: Result<(), Failure>) {
        self.push_with(|out| {
            match result {
                Ok(()) => match out.last_output {
                    Some((start, s)) if s == slot => {
                        // The task's last output is the buffer's last frame:
                        // mark it as completing the task instead of writing a
                        // separate completion frame.
                        out.buf[start + codec::HEADER_LEN] = kind::OUTPUT_DONE;
                    }
                    _ => protocol::put_simple(&mut out.buf, kind::DONE, Some(slot.into())),
                },
                Err(failure) => protocol::put_failed(&mut out.buf, slot, &failure, self.max_frame),
            }
            out.last_output = None;
        });
        self.obs.done.set(self.obs.done.get() + 1);
        let running = self.running.get() - 1;
        self.running.set(running);
        // Only the drain after a stop waits for `idle` (and it checks
        // `running` first): a notification per idle moment would take the
        // `Notify`'s lock after nearly every task.
        if running == 0 && self.stop_requested.get() {
            self.idle.notify_waiters();
        }
    }

    fn push_simple(&self, kind: u8, value: Option<u64>) {
        self.push_with(|out| {
            protocol::put_simple(&mut out.buf, kind, value);
            out.last_output = None;
        });
    }
}

/// The future of an `emit`: tries at once, and waits for credits only if
/// the window is shut.
///
/// Written by hand rather than as an `async fn`: a task's future holds it,
/// and the nested async state machines (with the wait for credits inline)
/// made an echo handler's future 232 bytes, moved twice per task.
pub(crate) struct Emit<'a, O> {
    shared: &'a Shared,
    slot: Option<u32>,
    value: Option<O>,
    /// The wait for credits, boxed: it is needed only when the window is shut.
    credits: Option<Pin<Box<tokio::sync::futures::Notified<'a>>>>,
}

// `Emit` holds no self-references: the wait it boxes is pinned in the box.
impl<O> Unpin for Emit<'_, O> {}

impl<O: Serialize> Future for Emit<'_, O> {
    type Output = Result<(), EmitError<O>>;

    // Inlined into the handler's future, as is `try_emit`: returned through
    // memory, the 32-byte result was stored in pieces and reloaded whole by
    // the caller, a stalled load that cost more than the rest of the emit.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if let Some(wait) = &mut this.credits {
                if wait.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.credits = None;
            }
            let Some(value) = this.value.take() else {
                panic!("`Emit` polled after it completed");
            };
            match this.shared.try_emit(this.slot, value) {
                Err(e) if e.is_full() => this.value = Some(e.into_inner()),
                other => return Poll::Ready(other),
            }
            // Single-threaded: nothing can return credits between the check
            // above and this wait's registration (its first poll, next turn
            // of this loop), so no wake-up is missed.
            this.credits = Some(Box::pin(this.shared.credit_wake.notified()));
        }
    }
}

/// Writes queued frames until the worker closes; one `write` per batch.
async fn write_loop(shared: Rc<Shared>, mut io: WriteHalf) {
    let mut batch = Vec::new();
    loop {
        let took = {
            let mut out = shared.out.borrow_mut();
            std::mem::swap(&mut out.buf, &mut batch);
            out.last_output = None;
            !batch.is_empty()
        };
        if !took {
            if shared.closing.get() {
                return;
            }
            shared.writer_wake.notified().await;
            continue;
        }
        if transport::write_batch(&mut io, &batch).await.is_err() {
            // The parent is gone: nobody is left to work for.
            std::process::exit(0);
        }
        batch.clear();
        if batch.capacity() > 4 * 1024 * 1024 {
            batch = Vec::new();
        }
    }
}

/// The worker's whole life: handshake, init, serve, drain. Returns the exit code.
pub(crate) fn main<W: Worker>() -> i32 {
    run_worker_runtime(serve_inherited::<W>())
}

/// Runs `body` the way a worker process runs: the termination signals as the
/// pool asked, the panic hook that reports panics to the parent, and one
/// current-thread tokio runtime with a `LocalSet`. Returns `body`'s exit code.
pub fn run_worker_runtime<F: Future<Output = i32>>(body: F) -> i32 {
    if std::env::var_os(SIGNALS_ENV).is_some_and(|v| v == "inherit") {
        sys::default_termination_signals();
    } else {
        sys::ignore_termination_signals();
    }
    std::env::remove_var(SIGNALS_ENV);
    install_panic_hook();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("looppool worker: cannot build its runtime: {e}");
            return 1;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, body)
}

async fn serve_inherited<W: Worker>() -> i32 {
    match sys::inherited_stream().and_then(Connection::unix) {
        Ok(conn) => serve::<W>(conn).await,
        Err(e) => {
            eprintln!("looppool worker: {e}");
            1
        }
    }
}

/// Serves worker `W` over `conn`, whatever carries it, until the pool stops
/// it or the connection ends; returns the exit code the process should exit
/// with (0 after a clean stop).
///
/// This is what a worker process runs on the connection its pool gave it. A
/// [`Connector`](crate::transport::Connector) runs it at the far end of the
/// connections it makes. It must run inside a tokio `LocalSet` on a
/// current-thread runtime, such as the one [`run_worker_runtime`] provides.
pub async fn serve<W: Worker>(conn: Connection) -> i32 {
    let Connection { reader, mut writer } = conn;

    // Handshake: say who we are, then wait for our place in the pool.
    let mut hello = Vec::new();
    let me = Hello {
        fingerprint: super::fingerprint::<W>(),
        worker: W::NAME.into(),
        pid: std::process::id(),
    };
    if protocol::put_hello(&mut hello, &me, DEFAULT_MAX_FRAME).is_err()
        || transport::write_batch(&mut writer, &hello).await.is_err()
    {
        return 1;
    }
    let mut reader = FrameReader::new(reader, DEFAULT_MAX_FRAME);
    let (init, init_payload) = loop {
        match reader.next_frame() {
            Ok(Some(body)) => match ToWorker::decode(body) {
                Ok(ToWorker::Init(init, payload)) => break (init, payload.to_vec()),
                Ok(other) => {
                    eprintln!("looppool worker: expected init, got {other:?}");
                    return EXIT_PROTOCOL;
                }
                Err(e) => {
                    eprintln!("looppool worker: bad init frame: {e}");
                    return EXIT_PROTOCOL;
                }
            },
            Ok(None) => match reader.fill().await {
                Ok(true) => {}
                // The parent refused us (or died): nothing to do.
                Ok(false) | Err(_) => return 1,
            },
            Err(e) => {
                eprintln!("looppool worker: {e}");
                return EXIT_PROTOCOL;
            }
        }
    };
    let max_frame = usize::try_from(init.max_frame).unwrap_or(usize::MAX);
    reader.set_max_frame(max_frame);
    sys::set_thread_name(&format!("{}-w{}", init.pool, init.index));
    let shared = Rc::new(Shared {
        index: init.index as usize,
        pool_name: init.pool.clone(),
        max_frame,
        out: RefCell::new(OutBuf {
            buf: Vec::with_capacity(64 * 1024),
            credits: init.output_credits,
            last_output: None,
            early: Some(Vec::new()),
        }),
        writer_wake: Notify::new(),
        credit_wake: Notify::new(),
        running: Cell::new(0),
        idle: Notify::new(),
        stop_requested: Cell::new(false),
        stop_wake: Notify::new(),
        closing: Cell::new(false),
        task_timeout: (init.task_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(init.task_timeout_ms)),
        obs: super::observe::Observe::new(&init),
    });
    let writer_task = tokio::task::spawn_local(write_loop(shared.clone(), writer));
    super::observe::begin(&shared);

    // The user's initialiser.
    let init_value = codec::get_serde::<W::Init>(&init_payload)
        .map_err(|e| format!("cannot deserialize the init payload: {e}"));
    let worker = match init_value {
        Ok(value) => {
            let cx = InitContext {
                shared: shared.clone(),
                _output: std::marker::PhantomData,
            };
            match CatchUnwind(Box::pin(W::init(value, cx))).await {
                Ok(Ok(worker)) => Ok(Rc::new(worker)),
                Ok(Err(e)) => Err(error_chain(&*e)),
                Err(panic) => Err(panic),
            }
        }
        Err(e) => Err(e),
    };
    let worker = match worker {
        Ok(w) => w,
        Err(message) => {
            shared.push_with(|out| {
                let _ = protocol::put_value(&mut out.buf, kind::INIT_FAILED, &message, max_frame);
            });
            shared.closing.set(true);
            shared.writer_wake.notify_one();
            let _ = writer_task.await;
            return EXIT_INIT_FAILED;
        }
    };
    shared.push_with(|out| {
        protocol::put_simple(&mut out.buf, kind::READY, None);
        if let Some(early) = out.early.take() {
            out.buf.extend_from_slice(&early);
        }
        out.last_output = None;
    });
    super::observe::start(&shared);

    tokio::task::spawn_local(read_loop(worker.clone(), shared.clone(), reader));

    // Serve until the parent's stop message, which arrives behind every task
    // it sent us; then drain the running tasks.
    while !shared.stop_requested.get() {
        shared.stop_wake.notified().await;
    }
    while shared.running.get() > 0 {
        shared.idle.notified().await;
    }
    if let Err(panic) = CatchUnwind(Box::pin(worker.shutdown())).await {
        eprintln!(
            "looppool worker {}: shutdown hook panicked: {panic}",
            shared.index
        );
    }
    shared.push_simple(kind::BYE, None);
    shared.closing.set(true);
    shared.writer_wake.notify_one();
    let _ = writer_task.await;
    0
}

/// Reads the parent's frames: tasks, credits, pings and the stop message.
async fn read_loop<W: Worker>(worker: Rc<W>, shared: Rc<Shared>, mut reader: FrameReader) {
    // Spare cells for the two types of task future (see `TaskCell`).
    let (mut plain, mut timed) = (None, None);
    loop {
        loop {
            let body = match reader.next_frame() {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(e) => protocol_exit(&shared, &e.to_string()),
            };
            match ToWorker::decode(body) {
                Ok(ToWorker::Task { slot, payload }) => {
                    match codec::get_serde::<W::Task>(payload) {
                        Ok(task) => {
                            shared.running.set(shared.running.get() + 1);
                            let cx = TaskContext::new(shared.clone(), slot);
                            let worker = worker.clone();
                            match shared.task_timeout {
                                None => run_task(
                                    &shared,
                                    slot,
                                    move || worker.handle(task, cx),
                                    &mut plain,
                                ),
                                Some(limit) => run_task(
                                    &shared,
                                    slot,
                                    move || with_deadline(worker.handle(task, cx), limit),
                                    &mut timed,
                                ),
                            }
                        }
                        Err(e) => {
                            shared.running.set(shared.running.get() + 1);
                            let message = format!("cannot deserialize the task: {e}");
                            shared.complete(
                                slot,
                                Err(Failure {
                                    message,
                                    panicked: false,
                                }),
                            );
                        }
                    }
                }
                Ok(ToWorker::Credit(n)) => {
                    let mut out = shared.out.borrow_mut();
                    out.credits = out.credits.saturating_add(n);
                    drop(out);
                    shared.credit_wake.notify_waiters();
                }
                Ok(ToWorker::Stop) => {
                    shared.stop_requested.set(true);
                    shared.stop_wake.notify_waiters();
                }
                Ok(ToWorker::Ping(nonce)) => shared.push_simple(kind::PONG, Some(nonce)),
                Ok(ToWorker::Init(..)) => protocol_exit(&shared, "a second init message"),
                Err(e) => protocol_exit(&shared, &e.to_string()),
            }
        }
        match reader.fill().await {
            Ok(true) => {}
            // End of the connection: the parent is gone or dropped the pool.
            Ok(false) => std::process::exit(0),
            Err(e) => protocol_exit(&shared, &e.to_string()),
        }
    }
}

fn protocol_exit(shared: &Shared, what: &str) -> ! {
    eprintln!(
        "looppool worker {}: protocol error from the parent: {what}",
        shared.index
    );
    std::process::exit(EXIT_PROTOCOL)
}

/// A task's future in a heap cell that outlives it. A task that completes in
/// its first poll (most do) leaves the cell empty for the next task of the
/// same type, so it costs no allocation; a task that has to wait keeps its
/// cell, moved into the spawned task, and the next one allocates anew.
/// (A fresh `Box` per task cost the worker a third of its instructions in
/// `malloc` and `free`.)
type TaskCell<F> = Pin<Box<Option<F>>>;

/// Starts a task: polls its future once in place, and spawns it only if it
/// has to wait. `spare` is the spare cell for futures of this type.
///
/// The future is made by `make` right where it is stored: built first and
/// then passed in, it was copied twice on the way into the cell, and those
/// copies (stalled on loads of what was just stored) were about a sixth of
/// the worker's time per task in the W1 benchmark.
#[inline(always)]
fn run_task<F>(
    shared: &Rc<Shared>,
    slot: u32,
    make: impl FnOnce() -> F,
    spare: &mut Option<TaskCell<F>>,
) where
    F: Future<Output = Result<(), BoxError>> + 'static,
{
    let mut cell = spare.take().unwrap_or_else(|| Box::pin(None));
    cell.set(Some(make()));
    let mut noop = Context::from_waker(Waker::noop());
    // The future is polled again by the spawned task (with a real waker) if
    // it is not ready now, so the no-op waker loses nothing.
    let polled = shared.obs.polling(shared, slot, || {
        in_task(|| {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                let fut = cell
                    .as_mut()
                    .as_pin_mut()
                    .expect("the cell was just filled");
                fut.poll(&mut noop)
            }))
        })
    });
    match polled {
        Ok(Poll::Ready(result)) => {
            // Dropped before the completion is queued: whatever its drop
            // emits still belongs to the task.
            cell.set(None);
            *spare = Some(cell);
            shared.complete(slot, result.map_err(failure_of));
        }
        Ok(Poll::Pending) => {
            let shared = shared.clone();
            tokio::task::spawn_local(async move {
                let polling = super::observe::Polling {
                    shared: &shared,
                    slot,
                    fut: CatchUnwind(InCell(cell)),
                };
                let result = match polling.await {
                    Ok(result) => result.map_err(failure_of),
                    Err(message) => Err(Failure {
                        message,
                        panicked: true,
                    }),
                };
                shared.complete(slot, result);
            });
        }
        Err(payload) => {
            let message = panic_message(payload);
            drop(cell);
            shared.complete(
                slot,
                Err(Failure {
                    message,
                    panicked: true,
                }),
            );
        }
    }
}

/// A task's future bounded by the pool's task timeout.
async fn with_deadline<F>(handler: F, limit: std::time::Duration) -> Result<(), BoxError>
where
    F: Future<Output = Result<(), BoxError>>,
{
    match tokio::time::timeout(limit, handler).await {
        Ok(result) => result,
        Err(_) => Err(format!("task exceeded its deadline of {limit:?}").into()),
    }
}

/// Polls the future in a filled task cell.
struct InCell<F>(TaskCell<F>);

impl<F: Future> Future for InCell<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.0.as_mut().as_pin_mut() {
            Some(fut) => fut.poll(cx),
            None => unreachable!("a spawned task's cell holds its future until it completes"),
        }
    }
}

fn failure_of(e: BoxError) -> Failure {
    Failure {
        message: error_chain(&*e),
        panicked: false,
    }
}

/// An error's message followed by the messages of its sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// Polls a boxed future, turning a panic into an `Err` with its message.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = Pin::new(&mut self.0);
        match in_task(|| std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx)))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload))),
        }
    }
}

thread_local! {
    /// Where the last panic on this thread happened, recorded by the hook.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    /// True while user code runs under a panic catcher that reports to the parent.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

fn in_task<R>(f: impl FnOnce() -> R) -> R {
    let outer = IN_TASK.with(|t| t.replace(true));
    let r = f();
    IN_TASK.with(|t| t.set(outer));
    r
}

/// Records each panic's location so the failure sent to the parent names it.
/// Panics under a catcher are reported as task failures, which the parent
/// logs; any other panic (in background work) is forwarded to the parent's
/// log, or printed here when forwarding is off.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_TASK.with(Cell::get) {
            let location = info.location().map(|l| l.to_string());
            PANIC_LOCATION.with(|cell| *cell.borrow_mut() = location);
        } else if !super::logging::forward_panic(info) {
            default(info);
        }
    }));
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    };
    match PANIC_LOCATION.with(|cell| cell.borrow_mut().take()) {
        Some(location) => format!("{text} (at {location})"),
        None => text,
    }
}
