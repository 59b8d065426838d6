//! The builder's control settings: dispatch policy and cancellation.

use std::time::Duration;

use super::PoolBuilder;
use crate::pool::{BlockedCancel, Dispatch};
use crate::worker::Worker;

/// Control over submitted work (see [`Dispatch`] and [`Pool::cancel`](crate::Pool::cancel)).
impl<W: Worker> PoolBuilder<W> {
    /// How round-robin sends choose their worker: [`Dispatch::RoundRobin`]
    /// (the default), [`Dispatch::LeastLoaded`] or [`Dispatch::Keyed`].
    pub fn dispatch(mut self, dispatch: Dispatch) -> Self {
        self.control.dispatch = dispatch;
        self
    }

    /// How long a cancelled task whose handler awaits
    /// [`TaskContext::cancelled`](crate::TaskContext::cancelled) may run on
    /// to clean up before its future is dropped. Default
    /// [`DEFAULT_CANCEL_GRACE`](crate::DEFAULT_CANCEL_GRACE) (1 s).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.control.grace = grace;
        self
    }

    /// What to do when a cancelled task's worker does not answer within
    /// twice the grace period, its handler blocking the loop: see
    /// [`BlockedCancel`] (default [`BlockedCancel::Wait`]).
    pub fn on_blocked_cancel(mut self, policy: BlockedCancel) -> Self {
        self.control.on_blocked = policy;
        self
    }
}
