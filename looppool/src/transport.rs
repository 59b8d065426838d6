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

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};

use crate::codec::{CodecError, FrameDecoder, HEADER_LEN};

pub(crate) mod blobs;
mod connector;
pub mod frame;

pub use connector::{spawn_tied_child, ConnectFuture, Connector, Link, Peer};

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
    /// The socket that carries blobs' descriptors beside the byte stream,
    /// for a local connection; without it, blobs travel inline.
    pub(crate) blobs: Option<blobs::BlobChannel>,
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
            blobs: None,
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
    ///
    /// The two halves use two descriptors of the socket, and only the
    /// reading one is watched by the runtime all the time. A socket watched
    /// for writing too (as `tokio::net::UnixStream` is) turns writable again
    /// each time the peer reads, and that edge wakes this process for
    /// nothing: on one CPU, a context switch there and back per message.
    pub(crate) fn unix(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        let write_end = stream.try_clone()?;
        Ok(Connection {
            reader: Box::pin(UnixReader {
                fd: watch(stream, Interest::READABLE)?,
            }),
            writer: Box::pin(UnixWriter {
                idle: Some(write_end),
                blocked: None,
            }),
            blobs: None,
        })
    }

    /// [`unix`](Self::unix), with `blob_socket` (an end of a
    /// `blobs::pair`) carrying blobs' descriptors beside it.
    pub(crate) fn unix_with_blobs(
        stream: UnixStream,
        blob_socket: std::os::fd::OwnedFd,
    ) -> io::Result<Self> {
        let mut conn = Connection::unix(stream)?;
        conn.blobs = Some(blobs::BlobChannel::new(blob_socket)?);
        Ok(conn)
    }
}

/// Registers a socket with the runtime's I/O driver for `interest` only.
fn watch(stream: UnixStream, interest: Interest) -> io::Result<AsyncFd<UnixStream>> {
    crate::sys::register_unix(stream, interest)
}

/// The reading half of a Unix socket, watched for readability only.
struct UnixReader {
    fd: AsyncFd<UnixStream>,
}

impl AsyncRead for UnixReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            // `FrameReader` hands in initialized bytes, so this is free.
            let unfilled = buf.initialize_unfilled();
            let len = unfilled.len();
            match guard.try_io(|fd| fd.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    if n > 0 && n < len {
                        // Drained: the next read waits for the next edge
                        // instead of trying a read that would block.
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// The writing half of a Unix socket. It writes straight to the socket and
/// registers it with the runtime, for writability, only while a write would
/// block (the kernel's buffer is full), so the peer's reads do not wake us.
struct UnixWriter {
    /// The socket while writes go through.
    idle: Option<UnixStream>,
    /// The socket while waiting for room in the kernel's buffer.
    blocked: Option<AsyncFd<UnixStream>>,
}

impl UnixWriter {
    fn stream(&self) -> Option<&UnixStream> {
        self.idle
            .as_ref()
            .or_else(|| self.blocked.as_ref().map(AsyncFd::get_ref))
    }
}

impl AsyncWrite for UnixWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            if let Some(fd) = &this.blocked {
                let mut guard = ready!(fd.poll_write_ready(cx))?;
                match guard.try_io(|fd| fd.get_ref().write(buf)) {
                    Err(_would_block) => continue,
                    Ok(result) => {
                        // Room again: stop watching until the next time.
                        if let Some(fd) = this.blocked.take() {
                            this.idle = Some(fd.into_inner());
                        }
                        return Poll::Ready(result);
                    }
                }
            }
            let Some(stream) = this.idle.as_ref() else {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            };
            match (&*stream).write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let Some(stream) = this.idle.take() else {
                        unreachable!("checked above")
                    };
                    // Registering reports the socket writable at once if room
                    // appeared since the failed write.
                    this.blocked = Some(watch(stream, Interest::WRITABLE)?);
                }
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown_write())
    }
}

impl UnixWriter {
    fn shutdown_write(&self) -> io::Result<()> {
        match self.stream() {
            Some(stream) => match stream.shutdown(std::net::Shutdown::Write) {
                Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
                result => result,
            },
            None => Ok(()),
        }
    }
}

impl Drop for UnixWriter {
    fn drop(&mut self) {
        // The reading half keeps the socket open: say end of stream to the
        // peer now, as a dropped `tokio::net::unix::OwnedWriteHalf` does.
        let _ = self.shutdown_write();
    }
}

/// Creates the two ends of a local connection: the parent's and the child's.
pub(crate) fn socketpair() -> io::Result<(UnixStream, UnixStream)> {
    UnixStream::pair()
}

/// Reads bytes in large chunks and splits them into frames.
pub(crate) struct FrameReader {
    io: ReadHalf,
    /// Initialized bytes: those read are `buf[..end]`, the rest is room
    /// zeroed once, so a read never has to initialize what it reads into.
    buf: Vec<u8>,
    end: usize,
    decoder: FrameDecoder,
    /// How long a begun frame may go without a byte (none: forever).
    frame_timeout: Option<Duration>,
}

/// Why reading frames stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Codec(CodecError),
    /// A begun frame went [`FrameReader::set_frame_timeout`] without a byte.
    Stalled {
        /// The length its header announced, if the header arrived whole.
        len: Option<usize>,
        /// Bytes of it (header included) that arrived.
        have: usize,
        /// The timeout.
        after: Duration,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "read failed: {e}"),
            ReadError::Codec(e) => e.fmt(f),
            ReadError::Stalled {
                len: Some(len),
                have,
                after,
            } => write!(
                f,
                "frame of {len} bytes incomplete after {after:?} without a byte \
                 ({} of them arrived)",
                have - HEADER_LEN
            ),
            ReadError::Stalled {
                len: None,
                have,
                after,
            } => write!(
                f,
                "frame header incomplete after {after:?} without a byte \
                 ({have} of its {HEADER_LEN} bytes arrived)"
            ),
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
            buf: Vec::new(),
            end: 0,
            decoder: FrameDecoder::new(max_frame),
            frame_timeout: None,
        }
    }

    /// Gives up on a frame that, once begun, goes `timeout` without a byte:
    /// [`fill`](Self::fill) then fails with [`ReadError::Stalled`]. Without
    /// it, a peer whose garbage reads as a plausible length is waited for
    /// forever.
    pub(crate) fn set_frame_timeout(&mut self, timeout: Duration) {
        self.frame_timeout = Some(timeout);
    }

    /// Changes the largest frame accepted from now on.
    pub(crate) fn set_max_frame(&mut self, max: usize) {
        self.decoder.set_max(max);
    }

    /// Reads more bytes. Returns `Ok(false)` at a clean end of stream and an
    /// error if the stream ends inside a frame.
    pub(crate) async fn fill(&mut self) -> Result<bool, ReadError> {
        self.end = self.decoder.compact_within(&mut self.buf[..self.end]);
        if self.decoder.wanted(&self.buf[..self.end]) == 0 {
            // A whole frame is already here (read along with the last one a
            // previous owner took, such as the handshake's ready message):
            // hand it out before waiting for more bytes.
            return Ok(true);
        }
        if self.end == 0 && self.buf.len() > SHRINK_ABOVE {
            // One large frame must not pin its buffer for the connection's life.
            self.buf = Vec::new();
        }
        let want = self.decoder.wanted(&self.buf[..self.end]).max(READ_CHUNK);
        if self.buf.len() - self.end < want {
            self.buf.resize(self.end + want, 0);
        }
        // Bytes read earlier that are not a whole frame: a frame has begun
        // (the decoder's frames were compacted away above).
        let begun = self.end;
        let timeout = self.frame_timeout.filter(|_| begun > 0);
        let mut room = ReadBuf::new(&mut self.buf[self.end..]);
        let io = &mut self.io;
        // The timer is armed only when a read inside a begun frame has to
        // wait: not per read, and not between frames. It runs from about
        // the last byte that came (the previous `fill` returned on it), so
        // a large frame that keeps arriving is never cut.
        let mut timer = std::pin::pin!(None::<tokio::time::Sleep>);
        let read = std::future::poll_fn(|cx| {
            let polled = io.as_mut().poll_read(cx, &mut room);
            if let (Poll::Pending, Some(limit)) = (&polled, timeout) {
                if timer.is_none() {
                    timer.set(Some(tokio::time::sleep(limit)));
                }
                if let Some(timer) = timer.as_mut().as_pin_mut() {
                    if std::future::Future::poll(timer, cx).is_ready() {
                        return Poll::Ready(None);
                    }
                }
            }
            polled.map(Some)
        })
        .await;
        let Some(read) = read else {
            return Err(self.stalled(begun));
        };
        let n = match read {
            Ok(()) => room.filled().len(),
            // A peer that exits with input it never read resets the
            // connection rather than closing it: for us the stream ends
            // there all the same, cleanly or inside a frame.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(ReadError::Io(e)),
        };
        if n == 0 {
            return if self.end == 0 {
                Ok(false)
            } else {
                Err(ReadError::Codec(CodecError::Truncated))
            };
        }
        self.end += n;
        Ok(true)
    }

    /// The error for a frame of which `have` bytes came, then none.
    #[cold]
    fn stalled(&self, have: usize) -> ReadError {
        let len = self.buf[..have]
            .first_chunk::<HEADER_LEN>()
            .map(|h| u32::from_le_bytes(*h) as usize);
        ReadError::Stalled {
            len,
            have,
            after: self.frame_timeout.unwrap_or_default(),
        }
    }

    /// The next complete frame body already read, if any.
    pub(crate) fn next_frame(&mut self) -> Result<Option<&[u8]>, ReadError> {
        self.decoder
            .next_frame(&self.buf[..self.end])
            .map_err(ReadError::Codec)
    }
}

/// Writes one batch of frames.
pub(crate) async fn write_batch(io: &mut WriteHalf, batch: &[u8]) -> io::Result<()> {
    io.write_all(batch).await
}

/// Writes one batch of frames, taken whole from a side's queue, then
/// empties it for the next; a buffer that a burst grew past 4 MiB is let go
/// (the next burst grows a new one), so a quiet connection holds little.
///
/// Both ends' writers use it: each takes its batch and waits for more in
/// its own way, and writes and recycles the batch here.
pub(crate) async fn flush_batch(io: &mut WriteHalf, batch: &mut Vec<u8>) -> io::Result<()> {
    io.write_all(batch).await?;
    batch.clear();
    if batch.capacity() > 4 * 1024 * 1024 {
        *batch = Vec::new();
    }
    Ok(())
}
