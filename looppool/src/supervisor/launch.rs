//! Starting a worker process and completing its handshake.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::handshake::handshake_tracked;
use crate::codec;
use crate::error::StartError;
use crate::sys;
use crate::transport::{self, Connection, Connector, FrameReader, Link, Peer};
use crate::worker::entry::SIGNALS_ENV;
use crate::worker::WORKER_ENV;

/// Everything needed to start any worker of one pool.
#[derive(Debug, Clone)]
pub(crate) struct LaunchSpec {
    /// The program to execute, or `None` for this very executable.
    pub(crate) program: Option<PathBuf>,
    pub(crate) args: Vec<OsString>,
    pub(crate) worker_name: &'static str,
    pub(crate) fingerprint: u64,
    pub(crate) pool_name: String,
    pub(crate) init_payload: Vec<u8>,
    pub(crate) output_credits: u32,
    pub(crate) max_frame: usize,
    pub(crate) start_timeout: Duration,
    pub(crate) inherit_signals: bool,
    pub(crate) title: bool,
    pub(crate) task_timeout: Option<Duration>,
    /// Reports, blocked-loop watch and log forwarding.
    pub(crate) observe: crate::metrics::WorkerSettings,
    /// Reaches workers instead of starting child processes.
    pub(crate) connector: Option<ConnectorRef>,
}

/// A shared [`Connector`], printable.
#[derive(Clone)]
pub(crate) struct ConnectorRef(pub(crate) std::sync::Arc<dyn Connector>);

impl std::fmt::Debug for ConnectorRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.describe())
    }
}

/// A worker that completed its handshake and ran its initialiser.
pub(crate) struct Launched {
    pub(crate) peer: Box<dyn Peer>,
    pub(crate) pid: u32,
    pub(crate) reader: FrameReader,
    pub(crate) writer: transport::WriteHalf,
}

impl std::fmt::Debug for Launched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launched")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

fn program_path(spec: &LaunchSpec) -> PathBuf {
    // /proc/self/exe names the running image even if the file was replaced.
    spec.program
        .clone()
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// What error messages name as the worker's origin: the program, or the
/// connector that reached it.
pub(super) fn origin(spec: &LaunchSpec) -> String {
    match &spec.connector {
        Some(c) => c.0.describe(),
        None => program_path(spec).display().to_string(),
    }
}

/// The title `ps` shows: `<program>: <pool> worker <index>`.
fn title(spec: &LaunchSpec, index: usize) -> String {
    let program = match &spec.program {
        Some(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
    }
    .unwrap_or_else(|| "looppool".into());
    format!("{program}: {} worker {index}", spec.pool_name)
}

/// Starts worker `index` and completes its handshake and initialiser.
pub(crate) async fn launch(spec: &LaunchSpec, index: usize) -> Result<Launched, StartError> {
    if let Some(connector) = &spec.connector {
        return launch_connected(spec, &connector.0, index).await;
    }
    let program = program_path(spec);
    let (parent_end, child_end) = transport::socketpair().map_err(|source| StartError::Spawn {
        worker: index,
        program: program.display().to_string(),
        source,
    })?;
    let mut cmd = Command::new(&program);
    cmd.args(&spec.args)
        .env(WORKER_ENV, spec.worker_name)
        .stdin(Stdio::null());
    if spec.inherit_signals {
        cmd.env(SIGNALS_ENV, "inherit");
    }
    if let Some((addr, prefix)) = &spec.observe.statsd {
        cmd.env(crate::metrics::STATSD_ENV, format!("{addr} {prefix}"));
    }
    if spec.title {
        cmd.arg0(title(spec, index));
    }
    sys::pass_connection(&mut cmd, child_end.as_raw_fd());
    let spawned = sys::spawn_tied_child(cmd).await;
    // The child has its own copy now; ours must close so that its end of the
    // connection is the only one left.
    drop(child_end);
    let mut child = spawned.map_err(|source| StartError::Spawn {
        worker: index,
        program: program.display().to_string(),
        source,
    })?;
    let pid = child.id();
    let hello_seen = AtomicBool::new(false);
    let handshaken = async {
        let conn = Connection::unix(parent_end).map_err(|e| StartError::Handshake {
            worker: index,
            reason: e.to_string(),
        })?;
        handshake_tracked(spec, index, conn, &hello_seen).await
    };
    let result = tokio::time::timeout(spec.start_timeout, handshaken).await;
    let failure = match result {
        Ok(Ok((reader, writer, _))) => {
            return Ok(Launched {
                peer: Box::new(child),
                pid,
                reader,
                writer,
            })
        }
        Ok(Err(e)) => e,
        Err(_) if !hello_seen.load(Ordering::Relaxed) => StartError::Handshake {
            worker: index,
            reason: format!(
                "{} sent no hello within {:?}: is it a looppool worker program, with \
                 looppool::worker_main!({}) as the first line of main? (If it starts \
                 slowly, raise start_timeout.)",
                program.display(),
                spec.start_timeout,
                spec.worker_name,
            ),
        },
        Err(_) => StartError::Handshake {
            worker: index,
            reason: format!(
                "no ready message within {:?}: the initialiser is still running \
                 (raise start_timeout, or make init faster)",
                spec.start_timeout
            ),
        },
    };
    if matches!(&failure, StartError::Handshake { reason, .. } if reason == EARLY_EOF) {
        // It closed its end, so it is exiting: let it, so that its own exit
        // status (not our kill) tells what happened.
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while std::time::Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let _ = child.kill();
    let status = child.wait().ok().map(crate::event::ExitStatus::from);
    Err(match failure {
        StartError::Handshake { worker, reason } if reason == EARLY_EOF => StartError::Handshake {
            worker,
            reason: early_exit_reason(&program, spec.worker_name, status),
        },
        other => other,
    })
}

pub(super) const EARLY_EOF: &str = "connection closed before the handshake";

fn early_exit_reason(
    program: &std::path::Path,
    worker: &str,
    status: Option<crate::event::ExitStatus>,
) -> String {
    use crate::event::ExitStatus;
    use crate::worker::runtime::{EXIT_INIT_FAILED, EXIT_UNKNOWN_WORKER};
    let status_text = status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string());
    match status {
        Some(ExitStatus::Code(EXIT_UNKNOWN_WORKER)) => format!(
            "{} does not know a worker named {worker:?}: list it in looppool::worker_main! ({status_text})",
            program.display()
        ),
        Some(ExitStatus::Code(EXIT_INIT_FAILED)) => format!("the initialiser failed ({status_text})"),
        _ => format!(
            "{} exited before the handshake ({status_text}): is it a looppool worker program, \
             with looppool::worker_main!({worker}) as the first line of main?",
            program.display()
        ),
    }
}

/// Reaches worker `index` through `connector` and completes its handshake
/// and initialiser, all within the start timeout.
async fn launch_connected(
    spec: &LaunchSpec,
    connector: &std::sync::Arc<dyn Connector>,
    index: usize,
) -> Result<Launched, StartError> {
    let hello_seen = AtomicBool::new(false);
    let peer = std::sync::Mutex::new(None::<Box<dyn Peer>>);
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
        *crate::sync::lock(&peer) = Some(p);
        handshake_tracked(spec, index, connection, &hello_seen).await
    };
    let result = tokio::time::timeout(spec.start_timeout, connected).await;
    let mut peer = peer.into_inner().unwrap_or_else(|e| e.into_inner());
    let failure = match result {
        Ok(Ok((reader, writer, pid))) => {
            return Ok(Launched {
                peer: peer.expect("a handshake follows the link"),
                pid,
                reader,
                writer,
            })
        }
        Ok(Err(e)) => e,
        Err(_) if peer.is_none() => StartError::Handshake {
            worker: index,
            reason: format!(
                "{} reached no worker within {:?} (raise start_timeout if workers join slowly)",
                connector.describe(),
                spec.start_timeout
            ),
        },
        Err(_) if !hello_seen.load(Ordering::Relaxed) => StartError::Handshake {
            worker: index,
            reason: format!(
                "the worker reached through {} sent no hello within {:?}",
                connector.describe(),
                spec.start_timeout
            ),
        },
        Err(_) => StartError::Handshake {
            worker: index,
            reason: format!(
                "no ready message within {:?}: the initialiser is still running \
                 (raise start_timeout, or make init faster)",
                spec.start_timeout
            ),
        },
    };
    if let Some(p) = &mut peer {
        p.kill();
        let _ = p.wait();
    }
    Err(failure)
}

/// Encodes the init payload once per pool.
pub(crate) fn encode_init<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    codec::put_serde(&mut buf, value).map_err(|e| e.to_string())?;
    Ok(buf)
}
