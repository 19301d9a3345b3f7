//! `ShardCore`: one shard's connections, sessions, outboxes and subscriber index.
//!
//! The driver tells it what happened (a connection opened, bytes arrived, a send completed, an
//! update came over the bus, time passed) and asks it what to do (which connections have
//! frames to send, which must be closed). It never touches a socket.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use yorker_wire::codec::decode_one;
use yorker_wire::{
    frame::{update_flags, HANDSHAKE_MAX_FRAME, PROTOCOL_VERSION, UPDATE_HEADER_LEN},
    topic, ErrorCode, ErrorFrame, Frame, GoAway, Limits, Role, SubAck, SubAckEntry, SubResult,
    Welcome,
};

use super::auth::{Grant, Policy, TokenCache, TokenVerifier};
use super::outbox::{Entry, Outbox, Pushed};
use super::subscribers::SubIndex;
use super::topic::{Registry, UpdateMsg};
use super::{Bus, Now};

/// What happens to a connection whose outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowPolicy {
    /// Honour each subscription's conflation (newest replaces an unsent older update), so a slow
    /// reader costs at most its topics x frame size; close it only if it still overflows
    /// (non-conflating subscriptions, urgent backlog).
    Conflate,
    /// Never conflate; close a connection as soon as its outbox is full.
    Disconnect,
}

/// Settings of the core (validated by the CLI).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Connections this shard accepts; the next ones get ERROR server_full.
    pub max_connections: usize,
    /// Maximum frame length in both directions (announced in WELCOME).
    pub max_frame: u32,
    /// Subscriptions per connection.
    pub max_subscriptions: u32,
    /// Outbox bytes per connection.
    pub outbox_limit: usize,
    /// Outbox bytes over all connections of the shard.
    pub shard_outbox_cap: usize,
    /// Slow-consumer policy.
    pub slow_policy: SlowPolicy,
    /// HELLO must arrive within this many ms.
    pub handshake_timeout_ms: u64,
    /// Heartbeat interval; silence for 3 intervals closes.
    pub heartbeat_ms: u64,
    /// A send not completed within this many ms closes the connection.
    pub write_timeout_ms: u64,
    /// Publishers must present this key; `None` refuses every publisher.
    pub publisher_key: Option<String>,
    /// Relays must present this key; `None` refuses every relay unless
    /// `allow_anonymous_relays`.
    pub relay_key: Option<String>,
    /// Without a relay key, let any relay connect (each costs a snapshot of every topic).
    pub allow_anonymous_relays: bool,
    /// Verifies signed tokens (--jwt-key); `None`: keys only, subscribers anonymous.
    pub tokens: Option<Arc<TokenVerifier>>,
    /// Rules for anonymous sessions and token expiry.
    pub policy: Policy,
    /// Relay connections over the whole server, at most.
    pub max_relays: usize,
    /// A frame that started to arrive must be complete within this many ms.
    pub frame_timeout_ms: u64,
    /// Bytes of partial frames held over all connections of the shard, at most.
    pub shard_inbound_cap: usize,
    /// Outbox bytes per relay connection (it carries every topic, never conflated).
    pub relay_outbox_limit: usize,
    /// Frames gathered into one send at most (iovec entries).
    pub max_frames_per_send: usize,
    /// GOAWAY reconnect hint: base ms, plus up to `goaway_jitter_ms` at random.
    pub goaway_base_ms: u32,
    /// Spread of the reconnect hint.
    pub goaway_jitter_ms: u32,
    /// How long a closing connection may take to flush its last frames.
    pub drain_ms: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            max_connections: 10_000,
            max_frame: yorker_wire::DEFAULT_MAX_FRAME,
            max_subscriptions: 64,
            outbox_limit: 256 * 1024,
            shard_outbox_cap: 512 * 1024 * 1024,
            slow_policy: SlowPolicy::Conflate,
            handshake_timeout_ms: 5_000,
            heartbeat_ms: 15_000,
            write_timeout_ms: 10_000,
            publisher_key: None,
            relay_key: None,
            allow_anonymous_relays: false,
            tokens: None,
            policy: Policy::default(),
            max_relays: 64,
            frame_timeout_ms: 10_000,
            shard_inbound_cap: 64 * 1024 * 1024,
            relay_outbox_limit: 64 * 1024 * 1024,
            max_frames_per_send: 64,
            goaway_base_ms: 1_000,
            goaway_jitter_ms: 4_000,
            drain_ms: 2_000,
        }
    }
}

/// Counters of one shard (monotonic unless noted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Open connections (gauge).
    pub connections: u64,
    /// Subscriptions (gauge).
    pub subscriptions: u64,
    /// Bytes in all outboxes (gauge).
    pub outbox_bytes: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused with server_full.
    pub refused_full: u64,
    /// PUBLISH frames accepted from this shard's publishers.
    pub updates_in: u64,
    /// Updates received over the bus.
    pub updates_fanned_out: u64,
    /// Frames queued for subscribers (updates, snapshots, replays).
    pub deliveries: u64,
    /// Queued updates replaced by a newer one.
    pub conflated: u64,
    /// Urgent frames queued.
    pub urgent: u64,
    /// Connections closed as slow consumers.
    pub slow_disconnects: u64,
    /// Of which because the shard's cap was hit.
    pub cap_disconnects: u64,
    /// Connections closed after an ERROR.
    pub errors_sent: u64,
    /// Connections closed because a send did not complete in time.
    pub write_timeouts: u64,
    /// HEARTBEAT frames sent.
    pub heartbeats: u64,
    /// Gathered sends started.
    pub sends: u64,
    /// Frames in those sends.
    pub frames_sent: u64,
    /// Relay connections (gauge).
    pub relay_links: u64,
    /// Bytes held in partly received frames (gauge).
    pub inbound_bytes: u64,
    /// Connections closed because a partial frame did not complete in time.
    pub frame_timeouts: u64,
    /// Connections closed because the shard's partial-frame memory cap was reached.
    pub inbound_cap_closes: u64,
    /// HELLOs refused (wrong or missing key or token, relay cap).
    pub auth_refused: u64,
    /// Token signatures checked (the rest came from the shard's cache).
    pub tokens_verified: u64,
    /// Sessions closed because their token expired without a refresh.
    pub tokens_expired: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    Active(Role),
    /// Last frame queued; close once flushed or at the deadline.
    Draining {
        deadline_ms: u64,
    },
    /// Handed to the driver to close.
    Closed,
}

/// One connection's session state. Kept small: an engine holds hundreds of thousands.
#[derive(Debug)]
struct Conn {
    phase: Phase,
    /// A partial frame between reads (rare: most reads end on a frame boundary).
    pending: Option<Box<BytesMut>>,
    outbox: Outbox,
    sending: bool,
    in_ready: bool,
    // Milliseconds since the server started, as u32 (49 days; timeouts compare differences
    // with wrapping arithmetic).
    opened_ms: u32,
    last_rx_ms: u32,
    last_tx_ms: u32,
    send_started_ms: u32,
    /// When the first byte of the partial frame in `pending` arrived.
    partial_since_ms: u32,
    /// Negotiated protocol version.
    version: u8,
    /// What the session's token allows (none: anonymous, or authenticated by a key).
    grant: Option<Arc<Grant>>,
}

/// Milliseconds elapsed from `then` to `now` on the u32 clock.
fn since(now: u64, then: u32) -> u64 {
    (now as u32).wrapping_sub(then) as u64
}

/// A connection the driver must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseOrder {
    /// The connection.
    pub slot: u32,
    /// True when a send may still be in flight and must be cancelled (write timeout, drain
    /// deadline); false when everything queued was sent.
    pub abort: bool,
}

/// One shard's sans-IO state.
pub struct ShardCore {
    cfg: Arc<CoreConfig>,
    pub(crate) registry: Arc<Registry>,
    bus: Arc<dyn Bus>,
    conns: Vec<Option<Conn>>,
    index: SubIndex,
    ready: Vec<u32>,
    closing: Vec<CloseOrder>,
    stats: CoreStats,
    total_outbox: usize,
    rng: u64,
    heartbeat_frame: Bytes,
    shutting_down: bool,
    overflowed: Vec<u32>,
    relays: Vec<RelayLink>,
    /// Capacity of every connection's `pending` buffer.
    inbound_bytes: usize,
    /// Tokens this shard verified.
    token_cache: TokenCache,
}

/// A downstream relay: it gets every topic, in the origin's order, never conflated, each topic
/// id introduced by a TOPIC frame before its first UPDATE.
#[derive(Debug)]
struct RelayLink {
    slot: u32,
    /// The epoch its snapshot belonged to.
    epoch: u64,
    /// Topic id -> the last sequence number queued (absent: TOPIC not sent yet).
    sent: HashMap<u32, u64>,
}

impl std::fmt::Debug for ShardCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCore")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl ShardCore {
    /// A shard with no connections.
    pub fn new(
        cfg: Arc<CoreConfig>,
        registry: Arc<Registry>,
        bus: Arc<dyn Bus>,
        seed: u64,
    ) -> Self {
        // Per-slot tables are sized for every slot up front: the kernel hands out direct
        // descriptor slots round-robin, so under churn every slot gets used sooner or later,
        // and their memory is a fixed cost of the engine rather than something a burst of
        // connections (or an attack) adds.
        let slots = cfg.max_connections + 64;
        let mut conns = Vec::new();
        conns.resize_with(slots, || None);
        ShardCore {
            cfg,
            registry,
            bus,
            conns,
            index: SubIndex::with_slots(slots),
            ready: Vec::new(),
            closing: Vec::new(),
            stats: CoreStats::default(),
            total_outbox: 0,
            rng: seed | 1,
            heartbeat_frame: Frame::Heartbeat.to_bytes().expect("heartbeat encodes"),
            shutting_down: false,
            overflowed: Vec::new(),
            relays: Vec::new(),
            inbound_bytes: 0,
            token_cache: TokenCache::default(),
        }
    }

    /// Counters, with the gauges filled in.
    pub fn stats(&self) -> CoreStats {
        let mut s = self.stats;
        s.subscriptions = self.index.total() as u64;
        s.outbox_bytes = self.total_outbox as u64;
        s.relay_links = self.relays.len() as u64;
        s.inbound_bytes = self.inbound_bytes as u64;
        s.tokens_verified = self.token_cache.verified;
        s
    }

    /// The settings.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.stats.connections as usize
    }

    /// True while `slot` holds a connection (closing ones included).
    pub fn is_open(&self, slot: u32) -> bool {
        matches!(self.conns.get(slot as usize), Some(Some(_)))
    }

    /// Queued outbox bytes of `slot` (tests, diagnostics).
    pub fn outbox_bytes(&self, slot: u32) -> usize {
        self.conn(slot).map(|c| c.outbox.bytes()).unwrap_or(0)
    }

    fn conn(&self, slot: u32) -> Option<&Conn> {
        self.conns.get(slot as usize)?.as_ref()
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*: reconnect jitter only, no need for a crypto RNG.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    // -----------------------------------------------------------------------------------------
    // Events from the driver
    // -----------------------------------------------------------------------------------------

    /// A connection was accepted into `slot`. Over the cap it is told `server_full` and closed.
    pub fn open(&mut self, slot: u32, now: Now) {
        if self.conns.len() <= slot as usize {
            self.conns.resize_with(slot as usize + 1, || None);
        }
        debug_assert!(
            self.conns[slot as usize].is_none(),
            "slot {slot} reused while open"
        );
        let t = now.ms as u32;
        self.conns[slot as usize] = Some(Conn {
            phase: Phase::AwaitHello,
            pending: None,
            outbox: Outbox::default(),
            sending: false,
            in_ready: false,
            opened_ms: t,
            last_rx_ms: t,
            last_tx_ms: t,
            send_started_ms: 0,
            partial_since_ms: 0,
            version: 0,
            grant: None,
        });
        self.stats.connections += 1;
        self.stats.accepted += 1;
        if self.shutting_down {
            self.fail(
                slot,
                ErrorCode::ShuttingDown,
                "server is shutting down",
                now,
            );
        } else if self.stats.connections as usize > self.cfg.max_connections {
            self.stats.refused_full += 1;
            self.fail(
                slot,
                ErrorCode::ServerFull,
                "connection limit of this core reached",
                now,
            );
        }
    }

    /// Bytes arrived on `slot`.
    pub fn on_bytes(&mut self, slot: u32, data: &[u8], now: Now) {
        let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) else {
            return;
        };
        if !matches!(c.phase, Phase::AwaitHello | Phase::Active(_)) {
            return; // closing: ignore input
        }
        c.last_rx_ms = now.ms as u32;
        let held = c.pending.as_ref().map_or(0, |b| b.capacity());
        let mut buf = c.pending.take().map(|b| *b).unwrap_or_default();
        self.inbound_bytes -= held;
        let was_partial = held > 0;
        buf.extend_from_slice(data);
        while let Some(c) = self.conns[slot as usize].as_mut() {
            if !matches!(c.phase, Phase::AwaitHello | Phase::Active(_)) {
                break;
            }
            // The limit changes after HELLO, so it is read for every frame.
            let max = if c.phase == Phase::AwaitHello {
                HANDSHAKE_MAX_FRAME.min(self.cfg.max_frame)
            } else {
                self.cfg.max_frame
            };
            match decode_one(&mut buf, max) {
                Ok(Some(frame)) => self.on_frame(slot, frame, now),
                Ok(None) => break,
                Err(e) => {
                    let msg = e.to_string();
                    self.fail(slot, e.code(), &msg, now);
                    break;
                }
            }
        }
        if !buf.is_empty() {
            if let Some(c) = self.conns[slot as usize].as_mut() {
                if matches!(c.phase, Phase::AwaitHello | Phase::Active(_)) {
                    // The deadline runs from the first byte of this partial frame: a client
                    // that completes frames keeps its clock fresh, a dripping one does not.
                    if !was_partial || buf.len() <= data.len() {
                        c.partial_since_ms = now.ms as u32;
                    }
                    if buf.capacity() > 2 * buf.len() + 4096 {
                        // Do not keep a large buffer around for a small tail.
                        buf = BytesMut::from(&buf[..]);
                    }
                    self.inbound_bytes += buf.capacity();
                    c.pending = Some(Box::new(buf));
                    self.enforce_inbound_cap(now);
                }
            }
        }
    }

    /// Over the shard's cap on partial frames, close the connections holding the largest ones
    /// until back under it. Only a flood of partial frames gets here, so the scan is rare.
    fn enforce_inbound_cap(&mut self, now: Now) {
        while self.inbound_bytes > self.cfg.shard_inbound_cap {
            let Some((_, slot)) = self
                .conns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let held = c.as_ref()?.pending.as_ref()?.capacity();
                    Some((held, i as u32))
                })
                .max()
            else {
                return;
            };
            self.stats.inbound_cap_closes += 1;
            self.fail(
                slot,
                ErrorCode::ServerBusy,
                "server memory cap for partial frames reached",
                now,
            );
        }
    }

    /// Drops a connection's partial frame (it is ending).
    fn drop_pending(&mut self, slot: u32) {
        if let Some(p) = self
            .conns
            .get_mut(slot as usize)
            .and_then(|c| c.as_mut())
            .and_then(|c| c.pending.take())
        {
            self.inbound_bytes -= p.capacity();
        }
    }

    /// Ends every subscription of `slot`, releasing its topics in the registry (a placeholder
    /// topic goes with its last subscriber).
    fn drop_subscriptions(&mut self, slot: u32) {
        for s in self.index.remove_conn(slot) {
            self.registry.release(s.topic);
        }
    }

    /// The peer closed its side, or the socket failed: close without a final frame.
    pub fn on_peer_closed(&mut self, slot: u32) {
        self.abort(slot);
    }

    /// The driver takes up to `max_frames` frames of `slot` into `out` for one gathered send.
    pub fn take_send(&mut self, slot: u32, out: &mut Vec<Bytes>, now: Now) -> usize {
        let max = self.cfg.max_frames_per_send;
        let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) else {
            return 0;
        };
        c.in_ready = false;
        if c.sending || c.phase == Phase::Closed {
            return 0;
        }
        let n = c.outbox.take_batch(max, out);
        if n > 0 {
            c.sending = true;
            c.send_started_ms = now.ms as u32;
            c.last_tx_ms = now.ms as u32;
            self.total_outbox -= n;
            self.stats.sends += 1;
            self.stats.frames_sent += out.len() as u64;
        }
        n
    }

    /// The send of `slot` completed (all of it: the driver resumes short sends itself).
    pub fn on_send_done(&mut self, slot: u32, now: Now) {
        let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) else {
            return;
        };
        c.sending = false;
        c.last_tx_ms = now.ms as u32;
        if !c.outbox.is_empty() {
            if !c.in_ready {
                c.in_ready = true;
                self.ready.push(slot);
            }
        } else if matches!(c.phase, Phase::Draining { .. }) {
            c.phase = Phase::Closed;
            self.closing.push(CloseOrder { slot, abort: false });
        }
    }

    /// The send of `slot` failed: the connection is gone.
    pub fn on_send_failed(&mut self, slot: u32) {
        if let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) {
            c.sending = false;
        }
        self.abort(slot);
    }

    /// The driver finished closing `slot`: forget it.
    pub fn remove(&mut self, slot: u32) {
        self.drop_pending(slot);
        self.drop_subscriptions(slot);
        if let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.take()) {
            self.total_outbox -= c.outbox.bytes();
            self.drop_relay_link(slot);
            self.stats.connections -= 1;
        }
    }

    /// An update arrived over the bus: queue it for every subscriber of this shard (every
    /// subscriber-role connection when it is a broadcast).
    pub fn on_update(&mut self, msg: &UpdateMsg, now: Now) {
        self.stats.updates_fanned_out += 1;
        let urgent = msg.flags & update_flags::URGENT != 0;
        // Failures change the subscriber list, so they wait until the fan-out is done.
        let mut overflowed = std::mem::take(&mut self.overflowed);
        if msg.flags & update_flags::BROADCAST != 0 {
            for slot in 0..self.conns.len() as u32 {
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
            for i in 0..n {
                let slot = self.index.subscribers(msg.topic)[(start + i) % n];
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
        let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) else {
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

    /// Queues `msg` on relay link `i` in arrival order (no urgent lane: a TOPIC frame must stay
    /// ahead of its topic's first UPDATE); false when its outbox refused it.
    fn deliver_relay(&mut self, i: usize, msg: &UpdateMsg) -> bool {
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
    fn check_relay_epochs(&mut self, now: Now) {
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
    fn drop_relay_link(&mut self, slot: u32) {
        if let Some(i) = self.relays.iter().position(|r| r.slot == slot) {
            self.relays.swap_remove(i);
            self.registry.remove_relay();
        }
    }

    /// Appends `frame` to a relay link's outbox (never conflated, relay limit).
    fn push_relay(&mut self, slot: u32, frame: Bytes) -> bool {
        let limit = self.cfg.relay_outbox_limit;
        let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) else {
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
    fn start_relay(&mut self, slot: u32, now: Now) {
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

    /// Time passed: handshake and heartbeat timeouts, heartbeats, write timeouts, drain
    /// deadlines.
    pub fn on_tick(&mut self, now: Now) {
        self.check_relay_epochs(now);
        let hb = self.cfg.heartbeat_ms;
        for slot in 0..self.conns.len() as u32 {
            let Some(c) = self.conns[slot as usize].as_mut() else {
                continue;
            };
            match c.phase {
                Phase::Closed => continue,
                Phase::Draining { deadline_ms } => {
                    if now.ms >= deadline_ms {
                        self.abort(slot);
                    }
                    continue;
                }
                _ => {}
            }
            if c.sending && since(now.ms, c.send_started_ms) >= self.cfg.write_timeout_ms {
                self.stats.write_timeouts += 1;
                self.abort(slot);
                continue;
            }
            if c.grant.as_ref().is_some_and(|g| {
                g.expires_at_s.saturating_mul(1000) + self.cfg.policy.grace_ms <= now.unix_us / 1000
            }) {
                self.stats.tokens_expired += 1;
                self.fail(
                    slot,
                    ErrorCode::TokenExpired,
                    "token expired; refresh it with AUTH before it does",
                    now,
                );
                continue;
            }
            if c.pending.is_some() && since(now.ms, c.partial_since_ms) >= self.cfg.frame_timeout_ms
            {
                self.stats.frame_timeouts += 1;
                self.fail(
                    slot,
                    ErrorCode::FrameTimeout,
                    "a frame did not complete within the frame timeout",
                    now,
                );
                continue;
            }
            if c.phase == Phase::AwaitHello {
                if since(now.ms, c.opened_ms) >= self.cfg.handshake_timeout_ms {
                    self.fail(slot, ErrorCode::HandshakeTimeout, "no HELLO in time", now);
                }
                continue;
            }
            if since(now.ms, c.last_rx_ms) >= 3 * hb {
                self.fail(
                    slot,
                    ErrorCode::HeartbeatTimeout,
                    "silent for three heartbeat intervals",
                    now,
                );
                continue;
            }
            let idle = since(now.ms, c.last_tx_ms);
            if !c.sending && idle >= 1000 {
                c.outbox.release_if_empty();
            }
            if !c.sending && c.outbox.is_empty() && idle >= hb {
                let f = self.heartbeat_frame.clone();
                self.push_control(slot, f);
                self.stats.heartbeats += 1;
            }
        }
    }

    /// Graceful shutdown: GOAWAY with a jittered reconnect hint to every connection, then close
    /// each once flushed (or at the drain deadline). New connections are refused.
    pub fn begin_shutdown(&mut self, now: Now) {
        self.shutting_down = true;
        for slot in 0..self.conns.len() as u32 {
            let Some(phase) = self.conn(slot).map(|c| c.phase) else {
                continue;
            };
            match phase {
                Phase::Active(_) => {
                    let jitter = (self.next_rand() % (self.cfg.goaway_jitter_ms as u64 + 1)) as u32;
                    let after = self.cfg.goaway_base_ms + jitter;
                    self.go_away(
                        slot,
                        ErrorCode::ShuttingDown,
                        after,
                        "server shutting down",
                        now,
                    );
                }
                Phase::AwaitHello => self.abort(slot),
                _ => {}
            }
        }
    }

    /// GOAWAY after what is queued, then close once flushed (or at the drain deadline).
    fn go_away(&mut self, slot: u32, code: ErrorCode, after_ms: u32, message: &str, now: Now) {
        let f = Frame::GoAway(GoAway {
            code: code as u16,
            reconnect_after_ms: after_ms,
            message: message.into(),
        })
        .to_bytes()
        .expect("goaway encodes");
        self.drop_subscriptions(slot);
        self.drop_pending(slot);
        let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) else {
            return;
        };
        if !matches!(c.phase, Phase::Active(_)) {
            return; // already ending
        }
        c.outbox.push_last(f.clone());
        self.total_outbox += f.len();
        c.phase = Phase::Draining {
            deadline_ms: now.ms + self.cfg.drain_ms,
        };
        self.mark_ready(slot);
        self.close_if_flushed(slot);
    }

    /// True once shutdown began and every connection is gone.
    pub fn shutdown_complete(&self) -> bool {
        self.shutting_down && self.stats.connections == 0
    }

    /// Connections with frames to send and no send in flight (drained by the driver).
    pub fn take_ready(&mut self, out: &mut Vec<u32>) {
        out.append(&mut self.ready);
    }

    /// Connections to close (drained by the driver).
    pub fn take_closing(&mut self, out: &mut Vec<CloseOrder>) {
        out.append(&mut self.closing);
    }

    // -----------------------------------------------------------------------------------------
    // Frames from clients
    // -----------------------------------------------------------------------------------------

    fn on_frame(&mut self, slot: u32, frame: Frame, now: Now) {
        let phase = self.conn(slot).map(|c| c.phase);
        match (phase, frame) {
            (Some(Phase::AwaitHello), Frame::Hello(h)) => self.on_hello(slot, h, now),
            (Some(Phase::AwaitHello), f) => {
                let msg = format!("{} before HELLO", f.name());
                self.fail(slot, ErrorCode::UnexpectedFrame, &msg, now)
            }
            (Some(Phase::Active(_)), Frame::Hello(_)) => {
                self.fail(slot, ErrorCode::UnexpectedFrame, "second HELLO", now)
            }
            (Some(Phase::Active(Role::Relay)), Frame::Subscribe(_) | Frame::Publish(_)) => self
                .fail(
                    slot,
                    ErrorCode::UnexpectedFrame,
                    "a relay receives every topic and may not publish",
                    now,
                ),
            (Some(Phase::Active(_)), Frame::Subscribe(s)) => self.on_subscribe(slot, s, now),
            (Some(Phase::Active(_)), Frame::Unsubscribe(u)) => self.on_unsubscribe(slot, u, now),
            (Some(Phase::Active(_)), Frame::Ping { nonce }) => {
                let f = Frame::Pong { nonce }.to_bytes().expect("pong encodes");
                self.push_control(slot, f);
            }
            (Some(Phase::Active(role)), Frame::Publish(p)) => self.on_publish(slot, role, p, now),
            (Some(Phase::Active(role)), Frame::Auth { token }) => {
                self.on_auth(slot, role, &token, now)
            }
            (Some(Phase::Active(_)), f) => {
                let msg = format!("{} is a server frame", f.name());
                self.fail(slot, ErrorCode::UnexpectedFrame, &msg, now)
            }
            _ => {}
        }
    }

    fn on_hello(&mut self, slot: u32, h: yorker_wire::Hello, now: Now) {
        if h.version == 0 {
            return self.fail(
                slot,
                ErrorCode::UnsupportedVersion,
                "version 0 does not exist",
                now,
            );
        }
        let version = h.version.min(PROTOCOL_VERSION);
        let grant = match self.authenticate(h.role, &h.token, now) {
            Ok(g) => g,
            Err((code, why)) => {
                self.stats.auth_refused += 1;
                return self.fail(slot, code, &why, now);
            }
        };
        if h.role == Role::Relay && !self.registry.try_add_relay(self.cfg.max_relays) {
            self.stats.auth_refused += 1;
            return self.fail(
                slot,
                ErrorCode::ServerFull,
                "relay connection limit reached (--max-relays)",
                now,
            );
        }
        let session_id = self.registry.next_session_id();
        let welcome = Frame::Welcome(Welcome {
            version,
            session_id,
            epoch: self.registry.epoch(),
            heartbeat_ms: self.cfg.heartbeat_ms as u32,
            limits: Limits {
                max_frame: self.cfg.max_frame,
                max_subscriptions: self.cfg.max_subscriptions,
                outbox_limit: self.cfg.outbox_limit as u32,
            },
        })
        .to_bytes()
        .expect("welcome encodes");
        let auth_ok = grant
            .as_ref()
            .filter(|_| version >= 2)
            .map(|g| self.auth_ok(g));
        let c = self.conns[slot as usize].as_mut().expect("open");
        c.phase = Phase::Active(h.role);
        c.version = version as u8;
        c.grant = grant;
        self.push_control(slot, welcome);
        if let Some(f) = auth_ok {
            self.push_control(slot, f);
        }
        if h.role == Role::Relay {
            self.start_relay(slot, now);
        }
    }

    /// Checks HELLO's token for `role`: the publisher or relay key, or a signed token (when the
    /// server has --jwt-key). Returns the token's grant (none for a key, or an anonymous
    /// subscriber), or the code and message of the refusal.
    fn authenticate(
        &mut self,
        role: Role,
        token: &str,
        now: Now,
    ) -> Result<Option<Arc<Grant>>, (ErrorCode, String)> {
        let refuse = |why: &str| Err((ErrorCode::AuthFailed, why.to_string()));
        let key = match role {
            Role::Publisher => self.cfg.publisher_key.as_deref(),
            Role::Relay => self.cfg.relay_key.as_deref(),
            Role::Subscriber => None,
        };
        if key.is_some_and(|k| constant_time_eq(k.as_bytes(), token.as_bytes())) {
            return Ok(None);
        }
        if token.is_empty() {
            return match role {
                Role::Subscriber if self.cfg.policy.require_token => {
                    refuse("this server requires a token")
                }
                Role::Subscriber => Ok(None),
                Role::Relay if self.cfg.relay_key.is_none() && self.cfg.allow_anonymous_relays => {
                    Ok(None)
                }
                Role::Relay if self.cfg.relay_key.is_none() => {
                    refuse("this server accepts no relays (no --relay-key set)")
                }
                Role::Publisher if self.cfg.publisher_key.is_none() => {
                    refuse("this server accepts no publishers (no publisher key set)")
                }
                _ => refuse("a key or token is required for this role"),
            };
        }
        let Some(v) = self.cfg.tokens.clone() else {
            return match role {
                // Version 1 ignored subscribers' tokens; without --jwt-key they still are.
                Role::Subscriber => Ok(None),
                Role::Relay if self.cfg.relay_key.is_none() && self.cfg.allow_anonymous_relays => {
                    Ok(None)
                }
                Role::Publisher if self.cfg.publisher_key.is_none() => {
                    refuse("this server accepts no publishers (no publisher key set)")
                }
                Role::Publisher => refuse("wrong publisher key"),
                Role::Relay => refuse("wrong relay key"),
            };
        };
        let grant = self
            .token_cache
            .grant(&v, token, now.unix_us / 1_000_000)
            .map_err(|e| (ErrorCode::AuthFailed, e.to_string()))?;
        if !grant.permits_role(role) {
            return refuse("the token does not grant this role");
        }
        Ok(Some(grant))
    }

    fn auth_ok(&self, g: &Grant) -> Bytes {
        Frame::AuthOk {
            expires_at_s: g.expires_at_s,
            grace_ms: self.cfg.policy.grace_ms.min(u32::MAX as u64) as u32,
        }
        .to_bytes()
        .expect("auth_ok encodes")
    }

    /// AUTH (version 2): a new token for the session, before the old one expires. It must grant
    /// the session's role and keep its subject; subscriptions it no longer allows end, reported
    /// in a SUBACK with request id 0 and result `forbidden`.
    fn on_auth(&mut self, slot: u32, role: Role, token: &str, now: Now) {
        let (version, old_subject) = match self.conn(slot) {
            Some(c) => (c.version, c.grant.as_ref().and_then(|g| g.subject.clone())),
            None => return,
        };
        if version < 2 {
            return self.fail(
                slot,
                ErrorCode::UnexpectedFrame,
                "AUTH needs protocol version 2",
                now,
            );
        }
        let Some(v) = self.cfg.tokens.clone() else {
            return self.fail(
                slot,
                ErrorCode::AuthFailed,
                "this server verifies no tokens (no --jwt-key)",
                now,
            );
        };
        let grant = match self.token_cache.grant(&v, token, now.unix_us / 1_000_000) {
            Ok(g) => g,
            Err(e) => return self.fail(slot, ErrorCode::AuthFailed, &e.to_string(), now),
        };
        if !grant.permits_role(role) {
            return self.fail(
                slot,
                ErrorCode::AuthFailed,
                "the token does not grant this role",
                now,
            );
        }
        if old_subject.is_some() && grant.subject != old_subject {
            return self.fail(
                slot,
                ErrorCode::AuthFailed,
                "a refreshed token must keep the subject",
                now,
            );
        }
        let revoked: Vec<u32> = self
            .index
            .of_conn(slot)
            .iter()
            .map(|s| s.topic)
            .filter(|&id| {
                self.registry
                    .get(id)
                    .is_none_or(|t| !self.cfg.policy.may_subscribe(Some(&grant), &t.name))
            })
            .collect();
        let ok = self.auth_ok(&grant);
        if let Some(c) = self.conns[slot as usize].as_mut() {
            c.grant = Some(grant);
        }
        if !revoked.is_empty() {
            let mut entries = Vec::with_capacity(revoked.len());
            for id in revoked {
                if self.index.remove(slot, id) {
                    self.registry.release(id);
                    let c = self.conns[slot as usize].as_mut().expect("open");
                    self.total_outbox -= c.outbox.remove_topic(id);
                    entries.push(SubAckEntry {
                        result: SubResult::Forbidden,
                        topic_id: id,
                        seq: 0,
                    });
                }
            }
            let f = Frame::SubAck(SubAck {
                request_id: 0,
                entries,
            })
            .to_bytes()
            .expect("at most max_subscriptions entries");
            self.push_control(slot, f);
        }
        self.push_control(slot, ok);
    }

    fn on_subscribe(&mut self, slot: u32, s: yorker_wire::Subscribe, now: Now) {
        if s.entries.len() > self.cfg.max_subscriptions as usize {
            // Bounds the reply too: a SUBACK for max_subscriptions entries fits a frame.
            return self.fail(
                slot,
                ErrorCode::TooManyEntries,
                "more entries than max_subscriptions",
                now,
            );
        }
        // What the outbox can still take for replays, after the SUBACK itself.
        let suback_len = 11 + 13 * s.entries.len();
        let mut budget = self
            .cfg
            .outbox_limit
            .saturating_sub(self.outbox_bytes(slot) + suback_len);
        let mut acks = Vec::with_capacity(s.entries.len());
        let mut frames: Vec<(u32, Bytes)> = Vec::new();
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
            let Some(c) = self.conns[slot as usize].as_mut() else {
                return;
            };
            let len = frame.len();
            let e = Entry {
                frame,
                topic,
                seq: 0,
                conflatable: false,
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
        self.mark_ready(slot);
    }

    fn on_unsubscribe(&mut self, slot: u32, u: yorker_wire::Unsubscribe, now: Now) {
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
            let result = if self.index.remove(slot, id) {
                self.registry.release(id);
                // Nothing of this topic may follow the SUBACK.
                let c = self.conns[slot as usize].as_mut().expect("open");
                self.total_outbox -= c.outbox.remove_topic(id);
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
    fn may_subscribe(&self, slot: u32, topic: &str) -> bool {
        let grant = self.conn(slot).and_then(|c| c.grant.as_deref());
        self.cfg.policy.may_subscribe(grant, topic)
    }

    fn on_publish(&mut self, slot: u32, role: Role, p: yorker_wire::Publish, now: Now) {
        if role != Role::Publisher {
            return self.fail(
                slot,
                ErrorCode::NotPublisher,
                "publish needs role publisher",
                now,
            );
        }
        if let Err(e) = topic::validate(&p.topic) {
            let msg = e.to_string();
            return self.fail(slot, ErrorCode::InvalidTopic, &msg, now);
        }
        let grant = self.conn(slot).and_then(|c| c.grant.as_deref());
        if !Policy::may_publish(grant, &p.topic) {
            let msg = format!("the token does not allow publishing to {}", p.topic);
            return self.fail(slot, ErrorCode::NotPublisher, &msg, now);
        }
        if p.payload.len() + UPDATE_HEADER_LEN - 4 > self.cfg.max_frame as usize {
            return self.fail(
                slot,
                ErrorCode::FrameTooLarge,
                "payload too large for an UPDATE",
                now,
            );
        }
        let t = match self.registry.get_or_create(&p.topic) {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                return self.fail(slot, ErrorCode::TopicLimit, &msg, now);
            }
        };
        self.stats.updates_in += 1;
        let bus = self.bus.clone();
        self.registry
            .publish(&t, p.flags, &p.payload, now.unix_us, &mut |m| {
                bus.publish(m)
            });
    }

    // -----------------------------------------------------------------------------------------
    // Helpers
    // -----------------------------------------------------------------------------------------

    fn mark_ready(&mut self, slot: u32) {
        if let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) {
            if !c.sending && !c.in_ready && !c.outbox.is_empty() {
                c.in_ready = true;
                self.ready.push(slot);
            }
        }
    }

    /// Queues a small control frame (WELCOME, SUBACK, PONG, HEARTBEAT) in the urgent lane.
    fn push_control(&mut self, slot: u32, f: Bytes) {
        let limit = self.cfg.outbox_limit;
        let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) else {
            return;
        };
        let len = f.len();
        if c.outbox.push_urgent(Entry::control(f), limit).0 == Pushed::Overflow {
            self.stats.slow_disconnects += 1;
            self.abort(slot);
            return;
        }
        self.total_outbox += len;
        self.mark_ready(slot);
    }

    /// ERROR with `code`, then close once flushed (or at the drain deadline).
    fn fail(&mut self, slot: u32, code: ErrorCode, message: &str, now: Now) {
        let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) else {
            return;
        };
        if !matches!(c.phase, Phase::AwaitHello | Phase::Active(_)) {
            return;
        }
        let f = Frame::Error(ErrorFrame {
            code: code as u16,
            message: message.chars().take(200).collect(),
        })
        .to_bytes()
        .expect("short error encodes");
        // What was queued no longer matters: the connection is ending.
        self.total_outbox -= c.outbox.clear();
        self.total_outbox += f.len();
        c.outbox.push_final(f);
        c.phase = Phase::Draining {
            deadline_ms: now.ms + self.cfg.drain_ms,
        };
        self.stats.errors_sent += 1;
        self.drop_subscriptions(slot);
        self.drop_pending(slot);
        self.mark_ready(slot);
        self.close_if_flushed(slot);
    }

    fn close_if_flushed(&mut self, slot: u32) {
        if let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) {
            if matches!(c.phase, Phase::Draining { .. }) && !c.sending && c.outbox.is_empty() {
                c.phase = Phase::Closed;
                self.closing.push(CloseOrder { slot, abort: false });
            }
        }
    }

    /// Close now, dropping whatever is queued.
    fn abort(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot as usize).and_then(|c| c.as_mut()) else {
            return;
        };
        if c.phase == Phase::Closed {
            return;
        }
        self.total_outbox -= c.outbox.clear();
        c.phase = Phase::Closed;
        let abort = c.sending;
        self.drop_subscriptions(slot);
        self.drop_pending(slot);
        self.closing.push(CloseOrder { slot, abort });
    }

    /// Over the shard's cap, close the largest outboxes first until back under 90% of it.
    fn enforce_shard_cap(&mut self, now: Now) {
        if self.total_outbox <= self.cfg.shard_outbox_cap {
            return;
        }
        let mut big: Vec<(usize, u32)> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (c.outbox.bytes(), i as u32)))
            .filter(|&(b, _)| b > 0)
            .collect();
        big.sort_unstable_by(|a, b| b.cmp(a));
        let target = self.cfg.shard_outbox_cap / 10 * 9;
        for (_, slot) in big {
            if self.total_outbox <= target {
                break;
            }
            self.stats.slow_disconnects += 1;
            self.stats.cap_disconnects += 1;
            self.fail(
                slot,
                ErrorCode::SlowConsumer,
                "server memory cap reached",
                now,
            );
        }
    }
}

/// Compares secrets without an early exit that would leak their common prefix length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod size_tests {
    /// An engine holds hundreds of thousands of connections, and the goal is <= 256 bytes of
    /// RSS per idle subscribed one (scripts/capacity.sh measures it). This guards the biggest
    /// part of that budget against quiet growth.
    #[test]
    fn per_connection_state_stays_small() {
        assert!(std::mem::size_of::<Option<super::Conn>>() <= 96);
        assert!(std::mem::size_of::<super::Outbox>() <= 40);
    }
}
