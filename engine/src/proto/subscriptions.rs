//! Subscriptions: SUBSCRIBE (with resume and permissions) and UNSUBSCRIBE, and the release of
//! a connection's subscriptions when it ends.

use bytes::Bytes;
use yorker_wire::{topic, ErrorCode, Frame, SubAck, SubAckEntry, SubResult};

use super::outbox::{Entry, Pushed};
use super::{Now, Shard};

impl Shard {
    /// Checks a SUBSCRIBE's size, failing the connection beyond `max_subscriptions` (None),
    /// and returns what its outbox (of `limit` bytes) can still take for replays after the
    /// SUBACK itself.
    pub(crate) fn replay_budget(
        &mut self,
        slot: u32,
        entries: usize,
        limit: usize,
        now: Now,
    ) -> Option<usize> {
        if entries > self.cfg.max_subscriptions as usize {
            // Bounds the reply too: a SUBACK for max_subscriptions entries fits a frame.
            self.fail(
                slot,
                ErrorCode::TooManyEntries,
                "more entries than max_subscriptions",
                now,
            );
            return None;
        }
        let suback_len = 11 + 13 * entries;
        Some(limit.saturating_sub(self.outbox_bytes(slot) + suback_len))
    }

    pub(crate) fn on_subscribe(&mut self, slot: u32, s: yorker_wire::Subscribe, now: Now) {
        let limit = self.cfg.outbox_limit;
        let Some(mut budget) = self.replay_budget(slot, s.entries.len(), limit, now) else {
            return;
        };
        let mut acks = Vec::with_capacity(s.entries.len());
        let mut frames: Vec<(u32, Bytes)> = Vec::new();
        let (mut watched, mut joined) = (Vec::new(), Vec::new());
        for e in s.entries {
            let ack = |result, topic_id, seq| SubAckEntry {
                result,
                topic_id,
                seq,
            };
            // Every check comes before anything is allocated in the registry, and a refused
            // entry carries topic id 0.
            if topic::validate(&e.topic).is_err() {
                acks.push(ack(SubResult::InvalidTopic, 0, 0));
                continue;
            }
            if !self.may_subscribe(slot, &e.topic) {
                acks.push(ack(SubResult::Forbidden, 0, 0));
                continue;
            }
            if let Some(t) = self.registry.lookup(&e.topic) {
                if let Some(sub) = self.index.get_mut(slot, t.id) {
                    let seq = sub.last_seq;
                    acks.push(ack(SubResult::AlreadySubscribed, t.id, seq));
                    continue;
                }
            }
            if self.index.of_conn(slot).len() >= self.cfg.max_subscriptions as usize {
                acks.push(ack(SubResult::LimitReached, 0, 0));
                continue;
            }
            let Ok(t) = self.registry.acquire(&e.topic) else {
                acks.push(ack(SubResult::LimitReached, 0, 0));
                continue;
            };
            let start = self.registry.start_subscription(&t, e.resume, budget);
            budget = budget.saturating_sub(start.frames.iter().map(|f| f.len()).sum());
            self.index.add(slot, t.id, e.conflate, start.seq);
            acks.push(ack(start.result, t.id, start.seq));
            frames.extend(start.frames.into_iter().map(|f| (t.id, f)));
            if e.presence && self.conn(slot).is_some_and(|c| c.version >= 3) {
                if let Some(sub) = self.index.get_mut(slot, t.id) {
                    sub.presence = true;
                }
                watched.push(t.id);
            }
            joined.push(t.id);
        }
        let suback = Frame::SubAck(SubAck {
            request_id: s.request_id,
            entries: acks,
        });
        let f = suback
            .to_bytes()
            .expect("at most max_subscriptions entries");
        self.push_control(slot, f);
        // Snapshots and replays go in the urgent lane right behind the SUBACK, so that a later
        // urgent live update cannot overtake them; they are never conflated.
        for (topic, frame) in frames {
            let limit = self.cfg.outbox_limit;
            let Some(c) = self.conn_mut(slot) else {
                return;
            };
            let len = frame.len();
            let e = Entry {
                frame,
                topic,
                seq: 0,
                conflatable: false,
                raw: false,
            };
            if c.outbox.push_urgent(e, limit).0 == Pushed::Overflow {
                // Replays were sized to fit; only snapshots of many large values can get here.
                self.stats.slow_disconnects += 1;
                return self.fail(
                    slot,
                    ErrorCode::SlowConsumer,
                    "snapshots exceed the outbox limit",
                    now,
                );
            }
            self.total_outbox += len;
            self.stats.deliveries += 1;
        }
        // Presence after the topic's first frames: the count, then events for small topics.
        for id in watched {
            self.watch_presence(slot, id);
        }
        for id in joined {
            let p = self.registry.presence(id);
            self.member_joined(slot, id, p);
        }
        self.mark_ready(slot);
    }

    pub(crate) fn on_unsubscribe(&mut self, slot: u32, u: yorker_wire::Unsubscribe, now: Now) {
        if u.topic_ids.len() > self.cfg.max_subscriptions as usize {
            return self.fail(
                slot,
                ErrorCode::TooManyEntries,
                "more entries than max_subscriptions",
                now,
            );
        }
        let mut acks = Vec::with_capacity(u.topic_ids.len());
        for id in u.topic_ids {
            let seq = self.index.get_mut(slot, id).map(|s| s.last_seq);
            let result = if self.end_subscription(slot, id) {
                SubResult::Ok
            } else {
                SubResult::NotSubscribed
            };
            acks.push(SubAckEntry {
                result,
                topic_id: id,
                seq: seq.unwrap_or(0),
            });
        }
        let f = Frame::SubAck(SubAck {
            request_id: u.request_id,
            entries: acks,
        })
        .to_bytes()
        .expect("at most as many entries as the request");
        self.push_control(slot, f);
    }

    /// May `slot` subscribe to `topic`? Its token's patterns, or the rules for anonymous
    /// sessions; topics under `user/` belong to their user only.
    pub(crate) fn may_subscribe(&self, slot: u32, topic: &str) -> bool {
        let grant = self.conn(slot).and_then(|c| c.grant.as_deref());
        self.cfg.policy.may_subscribe(grant, topic)
    }

    /// Ends one subscription of `slot`: out of the index, its topic released, and nothing of it
    /// left in the queue. False when there was none.
    pub(crate) fn end_subscription(&mut self, slot: u32, id: u32) -> bool {
        let watcher = self.index.get_mut(slot, id).is_some_and(|s| s.presence);
        if !self.index.remove(slot, id) {
            return false;
        }
        let p = self.registry.release(id, watcher);
        self.member_left(slot, id, watcher, p);
        if let Some(c) = self.conn_mut(slot) {
            let freed = c.outbox.remove_topic(id);
            self.total_outbox -= freed;
        }
        true
    }

    /// Ends every subscription of `slot`, releasing its topics in the registry (a placeholder
    /// topic goes with its last subscriber).
    pub(crate) fn drop_subscriptions(&mut self, slot: u32) {
        for s in self.index.remove_conn(slot) {
            let p = self.registry.release(s.topic, s.presence);
            self.member_left(slot, s.topic, s.presence, p);
        }
    }
}
