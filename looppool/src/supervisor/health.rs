//! Health watches: the heartbeat that catches a stuck loop, and the memory
//! watch that recycles a bloated worker.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{jittered, Supervisor};
use crate::event::WorkerEvent;

impl<O: serde::de::DeserializeOwned + Send + 'static> Supervisor<O> {
    /// Pings the worker every `interval`; kills it when it has not answered
    /// for `timeout` (its loop is stuck), so that it is replaced.
    pub(super) async fn heartbeat(
        self: Arc<Self>,
        index: usize,
        pid: u32,
        generation: u64,
        interval: Duration,
        timeout: Duration,
    ) {
        let lane = self.lanes[index].clone();
        let mut nonce = 0u64;
        loop {
            tokio::time::sleep(interval).await;
            let silent_for = lane.silent_for();
            if silent_for > timeout {
                self.emit(WorkerEvent::Unresponsive {
                    worker: index,
                    pid,
                    silent_for,
                });
                lane.unresponsive.store(true, Ordering::SeqCst);
                self.kill(index);
                return;
            }
            nonce += 1;
            if !lane.ping(generation, nonce) {
                return;
            }
        }
    }

    /// Samples each worker's resident memory and recycles those above the
    /// limit (each with its own jitter, so they do not recycle together).
    pub(crate) fn spawn_memory_watch(self: &Arc<Self>, limit: u64) {
        let sup = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(sup) = sup.upgrade() else { return };
                if sup.is_stopping() {
                    return;
                }
                for (index, lane) in sup.lanes.iter().enumerate() {
                    let Some(pid) = sup.pid(index) else { continue };
                    let Some(rss) = crate::sys::resident_bytes(pid) else {
                        continue;
                    };
                    if rss > jittered(limit, pid.into()) {
                        lane.recycle_for_memory(rss);
                    }
                }
            }
        });
    }
}
