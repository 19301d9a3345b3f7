//! A connection's outbox: the frames waiting for its next gathered send.
//!
//! Two lanes: urgent frames go out before every queued non-urgent frame. A newer update of a
//! topic replaces an older one still waiting in the normal lane when the subscription conflates.
//! Frames already handed to a send are no longer here, so nothing here ever splits a frame that
//! is partly on the wire. The byte count covers every queued frame and never exceeds the limit
//! (except the one final ERROR/GOAWAY frame a closing connection is allowed).

use std::collections::VecDeque;

use bytes::Bytes;

/// Entries of buffer an emptied queue may keep (a burst's larger buffer is given back).
const KEEP_ENTRIES: usize = 8;

/// One queued frame.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The shared encoded frame.
    pub frame: Bytes,
    /// Topic id (0 for control frames: SUBACK, PONG, HEARTBEAT, ...).
    pub topic: u32,
    /// The update's sequence number (0 for control frames).
    pub seq: u64,
    /// May a newer update of the same topic replace this one while it waits?
    pub conflatable: bool,
    /// Bytes for the transport itself, sent as they are: on a WebSocket connection every
    /// other entry is a yorker frame that travels in a binary message (a header in front).
    pub raw: bool,
}

impl Entry {
    /// A control frame (SUBACK, PONG, HEARTBEAT, ERROR, GOAWAY): no topic, never conflated.
    pub fn control(frame: Bytes) -> Entry {
        Entry {
            frame,
            topic: 0,
            seq: 0,
            conflatable: false,
            raw: false,
        }
    }

    /// Transport bytes (a WebSocket handshake answer, pong or close), never wrapped.
    pub fn raw(frame: Bytes) -> Entry {
        Entry {
            raw: true,
            ..Entry::control(frame)
        }
    }
}

/// What `push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Appended.
    Queued,
    /// Replaced an older unsent update of the same topic (a conflated skip for the client).
    Conflated,
    /// Refused: queuing it would exceed the limit. The slow-consumer policy decides what next.
    Overflow,
}

/// A connection's queue of unsent frames: one deque whose first `urgent` entries form the
/// urgent lane (one deque, not two, keeps an idle connection's footprint small).
#[derive(Debug, Default)]
pub struct Outbox {
    q: VecDeque<Entry>,
    urgent: u32,
    bytes: u32,
}

impl Outbox {
    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes as usize
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    fn add(&mut self, n: usize) {
        self.bytes = (self.bytes as usize + n).min(u32::MAX as usize) as u32;
    }

    fn sub(&mut self, n: usize) {
        self.bytes = (self.bytes as usize).saturating_sub(n) as u32;
    }

    /// Queues a non-urgent frame, replacing an older conflatable one of the same topic when
    /// `e.conflatable`. Refuses (Overflow) when it would take the queue past `limit` bytes.
    pub fn push(&mut self, e: Entry, limit: usize) -> Pushed {
        let bytes = self.bytes as usize;
        if e.conflatable && e.topic != 0 {
            let urgent = self.urgent as usize;
            if let Some(old) = self
                .q
                .iter_mut()
                .skip(urgent)
                .rev()
                .find(|o| o.topic == e.topic)
                .filter(|o| o.conflatable)
            {
                let grown = bytes - old.frame.len() + e.frame.len();
                if grown > limit {
                    return Pushed::Overflow;
                }
                *old = e;
                self.bytes = grown as u32;
                return Pushed::Conflated;
            }
        }
        if bytes + e.frame.len() > limit {
            return Pushed::Overflow;
        }
        self.add(e.frame.len());
        self.q.push_back(e);
        Pushed::Queued
    }

    /// Queues an urgent frame ahead of every non-urgent one. Older queued frames of the same
    /// topic keep per-topic order: conflatable ones are dropped (counted in the return value),
    /// the others move into the urgent lane just before it.
    pub fn push_urgent(&mut self, e: Entry, limit: usize) -> (Pushed, usize) {
        let urgent = self.urgent as usize;
        let same_topic = |o: &Entry| e.topic != 0 && o.topic == e.topic;
        let superseded: usize = self
            .q
            .iter()
            .skip(urgent)
            .filter(|o| same_topic(o) && o.conflatable)
            .map(|o| o.frame.len())
            .sum();
        let after = self.bytes as usize - superseded + e.frame.len();
        if after > limit {
            return (Pushed::Overflow, 0);
        }
        let mut dropped = 0;
        if self.q.iter().skip(urgent).any(same_topic) {
            // Rebuild the normal lane: superseded frames go, same-topic frames that must all
            // be delivered join the urgent lane (in order), the rest keep their order.
            let normal: Vec<Entry> = self.q.drain(urgent..).collect();
            let mut rest = Vec::with_capacity(normal.len());
            for o in normal {
                if !same_topic(&o) {
                    rest.push(o);
                } else if o.conflatable {
                    dropped += 1;
                } else {
                    self.q.push_back(o);
                }
            }
            self.q.extend(rest);
        }
        let urgent_end = self.q.len()
            - self
                .q
                .iter()
                .skip(self.urgent as usize)
                .filter(|o| !same_topic(o))
                .count();
        self.q.insert(urgent_end, e);
        self.urgent = urgent_end as u32 + 1;
        self.bytes = after as u32;
        (
            if dropped > 0 {
                Pushed::Conflated
            } else {
                Pushed::Queued
            },
            dropped,
        )
    }

    /// Queues a connection's last frame (ERROR or GOAWAY) ahead of everything, beyond the limit.
    pub fn push_final(&mut self, frame: Bytes) {
        self.add(frame.len());
        self.q.push_front(Entry::control(frame));
        self.urgent += 1;
    }

    /// Queues a frame after everything else, beyond the limit (GOAWAY: what is queued still
    /// goes out first).
    pub fn push_last(&mut self, frame: Bytes) {
        self.add(frame.len());
        self.q.push_back(Entry::control(frame));
    }

    /// Drops queued updates of `topic` (after UNSUBSCRIBE); returns the bytes freed.
    pub fn remove_topic(&mut self, topic: u32) -> usize {
        let mut freed = 0;
        let mut urgent = self.urgent as usize;
        let mut i = 0;
        self.q.retain(|e| {
            let keep = e.topic != topic;
            if !keep {
                freed += e.frame.len();
                if i < self.urgent as usize {
                    urgent -= 1;
                }
            }
            i += 1;
            keep
        });
        self.urgent = urgent as u32;
        self.sub(freed);
        freed
    }

    /// Drops everything queued (a connection being aborted).
    pub fn clear(&mut self) -> usize {
        let b = self.bytes as usize;
        self.q = VecDeque::new();
        self.urgent = 0;
        self.bytes = 0;
        b
    }

    /// Moves up to `max_frames` frames (urgent first) into `out` for one gathered send and
    /// returns their bytes.
    pub fn take_batch(&mut self, max_frames: usize, out: &mut Vec<Bytes>) -> usize {
        let mut taken = 0;
        while out.len() < max_frames {
            let Some(e) = self.q.pop_front() else {
                break;
            };
            self.urgent = self.urgent.saturating_sub(1);
            taken += e.frame.len();
            out.push(e.frame);
        }
        self.sub(taken);
        if self.q.is_empty() && self.q.capacity() > KEEP_ENTRIES {
            // After a burst (a resume's replay, a snapshot of many topics), keep no more than
            // a steady stream needs: a connection fed 20 updates a second is never idle long
            // enough for `release_if_empty`, and under reconnect churn every connection would
            // otherwise keep the largest queue it ever had (the soak's RSS creep).
            self.q = VecDeque::new();
        }
        taken
    }

    /// As [`Outbox::take_batch`], also collecting the tickets (`seq` of control entries, topic 0)
    /// of the frames taken: a backend's CLIENT_MESSAGEs, acknowledged once their send completes.
    pub fn take_batch_tickets(
        &mut self,
        max_frames: usize,
        out: &mut Vec<Bytes>,
        tickets: &mut Vec<u64>,
    ) -> usize {
        let mut entries = Vec::with_capacity(max_frames.min(self.q.len()));
        let taken = self.take_entries(max_frames.saturating_sub(out.len()), &mut entries);
        for e in entries {
            if e.topic == 0 && e.seq != 0 {
                tickets.push(e.seq);
            }
            out.push(e.frame);
        }
        taken
    }

    /// Drops every queued frame that carries a ticket; returns the bytes freed.
    pub fn remove_tickets(&mut self) -> usize {
        let mut freed = 0;
        let mut urgent = self.urgent as usize;
        let mut i = 0;
        self.q.retain(|e| {
            let ticket = e.topic == 0 && e.seq != 0;
            if ticket {
                freed += e.frame.len();
                if i < self.urgent as usize {
                    urgent -= 1;
                }
            }
            i += 1;
            !ticket
        });
        self.urgent = urgent as u32;
        self.sub(freed);
        freed
    }

    /// Moves up to `max_entries` entries (urgent first) into `out`; returns their bytes.
    pub fn take_entries(&mut self, max_entries: usize, out: &mut Vec<Entry>) -> usize {
        let mut taken = 0;
        while out.len() < max_entries {
            let Some(e) = self.q.pop_front() else {
                break;
            };
            self.urgent = self.urgent.saturating_sub(1);
            taken += e.frame.len();
            out.push(e);
        }
        self.sub(taken);
        taken
    }

    /// Queues transport bytes after everything else (a WebSocket close after a final frame),
    /// beyond the limit.
    pub fn push_raw_last(&mut self, frame: Bytes) {
        self.add(frame.len());
        self.q.push_back(Entry::raw(frame));
    }

    /// True when the queue holds a buffer (empty or not).
    pub fn holds_memory(&self) -> bool {
        self.q.capacity() > 0
    }

    /// Frees the queue's buffer when it is empty. Called for connections idle for a while, so
    /// that steady fan-out does not allocate per delivery while idle connections hold nothing.
    pub fn release_if_empty(&mut self) {
        if self.q.is_empty() && self.q.capacity() > 0 {
            self.q = VecDeque::new();
        }
    }

    /// The queued entries in send order (tests and diagnostics).
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.q.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(topic: u32, seq: u64, conflatable: bool) -> Entry {
        Entry {
            frame: Bytes::from(vec![topic as u8; 10]),
            topic,
            seq,
            conflatable,
            raw: false,
        }
    }

    fn order(o: &Outbox) -> Vec<(u32, u64)> {
        o.iter().map(|e| (e.topic, e.seq)).collect()
    }

    #[test]
    fn conflation_replaces_only_unsent_frames_of_the_same_topic() {
        let mut o = Outbox::default();
        assert_eq!(o.push(e(1, 1, true), 1000), Pushed::Queued);
        assert_eq!(o.push(e(2, 1, true), 1000), Pushed::Queued);
        assert_eq!(o.push(e(1, 2, true), 1000), Pushed::Conflated);
        assert_eq!(order(&o), vec![(1, 2), (2, 1)]);
        // Once taken for sending, a frame is no longer replaceable.
        let mut out = Vec::new();
        o.take_batch(1, &mut out);
        assert_eq!(o.push(e(1, 3, true), 1000), Pushed::Queued);
        assert_eq!(order(&o), vec![(2, 1), (1, 3)]);
        // Non-conflating subscriptions queue everything.
        assert_eq!(o.push(e(3, 1, false), 1000), Pushed::Queued);
        assert_eq!(o.push(e(3, 2, false), 1000), Pushed::Queued);
        assert_eq!(o.len(), 4);
    }

    #[test]
    fn conflation_never_reaches_past_a_queued_non_conflatable_frame() {
        // A relay's RESET (non-conflatable) queued behind an older conflatable update: the next
        // update must queue after the RESET, not replace the older one ahead of it.
        let mut o = Outbox::default();
        o.push(e(1, 5, true), 1000);
        o.push(e(1, 1, false), 1000);
        assert_eq!(o.push(e(1, 2, true), 1000), Pushed::Queued);
        assert_eq!(order(&o), vec![(1, 5), (1, 1), (1, 2)]);
        assert_eq!(o.push(e(1, 3, true), 1000), Pushed::Conflated);
        assert_eq!(order(&o), vec![(1, 5), (1, 1), (1, 3)]);
    }

    #[test]
    fn urgent_jumps_the_queue_and_keeps_topic_order() {
        let mut o = Outbox::default();
        o.push(e(1, 1, true), 1000);
        o.push(e(2, 1, false), 1000);
        o.push(e(3, 1, true), 1000);
        // Urgent on topic 1 drops the conflatable older frame of topic 1.
        assert_eq!(o.push_urgent(e(1, 2, false), 1000), (Pushed::Conflated, 1));
        // Urgent on topic 2 carries the non-conflatable older frame of topic 2 ahead with it.
        assert_eq!(o.push_urgent(e(2, 2, false), 1000), (Pushed::Queued, 0));
        assert_eq!(order(&o), vec![(1, 2), (2, 1), (2, 2), (3, 1)]);
        assert_eq!(o.bytes(), 40);
    }

    #[test]
    fn urgent_never_splits_a_frame_in_flight() {
        let mut o = Outbox::default();
        o.push(e(1, 1, true), 1000);
        o.push(e(2, 1, true), 1000);
        let mut inflight = Vec::new();
        o.take_batch(8, &mut inflight);
        o.push_urgent(e(3, 1, false), 1000);
        // The in-flight batch is untouched; the urgent frame is next.
        assert_eq!(inflight.len(), 2);
        assert_eq!(order(&o), vec![(3, 1)]);
    }

    #[test]
    fn bytes_never_exceed_the_limit() {
        let mut o = Outbox::default();
        for seq in 1..=5 {
            let r = o.push(e(seq as u32, seq, false), 35);
            assert_eq!(
                r,
                if seq <= 3 {
                    Pushed::Queued
                } else {
                    Pushed::Overflow
                }
            );
            assert!(o.bytes() <= 35);
        }
        assert_eq!(o.push_urgent(e(9, 1, false), 35).0, Pushed::Overflow);
        assert_eq!(o.bytes(), 30);
        // Conflation within the limit still works when full.
        assert_eq!(o.push(e(1, 2, false), 35), Pushed::Overflow);
        o.push_final(Bytes::from_static(b"goaway"));
        assert_eq!(
            o.iter().next().unwrap().frame,
            Bytes::from_static(b"goaway")
        );
        let mut out = Vec::new();
        assert_eq!(o.take_batch(100, &mut out), 36);
        assert_eq!(o.bytes(), 0);
    }
}
