//! Supervision: one driver task per worker index starts the process, serves
//! its connection, notices its end, reports the fate of every task it held,
//! and starts a replacement under the restart policy.

use std::fmt;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::event::{ExitStatus, WorkerEvent};
use crate::parent::lane::Lane;
use crate::parent::outputs::{Batch, BatchSender};
use crate::transport::Peer;

mod drive;
mod handshake;
mod health;
mod launch;
mod lifecycle;
mod local;
mod lost;
mod policy;
mod resize;
mod rolling;
mod spec;

pub(crate) use launch::{launch_all, Launched};
use lifecycle::PoolState;
pub(crate) use local::{LocalOptions, LocalProcesses};
pub(crate) use policy::jittered;
pub use policy::RestartPolicy;
use policy::RestartWindow;
pub(crate) use spec::{encode_init, ConnectorRef, LaunchSpec, WorkerSource};

/// Supervision settings beyond the restart policy.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tuning {
    /// Ping interval and the silence after which a worker is replaced.
    pub(crate) heartbeat: Option<(Duration, Duration)>,
    /// Recycle a worker after about this many tasks.
    pub(crate) recycle_tasks: Option<u64>,
    /// Warn when a worker waits on unread outputs this long.
    pub(crate) unread_outputs: Option<Duration>,
}

pub(crate) type EventHook = Arc<dyn Fn(&WorkerEvent) + Send + Sync>;

/// The current process of a worker index, shared so that a kill (from a
/// shutdown deadline or a dropped pool) can reach it.
#[derive(Default)]
pub(crate) struct ChildSlot {
    child: Option<Box<dyn Peer>>,
    pid: u32,
    /// Set when someone else reaped the child.
    reaped: Option<ExitStatus>,
    /// The kernel's OOM-kill count when the child started, to tell an OOM
    /// kill from other kills (see `Supervisor::oom_killed`).
    oom_kills_at_start: Option<u64>,
    /// Set when the pool sent the child SIGKILL itself.
    killed: bool,
    /// What the transport said of the worker's end, when it was reaped.
    transport_cause: Option<String>,
}

/// A worker whose lane is open, ready to be served.
struct Serving {
    pid: u32,
    generation: u64,
    reader: crate::transport::FrameReader,
    writer: crate::transport::WriteHalf,
    /// Notice of the process's exit, for a local process.
    exit: Option<crate::sys::ProcessExit>,
    /// The blob socket, for a connection that has one.
    blobs: Option<crate::transport::blobs::BlobChannel>,
}

/// State shared by the pool handle and the driver tasks.
pub(crate) struct Supervisor<O> {
    pub(crate) lanes: Arc<[Arc<Lane<O>>]>,
    pub(crate) spec: LaunchSpec,
    pub(crate) policy: RestartPolicy,
    pub(crate) tuning: Tuning,
    pub(crate) on_event: Option<EventHook>,
    children: Vec<Mutex<ChildSlot>>,
    /// Where the pool is in its life.
    state: watch::Sender<PoolState>,
    /// Restarts within the policy's window.
    restarts: Mutex<RestartWindow>,
    /// How many driver tasks run for each worker index: one while the index
    /// is served, none once its driver ended (two only briefly, if a shrink
    /// was abandoned and the index added again before its driver ended).
    drivers: watch::Sender<Vec<usize>>,
    /// Workers in use (routing sees `lanes[..active]`): lanes from this index
    /// on are spare or retired.
    pub(crate) active: AtomicUsize,
    /// For the drivers of workers added later; weak, so that the output
    /// stream still ends when the last driver ends.
    outputs: Mutex<Option<mpsc::WeakUnboundedSender<Batch<O>>>>,
    /// Serialises resizes and rolling restarts.
    resizing: tokio::sync::Mutex<()>,
    /// Per index, a replacement a rolling restart started ahead, for the
    /// driver's next start.
    staged: Vec<Mutex<rolling::Staged>>,
    /// Counts the workers installed, for a rolling restart waiting for its
    /// replacement to be.
    installs: watch::Sender<u64>,
    /// The programs of workers moved to another one by an upgrade.
    programs: Mutex<rolling::Programs>,
}

impl<O> fmt::Debug for Supervisor<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("workers", &self.lanes.len())
            .finish_non_exhaustive()
    }
}

/// Counts a driver out however it ends.
struct DriverGuard<O: serde::de::DeserializeOwned + Send + 'static> {
    sup: Arc<Supervisor<O>>,
    index: usize,
}

impl<O: serde::de::DeserializeOwned + Send + 'static> Drop for DriverGuard<O> {
    fn drop(&mut self) {
        self.sup.drivers.send_modify(|d| d[self.index] -= 1);
    }
}

impl<O: serde::de::DeserializeOwned + Send + 'static> Supervisor<O> {
    pub(crate) fn new(
        lanes: Arc<[Arc<Lane<O>>]>,
        spec: LaunchSpec,
        policy: RestartPolicy,
        tuning: Tuning,
        on_event: Option<EventHook>,
    ) -> Self {
        let children_len = lanes.len();
        let children = (0..children_len).map(|_| Mutex::default()).collect();
        Supervisor {
            lanes,
            spec,
            policy,
            tuning,
            on_event,
            children,
            state: watch::Sender::new(PoolState::Running),
            restarts: Mutex::default(),
            drivers: watch::Sender::new(vec![0; children_len]),
            active: AtomicUsize::new(0),
            outputs: Mutex::new(None),
            resizing: tokio::sync::Mutex::new(()),
            staged: (0..children_len).map(|_| Mutex::default()).collect(),
            installs: watch::Sender::new(0),
            programs: Mutex::new(rolling::Programs::new(children_len)),
        }
    }

    fn emit(&self, event: WorkerEvent) {
        match &event {
            WorkerEvent::Crashed {
                worker,
                pid,
                status,
                cause,
                lost_tasks,
            } => {
                if cause.killed_by_pool() {
                    tracing::error!(pool = %self.spec.pool_name, worker, pid, %status, %cause, lost_tasks, "worker killed by the pool")
                } else {
                    tracing::error!(pool = %self.spec.pool_name, worker, pid, %status, %cause, lost_tasks, "worker died")
                }
            }
            WorkerEvent::StartFailed { worker, error } => {
                tracing::error!(pool = %self.spec.pool_name, worker, %error, "worker failed to start")
            }
            WorkerEvent::PoolFailed { reason } => {
                tracing::error!(pool = %self.spec.pool_name, %reason, "pool failed")
            }
            WorkerEvent::Unresponsive {
                worker,
                pid,
                silent_for,
                held,
                stack,
            } => {
                let held: Vec<String> = held.iter().map(ToString::to_string).collect();
                let stack = stack.as_deref().unwrap_or("(not a local process)");
                tracing::error!(pool = %self.spec.pool_name, worker, pid, ?silent_for, held = %held.join(", "), %stack, "worker stopped answering heartbeats: killing it")
            }
            other => tracing::debug!(pool = %self.spec.pool_name, event = ?other, "worker event"),
        }
        if let Some(hook) = &self.on_event {
            hook(&event);
        }
    }

    /// Starts the driver of worker `index`, serving `launched`. The lane is
    /// open when this returns.
    pub(crate) fn spawn_driver(
        self: &Arc<Self>,
        index: usize,
        launched: Launched,
        outputs: BatchSender<O>,
    ) {
        let serving = self.install(index, launched);
        crate::sync::lock(&self.outputs).get_or_insert_with(|| outputs.downgrade());
        self.drivers.send_modify(|d| d[index] += 1);
        let guard = DriverGuard {
            sup: self.clone(),
            index,
        };
        let sup = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            sup.drive(index, serving, outputs).await;
        });
    }

    /// Records a started worker's process and opens its lane.
    fn install(&self, index: usize, launched: Launched) -> Option<Serving> {
        let Launched {
            peer,
            pid,
            reader,
            writer,
            exit,
            blobs,
        } = launched;
        {
            let mut slot = crate::sync::lock(&self.children[index]);
            slot.child = Some(peer);
            slot.pid = pid;
            slot.oom_kills_at_start = crate::sys::oom_kills();
            slot.killed = false;
        }
        let recycle_at = self
            .tuning
            .recycle_tasks
            .map(|n| jittered(n, pid.into()).max(1));
        let generation = self.lanes[index].open(
            pid,
            recycle_at,
            self.spec.output_credits,
            self.spec.credit_bytes,
            blobs.is_some().then_some(self.spec.blob_threshold),
        );
        self.installs.send_modify(|n| *n += 1);
        let generation = generation?;
        if self.is_stopping() {
            // A shutdown began while this worker was starting.
            self.lanes[index].stop();
        }
        self.emit(WorkerEvent::Started { worker: index, pid });
        Some(Serving {
            pid,
            generation,
            reader,
            writer,
            exit,
            blobs,
        })
    }

    /// Sends SIGKILL to worker `index`'s current process, if any.
    pub(crate) fn kill(&self, index: usize) {
        let mut slot = crate::sync::lock(&self.children[index]);
        if let Some(child) = &mut slot.child {
            child.kill();
            slot.killed = true;
        }
    }

    /// The current pid of worker `index`, if it runs.
    pub(crate) fn pid(&self, index: usize) -> Option<u32> {
        let slot = crate::sync::lock(&self.children[index]);
        slot.child.as_ref().map(|_| slot.pid)
    }
}
