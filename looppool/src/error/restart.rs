//! The error of a rolling restart or an upgrade.

use std::fmt;

use super::StartError;

/// Why [`Pool::rolling_restart`](crate::Pool::rolling_restart) or
/// [`Pool::upgrade`](crate::Pool::upgrade) stopped before replacing every
/// worker.
///
/// Workers `0..replaced` run their replacements; worker
/// [`worker`](Self::worker) and those after it still run their previous
/// processes, which kept serving throughout. The
/// [`source`](std::error::Error::source) is the [`StartError`] of the
/// replacement that failed (it did not start, failed the handshake or its
/// initialiser), or [`StartError::Closed`] when the pool began to shut
/// down.
#[derive(Debug)]
pub struct RestartError {
    worker: usize,
    replaced: usize,
    cause: StartError,
}

impl RestartError {
    pub(crate) fn new(worker: usize, replaced: usize, cause: StartError) -> Self {
        RestartError {
            worker,
            replaced,
            cause,
        }
    }

    /// The worker whose replacement failed: it and those after it were
    /// left as they were.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// How many workers (the first ones, by index) were replaced before it
    /// stopped.
    pub fn replaced(&self) -> usize {
        self.replaced
    }

    /// Why the replacement failed (also the error's
    /// [`source`](std::error::Error::source)).
    pub fn cause(&self) -> &StartError {
        &self.cause
    }

    /// The replacement's error, by value.
    pub fn into_cause(self) -> StartError {
        self.cause
    }
}

impl fmt::Display for RestartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.replaced {
            0 => write!(
                f,
                "the replacement of worker {} did not start: no worker was replaced, \
                 all keep serving",
                self.worker
            ),
            n => write!(
                f,
                "the replacement of worker {} did not start: workers 0 to {} were \
                 replaced, worker {} and later keep their previous processes",
                self.worker,
                n - 1,
                self.worker
            ),
        }
    }
}

impl std::error::Error for RestartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}
