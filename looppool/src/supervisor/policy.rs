//! The restart policy: when and how fast dead workers are replaced.

use std::time::Duration;

/// When and how fast the pool replaces workers that die.
///
/// Modelled on Erlang/OTP's restart intensity: more than `max_restarts`
/// restarts within `window` (counted over the whole pool) mean something is
/// deeply wrong, and the pool fails instead of looping.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartPolicy {
    /// Whether dead workers are replaced at all.
    pub restart: bool,
    /// Most restarts allowed within `window`.
    pub max_restarts: u32,
    /// The window over which restarts are counted.
    pub window: Duration,
    /// Delay before the first restart of a worker; doubles for each restart
    /// of the same worker that follows a short life.
    pub backoff_initial: Duration,
    /// The longest delay.
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            restart: true,
            max_restarts: 10,
            window: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(2),
        }
    }
}

impl RestartPolicy {
    /// Never replace a dead worker: the pool runs on with fewer.
    pub fn never() -> Self {
        RestartPolicy {
            restart: false,
            ..Self::default()
        }
    }

    /// Replace workers, allowing at most `max_restarts` within `window`.
    pub fn intensity(max_restarts: u32, window: Duration) -> Self {
        RestartPolicy {
            max_restarts,
            window,
            ..Self::default()
        }
    }

    /// Sets the back-off: `initial` doubling up to `max`.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }
}

/// `value` moved by up to ±10 %, decided by `seed`.
pub(crate) fn jittered(value: u64, seed: u64) -> u64 {
    // A multiplicative hash spreads consecutive seeds (pids) apart.
    let h = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    let permille = 900 + h % 201;
    value / 1000 * permille + value % 1000 * permille / 1000
}
