//! The protocols the load generator speaks, each as a sans-IO stream parser that accepts
//! frames split anywhere and many frames per read.

pub mod yorker;

use clap::ValueEnum;

/// Which server protocol to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// yorker protocol v1.
    Yorker,
}

/// Something a subscriber connection received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// Session accepted (yorker: epoch and heartbeat).
    Welcome {
        /// Server epoch.
        epoch: u64,
        /// Heartbeat interval in ms.
        heartbeat_ms: u32,
    },
    /// Subscription answered: topic id and result.
    SubAck {
        /// Topic id.
        topic_id: u32,
        /// Current seq.
        seq: u64,
        /// True when a RESET or snapshot semantics apply.
        ok: bool,
    },
    /// An update.
    Update {
        /// Topic id (yorker) or 0.
        topic_id: u32,
        /// Per-topic sequence number (yorker) or the bench index from the payload.
        seq: u64,
        /// UPDATE flags (yorker) or 0.
        flags: u8,
        /// The payload.
        payload: &'a [u8],
    },
    /// The server is going away; reconnect after this many ms.
    GoAway {
        /// Reconnect hint.
        reconnect_after_ms: u32,
    },
    /// A fatal error from the server.
    Error {
        /// Code.
        code: u16,
    },
    /// Anything else (PONG, HEARTBEAT).
    Other,
}

/// Why a stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol error: {0}")]
pub struct ParseError(pub String);
