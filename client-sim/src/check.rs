//! Per-client delivery checks: per-topic order, gaps, duplicates, conflation, resets.
//! Sans-IO: fed with the sequence numbers a client sees.

/// What one client saw on one topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicCheck {
    /// Last sequence number seen (0: none yet).
    pub last: u64,
    /// Updates received.
    pub received: u64,
    /// Updates skipped on a conflating subscription (legal).
    pub conflated: u64,
    /// Updates missing on a non-conflating subscription (a loss).
    pub gaps: u64,
    /// Sequence numbers seen twice or out of order.
    pub duplicates: u64,
    /// RESET snapshots received.
    pub resets: u64,
}

/// Counters summed over clients and topics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Updates received.
    pub received: u64,
    /// Legal skips.
    pub conflated: u64,
    /// Losses.
    pub gaps: u64,
    /// Duplicates / reorders.
    pub duplicates: u64,
    /// RESET snapshots.
    pub resets: u64,
}

impl Totals {
    /// Adds one topic's counters.
    pub fn add(&mut self, t: &TopicCheck) {
        self.received += t.received;
        self.conflated += t.conflated;
        self.gaps += t.gaps;
        self.duplicates += t.duplicates;
        self.resets += t.resets;
    }
    /// Adds another total.
    pub fn merge(&mut self, o: &Totals) {
        self.received += o.received;
        self.conflated += o.conflated;
        self.gaps += o.gaps;
        self.duplicates += o.duplicates;
        self.resets += o.resets;
    }
}

impl TopicCheck {
    /// Accounts update `seq`. `conflating`: gaps are legal skips. `snapshot`: a snapshot may
    /// jump anywhere forward. `reset`: state replaced, numbering restarts from `seq`.
    pub fn see(&mut self, seq: u64, conflating: bool, snapshot: bool, reset: bool) {
        self.received += 1;
        if reset {
            self.resets += 1;
            self.last = seq;
            return;
        }
        if self.last != 0 && seq <= self.last {
            self.duplicates += 1;
            return;
        }
        if self.last != 0 && seq > self.last + 1 && !snapshot {
            let missing = seq - self.last - 1;
            if conflating {
                self.conflated += missing;
            } else {
                self.gaps += missing;
            }
        }
        self.last = seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting() {
        let mut t = TopicCheck::default();
        for s in [1, 2, 3] {
            t.see(s, false, false, false);
        }
        t.see(6, false, false, false); // loss of 4, 5
        t.see(6, false, false, false); // duplicate
        t.see(5, false, false, false); // reorder
        assert_eq!((t.gaps, t.duplicates, t.last), (2, 2, 6));
        t.see(9, true, false, false); // conflated skip of 7, 8
        assert_eq!(t.conflated, 2);
        t.see(20, false, true, false); // snapshot jump: neither
        assert_eq!((t.gaps, t.conflated), (2, 2));
        t.see(3, false, true, true); // reset: numbering restarts
        t.see(4, false, false, false);
        assert_eq!((t.resets, t.duplicates, t.last, t.received), (1, 2, 4, 10));
    }
}
