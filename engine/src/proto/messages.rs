//! Version 3: what clients send besides subscriptions. MESSAGE to the backends (routing,
//! acknowledgement, rate limits), REPLY from a backend back to one session, and POST (an
//! acknowledged publish, which is how room members talk to each other).
//!
//! A MESSAGE is handled on the sender's shard: checks (permission, rate, in-flight window,
//! size), then a backend is picked by rendezvous hashing of the routing key over the backend
//! directory every shard keeps, and the CLIENT_MESSAGE is encoded once and handed to the
//! backend's shard ([`Control::ToBackend`], or directly when it is the same shard). There it
//! joins the backend's outbox with a *ticket*; when the send carrying it completes, the ticket
//! becomes an ACK `ok` for the sender ([`Control::Acked`]); if the backend goes first, every
//! ticket it still held becomes `backend_gone`. So each MESSAGE gets exactly one ACK, and an
//! ACK `ok` means the bytes were handed to the backend's socket.

use std::collections::HashMap;

use bytes::Bytes;
use yorker_wire::{topic, update_flags, ClientMessage, ErrorCode, Frame, Post, Role};

use super::auth::Policy;
use super::outbox::{Entry, Pushed};
use super::slot::Phase;
use super::{Now, Output, PublishReq, Shard, Token};

/// Where an acknowledgement goes: the sender's shard, connection and request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The sender's shard.
    pub shard: u8,
    /// The sender's connection.
    pub token: Token,
    /// The MESSAGE's or POST's request id.
    pub request_id: u32,
}

/// A message between shards (besides updates), carried by the bus's control queue.
#[derive(Debug, Clone)]
pub enum Control {
    /// To the backend's shard: a client's message, encoded as CLIENT_MESSAGE.
    ToBackend {
        /// The backend's session id.
        backend: u64,
        /// Who to acknowledge.
        origin: Origin,
        /// The CLIENT_MESSAGE frame.
        frame: Bytes,
    },
    /// To the sender's shard: the outcome of its MESSAGE (0: written to the backend).
    Acked {
        /// The sender.
        origin: Origin,
        /// 0 or an error code.
        code: u16,
    },
    /// To a session's shard: a backend's REPLY, encoded as RESPONSE.
    Reply {
        /// The session id the backend named.
        session: u64,
        /// The RESPONSE frame.
        frame: Bytes,
    },
    /// To every shard: a backend connected.
    BackendUp(u64),
    /// To every shard: a backend disconnected.
    BackendDown(u64),
    /// To every shard: a MEMBER event of a small topic, for its presence subscribers.
    Member {
        /// The topic.
        topic: u32,
        /// The MEMBER frame.
        frame: Bytes,
    },
}

impl Control {
    /// True for messages whose loss breaks a promise (acknowledgements, the backend
    /// directory): the bus never refuses them. They are bounded by construction (one per
    /// in-flight MESSAGE; one per backend connection).
    pub fn is_essential(&self) -> bool {
        matches!(
            self,
            Control::Acked { .. } | Control::BackendUp(_) | Control::BackendDown(_)
        )
    }
}

/// Where a control message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// One shard.
    Shard(u8),
    /// Every shard, this one included.
    All,
}

/// A backend connection of this shard: its tickets.
#[derive(Debug, Default)]
pub(crate) struct BackendLink {
    next_ticket: u64,
    /// Tickets queued or in the send in flight, and whom each acknowledges.
    pending: HashMap<u64, Origin>,
    /// Tickets in the send in flight.
    in_send: Vec<u64>,
    /// No longer a backend (draining or closing): takes no new messages.
    retired: bool,
}

/// A connection that sends MESSAGE or POST: its rate bucket and in-flight window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sender {
    generation: u32,
    tokens: f64,
    refill_ms: u64,
    inflight: u32,
}

/// Session ids name their connection: `tag << 32 | shard << 24 | slot`, where the tag is
/// unique per connection within the epoch. A REPLY finds its session with it.
pub(crate) fn session_id(tag: u32, shard: u8, slot: u32) -> u64 {
    (tag as u64) << 32 | (shard as u64) << 24 | (slot as u64 & 0x00ff_ffff)
}

/// The shard and slot a session id names.
pub(crate) fn session_place(sid: u64) -> (u8, u32) {
    ((sid >> 24) as u8, (sid & 0x00ff_ffff) as u32)
}

/// Rendezvous (highest random weight) hashing: the backend with the highest score for `key`.
/// Stable: when a backend leaves, only its keys move.
fn pick(backends: &[u64], key: &[u8]) -> Option<u64> {
    backends.iter().copied().max_by_key(|&b| {
        // FNV-1a over the key, then the backend, then a final mix.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &x in key.iter().chain(b.to_be_bytes().iter()) {
            h ^= x as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    })
}

impl Shard {
    /// This connection's session id.
    pub(crate) fn sid(&self, slot: u32) -> u64 {
        let tag = self.conn(slot).map_or(0, |c| c.tag);
        session_id(tag, self.id, slot)
    }

    /// The live slot `sid` names on this shard, if that session is still there.
    fn slot_of(&self, sid: u64) -> Option<u32> {
        let (shard, slot) = session_place(sid);
        (shard == self.id && self.conn(slot).is_some_and(|c| c.tag == (sid >> 32) as u32))
            .then_some(slot)
    }

    fn origin(&self, slot: u32, request_id: u32) -> Origin {
        Origin {
            shard: self.id,
            token: self.token(slot),
            request_id,
        }
    }

    /// Sends `msg` to `dest` (to itself directly).
    pub(crate) fn control(&mut self, dest: Dest, msg: Control) {
        match dest {
            Dest::Shard(s) if s == self.id => self.on_control(msg),
            dest => self.out.push_back(Output::Control(dest, msg)),
        }
    }

    /// A control message from another shard (or this one).
    pub(crate) fn on_control(&mut self, msg: Control) {
        match msg {
            Control::ToBackend {
                backend,
                origin,
                frame,
            } => self.queue_for_backend(backend, origin, frame),
            Control::Acked { origin, code } => self.on_acked(origin, code),
            Control::Reply { session, frame } => self.deliver_response(session, frame),
            Control::BackendUp(sid) => {
                if let Err(i) = self.backends.binary_search(&sid) {
                    self.backends.insert(i, sid);
                }
            }
            Control::BackendDown(sid) => {
                if let Ok(i) = self.backends.binary_search(&sid) {
                    self.backends.remove(i);
                }
            }
            Control::Member { topic, frame } => self.deliver_member(topic, frame),
        }
    }

    /// The bus refused a control message (the target's queue is full).
    pub(crate) fn on_control_refused(&mut self, msg: Control) {
        self.stats.control_dropped += 1;
        if let Control::ToBackend { origin, .. } = msg {
            self.on_acked(origin, ErrorCode::ServerBusy as u16);
        }
    }

    /// Takes one unit from `slot`'s rate bucket (and, for a MESSAGE, one place in its
    /// in-flight window). False: over the limit.
    fn take_rate(&mut self, slot: u32, message: bool, now: Now) -> bool {
        let (rate, burst) = (
            self.cfg.message_rate as f64,
            self.cfg.message_burst.max(1) as f64,
        );
        let generation = self.slots[slot as usize].generation;
        let s = self.senders.entry(slot).or_insert(Sender {
            generation,
            tokens: burst,
            refill_ms: now.ms,
            inflight: 0,
        });
        if s.generation != generation {
            *s = Sender {
                generation,
                tokens: burst,
                refill_ms: now.ms,
                inflight: 0,
            };
        }
        let dt = now.ms.saturating_sub(s.refill_ms) as f64 / 1000.0;
        s.refill_ms = now.ms;
        s.tokens = (s.tokens + dt * rate).min(burst);
        if s.tokens < 1.0 || (message && s.inflight >= self.cfg.max_inflight_messages) {
            return false;
        }
        s.tokens -= 1.0;
        if message {
            s.inflight += 1;
        }
        true
    }

    fn ack_frame(request_id: u32, code: u16, seq: u64) -> Bytes {
        Frame::Ack {
            request_id,
            code,
            seq,
        }
        .to_bytes()
        .expect("ack encodes")
    }

    /// Queues an ACK for `slot` right away (a refusal on the sender's own shard).
    fn refuse_message(&mut self, slot: u32, request_id: u32, code: ErrorCode, message: bool) {
        if message {
            self.stats.messages_refused += 1;
        } else {
            self.stats.posts_refused += 1;
        }
        let f = Self::ack_frame(request_id, code as u16, 0);
        self.push_control(slot, f);
    }

    /// MESSAGE from a client.
    pub(crate) fn on_message(&mut self, slot: u32, role: Role, m: yorker_wire::Message, now: Now) {
        let Some(c) = self.conn(slot) else { return };
        let allowed = c.grant.is_some()
            || matches!(role, Role::Publisher | Role::Backend)
            || self.cfg.anonymous_messages;
        if !allowed {
            return self.refuse_message(slot, m.request_id, ErrorCode::Forbidden, true);
        }
        let user = c
            .grant
            .as_ref()
            .and_then(|g| g.subject.as_deref())
            .unwrap_or("")
            .to_string();
        // CLIENT_MESSAGE: type, session, request, user, key, payload.
        let len = 1 + 8 + 4 + 1 + user.len() + 1 + m.routing_key.len() + m.payload.len();
        if len > self.cfg.max_frame as usize {
            return self.refuse_message(slot, m.request_id, ErrorCode::FrameTooLarge, true);
        }
        if self.backends.is_empty() {
            return self.refuse_message(slot, m.request_id, ErrorCode::NoBackend, true);
        }
        if !self.take_rate(slot, true, now) {
            return self.refuse_message(slot, m.request_id, ErrorCode::RateLimited, true);
        }
        let sid = self.sid(slot);
        let key = if m.routing_key.is_empty() {
            sid.to_be_bytes().to_vec()
        } else {
            m.routing_key.as_bytes().to_vec()
        };
        let backend = pick(&self.backends, &key).expect("backends is not empty");
        let frame = Frame::ClientMessage(ClientMessage {
            session_id: sid,
            request_id: m.request_id,
            user,
            routing_key: m.routing_key,
            payload: m.payload,
        })
        .to_bytes()
        .expect("sized above");
        self.stats.messages_in += 1;
        let origin = self.origin(slot, m.request_id);
        let (shard, _) = session_place(backend);
        self.control(
            Dest::Shard(shard),
            Control::ToBackend {
                backend,
                origin,
                frame,
            },
        );
    }

    /// A client's message for one of this shard's backends: queued with a ticket.
    fn queue_for_backend(&mut self, backend: u64, origin: Origin, frame: Bytes) {
        let Some(slot) = self
            .slot_of(backend)
            .filter(|s| self.backend_links.get(s).is_some_and(|l| !l.retired))
        else {
            return self.ack_to(origin, ErrorCode::BackendGone as u16);
        };
        let limit = self.cfg.backend_outbox_limit;
        let link = self.backend_links.get_mut(&slot).expect("checked");
        link.next_ticket += 1;
        let ticket = link.next_ticket;
        let c = super::slot::live_mut(&mut self.slots, slot).expect("slot_of saw it live");
        if !matches!(c.phase, Phase::Active(_)) {
            return self.ack_to(origin, ErrorCode::BackendGone as u16);
        }
        let len = frame.len();
        let e = Entry {
            frame,
            topic: 0,
            seq: ticket,
            conflatable: false,
            raw: false,
        };
        if c.outbox.push(e, limit) == Pushed::Overflow {
            // The backend reads too slowly: refuse this message, keep the backend.
            return self.ack_to(origin, ErrorCode::ServerBusy as u16);
        }
        self.total_outbox += len;
        self.backend_links
            .get_mut(&slot)
            .expect("checked")
            .pending
            .insert(ticket, origin);
        self.stats.messages_to_backends += 1;
        // Interactive traffic: ahead of any fan-out waiting to be sent.
        self.mark_ready_first(slot);
    }

    /// Sends the outcome of a MESSAGE to its sender's shard.
    fn ack_to(&mut self, origin: Origin, code: u16) {
        self.control(Dest::Shard(origin.shard), Control::Acked { origin, code });
    }

    /// The outcome of one of this shard's clients' MESSAGEs.
    fn on_acked(&mut self, origin: Origin, code: u16) {
        let t = origin.token;
        if self
            .slots
            .get(t.slot as usize)
            .is_none_or(|s| s.generation != t.generation)
        {
            return; // the sender is gone
        }
        if let Some(s) = self.senders.get_mut(&t.slot) {
            if s.generation == t.generation {
                s.inflight = s.inflight.saturating_sub(1);
            }
        }
        if code == 0 {
            self.stats.messages_acked += 1;
        } else {
            self.stats.messages_refused += 1;
        }
        let f = Self::ack_frame(origin.request_id, code, 0);
        self.push_control(t.slot, f);
    }

    /// A backend connection started its session.
    pub(crate) fn start_backend(&mut self, slot: u32) {
        self.backend_links.insert(slot, BackendLink::default());
        let sid = self.sid(slot);
        self.control(Dest::All, Control::BackendUp(sid));
        tracing::info!(session = sid, "backend connected");
    }

    /// The send of `slot` completed: every byte was written, so the senders of the tickets it
    /// carried get ACK ok.
    pub(crate) fn backend_send_done(&mut self, slot: u32) {
        let Some(link) = self.backend_links.get_mut(&slot) else {
            return;
        };
        let done: Vec<Origin> = link
            .in_send
            .drain(..)
            .filter_map(|t| link.pending.remove(&t))
            .collect();
        for o in done {
            self.ack_to(o, 0);
        }
    }

    /// Collects the tickets of a backend's send as it starts.
    pub(crate) fn backend_send_started(&mut self, slot: u32, tickets: &mut Vec<u64>) {
        if let Some(link) = self.backend_links.get_mut(&slot) {
            link.in_send.append(tickets);
        }
        tickets.clear();
    }

    /// `slot` stops being a backend (ERROR, GOAWAY or close): every shard forgets it, and the
    /// messages still queued for it are taken out of its queue and refused `backend_gone`
    /// (never written, so never delivered). A send in flight keeps its tickets: it completes
    /// (ACK ok) or fails (see [`Shard::end_backend`]).
    pub(crate) fn retire_backend(&mut self, slot: u32) {
        let sid = self.sid(slot);
        let Some(link) = self.backend_links.get_mut(&slot) else {
            return;
        };
        if link.retired {
            return;
        }
        link.retired = true;
        let in_send = std::mem::take(&mut link.in_send);
        let mut refused = Vec::new();
        link.pending.retain(|t, o| {
            let keep = in_send.contains(t);
            if !keep {
                refused.push(*o);
            }
            keep
        });
        link.in_send = in_send;
        if let Some(c) = self.conn_mut(slot) {
            let freed = c.outbox.remove_tickets();
            self.total_outbox -= freed;
        }
        let n = refused.len();
        for o in refused {
            self.ack_to(o, ErrorCode::BackendGone as u16);
        }
        self.control(Dest::All, Control::BackendDown(sid));
        tracing::info!(
            session = sid,
            refused = n,
            "backend left; messages queued for it were refused backend_gone"
        );
    }

    /// `slot` is closed: a backend's send that did not complete delivered nothing known, so
    /// its tickets are refused `backend_gone` too.
    pub(crate) fn end_backend(&mut self, slot: u32) {
        self.retire_backend(slot);
        if let Some(link) = self.backend_links.remove(&slot) {
            for (_, o) in link.pending {
                self.ack_to(o, ErrorCode::BackendGone as u16);
            }
        }
    }

    /// REPLY from a backend: a RESPONSE for the session it names, wherever it is.
    pub(crate) fn on_reply(
        &mut self,
        slot: u32,
        role: Role,
        session: u64,
        request_id: u32,
        payload: Bytes,
        now: Now,
    ) {
        if role != Role::Backend {
            return self.fail(
                slot,
                ErrorCode::UnexpectedFrame,
                "REPLY needs role backend",
                now,
            );
        }
        let frame = Frame::Response {
            request_id,
            payload,
        }
        .to_bytes()
        .expect("response encodes");
        self.stats.replies += 1;
        let (shard, _) = session_place(session);
        self.control(Dest::Shard(shard), Control::Reply { session, frame });
    }

    /// Queues a RESPONSE for a session of this shard. A session that is gone, or whose queue
    /// is full, does not get it (counted): replies are best effort.
    fn deliver_response(&mut self, session: u64, frame: Bytes) {
        let limit = self.cfg.outbox_limit;
        let Some(slot) = self.slot_of(session) else {
            self.stats.replies_dropped += 1;
            return;
        };
        let c = super::slot::live_mut(&mut self.slots, slot).expect("slot_of saw it live");
        if !matches!(c.phase, Phase::Active(_)) {
            self.stats.replies_dropped += 1;
            return;
        }
        let len = frame.len();
        if c.outbox.push_urgent(Entry::control(frame), limit).0 == Pushed::Overflow {
            self.stats.replies_dropped += 1;
            return;
        }
        self.total_outbox += len;
        self.mark_ready_first(slot);
    }

    /// POST: a publish answered by ACK (rooms, acknowledged publishers).
    pub(crate) fn on_post(&mut self, slot: u32, role: Role, p: Post, now: Now) {
        let req = p.request_id;
        if topic::validate(&p.topic).is_err() {
            return self.refuse_message(slot, req, ErrorCode::InvalidTopic, false);
        }
        let grant = self.conn(slot).and_then(|c| c.grant.clone());
        let allowed = match role {
            Role::Backend => true,
            Role::Publisher => Policy::may_publish(grant.as_deref(), &p.topic),
            // A subscriber posts only where its token's `publish` patterns say (rooms).
            _ => {
                grant.as_deref().is_some_and(|g| g.may_post(&p.topic))
                    && p.flags & update_flags::BROADCAST == 0
            }
        };
        if !allowed {
            return self.refuse_message(slot, req, ErrorCode::Forbidden, false);
        }
        if p.payload.len() + yorker_wire::frame::UPDATE_HEADER_LEN - 4 > self.cfg.max_frame as usize
        {
            return self.refuse_message(slot, req, ErrorCode::FrameTooLarge, false);
        }
        if role == Role::Subscriber && !self.take_rate(slot, false, now) {
            return self.refuse_message(slot, req, ErrorCode::RateLimited, false);
        }
        let t = match self.registry.get_or_create(&p.topic) {
            Ok(t) => t,
            Err(_) => return self.refuse_message(slot, req, ErrorCode::TopicLimit, false),
        };
        if t.is_fed() {
            // Numbered by the ingest's stream: a number taken here would collide with it.
            return self.refuse_message(slot, req, ErrorCode::Forbidden, false);
        }
        self.stats.updates_in += 1;
        self.stats.posts += 1;
        let skip = if p.flags & update_flags::NO_ECHO != 0 {
            self.sid(slot)
        } else {
            0
        };
        self.out.push_back(Output::Publish(PublishReq {
            topic: t,
            flags: p.flags & update_flags::PUBLISH_MASK,
            payload: p.payload,
            ack: Some(self.origin(slot, req)),
            skip,
            idempotency_key: p.idempotency_key.filter(|k| !k.is_empty()).map(Into::into),
        }));
    }

    /// The driver applied a POST: its ACK carries the sequence number. It is queued before the
    /// update itself reaches this shard's subscribers (that comes through the bus).
    pub(crate) fn on_published(&mut self, origin: Origin, seq: u64) {
        let t = origin.token;
        if self
            .slots
            .get(t.slot as usize)
            .is_none_or(|s| s.generation != t.generation)
        {
            return;
        }
        let f = Self::ack_frame(origin.request_id, 0, seq);
        self.push_control(t.slot, f);
    }

    /// Forgets `slot`'s sender state (it ended).
    pub(crate) fn forget_sender(&mut self, slot: u32) {
        self.senders.remove(&slot);
    }

    /// The slot an update must skip (POST with NO_ECHO from a connection of this shard).
    pub(crate) fn skip_slot(&self, skip: u64) -> Option<u32> {
        if skip == 0 {
            return None;
        }
        self.slot_of(skip)
    }
}

/// Encodes a MEMBER event.
pub(crate) fn member_frame(topic: u32, joined: bool, session: u64, user: &str) -> Bytes {
    Frame::Member {
        topic_id: topic,
        event: if joined { 1 } else { 2 },
        session_id: session,
        user: user.into(),
    }
    .to_bytes()
    .expect("user is at most 200 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_name_their_shard_and_slot() {
        let sid = session_id(7, 3, 0x12_3456);
        assert_eq!(session_place(sid), (3, 0x12_3456));
        assert_eq!(sid >> 32, 7);
    }

    #[test]
    fn rendezvous_keeps_keys_when_a_backend_leaves() {
        let all = [11u64, 22, 33, 44];
        let keys: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let before: Vec<u64> = keys.iter().map(|k| pick(&all, k).unwrap()).collect();
        // Every backend gets a share.
        for b in all {
            let n = before.iter().filter(|&&x| x == b).count();
            assert!((150..350).contains(&n), "backend {b} got {n} of 1000 keys");
        }
        let fewer = [11u64, 22, 44];
        for (k, was) in keys.iter().zip(&before) {
            let now = pick(&fewer, k).unwrap();
            if *was != 33 {
                assert_eq!(now, *was, "a key of a backend that stayed moved");
            }
        }
        assert_eq!(pick(&[], b"x"), None);
    }
}
