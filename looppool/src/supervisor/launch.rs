//! Starting a worker: reach it through the pool's connector, then complete
//! its handshake and initialiser, all within the start timeout.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::handshake::{handshake, Handshaken, EARLY_EOF};
use super::spec::{LaunchSpec, WorkerSource};
use crate::error::StartError;
use crate::sys::ProcessExit;
use crate::transport::{self, FrameReader, Link, Peer};

/// A worker that completed its handshake and ran its initialiser.
pub(crate) struct Launched {
    pub(crate) peer: Box<dyn Peer>,
    pub(crate) pid: u32,
    pub(crate) reader: FrameReader,
    pub(crate) writer: transport::WriteHalf,
    /// Notice of the process's exit, for a worker that is a local process.
    pub(crate) exit: Option<ProcessExit>,
    /// The blob socket, for a connection that has one.
    pub(crate) blobs: Option<crate::transport::blobs::BlobChannel>,
}

impl std::fmt::Debug for Launched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launched")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// Starts worker `index` and completes its handshake and initialiser.
pub(crate) async fn launch(spec: &LaunchSpec, index: usize) -> Result<Launched, StartError> {
    let connector = spec.source.connector();
    let hello_seen = AtomicBool::new(false);
    let peer = Mutex::new(None::<Box<dyn Peer>>);
    let exit = Mutex::new(None::<ProcessExit>);
    let connected = async {
        let Link {
            connection,
            peer: p,
        } = connector
            .connect(index)
            .await
            .map_err(|source| StartError::Spawn {
                worker: index,
                program: connector.describe(),
                source,
            })?;
        // Watch the process from the start, while it cannot have been
        // reaped, so that its pid names it and no other.
        if let Some(pid) = p.process_id() {
            match ProcessExit::watch(pid) {
                Ok(watch) => *crate::sync::lock(&exit) = Some(watch),
                Err(e) => tracing::warn!(
                    worker = index, pid, error = %e,
                    "cannot watch the worker's process (pidfd_open): only the end of its connection will tell that it ended"
                ),
            }
        }
        *crate::sync::lock(&peer) = Some(p);
        handshake(spec, index, connection, &hello_seen).await
    };
    let result = tokio::time::timeout(spec.start_timeout, connected).await;
    let peer = peer.into_inner().unwrap_or_else(|e| e.into_inner());
    let failure = match result {
        Ok(Ok(Handshaken {
            reader,
            writer,
            pid,
            blobs,
        })) => {
            return Ok(Launched {
                peer: peer.expect("a handshake follows the link"),
                pid,
                reader,
                writer,
                blobs,
                exit: exit.into_inner().unwrap_or_else(|e| e.into_inner()),
            })
        }
        Ok(Err(e)) => e,
        Err(_) => timed_out(
            spec,
            index,
            peer.is_some(),
            hello_seen.load(Ordering::Relaxed),
        ),
    };
    Err(match peer {
        Some(peer) => stop_failed(&spec.source, peer, failure).await,
        None => failure,
    })
}

/// The error for a start that ran out of time: no worker reached, no hello
/// from it, or an initialiser still running.
fn timed_out(spec: &LaunchSpec, index: usize, reached: bool, hello_seen: bool) -> StartError {
    let timeout = spec.start_timeout;
    let described = || spec.source.connector().describe();
    let reason = match &spec.source {
        _ if hello_seen => format!(
            "no ready message within {timeout:?}: the initialiser is still running \
             (raise start_timeout, or make init faster)"
        ),
        WorkerSource::Local(local) => format!(
            "{} sent no hello within {timeout:?} for worker {:?}: {} (if it starts \
             slowly, raise start_timeout)",
            local.program().display(),
            spec.worker_name,
            local.worker_main_hint(),
        ),
        WorkerSource::Connector(_) if !reached => format!(
            "{} reached no worker within {timeout:?} (raise start_timeout if workers join slowly)",
            described()
        ),
        WorkerSource::Connector(_) => format!(
            "the worker reached through {} sent no hello within {timeout:?}",
            described()
        ),
    };
    StartError::Handshake {
        worker: index,
        reason,
    }
}

/// Stops a worker whose start failed and returns the error to report. A
/// local worker that closed its connection before the handshake is exiting
/// on its own: it is let exit, so that its exit status (not our kill) tells
/// what happened.
async fn stop_failed(
    source: &WorkerSource,
    mut peer: Box<dyn Peer>,
    failure: StartError,
) -> StartError {
    let local = match (source, &failure) {
        (WorkerSource::Local(local), StartError::Handshake { reason, .. })
            if reason == EARLY_EOF =>
        {
            local
        }
        _ => {
            peer.kill();
            let _ = peer.wait();
            return failure;
        }
    };
    let status = await_exit(&mut *peer).await;
    match failure {
        StartError::Handshake { worker, .. } => StartError::Handshake {
            worker,
            reason: local.early_exit_reason(status),
        },
        other => other,
    }
}

/// Gives `peer` half a second to exit, then kills it; its exit status.
async fn await_exit(peer: &mut dyn Peer) -> Option<crate::event::ExitStatus> {
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline && matches!(peer.try_wait(), Ok(None)) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    peer.kill();
    peer.wait().ok()
}

/// Starts workers `indices` at once (they boot in parallel), returned in
/// index order. All or none: if any fails, those that started are stopped
/// and the first error is returned.
pub(crate) async fn launch_all(
    spec: &LaunchSpec,
    indices: Range<usize>,
) -> Result<Vec<Launched>, StartError> {
    let mut launching = tokio::task::JoinSet::new();
    for index in indices.clone() {
        let spec = spec.clone();
        launching.spawn(async move { (index, launch(&spec, index).await) });
    }
    let mut launched: Vec<Option<Launched>> = indices.clone().map(|_| None).collect();
    let mut first_error = None;
    while let Some(joined) = launching.join_next().await {
        match joined {
            Ok((index, Ok(l))) => launched[index - indices.start] = Some(l),
            Ok((_, Err(e))) => {
                first_error.get_or_insert(e);
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let launched = launched.into_iter().flatten();
    match first_error {
        Some(error) => {
            discard(launched);
            Err(error)
        }
        None => Ok(launched.collect()),
    }
}

/// Kills and reaps started workers that will not be served.
pub(crate) fn discard(launched: impl IntoIterator<Item = Launched>) {
    for mut l in launched {
        l.peer.kill();
        let _ = l.peer.wait();
    }
}
