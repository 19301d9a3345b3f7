//! Fan-out: an update from the bus goes into the outbox of every subscriber of this shard (or
//! every subscriber-role connection for a broadcast), applying conflation, the urgent lane and
//! the slow-consumer policy. Frames are shared (`Bytes`): queuing one is a reference count.

use yorker_wire::{update_flags, ErrorCode, Role};

use super::outbox::{Entry, Pushed};
use super::slot::{live_mut, Phase};
use super::{Now, Shard, SlowPolicy, UpdateMsg};

impl Shard {
    /// An update arrived over the bus: queue it for every subscriber of this shard (every
    /// subscriber-role connection when it is a broadcast).
    pub(crate) fn on_update(&mut self, msg: &UpdateMsg, now: Now) {
        self.stats.updates_fanned_out += 1;
        let urgent = msg.flags & update_flags::URGENT != 0;
        // Failures change the subscriber list, so they wait until the fan-out is done.
        let mut overflowed = std::mem::take(&mut self.overflowed);
        if msg.flags & update_flags::BROADCAST != 0 {
            for slot in 0..self.slots.len() as u32 {
                let subscriber = matches!(
                    self.conn(slot).map(|c| c.phase),
                    Some(Phase::Active(Role::Subscriber))
                );
                if (subscriber || self.index.get_mut(slot, msg.topic).is_some())
                    && !self.deliver(slot, msg, urgent)
                {
                    overflowed.push(slot);
                }
            }
        } else {
            let n = self.index.subscribers(msg.topic).len();
            // Rotate where each fan-out starts so no connection is always served last.
            let start = if n == 0 { 0 } else { (msg.seq as usize) % n };
            // A POST with NO_ECHO skips its poster (its ACK told it the seq).
            let skip = self.skip_slot(msg.skip);
            for i in 0..n {
                let slot = self.index.subscribers(msg.topic)[(start + i) % n];
                if Some(slot) == skip {
                    if let Some(sub) = self.index.get_mut(slot, msg.topic) {
                        sub.last_seq = sub.last_seq.max(msg.seq);
                    }
                    continue;
                }
                if !self.deliver(slot, msg, urgent) {
                    overflowed.push(slot);
                }
            }
        }
        self.check_relay_epochs(now);
        for i in 0..self.relays.len() {
            if !self.deliver_relay(i, msg) {
                overflowed.push(self.relays[i].slot);
            }
        }
        for slot in overflowed.drain(..) {
            self.stats.slow_disconnects += 1;
            self.fail(slot, ErrorCode::SlowConsumer, "outbox limit reached", now);
        }
        self.overflowed = overflowed;
        self.enforce_shard_cap(now);
    }

    /// Queues `msg` on `slot`; false when the outbox refused it (the caller fails the slot).
    fn deliver(&mut self, slot: u32, msg: &UpdateMsg, urgent: bool) -> bool {
        let conflate_sub = match self.index.get_mut(slot, msg.topic) {
            Some(sub) => {
                // A relay's RESET restarts the numbering (its origin restarted), so it may
                // carry a lower seq than the subscription saw.
                if msg.seq <= sub.last_seq && msg.flags & update_flags::RESET == 0 {
                    return true; // already queued as part of a snapshot or replay
                }
                sub.last_seq = msg.seq;
                sub.conflate
            }
            None => false, // broadcast to a non-subscriber: never conflated
        };
        let limit = self.cfg.outbox_limit;
        // A RESET must reach the client: a newer update may queue behind it, never replace it.
        let conflatable = conflate_sub
            && self.cfg.slow_policy == SlowPolicy::Conflate
            && msg.flags & update_flags::RESET == 0;
        let Some(c) = live_mut(&mut self.slots, slot) else {
            return true;
        };
        if !matches!(c.phase, Phase::Active(_)) {
            return true;
        }
        let before = c.outbox.bytes();
        let e = Entry {
            frame: msg.frame.clone(),
            topic: msg.topic,
            seq: msg.seq,
            conflatable,
            raw: false,
        };
        let pushed = if urgent {
            let (p, dropped) = c.outbox.push_urgent(e, limit);
            self.stats.conflated += dropped as u64;
            if p != Pushed::Overflow {
                self.stats.urgent += 1;
            }
            p
        } else {
            let p = c.outbox.push(e, limit);
            if p == Pushed::Conflated {
                self.stats.conflated += 1;
            }
            p
        };
        let after = c.outbox.bytes();
        self.total_outbox = self.total_outbox + after - before;
        if pushed == Pushed::Overflow {
            return false;
        }
        self.stats.deliveries += 1;
        self.mark_ready(slot);
        true
    }

    /// The shard's inbox overflowed and updates were lost for it: every subscriber gets its
    /// topics' latest values again as SNAPSHOT|RESET (the protocol's "your state was lost,
    /// here is the truth"), and relay links resynchronise from scratch. Older updates still
    /// queued behind are skipped by each subscription's sequence filter.
    pub(crate) fn resync(&mut self, now: Now) {
        self.stats.resyncs += 1;
        for slot in self.relays.iter().map(|r| r.slot).collect::<Vec<_>>() {
            self.drop_relay_link(slot);
            self.go_away(
                slot,
                ErrorCode::Resync,
                0,
                "updates lost: resynchronise",
                now,
            );
        }
        let epoch = self.registry.epoch();
        let mut overflowed = std::mem::take(&mut self.overflowed);
        for id in self.index.topics() {
            let Some(t) = self.registry.get(id) else {
                continue;
            };
            // A resume from another epoch always answers with the snapshot flagged RESET.
            let gone = yorker_wire::ResumeFrom {
                epoch: !epoch,
                seq: 0,
            };
            let start = self.registry.start_subscription(&t, Some(gone), usize::MAX);
            let Some(frame) = start.frames.into_iter().next() else {
                continue; // no value yet: nothing was lost
            };
            let msg = UpdateMsg {
                topic: id,
                seq: start.seq,
                flags: update_flags::SNAPSHOT | update_flags::RESET,
                frame,
                skip: 0,
            };
            for slot in self.index.subscribers(id).to_vec() {
                if !self.deliver(slot, &msg, false) {
                    overflowed.push(slot);
                }
            }
        }
        for slot in overflowed.drain(..) {
            self.stats.slow_disconnects += 1;
            self.fail(slot, ErrorCode::SlowConsumer, "outbox limit reached", now);
        }
        self.overflowed = overflowed;
    }
}
