//! [`Blob`]: bytes that cross to a local worker (or back) as a sealed
//! shared-memory file, mapped read-only on the other side, instead of being
//! copied through the socket.
//!
//! Serde cannot see the connection a value is encoded for, so a blob's
//! descriptor travels beside the frame: `Blob::serialize` puts the blob in
//! this thread's *sink* (see `wire`) while one frame is encoded, and the
//! frame announces the blobs it carries; on the other side the announced
//! descriptors are received before the frame is decoded, and
//! `Blob::deserialize` takes them from this thread's *inbox*.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};

use memmap2::{Mmap, MmapMut};
use serde::de::Error as _;
use serde::de::{self, Deserializer, EnumAccess, VariantAccess, Visitor};
use serde::ser::{Error as _, Serializer};

use crate::sys::shm;

pub(crate) mod wire;

/// Blobs smaller than this always travel inline in their frame, whatever
/// the pool's [threshold](crate::PoolBuilder::blob_threshold): a memory
/// file costs a page at least and several system calls.
pub const MIN_BLOB_THRESHOLD: usize = 4096;

/// The default [threshold](crate::PoolBuilder::blob_threshold) from which
/// a blob crosses to a local worker as a memory file rather than through
/// the socket.
///
/// Measured with blobs echoed through two workers (the bench's W5 with
/// blobs of each size, reused): by descriptor against inline, 32 KiB gave
/// 1,059 against 933 MB/s (noise), 64 KiB 1,918 against 1,711, 128 KiB
/// 2,872 against 1,546, 1 MiB 14,679 against 1,461. A blob made from a
/// `Vec` also pays for its memory file when first sent (a system call's
/// copy, and a few more calls), which eats the gain at 64 KiB: from
/// 128 KiB the descriptor wins either way.
pub const DEFAULT_BLOB_THRESHOLD: usize = 128 * 1024;

/// An immutable byte buffer for large payloads, usable anywhere in a task
/// or an output (it implements `Serialize` and `Deserialize`).
///
/// Between a pool and its local workers, a blob of at least the pool's
/// [`blob_threshold`](crate::PoolBuilder::blob_threshold) does not travel
/// through the socket: its bytes live in a sealed memory file (`memfd`)
/// whose descriptor is passed to the other process, which maps it
/// read-only. Neither side copies the bytes through the kernel, and a blob
/// received and sent on (an echo) is passed on as the same file. Smaller
/// blobs, and every blob sent through a [`Connector`](crate::transport::Connector)
/// such as `looppool-nats`, travel inline as plain bytes.
///
/// A blob made from a `Vec<u8>` is copied once into a memory file the
/// first time it is sent that way (and that file is kept for later sends);
/// [`Blob::build`] writes straight into one, with no copy.
///
/// Cloning is cheap (a reference count). A blob's bytes count, as if they
/// were in the frame, against [`max_frame`](crate::PoolBuilder::max_frame)
/// and the output byte bound
/// ([`max_result_bytes`](crate::PoolBuilder::max_result_bytes)). Each blob
/// that lives in a memory file holds one descriptor of its process while
/// it lives.
///
/// Through any other serializer (JSON, say) a blob is an enum with one
/// variant, `Inline`, holding its bytes.
///
/// ```
/// use looppool::Blob;
///
/// let mut b = Blob::build(1 << 20)?;
/// b.fill(7);
/// let blob: Blob = b.freeze()?;
/// assert_eq!(blob.len(), 1 << 20);
/// assert!(blob.is_shared());
/// assert_eq!(&Blob::from(vec![1, 2, 3])[..], &[1, 2, 3]);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Blob {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    Heap(Arc<Heap>),
    Shared(Arc<Sealed>),
}

/// A blob's bytes in this process's heap, with the memory file they were
/// copied into the first time they were sent as one.
struct Heap {
    bytes: Vec<u8>,
    sealed: OnceLock<Arc<Sealed>>,
}

/// A sealed memory file and a read-only mapping of it.
pub(crate) struct Sealed {
    fd: OwnedFd,
    map: Mmap,
}

impl Sealed {
    /// The file's descriptor, to pass to another process.
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The file's size.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Maps a received descriptor, checked to be a sealed file of `len`
    /// bytes.
    pub(crate) fn receive(fd: OwnedFd, len: usize) -> Result<Sealed, String> {
        if len == 0 {
            return Err("a shared blob of 0 bytes".into());
        }
        let map = shm::map_sealed(&fd, len)?;
        Ok(Sealed { fd, map })
    }

    /// A sealed copy of `bytes` (not empty).
    fn copy_of(bytes: &[u8]) -> std::io::Result<Sealed> {
        let fd = shm::create(bytes.len())?;
        // Written with one system call's copy rather than through a
        // mapping, which would fault in every page first.
        std::os::unix::fs::FileExt::write_all_at(&std::fs::File::from(fd.try_clone()?), bytes, 0)?;
        shm::seal(&fd)?;
        let map = shm::map_sealed(&fd, bytes.len()).map_err(std::io::Error::other)?;
        Ok(Sealed { fd, map })
    }
}

impl Blob {
    /// A writable buffer of `len` zeroed bytes in a memory file of its own:
    /// fill it, then [`freeze`](BlobMut::freeze) it into a blob that
    /// crosses to a worker without a copy.
    ///
    /// # Errors
    /// The operating system's error when the memory file cannot be made or
    /// mapped (out of descriptors or memory).
    pub fn build(len: usize) -> std::io::Result<BlobMut> {
        if len == 0 {
            return Ok(BlobMut { file: None });
        }
        let fd = shm::create(len)?;
        let map = shm::map_mut(&fd, len)?;
        Ok(BlobMut {
            file: Some((fd, map)),
        })
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the blob holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.repr {
            Repr::Heap(heap) => &heap.bytes,
            Repr::Shared(sealed) => &sealed.map,
        }
    }

    /// Whether the bytes live in a memory file (made by [`Blob::build`], or
    /// received from another process that way) rather than in this
    /// process's heap.
    pub fn is_shared(&self) -> bool {
        matches!(self.repr, Repr::Shared(_))
    }

    /// A blob over a received memory file.
    pub(crate) fn from_sealed(sealed: Sealed) -> Blob {
        Blob {
            repr: Repr::Shared(Arc::new(sealed)),
        }
    }

    /// The blob's memory file, made (and kept) now for heap bytes.
    pub(crate) fn sealed(&self) -> std::io::Result<Arc<Sealed>> {
        match &self.repr {
            Repr::Shared(sealed) => Ok(sealed.clone()),
            Repr::Heap(heap) => {
                if let Some(sealed) = heap.sealed.get() {
                    return Ok(sealed.clone());
                }
                let sealed = Arc::new(Sealed::copy_of(&heap.bytes)?);
                Ok(heap.sealed.get_or_init(|| sealed).clone())
            }
        }
    }
}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Self {
        Blob {
            repr: Repr::Heap(Arc::new(Heap {
                bytes,
                sealed: OnceLock::new(),
            })),
        }
    }
}

impl From<&[u8]> for Blob {
    fn from(bytes: &[u8]) -> Self {
        Blob::from(bytes.to_vec())
    }
}

impl From<Box<[u8]>> for Blob {
    fn from(bytes: Box<[u8]>) -> Self {
        Blob::from(bytes.into_vec())
    }
}

impl Deref for Blob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Blob) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Blob {}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob")
            .field("len", &self.len())
            .field("shared", &self.is_shared())
            .finish()
    }
}

/// A blob being written: a zeroed, writable mapping of a memory file of its
/// own, made by [`Blob::build`]. [`freeze`](Self::freeze) seals it.
pub struct BlobMut {
    /// None for an empty blob, which needs no file.
    file: Option<(OwnedFd, MmapMut)>,
}

impl BlobMut {
    /// Seals the file (its bytes and size are final from here on, for
    /// every process that maps it) and maps it read-only.
    ///
    /// # Errors
    /// The operating system's error when sealing or mapping fails.
    pub fn freeze(self) -> std::io::Result<Blob> {
        let Some((fd, map)) = self.file else {
            return Ok(Blob::from(Vec::new()));
        };
        let len = map.len();
        // The writable mapping must go before the file can be sealed
        // against writes.
        drop(map);
        shm::seal(&fd)?;
        let map = shm::map_sealed(&fd, len).map_err(std::io::Error::other)?;
        Ok(Blob::from_sealed(Sealed { fd, map }))
    }
}

impl Deref for BlobMut {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.file.as_ref().map_or(&[], |(_, map)| &map[..])
    }
}

impl DerefMut for BlobMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.file.as_mut().map_or(&mut [], |(_, map)| &mut map[..])
    }
}

impl fmt::Debug for BlobMut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobMut").field("len", &self.len()).finish()
    }
}

/// The serde name of the blob enum and its variants: `Inline` (the
/// bytes), and `Shared` (the index of an announced descriptor in its
/// frame), which only looppool's own connections produce.
const NAME: &str = "Blob";
const VARIANTS: &[&str] = &["Inline", "Shared"];

/// Bytes serialized as one byte string.
struct Bytes<'a>(&'a [u8]);

impl serde::Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl serde::Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let inline = |s: S| s.serialize_newtype_variant(NAME, 0, VARIANTS[0], &Bytes(self));
        if self.len() < MIN_BLOB_THRESHOLD {
            return inline(s);
        }
        match wire::offer(self) {
            wire::Offer::Inline => inline(s),
            wire::Offer::Shared(index) => s.serialize_newtype_variant(NAME, 1, VARIANTS[1], &index),
            wire::Offer::Failed(e) => Err(S::Error::custom(format!(
                "cannot put a blob of {} bytes in a memory file: {e}",
                self.len()
            ))),
            wire::Offer::NoSink if wire::is_frame_encoder::<S>() => {
                // Encoding a frame: ask the frame's encoder to try again
                // with a sink for this connection.
                wire::want_sink();
                Err(S::Error::custom(wire::WANT_SINK))
            }
            wire::Offer::NoSink => inline(s),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
        d.deserialize_enum(NAME, VARIANTS, BlobVisitor)
    }
}

struct BlobVisitor;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a looppool blob")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Blob, A::Error> {
        let (tag, variant) = data.variant::<Tag>()?;
        match tag {
            Tag::Inline => Ok(Blob::from(variant.newtype_variant::<ByteBuf>()?.0)),
            Tag::Shared => {
                let index = variant.newtype_variant::<u32>()?;
                wire::take(index).map_err(A::Error::custom)
            }
        }
    }
}

/// The variant of a serialized blob, by index or by name.
enum Tag {
    Inline,
    Shared,
}

impl<'de> serde::Deserialize<'de> for Tag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tag, D::Error> {
        d.deserialize_identifier(TagVisitor)
    }
}

struct TagVisitor;

impl Visitor<'_> for TagVisitor {
    type Value = Tag;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`Inline` or `Shared`")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Tag, E> {
        match v {
            0 => Ok(Tag::Inline),
            1 => Ok(Tag::Shared),
            _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Tag, E> {
        match v {
            "Inline" => Ok(Tag::Inline),
            "Shared" => Ok(Tag::Shared),
            _ => Err(E::unknown_variant(v, VARIANTS)),
        }
    }
}

/// Bytes deserialized from a byte string (or, in formats without one, a
/// sequence of bytes).
struct ByteBuf(Vec<u8>);

impl<'de> serde::Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteBuf, D::Error> {
        d.deserialize_byte_buf(ByteBufVisitor)
    }
}

struct ByteBufVisitor;

impl<'de> Visitor<'de> for ByteBufVisitor {
    type Value = ByteBuf;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
        Ok(ByteBuf(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
        Ok(ByteBuf(v))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        Ok(ByteBuf(bytes))
    }
}

#[cfg(test)]
mod tests;
