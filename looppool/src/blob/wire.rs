//! Where blobs meet the frames that carry them: this thread's *sink*,
//! filled by `Blob::serialize` while one frame is encoded, and its
//! *inbox*, which `Blob::deserialize` takes from while one frame is
//! decoded.
//!
//! Neither is set while the common frames (no blob in them) are encoded or
//! decoded, so those pay nothing for blobs: a frame encoder that meets a
//! blob without a sink fails with [`WANT_SINK`], and its caller encodes
//! that frame again with a sink for its connection; a frame that carries
//! descriptors says so in its kind, and its reader fills the inbox first.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use super::{Blob, Sealed};

/// The serde error message of a blob met without a sink by a frame
/// encoder (the caller encodes again, with one).
pub(crate) const WANT_SINK: &str = "looppool: a blob needs a sink for its frame";

/// What `Blob::serialize` is to write for a blob.
pub(crate) enum Offer {
    /// Its bytes.
    Inline,
    /// A reference to the descriptor at this index among those its frame
    /// announces.
    Shared(u32),
    /// Nothing: putting its bytes in a memory file failed.
    Failed(std::io::Error),
    /// No sink is set: not encoding a frame, or encoding one without
    /// knowing its connection yet.
    NoSink,
}

/// Blobs collected while one frame is encoded.
struct Sink {
    /// Blobs of at least this many bytes go by descriptor; `None`: none
    /// does (the connection carries no descriptors).
    threshold: Option<usize>,
    blobs: Vec<Arc<Sealed>>,
}

thread_local! {
    static SINK: RefCell<Option<Sink>> = const { RefCell::new(None) };
    /// Set by a blob met without a sink by a frame encoder.
    static WANTED: Cell<bool> = const { Cell::new(false) };
    static INBOX: RefCell<Option<Vec<Option<Blob>>>> = const { RefCell::new(None) };
}

/// What `blob`, being serialized, is to become.
pub(crate) fn offer(blob: &Blob) -> Offer {
    SINK.with_borrow_mut(|sink| {
        let Some(sink) = sink else {
            return Offer::NoSink;
        };
        match sink.threshold {
            Some(threshold) if blob.len() >= threshold => {}
            _ => return Offer::Inline,
        }
        let Ok(index) = u32::try_from(sink.blobs.len()) else {
            return Offer::Inline;
        };
        match blob.sealed() {
            Ok(sealed) => {
                sink.blobs.push(sealed);
                Offer::Shared(index)
            }
            Err(e) => Offer::Failed(e),
        }
    })
}

/// Whether serializer `S` is looppool's frame encoder (the codec's
/// postcard serializers), as opposed to any other use of serde.
///
/// By type name, as serde offers no other way to recognise a serializer:
/// both of the codec's serializer types are named after its module path.
/// Should a compiler ever name them otherwise, blobs still arrive, inline.
pub(crate) fn is_frame_encoder<S>() -> bool {
    std::any::type_name::<S>().contains("looppool::codec::")
}

/// Notes that a blob was met without a sink by a frame encoder.
pub(crate) fn want_sink() {
    WANTED.set(true);
}

/// Whether a blob was met without a sink since the last call.
pub(crate) fn take_wanted() -> bool {
    WANTED.replace(false)
}

/// Whether a sink is set (a frame is being encoded with one).
pub(crate) fn in_sink() -> bool {
    SINK.with_borrow(Option::is_some)
}

/// Runs `encode` with a sink to which blobs of at least `threshold` bytes
/// (`None`: no blob) go, after the `preset` ones (of an encoded task sent
/// again); returns its result and the sink's blobs in index order.
pub(crate) fn with_sink<R>(
    threshold: Option<usize>,
    preset: Vec<Arc<Sealed>>,
    encode: impl FnOnce() -> R,
) -> (R, Vec<Arc<Sealed>>) {
    /// Takes the sink away again however `encode` ends (a panic in a
    /// `Serialize` impl too).
    struct Restore(Option<Sink>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SINK.with_borrow_mut(|sink| *sink = previous);
        }
    }
    let previous = SINK.replace(Some(Sink {
        threshold,
        blobs: preset,
    }));
    let restore = Restore(previous);
    let result = encode();
    let sink = SINK.replace(None);
    drop(restore);
    (result, sink.map(|s| s.blobs).unwrap_or_default())
}

/// Runs `decode` with `blobs` in the inbox, for references to them by
/// index; returns its result and how many of them it left untaken.
pub(crate) fn with_inbox<R>(blobs: Vec<Blob>, decode: impl FnOnce() -> R) -> (R, usize) {
    struct Restore(Option<Vec<Option<Blob>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            INBOX.with_borrow_mut(|inbox| *inbox = previous);
        }
    }
    let previous = INBOX.replace(Some(blobs.into_iter().map(Some).collect()));
    let restore = Restore(previous);
    let result = decode();
    let left = INBOX
        .replace(None)
        .map_or(0, |inbox| inbox.iter().filter(|b| b.is_some()).count());
    drop(restore);
    (result, left)
}

/// The announced blob at `index` of the frame being decoded.
pub(crate) fn take(index: u32) -> Result<Blob, String> {
    INBOX.with_borrow_mut(|inbox| match inbox {
        None => Err(format!(
            "a reference to shared blob {index} outside a frame that carries descriptors"
        )),
        Some(blobs) => blobs
            .get_mut(index as usize)
            .and_then(Option::take)
            .ok_or_else(|| {
                format!(
                    "a reference to shared blob {index}, which its frame does not announce \
                     (or names twice)"
                )
            }),
    })
}
