//! The choice of which tasks (or outputs) are timed: every one while they
//! are few, a random sample of about [`TIMED_PER_SEC`] a second when they
//! are many (see [where time goes](crate::metrics#where-time-goes)).

use super::TIMED_PER_SEC;

/// How long the rate is measured over before the sampling follows it.
const WINDOW_NS: u64 = 1_000_000;

/// The largest mean gap between timed tasks.
const MAX_EVERY: u64 = 1 << 20;

/// Chooses which of a stream of tasks are timed. Its owner calls
/// [`hit`](Self::hit) for each task (one decrement and a branch) and
/// [`adjust`](Self::adjust) whenever it reads the clock anyway.
#[derive(Debug, Clone)]
pub(crate) struct Sampler {
    /// Tasks until the next timed one, that one included.
    countdown: u32,
    /// The mean gap between timed tasks in force (1: every task).
    every: u32,
    /// The mean gap the countdown was drawn with: what its timed task
    /// counts for.
    weight: u32,
    /// The tasks of every gap drawn so far: less `countdown`, the tasks
    /// seen.
    drawn: u64,
    /// The rate window: when it began (ns on the owner's clock) and the
    /// tasks seen by then.
    window_ns: u64,
    window_seen: u64,
    /// xorshift64 state (never 0).
    rng: u64,
    /// About how many a second it times.
    per_sec: u32,
    on: bool,
}

impl Sampler {
    /// A sampler that times the first task, then about [`TIMED_PER_SEC`]
    /// a second, or none when not `on`; `seed` varies its draws from those
    /// of its siblings.
    pub(crate) fn new(on: bool, seed: u64) -> Self {
        Self::per_sec(on, seed, TIMED_PER_SEC)
    }

    /// [`new`](Self::new), timing about `per_sec` tasks a second.
    pub(crate) fn per_sec(on: bool, seed: u64, per_sec: u32) -> Self {
        Sampler {
            countdown: if on { 1 } else { u32::MAX },
            every: 1,
            weight: 1,
            drawn: if on { 1 } else { u64::from(u32::MAX) },
            window_ns: 0,
            window_seen: 0,
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            per_sec: per_sec.max(1),
            on,
        }
    }

    /// Counts one task; `Some(weight)` when it is to be timed, counting for
    /// `weight` tasks.
    #[inline(always)]
    pub(crate) fn hit(&mut self) -> Option<u32> {
        self.countdown -= 1;
        if self.countdown > 0 {
            return None;
        }
        self.fire()
    }

    #[cold]
    #[inline(never)]
    fn fire(&mut self) -> Option<u32> {
        if !self.on {
            self.countdown = u32::MAX;
            return None;
        }
        let weight = self.weight;
        self.draw();
        Some(weight)
    }

    /// Draws the gap to the next timed task: uniform in `1..2 * every`, so
    /// its mean is `every`.
    fn draw(&mut self) {
        let span = 2 * u64::from(self.every) - 1;
        let gap = if span <= 1 {
            1
        } else {
            1 + (self.random() % span) as u32
        };
        self.countdown = gap;
        self.drawn += u64::from(gap);
        self.weight = self.every;
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Tasks counted so far.
    fn seen(&self) -> u64 {
        self.drawn - u64::from(self.countdown)
    }

    /// Follows the rate: once a window has passed since the last
    /// adjustment (`now_ns` on the owner's clock), sets the mean gap to the
    /// tasks seen per second over it divided by the rate it times at.
    pub(crate) fn adjust(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.window_ns);
        if !self.on || elapsed < WINDOW_NS {
            return;
        }
        let seen = self.seen();
        let per_sec = u128::from(seen - self.window_seen) * 1_000_000_000 / u128::from(elapsed);
        let every = (per_sec / u128::from(self.per_sec)).clamp(1, MAX_EVERY.into()) as u32;
        let was = self.every;
        self.every = every;
        // A countdown drawn for a faster stream would leave a slow one
        // untimed for long: draw it again.
        if every < was && u64::from(self.countdown) > 2 * u64::from(every) - 1 {
            self.drawn -= u64::from(self.countdown);
            self.draw();
        }
        self.window_ns = now_ns;
        self.window_seen = seen;
    }

    /// The mean gap in force (for tests).
    #[cfg(test)]
    pub(crate) fn every(&self) -> u32 {
        self.every
    }
}
