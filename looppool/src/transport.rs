//! Frames over a byte stream: the seam between the pool and how it reaches a worker.
//!
//! The pool and the worker never touch sockets directly. They see a
//! [`Connection`]: a pair of byte streams that carry looppool's frames. The
//! local transport is a Unix socketpair created per worker (no filesystem
//! path). Another transport (a message broker) implements a [`Connector`]
//! that hands the pool the same pair of streams, and runs
//! [`crate::worker::serve`] at the worker's end; the `Worker` trait does not
//! change. [`frame`] tells such a transport where frames end and which ones
//! start or complete a task.

use std::io;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{CodecError, FrameDecoder};

mod connector;
pub mod frame;

pub use connector::{spawn_child, ConnectFuture, Connector, Link, Peer};

/// The reading half of a connection.
pub type ReadHalf = Pin<Box<dyn AsyncRead + Send>>;
/// The writing half of a connection.
pub type WriteHalf = Pin<Box<dyn AsyncWrite + Send>>;

/// One full-duplex connection to a peer, split so that reading and writing
/// run as separate tasks (a single task that writes then reads deadlocks once
/// both directions fill their kernel buffers).
pub struct Connection {
    pub(crate) reader: ReadHalf,
    pub(crate) writer: WriteHalf,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

impl Connection {
    /// A connection over any pair of byte streams.
    pub fn new(
        reader: impl AsyncRead + Send + 'static,
        writer: impl AsyncWrite + Send + 'static,
    ) -> Self {
        Connection {
            reader: Box::pin(reader),
            writer: Box::pin(writer),
        }
    }

    /// Two connected in-memory ends, each buffering up to `capacity` bytes
    /// per direction: one for the pool (returned by a [`Connector`]) and one
    /// for [`crate::worker::serve`], or for a transport that relays the
    /// frames elsewhere.
    pub fn pair(capacity: usize) -> (Connection, Connection) {
        let (a, b) = tokio::io::duplex(capacity);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        (Connection::new(ar, aw), Connection::new(br, bw))
    }

    /// Splits the connection into its reading and writing halves.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        (self.reader, self.writer)
    }

    /// A connection over a connected Unix socket.
    pub(crate) fn unix(stream: std::os::unix::net::UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        let (reader, writer) = stream.into_split();
        Ok(Connection {
            reader: Box::pin(reader),
            writer: Box::pin(writer),
        })
    }
}

/// Creates the two ends of a local connection: the parent's and the child's.
pub(crate) fn socketpair() -> io::Result<(
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
)> {
    std::os::unix::net::UnixStream::pair()
}

/// Reads bytes in large chunks and splits them into frames.
pub(crate) struct FrameReader {
    io: ReadHalf,
    buf: Vec<u8>,
    decoder: FrameDecoder,
}

/// Why reading frames stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Codec(CodecError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "read failed: {e}"),
            ReadError::Codec(e) => e.fmt(f),
        }
    }
}

/// Bytes asked of the kernel per read: large enough that one read carries
/// hundreds of small frames.
const READ_CHUNK: usize = 64 * 1024;

/// An empty read buffer larger than this is given back to the allocator.
const SHRINK_ABOVE: usize = 4 * 1024 * 1024;

impl FrameReader {
    pub(crate) fn new(io: ReadHalf, max_frame: usize) -> Self {
        FrameReader {
            io,
            buf: Vec::with_capacity(READ_CHUNK),
            decoder: FrameDecoder::new(max_frame),
        }
    }

    /// Changes the largest frame accepted from now on.
    pub(crate) fn set_max_frame(&mut self, max: usize) {
        self.decoder.set_max(max);
    }

    /// Reads more bytes. Returns `Ok(false)` at a clean end of stream and an
    /// error if the stream ends inside a frame.
    pub(crate) async fn fill(&mut self) -> Result<bool, ReadError> {
        self.decoder.compact(&mut self.buf);
        if self.decoder.wanted(&self.buf) == 0 {
            // A whole frame is already here (read along with the last one a
            // previous owner took, such as the handshake's ready message):
            // hand it out before waiting for more bytes.
            return Ok(true);
        }
        if self.buf.is_empty() && self.buf.capacity() > SHRINK_ABOVE {
            // One large frame must not pin its buffer for the connection's life.
            self.buf = Vec::with_capacity(READ_CHUNK);
        }
        let want = self.decoder.wanted(&self.buf).max(READ_CHUNK);
        self.buf.reserve(want);
        let n = match self.io.read_buf(&mut self.buf).await {
            Ok(n) => n,
            // A peer that exits with input it never read resets the
            // connection rather than closing it: for us the stream ends
            // there all the same, cleanly or inside a frame.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(ReadError::Io(e)),
        };
        if n == 0 {
            return if self.buf.is_empty() {
                Ok(false)
            } else {
                Err(ReadError::Codec(CodecError::Truncated))
            };
        }
        Ok(true)
    }

    /// The next complete frame body already read, if any.
    pub(crate) fn next_frame(&mut self) -> Result<Option<&[u8]>, ReadError> {
        self.decoder.next_frame(&self.buf).map_err(ReadError::Codec)
    }
}

/// Writes one batch of frames.
pub(crate) async fn write_batch(io: &mut WriteHalf, batch: &[u8]) -> io::Result<()> {
    io.write_all(batch).await
}
