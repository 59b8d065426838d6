//! The parent's intake of a worker's output messages: each one checked,
//! put in the worker's order, handed on once, and each of its frames
//! applied only to the task it names.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_nats::HeaderMap;
use bytes::{Bytes, BytesMut};
use looppool::transport::frame::{self, Role};

use crate::counters::{Drop, DropCounts};
use crate::names::{self, header_u64};
use crate::relay::ids;
use crate::sync::lock;

/// Output messages held at most per worker while an earlier one is missing:
/// far more than a worker has in flight (its output credits and task bound
/// limit that), so only forged or runaway sequence numbers reach it.
pub(crate) const MAX_EARLY: usize = 4096;

/// Bytes of such messages held at most per worker.
pub(crate) const MAX_EARLY_BYTES: usize = 64 << 20;

/// The task message number the parent sent into each slot of one worker
/// incarnation and not yet saw completed.
#[derive(Debug, Default)]
pub(crate) struct Inflight(Mutex<HashMap<u32, u64>>);

impl Inflight {
    /// The pool sent task message `k` into `slot`.
    pub(crate) fn sent(&self, slot: u32, k: u64) {
        lock(&self.0).insert(slot, k);
    }
}

/// One output message, checked.
struct Checked {
    payload: Bytes,
    tags: HashMap<u32, u64>,
    exit: Option<i32>,
}

/// What became of one output message.
pub(crate) enum Taken {
    /// Dropped, or held until the messages before it arrive.
    Nothing,
    /// Frames to hand to the pool, in order; then whether the worker exited
    /// (its code).
    Frames(BytesMut, Option<i32>),
}

/// The parent's state for one worker incarnation's output messages.
pub(crate) struct Intake<'a> {
    pub(crate) incarnation: u64,
    pub(crate) worker: usize,
    pub(crate) pool: &'a str,
    pub(crate) drops: &'a DropCounts,
    pub(crate) inflight: &'a Inflight,
    /// The next sequence number due (shared with the stall watch).
    pub(crate) next: &'a AtomicU64,
    early: BTreeMap<u64, Checked>,
    early_bytes: usize,
}

impl<'a> Intake<'a> {
    pub(crate) fn new(
        incarnation: u64,
        worker: usize,
        pool: &'a str,
        drops: &'a DropCounts,
        inflight: &'a Inflight,
        next: &'a AtomicU64,
    ) -> Self {
        next.store(1, Ordering::Relaxed);
        Intake {
            incarnation,
            worker,
            pool,
            drops,
            inflight,
            next,
            early: BTreeMap::new(),
            early_bytes: 0,
        }
    }

    fn drop(&self, why: Drop, n: u64) {
        self.drops.add(why, n, self.pool, self.worker);
    }

    /// Takes one message off the broker: what is now due for the pool.
    pub(crate) fn take(&mut self, headers: Option<&HeaderMap>, payload: Bytes) -> Taken {
        let theirs = header_u64(headers, names::INCARNATION);
        let seq = header_u64(headers, names::SEQUENCE);
        let (Some(theirs), Some(seq)) = (theirs, seq) else {
            self.drop(Drop::Malformed, 1);
            return Taken::Nothing;
        };
        if theirs != self.incarnation {
            // Another life's leftover, resurrected by a broker restart.
            self.drop(Drop::Stale, 1);
            return Taken::Nothing;
        }
        let next = self.next.load(Ordering::Relaxed);
        if seq < next || self.early.contains_key(&seq) {
            self.drop(Drop::Duplicate, 1);
            return Taken::Nothing;
        }
        let Some(checked) = check(headers, payload) else {
            self.drop(Drop::Malformed, 1);
            return Taken::Nothing;
        };
        let ahead = seq - next;
        if ahead as usize >= MAX_EARLY || self.early_bytes + checked.payload.len() > MAX_EARLY_BYTES
        {
            self.drop(Drop::Overflow, 1);
            return Taken::Nothing;
        }
        self.early_bytes += checked.payload.len();
        self.early.insert(seq, checked);
        self.due()
    }

    /// The frames of the messages now in order, each applied to its task.
    fn due(&mut self) -> Taken {
        let mut next = self.next.load(Ordering::Relaxed);
        let mut out = BytesMut::new();
        let mut exited = None;
        while let Some(m) = self.early.remove(&next) {
            next += 1;
            self.early_bytes -= m.payload.len();
            self.apply(&m, &mut out);
            if let Some(code) = m.exit {
                exited = Some(code);
                break;
            }
        }
        self.next.store(next, Ordering::Relaxed);
        if out.is_empty() && exited.is_none() {
            Taken::Nothing
        } else {
            Taken::Frames(out, exited)
        }
    }

    /// Appends the frames of `m` that belong to the tasks they name (or to
    /// no task) to `out`.
    fn apply(&self, m: &Checked, out: &mut BytesMut) {
        let mut stale = 0;
        let mut inflight = lock(&self.inflight.0);
        let mut rest = &m.payload[..];
        while let Some(len) = frame::frame_len(rest) {
            let (f, tail) = rest.split_at(len);
            rest = tail;
            let (slot, completes) = match frame::role(f) {
                Ok(Role::Emits(slot)) => (Some(slot), false),
                Ok(Role::Completes(slot)) => (Some(slot), true),
                _ => (None, false),
            };
            if let Some(slot) = slot {
                let claimed = m.tags.get(&slot);
                if claimed.is_none() || claimed != inflight.get(&slot) {
                    // A task the pool no longer holds in this slot: a
                    // copy run again after a broker restart, or another
                    // life's. Applied, it would end the slot's new task.
                    stale += 1;
                    continue;
                }
                if completes {
                    inflight.remove(&slot);
                }
            }
            out.extend_from_slice(f);
        }
        drop(inflight);
        self.drop(Drop::Stale, stale);
    }
}

/// An output message's payload and tags, if it is the pool's making: whole
/// frames, each one a worker may send, and readable tags.
fn check(headers: Option<&HeaderMap>, payload: Bytes) -> Option<Checked> {
    let tags = match headers.and_then(|h| h.get(names::TAGS)) {
        Some(v) => ids::decode_tags(v.as_str())?,
        None => HashMap::new(),
    };
    let exit = match headers.and_then(|h| h.get(names::EXIT)) {
        Some(v) => Some(v.as_str().parse().ok()?),
        None => None,
    };
    let mut rest = &payload[..];
    while !rest.is_empty() {
        let len = frame::frame_len(rest)?;
        match frame::role(&rest[..len]) {
            Ok(Role::Emits(_) | Role::Completes(_) | Role::Bye | Role::Other) => {}
            // Parent-to-worker frames, or unreadable ones.
            _ => return None,
        }
        rest = &rest[len..];
    }
    Some(Checked {
        payload,
        tags,
        exit,
    })
}
