use super::*;
use crate::codec::{FrameDecoder, DEFAULT_MAX_FRAME};

fn bodies(buf: &[u8]) -> Vec<Vec<u8>> {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut out = Vec::new();
    while let Some(body) = decoder.next_frame(buf).unwrap() {
        out.push(body.to_vec());
    }
    out
}

#[test]
fn worker_messages_round_trip() {
    let mut buf = Vec::new();
    let hello = Hello {
        fingerprint: 42,
        worker: "echo".into(),
        pid: 7,
    };
    put_hello(&mut buf, &hello, DEFAULT_MAX_FRAME).unwrap();
    put_tagged(&mut buf, kind::OUTPUT, 0, &5u64, DEFAULT_MAX_FRAME).unwrap();
    put_tagged(&mut buf, kind::OUTPUT, 3, &6u64, DEFAULT_MAX_FRAME).unwrap();
    put_tagged(&mut buf, kind::OUTPUT_DONE, 9, &7u64, DEFAULT_MAX_FRAME).unwrap();
    put_simple(&mut buf, kind::DONE, Some(4));
    let failure = Failure {
        message: "boom".into(),
        panicked: true,
    };
    put_failed(&mut buf, 2, &failure, None, DEFAULT_MAX_FRAME);
    put_simple(&mut buf, kind::BYE, None);
    put_done_timed(&mut buf, 300, 1_500_000);
    put_failed(&mut buf, 7, &failure, Some(u64::MAX), DEFAULT_MAX_FRAME);

    let bodies = bodies(&buf);
    let msgs: Vec<_> = bodies
        .iter()
        .map(|b| FromWorker::decode(b).unwrap())
        .collect();
    assert_eq!(
        msgs[0],
        FromWorker::Hello {
            protocol: PROTOCOL_VERSION,
            hello: Box::new(hello)
        }
    );
    assert_eq!(
        msgs[1],
        FromWorker::Output {
            slot: None,
            payload: &[5]
        }
    );
    assert_eq!(
        msgs[2],
        FromWorker::Output {
            slot: Some(2),
            payload: &[6]
        }
    );
    assert_eq!(
        msgs[3],
        FromWorker::OutputDone {
            slot: 8,
            payload: &[7]
        }
    );
    assert_eq!(msgs[4], FromWorker::Done(4));
    assert_eq!(
        msgs[5],
        FromWorker::Failed {
            slot: 2,
            failure: Box::new(failure.clone())
        }
    );
    assert_eq!(msgs[6], FromWorker::Bye);
    assert_eq!(
        msgs[7],
        FromWorker::DoneTimed {
            slot: 300,
            ran_ns: 1_500_000
        }
    );
    assert_eq!(
        msgs[8],
        FromWorker::FailedTimed {
            slot: 7,
            ran_ns: u64::MAX,
            failure: Box::new(failure)
        }
    );
}

#[test]
fn parent_messages_round_trip() {
    let mut buf = Vec::new();
    let init = Init {
        index: 3,
        pool: "p".into(),
        output_credits: 10,
        max_frame: 99,
        report_interval_ms: 0,
        blocked_threshold_ms: 0,
        log_level: 2,
        task_timeout_ms: 0,
        credit_bytes: 4096,
        cancel_grace_ms: 1000,
        blob_threshold: 65536,
    };
    put_init(&mut buf, &init, b"xyz", DEFAULT_MAX_FRAME).unwrap();
    put_tagged(&mut buf, kind::TASK, 17, "hi", DEFAULT_MAX_FRAME).unwrap();
    put_simple(&mut buf, kind::CREDIT, Some(300));
    put_simple(&mut buf, kind::STOP, None);
    let bodies = bodies(&buf);
    let msgs: Vec<_> = bodies
        .iter()
        .map(|b| ToWorker::decode(b).unwrap())
        .collect();
    assert_eq!(msgs[0], ToWorker::Init(init, b"xyz"));
    assert_eq!(
        msgs[1],
        ToWorker::Task {
            slot: 17,
            payload: &[2, b'h', b'i'],
            timed: false
        }
    );
    assert_eq!(msgs[2], ToWorker::Credit(300));
    assert_eq!(msgs[3], ToWorker::Stop);
}

#[test]
fn a_task_frame_marked_timed_keeps_its_slot_and_payload() {
    for (slot, plain) in [
        (3, kind::TASK),
        (300, kind::TASK_OWN_DEADLINE),
        (70_000, kind::TASK),
    ] {
        let mut buf = Vec::new();
        let at = put_task_as(&mut buf, plain, slot, "hi", DEFAULT_MAX_FRAME).unwrap();
        mark_timed(&mut buf, at, slot);
        let body = &bodies(&buf)[0];
        assert_eq!(body[0], kind::timed(plain));
        let (s, payload, timed) = match ToWorker::decode(body).unwrap() {
            ToWorker::Task {
                slot,
                payload,
                timed,
            }
            | ToWorker::TaskOwnDeadline {
                slot,
                payload,
                timed,
            } => (slot, payload, timed),
            other => panic!("{other:?}"),
        };
        assert_eq!((s, payload, timed), (slot, &[2, b'h', b'i'][..], true));
        // A timed task cancelled before it is written is skipped as any.
        assert!(skip_task(&mut buf, slot));
        assert_eq!(ToWorker::decode(&bodies(&buf)[0]), Ok(ToWorker::Skip(slot)));
    }
}

#[test]
fn wrong_direction_and_unknown_kinds_are_errors() {
    assert_eq!(
        FromWorker::decode(&[kind::TASK, 1]),
        Err(ProtocolError::UnknownKind(kind::TASK))
    );
    assert_eq!(
        ToWorker::decode(&[0x7f]),
        Err(ProtocolError::UnknownKind(0x7f))
    );
    assert!(FromWorker::decode(&[kind::HELLO, b'X', b'Y']).is_err());
    assert!(FromWorker::decode(&[kind::DONE]).is_err());
    assert!(FromWorker::decode(&[kind::BYE, 0]).is_err());
}

#[test]
fn a_hello_without_magic_and_a_slotless_last_output_say_what_they_are() {
    assert_eq!(
        FromWorker::decode(&[kind::HELLO, b'X', b'Y', b'Z', b'W', 1]),
        Err(ProtocolError::NoMagic)
    );
    let err = FromWorker::decode(&[kind::OUTPUT_DONE, 0, 5]).unwrap_err();
    assert!(err.to_string().contains("names no task"), "{err}");
}

// ---------------------------------------------------------------------------
// Property tests: every message survives encoding, re-chunking and decoding;
// cut, mutated and random bodies are refused (or decode to something else)
// and never panic; the parent's reader path ends cleanly on any stream.
// ---------------------------------------------------------------------------

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use proptest::collection::vec;
use proptest::prelude::*;

use crate::output::Output;
use crate::parent::connection::{read_loop, ReadEnd};
use crate::parent::lane::Lane;
use crate::transport::FrameReader;

const MANY: u32 = 400_000;
const SOME: u32 = 100_000;
const FEW: u32 = 40_000;

/// A worker → parent message, owned, for generating and comparing.
#[derive(Debug, Clone, PartialEq)]
enum Up {
    Hello(u64, String, u32),
    Ready,
    InitFailed(String),
    Output(Option<u32>, u64),
    OutputDone(u32, u64),
    Done(u32),
    /// The last field: how long a timed task ran.
    Failed(u32, String, bool, Option<u64>),
    DoneTimed(u32, u64),
    Bye,
    Report(Vec<u8>),
    Log(Vec<u8>),
    Pong(u64),
    Cancelled(u32),
}

/// A parent → worker message, owned. `Init` carries its encoded fields.
#[derive(Debug, Clone, PartialEq)]
enum Down {
    Init(Vec<u8>),
    /// The last field: whether it is timed.
    Task(u32, String, bool),
    Credit(u32),
    Stop,
    Ping(u64),
    Cancel(u32),
    /// Not generated: the decoder does not hand a skip's payload on (see
    /// `a_task_frame_still_buffered_becomes_a_skip`).
    Skip(u32, String),
    TaskOwnDeadline(u32, String, bool),
}

fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..6).prop_map(|c| c.into_iter().collect())
}

fn up_strategy() -> impl Strategy<Value = Up> {
    let slot = 0..u32::MAX;
    prop_oneof![
        (any::<u64>(), text(), any::<u32>()).prop_map(|(f, w, p)| Up::Hello(f, w, p)),
        Just(Up::Ready),
        text().prop_map(Up::InitFailed),
        (proptest::option::of(slot.clone()), any::<u64>()).prop_map(|(s, v)| Up::Output(s, v)),
        (slot.clone(), any::<u64>()).prop_map(|(s, v)| Up::OutputDone(s, v)),
        any::<u32>().prop_map(Up::Done),
        (any::<u32>(), text(), any::<bool>(), any::<Option<u64>>())
            .prop_map(|(s, m, p, t)| Up::Failed(s, m, p, t)),
        (any::<u32>(), any::<u64>()).prop_map(|(s, t)| Up::DoneTimed(s, t)),
        Just(Up::Bye),
        vec(any::<u8>(), 0..8).prop_map(Up::Report),
        vec(any::<u8>(), 0..8).prop_map(Up::Log),
        any::<u64>().prop_map(Up::Pong),
        any::<u32>().prop_map(Up::Cancelled),
    ]
}

/// The fields of an `Init` in postcard, in declaration order, plus more
/// bytes behind them (the init payload, to the decoder). Written field by
/// field so that the property does not depend on how many fields follow
/// `log_level`.
fn init_strategy() -> impl Strategy<Value = Down> {
    (
        any::<u32>(),
        text(),
        any::<u32>(),
        any::<u64>(),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u8>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        vec(any::<u8>(), 0..8),
    )
        .prop_map(
            |(index, pool, credits, max_frame, (r, b, log, extra, unit, grace, blobs), payload)| {
                let mut bytes = Vec::new();
                codec::put_varint(&mut bytes, index.into());
                codec::put_serde(&mut bytes, &pool).unwrap();
                codec::put_varint(&mut bytes, credits.into());
                codec::put_varint(&mut bytes, max_frame);
                codec::put_varint(&mut bytes, r);
                codec::put_varint(&mut bytes, b);
                bytes.push(log);
                codec::put_varint(&mut bytes, extra);
                codec::put_varint(&mut bytes, unit);
                codec::put_varint(&mut bytes, grace);
                codec::put_varint(&mut bytes, blobs);
                bytes.extend_from_slice(&payload);
                Down::Init(bytes)
            },
        )
}

fn down_strategy() -> impl Strategy<Value = Down> {
    prop_oneof![
        init_strategy(),
        (any::<u32>(), text(), any::<bool>()).prop_map(|(s, t, m)| Down::Task(s, t, m)),
        any::<u32>().prop_map(Down::Credit),
        Just(Down::Stop),
        any::<u64>().prop_map(Down::Ping),
        any::<u32>().prop_map(Down::Cancel),
        (any::<u32>(), text(), any::<bool>()).prop_map(|(s, t, m)| Down::TaskOwnDeadline(s, t, m)),
    ]
}

fn encode_up(buf: &mut Vec<u8>, msg: &Up) {
    let max = DEFAULT_MAX_FRAME;
    match msg {
        Up::Hello(fingerprint, worker, pid) => {
            let hello = Hello {
                fingerprint: *fingerprint,
                worker: worker.clone(),
                pid: *pid,
            };
            put_hello(buf, &hello, max).unwrap()
        }
        Up::Ready => put_simple(buf, kind::READY, None),
        Up::InitFailed(m) => put_value(buf, kind::INIT_FAILED, m, max).unwrap(),
        Up::Output(slot, v) => {
            let tag = slot.map_or(0, |s| u64::from(s) + 1);
            put_tagged(buf, kind::OUTPUT, tag, v, max).unwrap()
        }
        Up::OutputDone(slot, v) => {
            put_tagged(buf, kind::OUTPUT_DONE, u64::from(*slot) + 1, v, max).unwrap()
        }
        Up::Done(slot) => put_simple(buf, kind::DONE, Some((*slot).into())),
        Up::Failed(slot, message, panicked, ran) => {
            let failure = Failure {
                message: message.clone(),
                panicked: *panicked,
            };
            put_failed(buf, *slot, &failure, *ran, max)
        }
        Up::DoneTimed(slot, ran) => put_done_timed(buf, *slot, *ran),
        Up::Bye => put_simple(buf, kind::BYE, None),
        Up::Report(b) | Up::Log(b) => {
            let k = if matches!(msg, Up::Report(_)) {
                kind::REPORT
            } else {
                kind::LOG
            };
            let mut f = codec::FrameWriter::begin(buf, k);
            f.extend_from_slice(b);
            f.finish(max).unwrap()
        }
        Up::Pong(n) => put_simple(buf, kind::PONG, Some(*n)),
        Up::Cancelled(s) => put_simple(buf, kind::CANCELLED, Some((*s).into())),
    }
}

fn encode_down(buf: &mut Vec<u8>, msg: &Down) {
    let max = DEFAULT_MAX_FRAME;
    match msg {
        Down::Init(bytes) => {
            let mut f = codec::FrameWriter::begin(buf, kind::INIT);
            f.extend_from_slice(bytes);
            f.finish(max).unwrap()
        }
        Down::Task(slot, t, timed) => {
            let k = if *timed { kind::TASK_TIMED } else { kind::TASK };
            put_tagged(buf, k, (*slot).into(), t, max).unwrap()
        }
        Down::Credit(n) => put_simple(buf, kind::CREDIT, Some((*n).into())),
        Down::Stop => put_simple(buf, kind::STOP, None),
        Down::Ping(n) => put_simple(buf, kind::PING, Some(*n)),
        Down::Cancel(s) => put_simple(buf, kind::CANCEL, Some((*s).into())),
        Down::Skip(slot, t) => put_tagged(buf, kind::SKIP, (*slot).into(), t, max).unwrap(),
        Down::TaskOwnDeadline(slot, t, timed) => {
            let k = kind::TASK_OWN_DEADLINE;
            let k = if *timed { kind::timed(k) } else { k };
            put_tagged(buf, k, (*slot).into(), t, max).unwrap()
        }
    }
}

/// The owned form of a decoded message; payloads decoded as the generator's
/// types. Errors when a payload does not decode.
fn lift_up(msg: FromWorker<'_>) -> Result<Up, CodecError> {
    Ok(match msg {
        FromWorker::Hello { protocol, .. } if protocol != PROTOCOL_VERSION => {
            return Err(CodecError::Decode(format!("protocol version {protocol}")))
        }
        FromWorker::Hello { hello, .. } => Up::Hello(hello.fingerprint, hello.worker, hello.pid),
        FromWorker::Ready => Up::Ready,
        FromWorker::InitFailed(m) => Up::InitFailed(m),
        FromWorker::Output { slot, payload } => Up::Output(slot, codec::get_serde(payload)?),
        FromWorker::OutputDone { slot, payload } => {
            Up::OutputDone(slot, codec::get_serde(payload)?)
        }
        FromWorker::Done(slot) => Up::Done(slot),
        FromWorker::Failed { slot, failure } => {
            Up::Failed(slot, failure.message, failure.panicked, None)
        }
        FromWorker::FailedTimed {
            slot,
            ran_ns,
            failure,
        } => Up::Failed(slot, failure.message, failure.panicked, Some(ran_ns)),
        FromWorker::DoneTimed { slot, ran_ns } => Up::DoneTimed(slot, ran_ns),
        FromWorker::Bye => Up::Bye,
        FromWorker::Report(b) => Up::Report(b.to_vec()),
        FromWorker::Log(b) => Up::Log(b.to_vec()),
        FromWorker::Pong(n) => Up::Pong(n),
        FromWorker::Cancelled(s) => Up::Cancelled(s),
        // The generator makes none (their descriptors need a socket).
        FromWorker::Blobs(_) => return Err(CodecError::Decode("a frame with blobs".into())),
    })
}

fn lift_down(msg: ToWorker<'_>) -> Result<Down, CodecError> {
    Ok(match msg {
        ToWorker::Init(init, payload) => {
            // Re-encode: the bytes must come out as they went in.
            let mut frame = Vec::new();
            put_init(&mut frame, &init, payload, DEFAULT_MAX_FRAME).unwrap();
            Down::Init(frame[codec::HEADER_LEN + 1..].to_vec())
        }
        ToWorker::Task {
            slot,
            payload,
            timed,
        } => Down::Task(slot, codec::get_serde(payload)?, timed),
        ToWorker::Credit(n) => Down::Credit(n),
        ToWorker::Stop => Down::Stop,
        ToWorker::Ping(n) => Down::Ping(n),
        ToWorker::Cancel(s) => Down::Cancel(s),
        // The decoder hands a skip's payload on unread: not compared.
        ToWorker::Skip(s) => Down::Skip(s, String::new()),
        ToWorker::TaskOwnDeadline {
            slot,
            payload,
            timed,
        } => Down::TaskOwnDeadline(slot, codec::get_serde(payload)?, timed),
        // The generator makes none (their descriptors need a socket).
        ToWorker::Blobs(_) => return Err(CodecError::Decode("a frame with blobs".into())),
    })
}

/// True for kinds whose body ends in a payload the decoder hands on as is.
fn carries_payload(kind: u8) -> bool {
    matches!(
        kind,
        kind::OUTPUT
            | kind::OUTPUT_DONE
            | kind::REPORT
            | kind::LOG
            | kind::TASK
            | kind::TASK_OWN_DEADLINE
            | kind::TASK_TIMED
            | kind::TASK_OWN_DEADLINE_TIMED
            | kind::SKIP
            | kind::INIT
    )
}

/// Splits `wire` into frame bodies, feeding it in the pieces `cuts` gives.
fn split_frames(wire: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(wire.len());
    points.sort_unstable();
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut at = 0;
    for point in points {
        buf.extend_from_slice(&wire[at..point]);
        at = point;
        while let Some(body) = decoder.next_frame(&buf).unwrap() {
            out.push(body.to_vec());
        }
        decoder.compact(&mut buf);
    }
    assert!(buf.is_empty());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(SOME))]

    #[test]
    fn prop_worker_messages_round_trip(
        msgs in vec(up_strategy(), 0..6),
        cuts in vec(any::<usize>(), 0..4),
    ) {
        let mut wire = Vec::new();
        for m in &msgs {
            encode_up(&mut wire, m);
        }
        let decoded: Vec<Up> = split_frames(&wire, &cuts)
            .iter()
            .map(|b| lift_up(FromWorker::decode(b).unwrap()).unwrap())
            .collect();
        prop_assert_eq!(decoded, msgs);
    }

    #[test]
    fn prop_parent_messages_round_trip(
        msgs in vec(down_strategy(), 0..6),
        cuts in vec(any::<usize>(), 0..4),
    ) {
        let mut wire = Vec::new();
        for m in &msgs {
            encode_down(&mut wire, m);
        }
        let decoded: Vec<Down> = split_frames(&wire, &cuts)
            .iter()
            .map(|b| lift_down(ToWorker::decode(b).unwrap()).unwrap())
            .collect();
        prop_assert_eq!(decoded, msgs);
    }

    #[test]
    fn prop_a_cut_message_is_never_taken_for_the_whole(
        up in up_strategy(),
        down in down_strategy(),
        cut in any::<usize>(),
    ) {
        // Cut each body anywhere after its kind byte: it must fail to decode,
        // or (for kinds that end in a payload) its payload must.
        let mut frame = Vec::new();
        encode_up(&mut frame, &up);
        let body = &frame[codec::HEADER_LEN..];
        if body.len() > 1 {
            let short = &body[..1 + cut % (body.len() - 1)];
            match FromWorker::decode(short) {
                Err(_) => {}
                Ok(msg) => {
                    prop_assert!(carries_payload(body[0]), "{up:?} cut to {short:?} decoded as {msg:?}");
                    prop_assert_ne!(lift_up(msg).ok(), Some(up.clone()));
                }
            }
        }
        let mut frame = Vec::new();
        encode_down(&mut frame, &down);
        let body = &frame[codec::HEADER_LEN..];
        if body.len() > 1 {
            let short = &body[..1 + cut % (body.len() - 1)];
            match ToWorker::decode(short) {
                Err(_) => {}
                Ok(msg) => {
                    prop_assert!(carries_payload(body[0]), "{down:?} cut to {short:?} decoded as {msg:?}");
                    prop_assert_ne!(lift_down(msg).ok(), Some(down.clone()));
                }
            }
        }
    }

    #[test]
    fn prop_mutated_messages_never_panic(
        up in up_strategy(),
        down in down_strategy(),
        flips in vec((any::<usize>(), any::<u8>()), 1..3),
    ) {
        for mut body in [
            { let mut f = Vec::new(); encode_up(&mut f, &up); f.split_off(codec::HEADER_LEN) },
            { let mut f = Vec::new(); encode_down(&mut f, &down); f.split_off(codec::HEADER_LEN) },
        ] {
            for &(at, xor) in &flips {
                let n = body.len();
                body[at % n] ^= xor;
            }
            if let Ok(msg) = FromWorker::decode(&body) {
                prop_assert!(body[0] >= 0x80, "a parent kind decoded as a worker message");
                let _ = lift_up(msg);
            }
            if let Ok(msg) = ToWorker::decode(&body) {
                prop_assert!(body[0] < 0x80, "a worker kind decoded as a parent message");
                let _ = lift_down(msg);
            }
        }
    }
}

/// A first byte that is usually a real kind, so that random bodies reach
/// the field decoders rather than stop at an unknown kind.
fn kind_strategy() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(vec![
            kind::INIT, kind::TASK, kind::CREDIT, kind::STOP, kind::PING,
            kind::HELLO, kind::READY, kind::INIT_FAILED, kind::OUTPUT, kind::DONE,
            kind::OUTPUT_DONE, kind::FAILED, kind::BYE, kind::REPORT, kind::LOG, kind::PONG,
            kind::CANCEL, kind::SKIP, kind::TASK_OWN_DEADLINE, kind::CANCELLED,
            kind::BLOBS, kind::WORKER_BLOBS, kind::TASK_TIMED, kind::TASK_OWN_DEADLINE_TIMED,
            kind::DONE_TIMED, kind::FAILED_TIMED,
        ]),
        1 => any::<u8>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(MANY))]

    #[test]
    fn prop_random_bodies_never_panic_the_decoders(
        first in kind_strategy(),
        magic in any::<bool>(),
        rest in vec(any::<u8>(), 0..24),
    ) {
        let mut body = vec![first];
        if magic && first == kind::HELLO {
            body.extend_from_slice(HELLO_MAGIC);
        }
        body.extend_from_slice(&rest);
        match FromWorker::decode(&body) {
            Ok(msg) => {
                prop_assert!(first >= 0x80);
                let _ = lift_up(msg);
            }
            Err(ProtocolError::UnknownKind(k)) => {
                prop_assert_eq!(k, first);
                prop_assert!(!(kind::HELLO..=kind::FAILED_TIMED).contains(&k));
            }
            Err(_) => prop_assert!((kind::HELLO..=kind::FAILED_TIMED).contains(&first)),
        }
        match ToWorker::decode(&body) {
            Ok(msg) => {
                prop_assert!(first < 0x80);
                let _ = lift_down(msg);
            }
            Err(ProtocolError::UnknownKind(k)) => {
                prop_assert_eq!(k, first);
                prop_assert!(!(kind::INIT..=kind::TASK_OWN_DEADLINE_TIMED).contains(&k));
            }
            Err(_) => prop_assert!((kind::INIT..=kind::TASK_OWN_DEADLINE_TIMED).contains(&first)),
        }
    }
}

// ----- The parent's reader path -------------------------------------------

/// An in-memory stream that hands out its bytes in the pieces `cuts` says,
/// as a socket's reads would.
struct Chunked {
    data: Vec<u8>,
    at: usize,
    stops: Vec<usize>,
}

impl Chunked {
    fn new(data: Vec<u8>, cuts: &[usize]) -> Self {
        let mut stops: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        stops.push(data.len());
        stops.sort_unstable();
        stops.dedup();
        stops.reverse();
        Chunked { data, at: 0, stops }
    }
}

impl tokio::io::AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.stops.last().is_some_and(|&s| s <= self.at) && self.stops.len() > 1 {
            self.stops.pop();
        }
        let stop = self.stops.last().copied().unwrap_or(self.data.len());
        let n = (stop - self.at).min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

/// Runs a future whose IO is all in memory, so it never waits for a wake-up.
fn run_ready<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    for _ in 0..10_000 {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("the reader waited on an in-memory stream");
}

/// What the parent's reader made of a stream.
struct Read {
    end: ReadEnd,
    items: Vec<Output<u64>>,
    in_flight: usize,
}

/// Feeds `wire` to the parent's real reader (`read_loop`) for a lane that
/// holds `tasks` submitted tasks, in slots `0..tasks`.
fn read_as_parent(wire: Vec<u8>, cuts: &[usize], tasks: u32, max_frame: usize) -> Read {
    let lane = Arc::new(Lane::<u64>::new(0, 8, max_frame, 0));
    let generation = lane.open(1, None, 1_000, 1 << 20, None).unwrap();
    for _ in 0..tasks {
        lane.try_push(&(), None, None).map_err(|_| ()).unwrap();
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = FrameReader::new(Box::pin(Chunked::new(wire, cuts)), max_frame);
    let end = run_ready(read_loop(lane.clone(), generation, reader, tx));
    let mut items = Vec::new();
    while let Ok(batch) = rx.try_recv() {
        items.extend(batch.items);
    }
    Read {
        end,
        items,
        in_flight: lane.in_flight(),
    }
}

/// A well-behaved worker's stream for tasks in slots `0..n`: each gets
/// `outputs[i]` values, then completes, fails, or completes with its last
/// output; unsolicited outputs, pongs and logs are mixed in.
fn worker_stream_strategy() -> impl Strategy<Value = (u32, Vec<Up>)> {
    (1u32..8).prop_flat_map(|n| {
        let per_task = vec((vec(any::<u64>(), 0..3), 0u8..5), n as usize);
        let extras = vec(
            prop_oneof![
                any::<u64>().prop_map(|v| Up::Output(None, v)),
                any::<u64>().prop_map(Up::Pong),
                vec(any::<u8>(), 0..4).prop_map(Up::Log),
            ],
            0..3,
        );
        (per_task, extras, any::<bool>()).prop_map(move |(per_task, extras, bye)| {
            let mut msgs = extras;
            for (slot, (values, end)) in per_task.into_iter().enumerate() {
                let slot = slot as u32;
                let last = values.last().copied();
                let body = values
                    .len()
                    .saturating_sub(usize::from(end == 2 && last.is_some()));
                for &v in &values[..body] {
                    msgs.push(Up::Output(Some(slot), v));
                }
                msgs.push(match (end, last) {
                    (2, Some(v)) => Up::OutputDone(slot, v),
                    (1, _) => Up::Failed(slot, format!("task {slot} failed"), false, None),
                    (3, _) => Up::DoneTimed(slot, values.len() as u64),
                    (4, _) => {
                        let ran = Some(values.len() as u64);
                        Up::Failed(slot, format!("task {slot} failed"), true, ran)
                    }
                    _ => Up::Done(slot),
                });
            }
            if bye {
                msgs.push(Up::Bye);
            }
            (n, msgs)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(FEW))]

    #[test]
    fn prop_the_reader_delivers_a_valid_stream_whole(
        (tasks, msgs) in worker_stream_strategy(),
        cuts in vec(any::<usize>(), 0..6),
    ) {
        let mut wire = Vec::new();
        for m in &msgs {
            encode_up(&mut wire, m);
        }
        let read = read_as_parent(wire, &cuts, tasks, DEFAULT_MAX_FRAME);
        let bye = msgs.last() == Some(&Up::Bye);
        prop_assert!(matches!((&read.end, bye), (ReadEnd::Bye, true) | (ReadEnd::Eof, false)), "{:?}", read.end);
        prop_assert_eq!(read.in_flight, 0, "every task completed");
        // Every value and failure arrives, in the worker's order.
        let mut want = Vec::new();
        for m in &msgs {
            match m {
                Up::Output(slot, v) => want.push(format!("value {slot:?} {v}")),
                Up::OutputDone(slot, v) => want.push(format!("value {:?} {v}", Some(*slot))),
                Up::Failed(slot, message, ..) => want.push(format!("failed {slot} {message}")),
                _ => {}
            }
        }
        let got: Vec<String> = read
            .items
            .iter()
            .map(|item| match item {
                Output::Value { task, value, .. } => {
                    format!("value {:?} {value}", task.map(|t| t.seq() as u32))
                }
                Output::Failed(e) => format!("failed {} {}", e.task.seq(), e.message),
                other => format!("{other:?}"),
            })
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn prop_the_reader_reports_a_cut_stream_as_broken(
        (tasks, msgs) in worker_stream_strategy(),
        cut in any::<usize>(),
        cuts in vec(any::<usize>(), 0..4),
    ) {
        let mut wire = Vec::new();
        let mut boundaries = vec![0];
        for m in &msgs {
            encode_up(&mut wire, m);
            boundaries.push(wire.len());
        }
        let cut = cut % wire.len();
        wire.truncate(cut);
        let read = read_as_parent(wire, &cuts, tasks, DEFAULT_MAX_FRAME);
        if boundaries.contains(&cut) {
            // Cut between frames: a clean end, as far as the bytes tell.
            prop_assert!(matches!(read.end, ReadEnd::Eof | ReadEnd::Bye), "{:?}", read.end);
        } else {
            prop_assert!(
                matches!(&read.end, ReadEnd::Broken(why) if why.contains("truncated")),
                "{:?}", read.end
            );
        }
    }

    #[test]
    fn prop_the_reader_ends_cleanly_on_any_bytes(
        (tasks, msgs) in worker_stream_strategy(),
        flips in vec((any::<usize>(), any::<u8>()), 0..3),
        garbage in vec(any::<u8>(), 0..16),
        cuts in vec(any::<usize>(), 0..4),
        max_frame in prop_oneof![Just(16usize), Just(DEFAULT_MAX_FRAME)],
    ) {
        let mut wire = Vec::new();
        for m in &msgs {
            encode_up(&mut wire, m);
        }
        for &(at, xor) in &flips {
            let n = wire.len();
            wire[at % n] ^= xor;
        }
        if !flips.is_empty() {
            // Mutated streams also get random bytes spliced in.
            let at = flips[0].0 % (wire.len() + 1);
            wire.splice(at..at, garbage);
        }
        let intact = flips.is_empty();
        let read = read_as_parent(wire, &cuts, tasks, max_frame);
        if intact && max_frame == DEFAULT_MAX_FRAME {
            prop_assert!(!matches!(read.end, ReadEnd::Broken(_)), "{:?}", read.end);
        }
        // No task is reported twice, and a broken stream leaves the
        // remaining tasks held, for the supervisor to report lost.
        let mut seen = std::collections::HashSet::new();
        for item in &read.items {
            if let Output::Failed(e) = item {
                prop_assert!(seen.insert(e.task), "task {} failed twice", e.task);
            }
        }
        prop_assert!(read.in_flight <= tasks as usize);
    }
}

#[test]
fn a_task_frame_still_buffered_becomes_a_skip() {
    let mut buf = Vec::new();
    put_simple(&mut buf, kind::CREDIT, Some(3));
    put_task(&mut buf, 7, &"seven", DEFAULT_MAX_FRAME).unwrap();
    put_task_as(
        &mut buf,
        kind::TASK_OWN_DEADLINE,
        300,
        &"x",
        DEFAULT_MAX_FRAME,
    )
    .unwrap();
    assert!(!skip_task(&mut buf, 8), "no frame for slot 8");
    assert!(skip_task(&mut buf, 300));
    assert!(skip_task(&mut buf, 7));
    let frames = split_frames(&buf, &[]);
    let decoded: Vec<_> = frames
        .iter()
        .map(|b| ToWorker::decode(b).unwrap())
        .collect();
    assert_eq!(
        decoded,
        [ToWorker::Credit(3), ToWorker::Skip(7), ToWorker::Skip(300)]
    );
    // Skipped already: no task frame is left for it.
    assert!(!skip_task(&mut buf, 7));
}
