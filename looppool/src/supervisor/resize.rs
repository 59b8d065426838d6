//! Resizing a running pool, and serving the workers a start launched.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::launch::{discard, launch_all, Launched};
use super::Supervisor;
use crate::error::{BuildError, StartError};
use crate::parent::outputs::BatchSender;

impl<O: serde::de::DeserializeOwned + Send + 'static> Supervisor<O> {
    /// Starts a driver for each of `launched`, workers `first..`, and puts
    /// them in use.
    pub(crate) fn serve_launched(
        self: &Arc<Self>,
        first: usize,
        launched: Vec<Launched>,
        outputs: &BatchSender<O>,
    ) {
        let end = first + launched.len();
        for (index, l) in (first..end).zip(launched) {
            self.spawn_driver(index, l, outputs.clone());
        }
        self.active.store(end, Ordering::SeqCst);
    }

    /// Grows or shrinks the pool to `workers`. New workers start like the
    /// first ones; removed ones (the highest indices) drain first.
    pub(crate) async fn resize(self: &Arc<Self>, workers: usize) -> Result<(), StartError> {
        let _resizing = self.resizing.lock().await;
        if workers == 0 || workers > self.lanes.len() {
            return Err(BuildError::new(format!(
                "cannot resize to {workers} workers: the pool allows 1 to {} (raise max_workers)",
                self.lanes.len()
            ))
            .into());
        }
        if self.is_stopping() {
            return Err(StartError::Closed);
        }
        let current = self.active.load(Ordering::SeqCst);
        if workers > current {
            self.grow(current..workers).await?;
        } else if workers < current {
            self.shrink(workers..current).await;
        }
        Ok(())
    }

    /// Starts workers `added` and serves them; on failure none is added.
    async fn grow(self: &Arc<Self>, added: Range<usize>) -> Result<(), StartError> {
        for lane in &self.lanes[added.clone()] {
            lane.reopen();
        }
        self.forget_programs(added.clone());
        let launched = launch_all(&self.spec_for(added.start), added.clone()).await;
        let outputs = crate::sync::lock(&self.outputs)
            .as_ref()
            .and_then(|w| w.upgrade());
        match (launched, outputs) {
            (Ok(launched), Some(outputs)) => {
                self.serve_launched(added.start, launched, &outputs);
                Ok(())
            }
            (launched, _) => {
                let error = match launched {
                    Ok(launched) => {
                        discard(launched);
                        StartError::Closed
                    }
                    Err(e) => e,
                };
                for lane in &self.lanes[added] {
                    lane.stop();
                }
                Err(error)
            }
        }
    }

    /// Takes workers `removed` out of use and waits until they have drained
    /// and exited.
    async fn shrink(&self, removed: Range<usize>) {
        // Routing stops first, then the removed workers drain.
        self.active.store(removed.start, Ordering::SeqCst);
        for lane in &self.lanes[removed.clone()] {
            lane.stop();
        }
        let mut drivers = self.drivers.subscribe();
        let _ = drivers
            .wait_for(|d| d[removed.clone()].iter().all(|&n| n == 0))
            .await;
    }
}
