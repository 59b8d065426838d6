//! Serving a worker over its connection: the handshake, the initialiser,
//! the read loop that starts tasks, and the drain after the stop.

use std::rc::Rc;

use super::context::{InitContext, TaskContext};
use super::observe::Observe;
use super::panic::CatchUnwind;
use super::process::EXIT_PROTOCOL;
use super::shared::Shared;
use super::task::{error_chain, run_task, with_deadline};
use super::Worker;
use crate::blob::wire;
use crate::codec::{self, CodecError, DEFAULT_MAX_FRAME};
use crate::protocol::{self, kind, Announced, Failure, Hello, Init, ToWorker};
use crate::sys;
use crate::transport::blobs::BlobReceiver;
use crate::transport::{self, Connection, FrameReader, WriteHalf};
use crate::worker::process::EXIT_INIT_FAILED;

/// Serves worker `W` over `conn`, whatever carries it, until the pool stops
/// it or the connection ends; returns the exit code the process should exit
/// with (0 after a clean stop).
///
/// This is what a worker process runs on the connection its pool gave it. A
/// [`Connector`](crate::transport::Connector) runs it at the far end of the
/// connections it makes. It must run inside a tokio `LocalSet` on a
/// current-thread runtime, such as the one
/// [`run_worker_runtime`](crate::worker::run_worker_runtime) provides.
///
/// It acts for the whole process: it names its thread after the worker,
/// takes the statsd target out of the environment, may install a global
/// `tracing` subscriber, and exits the process when the connection ends.
/// To run a worker inside a test, use [`crate::testing::TestWorker`].
pub async fn serve<W: Worker>(conn: Connection) -> i32 {
    serve_hosted::<W>(conn, Host::Process).await
}

/// Where [`serve_hosted`] runs, and so what it may do to its process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Host {
    /// A worker's own process: it names its thread, reads its environment
    /// and exits the process when the parent is gone.
    Process,
    /// A test process ([`crate::testing`]): it leaves the thread's name,
    /// the environment and the process alone, and stops when the parent's
    /// end of the connection closes.
    Test,
}

/// [`serve`], in `host`.
pub(crate) async fn serve_hosted<W: Worker>(conn: Connection, host: Host) -> i32 {
    let Connection {
        reader,
        mut writer,
        blobs,
    } = conn;

    // Handshake: say who we are, then wait for our place in the pool.
    if !say_hello::<W>(&mut writer).await {
        return 1;
    }
    let mut reader = FrameReader::new(reader, DEFAULT_MAX_FRAME);
    let (init, init_payload) = match wait_for_init(&mut reader).await {
        Ok(init) => init,
        Err(code) => return code,
    };
    let max_frame = usize::try_from(init.max_frame).unwrap_or(usize::MAX);
    reader.set_max_frame(max_frame);
    if host == Host::Process {
        sys::set_thread_name(&format!("{}-w{}", init.pool, init.index));
    }
    // Blobs go by descriptor when both ends have a blob socket (the parent
    // says so with a threshold).
    let (blob_tx, blob_rx) = match blobs {
        Some(channel) if init.blob_threshold > 0 => (Some(channel.sender), Some(channel.receiver)),
        _ => (None, None),
    };
    let blob_threshold = blob_tx
        .as_ref()
        .map(|_| usize::try_from(init.blob_threshold).unwrap_or(usize::MAX));
    let shared = Rc::new(Shared::new(&init, max_frame, blob_threshold));
    let obs = Observe::new(&init, host == Host::Process);
    let writer_task = {
        let shared = shared.clone();
        let exit_when_gone = host == Host::Process;
        tokio::task::spawn_local(async move {
            shared.out.write_to(writer, exit_when_gone, blob_tx).await
        })
    };
    obs.begin(&shared);

    let worker = match init_worker::<W>(&shared, &init_payload).await {
        Ok(worker) => worker,
        Err(message) => {
            shared.out.push_init_failed(&message);
            shared.out.close();
            let _ = writer_task.await;
            return EXIT_INIT_FAILED;
        }
    };
    shared.out.push_ready();
    obs.start(&shared);

    tokio::task::spawn_local(read_loop(
        worker.clone(),
        shared.clone(),
        reader,
        blob_rx,
        host,
    ));

    // Serve until the parent's stop message, which arrives behind every task
    // it sent us; then drain the running tasks.
    shared.stopped_and_idle().await;
    shut_down(worker, &shared).await;
    shared.out.push_simple(kind::BYE, None);
    shared.out.close();
    let _ = writer_task.await;
    0
}

/// Sends the hello message that names worker `W`; false when it cannot.
async fn say_hello<W: Worker>(writer: &mut WriteHalf) -> bool {
    let mut hello = Vec::new();
    let me = Hello {
        fingerprint: super::fingerprint::<W>(),
        worker: W::NAME.into(),
        pid: std::process::id(),
    };
    protocol::put_hello(&mut hello, &me, DEFAULT_MAX_FRAME).is_ok()
        && transport::write_batch(writer, &hello).await.is_ok()
}

/// Waits for the parent's `init` message: the worker's place in the pool
/// and the initialiser's payload. Gives the exit code when none comes.
async fn wait_for_init(reader: &mut FrameReader) -> Result<(Init, Vec<u8>), i32> {
    loop {
        match reader.next_frame() {
            Ok(Some(body)) => match ToWorker::decode(body) {
                Ok(ToWorker::Init(init, payload)) => return Ok((init, payload.to_vec())),
                Ok(other) => {
                    eprintln!("looppool worker: expected init, got {other:?}");
                    return Err(EXIT_PROTOCOL);
                }
                Err(e) => {
                    eprintln!("looppool worker: bad init frame: {e}");
                    return Err(EXIT_PROTOCOL);
                }
            },
            Ok(None) => match reader.fill().await {
                Ok(true) => {}
                // The parent refused us (or died): nothing to do.
                Ok(false) | Err(_) => return Err(1),
            },
            Err(e) => {
                eprintln!("looppool worker: {e}");
                return Err(EXIT_PROTOCOL);
            }
        }
    }
}

/// Runs the user's initialiser on `payload`; the failure's message when it
/// fails, panics or the payload does not decode.
async fn init_worker<W: Worker>(shared: &Rc<Shared>, payload: &[u8]) -> Result<Rc<W>, String> {
    let value = codec::get_serde::<W::Init>(payload)
        .map_err(|e| format!("cannot deserialize the init payload: {e}"))?;
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

/// Runs the user's shutdown hook; a panic in it is printed, not reported.
async fn shut_down<W: Worker>(worker: Rc<W>, shared: &Shared) {
    if let Err(panic) = CatchUnwind(Box::pin(worker.shutdown())).await {
        eprintln!(
            "looppool worker {}: shutdown hook panicked: {panic}",
            shared.index
        );
    }
}

/// Reads the parent's frames: tasks, credits, pings and the stop message;
/// the descriptors of the blobs tasks carry arrive on `blobs`.
async fn read_loop<W: Worker>(
    worker: Rc<W>,
    shared: Rc<Shared>,
    mut reader: FrameReader,
    mut blobs: Option<BlobReceiver>,
    host: Host,
) {
    // Spare cells for the two types of task future (see `TaskCell`).
    let (mut plain, mut bounded) = (None, None);
    loop {
        loop {
            let body = match reader.next_frame() {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(e) => protocol_exit(&shared, &e.to_string()),
            };
            match ToWorker::decode(body) {
                Ok(ToWorker::Task {
                    slot,
                    payload,
                    timed,
                }) => match codec::get_serde::<W::Task>(payload) {
                    Ok(task) => {
                        shared.task_started();
                        let cx = TaskContext::new(shared.clone(), slot);
                        let worker = worker.clone();
                        match shared.task_timeout {
                            None => run_task(
                                &shared,
                                slot,
                                timed,
                                move || worker.handle(task, cx),
                                &mut plain,
                            ),
                            Some(limit) => {
                                let sh = shared.clone();
                                let handle =
                                    move || with_deadline(worker.handle(task, cx), limit, sh, slot);
                                run_task(&shared, slot, timed, handle, &mut bounded)
                            }
                        }
                    }
                    Err(e) => reject_task(&shared, slot, &e),
                },
                Ok(ToWorker::TaskOwnDeadline {
                    slot,
                    payload,
                    timed,
                }) => {
                    // The parent enforces this task's deadline (by a
                    // cancel): the pool-wide timeout does not apply.
                    match codec::get_serde::<W::Task>(payload) {
                        Ok(task) => {
                            shared.task_started();
                            let cx = TaskContext::new(shared.clone(), slot);
                            let worker = worker.clone();
                            let handle = move || worker.handle(task, cx);
                            run_task(&shared, slot, timed, handle, &mut plain);
                        }
                        Err(e) => reject_task(&shared, slot, &e),
                    }
                }
                Ok(ToWorker::Skip(slot)) => {
                    shared.task_started();
                    shared.cancelled(slot);
                }
                Ok(ToWorker::Cancel(slot)) => shared.cancels.request(slot),
                Ok(ToWorker::Credit(n)) => shared.out.refill(n),
                Ok(ToWorker::Stop) => shared.request_stop(),
                Ok(ToWorker::Ping(nonce)) => shared.out.push_simple(kind::PONG, Some(nonce)),
                Ok(ToWorker::Blobs(announced)) => {
                    blob_task(&worker, &shared, &mut blobs, body.len(), announced)
                }
                Ok(ToWorker::Init(..)) => protocol_exit(&shared, "a second init message"),
                Err(e) => protocol_exit(&shared, &e.to_string()),
            }
        }
        match reader.fill().await {
            Ok(true) => {}
            // End of the connection: the parent is gone or dropped the pool.
            Ok(false) if host == Host::Process => std::process::exit(0),
            // A test dropped its worker: drain and stop, leaving the
            // test process alone.
            Ok(false) => {
                shared.request_stop();
                return;
            }
            Err(e) => protocol_exit(&shared, &e.to_string()),
        }
    }
}

/// Starts a task whose frame carries blobs by descriptor: takes them, then
/// decodes the task with them (or answers a task cancelled before it was
/// written, dropping them).
#[cold]
#[inline(never)]
fn blob_task<W: Worker>(
    worker: &Rc<W>,
    shared: &Rc<Shared>,
    blobs: &mut Option<BlobReceiver>,
    body_len: usize,
    announced: &[u8],
) {
    let Some(receiver) = blobs else {
        protocol_exit(
            shared,
            "a frame with blobs on a connection that carries no descriptors",
        )
    };
    let announced =
        Announced::parse(announced).unwrap_or_else(|e| protocol_exit(shared, &e.to_string()));
    let max = shared.out.max_frame() as u64;
    if (body_len as u64).saturating_add(announced.total) > max {
        protocol_exit(shared, "a frame whose blobs exceed the frame limit");
    }
    let received = receiver
        .receive(announced.sizes())
        .unwrap_or_else(|e| protocol_exit(shared, &e));
    let (slot, payload, own_deadline, timed) = match ToWorker::decode(announced.inner) {
        Ok(ToWorker::Task {
            slot,
            payload,
            timed,
        }) => (slot, payload, false, timed),
        Ok(ToWorker::TaskOwnDeadline {
            slot,
            payload,
            timed,
        }) => (slot, payload, true, timed),
        Ok(ToWorker::Skip(slot)) => {
            drop(received);
            shared.task_started();
            shared.cancelled(slot);
            return;
        }
        _ => protocol_exit(
            shared,
            "a frame with blobs around something other than a task",
        ),
    };
    let (task, _) = wire::with_inbox(received, || codec::get_serde::<W::Task>(payload));
    let task = match task {
        Ok(task) => task,
        Err(e) => return reject_task(shared, slot, &e),
    };
    shared.task_started();
    let cx = TaskContext::new(shared.clone(), slot);
    let worker = worker.clone();
    match shared.task_timeout {
        Some(limit) if !own_deadline => {
            let sh = shared.clone();
            let handle = move || with_deadline(worker.handle(task, cx), limit, sh, slot);
            run_task(shared, slot, timed, handle, &mut None)
        }
        _ => run_task(
            shared,
            slot,
            timed,
            move || worker.handle(task, cx),
            &mut None,
        ),
    }
}

/// Fails the task in wire slot `slot`, whose payload did not decode.
fn reject_task(shared: &Rc<Shared>, slot: u32, e: &CodecError) {
    shared.task_started();
    let message = format!("cannot deserialize the task: {e}");
    let failure = Failure {
        message,
        panicked: false,
    };
    // It never ran: not timed, even when the parent asked.
    shared.complete(slot, Err(failure), None);
}

/// Ends the process after the parent broke the protocol.
fn protocol_exit(shared: &Shared, what: &str) -> ! {
    eprintln!(
        "looppool worker {}: protocol error from the parent: {what}",
        shared.index
    );
    std::process::exit(EXIT_PROTOCOL)
}
