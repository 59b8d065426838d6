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
    put_failed(&mut buf, 2, &failure, DEFAULT_MAX_FRAME);
    put_simple(&mut buf, kind::BYE, None);

    let bodies = bodies(&buf);
    let msgs: Vec<_> = bodies
        .iter()
        .map(|b| FromWorker::decode(b).unwrap())
        .collect();
    assert_eq!(
        msgs[0],
        FromWorker::Hello {
            protocol: PROTOCOL_VERSION,
            hello
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
    assert_eq!(msgs[5], FromWorker::Failed { slot: 2, failure });
    assert_eq!(msgs[6], FromWorker::Bye);
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
            payload: &[2, b'h', b'i']
        }
    );
    assert_eq!(msgs[2], ToWorker::Credit(300));
    assert_eq!(msgs[3], ToWorker::Stop);
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
