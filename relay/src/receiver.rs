//! Relay side, sans-IO: puts the origin's datagrams back in order, finds gaps, decides when to
//! NAK and when to give up and resynchronise from a snapshot.
//!
//! The driver feeds it datagram headers (with the datagram, in whatever form it wants it back:
//! the driver parses each once), the time, and the end of a snapshot; it answers with
//! [`Action`]s. Datagrams reach the engine strictly in sequence
//! order, each exactly once; everything that cannot be recovered ends in a snapshot, whose
//! updates the registry applies as SNAPSHOT|RESET where continuity broke.

use std::collections::BTreeMap;

use yorker_wire::feed::{FeedHeader, Kind};

/// Holes one NAK round asks for at most.
const MAX_HOLES_PER_ROUND: usize = 64;

/// Settings of the receiver.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// The channel to follow; others on the group are ignored.
    pub channel: u16,
    /// Longest random wait before a NAK (NAKs of other relays, or their retransmits, may fill
    /// the gap meanwhile: this is what keeps many relays from NAKing the same loss at once).
    pub nak_delay_ms: u64,
    /// Wait for a retransmit before asking again.
    pub nak_retry_ms: u64,
    /// NAKs for one gap before falling back to a snapshot.
    pub nak_attempts: u32,
    /// Datagrams held out of order (or during a snapshot) before falling back to a snapshot.
    pub max_pending: usize,
    /// Most datagrams one NAK asks for.
    pub max_nak_range: u16,
    /// The feed is silent after this long without any datagram of the channel (data or
    /// heartbeat), ms: the origin is gone or unreachable.
    pub silence_ms: u64,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            channel: 0,
            nak_delay_ms: 10,
            nak_retry_ms: 50,
            nak_attempts: 3,
            max_pending: 8192,
            max_nak_range: 1024,
            silence_ms: 2_000,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<D> {
    /// Apply this DATA datagram's messages now (in this order).
    Deliver(D),
    /// Send a NAK to the origin for `count` datagrams from `seq`.
    Nak {
        /// Epoch of the missing datagrams.
        epoch: u64,
        /// First missing number.
        seq: u64,
        /// How many.
        count: u16,
    },
    /// Fetch a snapshot of every topic over TCP, then call [`Receiver::snapshot_done`].
    Snapshot(SnapshotReason),
}

/// Why a snapshot is needed (counted separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotReason {
    /// The relay just started.
    Start,
    /// The origin's epoch changed (it restarted).
    Epoch,
    /// The origin no longer holds the missing datagrams.
    Unavailable,
    /// NAKs went unanswered.
    NakTimeout,
    /// Too many datagrams held while waiting.
    Overrun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A snapshot is being fetched; datagrams are held.
    Snapshotting,
    /// In sequence; `next` is the first number not yet delivered.
    Live,
}

/// Counters of one receiver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Gaps found (a datagram or heartbeat showed numbers missing).
    pub gaps: u64,
    /// NAKs sent.
    pub naks: u64,
    /// Missing datagrams that arrived later (retransmitted or reordered).
    pub recovered: u64,
    /// Datagrams dropped as already delivered or covered by a snapshot.
    pub duplicates: u64,
    /// Snapshots started.
    pub snapshots: u64,
    /// Datagrams of another channel, or of an old epoch.
    pub ignored: u64,
}

/// The relay's view of one origin channel.
#[derive(Debug)]
pub struct Receiver<D> {
    cfg: ReceiverConfig,
    state: State,
    /// The epoch being followed (None before the first snapshot).
    epoch: Option<u64>,
    /// An epoch seen on the wire that the running snapshot must bring us to.
    newest_epoch: Option<u64>,
    /// The epoch followed before the origin restarted: its late datagrams are ignored.
    left_epoch: Option<u64>,
    next: u64,
    pending: BTreeMap<u64, D>,
    /// Highest number known to exist (from DATA or HEARTBEAT).
    highest: u64,
    nak_due_ms: Option<u64>,
    /// NAK rounds sent while `next` stayed at `nak_for`: progress resets the count.
    nak_attempts: u32,
    nak_for: u64,
    rng: u64,
    stats: ReceiverStats,
    /// When a datagram of the channel last arrived (`now_ms` of the driver; 0 at start).
    heard_ms: u64,
}

impl<D> Receiver<D> {
    /// A receiver that starts with a snapshot (the first action to take is returned too).
    pub fn new(cfg: ReceiverConfig, seed: u64) -> (Self, Action<D>) {
        let mut r = Receiver {
            cfg,
            state: State::Snapshotting,
            epoch: None,
            newest_epoch: None,
            left_epoch: None,
            next: 1,
            pending: BTreeMap::new(),
            highest: 0,
            nak_due_ms: None,
            nak_attempts: 0,
            nak_for: 0,
            rng: seed | 1,
            stats: ReceiverStats::default(),
            heard_ms: 0,
        };
        r.stats.snapshots += 1;
        (r, Action::Snapshot(SnapshotReason::Start))
    }

    /// Counters.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// The epoch followed.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// True while a snapshot is awaited.
    pub fn is_snapshotting(&self) -> bool {
        self.state == State::Snapshotting
    }

    /// True while a NAK is scheduled (the driver should call `on_tick` soon).
    pub fn has_timer(&self) -> bool {
        self.nak_due_ms.is_some()
    }

    /// Datagrams held.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing of the channel (not even a heartbeat) arrived for `silence_ms`: the
    /// origin is gone or cannot be heard. The driver's clock starts at 0 with the receiver.
    pub fn is_silent(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.heard_ms) >= self.cfg.silence_ms
    }

    fn rand_below(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }

    fn start_snapshot(&mut self, reason: SnapshotReason, out: &mut Vec<Action<D>>) {
        if self.state == State::Snapshotting {
            return; // the running one will do; what it misses is NAKed afterwards
        }
        self.state = State::Snapshotting;
        self.nak_due_ms = None;
        self.nak_attempts = 0;
        self.stats.snapshots += 1;
        out.push(Action::Snapshot(reason));
    }

    /// A datagram from the group (DATA, HEARTBEAT or UNAVAILABLE; others are ignored). `d` is
    /// kept, and handed back in [`Action::Deliver`], only for DATA.
    pub fn on_datagram(&mut self, h: &FeedHeader, d: D, now_ms: u64, out: &mut Vec<Action<D>>) {
        if h.channel != self.cfg.channel || matches!(h.kind, Kind::Nak) {
            self.stats.ignored += 1;
            return;
        }
        self.heard_ms = self.heard_ms.max(now_ms);
        let following = self.newest_epoch.or(self.epoch);
        if following != Some(h.epoch) {
            if self.left_epoch == Some(h.epoch) {
                self.stats.ignored += 1; // a straggler of the epoch we left
                return;
            }
            // The origin restarted (or this is the first epoch we hear of): what is held
            // belongs to another epoch, and a snapshot of the new one is needed.
            if self.epoch.is_some() && self.newest_epoch.is_none() {
                self.left_epoch = self.epoch;
            }
            self.newest_epoch = Some(h.epoch);
            self.pending.clear();
            self.highest = 0;
            self.start_snapshot(SnapshotReason::Epoch, out);
        }
        self.hold(h, d, out);
        if self.state == State::Live {
            self.advance(now_ms, out);
        }
    }

    /// Records what a datagram says about the sequence, keeping DATA until it can be delivered.
    fn hold(&mut self, h: &FeedHeader, d: D, out: &mut Vec<Action<D>>) {
        match h.kind {
            Kind::Data => {
                if self.state == State::Live && h.seq < self.next {
                    self.stats.duplicates += 1;
                    return;
                }
                if h.seq < self.highest && !self.pending.contains_key(&h.seq) {
                    self.stats.recovered += 1; // it fills a hole
                }
                self.highest = self.highest.max(h.seq);
                if self.pending.insert(h.seq, d).is_some() {
                    self.stats.duplicates += 1;
                }
                if self.pending.len() > self.cfg.max_pending {
                    // Too far behind to catch up by NAKs: resynchronise; what is held stays,
                    // the snapshot decides what of it is still new.
                    while self.pending.len() > self.cfg.max_pending {
                        self.pending.pop_first();
                    }
                    self.start_snapshot(SnapshotReason::Overrun, out);
                }
            }
            Kind::Heartbeat => self.highest = self.highest.max(h.seq),
            Kind::Unavailable => {
                let end = h.seq.saturating_add(h.count as u64);
                if self.state == State::Live && h.seq <= self.next && self.next < end {
                    self.start_snapshot(SnapshotReason::Unavailable, out);
                }
            }
            Kind::Nak => {}
        }
    }

    /// Delivers what is in order and schedules a NAK for what is missing.
    fn advance(&mut self, now_ms: u64, out: &mut Vec<Action<D>>) {
        while let Some(d) = self.pending.remove(&self.next) {
            out.push(Action::Deliver(d));
            self.next += 1;
        }
        // Anything left in `pending` sits beyond a hole.
        while let Some((&s, _)) = self.pending.first_key_value() {
            if s >= self.next {
                break;
            }
            self.pending.pop_first();
        }
        let missing = self.highest >= self.next;
        if !missing {
            self.nak_due_ms = None;
            self.nak_attempts = 0;
        } else if self.nak_due_ms.is_none() {
            self.stats.gaps += 1;
            let delay = self.rand_below(self.cfg.nak_delay_ms + 1);
            self.nak_due_ms = Some(now_ms + delay);
        }
        self.on_tick(now_ms, out);
    }

    /// Time passed: send a due NAK, or give up on the gap.
    pub fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Action<D>>) {
        let Some(due) = self.nak_due_ms else { return };
        if self.state != State::Live || now_ms < due {
            return;
        }
        if self.nak_for != self.next {
            // The oldest hole moved: the earlier NAKs worked, count afresh.
            self.nak_for = self.next;
            self.nak_attempts = 0;
        }
        if self.nak_attempts >= self.cfg.nak_attempts {
            return self.start_snapshot(SnapshotReason::NakTimeout, out);
        }
        self.nak_attempts += 1;
        self.nak_due_ms = Some(now_ms + self.cfg.nak_retry_ms);
        // One NAK per hole between `next` and the highest known number (a bounded number of
        // them: at worst the rest waits for the next round).
        let epoch = self.epoch.unwrap_or(0);
        let mut from = self.next;
        let mut holes = 0;
        while from <= self.highest && holes < MAX_HOLES_PER_ROUND {
            let end = self
                .pending
                .range(from..)
                .next()
                .map(|(&s, _)| s)
                .unwrap_or(self.highest + 1);
            if end > from {
                let count = (end - from).min(self.cfg.max_nak_range as u64) as u16;
                self.stats.naks += 1;
                holes += 1;
                out.push(Action::Nak {
                    epoch,
                    seq: from,
                    count,
                });
            }
            // Skip the run of held datagrams that follows the hole.
            from = end;
            while self.pending.contains_key(&from) {
                from += 1;
            }
        }
    }

    /// The snapshot finished: it covered every update of `epoch` in datagrams up to
    /// `feed_seq` (what the origin had sent when it took the snapshot). Held datagrams beyond
    /// it are delivered (the registry drops updates the snapshot already had); missing ones
    /// are NAKed.
    pub fn snapshot_done(
        &mut self,
        epoch: u64,
        feed_seq: u64,
        now_ms: u64,
        out: &mut Vec<Action<D>>,
    ) {
        if self.newest_epoch.is_some_and(|e| e != epoch) {
            // What is held belongs to another epoch than the snapshot's; if that one is the
            // origin's current epoch, its next datagram starts another snapshot.
            self.pending.clear();
            self.highest = 0;
        }
        if self.epoch != Some(epoch) {
            self.next = 1;
            self.highest = 0;
        }
        self.epoch = Some(epoch);
        self.newest_epoch = None;
        self.state = State::Live;
        self.next = self.next.max(feed_seq + 1);
        let held = self.pending.last_key_value().map(|(&s, _)| s).unwrap_or(0);
        self.highest = self.highest.max(feed_seq).max(held);
        let covered: Vec<u64> = self.pending.range(..self.next).map(|(&s, _)| s).collect();
        for s in covered {
            self.pending.remove(&s);
            self.stats.duplicates += 1;
        }
        self.nak_due_ms = None;
        self.nak_attempts = 0;
        self.advance(now_ms, out);
    }

    /// The snapshot failed (origin unreachable): try again later from a clean state.
    pub fn snapshot_failed(&mut self, out: &mut Vec<Action<D>>) {
        self.state = State::Live;
        let reason = if self.epoch.is_none() {
            SnapshotReason::Start
        } else {
            SnapshotReason::NakTimeout
        };
        self.start_snapshot(reason, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn h(kind: Kind, epoch: u64, seq: u64) -> FeedHeader {
        FeedHeader {
            kind,
            flags: 0,
            channel: 0,
            epoch,
            seq,
            send_time_us: 0,
            count: 1,
        }
    }

    fn data(n: u64) -> Bytes {
        Bytes::from(n.to_be_bytes().to_vec())
    }

    fn delivered(out: &[Action<Bytes>]) -> Vec<u64> {
        out.iter()
            .filter_map(|a| match a {
                Action::Deliver(d) => Some(u64::from_be_bytes(d[..8].try_into().unwrap())),
                _ => None,
            })
            .collect()
    }

    /// The NAK a test expects (epoch 5).
    fn nak(seq: u64, count: u16) -> Action<Bytes> {
        Action::Nak {
            epoch: 5,
            seq,
            count,
        }
    }

    fn live(feed_seq: u64) -> Receiver<Bytes> {
        let (mut r, first) = Receiver::new(ReceiverConfig::default(), 7);
        assert_eq!(first, Action::Snapshot(SnapshotReason::Start));
        let mut out = Vec::new();
        r.snapshot_done(5, feed_seq, 0, &mut out);
        assert!(out.is_empty());
        r
    }

    #[test]
    fn in_order_delivery_and_duplicates() {
        let mut r = live(0);
        let mut out = Vec::new();
        for s in [1, 2, 2, 3] {
            r.on_datagram(&h(Kind::Data, 5, s), data(s), 0, &mut out);
        }
        assert_eq!(delivered(&out), vec![1, 2, 3]);
        assert_eq!(r.stats().duplicates, 1);
    }

    #[test]
    fn gap_is_naked_after_a_random_delay_and_recovered() {
        let mut r = live(0);
        let mut out = Vec::new();
        r.on_datagram(&h(Kind::Data, 5, 1), data(1), 0, &mut out);
        r.on_datagram(&h(Kind::Data, 5, 4), data(4), 0, &mut out);
        assert_eq!(delivered(&out), vec![1]);
        assert_eq!(r.stats().gaps, 1);
        out.clear();
        r.on_tick(11, &mut out); // past the longest delay
        assert_eq!(out, vec![nak(2, 2)]);
        out.clear();
        r.on_datagram(&h(Kind::Data, 5, 3), data(3), 12, &mut out);
        assert!(delivered(&out).is_empty());
        r.on_datagram(&h(Kind::Data, 5, 2), data(2), 12, &mut out);
        assert_eq!(delivered(&out), vec![2, 3, 4]);
        out.clear();
        r.on_tick(1000, &mut out);
        assert!(out.is_empty(), "gap closed: no more NAKs");
        assert_eq!(r.stats().recovered, 2);
    }

    #[test]
    fn a_feed_without_datagrams_is_silent() {
        let cfg = ReceiverConfig {
            silence_ms: 500,
            ..ReceiverConfig::default()
        };
        let (mut r, _) = Receiver::<()>::new(cfg, 1);
        assert!(!r.is_silent(499));
        assert!(r.is_silent(500), "nothing heard since the start");
        let mut out = Vec::new();
        let hb = FeedHeader {
            kind: Kind::Heartbeat,
            flags: 0,
            channel: 0,
            epoch: 7,
            seq: 0,
            send_time_us: 0,
            count: 0,
        };
        r.on_datagram(&hb, (), 600, &mut out);
        assert!(!r.is_silent(1_099));
        assert!(r.is_silent(1_100));
        // Another channel's datagrams do not count.
        r.on_datagram(&FeedHeader { channel: 3, ..hb }, (), 1_200, &mut out);
        assert!(r.is_silent(1_200));
    }

    #[test]
    fn tail_loss_seen_by_heartbeat() {
        let mut r = live(0);
        let mut out = Vec::new();
        r.on_datagram(&h(Kind::Data, 5, 1), data(1), 0, &mut out);
        r.on_datagram(&h(Kind::Heartbeat, 5, 3), Bytes::new(), 0, &mut out);
        out.clear();
        r.on_tick(20, &mut out);
        assert_eq!(out, vec![nak(2, 2)]);
    }

    #[test]
    fn unanswered_naks_fall_back_to_a_snapshot_that_covers_held_datagrams() {
        let mut r = live(0);
        let mut out = Vec::new();
        r.on_datagram(&h(Kind::Data, 5, 1), data(1), 0, &mut out);
        r.on_datagram(&h(Kind::Data, 5, 3), data(3), 0, &mut out);
        r.on_datagram(&h(Kind::Data, 5, 5), data(5), 0, &mut out);
        let mut t = 0;
        while !r.is_snapshotting() {
            t += 10;
            r.on_tick(t, &mut out);
            assert!(t < 10_000);
        }
        let naks = out
            .iter()
            .filter(|a| matches!(a, Action::Nak { .. }))
            .count();
        assert_eq!(naks, 6, "two holes (2 and 4), three rounds");
        assert_eq!(
            out.last(),
            Some(&Action::Snapshot(SnapshotReason::NakTimeout))
        );
        // More arrives while the snapshot runs: held.
        out.clear();
        r.on_datagram(&h(Kind::Data, 5, 6), data(6), t, &mut out);
        r.on_datagram(&h(Kind::Data, 5, 8), data(8), t, &mut out);
        assert!(delivered(&out).is_empty());
        // The snapshot covered up to 3: 4 is still missing, 5 and 6 follow it.
        r.snapshot_done(5, 3, t, &mut out);
        assert!(delivered(&out).is_empty());
        r.on_datagram(&h(Kind::Data, 5, 4), data(4), t, &mut out);
        assert_eq!(delivered(&out), vec![4, 5, 6]);
        // Covered up to 7 instead: 8 follows directly.
        r.snapshot_done(5, 7, t, &mut out);
        assert_eq!(delivered(&out), vec![4, 5, 6, 8]);
    }

    #[test]
    fn unavailable_and_epoch_change_trigger_snapshots() {
        let mut r = live(10);
        let mut out = Vec::new();
        r.on_datagram(&h(Kind::Data, 5, 12), data(12), 0, &mut out);
        let mut u = h(Kind::Unavailable, 5, 11);
        u.count = 1;
        r.on_datagram(&u, Bytes::new(), 0, &mut out);
        assert_eq!(out, vec![Action::Snapshot(SnapshotReason::Unavailable)]);
        out.clear();
        r.snapshot_done(5, 12, 1, &mut out);
        assert!(delivered(&out).is_empty());
        // The origin restarts: epoch 6 numbers from 1.
        r.on_datagram(&h(Kind::Data, 6, 1), data(1), 2, &mut out);
        assert_eq!(out, vec![Action::Snapshot(SnapshotReason::Epoch)]);
        out.clear();
        r.on_datagram(&h(Kind::Data, 5, 13), data(13), 2, &mut out); // stale epoch: ignored
        r.on_datagram(&h(Kind::Data, 6, 2), data(2), 2, &mut out);
        r.snapshot_done(6, 0, 3, &mut out);
        assert_eq!(delivered(&out), vec![1, 2]);
        assert_eq!(r.epoch(), Some(6));
    }

    #[test]
    fn memory_is_bounded() {
        let cfg = ReceiverConfig {
            max_pending: 16,
            ..ReceiverConfig::default()
        };
        let (mut r, _) = Receiver::new(cfg, 1);
        let mut out = Vec::new();
        r.snapshot_done(1, 0, 0, &mut out);
        for s in 2..100 {
            r.on_datagram(&h(Kind::Data, 1, s), data(s), 0, &mut out);
            assert!(r.pending() <= 16);
        }
        assert!(out.contains(&Action::Snapshot(SnapshotReason::Overrun)));
    }
}

/// Property: over any pattern of loss, reordering and duplication, with NAKs answered (and
/// the answers lost too, sometimes) and snapshots when asked for, the engine gets every
/// datagram at most once, in increasing order, and every number is either delivered or
/// covered by a snapshot.
#[cfg(test)]
mod props {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn h(seq: u64, kind: Kind) -> FeedHeader {
        FeedHeader {
            kind,
            flags: 0,
            channel: 0,
            epoch: 1,
            seq,
            send_time_us: 0,
            count: 1,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn exactly_once_in_order_or_covered(
            n in 1u64..300,
            // Per datagram: lost (0), delivered (1), delivered twice (2); then a swap chance.
            fate in proptest::collection::vec(0u8..6, 300),
            swaps in proptest::collection::vec(any::<bool>(), 300),
            retransmit_lost in proptest::collection::vec(0u8..4, 64),
        ) {
            let cfg = ReceiverConfig { max_pending: 64, ..ReceiverConfig::default() };
            let (mut r, first) = Receiver::new(cfg, 3);
            prop_assert_eq!(first, Action::Snapshot(SnapshotReason::Start));
            let mut out = Vec::new();
            r.snapshot_done(1, 0, 0, &mut out);
            // The wire: each datagram's fate, with neighbours swapped at random.
            let mut wire: Vec<u64> = Vec::new();
            for s in 1..=n {
                match fate[s as usize - 1] {
                    0 => {}
                    5 => { wire.push(s); wire.push(s); }
                    _ => wire.push(s),
                }
            }
            for i in 1..wire.len() {
                if swaps[i % swaps.len()] { wire.swap(i - 1, i); }
            }
            let mut delivered: Vec<u64> = Vec::new();
            let mut covered_upto = 0u64;
            let mut sent_so_far = 0u64;
            let mut now = 0u64;
            let mut rt = 0usize;
            let mut queue: std::collections::VecDeque<u64> = wire.into();
            let mut idle_rounds = 0;
            loop {
                let next = queue.pop_front();
                match next {
                    Some(s) => {
                        sent_so_far = sent_so_far.max(s);
                        r.on_datagram(&h(s, Kind::Data), Bytes::from(s.to_be_bytes().to_vec()), now, &mut out);
                    }
                    None => {
                        // Idle: the origin's heartbeat tells the last number, time passes.
                        r.on_datagram(&h(n, Kind::Heartbeat), Bytes::new(), now, &mut out);
                        now += 20;
                        r.on_tick(now, &mut out);
                        idle_rounds += 1;
                    }
                }
                for a in std::mem::take(&mut out) {
                    match a {
                        Action::Deliver(d) => delivered.push(u64::from_be_bytes(d[..8].try_into().unwrap())),
                        Action::Nak { seq, count, .. } => {
                            for s in seq..seq + count as u64 {
                                if s <= n {
                                    rt += 1;
                                    if retransmit_lost[rt % retransmit_lost.len()] != 0 {
                                        queue.push_back(s);
                                    }
                                }
                            }
                        }
                        Action::Snapshot(_) => {
                            // The snapshot covers everything sent so far.
                            let upto = n.max(sent_so_far);
                            covered_upto = covered_upto.max(upto);
                            r.snapshot_done(1, upto, now, &mut out);
                        }
                    }
                }
                if queue.is_empty() && !r.is_snapshotting() && r.pending() == 0
                    && delivered.last().copied().unwrap_or(0).max(covered_upto) >= n
                {
                    break;
                }
                prop_assert!(idle_rounds < 1000, "no progress: delivered {:?}", delivered.len());
            }
            for w in delivered.windows(2) {
                prop_assert!(w[0] < w[1], "out of order or twice: {:?}", w);
            }
            for s in 1..=n {
                prop_assert!(s <= covered_upto || delivered.contains(&s), "{} neither delivered nor covered", s);
            }
        }
    }
}
