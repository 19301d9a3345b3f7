//! Errors of the codec, and the error codes that cross the wire.

use thiserror::Error;

/// Why a byte stream could not be decoded. Every variant is fatal for the connection: after
/// a decode error the stream position is unknown, so the peer must be sent an ERROR and closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The length prefix announced a frame longer than the negotiated maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Announced length (type byte and body).
        len: u32,
        /// The maximum in force.
        max: u32,
    },
    /// The length prefix was zero: every frame has at least a type byte.
    #[error("frame length 0: a frame has at least a type byte")]
    EmptyFrame,
    /// The type byte names no frame of this version.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    /// The body ended before a field it must contain.
    #[error("{frame} frame truncated: {field} missing")]
    Truncated {
        /// Frame being decoded.
        frame: &'static str,
        /// First field that did not fit.
        field: &'static str,
    },
    /// The body is longer than its fields.
    #[error("{frame} frame has {extra} trailing bytes")]
    TrailingBytes {
        /// Frame being decoded.
        frame: &'static str,
        /// Bytes left over.
        extra: usize,
    },
    /// A string field is not valid UTF-8.
    #[error("{frame} frame: field {field} is not UTF-8")]
    InvalidUtf8 {
        /// Frame being decoded.
        frame: &'static str,
        /// Offending field.
        field: &'static str,
    },
    /// An enumerated field holds a value this version does not define.
    #[error("{frame} frame: field {field} has invalid value {value}")]
    InvalidValue {
        /// Frame being decoded.
        frame: &'static str,
        /// Offending field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
}

impl DecodeError {
    /// The wire error code a server sends before closing a connection that produced this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnknownFrameType(_) => ErrorCode::UnknownFrameType,
            _ => ErrorCode::MalformedFrame,
        }
    }
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// A string is longer than its length prefix can express.
    #[error("field {field} is {len} bytes; at most {max} fit")]
    FieldTooLong {
        /// Offending field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit of its length prefix.
        max: usize,
    },
    /// A list has more entries than its count field can express.
    #[error("{len} entries in {field}; at most {max} fit")]
    TooManyEntries {
        /// Offending list.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit of its count field.
        max: usize,
    },
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $text:literal; )*) => {
        /// Stable numeric error codes carried by ERROR and GOAWAY frames (u16 on the wire).
        ///
        /// Codes never change meaning; new ones may be added, so a client must treat an unknown
        /// code as a generic error and still honour the close that follows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name = $value, )*
        }

        impl ErrorCode {
            /// The code for a wire value, if this version defines it.
            pub fn from_u16(v: u16) -> Option<Self> {
                match v { $( $value => Some(ErrorCode::$name), )* _ => None }
            }
            /// Short stable name, as used in logs and in docs/PROTOCOL.md.
            pub fn name(self) -> &'static str {
                match self { $( ErrorCode::$name => $text, )* }
            }
            /// Every defined code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$name, )* ];
        }
    };
}

error_codes! {
    /// A frame could not be parsed (truncated, trailing bytes, bad UTF-8, bad enum value).
    MalformedFrame = 1, "malformed_frame";
    /// HELLO asked for a protocol version the server does not speak.
    UnsupportedVersion = 2, "unsupported_version";
    /// A frame's length exceeds the maximum frame size.
    FrameTooLarge = 3, "frame_too_large";
    /// The frame type byte is unknown.
    UnknownFrameType = 4, "unknown_frame_type";
    /// A valid frame arrived where it is not allowed (e.g. SUBSCRIBE before HELLO, a second HELLO,
    /// a server-only frame sent by a client).
    UnexpectedFrame = 5, "unexpected_frame";
    /// No HELLO within the handshake timeout.
    HandshakeTimeout = 6, "handshake_timeout";
    /// HELLO's token was refused.
    AuthFailed = 7, "auth_failed";
    /// PUBLISH from a connection whose role is not publisher.
    NotPublisher = 8, "not_publisher";
    /// Nothing received from the client for three heartbeat intervals.
    HeartbeatTimeout = 9, "heartbeat_timeout";
    /// The client reads too slowly and the server's policy is to disconnect it.
    SlowConsumer = 10, "slow_consumer";
    /// The server (or this core) holds as many connections as it is allowed.
    ServerFull = 11, "server_full";
    /// PUBLISH named a topic that breaks the topic-name rules.
    InvalidTopic = 12, "invalid_topic";
    /// The server is shutting down (GOAWAY reason).
    ShuttingDown = 13, "shutting_down";
    /// The server's topic registry is full; no new topic can be created.
    TopicLimit = 14, "topic_limit";
    /// An error inside the server; the client may reconnect.
    InternalError = 15, "internal_error";
    /// GOAWAY reason to a relay: this engine's epoch changed (its own upstream restarted);
    /// reconnect at once and resynchronise.
    Resync = 16, "resync";
    /// A SUBSCRIBE or UNSUBSCRIBE carried more entries than `max_subscriptions`.
    TooManyEntries = 17, "too_many_entries";
    /// A frame that had started to arrive was not complete within the server's frame timeout.
    FrameTimeout = 18, "frame_timeout";
    /// The session's token expired (and its grace time passed) without a refresh (AUTH).
    TokenExpired = 19, "token_expired";
    /// The server is over a memory or rate limit; reconnect later.
    ServerBusy = 20, "server_busy";
    /// ACK (version 3): no backend is connected to take the MESSAGE.
    NoBackend = 21, "no_backend";
    /// ACK (version 3): the connection sends MESSAGE or POST faster than its rate limit, or has
    /// too many MESSAGEs awaiting their ACK.
    RateLimited = 22, "rate_limited";
    /// ACK (version 3): the backend the MESSAGE was routed to disconnected before the message
    /// was written to it; it was not delivered (sending it again is safe).
    BackendGone = 23, "backend_gone";
    /// ACK (version 3): the session may not send MESSAGE, or POST to this topic or with these
    /// flags.
    Forbidden = 24, "forbidden";
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u16)
    }
}
