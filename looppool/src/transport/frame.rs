//! Just enough of the frame format for a transport that carries frames
//! through something other than a byte stream (a broker's messages).
//!
//! A transport may need to know where frames end and which ones start or end
//! a task (to acknowledge a broker message when its task completes), without
//! decoding anyone's payload. Frames are a 4-byte little-endian body length,
//! then the body; the body's first byte is its kind.

use crate::codec::{self, Fields};
use crate::protocol::kind;

/// Bytes of a frame's length header.
pub const HEADER_LEN: usize = codec::HEADER_LEN;

/// The length, header included, of the first whole frame at the start of
/// `buf`, or `None` when `buf` does not hold a whole frame yet.
///
/// ```
/// use looppool::transport::frame;
/// let mut buf = Vec::new();
/// frame::put_credit(&mut buf, 3);
/// assert_eq!(frame::frame_len(&buf), Some(buf.len()));
/// assert_eq!(frame::frame_len(&buf[..2]), None);
/// ```
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let header: [u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    let len = HEADER_LEN.checked_add(u32::from_le_bytes(header) as usize)?;
    (buf.len() >= len).then_some(len)
}

/// What a frame means to a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// The parent's init message: the first frame after the worker's hello.
    Init,
    /// A task, in the parent's task slot `slot` (also a task with a
    /// deadline of its own, a timed one, and one cancelled before it was
    /// written, which the worker answers without running it).
    Task(u32),
    /// The parent cancels the task in slot `slot`. It must reach the worker
    /// behind the tasks written before it (as on one byte stream): the
    /// worker cancels what holds the slot when it reads the frame.
    Cancel(u32),
    /// The parent returns this many output credits to the worker.
    Credit(u32),
    /// The parent asks the worker to stop behind its queued tasks.
    Stop,
    /// The worker ends the task in slot `slot` (done, failed, cancelled, or
    /// with its last output).
    Completes(u32),
    /// The worker emits an output of the task in slot `slot`, which goes on
    /// running (a transport that tags messages with their task reads this).
    Emits(u32),
    /// The worker's last frame before it exits cleanly.
    Bye,
    /// Any other frame (outputs of no task, reports, logs, pings, the
    /// handshake).
    Other,
}

/// Why a frame could not be classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame(pub String);

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed looppool frame: {}", self.0)
    }
}

impl std::error::Error for BadFrame {}

/// Classifies one whole frame (header included), reading only its kind and
/// slot.
///
/// ```
/// use looppool::transport::frame::{self, Role};
/// let mut buf = Vec::new();
/// frame::put_credit(&mut buf, 7);
/// assert_eq!(frame::role(&buf), Ok(Role::Credit(7)));
/// ```
pub fn role(frame: &[u8]) -> Result<Role, BadFrame> {
    let body = frame
        .get(HEADER_LEN..)
        .ok_or_else(|| BadFrame("shorter than its header".into()))?;
    role_of(body)
}

/// [`role`] of a frame's body.
fn role_of(body: &[u8]) -> Result<Role, BadFrame> {
    let bad = |e: codec::CodecError| BadFrame(e.to_string());
    let mut f = Fields::new(body);
    Ok(match f.u8().map_err(bad)? {
        // A frame that carries blobs by descriptor (only over a local
        // socket) has the role of the frame it wraps.
        kind::BLOBS | kind::WORKER_BLOBS => match crate::protocol::blobs_inner(body) {
            Some(inner) if !matches!(inner.first(), Some(&(kind::BLOBS | kind::WORKER_BLOBS))) => {
                role_of(inner)?
            }
            _ => return Err(BadFrame("a malformed frame with blobs".into())),
        },
        kind::INIT => Role::Init,
        kind::TASK
        | kind::TASK_OWN_DEADLINE
        | kind::TASK_TIMED
        | kind::TASK_OWN_DEADLINE_TIMED
        | kind::SKIP => Role::Task(f.varint_u32().map_err(bad)?),
        kind::CANCEL => Role::Cancel(f.varint_u32().map_err(bad)?),
        kind::CREDIT => Role::Credit(f.varint_u32().map_err(bad)?),
        kind::STOP => Role::Stop,
        kind::DONE | kind::FAILED | kind::DONE_TIMED | kind::FAILED_TIMED | kind::CANCELLED => {
            Role::Completes(f.varint_u32().map_err(bad)?)
        }
        kind::OUTPUT_DONE => Role::Completes(
            f.varint_u32()
                .map_err(bad)?
                .checked_sub(1)
                .ok_or_else(|| BadFrame("a last output that names no task".into()))?,
        ),
        kind::OUTPUT => match f.varint_u32().map_err(bad)?.checked_sub(1) {
            Some(slot) => Role::Emits(slot),
            // An output of no task (emitted from background work).
            None => Role::Other,
        },
        kind::BYE => Role::Bye,
        _ => Role::Other,
    })
}

/// Appends a frame that returns `credits` output credits to a worker.
pub fn put_credit(buf: &mut Vec<u8>, credits: u32) {
    crate::protocol::put_simple(buf, kind::CREDIT, Some(credits.into()));
}
