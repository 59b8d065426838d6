use super::*;
use crate::codec::{self, CodecError};
use crate::protocol::{self, kind, Announced, ToWorker};

fn built(len: usize, byte: u8) -> Blob {
    let mut b = Blob::build(len).unwrap();
    b.fill(byte);
    b.freeze().unwrap()
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Holder {
    name: String,
    blobs: Vec<Blob>,
}

#[test]
fn built_blobs_are_sealed_files_and_empty_ones_need_none() {
    let blob = built(10_000, 3);
    assert!(blob.is_shared());
    assert_eq!(blob.len(), 10_000);
    assert!(blob.iter().all(|&b| b == 3));
    let empty = Blob::build(0).unwrap().freeze().unwrap();
    assert!(empty.is_empty() && !empty.is_shared());
    let heap = Blob::from(vec![1, 2, 3]);
    assert!(!heap.is_shared());
    assert_eq!(heap, Blob::from(&[1u8, 2, 3][..]));
}

#[test]
fn outside_a_frame_a_blob_is_its_bytes_whatever_its_size() {
    for blob in [Blob::from(vec![9u8; 10]), built(100_000, 5)] {
        // Another user of postcard: not looppool's frame encoder.
        let bytes = postcard::to_allocvec(&blob).unwrap();
        let back: Blob = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, blob);
        assert!(!back.is_shared());
    }
}

#[test]
fn a_frame_encoder_asks_for_a_sink_only_for_large_blobs() {
    let small = Holder {
        name: "s".into(),
        blobs: vec![Blob::from(vec![1u8; 100])],
    };
    let mut buf = Vec::new();
    codec::put_serde_or_blobs(&mut buf, &small).unwrap();
    assert_eq!(codec::get_serde::<Holder>(&buf).unwrap(), small);

    // Nested in a struct, and at the top of a payload.
    let large = Holder {
        name: "l".into(),
        blobs: vec![built(MIN_BLOB_THRESHOLD, 1)],
    };
    let mut buf = vec![7];
    assert!(codec::put_serde_or_blobs(&mut buf, &large).is_err());
    assert!(wire::take_wanted(), "it asks for a sink");
    assert_eq!(buf, [7], "the failed encoding is taken out");
    assert!(codec::put_serde_or_blobs(&mut buf, &large.blobs[0]).is_err());
    assert!(wire::take_wanted());
    assert!(!wire::take_wanted(), "asked once");
    // Without asking, it goes inline.
    codec::put_serde(&mut buf, &large).unwrap();
    assert_eq!(codec::get_serde::<Holder>(&buf[1..]).unwrap(), large);
}

#[test]
fn a_sink_takes_the_blobs_above_its_threshold_and_an_inbox_gives_them_back() {
    let value = Holder {
        name: "x".into(),
        blobs: vec![built(8192, 1), Blob::from(vec![2u8; 5000]), built(4096, 3)],
    };
    let mut buf = Vec::new();
    let (encoded, sealed) = wire::with_sink(Some(6000), Vec::new(), || {
        codec::put_serde_or_blobs(&mut buf, &value)
    });
    encoded.unwrap();
    assert_eq!(sealed.len(), 1, "only the blob of 8192 bytes");
    // The others inline: 9,096 bytes and a few of framing.
    assert!((9096..9200).contains(&buf.len()), "{} bytes", buf.len());

    // Decoded with the blob in the inbox (as received, a file).
    let received =
        Blob::from_sealed(Sealed::receive(sealed[0].fd().try_clone().unwrap(), 8192).unwrap());
    let (decoded, left) = wire::with_inbox(vec![received], || codec::get_serde::<Holder>(&buf));
    assert_eq!((decoded.unwrap(), left), (value, 0));

    // A reference without its blob is an error, not a panic.
    let err = codec::get_serde::<Holder>(&buf).unwrap_err();
    assert!(err.to_string().contains("payload does not decode"), "{err}");
    let (decoded, left) = wire::with_inbox(Vec::new(), || codec::get_serde::<Holder>(&buf));
    assert!(decoded.is_err());
    assert_eq!(left, 0);
}

#[test]
fn a_heap_blob_is_copied_into_one_file_once() {
    let blob = Blob::from(vec![4u8; 20_000]);
    let first = blob.sealed().unwrap();
    let second = blob.clone().sealed().unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(first.len(), 20_000);
    assert!(first.map.iter().all(|&b| b == 4));
}

#[test]
fn a_received_file_must_be_sealed_and_of_its_size() {
    let unsealed = shm::create(4096).unwrap();
    let err = Sealed::receive(unsealed, 4096).err().unwrap();
    assert!(err.contains("not sealed"), "{err}");
    let blob = built(4096, 1);
    let fd = || blob.sealed().unwrap().fd().try_clone().unwrap();
    assert!(Sealed::receive(fd(), 8192)
        .err()
        .unwrap()
        .contains("holds 4096 bytes"));
    assert!(Sealed::receive(fd(), 0).is_err());
    assert!(Sealed::receive(fd(), 4096).is_ok());
}

#[test]
fn a_task_with_blobs_is_announced_and_can_be_skipped_inside() {
    let mut frame = Vec::new();
    protocol::put_task(&mut frame, 5, &7u64, 1 << 20).unwrap();
    let mut buf = Vec::new();
    let at = protocol::put_blobs(
        &mut buf,
        kind::BLOBS,
        &[4096, 10_000],
        &frame[codec::HEADER_LEN..],
        1 << 20,
    )
    .unwrap();
    assert_eq!(&buf[at..], &frame[codec::HEADER_LEN..]);
    let body = &buf[codec::HEADER_LEN..];
    let Ok(ToWorker::Blobs(announced)) = ToWorker::decode(body) else {
        panic!("a frame with blobs")
    };
    let announced = Announced::parse(announced).unwrap();
    assert_eq!(announced.count(), 2);
    assert_eq!(announced.total, 14_096);
    assert_eq!(announced.sizes().collect::<Vec<_>>(), [4096, 10_000]);
    assert_eq!(
        crate::transport::frame::role(&buf),
        Ok(crate::transport::frame::Role::Task(5))
    );
    assert!(protocol::skip_task(&mut buf, 5));
    let Ok(ToWorker::Blobs(announced)) = ToWorker::decode(&buf[codec::HEADER_LEN..]) else {
        panic!("still a frame with blobs")
    };
    let announced = Announced::parse(announced).unwrap();
    assert_eq!(ToWorker::decode(announced.inner), Ok(ToWorker::Skip(5)));

    // The limit counts the blobs' bytes.
    let mut small = Vec::new();
    let refused = protocol::put_blobs(
        &mut small,
        kind::BLOBS,
        &[1 << 20],
        &frame[codec::HEADER_LEN..],
        1 << 20,
    );
    assert!(matches!(refused, Err(CodecError::TooLarge { .. })));
    assert!(small.is_empty());
}

#[test]
fn malformed_announcements_are_refused() {
    for body in [
        vec![kind::BLOBS, 0, kind::STOP],
        vec![kind::BLOBS, 1, 0, kind::STOP],
        vec![kind::BLOBS, 1, 0x80],
        vec![kind::BLOBS, 1, 5],
        vec![kind::BLOBS, 0x81, 0x08, 1, kind::STOP],
    ] {
        let Ok(ToWorker::Blobs(rest)) = ToWorker::decode(&body) else {
            panic!("a frame with blobs")
        };
        assert!(Announced::parse(rest).is_err(), "{body:?}");
    }
}
