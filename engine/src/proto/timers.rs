//! The shard's deadlines: a min-heap of (deadline, slot, generation). Each live connection is
//! registered for its earliest deadline; entries made stale by an earlier registration or by
//! the connection's end are skipped when they come up (lazy deletion), so there is no scan of
//! every connection, ever.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Pending deadlines.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    // Entries: (deadline ms, slot, generation).
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
}

impl Deadlines {
    /// Registers `slot` (of `generation`) for `at` (monotonic ms).
    pub(crate) fn push(&mut self, at: u64, slot: u32, generation: u32) {
        self.heap.push(Reverse((at, slot, generation)));
    }

    /// The earliest registered deadline.
    pub(crate) fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The next entry due at `now`: (deadline, slot, generation).
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<(u64, u32, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Entries held (stale ones included).
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Drops the entries `valid` rejects and gives back the memory they took. The shard calls
    /// it when stale entries outnumber live connections (connections that came and went
    /// leave theirs behind until due), so the heap stays within a small multiple of the live
    /// connections whatever the churn.
    pub(crate) fn compact(&mut self, mut valid: impl FnMut(u64, u32, u32) -> bool) {
        let entries = std::mem::take(&mut self.heap).into_vec();
        let mut kept: Vec<_> = entries
            .into_iter()
            .filter(|Reverse((at, slot, generation))| valid(*at, *slot, *generation))
            .collect();
        kept.shrink_to_fit();
        self.heap = BinaryHeap::from(kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_keeps_the_valid_entries_in_order() {
        let mut d = Deadlines::default();
        for i in 0..10_000u32 {
            d.push(u64::from(i % 97), i, 1);
        }
        d.compact(|_, slot, _| slot % 10 == 0);
        assert_eq!(d.len(), 1_000);
        let mut last = 0;
        while let Some((at, slot, _)) = d.pop_due(u64::MAX) {
            assert!(at >= last && slot % 10 == 0);
            last = at;
        }
    }
}
