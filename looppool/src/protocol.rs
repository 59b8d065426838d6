//! Frames ↔ typed messages: the wire vocabulary between a pool and its workers.
//!
//! Every frame body starts with a kind byte. The hot messages (tasks, outputs,
//! completions, credits) use a hand-rolled envelope of varints followed by the
//! user's value in postcard; the rare ones (handshake, failures) are postcard
//! structs. Parent-to-worker kinds are below `0x80`, worker-to-parent kinds at
//! or above it, so a frame sent the wrong way is caught as an unknown kind.

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, Fields, FrameWriter};

/// Version of this wire protocol; both ends must agree at the handshake.
///
/// 2: a failure spends output credits as an output does, and a frame spends
/// credits by its size ([`output_cost`]), with the bytes per credit in
/// [`Init`].
///
/// 3: log records name the task's slot; cancellation (`CANCEL`, `SKIP` and
/// `CANCELLED`), tasks whose deadline the parent enforces
/// (`TASK_OWN_DEADLINE`), and the cancellation grace period in [`Init`].
///
/// 4: frames that carry blobs by descriptor (`BLOBS`, `WORKER_BLOBS`, the
/// threshold in [`Init`]), and timed tasks (`TASK_TIMED`,
/// `TASK_OWN_DEADLINE_TIMED`), whose completion tells how long they ran
/// (`DONE_TIMED`, `FAILED_TIMED`).
pub(crate) const PROTOCOL_VERSION: u32 = 4;

/// The first bytes of a worker's hello, so that a program that is not a
/// looppool worker is recognised as such rather than misread.
pub(crate) const HELLO_MAGIC: &[u8; 4] = b"LPWK";

mod announced;
pub(crate) mod report;

pub(crate) use announced::{blobs_inner, put_blobs, Announced};

pub(crate) mod kind {
    // Parent → worker.
    pub(crate) const INIT: u8 = 0x01;
    pub(crate) const TASK: u8 = 0x02;
    pub(crate) const CREDIT: u8 = 0x03;
    pub(crate) const STOP: u8 = 0x04;
    pub(crate) const PING: u8 = 0x05;
    /// Cancel the task in a slot, if the worker still holds one there.
    pub(crate) const CANCEL: u8 = 0x06;
    /// A `TASK` cancelled before it was written: same layout, never run,
    /// answered with `CANCELLED`.
    pub(crate) const SKIP: u8 = 0x07;
    /// A `TASK` with a deadline of its own, enforced by the parent: same
    /// layout; the pool-wide task timeout does not apply to it.
    pub(crate) const TASK_OWN_DEADLINE: u8 = 0x08;
    /// A frame that carries blobs by descriptor: their sizes, then the
    /// body of a `TASK`, `TASK_OWN_DEADLINE` or `SKIP` (see [`Announced`]).
    ///
    /// [`Announced`]: super::Announced
    pub(crate) const BLOBS: u8 = 0x09;
    /// A `TASK` the parent times: same layout; the worker answers it with
    /// `DONE_TIMED` or `FAILED_TIMED` (see [`timed`]).
    pub(crate) const TASK_TIMED: u8 = 0x0a;
    /// A `TASK_OWN_DEADLINE` the parent times.
    pub(crate) const TASK_OWN_DEADLINE_TIMED: u8 = 0x0b;
    // Worker → parent.
    pub(crate) const HELLO: u8 = 0x81;
    pub(crate) const READY: u8 = 0x82;
    pub(crate) const INIT_FAILED: u8 = 0x83;
    pub(crate) const OUTPUT: u8 = 0x84;
    pub(crate) const DONE: u8 = 0x85;
    /// An `OUTPUT` for a task that also completes it: same layout as `OUTPUT`.
    pub(crate) const OUTPUT_DONE: u8 = 0x86;
    pub(crate) const FAILED: u8 = 0x87;
    pub(crate) const BYE: u8 = 0x88;
    pub(crate) const REPORT: u8 = 0x89;
    pub(crate) const LOG: u8 = 0x8a;
    pub(crate) const PONG: u8 = 0x8b;
    /// The task in a slot was cancelled (dropped, or skipped unstarted).
    pub(crate) const CANCELLED: u8 = 0x8c;
    /// `BLOBS` from the worker, around an `OUTPUT` or `OUTPUT_DONE`.
    pub(crate) const WORKER_BLOBS: u8 = 0x8d;
    /// A timed task's completion: its slot, then how long it ran, in
    /// nanoseconds of the worker's clock.
    pub(crate) const DONE_TIMED: u8 = 0x8e;
    /// A timed task's failure: its slot, how long it ran, the failure.
    pub(crate) const FAILED_TIMED: u8 = 0x8f;

    /// The timed kind of task kind `kind` (`TASK` or `TASK_OWN_DEADLINE`);
    /// other kinds as they are.
    pub(crate) const fn timed(kind: u8) -> u8 {
        match kind {
            TASK => TASK_TIMED,
            TASK_OWN_DEADLINE => TASK_OWN_DEADLINE_TIMED,
            other => other,
        }
    }
}

/// The worker's first frame: who it is and which build of the messages it speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) fingerprint: u64,
    pub(crate) worker: String,
    pub(crate) pid: u32,
}

/// The parent's answer to a hello: the worker's place in the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Init {
    pub(crate) index: u32,
    pub(crate) pool: String,
    pub(crate) output_credits: u32,
    pub(crate) max_frame: u64,
    pub(crate) report_interval_ms: u64,
    pub(crate) blocked_threshold_ms: u64,
    pub(crate) log_level: u8,
    /// Fail tasks running longer than this (0: no limit).
    pub(crate) task_timeout_ms: u64,
    /// The frame bytes one output credit covers (see [`output_cost`]).
    pub(crate) credit_bytes: u64,
    /// How long a cancelled task that awaits its cancellation may run on
    /// to clean up.
    pub(crate) cancel_grace_ms: u64,
    /// Blobs of at least this many bytes travel by descriptor (0: none
    /// does, the connection carries no descriptors).
    pub(crate) blob_threshold: u64,
}

/// The output credits an output or failure frame of `body` bytes spends,
/// both ends agree: one per `credit_bytes` bytes begun, at least one, and
/// at most half the `window` (at least one).
///
/// The cap keeps the parent's owed credits safe to hold back (see
/// `Lane::owe_output_credits`): a worker that holds half its window can
/// always send. Most frames fit in one credit's bytes, the one comparison
/// of the hot path.
#[inline(always)]
pub(crate) fn output_cost(body: usize, credit_bytes: u64, window: u32) -> u32 {
    if body as u64 <= credit_bytes {
        1
    } else {
        large_output_cost(body, credit_bytes, window)
    }
}

#[cold]
#[inline(never)]
fn large_output_cost(body: usize, credit_bytes: u64, window: u32) -> u32 {
    let cap = (window / 2).max(1);
    (body as u64).div_ceil(credit_bytes.max(1)).min(cap.into()) as u32
}

/// A task failure as the worker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) panicked: bool,
}

/// A message from the parent, borrowing its payload from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ToWorker<'a> {
    Init(Init, &'a [u8]),
    Task {
        slot: u32,
        payload: &'a [u8],
        /// Whether the worker reports how long it ran.
        timed: bool,
    },
    /// A task whose deadline the parent enforces: no pool-wide timeout.
    TaskOwnDeadline {
        slot: u32,
        payload: &'a [u8],
        timed: bool,
    },
    /// A task cancelled before it was sent: answer, do not run.
    Skip(u32),
    Cancel(u32),
    Credit(u32),
    Stop,
    Ping(u64),
    /// A frame that carries blobs by descriptor: the body after its kind,
    /// read by [`Announced::parse`] (a slice here keeps the enum small).
    Blobs(&'a [u8]),
}

/// A message from a worker, borrowing its payload from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FromWorker<'a> {
    // The rare large variants are boxed: every message read is moved
    // at least once, and the hot ones are a few words.
    Hello {
        protocol: u32,
        hello: Box<Hello>,
    },
    Ready,
    InitFailed(String),
    Output {
        slot: Option<u32>,
        payload: &'a [u8],
    },
    Done(u32),
    OutputDone {
        slot: u32,
        payload: &'a [u8],
    },
    Failed {
        slot: u32,
        failure: Box<Failure>,
    },
    /// A timed task's completion, and how long it ran (ns).
    DoneTimed {
        slot: u32,
        ran_ns: u64,
    },
    /// A timed task's failure, and how long it ran (ns).
    FailedTimed {
        slot: u32,
        ran_ns: u64,
        failure: Box<Failure>,
    },
    Bye,
    Report(&'a [u8]),
    Log(&'a [u8]),
    Pong(u64),
    Cancelled(u32),
    /// A frame that carries blobs by descriptor: the body after its kind,
    /// read by [`Announced::parse`] (a slice here keeps the enum small).
    Blobs(&'a [u8]),
}

/// Why a frame body is not a valid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProtocolError {
    Codec(CodecError),
    UnknownKind(u8),
    /// A hello that does not start with [`HELLO_MAGIC`].
    NoMagic,
    /// A message whose fields are well-formed but contradict each other.
    Invalid(&'static str),
}

impl From<CodecError> for ProtocolError {
    fn from(e: CodecError) -> Self {
        ProtocolError::Codec(e)
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::Codec(e) => e.fmt(f),
            ProtocolError::UnknownKind(k) => write!(f, "unknown message kind 0x{k:02x}"),
            ProtocolError::NoMagic => f.write_str("a hello without the looppool magic bytes"),
            ProtocolError::Invalid(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl<'a> ToWorker<'a> {
    #[inline(always)]
    pub(crate) fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut f = Fields::new(body);
        let msg = match f.u8()? {
            kind::INIT => {
                let (init, rest) = postcard::take_from_bytes::<Init>(f.rest())
                    .map_err(|e| CodecError::Decode(e.to_string()))?;
                return Ok(ToWorker::Init(init, rest));
            }
            k @ (kind::TASK | kind::TASK_TIMED) => {
                let slot = f.varint_u32()?;
                return Ok(ToWorker::Task {
                    slot,
                    payload: f.rest(),
                    timed: k == kind::TASK_TIMED,
                });
            }
            k @ (kind::TASK_OWN_DEADLINE | kind::TASK_OWN_DEADLINE_TIMED) => {
                let slot = f.varint_u32()?;
                return Ok(ToWorker::TaskOwnDeadline {
                    slot,
                    payload: f.rest(),
                    timed: k == kind::TASK_OWN_DEADLINE_TIMED,
                });
            }
            // The payload of a skipped task is not looked at.
            kind::SKIP => return Ok(ToWorker::Skip(f.varint_u32()?)),
            kind::CANCEL => ToWorker::Cancel(f.varint_u32()?),
            kind::CREDIT => ToWorker::Credit(f.varint_u32()?),
            kind::STOP => ToWorker::Stop,
            kind::PING => ToWorker::Ping(f.varint()?),
            kind::BLOBS => return Ok(ToWorker::Blobs(f.rest())),
            other => return Err(ProtocolError::UnknownKind(other)),
        };
        f.end()?;
        Ok(msg)
    }
}

impl<'a> FromWorker<'a> {
    #[inline(always)]
    pub(crate) fn decode(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut f = Fields::new(body);
        let msg = match f.u8()? {
            kind::HELLO => {
                let rest = f.rest();
                if rest.len() < HELLO_MAGIC.len() || &rest[..4] != HELLO_MAGIC {
                    return Err(ProtocolError::NoMagic);
                }
                let mut f = Fields::new(&rest[4..]);
                let protocol = f.varint_u32()?;
                let hello = Box::new(codec::get_serde(f.rest())?);
                return Ok(FromWorker::Hello { protocol, hello });
            }
            kind::READY => FromWorker::Ready,
            kind::INIT_FAILED => return Ok(FromWorker::InitFailed(codec::get_serde(f.rest())?)),
            kind::OUTPUT => {
                let tag = f.varint_u32()?;
                let slot = tag.checked_sub(1);
                return Ok(FromWorker::Output {
                    slot,
                    payload: f.rest(),
                });
            }
            kind::OUTPUT_DONE => {
                let slot = f
                    .varint_u32()?
                    .checked_sub(1)
                    .ok_or(ProtocolError::Invalid(
                        "a task's last output names no task (slot tag 0)",
                    ))?;
                return Ok(FromWorker::OutputDone {
                    slot,
                    payload: f.rest(),
                });
            }
            kind::DONE => FromWorker::Done(f.varint_u32()?),
            kind::FAILED => {
                let slot = f.varint_u32()?;
                let failure = Box::new(codec::get_serde(f.rest())?);
                return Ok(FromWorker::Failed { slot, failure });
            }
            kind::DONE_TIMED => FromWorker::DoneTimed {
                slot: f.varint_u32()?,
                ran_ns: f.varint()?,
            },
            kind::FAILED_TIMED => {
                let slot = f.varint_u32()?;
                let ran_ns = f.varint()?;
                let failure = Box::new(codec::get_serde(f.rest())?);
                return Ok(FromWorker::FailedTimed {
                    slot,
                    ran_ns,
                    failure,
                });
            }
            kind::BYE => FromWorker::Bye,
            kind::REPORT => return Ok(FromWorker::Report(f.rest())),
            kind::LOG => return Ok(FromWorker::Log(f.rest())),
            kind::PONG => FromWorker::Pong(f.varint()?),
            kind::CANCELLED => FromWorker::Cancelled(f.varint_u32()?),
            kind::WORKER_BLOBS => return Ok(FromWorker::Blobs(f.rest())),
            other => return Err(ProtocolError::UnknownKind(other)),
        };
        f.end()?;
        Ok(msg)
    }
}

/// Appends a hello frame.
pub(crate) fn put_hello(buf: &mut Vec<u8>, hello: &Hello, max: usize) -> Result<(), CodecError> {
    let mut frame = FrameWriter::begin(buf, kind::HELLO);
    frame.extend_from_slice(HELLO_MAGIC);
    codec::put_varint(&mut frame, PROTOCOL_VERSION.into());
    codec::put_serde(&mut frame, hello)?;
    frame.finish(max)
}

/// Appends an init frame; `payload` is the already encoded init value.
pub(crate) fn put_init(
    buf: &mut Vec<u8>,
    init: &Init,
    payload: &[u8],
    max: usize,
) -> Result<(), CodecError> {
    let mut frame = FrameWriter::begin(buf, kind::INIT);
    codec::put_serde(&mut frame, init)?;
    frame.extend_from_slice(payload);
    frame.finish(max)
}

/// Appends a frame whose body is a kind and one varint (or nothing).
pub(crate) fn put_simple(buf: &mut Vec<u8>, kind: u8, value: Option<u64>) {
    let mut frame = FrameWriter::begin(buf, kind);
    if let Some(v) = value {
        codec::put_varint(&mut frame, v);
    }
    // Cannot fail: a kind and a varint are far below any frame limit.
    let _ = frame.finish(usize::MAX);
}

/// Appends a frame of `kind`, a varint `tag`, and `value` in postcard.
///
/// Always inlined: it encodes every output, and as a call its prologue,
/// epilogue and argument moves were a measurable share of the per-item
/// work.
///
/// Should `value`'s `Serialize` panic, the frame is taken out of `buf`
/// before the panic goes on (see [`FrameWriter`]); so in every `put_*`.
#[inline(always)]
pub(crate) fn put_tagged<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    kind: u8,
    tag: u64,
    value: &T,
    max: usize,
) -> Result<(), CodecError> {
    let mut frame = FrameWriter::begin(buf, kind);
    codec::put_varint(&mut frame, tag);
    codec::put_serde_or_blobs(&mut frame, value)?;
    frame.finish(max)
}

/// Appends a `TASK` frame for `slot` carrying `task`; returns the offset in
/// `buf` where the task's encoded payload begins (to keep a copy of it).
#[inline(always)]
pub(crate) fn put_task<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    slot: u32,
    task: &T,
    max: usize,
) -> Result<usize, CodecError> {
    put_task_as(buf, kind::TASK, slot, task, max)
}

/// [`put_task`] with frame kind `kind` (`TASK` or `TASK_OWN_DEADLINE`).
#[inline(always)]
pub(crate) fn put_task_as<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    kind: u8,
    slot: u32,
    task: &T,
    max: usize,
) -> Result<usize, CodecError> {
    let mut frame = FrameWriter::begin(buf, kind);
    codec::put_varint(&mut frame, slot.into());
    let payload = frame.len();
    codec::put_serde_or_blobs(&mut frame, task)?;
    frame.finish(max)?;
    Ok(payload)
}

/// Appends a `TASK` frame for `slot` carrying a payload already encoded by
/// [`put_task`]; returns where the payload begins, as that does.
pub(crate) fn put_encoded_task(
    buf: &mut Vec<u8>,
    slot: u32,
    payload: &[u8],
    max: usize,
) -> Result<usize, CodecError> {
    let mut frame = FrameWriter::begin(buf, kind::TASK);
    codec::put_varint(&mut frame, slot.into());
    let at = frame.len();
    frame.extend_from_slice(payload);
    frame.finish(max)?;
    Ok(at)
}

/// Turns the task frame for `slot` still in `buf` (frames not yet written)
/// into a `SKIP`, so the worker answers it without running it; false when
/// `buf` holds no task frame for `slot`.
///
/// A slot is reused only once its task has ended, so `buf` holds at most
/// one task frame for it. Walks the frames' headers: cancellation is rare,
/// and the queue need not record where each task begins.
pub(crate) fn skip_task(buf: &mut [u8], slot: u32) -> bool {
    let mut at = 0;
    while let Some((kind_at, end)) = codec::frame_at(buf, at) {
        // A frame that carries blobs is skipped inside: its descriptors
        // still go, and the worker takes them (and drops them) in turn.
        let task_at = match buf[kind_at] {
            kind::BLOBS => {
                let mut f = Fields::new(&buf[kind_at + 1..end]);
                match Announced::read(&mut f) {
                    Ok(announced) => end - announced.inner.len(),
                    Err(_) => kind_at,
                }
            }
            _ => kind_at,
        };
        if matches!(
            buf[task_at],
            kind::TASK | kind::TASK_OWN_DEADLINE | kind::TASK_TIMED | kind::TASK_OWN_DEADLINE_TIMED
        ) {
            let mut f = Fields::new(&buf[task_at + 1..end]);
            if f.varint_u32().ok() == Some(slot) {
                buf[task_at] = kind::SKIP;
                return true;
            }
        }
        at = end;
    }
    false
}

/// Appends a frame of `kind` whose whole remaining body is `value` in postcard.
pub(crate) fn put_value<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    kind: u8,
    value: &T,
    max: usize,
) -> Result<(), CodecError> {
    let mut frame = FrameWriter::begin(buf, kind);
    codec::put_serde(&mut frame, value)?;
    frame.finish(max)
}

/// Appends a task failure frame; `ran_ns` is how long a timed task ran.
pub(crate) fn put_failed(
    buf: &mut Vec<u8>,
    slot: u32,
    failure: &Failure,
    ran_ns: Option<u64>,
    max: usize,
) {
    let put = |buf: &mut Vec<u8>, failure: &Failure, max| match ran_ns {
        None => put_tagged(buf, kind::FAILED, slot.into(), failure, max),
        Some(ran) => {
            let mut frame = FrameWriter::begin(buf, kind::FAILED_TIMED);
            codec::put_varint(&mut frame, slot.into());
            codec::put_varint(&mut frame, ran);
            codec::put_serde(&mut frame, failure)?;
            frame.finish(max)
        }
    };
    if put(buf, failure, max).is_err() {
        // A message too long for the frame limit is cut rather than lost.
        let short = Failure {
            message: failure.message.chars().take(1024).collect(),
            panicked: failure.panicked,
        };
        let _ = put(buf, &short, usize::MAX);
    }
}

/// Appends a timed task's completion frame: it ran for `ran_ns`.
pub(crate) fn put_done_timed(buf: &mut Vec<u8>, slot: u32, ran_ns: u64) {
    let mut frame = FrameWriter::begin(buf, kind::DONE_TIMED);
    codec::put_varint(&mut frame, slot.into());
    codec::put_varint(&mut frame, ran_ns);
    // Cannot fail: a kind and two varints are far below any frame limit.
    let _ = frame.finish(usize::MAX);
}

/// Makes the task frame whose payload begins at `payload_at` in `buf` (as
/// [`put_task`] and its kin return it, inside a `BLOBS` frame or not, for
/// the task in `slot`) a timed one.
pub(crate) fn mark_timed(buf: &mut [u8], payload_at: usize, slot: u32) {
    // A task frame's body is its kind, its slot as a varint, its payload.
    let kind_at = payload_at - 1 - codec::varint_len(slot.into());
    debug_assert!(matches!(buf[kind_at], kind::TASK | kind::TASK_OWN_DEADLINE));
    buf[kind_at] = kind::timed(buf[kind_at]);
}

#[cfg(test)]
mod tests;
