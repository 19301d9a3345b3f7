//! The shard's deadlines: a min-heap of (deadline, slot, generation). Each live connection is
//! registered for its earliest deadline; entries made stale by an earlier registration or by
//! the connection's end are skipped when they come up (lazy deletion), so there is no scan of
//! every connection, ever.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Pending deadlines.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
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
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}
