//! Relay-role connections: a downstream engine gets every topic, in the origin's order, never
//! conflated, each topic id introduced by a TOPIC frame before its first UPDATE
//! (docs/PROTOCOL.md §2.5).

use std::collections::HashMap;

use bytes::Bytes;
use yorker_wire::{update_flags, ErrorCode, Frame};

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
        for f in frames {
            if !self.push_relay(slot, f) {
                self.stats.slow_disconnects += 1;
                return self.fail(
                    slot,
                    ErrorCode::SlowConsumer,
                    "the snapshot of every topic exceeds the relay outbox limit",
                    now,
                );
            }
        }
    }
}
