//! The two ends of a worker's link through the broker. Each relays
//! looppool's frames between a local [`Connection`](looppool::transport::Connection)
//! and the broker's subjects, so that the pool and the worker runtime above
//! them run unchanged.

pub(crate) mod ids;
mod outputs;
pub(crate) mod parent;
mod publish;
mod sent;
pub(crate) mod worker;

/// Splits the whole frames at the start of `buf` off, returning them as one
/// buffer each; what remains is the start of an incomplete frame.
pub(crate) fn take_frames(buf: &mut bytes::BytesMut) -> Vec<bytes::Bytes> {
    let mut frames = Vec::new();
    while let Some(len) = looppool::transport::frame::frame_len(buf) {
        frames.push(buf.split_to(len).freeze());
    }
    frames
}
