//! The client side of the protocol as one sans-IO state machine: handshake, subscriptions with
//! resume, snapshot and RESET handling, gap detection, keep-alives, server silence, GOAWAY
//! hints and reconnects with full-jitter backoff. It owns no socket and reads no clock: the
//! caller feeds it bytes, connection events and `now` (ms on any monotonic clock), writes what
//! [`ClientSession::poll_transmit`] returns, and reads [`ClientEvent`]s. Every yorker client
//! (the load generator, a relay's upstream link, the tests, the SDKs) wraps this one.
//!
//! ```text
//!  Idle ──connect()/retry due──► (adapter opens a socket) ──on_connected──► Handshake
//!   ▲                                                                          │ WELCOME
//!   │ on_disconnected / GOAWAY / ERROR / silence: Disconnected{retry_in}       ▼
//!   └──────────────────────────────────────────────────────────────────────  Open
//! ```
//!
//! docs/CLIENTS.md describes the same machine for implementers in other languages.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::codec::Decoder;
use crate::error::ErrorCode;
use crate::frame::*;

/// How a session connects and retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `client_name` in HELLO.
    pub name: String,
    /// The role to ask for.
    pub role: Role,
    /// The key or token to present (empty: anonymous).
    pub token: String,
    /// Highest protocol version to offer (a token longer than 255 bytes needs 2).
    pub version: u16,
    /// First reconnect delay ceiling, ms; doubles per failed attempt (full jitter below it).
    pub backoff_base_ms: u64,
    /// Largest reconnect delay, ms.
    pub backoff_max_ms: u64,
    /// WELCOME must arrive within this many ms of the connection opening.
    pub handshake_timeout_ms: u64,
    /// Seed of the jitter (give every client its own).
    pub seed: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            name: "yorker-client".into(),
            role: Role::Subscriber,
            token: String::new(),
            version: PROTOCOL_VERSION,
            backoff_base_ms: 250,
            backoff_max_ms: 30_000,
            handshake_timeout_ms: 5_000,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disconnect {
    /// The connection closed or failed (EOF, reset, unreachable).
    ConnectionLost,
    /// The server said GOAWAY: reconnect after its hint.
    GoAway {
        /// The reason code.
        code: u16,
        /// The server's reconnect hint, ms.
        after_ms: u32,
    },
    /// The server sent ERROR and closed.
    Error {
        /// The error code (see [`ErrorCode`]).
        code: u16,
        /// The server's message.
        message: String,
    },
    /// Nothing from the server for three heartbeat intervals (a dead server or a stalled
    /// proxy).
    ServerSilent,
    /// No WELCOME in time after the connection opened.
    HandshakeTimeout,
    /// The server sent something this client cannot decode.
    Protocol(String),
    /// The application asked for a reconnect now (network change, app resumed).
    Requested,
    /// The application closed the session.
    Closed,
}

impl Disconnect {
    /// True when retrying cannot help without a change (a refused key or token, a version the
    /// server does not speak).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Disconnect::Error { code, .. }
            if [ErrorCode::AuthFailed as u16, ErrorCode::UnsupportedVersion as u16].contains(code))
    }
}

/// What happened, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// WELCOME: the session is open.
    Connected {
        /// The server's session id (quote it in support requests).
        session_id: u64,
        /// The server epoch.
        epoch: u64,
        /// The negotiated version.
        version: u16,
    },
    /// A subscription was answered (`index` as returned by [`ClientSession::subscribe`]).
    Subscribed {
        /// The subscription.
        index: usize,
        /// The SUBACK result (`resumed`: only the missed updates follow).
        result: SubResult,
    },
    /// An update of a subscription: its snapshot, a replayed or a live update. `skipped`
    /// counts updates conflated away before it (0 on a NO_CONFLATE subscription).
    Update {
        /// The subscription.
        index: usize,
        /// The update (its payload is a zero-copy slice of the received bytes).
        update: Update,
        /// Updates skipped by conflation just before this one.
        skipped: u64,
    },
    /// The topic's state was lost (a resume was impossible, or the server restarted): this
    /// update replaces everything the client held for it.
    Reset {
        /// The subscription.
        index: usize,
        /// The new state.
        update: Update,
    },
    /// An update of a topic id this session did not subscribe to: a broadcast, or any update
    /// on a relay-role session.
    Unsubscribed(Update),
    /// Relay sessions: the name of a topic id.
    Topic {
        /// The id.
        id: u32,
        /// The name.
        name: String,
    },
    /// A SUBACK for a SUBSCRIBE sent with [`ClientSession::send`] (not through
    /// [`ClientSession::subscribe`]): a relay's catch-up request (docs/PROTOCOL.md §2.5).
    Answered(SubAck),
    /// Relay sessions: the snapshot of every topic is complete.
    Synced {
        /// Topics in it.
        topics: u32,
        /// The server epoch.
        epoch: u64,
        /// The server's feed position at the snapshot.
        feed_seq: u64,
    },
    /// The token in HELLO or AUTH was accepted.
    AuthOk {
        /// Its expiry, seconds since the Unix epoch.
        expires_at_s: u64,
    },
    /// A PONG for a PING of [`ClientSession::ping`].
    Pong {
        /// Its nonce.
        nonce: u64,
    },
    /// The session ended. `retry_in_ms`: when the next attempt happens (`None`: it will not,
    /// a fatal refusal or [`ClientSession::close`]).
    Disconnected {
        /// Why.
        reason: Disconnect,
        /// Delay before the next attempt.
        retry_in_ms: Option<u64>,
    },
}

/// One subscription as the session tracks it across reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Topic name.
    pub topic: String,
    /// Conflation on (the default) or off.
    pub conflate: bool,
    /// The topic id in the current session (0 until its SUBACK).
    pub id: u32,
    /// Epoch and seq of the last update held, for resume (seq 0: nothing yet).
    pub epoch: u64,
    /// The last sequence number held.
    pub seq: u64,
    /// Updates that arrived out of sequence on a NO_CONFLATE subscription (a server bug).
    pub gaps: u64,
    /// Updates at or below the last sequence number held, without RESET (a server bug);
    /// dropped.
    pub duplicates: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No connection; the next attempt is due at `retry_at` (None: not connecting).
    Idle { retry_at: Option<u64> },
    /// The adapter is opening a connection (asked by [`ClientSession::poll_connect`]).
    Connecting,
    /// Connected, HELLO sent, waiting for WELCOME since `since`.
    Handshake { since: u64 },
    /// WELCOME received.
    Open,
    /// Closed by the application.
    Closed,
}

/// The client session. See the module documentation.
#[derive(Debug)]
pub struct ClientSession {
    cfg: ClientConfig,
    phase: Phase,
    dec: Decoder,
    out: BytesMut,
    subs: Vec<Subscription>,
    ids: HashMap<u32, usize>,
    /// Request id -> the subscriptions it carried (SUBSCRIBE) in order.
    requests: HashMap<u32, Vec<usize>>,
    next_request: u32,
    events: VecDeque<ClientEvent>,
    epoch: Option<u64>,
    heartbeat_ms: u64,
    last_rx: u64,
    last_tx: u64,
    attempts: u32,
    rng: u64,
    goaway: Option<(u16, u32)>,
}

impl ClientSession {
    /// A session that connects at the first [`ClientSession::poll_connect`].
    pub fn new(cfg: ClientConfig) -> Self {
        let rng = cfg.seed | 1;
        ClientSession {
            cfg,
            phase: Phase::Idle { retry_at: Some(0) },
            dec: Decoder::new(HANDSHAKE_MAX_FRAME),
            out: BytesMut::new(),
            subs: Vec::new(),
            ids: HashMap::new(),
            requests: HashMap::new(),
            next_request: 1,
            events: VecDeque::new(),
            epoch: None,
            heartbeat_ms: 15_000,
            last_rx: 0,
            last_tx: 0,
            attempts: 0,
            rng,
            goaway: None,
        }
    }

    /// The subscriptions, by index.
    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subs
    }

    /// The server epoch of the current (or last) session.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// True while the session is open (WELCOME received).
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// True while the session uses a connection (being opened, handshaking or open): once it
    /// is false the adapter closes its socket (the session ended it: server silent, handshake
    /// timeout, a protocol error, [`ClientSession::close`]).
    pub fn wants_connection(&self) -> bool {
        matches!(
            self.phase,
            Phase::Connecting | Phase::Handshake { .. } | Phase::Open
        )
    }

    /// Subscribes to `topic` (now if open, otherwise at the next connection) and returns its
    /// index. After a reconnect every subscription is renewed with RESUME from the last update
    /// held.
    pub fn subscribe(&mut self, topic: &str, conflate: bool) -> usize {
        if let Some(i) = self.subs.iter().position(|s| s.topic == topic) {
            return i;
        }
        self.subs.push(Subscription {
            topic: topic.into(),
            conflate,
            id: 0,
            epoch: 0,
            seq: 0,
            gaps: 0,
            duplicates: 0,
        });
        let i = self.subs.len() - 1;
        // During the handshake too: HELLO is out, and frames may follow it at once (a
        // subscription added then would otherwise wait for the next connection).
        if matches!(self.phase, Phase::Open | Phase::Handshake { .. }) {
            self.send_subscribe(&[i]);
        }
        i
    }

    /// Queues a PING (answered by [`ClientEvent::Pong`]).
    pub fn ping(&mut self, nonce: u64) {
        self.queue(&Frame::Ping { nonce });
    }

    /// Queues any client frame (PUBLISH for a publisher, AUTH to refresh a token).
    pub fn send(&mut self, frame: &Frame) -> Result<(), crate::EncodeError> {
        frame.encode(&mut self.out)
    }

    /// Replaces the token presented at the next HELLO (and sends AUTH now if open on v2).
    pub fn set_token(&mut self, token: &str) {
        self.cfg.token = token.into();
        if self.phase == Phase::Open && self.cfg.version >= 2 {
            self.queue(&Frame::Auth {
                token: token.into(),
            });
        }
    }

    /// The application closes the session: no reconnect.
    pub fn close(&mut self) {
        if self.phase != Phase::Closed {
            self.end(Disconnect::Closed, None);
            self.phase = Phase::Closed;
        }
    }

    /// The network changed or the app came back to the foreground: drop the connection if
    /// there is one and connect again now, without waiting for a backoff.
    pub fn reconnect_now(&mut self, now: u64) {
        match self.phase {
            Phase::Closed => {}
            Phase::Idle { .. } => {
                self.phase = Phase::Idle {
                    retry_at: Some(now),
                }
            }
            _ => {
                self.end(Disconnect::Requested, Some(0));
                self.phase = Phase::Idle {
                    retry_at: Some(now),
                };
            }
        }
    }

    /// True when the adapter should open a connection now (then call
    /// [`ClientSession::on_connected`], or [`ClientSession::on_disconnected`] if it failed).
    /// At most one connection at a time: it answers true once per attempt.
    pub fn poll_connect(&mut self, now: u64) -> bool {
        match self.phase {
            Phase::Idle { retry_at: Some(at) } if now >= at => {
                self.phase = Phase::Connecting;
                true
            }
            _ => false,
        }
    }

    /// The adapter's connection is open: HELLO goes out, and SUBSCRIBE for every subscription
    /// (pipelined before WELCOME, with RESUME where the session holds a position).
    pub fn on_connected(&mut self, now: u64) {
        self.phase = Phase::Handshake { since: now };
        self.dec = Decoder::new(HANDSHAKE_MAX_FRAME);
        self.out.clear();
        self.ids.clear();
        self.requests.clear();
        self.goaway = None;
        self.last_rx = now;
        self.last_tx = now;
        let version = if self.cfg.token.len() > 255 {
            self.cfg.version.max(2)
        } else {
            self.cfg.version
        };
        self.queue(&Frame::Hello(Hello {
            version,
            role: self.cfg.role,
            client_name: self.cfg.name.clone(),
            token: self.cfg.token.clone(),
        }));
        let all: Vec<usize> = (0..self.subs.len()).collect();
        if !all.is_empty() {
            self.send_subscribe(&all);
        }
    }

    /// The adapter's connection ended (EOF, error, or failed to open).
    pub fn on_disconnected(&mut self, now: u64) {
        if matches!(self.phase, Phase::Idle { .. } | Phase::Closed) {
            return;
        }
        let reason = match self.goaway {
            Some((code, after_ms)) => Disconnect::GoAway { code, after_ms },
            None => Disconnect::ConnectionLost,
        };
        self.disconnect(reason, now);
    }

    /// Bytes to write on the connection (empty when there is nothing).
    pub fn poll_transmit(&mut self, now: u64) -> Bytes {
        if !self.out.is_empty() {
            self.last_tx = now;
        }
        self.out.split().freeze()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`ClientSession::handle_timeout`] has work next (ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.phase {
            Phase::Idle { retry_at } => retry_at,
            Phase::Handshake { since } => Some(since + self.cfg.handshake_timeout_ms),
            Phase::Open => Some(
                (self.last_tx + self.heartbeat_ms / 2).min(self.last_rx + 3 * self.heartbeat_ms),
            ),
            Phase::Connecting | Phase::Closed => None,
        }
    }

    /// Time passed: keep-alives (a PING when nothing was sent for half an interval), server
    /// silence (three intervals), handshake timeout.
    pub fn handle_timeout(&mut self, now: u64) {
        match self.phase {
            Phase::Handshake { since } if now >= since + self.cfg.handshake_timeout_ms => {
                self.disconnect(Disconnect::HandshakeTimeout, now);
            }
            Phase::Open => {
                if now >= self.last_rx + 3 * self.heartbeat_ms {
                    self.disconnect(Disconnect::ServerSilent, now);
                } else if now >= self.last_tx + self.heartbeat_ms / 2 {
                    self.queue(&Frame::Ping { nonce: now });
                    self.last_tx = now;
                }
            }
            _ => {}
        }
    }

    /// Bytes received on the connection.
    pub fn handle_bytes(&mut self, data: &[u8], now: u64) {
        if !matches!(self.phase, Phase::Handshake { .. } | Phase::Open) {
            return;
        }
        self.last_rx = now;
        self.dec.feed(data);
        loop {
            match self.dec.next_frame() {
                Ok(Some(f)) => self.on_frame(f, now),
                Ok(None) => return,
                Err(e) => {
                    self.disconnect(Disconnect::Protocol(e.to_string()), now);
                    return;
                }
            }
            if !matches!(self.phase, Phase::Handshake { .. } | Phase::Open) {
                return;
            }
        }
    }

    fn on_frame(&mut self, f: Frame, now: u64) {
        match f {
            Frame::Welcome(w) => {
                self.phase = Phase::Open;
                self.attempts = 0;
                self.heartbeat_ms = (w.heartbeat_ms as u64).max(100);
                self.dec.set_max_frame(w.limits.max_frame);
                self.epoch = Some(w.epoch);
                self.events.push_back(ClientEvent::Connected {
                    session_id: w.session_id,
                    epoch: w.epoch,
                    version: w.version,
                });
            }
            Frame::SubAck(a) => {
                let Some(indices) = self.requests.remove(&a.request_id) else {
                    if a.request_id != 0 {
                        self.events.push_back(ClientEvent::Answered(a));
                        return;
                    }
                    // Request id 0: subscriptions a refreshed token revoked.
                    for e in a.entries {
                        if let Some(i) = self.ids.remove(&e.topic_id) {
                            self.subs[i].id = 0;
                            self.events.push_back(ClientEvent::Subscribed {
                                index: i,
                                result: e.result,
                            });
                        }
                    }
                    return;
                };
                for (i, e) in indices.into_iter().zip(a.entries) {
                    if e.result.is_subscribed() {
                        self.subs[i].id = e.topic_id;
                        self.ids.insert(e.topic_id, i);
                        if e.result == SubResult::Ok
                            && self.subs[i].epoch != self.epoch.unwrap_or(0)
                        {
                            // A fresh subscription: the snapshot (if any) follows.
                            self.subs[i].seq = 0;
                        }
                    }
                    self.events.push_back(ClientEvent::Subscribed {
                        index: i,
                        result: e.result,
                    });
                }
            }
            Frame::Update(u) => self.on_update(u),
            Frame::Heartbeat => {}
            Frame::Pong { nonce } => self.events.push_back(ClientEvent::Pong { nonce }),
            Frame::AuthOk { expires_at_s, .. } => {
                self.events.push_back(ClientEvent::AuthOk { expires_at_s })
            }
            Frame::Topic { topic_id, name } => self
                .events
                .push_back(ClientEvent::Topic { id: topic_id, name }),
            Frame::Synced {
                topics,
                epoch,
                feed_seq,
            } => self.events.push_back(ClientEvent::Synced {
                topics,
                epoch,
                feed_seq,
            }),
            Frame::GoAway(g) => {
                // What is still queued follows; the server closes after it.
                self.goaway = Some((g.code, g.reconnect_after_ms));
            }
            Frame::Error(e) => {
                // The server closes right after; this is the reason.
                let reason = Disconnect::Error {
                    code: e.code,
                    message: e.message,
                };
                self.disconnect(reason, now);
            }
            other => {
                let why = format!("{} is not a server frame", other.name());
                self.disconnect(Disconnect::Protocol(why), now)
            }
        }
    }

    fn on_update(&mut self, u: Update) {
        let Some(&i) = self.ids.get(&u.topic_id) else {
            self.events.push_back(ClientEvent::Unsubscribed(u));
            return;
        };
        let epoch = self.epoch.unwrap_or(0);
        let s = &mut self.subs[i];
        if u.flags & update_flags::RESET != 0 {
            s.seq = u.seq;
            s.epoch = epoch;
            self.events.push_back(ClientEvent::Reset {
                index: i,
                update: u,
            });
            return;
        }
        if u.seq <= s.seq && s.epoch == epoch {
            // A duplicate or a step back cannot come from a conforming server: count and drop.
            s.duplicates += 1;
            return;
        }
        let skipped = if s.seq > 0 && s.epoch == epoch && u.flags & update_flags::SNAPSHOT == 0 {
            u.seq - s.seq - 1
        } else {
            0
        };
        if skipped > 0 && !s.conflate {
            s.gaps += 1;
        }
        s.seq = u.seq;
        s.epoch = epoch;
        self.events.push_back(ClientEvent::Update {
            index: i,
            update: u,
            skipped,
        });
    }

    fn send_subscribe(&mut self, indices: &[usize]) {
        let epoch = self.epoch.unwrap_or(0);
        for chunk in indices.chunks(64) {
            let request_id = self.next_request;
            self.next_request = self.next_request.wrapping_add(1).max(1);
            let entries = chunk
                .iter()
                .map(|&i| {
                    let s = &self.subs[i];
                    SubscribeEntry {
                        topic: s.topic.clone(),
                        resume: (s.seq > 0).then_some(ResumeFrom {
                            epoch: if s.epoch != 0 { s.epoch } else { epoch },
                            seq: s.seq,
                        }),
                        conflate: s.conflate,
                        presence: false,
                    }
                })
                .collect();
            self.requests.insert(request_id, chunk.to_vec());
            self.queue(&Frame::Subscribe(Subscribe {
                request_id,
                entries,
            }));
        }
    }

    fn queue(&mut self, f: &Frame) {
        // Frames built here always encode (names come from the application: a name too long
        // for a str8 would be refused by the server anyway).
        let _ = f.encode(&mut self.out);
    }

    /// Ends the session and schedules the next attempt.
    fn disconnect(&mut self, reason: Disconnect, now: u64) {
        if reason.is_fatal() {
            self.end(reason, None);
            self.phase = Phase::Idle { retry_at: None };
            return;
        }
        let delay = match &reason {
            // The server spread its hints already; add a little so clients of one GOAWAY
            // batch with equal hints do not line up again.
            Disconnect::GoAway { after_ms, .. } => {
                *after_ms as u64 + self.jitter(self.cfg.backoff_base_ms)
            }
            Disconnect::Requested => 0,
            _ => {
                let cap = self
                    .cfg
                    .backoff_base_ms
                    .saturating_mul(1 << self.attempts.min(20))
                    .min(self.cfg.backoff_max_ms);
                self.attempts = self.attempts.saturating_add(1);
                self.jitter(cap)
            }
        };
        self.end(reason, Some(delay));
        self.phase = Phase::Idle {
            retry_at: Some(now + delay),
        };
    }

    fn end(&mut self, reason: Disconnect, retry_in_ms: Option<u64>) {
        self.out.clear();
        self.ids.clear();
        self.requests.clear();
        for s in &mut self.subs {
            s.id = 0;
        }
        self.events.push_back(ClientEvent::Disconnected {
            reason,
            retry_in_ms,
        });
    }

    /// Full jitter: uniform in 0..=cap.
    fn jitter(&mut self, cap: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % (cap + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode_update, Decoder};

    #[test]
    fn a_subscription_added_during_the_handshake_is_sent_at_once() {
        let mut s = ClientSession::new(ClientConfig::default());
        assert!(s.poll_connect(0));
        s.on_connected(0);
        let _hello = s.poll_transmit(0);
        s.subscribe("late", true);
        let mut d = Decoder::new(crate::MAX_MAX_FRAME);
        d.feed(&s.poll_transmit(1));
        match d.next_frame().unwrap() {
            Some(Frame::Subscribe(sub)) => assert_eq!(sub.entries[0].topic, "late"),
            other => panic!("expected SUBSCRIBE, got {other:?}"),
        }
    }

    fn server_frames(s: &mut ClientSession, now: u64) -> Vec<Frame> {
        let b = s.poll_transmit(now);
        let mut d = Decoder::new(MAX_MAX_FRAME);
        d.feed(&b);
        let mut out = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            out.push(f);
        }
        out
    }

    fn welcome(epoch: u64) -> Vec<u8> {
        Frame::Welcome(Welcome {
            version: 2,
            session_id: 1,
            epoch,
            heartbeat_ms: 1000,
            limits: Limits {
                max_frame: 65_536,
                max_subscriptions: 64,
                outbox_limit: 1 << 18,
            },
        })
        .to_bytes()
        .unwrap()
        .to_vec()
    }

    fn suback(req: u32, entries: &[(SubResult, u32, u64)]) -> Vec<u8> {
        Frame::SubAck(SubAck {
            request_id: req,
            entries: entries
                .iter()
                .map(|&(result, topic_id, seq)| SubAckEntry {
                    result,
                    topic_id,
                    seq,
                })
                .collect(),
        })
        .to_bytes()
        .unwrap()
        .to_vec()
    }

    fn events(s: &mut ClientSession) -> Vec<ClientEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    #[test]
    fn handshake_subscribe_snapshot_live_and_resume_after_a_drop() {
        let mut s = ClientSession::new(ClientConfig::default());
        let m = s.subscribe("match/1", false);
        assert!(s.poll_connect(0));
        assert!(!s.poll_connect(0), "one attempt at a time");
        s.on_connected(0);
        let sent = server_frames(&mut s, 0);
        assert!(matches!(&sent[0], Frame::Hello(h) if h.role == Role::Subscriber));
        assert!(matches!(&sent[1], Frame::Subscribe(r) if r.entries[0].resume.is_none()));
        let mut input = welcome(7);
        input.extend(suback(1, &[(SubResult::Ok, 3, 5)]));
        input.extend_from_slice(&encode_update(3, 5, 0, update_flags::SNAPSHOT, b"s"));
        input.extend_from_slice(&encode_update(3, 6, 0, 0, b"live"));
        // Split anywhere.
        for chunk in input.chunks(7) {
            s.handle_bytes(chunk, 1);
        }
        let ev = events(&mut s);
        assert!(matches!(ev[0], ClientEvent::Connected { epoch: 7, .. }));
        assert!(
            matches!(ev[1], ClientEvent::Subscribed { index, result: SubResult::Ok } if index == m)
        );
        assert!(
            matches!(&ev[2], ClientEvent::Update { update, skipped: 0, .. } if update.seq == 5)
        );
        assert!(
            matches!(&ev[3], ClientEvent::Update { update, .. } if &update.payload[..] == b"live")
        );
        assert_eq!(s.subscriptions()[m].seq, 6);
        // The connection drops: backoff with jitter, then HELLO + SUBSCRIBE with RESUME 7/6.
        s.on_disconnected(10);
        let ev = events(&mut s);
        let ClientEvent::Disconnected {
            reason: Disconnect::ConnectionLost,
            retry_in_ms: Some(d),
        } = ev[0]
        else {
            panic!("{ev:?}")
        };
        assert!(d <= 250);
        assert!(!s.poll_connect(10 + d - 1) || d == 0);
        assert!(s.poll_connect(10 + d));
        s.on_connected(20 + d);
        let sent = server_frames(&mut s, 20 + d);
        let Frame::Subscribe(r) = &sent[1] else {
            panic!()
        };
        assert_eq!(r.entries[0].resume, Some(ResumeFrom { epoch: 7, seq: 6 }));
    }

    #[test]
    fn gaps_resets_goaway_hints_and_silence() {
        let mut s = ClientSession::new(ClientConfig::default());
        let c = s.subscribe("odds", true);
        let n = s.subscribe("bets", false);
        assert!(s.poll_connect(0));
        s.on_connected(0);
        s.poll_transmit(0);
        let mut input = welcome(1);
        input.extend(suback(1, &[(SubResult::Ok, 1, 0), (SubResult::Ok, 2, 0)]));
        for (id, seq, flags) in [(1, 1, 0), (1, 4, 0), (2, 1, 0), (2, 3, 0), (2, 9, 12)] {
            input.extend_from_slice(&encode_update(id, seq, 0, flags, b"x"));
        }
        s.handle_bytes(&input, 1);
        let ev = events(&mut s);
        assert!(matches!(ev[4], ClientEvent::Update { index, skipped: 2, .. } if index == c));
        assert_eq!(
            s.subscriptions()[c].gaps,
            0,
            "a conflated skip is not a gap"
        );
        assert_eq!(
            s.subscriptions()[n].gaps,
            1,
            "a gap on NO_CONFLATE is counted"
        );
        assert!(
            matches!(&ev[7], ClientEvent::Reset { index, update } if *index == n && update.seq == 9)
        );
        // Keep-alive after half an interval of sending nothing; silence after three.
        s.handle_timeout(600);
        assert!(matches!(server_frames(&mut s, 600)[0], Frame::Ping { .. }));
        s.handle_timeout(3_001);
        assert!(matches!(
            events(&mut s)[0],
            ClientEvent::Disconnected {
                reason: Disconnect::ServerSilent,
                ..
            }
        ));
        // GOAWAY: the reconnect waits at least the hint.
        assert!(s.poll_connect(100_000));
        s.on_connected(100_000);
        s.handle_bytes(&welcome(1), 100_001);
        let ga = Frame::GoAway(GoAway {
            code: 13,
            reconnect_after_ms: 2_500,
            message: "bye".into(),
        })
        .to_bytes()
        .unwrap();
        s.handle_bytes(&ga, 100_002);
        s.on_disconnected(100_003);
        let ev = events(&mut s);
        let Some(ClientEvent::Disconnected {
            reason: Disconnect::GoAway {
                after_ms: 2_500, ..
            },
            retry_in_ms: Some(d),
        }) = ev.last().cloned()
        else {
            panic!("{ev:?}")
        };
        assert!((2_500..=2_750).contains(&d));
        assert!(!s.poll_connect(100_003 + 2_499));
        // The app resumes from the background: reconnect now.
        s.reconnect_now(100_010);
        assert!(s.poll_connect(100_010));
    }

    #[test]
    fn refusals_are_final_and_backoff_spreads() {
        let mut s = ClientSession::new(ClientConfig::default());
        assert!(s.poll_connect(0));
        s.on_connected(0);
        let err = Frame::Error(ErrorFrame {
            code: ErrorCode::AuthFailed as u16,
            message: "token expired".into(),
        })
        .to_bytes()
        .unwrap();
        s.handle_bytes(&err, 1);
        assert!(matches!(
            events(&mut s)[0],
            ClientEvent::Disconnected {
                retry_in_ms: None,
                ..
            }
        ));
        assert!(!s.poll_connect(1_000_000), "no retry after auth_failed");
        // Full jitter: 1,000 clients failing at once pick (nearly) all different delays, and
        // the ceiling doubles per failed attempt up to the maximum.
        let mut delays = std::collections::HashSet::new();
        for seed in 0..1000u64 {
            let mut s = ClientSession::new(ClientConfig {
                seed: seed * 7919 + 1,
                backoff_base_ms: 1_000_000,
                backoff_max_ms: 1_000_000,
                ..ClientConfig::default()
            });
            s.poll_connect(0);
            s.on_disconnected(0);
            if let Some(ClientEvent::Disconnected {
                retry_in_ms: Some(d),
                ..
            }) = s.poll_event()
            {
                delays.insert(d);
            }
        }
        assert!(delays.len() > 990, "{} distinct delays", delays.len());
    }
}
