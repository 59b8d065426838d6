//! The builder's settings for operating the pool from outside.

use std::path::PathBuf;

use super::PoolBuilder;
use crate::control::Setting;
use crate::worker::Worker;

/// The control socket (see [`crate::control`]).
impl<W: Worker> PoolBuilder<W> {
    /// Puts the pool's [control socket](crate::control) in `dir` instead
    /// of [`default_dir`](crate::control::default_dir). `dir` is created
    /// (mode 0700) if missing, and must be a directory of this user with no
    /// access for group or others; if it cannot be used,
    /// [`start`](Self::start) fails with
    /// [`StartError::Config`](crate::StartError::Config). `looppool top
    /// --dir <dir>` finds the pools there.
    pub fn control_socket(mut self, dir: impl Into<PathBuf>) -> Self {
        self.control_socket = Setting::Dir(dir.into());
        self
    }

    /// Turns the control socket off: no listener, no file, and the pool is
    /// invisible to `looppool top`. The socket is on by default (see
    /// [why](crate::control#on-by-default)).
    pub fn no_control_socket(mut self) -> Self {
        self.control_socket = Setting::Off;
        self
    }
}
