//! Presence (version 3): a topic's member count over the whole server, on request
//! (PRESENCE_GET) or as updates to subscriptions flagged PRESENCE, and MEMBER join/leave events
//! while a topic is small.
//!
//! The count is the registry's subscription count, kept under its index lock by every shard:
//! aggregated, never a list, so a topic with a million subscribers costs nothing more. Updates
//! are paced: at most one PRESENCE per topic and interval, encoded once per shard and queued
//! to that shard's presence subscribers. MEMBER events are encoded once by the shard where the
//! join or leave happened and go to every shard, only while the topic has at most
//! `presence_events_max` members and someone asked for presence.

use std::collections::HashMap;

use bytes::Bytes;
use yorker_wire::Frame;

use super::messages::{member_frame, Control, Dest};
use super::registry::Presence;
use super::{Now, Shard};

/// A topic with presence subscribers on this shard.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Watch {
    /// The count last sent.
    last: u32,
    /// Presence subscriptions on this shard.
    watchers: u32,
}

/// The topics with presence subscribers on this shard.
pub(crate) type Watches = HashMap<u32, Watch>;

fn presence_frame(request_id: u32, topic_id: u32, members: u32) -> Bytes {
    Frame::Presence {
        request_id,
        topic_id,
        members,
    }
    .to_bytes()
    .expect("presence encodes")
}

impl Shard {
    /// PRESENCE_GET: the count now (topic 0 and 0 members when the topic does not exist or the
    /// session may not subscribe to it).
    pub(crate) fn on_presence_get(&mut self, slot: u32, request_id: u32, name: &str) {
        let (id, members) = match self.registry.lookup(name) {
            Some(t) if self.may_subscribe(slot, name) => {
                (t.id, self.registry.presence(t.id).members)
            }
            _ => (0, 0),
        };
        let f = presence_frame(request_id, id, members);
        self.push_control(slot, f);
    }

    /// A subscription flagged PRESENCE started: count it, and send the count now.
    pub(crate) fn watch_presence(&mut self, slot: u32, topic: u32) {
        let p = self.registry.add_watcher(topic);
        let w = self.watches.entry(topic).or_insert(Watch {
            last: p.members,
            watchers: 0,
        });
        w.watchers += 1;
        let f = presence_frame(0, topic, p.members);
        self.push_control(slot, f);
    }

    /// Someone subscribed to `topic` (`presence` after the join): a MEMBER event when the
    /// topic is small and watched.
    pub(crate) fn member_joined(&mut self, slot: u32, topic: u32, p: Presence) {
        self.member_event(slot, topic, true, p);
    }

    /// A subscription of `slot` to `topic` ended (`watcher`: it had asked for presence;
    /// `p`: the topic's presence afterwards).
    pub(crate) fn member_left(&mut self, slot: u32, topic: u32, watcher: bool, p: Presence) {
        if watcher {
            if let Some(w) = self.watches.get_mut(&topic) {
                w.watchers -= 1;
                if w.watchers == 0 {
                    self.watches.remove(&topic);
                }
            }
        }
        self.member_event(slot, topic, false, p);
    }

    fn member_event(&mut self, slot: u32, topic: u32, joined: bool, p: Presence) {
        if p.watchers == 0 || p.members > self.cfg.presence_events_max {
            return;
        }
        let user = self
            .conn(slot)
            .and_then(|c| c.grant.as_ref())
            .and_then(|g| g.subject.as_deref())
            .unwrap_or("")
            .to_string();
        let frame = member_frame(topic, joined, self.sid(slot), &user);
        self.control(Dest::All, Control::Member { topic, frame });
    }

    /// A MEMBER event: to this shard's presence subscribers of the topic.
    /// Best effort: a watcher whose queue is already half full does not get it (counted), so
    /// that a client joining and leaving in a loop cannot push other clients over their outbox
    /// limit; the PRESENCE counts stay exact.
    pub(crate) fn deliver_member(&mut self, topic: u32, frame: Bytes) {
        if !self.watches.contains_key(&topic) {
            return;
        }
        let room = self.cfg.outbox_limit / 2;
        for slot in self.presence_subscribers(topic) {
            if self.outbox_bytes(slot) + frame.len() > room {
                self.stats.member_events_dropped += 1;
                continue;
            }
            self.push_control(slot, frame.clone());
        }
    }

    fn presence_subscribers(&mut self, topic: u32) -> Vec<u32> {
        let slots: Vec<u32> = self.index.subscribers(topic).to_vec();
        slots
            .into_iter()
            .filter(|&s| self.index.get_mut(s, topic).is_some_and(|sub| sub.presence))
            .collect()
    }

    /// Every presence interval: the new count of each watched topic whose count changed,
    /// encoded once and queued to its presence subscribers.
    pub(crate) fn presence_tick(&mut self, now: Now) {
        self.presence_due_ms = now.ms + self.cfg.presence_interval_ms.max(1);
        let topics: Vec<u32> = self.watches.keys().copied().collect();
        for topic in topics {
            let members = self.registry.presence(topic).members;
            let Some(w) = self.watches.get_mut(&topic) else {
                continue;
            };
            if w.last == members {
                continue;
            }
            w.last = members;
            let f = presence_frame(0, topic, members);
            for slot in self.presence_subscribers(topic) {
                self.push_control(slot, f.clone());
            }
        }
    }

    /// When the next presence tick is due (none while nobody watches).
    pub(crate) fn presence_deadline(&self) -> Option<u64> {
        (!self.watches.is_empty()).then_some(self.presence_due_ms)
    }
}
