//! The listener and its connections: peer check, bounded lines, timeouts.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::ops::{self, OpError, Target};
use super::{IDLE_TIMEOUT, MAX_CLIENTS, MAX_LINE, WRITE_TIMEOUT};

/// Accepts clients until the pool has ended (`ended`), then removes the
/// socket at `path`. Every connection is a task of a set this future owns,
/// so aborting it (when the pool is dropped) ends them all.
pub(super) async fn serve(
    listener: UnixListener,
    target: Arc<dyn Target>,
    path: PathBuf,
    ended: impl Future<Output = ()> + Send + 'static,
) {
    let own_uid = crate::sys::euid();
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut clients = JoinSet::new();
    tokio::pin!(ended);
    loop {
        let accepted = tokio::select! {
            () = &mut ended => break,
            accepted = listener.accept() => accepted,
        };
        // Forget the finished ones, so the set does not grow.
        while clients.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::debug!(error = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let target = target.clone();
                clients.spawn(async move {
                    let _slot = slot;
                    serve_client(stream, &*target, own_uid).await;
                });
            }
            // A line that fits the socket buffer: never waits.
            Err(_) => refuse(
                &stream,
                OpError::new("busy", format!("{MAX_CLIENTS} clients already connected")),
            ),
        }
    }
    super::dir::remove_socket(&path);
}

/// Writes one error line without waiting, and lets the connection close.
fn refuse(stream: &UnixStream, error: OpError) {
    let mut line = ops::reply(None, Err(error));
    line.push('\n');
    let _ = stream.try_write(line.as_bytes());
}

/// The decision on a peer of uid `peer` when the pool runs as `own`: only
/// the same user may connect, root included in the refusal (root reaches
/// the socket despite its mode, so this check is what keeps it out).
pub(super) fn peer_allowed(peer: u32, own: u32) -> bool {
    peer == own
}

/// Serves one client: a reply per request line until it hangs up, goes
/// idle, or stops reading.
async fn serve_client(stream: UnixStream, target: &dyn Target, own_uid: u32) {
    match stream.peer_cred() {
        Ok(cred) if peer_allowed(cred.uid(), own_uid) => {}
        Ok(cred) => {
            tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "control socket: refused a client of another user");
            let why = format!("uid {} may not control a pool of uid {own_uid}", cred.uid());
            return refuse(&stream, OpError::new("forbidden", why));
        }
        Err(e) => {
            return refuse(
                &stream,
                OpError::new("forbidden", format!("no credentials: {e}")),
            );
        }
    }
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        let reply = match tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut read, &mut line)).await
        {
            Err(_) | Ok(Err(_)) | Ok(Ok(Line::End)) => return,
            Ok(Ok(Line::TooLong)) => ops::reply(
                None,
                Err(OpError::new(
                    "line_too_long",
                    format!("a request line is at most {MAX_LINE} bytes"),
                )),
            ),
            Ok(Ok(Line::Complete)) => ops::handle(&line, target).await,
        };
        let mut reply = reply.into_bytes();
        reply.push(b'\n');
        match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&reply)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq)]
enum Line {
    /// A line (without its newline) is in the buffer.
    Complete,
    /// A line longer than [`MAX_LINE`]: its bytes were discarded, up to and
    /// including its newline.
    TooLong,
    /// The client hung up with no partial line.
    End,
}

/// Reads the next line into `buf`, never holding more than [`MAX_LINE`]
/// bytes of it: a longer line is consumed and dropped as it arrives. A last
/// line without a newline counts as a line.
async fn read_line(read: &mut BufReader<OwnedReadHalf>, buf: &mut Vec<u8>) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = read.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (too_long, buf.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::End,
                (false, false) => Line::Complete,
            });
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !too_long && buf.len() + chunk.len() > MAX_LINE {
            too_long = true;
            buf.clear();
        }
        if !too_long {
            buf.extend_from_slice(chunk);
        }
        let used = done.unwrap_or(chunk.len());
        read.consume(used);
        if done.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_same_user_may_connect() {
        assert!(super::peer_allowed(1000, 1000));
        assert!(!super::peer_allowed(0, 1000));
        assert!(!super::peer_allowed(1001, 1000));
    }
}
