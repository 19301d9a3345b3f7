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
    /// Core NATS over WebSocket (nats-server's `websocket` listener, no TLS; publishers use
    /// the plain client port).
    NatsWs,
    /// Core NATS over TLS (INFO in clear, then the TLS handshake, as nats-server 2.9 expects;
    /// publishers use the same port in clear, `allow_non_tls`).
    NatsTls,
    /// Core NATS over WebSocket over TLS (nats-server's `websocket` listener with `tls`).
    NatsWss,
}

impl Proto {
    /// The protocol inside the transport: yorker for ws/tls/wss, NATS for the NATS variants.
    pub fn base(self) -> Proto {
        match self {
            Proto::Ws | Proto::Tls | Proto::Wss => Proto::Yorker,
            Proto::NatsWs | Proto::NatsTls | Proto::NatsWss => Proto::Nats,
            p => p,
        }
    }

    /// Whether subscribers run TLS (and need `--tls-ca`).
    pub fn tls(self) -> bool {
        matches!(
            self,
            Proto::Tls | Proto::Wss | Proto::NatsTls | Proto::NatsWss
        )
    }

    /// Whether subscribers speak WebSocket (inside TLS for the wss variants).
    pub fn websocket(self) -> bool {
        matches!(
            self,
            Proto::Ws | Proto::Wss | Proto::NatsWs | Proto::NatsWss
        )
    }
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
    /// A WebSocket around another parser (yorker or NATS).
    Ws(Box<ws::Parser>),
    /// A TLS session around another parser (plain or WebSocket).
    Tls(Box<tls::Parser>),
}

impl Parser {
    /// A fresh parser for `proto`.
    /// For the TLS variants this is the parser of what the session carries; the fleet wraps
    /// it in the session it opened ([`tls::Parser::with`]).
    pub fn new(proto: Proto) -> Parser {
        let inner = match proto.base() {
            Proto::Mqtt => Parser::Mqtt(mqtt::Parser::default()),
            Proto::Nats => Parser::Nats(nats::Parser::default(), false),
            Proto::Redis => Parser::Redis(redis::Parser::default()),
            _ => Parser::Yorker(yorker::Parser::default()),
        };
        if proto.websocket() {
            Parser::Ws(Box::new(ws::Parser::new(inner)))
        } else {
            inner
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

    /// As [`Parser::seal`] for shared bytes: without TLS they go out as they are, uncopied.
    pub fn seal_shared(&mut self, plain: &bytes::Bytes) -> bytes::Bytes {
        match self {
            Parser::Tls(p) => bytes::Bytes::from(p.seal(plain)),
            _ => plain.clone(),
        }
    }

    /// Holds `wire` (masked WebSocket frames) until the upgrade is answered; then
    /// [`Parser::take_reply`] hands it out.
    pub fn send_after_upgrade(&mut self, wire: Vec<u8>) {
        match self {
            Parser::Ws(p) => p.deferred = Some(wire),
            Parser::Tls(p) => p.inner.send_after_upgrade(wire),
            _ => {}
        }
    }

    /// Bytes the protocol requires us to send back now (NATS: PONG to a server PING), as
    /// they go on the wire (masked inside a WebSocket, sealed inside TLS).
    pub fn take_reply(&mut self) -> Option<Vec<u8>> {
        match self {
            Parser::Nats(_, pinged) if *pinged => {
                *pinged = false;
                Some(nats::PONG.to_vec())
            }
            Parser::Ws(p) => {
                let mut out = if p.upgraded() {
                    p.deferred.take().unwrap_or_default()
                } else {
                    Vec::new()
                };
                if let Some(r) = p.inner.take_reply() {
                    out.extend(ws::masked(&r));
                }
                (!out.is_empty()).then_some(out)
            }
            Parser::Tls(p) => {
                let r = p.inner.take_reply()?;
                Some(p.seal(&r))
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
    // Inside TLS these bytes are encrypted by the connection's session before they are sent
    // (tls::Parser::seal).
    let inner = match proto.base() {
        Proto::Yorker => yorker::handshake(name, topics, conflate).to_vec(),
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
        _ => topics
            .iter()
            .flat_map(|(t, _)| redis::subscribe(t))
            .collect(),
    };
    if proto.websocket() {
        let sub = (proto.base() == Proto::Yorker).then_some("yorker");
        let mut b = ws::upgrade_request(sub);
        b.extend(ws::masked(&inner));
        b
    } else {
        inner
    }
}

/// How many bytes at the front of [`handshake`]'s output may go before the WebSocket upgrade
/// is answered: all of them, except for NATS, whose server refuses data sent before its 101
/// (the rest is handed to [`Parser::send_after_upgrade`]).
pub fn sendable_before_upgrade(proto: Proto, handshake: &[u8]) -> usize {
    if proto.websocket() && proto.base() == Proto::Nats {
        handshake
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(handshake.len(), |p| p + 4)
    } else {
        handshake.len()
    }
}

/// A keep-alive to send periodically, and how often (ms), if the protocol needs one.
pub fn keepalive(proto: Proto, heartbeat_ms: u64, nonce: u64) -> Option<(Vec<u8>, u64)> {
    let (ping, every) = match proto.base() {
        Proto::Yorker => (yorker::ping(nonce).to_vec(), (heartbeat_ms / 3).max(50)),
        Proto::Mqtt => (mqtt::pingreq(), 20_000),
        _ => return None,
    };
    // Inside TLS the fleet seals it per connection.
    Some(if proto.websocket() {
        (ws::masked(&ping), every)
    } else {
        (ping, every)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// nats-server refuses data sent before its 101: the NATS handshake waits for the upgrade,
    /// and server PINGs inside WebSocket messages are answered with masked PONGs.
    #[test]
    fn nats_over_websocket_holds_its_handshake_until_the_upgrade() {
        let hs = handshake(Proto::NatsWs, "c", &[("t".into(), None)], true);
        let now = sendable_before_upgrade(Proto::NatsWs, &hs);
        assert!(hs[..now].starts_with(b"GET / HTTP/1.1") && hs[..now].ends_with(b"\r\n\r\n"));
        assert_eq!(sendable_before_upgrade(Proto::Ws, &hs), hs.len());
        let mut p = Parser::new(Proto::NatsWs);
        p.send_after_upgrade(hs[now..].to_vec());
        assert!(p.take_reply().is_none(), "nothing goes before the 101");
        p.feed(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", &mut |_| {})
            .unwrap();
        assert_eq!(p.take_reply().as_deref(), Some(&hs[now..]));
        assert!(p.take_reply().is_none());
        let mut msg = vec![0x82, 6];
        msg.extend_from_slice(b"PING\r\n");
        p.feed(&msg, &mut |_| {}).unwrap();
        assert_eq!(p.take_reply(), Some(ws::masked(b"PONG\r\n")));
    }
}
