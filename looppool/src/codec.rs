//! Bytes ↔ frames: length-delimited framing, varints and in-place serde encoding.
//!
//! A frame on the wire is a 4-byte little-endian body length followed by the
//! body. The body starts with a one-byte message kind (see [`crate::protocol`]).
//! Frames are appended straight into a connection's output buffer, so that many
//! small messages share one `write` system call; nothing here allocates per
//! frame once the buffers have grown.

use serde::{de::DeserializeOwned, Serialize};

/// Bytes taken by the length prefix of every frame.
pub(crate) const HEADER_LEN: usize = 4;

/// The frame that starts at `at` in `buf`, a run of whole frames (as a
/// connection's output buffer is): where its body begins and where it
/// ends; `None` past the last one, or for a header announcing more bytes
/// than `buf` holds (or an empty body).
pub(crate) fn frame_at(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    let header = buf.get(at..at + HEADER_LEN)?;
    let len = u32::from_le_bytes(header.try_into().ok()?) as usize;
    let body = at + HEADER_LEN;
    let end = body.checked_add(len)?;
    (len > 0 && end <= buf.len()).then_some((body, end))
}

/// Default bound on a frame body: large payloads pass, runaway ones do not.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024 * 1024;

/// Why a frame could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CodecError {
    /// A frame's body is larger than the connection's limit.
    TooLarge { len: usize, max: usize },
    /// A frame ended before one of its fields did, or the stream ended
    /// inside a frame.
    Truncated,
    /// A length prefix of zero: every frame has at least its kind byte.
    EmptyFrame,
    /// A varint was longer than its type allows.
    BadVarint,
    /// Bytes were left over after the last field of a message or value.
    Trailing(usize),
    /// serde failed to encode a value.
    Serde(String),
    /// A payload's bytes are not a valid encoding of the expected type.
    Decode(String),
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            CodecError::Truncated => f.write_str("frame truncated"),
            CodecError::EmptyFrame => f.write_str("empty frame (a length prefix of 0)"),
            CodecError::BadVarint => f.write_str("malformed varint"),
            CodecError::Trailing(1) => f.write_str("1 unexpected trailing byte"),
            CodecError::Trailing(n) => write!(f, "{n} unexpected trailing bytes"),
            CodecError::Serde(msg) => f.write_str(msg),
            CodecError::Decode(msg) => write!(f, "payload does not decode: {msg}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// A frame being appended to a buffer, between its length prefix and its
/// completion. Every frame is written through one.
///
/// Dropped before [`finish`](Self::finish) (by an error returned with `?`,
/// or by a panic in a `Serialize` impl writing the payload), it removes
/// what was written of its frame, so the buffer never holds part of a
/// frame: the frames queued before it, and those queued after, go out
/// intact whoever's code failed in between.
pub(crate) struct FrameWriter<'a> {
    buf: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> FrameWriter<'a> {
    /// Starts a frame in `buf`: reserves the length prefix and writes the kind.
    #[inline(always)]
    pub(crate) fn begin(buf: &'a mut Vec<u8>, kind: u8) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&[0, 0, 0, 0, kind]);
        FrameWriter { buf, start }
    }

    /// Completes the frame: checks its size and fills in its length. An
    /// oversize frame is removed again, so the buffer stays valid.
    #[inline(always)]
    pub(crate) fn finish(self, max: usize) -> Result<(), CodecError> {
        let len = self.buf.len() - self.start - HEADER_LEN;
        if len > max {
            // Dropped: the frame is taken out.
            return Err(CodecError::TooLarge { len, max });
        }
        let start = self.start;
        self.buf[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
        // Complete: keep it (the writer holds only a borrow, nothing leaks).
        std::mem::forget(self);
        Ok(())
    }
}

impl std::ops::Deref for FrameWriter<'_> {
    type Target = Vec<u8>;

    #[inline(always)]
    fn deref(&self) -> &Vec<u8> {
        self.buf
    }
}

impl std::ops::DerefMut for FrameWriter<'_> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        self.buf
    }
}

impl Drop for FrameWriter<'_> {
    #[cold]
    fn drop(&mut self) {
        self.buf.truncate(self.start);
    }
}

/// The bytes [`put_varint`] takes for `value`.
pub(crate) const fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Appends `value` as a LEB128 varint.
#[inline(always)]
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    // Slots and small values take one to three bytes: each size is appended
    // as one fixed-size slice (one capacity check and one store), not a
    // `push` with its own check per byte.
    if value < 1 << 7 {
        buf.push(value as u8);
    } else if value < 1 << 14 {
        buf.extend_from_slice(&[value as u8 | 0x80, (value >> 7) as u8]);
    } else if value < 1 << 21 {
        buf.extend_from_slice(&[
            value as u8 | 0x80,
            (value >> 7) as u8 | 0x80,
            (value >> 14) as u8,
        ]);
    } else {
        while value >= 0x80 {
            buf.push((value as u8) | 0x80);
            value >>= 7;
        }
        buf.push(value as u8);
    }
}

/// Serializes `value` with postcard, appending to `buf` in place, for a
/// frame that may carry blobs by descriptor: a blob in `value` met without
/// a sink fails the encoding, leaving `blob::wire::take_wanted` true, and
/// the caller encodes the frame again with a sink for its connection.
/// Values without blobs pay nothing for that: this is the codec's plain
/// serialization, unchanged (even a new error variant would cost the
/// checks of every `Result` on the path).
#[inline(always)]
pub(crate) fn put_serde_or_blobs<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
) -> Result<(), CodecError> {
    let mark = buf.len();
    let mut serializer = postcard::Serializer {
        output: AppendFlavor(buf),
    };
    match value.serialize(Top(&mut serializer)) {
        Ok(()) => Ok(()),
        Err(e) => {
            buf.truncate(mark);
            Err(CodecError::Serde(e.to_string()))
        }
    }
}

/// Serializes `value` with postcard, appending to `buf` in place; a blob
/// in it travels inline (as in a frame whose connection carries no
/// descriptors).
pub(crate) fn put_serde<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &T,
) -> Result<(), CodecError> {
    match put_serde_or_blobs(buf, value) {
        Err(_) if crate::blob::wire::take_wanted() => {
            crate::blob::wire::with_sink(None, Vec::new(), || put_serde_or_blobs(buf, value)).0
        }
        done => done,
    }
}

/// Decodes a postcard payload that must fill `bytes` exactly.
#[inline(always)]
pub(crate) fn get_serde<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let mut rest = bytes;
    match T::deserialize(de::TopDe(&mut rest)) {
        Ok(value) if rest.is_empty() => Ok(value),
        Ok(_) => Err(CodecError::Trailing(rest.len())),
        Err(e) => Err(CodecError::Decode(e.to_string())),
    }
}

/// A postcard output flavor that appends to a borrowed `Vec` without moving it
/// in and out of the serializer (which costs a copy per frame).
struct AppendFlavor<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendFlavor<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

type Postcard<'a, 'b> = &'a mut postcard::Serializer<AppendFlavor<'b>>;

/// Postcard's serializer for the value at the top of a payload, with its
/// integers written by [`put_varint`] instead of postcard's varint path
/// (a stack buffer handed to the output as a slice of unknown length: a
/// `memcpy` call per integer). The bytes are postcard's own; whatever a
/// value holds inside goes through postcard unchanged.
struct Top<'a, 'b>(Postcard<'a, 'b>);

/// Forwards serializer methods to postcard's.
macro_rules! forward {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {$(
        #[inline]
        fn $name(self, $($arg: $ty),*) -> Result<$ret, postcard::Error> {
            serde::Serializer::$name(self.0, $($arg),*)
        }
    )*};
}

impl<'a, 'b> serde::Serializer for Top<'a, 'b> {
    type Ok = ();
    type Error = postcard::Error;
    type SerializeSeq = Postcard<'a, 'b>;
    type SerializeTuple = Postcard<'a, 'b>;
    type SerializeTupleStruct = Postcard<'a, 'b>;
    type SerializeTupleVariant = Postcard<'a, 'b>;
    type SerializeMap = Postcard<'a, 'b>;
    type SerializeStruct = Postcard<'a, 'b>;
    type SerializeStructVariant = Postcard<'a, 'b>;

    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline]
    fn serialize_u16(self, v: u16) -> postcard::Result<()> {
        put_varint(self.0.output.0, v.into());
        Ok(())
    }

    #[inline]
    fn serialize_u32(self, v: u32) -> postcard::Result<()> {
        put_varint(self.0.output.0, v.into());
        Ok(())
    }

    #[inline]
    fn serialize_u64(self, v: u64) -> postcard::Result<()> {
        put_varint(self.0.output.0, v);
        Ok(())
    }

    #[inline]
    fn serialize_i16(self, v: i16) -> postcard::Result<()> {
        self.serialize_i64(v.into())
    }

    #[inline]
    fn serialize_i32(self, v: i32) -> postcard::Result<()> {
        self.serialize_i64(v.into())
    }

    #[inline]
    fn serialize_i64(self, v: i64) -> postcard::Result<()> {
        // Zigzag, as postcard does: small magnitudes of either sign stay short.
        put_varint(self.0.output.0, ((v << 1) ^ (v >> 63)) as u64);
        Ok(())
    }

    forward! {
        serialize_bool(v: bool) -> ();
        serialize_i8(v: i8) -> ();
        serialize_i128(v: i128) -> ();
        serialize_u8(v: u8) -> ();
        serialize_u128(v: u128) -> ();
        serialize_f32(v: f32) -> ();
        serialize_f64(v: f64) -> ();
        serialize_char(v: char) -> ();
        serialize_str(v: &str) -> ();
        serialize_bytes(v: &[u8]) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(name: &'static str) -> ();
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str) -> ();
        serialize_seq(len: Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(len: usize) -> Self::SerializeTuple;
        serialize_tuple_struct(name: &'static str, len: usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(name: &'static str, index: u32, variant: &'static str, len: usize) -> Self::SerializeTupleVariant;
        serialize_map(len: Option<usize>) -> Self::SerializeMap;
        serialize_struct(name: &'static str, len: usize) -> Self::SerializeStruct;
        serialize_struct_variant(name: &'static str, index: u32, variant: &'static str, len: usize) -> Self::SerializeStructVariant;
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> postcard::Result<()> {
        self.0.serialize_some(value)
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> postcard::Result<()> {
        // Postcard writes a newtype as its content: keep the fast path.
        value.serialize(self)
    }

    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> postcard::Result<()> {
        self.0
            .serialize_newtype_variant(name, index, variant, value)
    }

    fn collect_str<T: std::fmt::Display + ?Sized>(self, value: &T) -> postcard::Result<()> {
        self.0.collect_str(value)
    }
}

/// A cursor over one frame body, for reading its fields.
#[derive(Debug)]
pub(crate) struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Fields { rest: body }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        let (&first, rest) = self.rest.split_first().ok_or(CodecError::Truncated)?;
        self.rest = rest;
        Ok(first)
    }

    #[inline(always)]
    pub(crate) fn varint(&mut self) -> Result<u64, CodecError> {
        // Slots and small values take one to three bytes: those are read
        // without the loop (each arm knows the bytes before it carry the
        // continuation bit, as the arms before it did not match).
        match *self.rest {
            [b0, ref rest @ ..] if b0 < 0x80 => {
                self.rest = rest;
                return Ok(b0.into());
            }
            [b0, b1, ref rest @ ..] if b1 < 0x80 => {
                self.rest = rest;
                return Ok(u64::from(b0 & 0x7f) | u64::from(b1) << 7);
            }
            [b0, b1, b2, ref rest @ ..] if b2 < 0x80 => {
                self.rest = rest;
                return Ok(u64::from(b0 & 0x7f) | u64::from(b1 & 0x7f) << 7 | u64::from(b2) << 14);
            }
            _ => {}
        }
        // Longer ones: one pass over at most ten bytes.
        let bytes = self.rest;
        let mut value: u64 = 0;
        for (i, &byte) in bytes.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                // The tenth byte carries the top bit only.
                if i == 9 && byte > 1 {
                    return Err(CodecError::BadVarint);
                }
                self.rest = &bytes[i + 1..];
                return Ok(value);
            }
        }
        if bytes.len() < 10 {
            Err(CodecError::Truncated)
        } else {
            Err(CodecError::BadVarint)
        }
    }

    #[inline(always)]
    pub(crate) fn varint_u32(&mut self) -> Result<u32, CodecError> {
        u32::try_from(self.varint()?).map_err(|_| CodecError::BadVarint)
    }

    /// The unread remainder, consuming it.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// Fails unless every byte was read.
    pub(crate) fn end(&self) -> Result<(), CodecError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Trailing(self.rest.len()))
        }
    }
}

/// Splits complete frames off the front of a read buffer.
///
/// Call [`next_frame`](Self::next_frame) until it returns `Ok(None)`, then
/// [`compact`](Self::compact) before reading more bytes in behind the rest.
#[derive(Debug)]
pub(crate) struct FrameDecoder {
    max: usize,
    pos: usize,
}

impl FrameDecoder {
    pub(crate) fn new(max: usize) -> Self {
        FrameDecoder { max, pos: 0 }
    }

    pub(crate) fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The body of the next complete frame in `buf`, if there is one.
    ///
    /// An announced length above the limit is an error at once, before its
    /// bytes arrive, so a peer cannot make us buffer a runaway frame.
    pub(crate) fn next_frame<'b>(&mut self, buf: &'b [u8]) -> Result<Option<&'b [u8]>, CodecError> {
        let avail = &buf[self.pos..];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > self.max {
            return Err(CodecError::TooLarge { len, max: self.max });
        }
        if len == 0 {
            return Err(CodecError::EmptyFrame);
        }
        if avail.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.pos += HEADER_LEN + len;
        Ok(Some(&avail[HEADER_LEN..HEADER_LEN + len]))
    }

    /// How many more bytes the frame at the front needs, if it is known.
    pub(crate) fn wanted(&self, buf: &[u8]) -> usize {
        let avail = &buf[self.pos..];
        if avail.len() < HEADER_LEN {
            return HEADER_LEN - avail.len();
        }
        let len = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        // An oversize frame is refused by `next_frame`: never ask for its bytes.
        (HEADER_LEN + len.min(self.max)).saturating_sub(avail.len())
    }

    /// Moves the bytes after the consumed frames to the front of `buf` and
    /// returns how many there are.
    pub(crate) fn compact_within(&mut self, buf: &mut [u8]) -> usize {
        let pos = std::mem::take(&mut self.pos);
        if pos > 0 {
            buf.copy_within(pos.., 0);
        }
        buf.len() - pos
    }

    /// Drops the consumed frames from the front of `buf`.
    #[cfg(test)]
    pub(crate) fn compact(&mut self, buf: &mut Vec<u8>) {
        if self.pos > 0 {
            buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

mod de;

#[cfg(test)]
mod tests;
