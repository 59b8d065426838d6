//! Operating a running pool from outside: its control socket.

use std::path::Path;

use super::Pool;
use crate::worker::Worker;

impl<W: Worker> Pool<W> {
    /// The path of the pool's [control socket](crate::control), or `None`
    /// when it is off
    /// ([`no_control_socket`](crate::PoolBuilder::no_control_socket), or
    /// the default directory could not be used).
    ///
    /// ```no_run
    /// # async fn demo(pool: looppool::Pool<impl looppool::Worker>) {
    /// if let Some(path) = pool.control_socket() {
    ///     println!("looppool top --socket {}", path.display());
    /// }
    /// # }
    /// ```
    pub fn control_socket(&self) -> Option<&Path> {
        self.inner.control_socket.as_ref().map(|c| c.path())
    }

    /// Stops the control socket's listener and removes its file, once the
    /// pool has shut down.
    pub(super) fn close_control(&self) {
        if let Some(socket) = &self.inner.control_socket {
            socket.close();
        }
    }
}
