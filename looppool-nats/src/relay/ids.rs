//! Task identities on the broker: which task message a worker has seen, and
//! which task each output message speaks for.
//!
//! The parent numbers the messages it sends one worker incarnation (init,
//! tasks, stop) 1, 2, 3, ...: with the incarnation, that number names one
//! task message in the whole pool, whatever the broker does with it. A
//! worker runs each number once, and tags every output message with the
//! number of each task whose frames it carries; the parent applies a frame
//! only to the task it names.

use std::collections::{BTreeSet, HashMap};

/// Numbers above the contiguous floor remembered at most: far more than a
/// worker's subject can hold (the broker bounds it), so that only a message
/// the broker lost for good, never delivered, is forgotten.
const SPARSE_LIMIT: usize = 65_536;

/// The task-message numbers a worker incarnation has received: every number
/// up to `floor`, and those in `above`.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    floor: u64,
    above: BTreeSet<u64>,
}

impl Seen {
    /// Every number up to this one was received.
    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    /// Records `k`; false when it was already recorded.
    pub(crate) fn insert(&mut self, k: u64) -> bool {
        if k <= self.floor || !self.above.insert(k) {
            return false;
        }
        while self.above.remove(&(self.floor + 1)) {
            self.floor += 1;
        }
        if self.above.len() > SPARSE_LIMIT {
            // A gap this old will not be filled: give it up.
            if let Some(first) = self.above.pop_first() {
                self.floor = first;
            }
            while self.above.remove(&(self.floor + 1)) {
                self.floor += 1;
            }
        }
        true
    }
}

/// Header value naming the task message of each slot an output message
/// speaks for: `slot:number` pairs separated by commas.
pub(crate) fn encode_tags(tags: &HashMap<u32, u64>) -> String {
    let mut s = String::with_capacity(tags.len() * 12);
    for (slot, k) in tags {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(&slot.to_string());
        s.push(':');
        s.push_str(&k.to_string());
    }
    s
}

/// The pairs of [`encode_tags`], or `None` when `value` is not its output.
pub(crate) fn decode_tags(value: &str) -> Option<HashMap<u32, u64>> {
    if value.is_empty() {
        return Some(HashMap::new());
    }
    value
        .split(',')
        .map(|pair| {
            let (slot, k) = pair.split_once(':')?;
            Some((slot.parse().ok()?, k.parse().ok()?))
        })
        .collect()
}

/// Bytes a tag adds to a message's headers at most (two numbers, `:` and `,`).
pub(crate) const TAG_BYTES: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_number_is_seen_once_in_any_order() {
        let mut seen = Seen::default();
        assert!(seen.insert(2));
        assert!(seen.insert(1));
        assert!(!seen.insert(2));
        assert!(!seen.insert(1));
        assert!(seen.insert(5));
        assert!(seen.insert(3));
        assert!(!seen.insert(5));
        assert_eq!(seen.floor, 3);
        assert!(seen.insert(4));
        assert_eq!((seen.floor, seen.above.len()), (5, 0));
    }

    #[test]
    fn a_gap_never_filled_is_given_up_within_the_bound() {
        let mut seen = Seen::default();
        for k in 2..(SPARSE_LIMIT as u64 + 10) {
            assert!(seen.insert(k));
        }
        assert!(seen.above.len() <= SPARSE_LIMIT);
        assert!(!seen.insert(1), "the given-up gap counts as seen");
    }

    #[test]
    fn tags_survive_their_header_form() {
        let tags: HashMap<u32, u64> = [(0, 7), (12, 99_999)].into();
        assert_eq!(decode_tags(&encode_tags(&tags)), Some(tags));
        assert_eq!(decode_tags(""), Some(HashMap::new()));
        for bad in ["x", "1:", ":2", "1:2,", "1;2", "-1:2"] {
            assert_eq!(decode_tags(bad), None, "{bad:?}");
        }
    }
}
