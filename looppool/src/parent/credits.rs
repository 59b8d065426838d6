//! The parent's account of one worker's output-credit window.
//!
//! A worker may send an output or a failure only while it holds the
//! credits it costs (one, or one per `credit_bytes` bytes of a large
//! frame: see [`protocol::output_cost`]); the parent gives them back as its
//! consumer takes the item (or at once when a caller receives it). This
//! type is the parent's only record of that window: how many credits the
//! worker may still spend, how large its window is, the credits due to it
//! but not sent yet, and since when the worker may be waiting for them.

use std::time::{Duration, Instant};

use crate::protocol;

/// One worker connection's output window, as the parent counts it.
#[derive(Debug, Default)]
pub(crate) struct OutputWindow {
    /// Credits the worker may still spend: its window, less the credits
    /// the frames received cost, plus the credits sent back since.
    /// Negative when the worker ignored its credits.
    open: i64,
    /// The whole window, as set at the handshake.
    size: u32,
    /// The frame bytes one credit covers.
    credit_bytes: u64,
    /// Credits due to the worker but not yet sent (see [`Self::owe`]).
    owed: u32,
    /// The most credits one frame of this worker cost (at least one): with
    /// fewer open, the worker may be waiting for credits.
    largest: u32,
    /// Since when the worker may be waiting for credits (see
    /// [`Self::is_shut`]), and whether that wait was reported.
    shut_since: Option<Instant>,
    reported: bool,
}

/// The worker sent more outputs than it had credits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overdrawn(pub(crate) u64);

impl OutputWindow {
    /// A fresh window of `size` credits of `credit_bytes` bytes each, all
    /// held by the worker.
    pub(crate) fn new(size: u32, credit_bytes: u64) -> Self {
        OutputWindow {
            open: size.into(),
            size,
            credit_bytes: credit_bytes.max(1),
            owed: 0,
            largest: 1,
            shut_since: None,
            reported: false,
        }
    }

    /// The credits an output or failure frame of `body` bytes cost.
    #[inline(always)]
    pub(crate) fn cost(&mut self, body: usize) -> u32 {
        if body as u64 <= self.credit_bytes {
            1
        } else {
            self.large_cost(body)
        }
    }

    #[cold]
    #[inline(never)]
    fn large_cost(&mut self, body: usize) -> u32 {
        let cost = protocol::output_cost(body, self.credit_bytes, self.size);
        self.largest = self.largest.max(cost);
        cost
    }

    /// Counts `n` credits spent by the frames received from the worker.
    ///
    /// # Errors
    /// [`Overdrawn`] with the excess when the worker sent more than its
    /// credits allowed: it does not wait for credits, and must be cut off
    /// before it fills the parent's memory.
    pub(crate) fn spend(&mut self, n: u32) -> Result<(), Overdrawn> {
        self.open -= i64::from(n);
        if self.open < 0 {
            return Err(Overdrawn(self.open.unsigned_abs()));
        }
        if self.is_shut() && self.shut_since.is_none() {
            self.shut_since = Some(Instant::now());
        }
        Ok(())
    }

    /// Whether the worker may be waiting for credits: it holds fewer than
    /// its largest frame so far cost (none, for small frames). Credits
    /// owed then go at once (the window is also low), so it stays shut
    /// only while the consumer does not take this worker's items.
    fn is_shut(&self) -> bool {
        self.open < i64::from(self.largest)
    }

    /// How long the worker has waited for credits, once, when that is at
    /// least `threshold`: the wait is reported once per episode, which
    /// ends when credits go back.
    pub(crate) fn unreported_wait(&mut self, threshold: Duration) -> Option<Duration> {
        let waited = self.shut_since?.elapsed();
        if self.reported || waited < threshold {
            return None;
        }
        self.reported = true;
        Some(waited)
    }

    /// Records `n` credits due to the worker, to be sent later.
    pub(crate) fn owe(&mut self, n: u32) {
        self.owed += n;
    }

    /// Whether credits are owed.
    pub(crate) fn is_owed(&self) -> bool {
        self.owed > 0
    }

    /// Whether the worker holds less than half its window, as far as the
    /// parent knows: it may soon wait for credits, so owed ones should go.
    /// (No frame costs more than half the window, so a worker that holds
    /// half can send any: see [`protocol::output_cost`].)
    pub(crate) fn is_low(&self) -> bool {
        self.open < i64::from(self.size / 2).max(1)
    }

    /// Takes the owed credits to send them now, counting them as held by
    /// the worker again; `None` when none are owed.
    pub(crate) fn take_owed(&mut self) -> Option<u32> {
        if self.owed == 0 {
            return None;
        }
        let n = std::mem::take(&mut self.owed);
        self.open += i64::from(n);
        if !self.is_shut() {
            self.shut_since = None;
            self.reported = false;
        }
        Some(n)
    }

    /// Outputs the worker may still send (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn open(&self) -> i64 {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spending_past_the_window_is_overdrawn() {
        let mut w = OutputWindow::new(4, 1024);
        assert_eq!(w.spend(4), Ok(()));
        assert_eq!(w.spend(2), Err(Overdrawn(2)));
    }

    #[test]
    fn owed_credits_count_once_sent() {
        let mut w = OutputWindow::new(8, 1024);
        w.spend(3).unwrap();
        w.owe(3);
        assert_eq!(w.open(), 5, "owed is not yet sent");
        assert_eq!(w.take_owed(), Some(3));
        assert_eq!(w.open(), 8);
        assert_eq!(w.take_owed(), None);
    }

    #[test]
    fn large_frames_cost_by_their_size_up_to_half_the_window() {
        let mut w = OutputWindow::new(8, 100);
        assert_eq!(w.cost(0), 1);
        assert_eq!(w.cost(100), 1);
        assert_eq!(w.cost(101), 2);
        assert_eq!(w.cost(300), 3);
        assert_eq!(w.cost(10_000), 4, "at most half the window");
        let mut tiny = OutputWindow::new(1, 100);
        assert_eq!(tiny.cost(10_000), 1);
    }

    #[test]
    fn a_wait_is_reported_once_per_episode() {
        let mut w = OutputWindow::new(4, 1024);
        w.spend(3).unwrap();
        assert_eq!(w.unreported_wait(Duration::ZERO), None, "one left");
        w.spend(1).unwrap();
        assert!(w.unreported_wait(Duration::from_secs(60)).is_none());
        assert!(w.unreported_wait(Duration::ZERO).is_some());
        assert!(w.unreported_wait(Duration::ZERO).is_none(), "once");
        w.owe(4);
        w.take_owed();
        assert!(w.unreported_wait(Duration::ZERO).is_none(), "over");
        w.spend(4).unwrap();
        assert!(w.unreported_wait(Duration::ZERO).is_some(), "a new one");
    }

    #[test]
    fn low_below_half_the_window() {
        let mut w = OutputWindow::new(8, 1024);
        w.spend(4).unwrap();
        assert!(!w.is_low());
        w.spend(1).unwrap();
        assert!(w.is_low());
        let mut tiny = OutputWindow::new(1, 1024);
        assert!(!tiny.is_low());
        tiny.spend(1).unwrap();
        assert!(tiny.is_low());
    }
}
