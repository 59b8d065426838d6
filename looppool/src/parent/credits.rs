//! The parent's account of one worker's output-credit window.
//!
//! A worker may send an output only while it holds a credit; the parent
//! gives a credit back for each output its consumer takes (or a caller
//! receives). This type is the parent's only record of that window: how
//! many outputs the worker may still send, how large its window is, and
//! the credits due to it but not sent yet.

/// One worker connection's output window, as the parent counts it.
#[derive(Debug, Default)]
pub(crate) struct OutputWindow {
    /// Outputs the worker may still send: its window, less the outputs
    /// received, plus the credits sent back since. Negative when the
    /// worker ignored its credits.
    open: i64,
    /// The whole window, as set at the handshake.
    size: u32,
    /// Credits due to the worker but not yet sent (see [`Self::owe`]).
    owed: u32,
}

/// The worker sent more outputs than it had credits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overdrawn(pub(crate) u64);

impl OutputWindow {
    /// A fresh window of `size` credits, all held by the worker.
    pub(crate) fn new(size: u32) -> Self {
        OutputWindow {
            open: size.into(),
            size,
            owed: 0,
        }
    }

    /// Counts `n` outputs received from the worker.
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
        Ok(())
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
        let mut w = OutputWindow::new(4);
        assert_eq!(w.spend(4), Ok(()));
        assert_eq!(w.spend(2), Err(Overdrawn(2)));
    }

    #[test]
    fn owed_credits_count_once_sent() {
        let mut w = OutputWindow::new(8);
        w.spend(3).unwrap();
        w.owe(3);
        assert_eq!(w.open(), 5, "owed is not yet sent");
        assert_eq!(w.take_owed(), Some(3));
        assert_eq!(w.open(), 8);
        assert_eq!(w.take_owed(), None);
    }

    #[test]
    fn low_below_half_the_window() {
        let mut w = OutputWindow::new(8);
        w.spend(4).unwrap();
        assert!(!w.is_low());
        w.spend(1).unwrap();
        assert!(w.is_low());
        let mut tiny = OutputWindow::new(1);
        assert!(!tiny.is_low());
        tiny.spend(1).unwrap();
        assert!(tiny.is_low());
    }
}
