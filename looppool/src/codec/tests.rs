use super::*;

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut f = FrameWriter::begin(&mut buf, kind);
    f.extend_from_slice(body);
    f.finish(DEFAULT_MAX_FRAME).unwrap();
    buf
}

#[test]
fn varints_round_trip() {
    for value in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
        let mut buf = Vec::new();
        put_varint(&mut buf, value);
        let mut fields = Fields::new(&buf);
        assert_eq!(fields.varint().unwrap(), value);
        fields.end().unwrap();
    }
}

#[test]
fn overlong_varint_is_an_error() {
    let bytes = [0xffu8; 11];
    assert_eq!(Fields::new(&bytes).varint(), Err(CodecError::BadVarint));
}

#[test]
fn frames_split_across_reads_are_reassembled() {
    let mut wire = frame(7, b"hello");
    wire.extend(frame(8, b"world!"));
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut buf = Vec::new();
    let mut bodies = Vec::new();
    for byte in wire {
        buf.push(byte);
        while let Some(body) = decoder.next_frame(&buf).unwrap() {
            bodies.push(body.to_vec());
        }
        decoder.compact(&mut buf);
    }
    assert_eq!(bodies, vec![b"\x07hello".to_vec(), b"\x08world!".to_vec()]);
}

#[test]
fn oversize_frame_is_refused_before_its_body_arrives() {
    let mut decoder = FrameDecoder::new(16);
    let header = 17u32.to_le_bytes();
    assert_eq!(
        decoder.next_frame(&header),
        Err(CodecError::TooLarge { len: 17, max: 16 })
    );
}

#[test]
fn oversize_frame_is_not_written() {
    let mut buf = vec![1, 2, 3];
    let mut f = FrameWriter::begin(&mut buf, 1);
    f.extend_from_slice(&[0; 32]);
    assert!(matches!(f.finish(8), Err(CodecError::TooLarge { .. })));
    assert_eq!(buf, vec![1, 2, 3]);
}

#[test]
fn serde_payload_must_be_exact() {
    let mut buf = Vec::new();
    put_serde(&mut buf, &(5u32, String::from("x"))).unwrap();
    assert_eq!(get_serde::<(u32, String)>(&buf).unwrap(), (5, "x".into()));
    buf.push(0);
    assert!(get_serde::<(u32, String)>(&buf).is_err());
}

// ---------------------------------------------------------------------------
// Property tests: the decoder is fed random, truncated, re-chunked and
// mutated byte streams. It must never panic, must give back exactly what
// was encoded, and must never hand out part of a frame.
// ---------------------------------------------------------------------------

use proptest::collection::vec;
use proptest::prelude::*;

/// Cases per property: the cheap ones run many, the costly ones fewer, so
/// that each takes a few seconds in a debug build.
const MANY: u32 = 400_000;
const SOME: u32 = 100_000;

/// A list of frames: a kind byte and a short body each.
fn frames_strategy() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    vec((any::<u8>(), vec(any::<u8>(), 0..24)), 0..6)
}

fn encode_all(frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut wire = Vec::new();
    for (kind, body) in frames {
        let mut f = FrameWriter::begin(&mut wire, *kind);
        f.extend_from_slice(body);
        f.finish(DEFAULT_MAX_FRAME).unwrap();
    }
    wire
}

fn expected_bodies(frames: &[(u8, Vec<u8>)]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .map(|(kind, body)| {
            let mut b = vec![*kind];
            b.extend_from_slice(body);
            b
        })
        .collect()
}

/// Feeds `wire` to a decoder in the pieces that `cuts` describes, as reads
/// of a socket would deliver it, compacting between reads like the reader
/// does. Returns the bodies, the first error, and what was left unread.
fn decode_chunked(
    wire: &[u8],
    cuts: &[usize],
    max: usize,
) -> (Vec<Vec<u8>>, Option<CodecError>, Vec<u8>) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.push(wire.len());
    points.sort_unstable();
    let mut decoder = FrameDecoder::new(max);
    let mut buf = Vec::new();
    let mut bodies = Vec::new();
    let mut at = 0;
    for point in points {
        buf.extend_from_slice(&wire[at..point]);
        at = point;
        loop {
            match decoder.next_frame(&buf) {
                Ok(Some(body)) => bodies.push(body.to_vec()),
                Ok(None) => break,
                Err(e) => return (bodies, Some(e), Vec::new()),
            }
        }
        decoder.compact(&mut buf);
    }
    (bodies, None, buf)
}

/// The varint reference: the value the bytes spell up to the first byte
/// without its high bit, if that byte is among the first ten.
fn varint_reference(bytes: &[u8]) -> Result<(u64, usize), CodecError> {
    let mut value: u128 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u128::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return u64::try_from(value)
                .map(|v| (v, i + 1))
                .map_err(|_| CodecError::BadVarint);
        }
    }
    if bytes.len() < 10 {
        Err(CodecError::Truncated)
    } else {
        Err(CodecError::BadVarint)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(MANY))]

    #[test]
    fn prop_varints_round_trip(value in any::<u64>(), tail in vec(any::<u8>(), 0..3)) {
        let mut buf = Vec::new();
        put_varint(&mut buf, value);
        prop_assert!(buf.len() <= 10);
        buf.extend_from_slice(&tail);
        let mut fields = Fields::new(&buf);
        prop_assert_eq!(fields.varint(), Ok(value));
        prop_assert_eq!(fields.rest(), &tail[..]);
        let mut fields = Fields::new(&buf);
        let narrow = fields.varint_u32();
        if value <= u64::from(u32::MAX) {
            prop_assert_eq!(narrow, Ok(value as u32));
        } else {
            prop_assert_eq!(narrow, Err(CodecError::BadVarint));
        }
    }

    #[test]
    fn prop_varint_matches_the_reference_on_any_bytes(bytes in vec(any::<u8>(), 0..13)) {
        let mut fields = Fields::new(&bytes);
        let got = fields.varint();
        let want = varint_reference(&bytes);
        match (got, want) {
            (Ok(v), Ok((w, used))) => {
                prop_assert_eq!(v, w);
                prop_assert_eq!(fields.rest(), &bytes[used..]);
                // Re-encoding gives the shortest form, which decodes alike.
                let mut canonical = Vec::new();
                put_varint(&mut canonical, v);
                prop_assert!(canonical.len() <= used);
                prop_assert_eq!(Fields::new(&canonical).varint(), Ok(v));
            }
            (got, want) => prop_assert_eq!(got, want.map(|(v, _)| v)),
        }
    }

    #[test]
    fn prop_decoder_survives_garbage(bytes in vec(any::<u8>(), 0..48), max in 1usize..40) {
        let mut decoder = FrameDecoder::new(max);
        let mut consumed = 0;
        loop {
            prop_assert!(decoder.wanted(&bytes) <= max + HEADER_LEN);
            match decoder.next_frame(&bytes) {
                Ok(Some(body)) => {
                    prop_assert!(!body.is_empty() && body.len() <= max);
                    consumed += HEADER_LEN + body.len();
                    prop_assert!(consumed <= bytes.len());
                    // Reading its fields never panics either.
                    let mut f = Fields::new(body);
                    let _ = f.u8();
                    let _ = f.varint();
                    let _ = f.varint_u32();
                    let _ = f.end();
                    let _ = f.rest();
                }
                Ok(None) => {
                    // Only a partial frame (or nothing) is left, and it is
                    // never handed out.
                    let left = bytes.len() - consumed;
                    prop_assert!(decoder.wanted(&bytes) > 0);
                    prop_assert!(left < HEADER_LEN || left < HEADER_LEN + u32::from_le_bytes(
                        bytes[consumed..consumed + 4].try_into().unwrap()) as usize);
                    break;
                }
                Err(CodecError::TooLarge { len, max: m }) => {
                    prop_assert_eq!(m, max);
                    prop_assert!(len > max);
                    break;
                }
                Err(CodecError::EmptyFrame) => break,
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }
    }

    #[test]
    fn prop_oversize_frames_are_refused_and_removed(
        prefix in vec(any::<u8>(), 0..8),
        kind in any::<u8>(),
        body_len in 0usize..64,
        max in 0usize..64,
    ) {
        let mut buf = prefix.clone();
        let mut f = FrameWriter::begin(&mut buf, kind);
        f.extend(std::iter::repeat_n(0xa5, body_len));
        let result = f.finish(max);
        if body_len < max {
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(buf.len(), prefix.len() + HEADER_LEN + 1 + body_len);
            let mut decoder = FrameDecoder::new(max);
            let body = decoder.next_frame(&buf[prefix.len()..]).unwrap().unwrap();
            prop_assert_eq!(body.len(), 1 + body_len);
        } else {
            prop_assert_eq!(result, Err(CodecError::TooLarge { len: 1 + body_len, max }));
            prop_assert_eq!(buf, prefix);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(SOME))]

    #[test]
    fn prop_frames_round_trip_however_the_reads_split_them(
        frames in frames_strategy(),
        cuts in vec(any::<usize>(), 0..6),
    ) {
        let wire = encode_all(&frames);
        let (bodies, error, left) = decode_chunked(&wire, &cuts, DEFAULT_MAX_FRAME);
        prop_assert_eq!(error, None);
        prop_assert_eq!(bodies, expected_bodies(&frames));
        prop_assert!(left.is_empty());
    }

    #[test]
    fn prop_a_truncated_stream_never_yields_a_partial_frame(
        frames in frames_strategy(),
        cut in any::<usize>(),
        cuts in vec(any::<usize>(), 0..4),
    ) {
        let wire = encode_all(&frames);
        let cut = cut % (wire.len() + 1);
        let (bodies, error, left) = decode_chunked(&wire[..cut], &cuts, DEFAULT_MAX_FRAME);
        prop_assert_eq!(error, None);
        // Exactly the frames that fit whole before the cut come out ...
        let mut end = 0;
        let mut whole = 0;
        for (_, body) in &frames {
            let next = end + HEADER_LEN + 1 + body.len();
            if next > cut {
                break;
            }
            end = next;
            whole += 1;
        }
        prop_assert_eq!(bodies, expected_bodies(&frames[..whole]));
        // ... and the rest stays buffered: the reader reports it as a
        // truncated frame when the stream ends there.
        prop_assert_eq!(left, wire[end..cut].to_vec());
    }

    #[test]
    fn prop_mutated_streams_never_panic_and_stay_bounded(
        frames in frames_strategy(),
        flips in vec((any::<usize>(), any::<u8>()), 1..4),
        cuts in vec(any::<usize>(), 0..4),
        max in 1usize..64,
    ) {
        let mut wire = encode_all(&frames);
        if wire.is_empty() {
            wire.push(0);
        }
        for (at, xor) in flips {
            let n = wire.len();
            wire[at % n] ^= xor;
        }
        let (bodies, error, left) = decode_chunked(&wire, &cuts, max);
        let used: usize = bodies.iter().map(|b| HEADER_LEN + b.len()).sum();
        prop_assert!(used + left.len() <= wire.len());
        for body in &bodies {
            prop_assert!(!body.is_empty() && body.len() <= max);
        }
        match error {
            None | Some(CodecError::EmptyFrame) => {}
            Some(CodecError::TooLarge { len, .. }) => prop_assert!(len > max),
            Some(other) => prop_assert!(false, "unexpected error {other:?}"),
        }
    }

    #[test]
    fn prop_serde_values_round_trip_and_prefixes_fail(
        value in (any::<u32>(), ".{0,6}", vec(any::<u8>(), 0..8), any::<Option<i64>>(), any::<bool>()),
        junk in any::<u8>(),
    ) {
        let mut buf = vec![0xee];
        put_serde(&mut buf, &value).unwrap();
        let encoded = &buf[1..];
        prop_assert_eq!(get_serde::<(u32, String, Vec<u8>, Option<i64>, bool)>(encoded), Ok(value.clone()));
        // One byte too many is refused ...
        let mut longer = encoded.to_vec();
        longer.push(junk);
        prop_assert_eq!(
            get_serde::<(u32, String, Vec<u8>, Option<i64>, bool)>(&longer),
            Err(CodecError::Trailing(1))
        );
        // ... and so is every strict prefix: a cut payload is never misread.
        for cut in 0..encoded.len() {
            prop_assert!(get_serde::<(u32, String, Vec<u8>, Option<i64>, bool)>(&encoded[..cut]).is_err());
        }
    }

    #[test]
    fn prop_serde_decoding_never_panics_on_garbage(bytes in vec(any::<u8>(), 0..24)) {
        fn check<T>(bytes: &[u8]) -> Result<(), TestCaseError>
        where
            T: serde::de::DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
        {
            match get_serde::<T>(bytes) {
                Ok(value) => {
                    // Whatever decodes re-encodes to something that decodes alike.
                    let mut again = Vec::new();
                    put_serde(&mut again, &value).unwrap();
                    prop_assert_eq!(get_serde::<T>(&again), Ok(value));
                }
                Err(CodecError::Decode(_) | CodecError::Trailing(_)) => {}
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
            Ok(())
        }
        check::<u64>(&bytes)?;
        check::<String>(&bytes)?;
        check::<Vec<u8>>(&bytes)?;
        check::<(u32, String)>(&bytes)?;
        check::<Option<Vec<u16>>>(&bytes)?;
        check::<(bool, char, i32)>(&bytes)?;
    }
}

#[test]
fn an_empty_frame_is_an_error_of_its_own() {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    assert_eq!(
        decoder.next_frame(&[0, 0, 0, 0]),
        Err(CodecError::EmptyFrame)
    );
}

#[test]
fn an_oversize_header_asks_for_no_more_than_the_limit() {
    let decoder = FrameDecoder::new(16);
    assert_eq!(decoder.wanted(&u32::MAX.to_le_bytes()), 16);
}

/// `put_serde` writes exactly postcard's bytes, integers at the top included.
/// and `get_serde` reads them back.
fn same_as_postcard<T>(value: &T) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut buf = vec![7];
    put_serde(&mut buf, value).unwrap();
    prop_assert_eq!(&buf[1..], &postcard::to_stdvec(value).unwrap()[..]);
    prop_assert_eq!(&get_serde::<T>(&buf[1..]).unwrap(), value);
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct Newtype(i64);

proptest! {
    #[test]
    fn prop_payloads_are_postcards_bytes(
        u in any::<u64>(),
        i in any::<i64>(),
        h in any::<i16>(),
        w in any::<u32>(),
        s in ".{0,8}",
    ) {
        same_as_postcard(&u)?;
        same_as_postcard(&(u as u16))?;
        same_as_postcard(&w)?;
        same_as_postcard(&i)?;
        same_as_postcard(&(i as i32))?;
        same_as_postcard(&h)?;
        same_as_postcard(&Newtype(i))?;
        same_as_postcard(&Some(u))?;
        same_as_postcard(&(u, i, s.clone()))?;
        same_as_postcard(&vec![w, w / 3])?;
        same_as_postcard(&s)?;
    }
}

proptest! {
    #[test]
    fn prop_integer_payloads_decode_as_postcard_does(bytes in vec(any::<u8>(), 0..12)) {
        fn same<T>(bytes: &[u8]) -> Result<(), TestCaseError>
        where
            T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
        {
            let ours = get_serde::<T>(bytes);
            match postcard::take_from_bytes::<T>(bytes) {
                Ok((value, [])) => prop_assert_eq!(ours, Ok(value)),
                Ok((_, rest)) => prop_assert_eq!(ours, Err(CodecError::Trailing(rest.len()))),
                Err(e) => prop_assert_eq!(ours, Err(CodecError::Decode(e.to_string()))),
            }
            Ok(())
        }
        same::<u64>(&bytes)?;
        same::<i64>(&bytes)?;
        same::<Newtype>(&bytes)?;
        same::<(u64, u8)>(&bytes)?;
        same::<Option<u64>>(&bytes)?;
    }
}

#[test]
fn a_frame_whose_serialize_panics_is_taken_out() {
    struct Panics;
    impl Serialize for Panics {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeTuple;
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&7u8)?;
            panic!("no");
        }
    }
    let mut buf = frame(1, &[1, 2]);
    let before = buf.clone();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut f = FrameWriter::begin(&mut buf, 2);
        put_serde(&mut f, &Panics)
    }));
    assert!(panicked.is_err());
    assert_eq!(buf, before);
}
