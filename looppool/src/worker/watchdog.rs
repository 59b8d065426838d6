//! The blocked-loop detector (Tornado's `set_blocking_log_threshold`).
//!
//! A task on the loop stamps the time every quarter threshold; a plain
//! thread checks the stamp as often. When the stamp is older than the
//! threshold the loop is blocked: the thread writes a line to standard error
//! at once (the loop cannot send anything while blocked) and samples which
//! task is being polled. As soon as the loop turns again (the stamping task
//! runs, or a task's poll returns) the worker sends the episode to the
//! parent, before the completion of any task it names, so that the parent
//! can still tell which task each slot held.
//!
//! The cost on the hot path is two relaxed atomic stores per task poll (the
//! slot being polled) and one relaxed load.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::outbox::Outbox;
use crate::protocol::report::{Blocked, ReportFrame};
use crate::protocol::{self, kind};

/// Most task slots named per episode.
const MAX_SLOTS: usize = 16;

/// State shared by the loop and the watchdog thread.
#[derive(Debug)]
pub(crate) struct Watch {
    epoch: Instant,
    threshold: Duration,
    /// When the loop last turned, in ms since `epoch`.
    turned_ms: AtomicU64,
    /// The wire slot + 1 of the task being polled, 0 when none is.
    current: AtomicU32,
    /// Set by the watchdog while an episode is open: a hint for the loop,
    /// which checks it after each poll.
    flagged: AtomicBool,
    episode: Mutex<Episode>,
}

#[derive(Debug, Default)]
struct Episode {
    /// Whether an episode is open (the authoritative copy of `flagged`).
    open: bool,
    /// When the loop last turned before the episode, in ms since `epoch`.
    since_ms: u64,
    /// Slots of the tasks seen being polled during the episode.
    slots: Vec<u32>,
    /// What the process's threads were doing when the episode began.
    stack: Option<String>,
}

impl Watch {
    pub(crate) fn new(threshold: Duration) -> Self {
        Watch {
            epoch: Instant::now(),
            threshold,
            turned_ms: AtomicU64::new(0),
            current: AtomicU32::new(0),
            flagged: AtomicBool::new(false),
            episode: Mutex::new(Episode::default()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// How often the loop stamps and the watchdog checks.
    pub(crate) fn period(&self) -> Duration {
        (self.threshold / 4).max(Duration::from_millis(1))
    }

    /// Runs `poll`, the poll of the task in wire slot `slot`, and calls
    /// `turned` when an episode is open, which it (or something before it)
    /// blocked the loop through.
    #[inline]
    pub(crate) fn polling<R>(
        &self,
        slot: u32,
        poll: impl FnOnce() -> R,
        turned: impl FnOnce(),
    ) -> R {
        self.current.store(slot.wrapping_add(1), Ordering::Relaxed);
        let r = poll();
        self.current.store(0, Ordering::Relaxed);
        if self.flagged.load(Ordering::Relaxed) {
            turned();
        }
        r
    }

    /// The loop turned: stamps the time and sends the episode that ended,
    /// if one did, to `out`; `running` is the number of tasks running.
    pub(crate) fn turned(&self, out: &Outbox, running: usize) {
        let ended = {
            let mut ep = crate::sync::lock(&self.episode);
            let now = self.now_ms();
            self.turned_ms.store(now, Ordering::Relaxed);
            if ep.open {
                ep.open = false;
                self.flagged.store(false, Ordering::Relaxed);
                Some((
                    now.saturating_sub(ep.since_ms),
                    std::mem::take(&mut ep.slots),
                    ep.stack.take(),
                ))
            } else {
                None
            }
        };
        let Some((blocked_ms, slots, stack)) = ended else {
            return;
        };
        let frame = ReportFrame::Blocked(Blocked {
            blocked_ms,
            threshold_ms: self.threshold.as_millis() as u64,
            slots,
            running: running as u64,
            stack,
        });
        let max_frame = out.max_frame();
        out.try_push_frame(usize::MAX, |buf| {
            let _ = protocol::put_value(buf, kind::REPORT, &frame, max_frame);
        });
    }

    /// The watchdog thread's body: never returns.
    fn watch(&self, who: &str) {
        let threshold_ms = self.threshold.as_millis() as u64;
        loop {
            std::thread::sleep(self.period());
            let mut ep = crate::sync::lock(&self.episode);
            let turned = self.turned_ms.load(Ordering::Relaxed);
            if self.now_ms().saturating_sub(turned) <= threshold_ms {
                continue;
            }
            let current = self.current.load(Ordering::Relaxed);
            if !ep.open {
                ep.open = true;
                ep.since_ms = turned;
                ep.slots.clear();
                self.flagged.store(true, Ordering::Relaxed);
                let task = match current {
                    0 => "no task is being polled".to_owned(),
                    n => format!("polling the task in slot {}", n - 1),
                };
                // Standard error is the only way out while the loop is stuck.
                eprintln!(
                    "looppool {who}: event loop blocked for more than {threshold_ms} ms ({task})"
                );
                // Read now, while the loop is stuck, for the report sent
                // when it turns again; without the lock, which the loop
                // takes as it turns.
                drop(ep);
                let stack = crate::forensics::own_thread_states();
                ep = crate::sync::lock(&self.episode);
                if ep.open && ep.since_ms == turned {
                    ep.stack = stack;
                }
            }
            if current != 0 && ep.slots.len() < MAX_SLOTS && !ep.slots.contains(&(current - 1)) {
                ep.slots.push(current - 1);
            }
        }
    }
}

/// Starts the watchdog thread for `who` (the worker, as the thread's
/// message names it); false when it cannot start. The loop must then call
/// [`Watch::turned`] every [`Watch::period`].
pub(crate) fn start_thread(watch: &Arc<Watch>, who: String) -> bool {
    watch.turned_ms.store(watch.now_ms(), Ordering::Relaxed);
    let thread_watch = watch.clone();
    let spawned = std::thread::Builder::new()
        .name("looppool-watchdog".into())
        .spawn(move || thread_watch.watch(&who));
    if let Err(e) = spawned {
        tracing::warn!("cannot start the blocked-loop watchdog: {e}");
        return false;
    }
    true
}
