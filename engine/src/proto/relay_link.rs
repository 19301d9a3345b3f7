//! Relay-role connections: a downstream engine gets every topic, in the origin's order, never
//! conflated, each topic id introduced by a TOPIC frame before its first UPDATE
//! (docs/PROTOCOL.md §2.5).

use std::collections::hash_map::Entry as SentEntry;
use std::collections::HashMap;

use bytes::Bytes;
use yorker_wire::{update_flags, ErrorCode, Frame, SubAck, SubAckEntry, SubResult, Subscribe};

use super::outbox::{Entry, Pushed};
use super::slot::Phase;
use super::{Now, Shard, UpdateMsg};

/// A downstream relay: the epoch its snapshot belonged to, and per topic the last sequence
/// number queued (absent: TOPIC not sent yet).
#[derive(Debug)]
pub(crate) struct RelayLink {
    pub(crate) slot: u32,
    pub(crate) epoch: u64,
    pub(crate) sent: HashMap<u32, u64>,
}

impl Shard {
    /// Queues `msg` on relay link `i` in arrival order (no urgent lane: a TOPIC frame must stay
    /// ahead of its topic's first UPDATE); false when its outbox refused it.
    pub(crate) fn deliver_relay(&mut self, i: usize, msg: &UpdateMsg) -> bool {
        let link = &mut self.relays[i];
        let slot = link.slot;
        let announce = match link.sent.get(&msg.topic) {
            Some(&last) if msg.seq <= last && msg.flags & update_flags::RESET == 0 => {
                return true; // covered by the snapshot this link started with
            }
            Some(_) => false,
            None => true,
        };
        link.sent.insert(msg.topic, msg.seq);
        if announce {
            let Some(t) = self.registry.get(msg.topic) else {
                return true;
            };
            if !self.push_relay(slot, t.topic_frame.clone()) {
                return false;
            }
        }
        if !self.push_relay(slot, msg.frame.clone()) {
            return false;
        }
        self.stats.deliveries += 1;
        true
    }

    /// On a relay whose own upstream restarted, the registry adopted a new epoch: links synced
    /// in the old one are sent away (GOAWAY `resync`, reconnect at once) to resynchronise.
    pub(crate) fn check_relay_epochs(&mut self, now: Now) {
        if self.relays.is_empty() {
            return;
        }
        let epoch = self.registry.epoch();
        let stale: Vec<u32> = self
            .relays
            .iter()
            .filter(|r| r.epoch != epoch)
            .map(|r| r.slot)
            .collect();
        for slot in stale {
            self.drop_relay_link(slot);
            self.go_away(
                slot,
                ErrorCode::Resync,
                0,
                "epoch changed: resynchronise",
                now,
            );
        }
    }

    /// Forgets the relay link of `slot`, if it is one, and frees its place under `max_relays`.
    pub(crate) fn drop_relay_link(&mut self, slot: u32) {
        if let Some(i) = self.relays.iter().position(|r| r.slot == slot) {
            self.relays.swap_remove(i);
            self.registry.remove_relay();
        }
    }

    /// Appends `frame` to a relay link's outbox (never conflated, relay limit).
    pub(crate) fn push_relay(&mut self, slot: u32, frame: Bytes) -> bool {
        let limit = self.cfg.relay_outbox_limit;
        let Some(c) = self.conn_mut(slot) else {
            return true;
        };
        if !matches!(c.phase, Phase::Active(_)) {
            return true;
        }
        let len = frame.len();
        if c.outbox.push(Entry::control(frame), limit) == Pushed::Overflow {
            return false;
        }
        self.total_outbox += len;
        self.mark_ready(slot);
        true
    }

    /// A relay said HELLO: every topic's TOPIC and latest value, SYNCED, then live updates.
    pub(crate) fn start_relay(&mut self, slot: u32, now: Now) {
        // Read before any snapshot is taken: every datagram up to it carries only updates the
        // snapshots below already include.
        let feed_seq = self.registry.feed_seq();
        let mut sent = HashMap::new();
        let mut frames = Vec::new();
        let topics = self.registry.all();
        for t in &topics {
            let start = self.registry.start_subscription(t, None, usize::MAX);
            sent.insert(t.id, start.seq);
            frames.push(t.topic_frame.clone());
            frames.extend(start.frames);
        }
        frames.push(
            Frame::Synced {
                topics: topics.len() as u32,
                epoch: self.registry.epoch(),
                feed_seq,
            }
            .to_bytes()
            .expect("synced encodes"),
        );
        let epoch = self.registry.epoch();
        self.relays.push(RelayLink { slot, epoch, sent });
        self.push_relay_all(
            slot,
            frames,
            "the snapshot of every topic exceeds the relay outbox limit",
            now,
        );
    }

    /// Appends `frames` to a relay link's outbox in order; when it overflows, the relay is
    /// failed with `slow_consumer` (saying `why`).
    fn push_relay_all(
        &mut self,
        slot: u32,
        frames: impl IntoIterator<Item = Bytes>,
        why: &str,
        now: Now,
    ) {
        for f in frames {
            if !self.push_relay(slot, f) {
                self.stats.slow_disconnects += 1;
                return self.fail(slot, ErrorCode::SlowConsumer, why, now);
            }
        }
    }

    /// A relay catching up (docs/PROTOCOL.md §2.5): after a failover to this server it found
    /// topics whose snapshot jumped past what it holds, and asks, with SUBSCRIBE entries
    /// carrying RESUME, for the updates after its seq instead. Answered with one SUBACK (per
    /// entry `resumed`, the missed updates following from history; `reset`, the snapshot
    /// following flagged SNAPSHOT|RESET; `invalid_topic` for a topic this server does not
    /// have), then those frames, in the link's order. Nothing is subscribed: the link gets
    /// every topic anyway. Entries without RESUME are `invalid_topic` too.
    pub(crate) fn relay_catch_up(&mut self, slot: u32, s: Subscribe, now: Now) {
        let limit = self.cfg.relay_outbox_limit;
        let Some(mut budget) = self.replay_budget(slot, s.entries.len(), limit, now) else {
            return;
        };
        let Some(i) = self.relays.iter().position(|r| r.slot == slot) else {
            return;
        };
        let mut acks = Vec::with_capacity(s.entries.len());
        let mut frames = Vec::new();
        for e in s.entries {
            let (Some(t), Some(resume)) = (self.registry.lookup(&e.topic), e.resume) else {
                acks.push(SubAckEntry {
                    result: SubResult::InvalidTopic,
                    topic_id: 0,
                    seq: 0,
                });
                continue;
            };
            let start = self.registry.start_subscription(&t, Some(resume), budget);
            budget = budget.saturating_sub(start.frames.iter().map(Bytes::len).sum());
            // Live updates up to `start.seq` still on their way to this shard are covered.
            match self.relays[i].sent.entry(t.id) {
                SentEntry::Occupied(mut o) => *o.get_mut() = (*o.get()).max(start.seq),
                SentEntry::Vacant(v) => {
                    // Not announced on this link yet (created after its snapshot).
                    frames.push(t.topic_frame.clone());
                    v.insert(start.seq);
                }
            }
            acks.push(SubAckEntry {
                result: start.result,
                topic_id: t.id,
                seq: start.seq,
            });
            frames.extend(start.frames);
        }
        let suback = Frame::SubAck(SubAck {
            request_id: s.request_id,
            entries: acks,
        })
        .to_bytes()
        .expect("at most max_subscriptions entries");
        self.push_relay_all(
            slot,
            std::iter::once(suback).chain(frames),
            "a catch-up exceeds the relay outbox limit",
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use yorker_wire::*;

    use crate::proto::registry::Registry;
    use crate::proto::{CoreConfig, Input, Now, Output, Shard};

    /// Everything the shard sent, decoded.
    fn received(s: &mut Shard, now: Now, dec: &mut Decoder) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut bufs = Vec::new();
        while let Some(t) = s.poll_transmit(now, &mut bufs) {
            for b in bufs.drain(..) {
                dec.feed(&b);
            }
            s.handle(Input::SendDone(t), now);
        }
        while let Some(f) = dec.next_frame().expect("server frames decode") {
            frames.push(f);
        }
        frames
    }

    /// A relay that moved here asks for what its failover skipped: `resumed` and the missed
    /// updates when history holds them, `reset` and the snapshot flagged SNAPSHOT|RESET when it
    /// does not, `invalid_topic` for a topic this server does not have or an entry without
    /// RESUME. Live updates the replay covered are not sent again.
    #[test]
    fn a_relay_catches_up_from_history_or_is_reset() {
        // History of 16 updates per topic.
        let registry = Arc::new(Registry::new(99, 16, 100));
        let cfg = Arc::new(CoreConfig {
            max_connections: 4,
            relay_key: Some("r".into()),
            ..CoreConfig::default()
        });
        let mut s = Shard::new(cfg, registry.clone(), 3);
        let now = Now { ms: 1, unix_us: 1 };
        let (a, b) = (
            registry.get_or_create("a").unwrap(),
            registry.get_or_create("b").unwrap(),
        );
        for t in [&a, &b] {
            for i in 0..40u8 {
                registry.publish(t, 0, &[i], 1, &mut |_| {});
            }
        }
        s.handle(Input::Accepted { slot: 0 }, now);
        let token = loop {
            if let Some(Output::ArmRecv(t)) = s.poll_output() {
                break t;
            }
        };
        let hello = Frame::Hello(Hello {
            version: 1,
            role: Role::Relay,
            client_name: "r".into(),
            token: "r".into(),
        });
        s.handle(Input::Received(token, &hello.to_bytes().unwrap()), now);
        let mut dec = Decoder::new(DEFAULT_MAX_FRAME);
        let snapshot = received(&mut s, now, &mut dec);
        assert!(matches!(
            snapshot.last(),
            Some(Frame::Synced { topics: 2, .. })
        ));
        let resume = |seq| Some(ResumeFrom { epoch: 99, seq });
        let entry = |topic: &str, resume| SubscribeEntry {
            topic: topic.into(),
            resume,
            conflate: false,
            presence: false,
        };
        let ask = Frame::Subscribe(Subscribe {
            request_id: 7,
            entries: vec![
                entry("a", resume(36)),
                entry("b", resume(3)),
                entry("nope", resume(1)),
                entry("a", None),
            ],
        });
        s.handle(Input::Received(token, &ask.to_bytes().unwrap()), now);
        let got = received(&mut s, now, &mut dec);
        let Some(Frame::SubAck(ack)) = got.first() else {
            panic!("{got:?}")
        };
        let results: Vec<(SubResult, u32, u64)> = ack
            .entries
            .iter()
            .map(|e| (e.result, e.topic_id, e.seq))
            .collect();
        assert_eq!(ack.request_id, 7);
        assert_eq!(
            results,
            [
                (SubResult::Resumed, a.id, 40),
                (SubResult::Reset, b.id, 40),
                (SubResult::InvalidTopic, 0, 0),
                (SubResult::InvalidTopic, 0, 0),
            ]
        );
        let updates: Vec<(u32, u64, u8, Bytes)> = got[1..]
            .iter()
            .map(|f| match f {
                Frame::Update(u) => (u.topic_id, u.seq, u.flags, u.payload.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        let reset = update_flags::SNAPSHOT | update_flags::RESET;
        assert_eq!(
            updates,
            [
                (a.id, 37, 0, Bytes::from_static(&[36])),
                (a.id, 38, 0, Bytes::from_static(&[37])),
                (a.id, 39, 0, Bytes::from_static(&[38])),
                (a.id, 40, 0, Bytes::from_static(&[39])),
                (b.id, 40, reset, Bytes::from_static(&[39])),
            ]
        );
        // The connection is still a relay link: a live update follows as usual.
        let mut bus = Vec::new();
        registry.publish(&a, 0, b"live", 1, &mut |m| bus.push(m));
        for m in &bus {
            s.handle(Input::Update(m), now);
        }
        let got = received(&mut s, now, &mut dec);
        assert!(
            matches!(&got[..], [Frame::Update(u)] if u.seq == 41 && &u.payload[..] == b"live"),
            "{got:?}"
        );
    }
}
