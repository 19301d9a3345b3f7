//! A connection's session: decoding its bytes, the handshake and authentication (HELLO, AUTH),
//! PING, PUBLISH, and which frame is allowed when.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use yorker_wire::codec::decode_one;
use yorker_wire::{
    frame::{HANDSHAKE_MAX_FRAME, PROTOCOL_VERSION, UPDATE_HEADER_LEN},
    topic, ErrorCode, Frame, Limits, Role, SubAck, SubAckEntry, SubResult, Welcome,
};

use super::auth::{Grant, Policy};
use super::slot::{live_mut, Phase};
use super::{constant_time_eq, Now, Output, PublishReq, Shard};

impl Shard {
    /// Bytes arrived on `slot` (a live connection).
    pub(crate) fn on_bytes(&mut self, slot: u32, data: &[u8], now: Now) {
        let Some(c) = self.conn_mut(slot) else {
            return;
        };
        if matches!(c.phase, Phase::Draining { .. }) {
            return; // ending: ignore input
        }
        c.last_rx_ms = now.ms as u32;
        let held = c.pending.as_ref().map_or(0, |b| b.capacity());
        let mut buf = c.pending.take().map(|b| *b).unwrap_or_default();
        self.inbound_bytes -= held;
        let was_partial = held > 0;
        buf.extend_from_slice(data);
        while let Some(c) = self.conn(slot) {
            let max = match c.phase {
                Phase::Draining { .. } => break,
                // The limit changes after HELLO, so it is read for every frame.
                Phase::AwaitHello => HANDSHAKE_MAX_FRAME.min(self.cfg.max_frame),
                Phase::Active(_) => self.cfg.max_frame,
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
        if buf.is_empty() {
            return;
        }
        let Some(c) = live_mut(&mut self.slots, slot) else {
            return;
        };
        if matches!(c.phase, Phase::Draining { .. }) {
            return;
        }
        // The deadline runs from the first byte of this partial frame: a client that completes
        // frames keeps its clock fresh, a dripping one does not.
        if !was_partial || buf.len() <= data.len() {
            c.partial_since_ms = now.ms as u32;
        }
        if buf.capacity() > 2 * buf.len() + 4096 {
            // Do not keep a large buffer around for a small tail.
            buf = BytesMut::from(&buf[..]);
        }
        self.inbound_bytes += buf.capacity();
        c.pending = Some(Box::new(buf));
        self.schedule(slot, now);
        self.enforce_inbound_cap(now);
    }

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
            (Some(Phase::Active(Role::Relay)), Frame::Subscribe(s)) => {
                self.relay_catch_up(slot, s, now)
            }
            (
                Some(Phase::Active(Role::Relay)),
                Frame::Publish(_) | Frame::Post(_) | Frame::Message(_) | Frame::PresenceGet { .. },
            ) => self.fail(
                slot,
                ErrorCode::UnexpectedFrame,
                "a relay receives every topic and may not publish",
                now,
            ),
            (
                Some(Phase::Active(role)),
                f @ (Frame::Message(_)
                | Frame::Post(_)
                | Frame::PresenceGet { .. }
                | Frame::Reply { .. }),
            ) => {
                if self.conn(slot).is_some_and(|c| c.version < 3) {
                    let msg = format!("{} needs protocol version 3", f.name());
                    return self.fail(slot, ErrorCode::UnexpectedFrame, &msg, now);
                }
                match f {
                    Frame::Message(m) => self.on_message(slot, role, m, now),
                    Frame::Post(p) => self.on_post(slot, role, p, now),
                    Frame::PresenceGet { request_id, topic } => {
                        self.on_presence_get(slot, request_id, &topic)
                    }
                    Frame::Reply {
                        session_id,
                        request_id,
                        payload,
                    } => self.on_reply(slot, role, session_id, request_id, payload, now),
                    _ => unreachable!("matched above"),
                }
            }
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
        if h.role == Role::Backend && version < 3 {
            return self.fail(
                slot,
                ErrorCode::UnsupportedVersion,
                "the backend role needs protocol version 3",
                now,
            );
        }
        let grant = match self.authenticate(h.role, &h.token, now) {
            Ok(g) => g,
            Err((code, why)) => {
                self.stats.auth_refused += 1;
                return self.fail(slot, code, &why, now);
            }
        };
        if h.role == Role::Relay && !self.registry.try_add_relay(self.cfg.max_relays) {
            self.stats.auth_refused += 1;
            return self.refuse(
                slot,
                ErrorCode::ServerFull,
                "relay connection limit reached (--max-relays)",
                now,
            );
        }
        let tag = self.registry.next_session_id() as u32;
        let session_id = super::messages::session_id(tag, self.id, slot);
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
        let c = self.conn_mut(slot).expect("live");
        c.phase = Phase::Active(h.role);
        c.version = version as u8;
        c.grant = grant;
        c.tag = tag;
        self.push_control(slot, welcome);
        if let Some(f) = auth_ok {
            self.push_control(slot, f);
        }
        if h.role == Role::Relay {
            self.start_relay(slot, now);
        }
        if h.role == Role::Backend {
            self.start_backend(slot);
        }
        self.schedule(slot, now);
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
            Role::Backend => self.cfg.backend_key.as_deref(),
            Role::Subscriber => None,
        };
        if key.is_some_and(|k| constant_time_eq(k.as_bytes(), token.as_bytes())) {
            return Ok(None);
        }
        let anonymous_relay = self.cfg.relay_key.is_none() && self.cfg.allow_anonymous_relays;
        if token.is_empty() {
            return match role {
                Role::Subscriber if self.cfg.policy.require_token => {
                    refuse("this server requires a token")
                }
                Role::Subscriber => Ok(None),
                Role::Relay if anonymous_relay => Ok(None),
                Role::Relay if self.cfg.relay_key.is_none() => {
                    refuse("this server accepts no relays (no --relay-key set)")
                }
                Role::Publisher if self.cfg.publisher_key.is_none() => {
                    refuse("this server accepts no publishers (no publisher key set)")
                }
                Role::Backend if self.cfg.backend_key.is_none() => {
                    refuse("this server accepts no backends (no --backend-key set)")
                }
                _ => refuse("a key or token is required for this role"),
            };
        }
        let Some(v) = self.cfg.tokens.clone() else {
            return match role {
                // Version 1 ignored subscribers' tokens; without --jwt-key they still are.
                Role::Subscriber => Ok(None),
                Role::Relay if anonymous_relay => Ok(None),
                Role::Publisher if self.cfg.publisher_key.is_none() => {
                    refuse("this server accepts no publishers (no publisher key set)")
                }
                Role::Publisher => refuse("wrong publisher key"),
                Role::Relay => refuse("wrong relay key"),
                Role::Backend if self.cfg.backend_key.is_none() => {
                    refuse("this server accepts no backends (no --backend-key set)")
                }
                Role::Backend => refuse("wrong backend key"),
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
        if let Some(c) = self.conn_mut(slot) {
            c.grant = Some(grant);
        }
        if !revoked.is_empty() {
            let mut entries = Vec::with_capacity(revoked.len());
            for id in revoked {
                if self.end_subscription(slot, id) {
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
        // The new token's expiry may come before the old one's.
        self.schedule(slot, now);
    }

    fn on_publish(&mut self, slot: u32, role: Role, p: yorker_wire::Publish, now: Now) {
        if !matches!(role, Role::Publisher | Role::Backend) {
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
        if role == Role::Publisher && !Policy::may_publish(grant, &p.topic) {
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
        if let Some(msg) = t.fed_refusal() {
            return self.fail(slot, ErrorCode::NotPublisher, &msg, now);
        }
        self.stats.updates_in += 1;
        // The driver applies it (sequence number, encode once, every shard's inbox) in the
        // order of these outputs, so one publisher's updates keep their order.
        self.out.push_back(Output::Publish(PublishReq {
            topic: t,
            flags: p.flags,
            payload: p.payload,
            ack: None,
            skip: 0,
            idempotency_key: None,
        }));
    }
}
