//! Decoding the worker's frames into what the reader acts on.

use serde::de::DeserializeOwned;

use super::super::lane::SlotEvent;
use crate::codec;
use crate::protocol::FromWorker;

/// Decodes an output's payload.
///
/// A function rather than a closure in the read loop: the compiler left the
/// closure out of line, and its result, returned through memory, was
/// reloaded by a stalled caller.
#[inline(always)]
fn decode_output<O: DeserializeOwned>(payload: &[u8]) -> Result<O, String> {
    codec::get_serde::<O>(payload).map_err(|e| format!("cannot deserialize an output: {e}"))
}

/// One decoded frame, as the reader acts on it.
pub(super) enum Frame<'a, O> {
    /// An output, completion or failure of the task in a slot.
    Slot(SlotEvent<O>),
    /// A timed task's completion or failure, and how long it ran (ns).
    Timed(SlotEvent<O>, u64),
    /// An output that belongs to no task.
    Unsolicited(O),
    /// The worker's goodbye: the end of the connection is expected.
    Bye,
    /// The answer to a heartbeat ping.
    Pong,
    /// A resource or blocked-loop report (handled without the lane's lock).
    Report(&'a [u8]),
    /// A log record (handled without the lane's lock).
    Log(&'a [u8]),
    /// A frame that carries blobs by descriptor around an output (the
    /// body after its kind).
    Blobs(&'a [u8]),
}

/// Decodes one frame body from the worker (inlined, as `decode_output`).
#[inline(always)]
pub(super) fn decode_frame<O: DeserializeOwned>(body: &[u8]) -> Result<Frame<'_, O>, String> {
    let msg = FromWorker::decode(body).map_err(|e| e.to_string())?;
    Ok(match msg {
        FromWorker::OutputDone { slot, payload } => Frame::Slot(SlotEvent::OutputDone {
            slot,
            value: decode_output(payload)?,
        }),
        FromWorker::Output {
            slot: Some(slot),
            payload,
        } => Frame::Slot(SlotEvent::Output {
            slot,
            value: decode_output(payload)?,
        }),
        FromWorker::Output {
            slot: None,
            payload,
        } => Frame::Unsolicited(decode_output(payload)?),
        FromWorker::Done(slot) => Frame::Slot(SlotEvent::Done { slot }),
        FromWorker::Failed { slot, failure } => Frame::Slot(SlotEvent::Failed {
            slot,
            message: failure.message,
            panicked: failure.panicked,
        }),
        FromWorker::Cancelled(slot) => Frame::Slot(SlotEvent::Cancelled { slot }),
        FromWorker::DoneTimed { slot, ran_ns } => Frame::Timed(SlotEvent::Done { slot }, ran_ns),
        FromWorker::FailedTimed {
            slot,
            ran_ns,
            failure,
        } => Frame::Timed(
            SlotEvent::Failed {
                slot,
                message: failure.message,
                panicked: failure.panicked,
            },
            ran_ns,
        ),
        FromWorker::Bye => Frame::Bye,
        FromWorker::Pong(_) => Frame::Pong,
        FromWorker::Report(body) => Frame::Report(body),
        FromWorker::Log(body) => Frame::Log(body),
        FromWorker::Blobs(announced) => Frame::Blobs(announced),
        FromWorker::Hello { .. } | FromWorker::Ready | FromWorker::InitFailed(_) => {
            return Err("handshake message after the handshake".into())
        }
    })
}
