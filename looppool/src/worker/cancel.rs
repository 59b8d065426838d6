//! Cancelling a task that runs in the worker: the signal its handler may
//! await, and when its future is dropped.
//!
//! Only tasks that wait (spawned after their first poll) and tasks whose
//! handler asked for the signal get a cell: a task that completes in its
//! first poll, as most do, never touches this module beyond one counter
//! check.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::Notify;

/// The cancellation state of the tasks running in one worker, by wire slot.
pub(crate) struct Cancels {
    cells: RefCell<Vec<Option<Rc<CancelCell>>>>,
    /// Cells in `cells`: the completion path looks no further when zero.
    armed: Cell<usize>,
    /// How long a task that awaits its cancellation may run on after it.
    pub(crate) grace: Duration,
}

/// One running task's cancellation.
#[derive(Default)]
pub(crate) struct CancelCell {
    /// The parent cancelled the task.
    requested: Cell<bool>,
    /// Its handler asked for the signal, so it gets the grace period to
    /// clean up rather than being dropped at once.
    cleanup: Cell<bool>,
    wake: Notify,
}

impl Cancels {
    pub(crate) fn new(grace: Duration) -> Self {
        Cancels {
            cells: RefCell::new(Vec::new()),
            armed: Cell::new(0),
            grace,
        }
    }

    /// The cell of the task in `slot`, made if it has none.
    pub(crate) fn arm(&self, slot: u32) -> Rc<CancelCell> {
        let mut cells = self.cells.borrow_mut();
        let i = slot as usize;
        if cells.len() <= i {
            cells.resize_with(i + 1, || None);
        }
        if let Some(cell) = &cells[i] {
            return cell.clone();
        }
        let cell = Rc::new(CancelCell::default());
        cells[i] = Some(cell.clone());
        self.armed.set(self.armed.get() + 1);
        cell
    }

    /// Forgets the cell of the task in `slot`, which ended.
    #[inline(always)]
    pub(crate) fn disarm(&self, slot: u32) {
        if self.armed.get() == 0 {
            return;
        }
        self.disarm_slow(slot);
    }

    #[cold]
    fn disarm_slow(&self, slot: u32) {
        let mut cells = self.cells.borrow_mut();
        if let Some(cell) = cells.get_mut(slot as usize) {
            if cell.take().is_some() {
                self.armed.set(self.armed.get() - 1);
            }
        }
    }

    /// The parent's cancel of the task in `slot`: signals it, if one runs
    /// there. Nothing runs there when the task ended before the frame was
    /// read (its completion is on its way, and wins).
    pub(crate) fn request(&self, slot: u32) {
        let cells = self.cells.borrow();
        if let Some(Some(cell)) = cells.get(slot as usize) {
            cell.requested.set(true);
            cell.wake.notify_waiters();
        }
    }
}

impl CancelCell {
    /// Whether the parent cancelled the task.
    pub(crate) fn is_requested(&self) -> bool {
        self.requested.get()
    }

    /// Marks the task as one that cleans up after a cancel, so it is given
    /// the grace period.
    pub(crate) fn wants_cleanup(&self) {
        self.cleanup.set(true);
    }

    /// Waits for the cancellation.
    pub(crate) async fn requested(&self) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.requested.get() {
                return;
            }
            notified.await;
        }
    }

    /// Completes when the task's future is to be dropped: at once after
    /// the cancellation, or after `grace` for a task that awaits it.
    pub(crate) async fn drop_due(&self, grace: Duration) {
        self.requested().await;
        if self.cleanup.get() {
            tokio::time::sleep(grace).await;
        }
    }
}

impl Cancels {
    /// Whether the task in `slot` was cancelled (false when it has no cell:
    /// a task that has not waited yet cannot have been).
    pub(crate) fn is_requested(&self, slot: u32) -> bool {
        let cells = self.cells.borrow();
        matches!(cells.get(slot as usize), Some(Some(cell)) if cell.is_requested())
    }
}
