//! One type per frame of protocol v1, and the constants that define the protocol.
//!
//! Field order and widths are those of docs/PROTOCOL.md; all integers are big-endian.

use bytes::Bytes;

/// The highest protocol version this crate speaks. Version 2 adds tokens of up to 65,535 bytes
/// in HELLO (signed JWTs), AUTH / AUTH_OK (token refresh within a session). Version 3 adds
/// client messages to backends (MESSAGE, CLIENT_MESSAGE, REPLY, RESPONSE), acknowledged
/// publishes and rooms (POST, ACK), presence (PRESENCE_GET, PRESENCE, MEMBER) and the backend
/// role. A server speaks every version from 1 up to this one.
pub const PROTOCOL_VERSION: u16 = 3;
/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX: usize = 4;
/// The most a server accepts before WELCOME told the client the real limit (HELLO must fit).
pub const HANDSHAKE_MAX_FRAME: u32 = 4096;
/// Default maximum frame length (the value of the length prefix) announced in WELCOME.
pub const DEFAULT_MAX_FRAME: u32 = 65_536;
/// Largest maximum frame length a server may announce.
pub const MAX_MAX_FRAME: u32 = 16 * 1024 * 1024;
/// Bytes of an UPDATE frame before its payload, length prefix included.
pub const UPDATE_HEADER_LEN: usize = LENGTH_PREFIX + 1 + 4 + 8 + 8 + 1;

/// Frame type bytes. Client-to-server types have the high bit clear, server-to-client set.
pub mod frame_type {
    /// Client -> server: open a session.
    pub const HELLO: u8 = 0x01;
    /// Client -> server: subscribe to topics.
    pub const SUBSCRIBE: u8 = 0x02;
    /// Client -> server: unsubscribe from topics.
    pub const UNSUBSCRIBE: u8 = 0x03;
    /// Client -> server: liveness probe.
    pub const PING: u8 = 0x04;
    /// Client -> server (publisher role): publish an update.
    pub const PUBLISH: u8 = 0x05;
    /// Client -> server (version 2): a new token for this session (refresh before expiry).
    pub const AUTH: u8 = 0x06;
    /// Client -> server (version 3): a message for the backends.
    pub const MESSAGE: u8 = 0x07;
    /// Client -> server (version 3): publish with an acknowledgement (rooms, publishers).
    pub const POST: u8 = 0x08;
    /// Client -> server (version 3): how many sessions are subscribed to a topic.
    pub const PRESENCE_GET: u8 = 0x09;
    /// Backend -> server (version 3): an answer for one session.
    pub const REPLY: u8 = 0x0a;
    /// Server -> client: session accepted.
    pub const WELCOME: u8 = 0x81;
    /// Server -> client: result of SUBSCRIBE or UNSUBSCRIBE.
    pub const SUBACK: u8 = 0x82;
    /// Server -> client: an update (live, replayed or snapshot).
    pub const UPDATE: u8 = 0x83;
    /// Server -> client: idle keep-alive.
    pub const HEARTBEAT: u8 = 0x84;
    /// Server -> client: answer to PING.
    pub const PONG: u8 = 0x85;
    /// Server -> client: fatal error; the server closes after it.
    pub const ERROR: u8 = 0x86;
    /// Server -> client: the server is going away; reconnect later.
    pub const GOAWAY: u8 = 0x87;
    /// Server -> relay: the name of a topic id (relay role only).
    pub const TOPIC: u8 = 0x88;
    /// Server -> relay: every topic's snapshot has been sent; live updates follow (relay role
    /// only).
    pub const SYNCED: u8 = 0x89;
    /// Server -> client (version 2): a token was accepted; when it expires.
    pub const AUTH_OK: u8 = 0x8a;
    /// Server -> client (version 3): the outcome of a MESSAGE or POST.
    pub const ACK: u8 = 0x8b;
    /// Server -> client (version 3): a backend's REPLY to this session.
    pub const RESPONSE: u8 = 0x8c;
    /// Server -> client (version 3): a topic's member count.
    pub const PRESENCE: u8 = 0x8d;
    /// Server -> client (version 3): a session joined or left a small topic (room).
    pub const MEMBER: u8 = 0x8e;
    /// Server -> backend (version 3): a client's MESSAGE, with the sender's identity.
    pub const CLIENT_MESSAGE: u8 = 0x8f;
}

/// What a connection intends to do; chosen once, in HELLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Role {
    /// Receives updates; may not publish.
    Subscriber = 1,
    /// May publish (and subscribe); must present the publisher key as its token.
    Publisher = 2,
    /// A downstream engine: receives every topic's snapshot, then every update, never
    /// conflated (docs/RELAYS.md). Presents the relay key as its token when the server has one.
    Relay = 3,
    /// A backend service (version 3): receives clients' MESSAGEs, answers with REPLY, and may
    /// publish like a publisher. Presents the backend key or a token granting `backend`.
    Backend = 4,
}

impl Role {
    /// The role for a wire value.
    pub fn from_u8(v: u8) -> Option<Role> {
        match v {
            1 => Some(Role::Subscriber),
            2 => Some(Role::Publisher),
            3 => Some(Role::Relay),
            4 => Some(Role::Backend),
            _ => None,
        }
    }
}

/// Flags of PUBLISH and UPDATE (one byte). Undefined bits must be sent as 0 and are ignored.
pub mod update_flags {
    /// Never conflated; overtakes queued non-urgent frames.
    pub const URGENT: u8 = 0x01;
    /// Delivered to every subscriber connection, subscribed to the topic or not.
    pub const BROADCAST: u8 = 0x02;
    /// UPDATE only: this is the topic's latest value sent as a snapshot, not a live update.
    pub const SNAPSHOT: u8 = 0x04;
    /// UPDATE only, with SNAPSHOT: the client's state for this topic must be replaced,
    /// because the requested resume was impossible (history too short or epoch changed).
    pub const RESET: u8 = 0x08;
    /// Bits a publisher may set in PUBLISH.
    pub const PUBLISH_MASK: u8 = URGENT | BROADCAST;
    /// POST only (version 3): do not deliver the update to the posting connection itself.
    pub const NO_ECHO: u8 = 0x04;
    /// POST only (version 3): an idempotency key (str8) follows the topic; a retry with the
    /// same key within the server's window is acknowledged with the first seq, not applied.
    pub const IDEMPOTENCY_KEY: u8 = 0x80;
}

/// Options of one SUBSCRIBE entry (one byte).
pub mod sub_flags {
    /// `resume_epoch` and `resume_seq` follow; replay what came after them.
    pub const RESUME: u8 = 0x01;
    /// Turn conflation off for this subscription: every update is queued.
    pub const NO_CONFLATE: u8 = 0x02;
    /// Version 3: also receive the topic's member count (PRESENCE) when it changes, and
    /// MEMBER events while the topic is small.
    pub const PRESENCE: u8 = 0x04;
}

/// Per-topic result of SUBSCRIBE / UNSUBSCRIBE, carried in SUBACK (u8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SubResult {
    /// Subscribed; the latest value follows as a SNAPSHOT update if the topic has one (seq > 0).
    /// For UNSUBSCRIBE: unsubscribed.
    Ok = 0,
    /// Resumed: the updates after the requested seq follow, replayed from history.
    Resumed = 1,
    /// Resume impossible; a SNAPSHOT|RESET update follows if the topic has a value.
    Reset = 2,
    /// Already subscribed; nothing follows and the options are unchanged.
    AlreadySubscribed = 3,
    /// The topic name breaks the topic-name rules.
    InvalidTopic = 16,
    /// The connection holds the maximum number of subscriptions, or the server's topic
    /// registry is full.
    LimitReached = 17,
    /// UNSUBSCRIBE of a topic id this connection is not subscribed to.
    NotSubscribed = 18,
    /// The session's token (or the server's rules for anonymous clients) does not allow this
    /// topic.
    Forbidden = 19,
}

impl SubResult {
    /// The result for a wire value.
    pub fn from_u8(v: u8) -> Option<SubResult> {
        Some(match v {
            0 => SubResult::Ok,
            1 => SubResult::Resumed,
            2 => SubResult::Reset,
            3 => SubResult::AlreadySubscribed,
            16 => SubResult::InvalidTopic,
            17 => SubResult::LimitReached,
            18 => SubResult::NotSubscribed,
            19 => SubResult::Forbidden,
            _ => return None,
        })
    }
    /// True for results that leave the connection subscribed.
    pub fn is_subscribed(self) -> bool {
        matches!(
            self,
            SubResult::Ok | SubResult::Resumed | SubResult::Reset | SubResult::AlreadySubscribed
        )
    }
}

/// HELLO: the first frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Highest protocol version the client speaks.
    pub version: u16,
    /// Subscriber or publisher.
    pub role: Role,
    /// Free-form client name for logs (at most 255 bytes).
    pub client_name: String,
    /// Authentication token: the publisher or relay key, or a signed token (JWT). At most 255
    /// bytes in version 1 (str8), 65,535 from version 2 on (str16).
    pub token: String,
}

impl Hello {
    /// True when this HELLO's token travels as a str16 (version 2 and later).
    pub fn long_token(&self) -> bool {
        self.version >= 2
    }
}

/// Where a SUBSCRIBE entry asks to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeFrom {
    /// The server epoch the client's sequence number belongs to.
    pub epoch: u64,
    /// The last sequence number the client has for this topic.
    pub seq: u64,
}

/// One topic of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeEntry {
    /// Topic name (see [`crate::topic`] for the rules).
    pub topic: String,
    /// Resume point, if any.
    pub resume: Option<ResumeFrom>,
    /// Conflation for this subscription (default on).
    pub conflate: bool,
    /// Version 3: member counts and join/leave events for this topic ([`sub_flags::PRESENCE`]).
    pub presence: bool,
}

/// SUBSCRIBE: one or more topics, answered by one SUBACK with the same request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Echoed in the SUBACK.
    pub request_id: u32,
    /// Topics, answered in the same order.
    pub entries: Vec<SubscribeEntry>,
}

/// UNSUBSCRIBE: topic ids as learned from SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Echoed in the SUBACK.
    pub request_id: u32,
    /// Topic ids to drop.
    pub topic_ids: Vec<u32>,
}

/// PUBLISH: one update from a publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// [`update_flags::URGENT`] and/or [`update_flags::BROADCAST`].
    pub flags: u8,
    /// Topic name.
    pub topic: String,
    /// Opaque application bytes.
    pub payload: Bytes,
}

/// The limits a server announces in WELCOME.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum value of the length prefix, in either direction.
    pub max_frame: u32,
    /// Maximum subscriptions per connection.
    pub max_subscriptions: u32,
    /// Bytes the server queues for this connection before its slow-consumer policy applies.
    pub outbox_limit: u32,
}

/// WELCOME: the server accepted HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The protocol version both sides now speak.
    pub version: u16,
    /// Unique per connection within this server epoch (for logs and support).
    pub session_id: u64,
    /// Server epoch: sequence numbers are only comparable within one epoch.
    pub epoch: u64,
    /// Server heartbeat interval in milliseconds; the client must send something at least this
    /// often and is closed after three intervals of silence.
    pub heartbeat_ms: u32,
    /// The server's limits.
    pub limits: Limits,
}

/// One entry of a SUBACK, in the order of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubAckEntry {
    /// Result for this topic.
    pub result: SubResult,
    /// Numeric topic id used in every UPDATE for this topic (0 when the result is an error).
    pub topic_id: u32,
    /// The topic's current sequence number (0: no value yet).
    pub seq: u64,
}

/// SUBACK: answer to SUBSCRIBE or UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The request id of the SUBSCRIBE / UNSUBSCRIBE.
    pub request_id: u32,
    /// One entry per requested topic, same order.
    pub entries: Vec<SubAckEntry>,
}

/// UPDATE: a topic's new value (live, replayed from history, or as a snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Topic id from SUBACK.
    pub topic_id: u32,
    /// Per-topic sequence number within the server epoch, starting at 1.
    pub seq: u64,
    /// When the server accepted the PUBLISH, microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// [`update_flags`].
    pub flags: u8,
    /// Opaque application bytes (zero-copy slice of the received frame).
    pub payload: Bytes,
}

/// ERROR: fatal; the server closes the connection after sending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// Stable numeric code ([`crate::ErrorCode`]); unknown codes must be tolerated.
    pub code: u16,
    /// Human-readable detail (at most 65535 bytes; servers keep it short).
    pub message: String,
}

/// GOAWAY: the server is going away; reconnect after the hint, to the same or another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAway {
    /// Reason ([`crate::ErrorCode`], typically `shutting_down`).
    pub code: u16,
    /// Wait at least this many milliseconds before reconnecting (jittered per client by the
    /// server so that reconnects spread out).
    pub reconnect_after_ms: u32,
    /// Human-readable detail.
    pub message: String,
}

/// MESSAGE (version 3): a client's message for the backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Echoed in the ACK and in the backend's REPLY.
    pub request_id: u32,
    /// Messages with the same key go to the same backend, in order (empty: the session id).
    pub routing_key: String,
    /// Opaque application bytes.
    pub payload: Bytes,
}

/// POST (version 3): a publish answered by ACK with the update's sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    /// Echoed in the ACK.
    pub request_id: u32,
    /// [`update_flags::URGENT`], [`update_flags::BROADCAST`] (publishers),
    /// [`update_flags::NO_ECHO`].
    pub flags: u8,
    /// Topic name.
    pub topic: String,
    /// With [`update_flags::IDEMPOTENCY_KEY`]: 1 to 255 bytes naming this publish.
    pub idempotency_key: Option<String>,
    /// Opaque application bytes.
    pub payload: Bytes,
}

/// CLIENT_MESSAGE (version 3): a client's MESSAGE as a backend receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    /// The sender's session (WELCOME's session id): REPLY names it.
    pub session_id: u64,
    /// The sender's request id.
    pub request_id: u32,
    /// The sender's user (the token's `sub`); empty for a session without one.
    pub user: String,
    /// The routing key the sender gave.
    pub routing_key: String,
    /// The sender's bytes, unchanged.
    pub payload: Bytes,
}

/// Every frame of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client -> server: open a session.
    Hello(Hello),
    /// Client -> server: subscribe.
    Subscribe(Subscribe),
    /// Client -> server: unsubscribe.
    Unsubscribe(Unsubscribe),
    /// Client -> server: liveness probe with an opaque nonce.
    Ping {
        /// Echoed in PONG.
        nonce: u64,
    },
    /// Client -> server: publish.
    Publish(Publish),
    /// Server -> client: session accepted.
    Welcome(Welcome),
    /// Server -> client: subscription results.
    SubAck(SubAck),
    /// Server -> client: an update.
    Update(Update),
    /// Server -> client: idle keep-alive.
    Heartbeat,
    /// Server -> client: answer to PING.
    Pong {
        /// The PING's nonce.
        nonce: u64,
    },
    /// Server -> client: fatal error.
    Error(ErrorFrame),
    /// Server -> client: going away.
    GoAway(GoAway),
    /// Server -> relay: a topic's id and name, sent before the first UPDATE of that id.
    Topic {
        /// The id UPDATE frames carry.
        topic_id: u32,
        /// Its name.
        name: String,
    },
    /// Client -> server (v2): replaces the session's token (refresh).
    Auth {
        /// The new token (str16).
        token: String,
    },
    /// Server -> client (v2): the token in HELLO or AUTH was accepted.
    AuthOk {
        /// When the token expires, seconds since the Unix epoch (0: it does not).
        expires_at_s: u64,
        /// After expiry the session lives this many ms more, for a refresh to arrive.
        grace_ms: u32,
    },
    /// Client -> server (v3): a message for the backends.
    Message(Message),
    /// Client -> server (v3): publish with an acknowledgement.
    Post(Post),
    /// Client -> server (v3): ask for a topic's member count.
    PresenceGet {
        /// Echoed in PRESENCE.
        request_id: u32,
        /// Topic name.
        topic: String,
    },
    /// Backend -> server (v3): an answer for one session.
    Reply {
        /// The session (from CLIENT_MESSAGE).
        session_id: u64,
        /// The request it answers (the client's request id), or any value the client expects.
        request_id: u32,
        /// Opaque application bytes.
        payload: Bytes,
    },
    /// Server -> client (v3): the outcome of a MESSAGE or POST.
    Ack {
        /// The request's id.
        request_id: u32,
        /// 0: accepted; otherwise an error code (docs/PROTOCOL.md §5). Never fatal.
        code: u16,
        /// POST: the update's sequence number; MESSAGE: 0.
        seq: u64,
    },
    /// Server -> client (v3): a backend's REPLY.
    Response {
        /// The request id the backend named.
        request_id: u32,
        /// The backend's bytes.
        payload: Bytes,
    },
    /// Server -> client (v3): a topic's member count.
    Presence {
        /// PRESENCE_GET's request id; 0 for the updates a PRESENCE subscription receives.
        request_id: u32,
        /// The topic's id (0: no such topic).
        topic_id: u32,
        /// Subscriptions to the topic over the whole server.
        members: u32,
    },
    /// Server -> client (v3): a session joined or left a small topic.
    Member {
        /// The topic's id.
        topic_id: u32,
        /// 1 joined, 2 left.
        event: u8,
        /// The session.
        session_id: u64,
        /// Its user (the token's `sub`), empty without one.
        user: String,
    },
    /// Server -> backend (v3): a client's MESSAGE.
    ClientMessage(ClientMessage),
    /// Server -> relay: the initial snapshot is complete.
    Synced {
        /// Topics whose snapshot (or TOPIC alone, when they hold no value yet) was sent.
        topics: u32,
        /// The server epoch the sequence numbers belong to.
        epoch: u64,
        /// The last relay-feed datagram the server had multicast before it took the
        /// snapshot (0 without a feed): every update in datagrams up to it is covered.
        feed_seq: u64,
    },
}

impl Frame {
    /// The frame's type byte.
    pub fn frame_type(&self) -> u8 {
        use frame_type::*;
        match self {
            Frame::Hello(_) => HELLO,
            Frame::Subscribe(_) => SUBSCRIBE,
            Frame::Unsubscribe(_) => UNSUBSCRIBE,
            Frame::Ping { .. } => PING,
            Frame::Publish(_) => PUBLISH,
            Frame::Welcome(_) => WELCOME,
            Frame::SubAck(_) => SUBACK,
            Frame::Update(_) => UPDATE,
            Frame::Heartbeat => HEARTBEAT,
            Frame::Pong { .. } => PONG,
            Frame::Error(_) => ERROR,
            Frame::GoAway(_) => GOAWAY,
            Frame::Topic { .. } => TOPIC,
            Frame::Synced { .. } => SYNCED,
            Frame::Auth { .. } => AUTH,
            Frame::AuthOk { .. } => AUTH_OK,
            Frame::Message(_) => MESSAGE,
            Frame::Post(_) => POST,
            Frame::PresenceGet { .. } => PRESENCE_GET,
            Frame::Reply { .. } => REPLY,
            Frame::Ack { .. } => ACK,
            Frame::Response { .. } => RESPONSE,
            Frame::Presence { .. } => PRESENCE,
            Frame::Member { .. } => MEMBER,
            Frame::ClientMessage(_) => CLIENT_MESSAGE,
        }
    }

    /// The frame's name as used in docs/PROTOCOL.md.
    pub fn name(&self) -> &'static str {
        frame_name(self.frame_type())
    }

    /// True for frames a client sends to a server.
    pub fn is_client_frame(&self) -> bool {
        self.frame_type() & 0x80 == 0
    }
}

/// Name of a frame type byte ("?" when unknown).
pub fn frame_name(t: u8) -> &'static str {
    use frame_type::*;
    match t {
        HELLO => "HELLO",
        SUBSCRIBE => "SUBSCRIBE",
        UNSUBSCRIBE => "UNSUBSCRIBE",
        PING => "PING",
        PUBLISH => "PUBLISH",
        WELCOME => "WELCOME",
        SUBACK => "SUBACK",
        UPDATE => "UPDATE",
        HEARTBEAT => "HEARTBEAT",
        PONG => "PONG",
        ERROR => "ERROR",
        GOAWAY => "GOAWAY",
        TOPIC => "TOPIC",
        SYNCED => "SYNCED",
        AUTH => "AUTH",
        AUTH_OK => "AUTH_OK",
        MESSAGE => "MESSAGE",
        POST => "POST",
        PRESENCE_GET => "PRESENCE_GET",
        REPLY => "REPLY",
        ACK => "ACK",
        RESPONSE => "RESPONSE",
        PRESENCE => "PRESENCE",
        MEMBER => "MEMBER",
        CLIENT_MESSAGE => "CLIENT_MESSAGE",
        _ => "?",
    }
}
