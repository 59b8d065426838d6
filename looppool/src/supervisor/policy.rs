//! The restart policy: when and how fast dead workers are replaced.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

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

/// The restarts made within the policy's window, over the whole pool.
#[derive(Debug, Default)]
pub(crate) struct RestartWindow {
    restarts: VecDeque<Instant>,
}

impl RestartWindow {
    /// Records a restart at `now` and returns true, or returns false when
    /// `max_restarts` were already made within the window before `now`.
    pub(crate) fn try_record(&mut self, policy: &RestartPolicy, now: Instant) -> bool {
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= policy.max_restarts as usize {
            return false;
        }
        self.restarts.push_back(now);
        true
    }
}

/// A life at least this long resets a worker's back-off.
pub(crate) const LONG_LIFE: Duration = Duration::from_secs(1);

/// The back-off of one worker index: doubles with each restart that follows
/// a short life, up to the policy's maximum.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    /// Restarts of this worker index so far.
    attempt: u32,
    /// Restarts since the worker last lived [`LONG_LIFE`].
    short_lives: u32,
}

impl Backoff {
    /// The worker lived long: the next delay is the initial one again.
    pub(crate) fn lived(&mut self, life: Duration) {
        if life >= LONG_LIFE {
            self.short_lives = 0;
        }
    }

    /// Counts a restart; returns its number (from 1) and the delay before it.
    pub(crate) fn next(&mut self, policy: &RestartPolicy) -> (u32, Duration) {
        self.attempt += 1;
        let factor = 1u32 << self.short_lives.min(16);
        let delay = policy
            .backoff_initial
            .saturating_mul(factor)
            .min(policy.backoff_max);
        self.short_lives += 1;
        (self.attempt, delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_window_allows_max_restarts_then_refuses_until_old_ones_leave_it() {
        let policy = RestartPolicy::intensity(3, ms(100));
        let mut window = RestartWindow::default();
        let t0 = Instant::now();
        assert!(window.try_record(&policy, t0));
        assert!(window.try_record(&policy, t0 + ms(10)));
        assert!(window.try_record(&policy, t0 + ms(20)));
        assert!(!window.try_record(&policy, t0 + ms(30)));
        // At exactly the window's length the first restart still counts.
        assert!(!window.try_record(&policy, t0 + ms(100)));
        // Past it, the first one has left the window: one more is allowed.
        assert!(window.try_record(&policy, t0 + ms(101)));
        assert!(!window.try_record(&policy, t0 + ms(105)));
    }

    #[test]
    fn a_window_of_zero_restarts_refuses_the_first() {
        let policy = RestartPolicy::intensity(0, ms(100));
        assert!(!RestartWindow::default().try_record(&policy, Instant::now()));
    }

    #[test]
    fn backoff_doubles_after_short_lives_up_to_the_cap() {
        let policy = RestartPolicy::default().with_backoff(ms(10), ms(75));
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..6).map(|_| backoff.next(&policy)).collect();
        assert_eq!(
            delays,
            [
                (1, ms(10)),
                (2, ms(20)),
                (3, ms(40)),
                (4, ms(75)),
                (5, ms(75)),
                (6, ms(75))
            ]
        );
    }

    #[test]
    fn a_long_life_resets_the_delay_but_not_the_attempt_count() {
        let policy = RestartPolicy::default().with_backoff(ms(10), ms(1000));
        let mut backoff = Backoff::default();
        backoff.next(&policy);
        backoff.next(&policy);
        backoff.lived(LONG_LIFE - ms(1));
        assert_eq!(backoff.next(&policy), (3, ms(40)));
        backoff.lived(LONG_LIFE);
        assert_eq!(backoff.next(&policy), (4, ms(10)));
    }

    #[test]
    fn backoff_does_not_overflow_after_many_restarts() {
        let policy = RestartPolicy::default().with_backoff(Duration::from_secs(1), Duration::MAX);
        let mut backoff = Backoff::default();
        for _ in 0..100 {
            backoff.next(&policy);
        }
        assert_eq!(backoff.next(&policy).1, Duration::from_secs(1 << 16));
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_spreads_seeds() {
        for value in [0, 1, 999, 1000, 12_345, 1 << 40, u64::MAX / 2] {
            for seed in 0..2000 {
                let j = jittered(value, seed);
                assert!(
                    j >= (value / 10 * 9).saturating_sub(1) && j as u128 <= value as u128 * 11 / 10,
                    "{value} {seed} {j}"
                );
            }
        }
        let spread: std::collections::HashSet<_> =
            (0..100).map(|s| jittered(1_000_000, s)).collect();
        assert!(spread.len() > 50, "consecutive seeds land apart");
        assert_eq!(jittered(1_000_000, 7), jittered(1_000_000, 7));
    }
}
