//! The output batches a worker's reader fills and the consumer empties,
//! kept and refilled rather than allocated per read.
//!
//! A read of 64 KiB holds thousands of small outputs. Allocated afresh per
//! read, such a batch was a large allocation that glibc served from `mmap`
//! or a growing heap and took back as the consumer finished it: RSS moved by
//! megabytes, with many page faults per second. Kept and refilled, a batch
//! sized by the read it first held touched more of its pages each time a
//! larger read came along, and the parent's RSS crept up over a long stream.
//! So every batch has the same small capacity, a read fills as many as it
//! needs, and a lane keeps enough of them for a few reads: each batch is
//! filled whole soon after it is made, and a burst beyond the spares costs
//! one more batch.

use std::sync::Mutex;

use crate::output::Output;

/// Batches a lane keeps.
const SPARE_BATCHES: usize = 16;
/// The size of a batch's items together.
const BATCH_BYTES: usize = 64 * 1024;

/// Emptied batches of one worker index, kept for its reader.
#[derive(Debug)]
pub(crate) struct SpareBatches<O> {
    spare: Mutex<Vec<Vec<Output<O>>>>,
}

impl<O> Default for SpareBatches<O> {
    fn default() -> Self {
        SpareBatches {
            spare: Mutex::new(Vec::new()),
        }
    }
}

impl<O> SpareBatches<O> {
    /// Items per output batch: 64 KiB of them (at least 16).
    pub(crate) const fn batch_items() -> usize {
        // An item is never zero-sized: it holds at least its worker's index.
        let n = BATCH_BYTES / std::mem::size_of::<Output<O>>();
        if n < 16 {
            16
        } else {
            n
        }
    }

    /// An empty batch to fill: a kept one if there is one.
    pub(crate) fn empty(&self) -> Vec<Output<O>> {
        let kept = crate::sync::lock(&self.spare).pop();
        kept.unwrap_or_else(|| Vec::with_capacity(Self::batch_items()))
    }

    /// Keeps an emptied batch (a few, all of the one size).
    pub(crate) fn keep(&self, mut batch: Vec<Output<O>>) {
        batch.clear();
        if batch.capacity() != Self::batch_items() {
            return;
        }
        let mut spare = crate::sync::lock(&self.spare);
        if spare.len() < SPARE_BATCHES {
            spare.push(batch);
        }
    }
}
