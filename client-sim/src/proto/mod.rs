//! The protocols the load generator speaks, each as a sans-IO stream parser that accepts
//! frames split anywhere and many frames per read.

pub mod mqtt;
pub mod nats;
pub mod redis;
pub mod tls;
pub mod ws;
pub mod yorker;

use clap::ValueEnum;
use yorker_wire::ResumeFrom;

/// Which server protocol to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// yorker protocol v1.
    Yorker,
    /// yorker over WebSocket (the engine's same port; publishers still use TCP).
    Ws,
    /// yorker over TLS (the engine's same port with --tls-cert; publishers still use TCP).
    Tls,
    /// yorker over WebSocket over TLS (wss).
    Wss,
    /// MQTT 3.1.1, QoS 0 (Mosquitto and other brokers).
    Mqtt,
    /// Core NATS.
    Nats,
    /// Redis pub/sub (RESP2).
    Redis,
}

/// A subscriber connection's stream parser, for any protocol.
#[derive(Debug)]
pub enum Parser {
    /// yorker.
    Yorker(yorker::Parser),
    /// MQTT.
    Mqtt(mqtt::Parser),
    /// NATS; `pinged` records a server PING that needs a PONG.
    Nats(nats::Parser, bool),
    /// Redis.
    Redis(redis::Parser),
    /// yorker over WebSocket.
    Ws(ws::Parser),
    /// yorker over TLS.
    Tls(Box<tls::Parser>),
}

impl Parser {
    /// A fresh parser for `proto`.
    pub fn new(proto: Proto) -> Parser {
        match proto {
            Proto::Yorker => Parser::Yorker(yorker::Parser::default()),
            Proto::Ws => Parser::Ws(ws::Parser::default()),
            // Replaced by the fleet with the session it opened (tls::Parser::with).
            Proto::Tls | Proto::Wss => Parser::Yorker(yorker::Parser::default()),
            Proto::Mqtt => Parser::Mqtt(mqtt::Parser::default()),
            Proto::Nats => Parser::Nats(nats::Parser::default(), false),
            Proto::Redis => Parser::Redis(redis::Parser::default()),
        }
    }

    /// Feeds received bytes.
    pub fn feed(&mut self, data: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), ParseError> {
        match self {
            Parser::Yorker(p) => p.feed(data, on),
            Parser::Mqtt(p) => p.feed(data, on),
            Parser::Nats(p, pinged) => p.feed(data, pinged, on),
            Parser::Redis(p) => p.feed(data, on),
            Parser::Ws(p) => p.feed(data, on),
            Parser::Tls(p) => p.feed(data, on),
        }
    }

    /// Bytes as they go on the wire: encrypted on a TLS connection, unchanged otherwise.
    pub fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        match self {
            Parser::Tls(p) => p.seal(plain),
            _ => plain.to_vec(),
        }
    }

    /// Bytes the protocol requires us to send back now (NATS: PONG to a server PING).
    pub fn take_reply(&mut self) -> Option<&'static [u8]> {
        match self {
            Parser::Nats(_, pinged) if *pinged => {
                *pinged = false;
                Some(nats::PONG)
            }
            _ => None,
        }
    }
}

/// What a subscriber sends on connect: session set-up and the subscriptions.
pub fn handshake(
    proto: Proto,
    name: &str,
    topics: &[(String, Option<ResumeFrom>)],
    conflate: bool,
) -> Vec<u8> {
    match proto {
        Proto::Yorker => yorker::handshake(name, topics, conflate).to_vec(),
        // Encrypted by the connection's session before it is sent (tls::Parser::seal).
        Proto::Tls => yorker::handshake(name, topics, conflate).to_vec(),
        Proto::Ws | Proto::Wss => {
            let mut b = ws::upgrade_request();
            b.extend(ws::masked(&yorker::handshake(name, topics, conflate)));
            b
        }
        Proto::Mqtt => {
            let mut b = mqtt::connect(name, 60);
            for (i, (t, _)) in topics.iter().enumerate() {
                b.extend(mqtt::subscribe(i as u16 + 1, t));
            }
            b
        }
        Proto::Nats => topics
            .iter()
            .enumerate()
            .flat_map(|(i, (t, _))| nats::handshake(t, i as u64 + 1))
            .collect(),
        Proto::Redis => topics
            .iter()
            .flat_map(|(t, _)| redis::subscribe(t))
            .collect(),
    }
}

/// A keep-alive to send periodically, and how often (ms), if the protocol needs one.
pub fn keepalive(proto: Proto, heartbeat_ms: u64, nonce: u64) -> Option<(Vec<u8>, u64)> {
    match proto {
        Proto::Yorker => Some((yorker::ping(nonce).to_vec(), (heartbeat_ms / 3).max(50))),
        Proto::Ws | Proto::Wss => {
            Some((ws::masked(&yorker::ping(nonce)), (heartbeat_ms / 3).max(50)))
        }
        Proto::Tls => Some((yorker::ping(nonce).to_vec(), (heartbeat_ms / 3).max(50))),
        Proto::Mqtt => Some((mqtt::pingreq(), 20_000)),
        Proto::Nats | Proto::Redis => None,
    }
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

/// Runs `parse` over the buffered tail of earlier reads plus `data`. `parse` consumes whole
/// messages from the front and returns the bytes it used; the incomplete rest is kept for the
/// next read. Shared by every protocol's parser.
pub(crate) fn feed_buffered(
    partial: &mut Vec<u8>,
    data: &[u8],
    parse: impl FnOnce(&[u8]) -> Result<usize, ParseError>,
) -> Result<(), ParseError> {
    if partial.is_empty() {
        // The common case: no copy unless a message is split across reads.
        let used = parse(data)?;
        partial.extend_from_slice(&data[used..]);
    } else {
        partial.extend_from_slice(data);
        let buf = std::mem::take(partial);
        let used = parse(&buf)?;
        *partial = buf;
        partial.drain(..used);
    }
    if partial.is_empty() && partial.capacity() > 0 {
        *partial = Vec::new();
    }
    Ok(())
}

/// Why a stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol error: {0}")]
pub struct ParseError(pub String);
