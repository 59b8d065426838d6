//! Entry points for the fuzz targets in `fuzz/`: thin wrappers around the
//! private wire decoders. Only with the `fuzzing` feature; not public API.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::codec::{self, FrameDecoder, HEADER_LEN};
use crate::parent::connection::{read_loop, ReadEnd};
use crate::parent::lane::Lane;
use crate::protocol::{FromWorker, ToWorker};
use crate::transport::FrameReader;

/// Splits `data` into frames of at most `max_frame` bytes and decodes
/// each as a message of either direction, and its payload as a few
/// types. Returns how many frames were whole. Panics only on a broken
/// invariant (a body over the limit, or bytes counted twice).
pub fn frames(data: &[u8], max_frame: usize) -> usize {
    let max_frame = max_frame.max(1);
    let mut decoder = FrameDecoder::new(max_frame);
    let mut used = 0;
    let mut n = 0;
    while let Ok(Some(body)) = decoder.next_frame(data) {
        assert!(!body.is_empty() && body.len() <= max_frame);
        used += HEADER_LEN + body.len();
        assert!(used <= data.len());
        from_worker(body);
        to_worker(body);
        n += 1;
    }
    assert!(decoder.wanted(data) <= HEADER_LEN + max_frame);
    n
}

/// Decodes `body` as a worker → parent message, and its payload (if it
/// has one) as a `u64`, a `String` and a `Vec<u8>`. True if it decoded.
pub fn from_worker(body: &[u8]) -> bool {
    match FromWorker::decode(body) {
        Ok(FromWorker::Output { payload, .. } | FromWorker::OutputDone { payload, .. }) => {
            payloads(payload);
            true
        }
        Ok(_) => true,
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}

/// Decodes `body` as a parent → worker message, and its payload (if it
/// has one) as a few types. True if it decoded.
pub fn to_worker(body: &[u8]) -> bool {
    match ToWorker::decode(body) {
        Ok(ToWorker::Task { payload, .. } | ToWorker::Init(_, payload)) => {
            payloads(payload);
            true
        }
        Ok(_) => true,
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}

fn payloads(payload: &[u8]) {
    let _ = codec::get_serde::<u64>(payload);
    let _ = codec::get_serde::<String>(payload);
    let _ = codec::get_serde::<Vec<u8>>(payload);
    let _ = codec::get_serde::<(u32, Option<String>, bool)>(payload);
}

/// Feeds `data` to the parent's reader for a worker that holds `tasks`
/// tasks (at most 16), as if the worker had sent it, in reads of at most
/// `chunk` bytes. Returns how the reader ended: `"bye"`, `"eof"` or
/// `"broken: <why>"`.
pub fn parent_reader(data: &[u8], tasks: u8, chunk: usize, max_frame: usize) -> String {
    let lane = Arc::new(Lane::<u64>::new(0, 16, max_frame.max(1), 0));
    let generation = lane
        .open(1, None, 16, 1 << 20, None)
        .expect("a new lane opens");
    for _ in 0..tasks.min(16) {
        let _ = lane.try_push(&(), None, None);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let io = Chunks {
        data: data.to_vec(),
        at: 0,
        chunk: chunk.max(1),
    };
    let reader = FrameReader::new(Box::pin(io), max_frame.max(1));
    let mut fut = std::pin::pin!(read_loop(lane.clone(), generation, reader, tx));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let end = loop {
        if let Poll::Ready(end) = fut.as_mut().poll(&mut cx) {
            break end;
        }
    };
    while rx.try_recv().is_ok() {}
    assert!(lane.in_flight() <= 16);
    match end {
        ReadEnd::Bye => "bye".into(),
        ReadEnd::Eof => "eof".into(),
        ReadEnd::Broken(why) => format!("broken: {why}"),
    }
}

/// An in-memory stream read in pieces of at most `chunk` bytes.
struct Chunks {
    data: Vec<u8>,
    at: usize,
    chunk: usize,
}

impl tokio::io::AsyncRead for Chunks {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (self.data.len() - self.at)
            .min(self.chunk)
            .min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}
