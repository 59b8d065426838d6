//! The parent's end of the wire: per worker, a lane (its queue of encoded
//! frames, task slots and output credits), the connection's reader and
//! writer, and the output stream they feed.

mod batches;
pub(crate) mod connection;
mod credits;
pub(crate) mod lane;
pub(crate) mod outputs;
pub(crate) mod reports;
mod slots;
pub(crate) mod space;
