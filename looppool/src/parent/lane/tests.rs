//! Output credits owed to a worker: when they ride on a task frame, when they
//! go at once, and that the window the parent keeps counts them when sent.

use super::*;
use crate::codec::FrameDecoder;
use crate::protocol::ToWorker;

/// The frames queued for the writer, decoded, as (kind, value).
fn queued(lane: &Lane<u64>) -> Vec<(u8, u32)> {
    let mut out = Vec::new();
    let generation = lane.lock().generation();
    assert!(lane
        .lock()
        .take_frames(generation, &mut out, &mut Vec::new()));
    let mut frames = FrameDecoder::new(usize::MAX);
    let mut seen = Vec::new();
    while let Some(body) = frames.next_frame(&out).unwrap() {
        seen.push(match ToWorker::decode(body).unwrap() {
            ToWorker::Credit(n) => (kind::CREDIT, n),
            ToWorker::Task { slot, .. } => (kind::TASK, slot),
            ToWorker::Stop => (kind::STOP, 0),
            other => panic!("unexpected frame {other:?}"),
        });
    }
    seen
}

/// A lane open to a worker with an output window of `window`.
fn open_lane(window: u32) -> (Lane<u64>, u64) {
    let lane = Lane::new(0, 8, 1 << 20, 0);
    let generation = lane.open(1, None, window, 1024, None).unwrap();
    (lane, generation)
}

/// What the reader does for a read that held `replies` call replies.
fn replies(lane: &Lane<u64>, replies: u32) {
    let mut st = lane.lock();
    lane.settle_read(&mut st, 0, replies, 0).unwrap();
}

/// Outputs the worker may still send, as the parent counts them.
fn window(lane: &Lane<u64>) -> i64 {
    lane.lock().window.open()
}

#[test]
fn credits_for_call_replies_ride_on_the_next_task() {
    let (lane, _) = open_lane(8);
    replies(&lane, 1);
    assert_eq!(queued(&lane), []);
    assert_eq!(window(&lane), 7);
    lane.try_push(&5u64, None, None).map_err(|_| ()).unwrap();
    assert_eq!(
        queued(&lane),
        [(kind::CREDIT, 1), (kind::TASK, 0)],
        "the credit goes in front of the task"
    );
    assert_eq!(window(&lane), 8);
}

#[test]
fn owed_credits_go_at_once_when_the_window_runs_low() {
    let (lane, _) = open_lane(8);
    replies(&lane, 3);
    assert_eq!(queued(&lane), [], "5 of 8 left: nothing to send yet");
    replies(&lane, 2);
    assert_eq!(
        queued(&lane),
        [(kind::CREDIT, 5)],
        "3 of 8 left, below half: the worker may soon wait for them"
    );
    assert_eq!(window(&lane), 8);
}

#[test]
fn owed_credits_go_when_the_window_shrinks_without_replies() {
    let (lane, _) = open_lane(8);
    replies(&lane, 1);
    assert_eq!(queued(&lane), []);
    // Outputs for the stream spend the window too; the reader settles
    // after every read, even one that frees no credit.
    let mut st = lane.lock();
    lane.settle_read(&mut st, 4, 0, 0).unwrap();
    drop(st);
    assert_eq!(queued(&lane), [(kind::CREDIT, 1)]);
    assert_eq!(window(&lane), 4);
}

#[test]
fn owed_credits_join_a_frame_that_is_queued_anyway() {
    let (lane, generation) = open_lane(8);
    replies(&lane, 1);
    lane.stop();
    assert_eq!(queued(&lane), [(kind::CREDIT, 1), (kind::STOP, 0)]);
    // A stopping worker gets no more tasks to carry its credits.
    lane.return_output_credits(generation, 2);
    assert_eq!(queued(&lane), [(kind::CREDIT, 2)]);
}

#[test]
fn a_new_worker_is_owed_nothing() {
    let (lane, _) = open_lane(8);
    replies(&lane, 1);
    let _ = lane.take_held(false);
    lane.open(2, None, 8, 1024, None).unwrap();
    lane.try_push(&5u64, None, None).map_err(|_| ()).unwrap();
    assert_eq!(queued(&lane), [(kind::TASK, 0)]);
    assert_eq!(window(&lane), 8);
}

#[test]
fn round_robin_sees_a_full_lane_without_its_lock_until_slots_are_freed() {
    let (lane, _) = open_lane(8);
    for task in 0..8u64 {
        lane.try_push(&task, None, None).map_err(|_| ()).unwrap();
    }
    assert!(lane.has_room(), "full, but no push has found it so yet");
    assert!(matches!(
        lane.try_push(&8u64, None, None),
        Err((PushError::Full, _))
    ));
    assert!(!lane.has_room());
    let mut st = lane.lock();
    lane.settle_read(&mut st, 0, 0, 0).unwrap();
    drop(st);
    assert!(!lane.has_room(), "a read that freed nothing leaves it full");
    // What the reader does with a completion: the slot is freed, then the
    // read is settled.
    let mut st = lane.lock();
    let (mut back, mut freed) = (0, 0);
    st.apply(
        0,
        SlotEvent::Done { slot: 3 },
        0,
        |_| {},
        &mut back,
        &mut freed,
    )
    .map_err(|_| ())
    .unwrap();
    lane.settle_read(&mut st, 0, back, freed).unwrap();
    drop(st);
    assert!(lane.has_room());
    lane.try_push(&9u64, None, None).map_err(|_| ()).unwrap();
    assert!(lane.try_push(&10u64, None, None).is_err());
    assert!(!lane.has_room());
    assert_eq!(lane.take_held(false).len(), 8);
    assert!(!lane.has_room(), "down: not a lane to send to");
    assert!(!lane.full.load(Ordering::Relaxed), "but no longer full");
}
