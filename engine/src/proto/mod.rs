//! The sans-IO engine: every decision about connections, sessions, subscriptions and fan-out,
//! in plain Rust, driven by inputs and `now`, returning what it wants done. No sockets, no
//! clock, no other threads: the io_uring driver (`crate::driver`) only moves bytes and
//! completions, and the deterministic simulation (`sim`) drives it through any interleaving
//! the kernel can produce.
//!
//! One [`Shard`] owns a core's connections. Each connection slot is one state machine
//! ([`slot`]): `Free -> Live (handshake, open, draining) -> Closing {recv, send cancelled?}
//! -> CloseSubmitted -> Free`, with a generation that makes late completions of an earlier
//! occupant harmless. The driver feeds [`Input`]s and drains [`Output`]s, transmits
//! ([`Shard::poll_transmit`]) and the next deadline ([`Shard::poll_timeout`]), quinn-proto
//! style.
//!
//! Where each rule lives:
//! * [`slot`]: a connection's life and I/O state (arm, send, cancel, close);
//! * [`session`]: handshake, authentication, heartbeats, errors, GOAWAY;
//! * [`subscriptions`]: SUBSCRIBE, UNSUBSCRIBE, resume, permissions;
//! * [`fanout`]: updates from the bus into outboxes, broadcast, slow consumers;
//! * [`relay_link`]: relay-role connections (every topic, in order);
//! * [`messages`]: MESSAGE to backends, REPLY, POST (rooms), acknowledgements, rate limits;
//! * [`presence`]: member counts and join/leave events;
//! * [`websocket`]: the WebSocket transport on the same listener (handshake, framing);
//! * [`tls`]: TLS (rustls) on the same listener, under raw TCP or WebSocket;
//! * [`placement`]: handing a connection to a shard with room when this one is full;
//! * [`limits`]: memory caps over the whole shard;
//! * [`timers`]: the deadline heap;
//! * [`registry`], [`subscribers`], [`outbox`], [`auth`]: the data structures.
#![forbid(unsafe_code)]

pub mod auth;
mod fanout;
mod limits;
pub mod messages;
pub mod outbox;
pub mod placement;
mod presence;
pub mod registry;
mod relay_link;
mod session;
mod slot;
mod subscribers;
mod subscriptions;
mod timers;
pub mod tls;
mod websocket;

#[cfg(test)]
mod sim;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use yorker_wire::Frame;

use self::auth::{Policy, TokenCache, TokenVerifier};
use self::registry::{Registry, Topic};
use self::relay_link::RelayLink;
use self::slot::{Slot, State};
use self::subscribers::SubIndex;
use self::timers::Deadlines;

pub use self::messages::{Control, Dest, Origin};
pub use self::registry::UpdateMsg;
pub use self::slot::{SlotState, Token};

/// The time, as the driver read it once for a batch of inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    /// Monotonic milliseconds since the server started (timeouts).
    pub ms: u64,
    /// Wall clock, microseconds since the Unix epoch (UPDATE timestamps, token expiry).
    pub unix_us: u64,
}

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

/// Settings of a shard (validated by [`crate::ServerConfig::validate`]).
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
    /// Publishers must present this key; `None` refuses every publisher without a token.
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
    /// Connections a core admits per second (a token bucket, with a burst of as many); beyond
    /// it a new connection gets GOAWAY `server_busy` with a retry hint. 0: no limit.
    pub accept_rate: u32,
    /// Backends must present this key (or a token granting `backend`); `None` and no tokens:
    /// no backend can connect.
    pub backend_key: Option<String>,
    /// Sessions without a token may send MESSAGE (by default only token holders, publishers
    /// and backends may).
    pub anonymous_messages: bool,
    /// MESSAGE and (subscribers') POST per second per connection (a token bucket).
    pub message_rate: u32,
    /// Burst of that bucket.
    pub message_burst: u32,
    /// MESSAGEs of one connection waiting for their ACK, at most.
    pub max_inflight_messages: u32,
    /// Outbox bytes per backend connection (beyond: ACK `server_busy` to the senders).
    pub backend_outbox_limit: usize,
    /// PRESENCE updates per topic at most once per this many ms.
    pub presence_interval_ms: u64,
    /// MEMBER events only while a topic has at most this many members.
    pub presence_events_max: u32,
    /// Accept WebSocket upgrades on the listener (a connection starting with `GET`).
    pub websocket: bool,
    /// WebSocket `Origin`s allowed (exact, case-insensitive; `*` any); empty: any, including
    /// clients that send none.
    pub ws_origins: Vec<String>,
    /// The certificate: connections that open with a TLS handshake get TLS.
    pub tls: Option<Arc<tls::TlsSettings>>,
    /// Refuse connections that do not open with a TLS handshake.
    pub require_tls: bool,
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
            accept_rate: 20_000,
            backend_key: None,
            anonymous_messages: false,
            message_rate: 50,
            message_burst: 100,
            max_inflight_messages: 64,
            backend_outbox_limit: 16 * 1024 * 1024,
            presence_interval_ms: 1_000,
            presence_events_max: 32,
            websocket: true,
            ws_origins: Vec::new(),
            tls: None,
            require_tls: false,
        }
    }
}

/// Counters of one shard (monotonic unless noted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Connection slots in use (gauge): open, draining, or closing.
    pub connections: u64,
    /// Subscriptions (gauge).
    pub subscriptions: u64,
    /// Bytes in all outboxes (gauge).
    pub outbox_bytes: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused with server_full.
    pub refused_full: u64,
    /// Connections accepted over this shard's cap and handed to a shard with room.
    pub handed_off: u64,
    /// Connections handed to this shard by a full one.
    pub handed_in: u64,
    /// Hand-offs that failed (the target's table was full, or it was gone): refused here.
    pub handoff_failed: u64,
    /// Connections turned away by the accept rate limit (GOAWAY server_busy).
    pub refused_busy: u64,
    /// Resynchronisations after the shard's inbox overflowed.
    pub resyncs: u64,
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
    /// Bytes of queued frames handed to sends (before WebSocket headers and TLS records).
    pub bytes_sent: u64,
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
    /// MESSAGEs accepted from this shard's clients (routed to a backend).
    pub messages_in: u64,
    /// MESSAGEs queued for this shard's backends.
    pub messages_to_backends: u64,
    /// MESSAGEs of this shard's clients acknowledged ok (written to a backend).
    pub messages_acked: u64,
    /// MESSAGEs of this shard's clients refused (ACK with an error code).
    pub messages_refused: u64,
    /// POSTs accepted.
    pub posts: u64,
    /// POSTs refused.
    pub posts_refused: u64,
    /// REPLY frames from this shard's backends.
    pub replies: u64,
    /// RESPONSEs not delivered (session gone, or its queue full).
    pub replies_dropped: u64,
    /// Control messages the bus refused (a shard's queue was full).
    pub control_dropped: u64,
    /// WebSocket upgrades refused (bad handshake, wrong version, origin).
    pub ws_refused: u64,
    /// WebSocket connections (gauge).
    pub ws_connections: u64,
    /// TLS handshakes that failed, and plain connections refused by --require-tls.
    pub tls_refused: u64,
    /// TLS connections (gauge).
    pub tls_connections: u64,
    /// MEMBER events not queued because the watcher's queue was half full.
    pub member_events_dropped: u64,
}

/// Something that happened, as the driver reports it.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// The kernel accepted a connection into this slot (a direct descriptor). The shard arms
    /// its receive ([`Output::ArmRecv`]).
    Accepted {
        /// The fixed-file slot.
        slot: u32,
    },
    /// Bytes received on a connection.
    Received(Token, &'a [u8]),
    /// The connection's multishot receive ended (no more completions will come for it).
    /// `result`: > 0 or `-ENOBUFS`: it may be re-armed; 0: the peer closed; < 0: an error or
    /// the cancellation the shard asked for.
    RecvEnded(Token, i32),
    /// The connection's send completed: every byte was written (the ring resumes short sends).
    SendDone(Token),
    /// The connection's send failed (or was cancelled): the connection is gone.
    SendFailed(Token),
    /// The direct descriptor was closed; the slot is free again.
    Closed(Token),
    /// Another shard, full, handed this shard a connection it accepted ([`Output::HandOff`]);
    /// the kernel installed it into this slot. Like [`Input::Accepted`], except that it is
    /// never handed on again.
    HandedIn {
        /// The fixed-file slot.
        slot: u32,
    },
    /// The hand-off this shard asked for ([`Output::HandOff`]) ended: `true` when the
    /// connection is in the other shard's table now (this slot is closed next), `false` when
    /// it could not be moved (it is refused here with `server_full`).
    HandedOff(Token, bool),
    /// An update from the bus (this shard's own publishes included).
    Update(&'a UpdateMsg),
    /// Updates for this shard were dropped (its inbox overflowed): every subscriber gets the
    /// latest value of its topics again, flagged SNAPSHOT|RESET, and relay links are sent
    /// away to resynchronise.
    Resync,
    /// A control message from another shard (client messages, replies, the backend
    /// directory, member events).
    Control(&'a Control),
    /// The bus could not take a control message this shard sent ([`Output::Control`]).
    ControlRefused(&'a Control),
    /// The driver applied an acknowledged publish ([`PublishReq::ack`]): its sequence number.
    Published {
        /// Whom to acknowledge.
        origin: Origin,
        /// The update's sequence number.
        seq: u64,
    },
}

/// What the shard wants done, besides transmits.
#[derive(Debug, Clone)]
pub enum Output {
    /// Arm the connection's multishot receive.
    ArmRecv(Token),
    /// Cancel the connection's receive (it ends with [`Input::RecvEnded`]).
    CancelRecv(Token),
    /// Cancel the connection's send (it ends with [`Input::SendFailed`]).
    CancelSend(Token),
    /// Close the direct descriptor; nothing else is in flight on it.
    Close(Token),
    /// Move the connection just accepted into this slot to shard `to` (this shard is full,
    /// `to` has room): the driver installs the descriptor into `to`'s table, which gets
    /// [`Input::HandedIn`], and feeds [`Input::HandedOff`] here. Nothing else is in flight on
    /// the slot.
    HandOff {
        /// The connection.
        token: Token,
        /// The shard to move it to.
        to: usize,
    },
    /// Apply a PUBLISH: assign its sequence number in the registry, encode it once and hand it
    /// to every shard's bus inbox, in the order these outputs come. With `ack`, then feed
    /// [`Input::Published`].
    Publish(PublishReq),
    /// Hand a control message to another shard (or every shard) through the bus; if the bus
    /// refuses it, feed [`Input::ControlRefused`].
    Control(Dest, Control),
}

/// A PUBLISH accepted from a publisher of this shard.
#[derive(Debug, Clone)]
pub struct PublishReq {
    /// The topic (created or promoted in the registry already).
    pub topic: Arc<Topic>,
    /// URGENT / BROADCAST.
    pub flags: u8,
    /// The payload (a slice of the received bytes).
    pub payload: Bytes,
    /// POST: acknowledge with the sequence number ([`Input::Published`]).
    pub ack: Option<Origin>,
    /// POST with NO_ECHO: the poster's session id ([`UpdateMsg::skip`]); 0: none.
    pub skip: u64,
    /// POST with an idempotency key: publish at most once per key
    /// ([`registry::Registry::publish_once`]).
    pub idempotency_key: Option<Box<str>>,
}

/// One shard's sans-IO state: its connection slots, subscriber index, timers and counters.
pub struct Shard {
    pub(crate) cfg: Arc<CoreConfig>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) slots: Vec<Slot>,
    pub(crate) index: SubIndex,
    pub(crate) relays: Vec<RelayLink>,
    /// Connections with frames to send and no send in flight.
    pub(crate) ready: VecDeque<u32>,
    pub(crate) out: VecDeque<Output>,
    pub(crate) timers: Deadlines,
    pub(crate) stats: CoreStats,
    /// Bytes in every outbox.
    pub(crate) total_outbox: usize,
    /// Capacity of every connection's partial-frame buffer.
    pub(crate) inbound_bytes: usize,
    pub(crate) token_cache: TokenCache,
    pub(crate) heartbeat_frame: Bytes,
    pub(crate) shutting_down: bool,
    pub(crate) overflowed: Vec<u32>,
    /// Next housekeeping (relay epochs), ms.
    pub(crate) housekeeping_ms: u64,
    /// Accept token bucket: tokens, and when it was last refilled (ms).
    pub(crate) accept_tokens: f64,
    pub(crate) accept_refill_ms: u64,
    /// This shard's number (session ids name it).
    pub(crate) id: u8,
    /// Every backend of the server (session ids, sorted), as announced on the bus.
    pub(crate) backends: Vec<u64>,
    /// This shard's backend connections.
    pub(crate) backend_links: HashMap<u32, messages::BackendLink>,
    /// Connections that sent MESSAGE or POST: rate buckets and in-flight windows.
    pub(crate) senders: HashMap<u32, messages::Sender>,
    /// Topics with presence subscribers here.
    pub(crate) watches: presence::Watches,
    pub(crate) presence_due_ms: u64,
    /// Tickets of the send being started (scratch).
    pub(crate) tickets: Vec<u64>,
    /// A drain's GOAWAYs still to send: (when, slot, generation), latest first.
    pub(crate) drain_plan: Vec<(u64, u32, u32)>,
    /// WebSocket connections' transport state.
    pub(crate) ws: HashMap<u32, websocket::WsConn>,
    /// WebSocket frame headers by length, shared.
    pub(crate) ws_headers: websocket::Headers,
    /// Entries of the send being started (scratch).
    pub(crate) entries: Vec<outbox::Entry>,
    /// TLS connections' sessions.
    pub(crate) tls: HashMap<u32, tls::TlsConn>,
    /// Every shard's load, for handing off connections over the cap (none: a lone shard).
    pub(crate) placement: Option<Arc<placement::Placement>>,
    rng: u64,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// How often shard-wide housekeeping runs (a relay's epoch change), ms.
const HOUSEKEEPING_MS: u64 = 1_000;

impl Shard {
    /// A shard with no connections. `seed` randomises its reconnect jitter.
    pub fn new(cfg: Arc<CoreConfig>, registry: Arc<Registry>, seed: u64) -> Self {
        // Per-slot tables are sized for every slot up front: the kernel hands out direct
        // descriptor slots round-robin, so under churn every slot gets used sooner or later,
        // and their memory is a fixed cost of the engine rather than something a burst of
        // connections (or an attack) adds.
        let slots = cfg.max_connections + 64;
        let mut table = Vec::new();
        table.resize_with(slots, Slot::default);
        let accept_tokens = cfg.accept_rate as f64;
        let mut shard = Shard {
            cfg,
            registry,
            slots: table,
            index: SubIndex::with_slots(slots),
            relays: Vec::new(),
            ready: VecDeque::new(),
            out: VecDeque::new(),
            timers: Deadlines::default(),
            stats: CoreStats::default(),
            total_outbox: 0,
            inbound_bytes: 0,
            token_cache: TokenCache::default(),
            heartbeat_frame: Frame::Heartbeat.to_bytes().expect("heartbeat encodes"),
            shutting_down: false,
            overflowed: Vec::new(),
            housekeeping_ms: HOUSEKEEPING_MS,
            accept_tokens: 0.0,
            accept_refill_ms: 0,
            id: 0,
            backends: Vec::new(),
            backend_links: HashMap::new(),
            senders: HashMap::new(),
            watches: HashMap::new(),
            presence_due_ms: 0,
            tickets: Vec::new(),
            drain_plan: Vec::new(),
            ws: HashMap::new(),
            ws_headers: websocket::Headers::default(),
            entries: Vec::new(),
            tls: HashMap::new(),
            placement: None,
            rng: seed | 1,
        };
        shard.accept_tokens = accept_tokens;
        shard
    }

    /// Numbers this shard (0..=255; session ids carry it, so a REPLY finds its session).
    pub fn with_id(mut self, id: u8) -> Self {
        self.id = id;
        self
    }

    /// Shares `placement` with the server's other shards: over its cap this shard hands new
    /// connections to the least loaded shard with room instead of refusing them.
    pub fn with_placement(mut self, placement: Arc<placement::Placement>) -> Self {
        self.placement = Some(placement);
        self
    }

    /// Publishes this shard's load to the placement.
    pub(crate) fn publish_load(&self) {
        if let Some(p) = &self.placement {
            p.set_load(self.id as usize, self.stats.connections as u32);
        }
    }

    /// Takes one admission from the accept token bucket (refilled at `accept_rate` per second,
    /// holding at most a second's worth).
    pub(crate) fn admit(&mut self, now: Now) -> bool {
        let rate = self.cfg.accept_rate as f64;
        if rate == 0.0 {
            return true;
        }
        let dt = now.ms.saturating_sub(self.accept_refill_ms) as f64 / 1000.0;
        self.accept_refill_ms = now.ms;
        self.accept_tokens = (self.accept_tokens + dt * rate).min(rate);
        if self.accept_tokens >= 1.0 {
            self.accept_tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A reconnect hint for a connection turned away: `goaway_base_ms` plus a random share of
    /// `goaway_jitter_ms`, so refused clients come back spread out.
    pub(crate) fn retry_hint(&mut self) -> u32 {
        let jitter = (self.next_rand() % (self.cfg.goaway_jitter_ms as u64 + 1)) as u32;
        self.cfg.goaway_base_ms + jitter
    }

    /// Counters, with the gauges filled in.
    pub fn stats(&self) -> CoreStats {
        let mut s = self.stats;
        s.subscriptions = self.index.total() as u64;
        s.outbox_bytes = self.total_outbox as u64;
        s.relay_links = self.relays.len() as u64;
        s.inbound_bytes = self.inbound_bytes as u64;
        s.tokens_verified = self.token_cache.verified;
        s.ws_connections = self.ws.len() as u64;
        s.tls_connections = self.tls.len() as u64;
        s
    }

    /// Deliveries queued so far (the driver bounds them per round).
    pub fn deliveries(&self) -> u64 {
        self.stats.deliveries
    }

    /// The settings.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// The shared topic registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Connection slots in use (open, draining or closing).
    pub fn connections(&self) -> usize {
        self.stats.connections as usize
    }

    /// Queued outbox bytes of a slot (tests, diagnostics).
    pub fn outbox_bytes(&self, slot: u32) -> usize {
        self.conn(slot).map_or(0, |c| c.outbox.bytes())
    }

    /// The state of a slot (tests, diagnostics).
    pub fn slot_state(&self, slot: u32) -> SlotState {
        self.slots
            .get(slot as usize)
            .map_or(SlotState::Free, |s| s.public_state())
    }

    pub(crate) fn next_rand(&mut self) -> u64 {
        // xorshift64*: reconnect jitter only, no need for a crypto RNG.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    // -----------------------------------------------------------------------------------------
    // The driver's interface
    // -----------------------------------------------------------------------------------------

    /// Feeds one input.
    pub fn handle(&mut self, input: Input<'_>, now: Now) {
        match input {
            Input::Accepted { slot } => self.on_accepted(slot, now, false),
            Input::HandedIn { slot } => self.on_accepted(slot, now, true),
            Input::HandedOff(t, ok) => self.on_handed_off(t, ok, now),
            Input::Received(t, data) => {
                if self.is_current(t) {
                    self.on_wire_bytes(t.slot, data, now);
                }
            }
            Input::RecvEnded(t, result) => self.on_recv_ended(t, result),
            Input::SendDone(t) => self.on_send_end(t, true, now),
            Input::SendFailed(t) => self.on_send_end(t, false, now),
            Input::Closed(t) => self.on_closed(t),
            Input::Update(m) => self.on_update(m, now),
            Input::Resync => self.resync(now),
            Input::Control(m) => self.on_control(m.clone()),
            Input::ControlRefused(m) => self.on_control_refused(m.clone()),
            Input::Published { origin, seq } => self.on_published(origin, seq),
        }
    }

    /// The next thing to do besides transmits, in the order the shard decided them.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next gathered send: fills `frames` (at most `max_frames_per_send`) with the next
    /// ready connection's queued frames and returns its token, or `None` when no connection
    /// has frames and no send in flight. The frames are shared (`Bytes`): a send holds them
    /// until its completion.
    pub fn poll_transmit(&mut self, now: Now, frames: &mut Vec<Bytes>) -> Option<Token> {
        while let Some(slot) = self.ready.pop_front() {
            if let Some(t) = self.start_send(slot, now, frames) {
                return Some(t);
            }
        }
        None
    }

    /// True while connections wait to transmit.
    pub fn has_transmits(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The earliest deadline (ms on the monotonic clock) at which [`Shard::handle_timeout`]
    /// has work; `None` when nothing is timed.
    pub fn poll_timeout(&self) -> Option<u64> {
        let h = if self.relays.is_empty() {
            None
        } else {
            Some(self.housekeeping_ms)
        };
        let d = self.drain_plan.last().map(|&(at, _, _)| at);
        [self.timers.next(), h, self.presence_deadline(), d]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time passed: runs every deadline due at `now` (handshake and heartbeat timeouts,
    /// heartbeats, write timeouts, frame timeouts, drain deadlines, token expiry).
    pub fn handle_timeout(&mut self, now: Now) {
        if now.ms >= self.housekeeping_ms {
            self.housekeeping_ms = now.ms + HOUSEKEEPING_MS;
            self.check_relay_epochs(now);
        }
        if self.presence_deadline().is_some_and(|d| now.ms >= d) {
            self.presence_tick(now);
        }
        if !self.drain_plan.is_empty() {
            self.drain_due(now);
        }
        while let Some((deadline, slot, generation)) = self.timers.pop_due(now.ms) {
            self.on_deadline(slot, generation, deadline, now);
        }
    }

    /// Graceful shutdown: GOAWAY with a jittered reconnect hint to every connection, then close
    /// each once flushed (or at the drain deadline). New connections are refused.
    pub fn begin_shutdown(&mut self, now: Now) {
        self.shutting_down = true;
        for slot in 0..self.slots.len() as u32 {
            match self.conn(slot).map(|c| c.phase) {
                Some(slot::Phase::Active(_)) => {
                    let after = self.retry_hint();
                    self.go_away(
                        slot,
                        yorker_wire::ErrorCode::ShuttingDown,
                        after,
                        "server shutting down",
                        now,
                    );
                }
                Some(slot::Phase::AwaitHello) => self.abort(slot),
                _ => {}
            }
        }
    }

    /// Lame-duck drain: new connections are refused, and every connection gets its GOAWAY
    /// (`shutting_down`, a short jittered hint) at a random moment within the next `over_ms`,
    /// so that a node is evacuated without a reconnect herd; each closes once flushed.
    pub fn begin_drain(&mut self, now: Now, over_ms: u64) {
        if over_ms == 0 {
            return self.begin_shutdown(now);
        }
        self.shutting_down = true;
        let mut plan = Vec::new();
        for slot in 0..self.slots.len() as u32 {
            match self.conn(slot).map(|c| c.phase) {
                Some(slot::Phase::Active(_)) => {
                    let at = now.ms + self.next_rand() % (over_ms + 1);
                    plan.push((at, slot, self.slots[slot as usize].generation));
                }
                Some(slot::Phase::AwaitHello) => self.abort(slot),
                _ => {}
            }
        }
        // Latest first: the next due is popped from the end.
        plan.sort_unstable_by(|a, b| b.cmp(a));
        self.drain_plan = plan;
    }

    /// Sends the GOAWAYs of the drain that are due.
    fn drain_due(&mut self, now: Now) {
        while self
            .drain_plan
            .last()
            .is_some_and(|&(at, _, _)| at <= now.ms)
        {
            let (_, slot, generation) = self.drain_plan.pop().expect("checked");
            if self.slots[slot as usize].generation != generation {
                continue;
            }
            if matches!(
                self.conn(slot).map(|c| c.phase),
                Some(slot::Phase::Active(_))
            ) {
                let after = self.retry_hint();
                self.go_away(
                    slot,
                    yorker_wire::ErrorCode::ShuttingDown,
                    after,
                    "server draining: reconnect (to another node)",
                    now,
                );
            }
        }
    }

    /// True once shutdown began and every slot is free again.
    pub fn shutdown_complete(&self) -> bool {
        self.shutting_down && self.stats.connections == 0
    }

    /// True when `t` names the current occupant of a live slot.
    fn is_current(&self, t: Token) -> bool {
        self.slots
            .get(t.slot as usize)
            .is_some_and(|s| s.generation == t.generation && matches!(s.state, State::Live(_)))
    }
}

/// Compares secrets without an early exit that would leak their common prefix length.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
