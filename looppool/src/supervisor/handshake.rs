//! The handshake over a fresh connection: hello, init, ready.

use std::sync::atomic::{AtomicBool, Ordering};

use super::spec::LaunchSpec;
use crate::error::StartError;
use crate::protocol::{self, FromWorker, Init, PROTOCOL_VERSION};
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
    let fail = |reason: String| StartError::Handshake {
        worker: index,
        reason,
    };
    let not_a_worker = |e: &dyn std::fmt::Display| {
        fail(format!(
            "{} is not a looppool worker: the bytes it wrote to descriptor 3 are not a \
             looppool hello ({e}); use a program whose main starts with \
             looppool::worker_main!({})",
            spec.source.connector().describe(),
            spec.worker_name
        ))
    };
    let Connection { reader, mut writer } = conn;
    let mut reader = FrameReader::new(reader, HELLO_LIMIT);
    let mut sent_init = false;
    let mut pid = 0;
    loop {
        let msg = loop {
            match reader.next_frame() {
                Ok(Some(body)) if !sent_init => {
                    break FromWorker::decode(body).map_err(|e| not_a_worker(&e))?
                }
                Ok(Some(body)) => {
                    break FromWorker::decode(body)
                        .map_err(|e| fail(format!("broke the protocol after its hello: {e}")))?
                }
                Ok(None) => {}
                Err(e) if !sent_init => return Err(not_a_worker(&e)),
                Err(e) => return Err(fail(format!("broke the protocol after its hello: {e}"))),
            }
            match reader.fill().await {
                Ok(true) => {}
                Ok(false) => return Err(fail(EARLY_EOF.into())),
                Err(e) => return Err(fail(format!("{e}"))),
            }
        };
        match msg {
            FromWorker::Hello { protocol, hello } if !sent_init => {
                hello_seen.store(true, Ordering::Relaxed);
                if protocol != PROTOCOL_VERSION {
                    return Err(fail(format!(
                        "{} speaks looppool protocol version {protocol}, this pool speaks \
                         {PROTOCOL_VERSION}: build both from the same looppool version",
                        spec.source.connector().describe()
                    )));
                }
                if hello.worker != spec.worker_name {
                    return Err(fail(format!(
                        "asked for worker {:?} but {:?} answered",
                        spec.worker_name, hello.worker
                    )));
                }
                if hello.fingerprint != spec.fingerprint {
                    return Err(fail(format!(
                        "worker {:?} in {} was built with different message types (fingerprint {:016x}, \
                         expected {:016x}): rebuild the worker program from the same sources as the parent",
                        spec.worker_name,
                        spec.source.connector().describe(),
                        hello.fingerprint,
                        spec.fingerprint
                    )));
                }
                let init = Init {
                    index: index as u32,
                    pool: spec.pool_name.clone(),
                    output_credits: spec.output_credits,
                    max_frame: spec.max_frame as u64,
                    report_interval_ms: spec.observe.report_interval_ms,
                    blocked_threshold_ms: spec.observe.blocked_threshold_ms,
                    log_level: spec.observe.log_level,
                    task_timeout_ms: spec.task_timeout.map_or(0, |t| t.as_millis().max(1) as u64),
                };
                let mut buf = Vec::new();
                protocol::put_init(&mut buf, &init, &spec.init_payload, usize::MAX)
                    .map_err(|e| fail(format!("cannot encode init: {e}")))?;
                if let Err(e) = transport::write_batch(&mut writer, &buf).await {
                    return Err(fail(format!("cannot send init: {e}")));
                }
                sent_init = true;
                pid = hello.pid;
                // From here on the worker may send frames up to the pool's limit.
                reader.set_max_frame(spec.max_frame);
            }
            FromWorker::Ready if sent_init => {
                return Ok(Handshaken {
                    reader,
                    writer,
                    pid,
                })
            }
            // The initialiser's log events.
            FromWorker::Log(body) if sent_init => {
                crate::metrics::relay_log(&spec.pool_name, index, pid, body);
            }
            FromWorker::InitFailed(message) if sent_init => {
                return Err(StartError::Init {
                    worker: index,
                    message,
                })
            }
            other => {
                return Err(fail(format!(
                    "unexpected message during the handshake: {other:?}"
                )))
            }
        }
    }
}
