//! Rolling restarts and upgrades: each worker in turn gets a replacement
//! that is started and initialised while it still serves, then drains and
//! hands its index over.

use std::borrow::Cow;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::launch::{discard, Launched};
use super::{LaunchSpec, Supervisor, WorkerSource};
use crate::error::{BuildError, RestartError, StartError};
use crate::event::RecycleReason;

/// A replacement a rolling restart started ahead for one worker index.
#[derive(Debug, Default)]
pub(super) enum Staged {
    /// None (or it was stopped: the index's driver ended first).
    #[default]
    None,
    /// Waiting for the driver's next start.
    Waiting(Launched),
    /// The driver installed it.
    Installed,
}

/// Which workers run a program other than the pool's first: set by
/// upgrades.
#[derive(Debug)]
pub(super) struct Programs {
    /// For workers started from now on (after a complete upgrade).
    default: Option<WorkerSource>,
    /// Per index, for a worker replaced by an upgrade that did not
    /// complete: its restarts keep to the program it was moved to.
    per_index: Vec<Option<WorkerSource>>,
}

impl Programs {
    pub(super) fn new(workers: usize) -> Self {
        Programs {
            default: None,
            per_index: vec![None; workers],
        }
    }
}

impl<O: serde::de::DeserializeOwned + Send + 'static> Supervisor<O> {
    /// What worker `index` is started with: the pool's spec, with the
    /// program an upgrade moved it (or the pool) to.
    pub(super) fn spec_for(&self, index: usize) -> Cow<'_, LaunchSpec> {
        let programs = crate::sync::lock(&self.programs);
        match programs.per_index[index]
            .as_ref()
            .or(programs.default.as_ref())
        {
            None => Cow::Borrowed(&self.spec),
            Some(source) => Cow::Owned(LaunchSpec {
                source: source.clone(),
                ..self.spec.clone()
            }),
        }
    }

    /// Forgets what earlier upgrades left on workers `added`, which a
    /// resize adds afresh: they start with the pool's current program.
    pub(super) fn forget_programs(&self, added: Range<usize>) {
        let mut programs = crate::sync::lock(&self.programs);
        for p in &mut programs.per_index[added] {
            *p = None;
        }
    }

    /// Replaces every worker in use, one at a time, with a new process
    /// (of `program`, for an upgrade): see `Pool::rolling_restart`. Runs as
    /// a task of its own: if this future is dropped, the restart stops
    /// after the worker it is replacing, whose replacement either takes
    /// over or is stopped, never left half-started.
    pub(crate) async fn rolling_restart(
        self: &Arc<Self>,
        program: Option<PathBuf>,
    ) -> Result<(), RestartError> {
        /// Tells the task to stop at the next worker when dropped.
        struct StopOnDrop(Arc<AtomicBool>);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let task = tokio::spawn(self.clone().restart_each(program, stop.0.clone()));
        match task.await {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// The body of [`rolling_restart`](Self::rolling_restart), which
    /// checks `stop` before each worker.
    async fn restart_each(
        self: Arc<Self>,
        program: Option<PathBuf>,
        stop: Arc<AtomicBool>,
    ) -> Result<(), RestartError> {
        // No resize (and no other rolling restart) meanwhile: the workers
        // in use stay the same.
        let _resizing = self.resizing.lock().await;
        let local = match &self.spec.source {
            WorkerSource::Local(local) => local,
            WorkerSource::Connector(c) => {
                let why = format!(
                    "cannot restart workers reached through {} one by one: the pool does not \
                     start them itself",
                    c.0.describe()
                );
                return Err(RestartError::new(0, 0, BuildError::new(why).into()));
            }
        };
        let upgraded = program.map(|p| WorkerSource::Local(Arc::new(local.with_program(p))));
        let workers = self.active.load(Ordering::SeqCst);
        for index in 0..workers {
            let fail = |e| RestartError::new(index, index, e);
            if stop.load(Ordering::SeqCst) {
                return Err(fail(StartError::Closed));
            }
            let spec = match &upgraded {
                Some(source) => Cow::Owned(LaunchSpec {
                    source: source.clone(),
                    ..self.spec.clone()
                }),
                None => self.spec_for(index),
            };
            // Gated on the handshake and `init`: a replacement that fails
            // them is stopped, and the worker it was for serves on.
            let launched = self.launch_unless_stopped(&spec, index).await;
            let launched = launched.unwrap_or(Err(StartError::Closed)).map_err(fail)?;
            if let Some(source) = &upgraded {
                // Before the handover, so that a replacement that dies at
                // once is restarted from the program it was started from.
                crate::sync::lock(&self.programs).per_index[index] = Some(source.clone());
            }
            self.hand_over(index, launched).await.map_err(fail)?;
        }
        if let Some(source) = upgraded {
            let mut programs = crate::sync::lock(&self.programs);
            programs.default = Some(source);
            programs.per_index.iter_mut().for_each(|p| *p = None);
        }
        Ok(())
    }

    /// Makes `launched` worker `index`'s next process, asks the current one
    /// to drain, and waits until the driver has installed it. If the pool
    /// stops (or the index loses its driver) first, `launched` is stopped.
    async fn hand_over(&self, index: usize, launched: Launched) -> Result<(), StartError> {
        let mut installs = self.installs.subscribe();
        let mut state = self.state.subscribe();
        let mut drivers = self.drivers.subscribe();
        *crate::sync::lock(&self.staged[index]) = Staged::Waiting(launched);
        loop {
            {
                let mut staged = crate::sync::lock(&self.staged[index]);
                match &*staged {
                    Staged::Waiting(_) => {}
                    Staged::Installed => {
                        *staged = Staged::None;
                        return Ok(());
                    }
                    // Stopped by the driver as it ended.
                    Staged::None => return Err(StartError::Closed),
                }
            }
            if self.is_stopping() || drivers.borrow_and_update()[index] == 0 {
                self.discard_staged(index);
                return Err(StartError::Closed);
            }
            // Its current process drains, ends, and the driver installs the
            // staged one in its place. A lane not open is already between
            // processes (recycling, or restarting after a crash): its driver
            // takes the staged one at its next start, or, if it started one
            // of its own meanwhile, the loop asks that one to drain.
            self.lanes[index].recycle_for(RecycleReason::RollingRestart);
            tokio::select! {
                _ = installs.changed() => {}
                _ = state.changed() => {}
                _ = drivers.changed() => {}
            }
        }
    }

    /// Installs the replacement staged for worker `index`, if there is
    /// one: `None` if there is not, else what
    /// [`install`](Supervisor::install) returns. The slot stays locked
    /// until the replacement is installed, so that the rolling restart
    /// sees it either waiting or installed.
    pub(super) fn install_staged(&self, index: usize) -> Option<Option<super::Serving>> {
        let mut staged = crate::sync::lock(&self.staged[index]);
        let Staged::Waiting(launched) = std::mem::take(&mut *staged) else {
            return None;
        };
        let serving = self.install(index, launched);
        *staged = Staged::Installed;
        Some(serving)
    }

    /// Stops a replacement staged for worker `index` that will not serve.
    pub(super) fn discard_staged(&self, index: usize) {
        let taken = std::mem::take(&mut *crate::sync::lock(&self.staged[index]));
        if let Staged::Waiting(launched) = taken {
            discard([launched]);
        }
    }
}
