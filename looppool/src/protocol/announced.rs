//! The frames that carry blobs by descriptor: their announcement of the
//! blobs' count and sizes around the frame they wrap.

use super::ProtocolError;
use crate::codec::{self, CodecError, Fields, FrameWriter};

/// The most blobs one frame may carry by descriptor.
pub(crate) const MAX_BLOBS: u32 = 1024;

/// The head of a frame that carries blobs by descriptor: how many, the size
/// of each, and the body of the frame it wraps, whose payload refers to
/// them by index. The descriptors travel on the connection's blob socket,
/// each sent before the frame that announces it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Announced<'a> {
    count: u32,
    /// `count` varints: each blob's size.
    sizes: &'a [u8],
    /// Their sum.
    pub(crate) total: u64,
    /// The wrapped frame's body (its kind first).
    pub(crate) inner: &'a [u8],
}

impl<'a> Announced<'a> {
    /// Reads the announcement of a `BLOBS` or `WORKER_BLOBS` frame from
    /// the body after its kind.
    pub(crate) fn parse(rest: &'a [u8]) -> Result<Self, ProtocolError> {
        Announced::read(&mut Fields::new(rest))
    }

    /// Reads the announcement after a `BLOBS` or `WORKER_BLOBS` kind.
    pub(super) fn read(f: &mut Fields<'a>) -> Result<Self, ProtocolError> {
        let count = f.varint_u32()?;
        if count == 0 || count > MAX_BLOBS {
            return Err(ProtocolError::Invalid(
                "a frame announcing no blobs, or more than 1,024",
            ));
        }
        let rest = f.rest();
        let mut sizes = Fields::new(rest);
        let mut total: u64 = 0;
        for _ in 0..count {
            let size = sizes.varint()?;
            if size == 0 {
                return Err(ProtocolError::Invalid("a frame announcing an empty blob"));
            }
            total = total
                .checked_add(size)
                .ok_or(ProtocolError::Invalid("blob sizes that overflow"))?;
        }
        let inner = sizes.rest();
        if inner.is_empty() {
            return Err(ProtocolError::Codec(CodecError::Truncated));
        }
        Ok(Announced {
            count,
            sizes: &rest[..rest.len() - inner.len()],
            total,
            inner,
        })
    }

    /// How many blobs the frame carries.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Each blob's size, in order.
    pub(crate) fn sizes(&self) -> impl Iterator<Item = u64> + 'a {
        let mut f = Fields::new(self.sizes);
        // Read once already, so each is there and well-formed.
        (0..self.count).map(move |_| f.varint().unwrap_or(0))
    }
}

/// The body of the frame that `body`, a `BLOBS` or `WORKER_BLOBS` frame's
/// body, wraps; `None` when the announcement is malformed.
pub(crate) fn blobs_inner(body: &[u8]) -> Option<&[u8]> {
    let mut f = Fields::new(body.get(1..)?);
    Announced::read(&mut f).ok().map(|a| a.inner)
}

/// Appends a frame of `kind` (`BLOBS` or `WORKER_BLOBS`) that carries
/// blobs of `sizes` bytes by descriptor around `inner`, a frame body;
/// returns where `inner` begins in `buf`. The frame's size, for the limit
/// `max`, counts the blobs' bytes.
pub(crate) fn put_blobs(
    buf: &mut Vec<u8>,
    kind: u8,
    sizes: &[usize],
    inner: &[u8],
    max: usize,
) -> Result<usize, CodecError> {
    let start = buf.len();
    let mut frame = FrameWriter::begin(buf, kind);
    codec::put_varint(&mut frame, sizes.len() as u64);
    for &size in sizes {
        codec::put_varint(&mut frame, size as u64);
    }
    let at = frame.len();
    frame.extend_from_slice(inner);
    let body = frame.len() - start - codec::HEADER_LEN;
    let total = sizes
        .iter()
        .fold(body, |sum, &size| sum.saturating_add(size));
    if total > max {
        // Dropped: the frame is taken out.
        return Err(CodecError::TooLarge { len: total, max });
    }
    frame.finish(usize::MAX)?;
    Ok(at)
}
