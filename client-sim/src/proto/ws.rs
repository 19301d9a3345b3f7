//! A WebSocket for the load generator: the HTTP upgrade, masked client frames around the
//! protocol's stream (yorker, or NATS for a peer), and the server's data messages unwrapped
//! into that protocol's parser.

use yorker_wire::websocket::{masked_frame, opcode};

use super::{Event, ParseError};

/// The upgrade request (key: RFC 6455's example; the server checks its form, not its value),
/// asking for `subprotocol` when given.
pub fn upgrade_request(subprotocol: Option<&str>) -> Vec<u8> {
    let mut r = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n".to_string();
    if let Some(p) = subprotocol {
        r.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// `payload` (yorker frames) as one masked binary message.
pub fn masked(payload: &[u8]) -> Vec<u8> {
    masked_frame(true, opcode::BINARY, payload, [0x5a, 0xa5, 0x3c, 0xc3])
}

/// Incremental parser: the 101 answer, then server frames whose payloads feed `inner`.
#[derive(Debug)]
pub struct Parser {
    upgraded: bool,
    partial: Vec<u8>,
    /// The parser of the stream the messages carry.
    pub(crate) inner: super::Parser,
    /// Frames to send once the upgrade is answered.
    pub(crate) deferred: Option<Vec<u8>>,
}

impl Parser {
    /// A parser of a WebSocket carrying what `inner` parses.
    pub fn new(inner: super::Parser) -> Parser {
        Parser {
            upgraded: false,
            partial: Vec::new(),
            inner,
            deferred: None,
        }
    }

    /// Whether the server answered the upgrade with 101.
    pub fn upgraded(&self) -> bool {
        self.upgraded
    }

    /// Feeds received bytes, calling `on` for every message of the inner protocol.
    pub fn feed(&mut self, data: &[u8], on: &mut dyn FnMut(Event<'_>)) -> Result<(), ParseError> {
        let inner = &mut self.inner;
        let upgraded = &mut self.upgraded;
        super::feed_buffered(&mut self.partial, data, |b| {
            let mut at = 0;
            if !*upgraded {
                let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
                    return Ok(0);
                };
                if !b.starts_with(b"HTTP/1.1 101") {
                    return Err(ParseError(format!(
                        "websocket upgrade refused: {}",
                        String::from_utf8_lossy(&b[..end.min(80)])
                    )));
                }
                *upgraded = true;
                at = end + 4;
            }
            loop {
                let rest = &b[at..];
                if rest.len() < 2 {
                    return Ok(at);
                }
                let op = rest[0] & 0x0f;
                let (len, hl) = match rest[1] & 0x7f {
                    126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
                    127 if rest.len() >= 10 => (
                        u64::from_be_bytes(rest[2..10].try_into().expect("8")) as usize,
                        10,
                    ),
                    l if l < 126 => (l as usize, 2),
                    _ => return Ok(at),
                };
                if rest.len() < hl + len {
                    return Ok(at);
                }
                if op == opcode::BINARY || op == opcode::TEXT || op == opcode::CONTINUATION {
                    inner.feed(&rest[hl..hl + len], on)?;
                } else if op == opcode::CLOSE {
                    on(Event::Other);
                }
                at += hl + len;
            }
        })
    }
}
