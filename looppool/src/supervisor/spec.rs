//! What the pool needs to start any of its workers.

use std::sync::Arc;
use std::time::Duration;

use super::local::LocalProcesses;
use crate::codec;
use crate::transport::Connector;

/// Everything needed to start any worker of one pool.
#[derive(Debug, Clone)]
pub(crate) struct LaunchSpec {
    pub(crate) worker_name: &'static str,
    /// The worker's Rust type, as `worker_main!` lists it, for hints.
    pub(crate) worker_type: String,
    pub(crate) fingerprint: u64,
    pub(crate) pool_name: String,
    pub(crate) init_payload: Vec<u8>,
    pub(crate) output_credits: u32,
    /// The output frame bytes one output credit covers.
    pub(crate) credit_bytes: u64,
    pub(crate) max_frame: usize,
    /// Blobs of at least this many bytes cross to a local worker by
    /// descriptor.
    pub(crate) blob_threshold: usize,
    /// How long a begun frame from a worker may go without a byte.
    pub(crate) frame_timeout: Duration,
    pub(crate) start_timeout: Duration,
    pub(crate) task_timeout: Option<Duration>,
    /// How long a cancelled task that awaits its cancellation may run on.
    pub(crate) cancel_grace: Duration,
    /// Reports, blocked-loop watch and log forwarding.
    pub(crate) observe: crate::protocol::report::WorkerSettings,
    /// Where the workers come from.
    pub(crate) source: WorkerSource,
}

/// Where a pool's workers come from. Both are reached through
/// [`Connector::connect`]; the local one also explains a worker that exits
/// before its handshake, from its exit status.
#[derive(Debug, Clone)]
pub(crate) enum WorkerSource {
    /// Child processes of this one.
    Local(Arc<LocalProcesses>),
    /// A connector the caller gave.
    Connector(ConnectorRef),
}

impl WorkerSource {
    /// The connector that reaches the workers.
    pub(crate) fn connector(&self) -> &dyn Connector {
        match self {
            WorkerSource::Local(local) => &**local,
            WorkerSource::Connector(c) => &*c.0,
        }
    }
}

/// A shared [`Connector`], printable.
#[derive(Clone)]
pub(crate) struct ConnectorRef(pub(crate) Arc<dyn Connector>);

impl std::fmt::Debug for ConnectorRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.describe())
    }
}

/// Encodes the init payload once per pool.
pub(crate) fn encode_init<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    codec::put_serde(&mut buf, value).map_err(|e| e.to_string())?;
    Ok(buf)
}
