//! Room on any worker of a pool: how a round-robin sender that found every
//! worker full waits for the first slot freed anywhere.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Wakes senders waiting for room on any worker of one pool; shared by the
/// pool's lanes, which wake it whenever they wake their own waiters.
#[derive(Debug, Default)]
pub(crate) struct AnySpace {
    notify: Notify,
    /// Senders waiting now: the lanes wake the pool only when some do.
    waiters: AtomicUsize,
}

impl AnySpace {
    /// Whether some sender waits for room on any worker.
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiters.load(Ordering::SeqCst) > 0
    }

    /// Wakes every sender waiting for room, if any waits.
    pub(crate) fn wake(&self) {
        if self.has_waiters() {
            self.notify.notify_waiters();
        }
    }

    /// Runs `attempt` until it gives a result, waiting between attempts for
    /// a lane to report room. The first attempt is made unregistered: most
    /// succeed (a round-robin send whose turn fell on a full worker finds
    /// room on the next), and registering costs two locks of the `Notify`
    /// and two read-modify-writes of the shared count. From then on the
    /// waiter is registered before each attempt, so room freed during one
    /// is not missed.
    ///
    /// # Cancel safety
    /// Cancel safe when `attempt` is: dropping the future only unregisters.
    pub(crate) async fn retry_until<T>(&self, mut attempt: impl FnMut() -> Option<T>) -> T {
        if let Some(done) = attempt() {
            return done;
        }
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _waiting = Waiting::new(&self.waiters);
            if let Some(done) = attempt() {
                return done;
            }
            notified.await;
        }
    }
}

/// Counts one waiting sender for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
