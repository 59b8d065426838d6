use super::*;

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let start = begin_frame(&mut buf, kind);
    buf.extend_from_slice(body);
    finish_frame(&mut buf, start, DEFAULT_MAX_FRAME).unwrap();
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
    let start = begin_frame(&mut buf, 1);
    buf.extend_from_slice(&[0; 32]);
    assert!(matches!(
        finish_frame(&mut buf, start, 8),
        Err(CodecError::TooLarge { .. })
    ));
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
