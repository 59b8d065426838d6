//! The handshake over a fresh connection: hello, init, ready.

use std::sync::atomic::{AtomicBool, Ordering};

use super::spec::LaunchSpec;
use crate::error::StartError;
use crate::protocol::{self, FromWorker, Init, PROTOCOL_VERSION};
use crate::transport::blobs::BlobChannel;
use crate::transport::{self, Connection, FrameReader};

/// The largest hello accepted: a stray program writing to descriptor 3
/// must not make the parent buffer much before it is recognised.
const HELLO_LIMIT: usize = 64 * 1024;

/// The reason given when the worker closes its connection before the
/// handshake ends.
pub(super) const EARLY_EOF: &str = "connection closed before the handshake";

/// A worker that answered hello, took its init and said it is ready.
pub(super) struct Handshaken {
    pub(super) reader: FrameReader,
    pub(super) writer: transport::WriteHalf,
    /// The process id the worker gave in its hello.
    pub(super) pid: u32,
    /// The blob socket, for a connection that has one.
    pub(super) blobs: Option<BlobChannel>,
}

/// Completes the handshake over `conn`, setting `hello_seen` once the
/// worker's hello arrived, so that a timeout can tell a silent program from
/// a slow initialiser.
pub(super) async fn handshake(
    spec: &LaunchSpec,
    index: usize,
    conn: Connection,
    hello_seen: &AtomicBool,
) -> Result<Handshaken, StartError> {
    let Connection {
        reader,
        mut writer,
        blobs,
    } = conn;
    let mut reader = FrameReader::new(reader, HELLO_LIMIT);
    let pid = next_message(&mut reader, spec, index, false, |msg| {
        accept_hello(spec, index, msg, hello_seen)
    })
    .await??;
    send_init(spec, index, blobs.is_some(), &mut writer).await?;
    // From here on the worker may send frames up to the pool's limit.
    reader.set_max_frame(spec.max_frame);
    // ... and must not stop half-way through one.
    reader.set_frame_timeout(spec.frame_timeout);
    loop {
        let ready = next_message(&mut reader, spec, index, true, |msg| {
            await_ready(spec, index, pid, msg)
        })
        .await??;
        if ready {
            return Ok(Handshaken {
                reader,
                writer,
                pid,
                blobs,
            });
        }
    }
}

fn fail(index: usize, reason: String) -> StartError {
    StartError::Handshake {
        worker: index,
        reason,
    }
}

/// Reads the next message and hands it to `take`. A frame that does not
/// decode means, before the hello, that the program is no looppool worker.
async fn next_message<T>(
    reader: &mut FrameReader,
    spec: &LaunchSpec,
    index: usize,
    after_hello: bool,
    take: impl FnOnce(FromWorker<'_>) -> T,
) -> Result<T, StartError> {
    let refused = |e: &dyn std::fmt::Display| {
        if after_hello {
            fail(index, format!("broke the protocol after its hello: {e}"))
        } else {
            fail(
                index,
                format!(
                    "{} is not a looppool worker: the bytes it wrote to descriptor 3 are not a \
                     looppool hello ({e}); use a program whose main starts with \
                     looppool::worker_main!({})",
                    spec.source.connector().describe(),
                    spec.worker_type
                ),
            )
        }
    };
    loop {
        match reader.next_frame() {
            Ok(Some(body)) => return FromWorker::decode(body).map(take).map_err(|e| refused(&e)),
            Ok(None) => {}
            Err(e) => return Err(refused(&e)),
        }
        match reader.fill().await {
            Ok(true) => {}
            Ok(false) => return Err(fail(index, EARLY_EOF.into())),
            Err(e) => return Err(fail(index, format!("{e}"))),
        }
    }
}

/// Checks the worker's hello against the pool: protocol version, worker
/// name and message types. Returns the worker's process id.
fn accept_hello(
    spec: &LaunchSpec,
    index: usize,
    msg: FromWorker<'_>,
    hello_seen: &AtomicBool,
) -> Result<u32, StartError> {
    let FromWorker::Hello { protocol, hello } = msg else {
        return Err(unexpected(index, &msg));
    };
    hello_seen.store(true, Ordering::Relaxed);
    let origin = || spec.source.connector().describe();
    if protocol != PROTOCOL_VERSION {
        return Err(fail(
            index,
            format!(
                "{} speaks looppool protocol version {protocol}, this pool speaks \
                 {PROTOCOL_VERSION}: build both from the same looppool version",
                origin()
            ),
        ));
    }
    if hello.worker != spec.worker_name {
        return Err(fail(
            index,
            format!(
                "asked for worker {:?} but {:?} answered",
                spec.worker_name, hello.worker
            ),
        ));
    }
    if hello.fingerprint != spec.fingerprint {
        return Err(fail(
            index,
            format!(
                "worker {:?} in {} was built with different message types (fingerprint {:016x}, \
                 expected {:016x}): rebuild the worker program from the same sources as the parent",
                spec.worker_name,
                origin(),
                hello.fingerprint,
                spec.fingerprint
            ),
        ));
    }
    Ok(hello.pid)
}

/// Sends the worker its init: its place in the pool, the pool's settings and
/// the init value; `blobs` when the connection carries blobs' descriptors.
async fn send_init(
    spec: &LaunchSpec,
    index: usize,
    blobs: bool,
    writer: &mut transport::WriteHalf,
) -> Result<(), StartError> {
    let init = Init {
        index: index as u32,
        pool: spec.pool_name.clone(),
        output_credits: spec.output_credits,
        max_frame: spec.max_frame as u64,
        report_interval_ms: spec.observe.report_interval_ms,
        blocked_threshold_ms: spec.observe.blocked_threshold_ms,
        log_level: spec.observe.log_level,
        task_timeout_ms: spec.task_timeout.map_or(0, |t| t.as_millis().max(1) as u64),
        credit_bytes: spec.credit_bytes,
        cancel_grace_ms: spec.cancel_grace.as_millis() as u64,
        blob_threshold: if blobs { spec.blob_threshold as u64 } else { 0 },
    };
    let mut buf = Vec::new();
    protocol::put_init(&mut buf, &init, &spec.init_payload, usize::MAX)
        .map_err(|e| fail(index, format!("cannot encode init: {e}")))?;
    transport::write_batch(writer, &buf)
        .await
        .map_err(|e| fail(index, format!("cannot send init: {e}")))
}

/// Takes one message while the initialiser runs: true once it is ready,
/// false after relaying one of its log events.
fn await_ready(
    spec: &LaunchSpec,
    index: usize,
    pid: u32,
    msg: FromWorker<'_>,
) -> Result<bool, StartError> {
    match msg {
        FromWorker::Ready => Ok(true),
        FromWorker::Log(body) => {
            crate::parent::reports::relay_log(&spec.pool_name, index, pid, body, |_| None);
            Ok(false)
        }
        FromWorker::InitFailed(message) => Err(StartError::Init {
            worker: index,
            message,
        }),
        other => Err(unexpected(index, &other)),
    }
}

fn unexpected(index: usize, msg: &FromWorker<'_>) -> StartError {
    fail(
        index,
        format!("unexpected message during the handshake: {msg:?}"),
    )
}
