//! The socket beside a local connection that carries blobs' descriptors.
//!
//! The connection's byte stream stays as it is: a frame that carries blobs
//! announces their sizes, and their descriptors travel here, one message
//! each (a sequence number and the descriptor), in the order of the frames
//! that announce them. A writer sends a frame's descriptors before it
//! writes the frame, so when a reader has the frame, its descriptors are
//! already queued here: a reader never waits for one, and a descriptor
//! that is not there when its frame is read never comes (the peer broke
//! the protocol). A reader takes only as many descriptors as its frame
//! announces, so it holds none unmatched; those not yet read are the
//! kernel's, bounded by the socket's buffer, and closed with the socket.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use tokio::io::AsyncWriteExt;

use super::WriteHalf;
use crate::blob::{Blob, Sealed};

/// A blob whose descriptor goes out before the frame that announces it.
pub(crate) struct PendingBlob {
    /// Where the announcing frame starts in its batch of frames.
    pub(crate) at: usize,
    pub(crate) sealed: Arc<Sealed>,
}

/// Both directions of a blob socket: what a [`Connection`](super::Connection)
/// over a local socket may carry beside its byte stream.
pub(crate) struct BlobChannel {
    pub(crate) sender: BlobSender,
    pub(crate) receiver: BlobReceiver,
}

impl BlobChannel {
    /// The channel over `socket`, one end of a [`pair`].
    pub(crate) fn new(socket: OwnedFd) -> io::Result<Self> {
        Ok(BlobChannel {
            sender: BlobSender {
                fd: socket.try_clone()?,
                next: 0,
            },
            receiver: BlobReceiver {
                fd: socket,
                next: 0,
            },
        })
    }
}

/// A connected pair of blob sockets (message-oriented, so that each
/// descriptor arrives with its own sequence number), closed on exec.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?)
}

/// The sending side of a blob socket.
pub(crate) struct BlobSender {
    fd: OwnedFd,
    /// The sequence number of the next descriptor sent.
    next: u64,
}

impl BlobSender {
    /// Writes `batch` (a run of whole frames) to `io`, with the descriptors
    /// of `pending` (in frame order) sent on the blob socket first, each
    /// before the frame that announces it. When the blob socket is full, the
    /// frames before the next descriptor's go out while it waits, so that
    /// the reader, taking their descriptors, makes room. Empties both.
    pub(crate) async fn flush(
        &mut self,
        io: &mut WriteHalf,
        batch: &mut Vec<u8>,
        pending: &mut Vec<PendingBlob>,
    ) -> io::Result<()> {
        let mut written = 0;
        for blob in pending.drain(..) {
            loop {
                match self.try_send(&blob.sealed) {
                    Ok(()) => break,
                    Err(e) if e == Errno::WOULDBLOCK || e == Errno::TOOMANYREFS => {
                        if written < blob.at {
                            io.write_all(&batch[written..blob.at]).await?;
                            written = blob.at;
                        }
                        self.wait(e).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        io.write_all(&batch[written..]).await?;
        batch.clear();
        Ok(())
    }

    /// Sends one descriptor with its sequence number, without waiting.
    fn try_send(&mut self, sealed: &Sealed) -> Result<(), Errno> {
        let seq = self.next.to_le_bytes();
        let fds = [sealed.fd().as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(
            &self.fd,
            &[IoSlice::new(&seq)],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        )?;
        self.next += 1;
        Ok(())
    }

    /// Waits for room on the blob socket: until it is writable, or (when
    /// this user has too many descriptors in flight in sockets, which no
    /// readiness tells the end of) for a moment.
    async fn wait(&self, why: Errno) -> io::Result<()> {
        if why == Errno::TOOMANYREFS {
            tokio::time::sleep(Duration::from_millis(1)).await;
            return Ok(());
        }
        let watched = crate::sys::register_fd(self.fd.try_clone()?, tokio::io::Interest::WRITABLE)?;
        // Registering reports the socket writable at once if room appeared
        // since the failed send.
        let mut ready = watched.writable().await?;
        ready.clear_ready();
        Ok(())
    }
}

/// The receiving side of a blob socket.
pub(crate) struct BlobReceiver {
    fd: OwnedFd,
    /// The sequence number the next descriptor must carry.
    next: u64,
}

impl BlobReceiver {
    /// Takes the descriptors a frame announces, one per size in `sizes`,
    /// and maps each (checked to be a sealed memory file of its size).
    /// An error, naming what went wrong, when one is not there: its frame
    /// arrived, so it never will.
    pub(crate) fn receive(
        &mut self,
        sizes: impl Iterator<Item = u64>,
    ) -> Result<Vec<Blob>, String> {
        let mut blobs = Vec::new();
        for size in sizes {
            let fd = self.take()?;
            let len = usize::try_from(size).map_err(|_| format!("a blob of {size} bytes"))?;
            let sealed = Sealed::receive(fd, len)
                .map_err(|e| format!("blob descriptor {}: {e}", self.next - 1))?;
            blobs.push(Blob::from_sealed(sealed));
        }
        Ok(blobs)
    }

    /// The next descriptor, which must carry the next sequence number.
    fn take(&mut self) -> Result<OwnedFd, String> {
        let want = self.next;
        let mut seq = [0u8; 8];
        // Room for two: a message with more than one descriptor is refused
        // (the kernel closes those that do not fit).
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &self.fd,
            &mut [IoSliceMut::new(&mut seq)],
            &mut control,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        );
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        let msg = match got {
            Ok(msg) => msg,
            Err(Errno::WOULDBLOCK) => {
                return Err(format!(
                    "blob descriptor {want}, announced by a frame that arrived, is not there"
                ))
            }
            Err(e) => return Err(format!("cannot receive blob descriptor {want}: {e}")),
        };
        if msg.bytes == 0 && fds.is_empty() {
            return Err(format!(
                "the blob socket closed before blob descriptor {want} arrived"
            ));
        }
        if msg.bytes != seq.len()
            || msg
                .flags
                .intersects(ReturnFlags::CTRUNC | ReturnFlags::TRUNC)
        {
            return Err(format!("a malformed message for blob descriptor {want}"));
        }
        let got_seq = u64::from_le_bytes(seq);
        if got_seq != want {
            return Err(format!(
                "blob descriptor {got_seq} arrived where {want} was due"
            ));
        }
        let mut fds = fds.into_iter();
        match (fds.next(), fds.next()) {
            (Some(fd), None) => {
                self.next += 1;
                Ok(fd)
            }
            _ => Err(format!(
                "blob descriptor message {want} carries no descriptor, or several"
            )),
        }
    }
}
